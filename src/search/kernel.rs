//! The fused score-and-select kernels: a tile of gallery rows times a panel of packed queries, computed in
//! registers, scaled by the rows' inverse norms, compared as whole vectors against the queries' current k-th best
//! scores, and only the rare hits that pass go to the scalar heap. No score matrix is ever stored.
//!
//! Queries are packed once per search into panels of `16·NV` columns, k-major (`[d][16·NV]`), pre-multiplied by
//! `scale / |q|`; a panel stays in L2 while every gallery row streams past it. The gallery is read in place (row
//! stride = dim), f32 or bf16 pairs (`vdpbf16ps`, f32 sums).

use super::topk::{Hit, TopKSet};

/// Queries per packed panel, as 16-lane vectors: 1..=4 (64 queries), fewer when there are fewer queries.
pub fn panel_vectors(queries: usize) -> usize {
    queries.div_ceil(16).clamp(1, 4)
}

/// What to do with a tile of scores: keep the top-k, or store them (the small zero-shot logits matrix).
pub enum Sink<'a> {
    TopK(&'a mut TopKSet),
    /// `out[q · rows + r]` for the `[queries, rows]` logits.
    Store {
        out: &'a mut [f32],
        rows: usize,
    },
}

impl Sink<'_> {
    /// Hands over one gallery row's scores for queries `q0 .. q0 + scores.len()` (already scaled). `valid` is how
    /// many of them are real queries.
    #[inline]
    pub fn row(&mut self, row: usize, q0: usize, scores: &[f32], valid: usize) {
        match self {
            Sink::TopK(set) => {
                for (c, &s) in scores[..valid].iter().enumerate() {
                    if s >= set.thresholds()[q0 + c] {
                        set.offer(
                            q0 + c,
                            Hit {
                                score: s,
                                index: row as u32,
                            },
                        );
                    }
                }
            }
            Sink::Store { out, rows } => {
                for (c, &s) in scores[..valid].iter().enumerate() {
                    out[(q0 + c) * *rows + row] = s;
                }
            }
        }
    }
}

/// The portable kernel: one gallery row at a time, f32 dot products (bf16 rows widened on the fly).
pub mod portable {
    use super::*;

    /// Scores gallery rows `r0..r1` (`row(i)` yields row i as f32) against every panel of `packed`.
    #[allow(clippy::too_many_arguments)]
    pub fn block(
        rows: std::ops::Range<usize>,
        dim: usize,
        row: impl Fn(usize, &mut [f32]),
        inv_norms: Option<&[f32]>,
        packed: &[f32],
        queries: usize,
        width: usize,
        sink: &mut Sink,
    ) {
        let mut g = vec![0.0f32; dim];
        let mut scores = vec![0.0f32; width];
        let panels = queries.div_ceil(width);
        for r in rows {
            row(r, &mut g);
            let inv = inv_norms.map_or(1.0, |n| n[r]);
            for p in 0..panels {
                let panel = &packed[p * dim * width..(p + 1) * dim * width];
                scores.fill(0.0);
                for (kk, &gv) in g.iter().enumerate() {
                    let qrow = &panel[kk * width..(kk + 1) * width];
                    for (s, &qv) in scores.iter_mut().zip(qrow) {
                        *s += gv * qv;
                    }
                }
                scores.iter_mut().for_each(|s| *s *= inv);
                let q0 = p * width;
                sink.row(r, q0, &scores, width.min(queries - q0));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Rows per tile for a panel of `NV` vectors: 24 accumulators where possible.
    pub const fn tile_rows(nv: usize) -> usize {
        match nv {
            4 => 6,
            3 => 8,
            _ => 12,
        }
    }

    /// `acc[i][j] = Σ_k g[i, k] · panel[k, 16j..16j+16]` for an `R`-row tile of f32 gallery rows.
    #[inline(always)]
    unsafe fn tile_f32<const R: usize, const NV: usize>(
        dim: usize,
        g: *const f32,
        ldg: usize,
        panel: *const f32,
    ) -> [[__m512; NV]; R] {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for kk in 0..dim {
            let bp = panel.add(kk * 16 * NV);
            let b: [__m512; NV] = std::array::from_fn(|j| _mm512_loadu_ps(bp.add(16 * j)));
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*g.add(i * ldg + kk));
                for j in 0..NV {
                    row[j] = _mm512_fmadd_ps(a, b[j], row[j]);
                }
            }
        }
        acc
    }

    /// The bf16 twin: `dp` pairs per row, products summed in f32 by `vdpbf16ps`.
    #[inline(always)]
    unsafe fn tile_bf16<const R: usize, const NV: usize>(
        dp: usize,
        g: *const u32,
        ldg: usize,
        panel: *const u32,
    ) -> [[__m512; NV]; R] {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for kk in 0..dp {
            let bp = panel.add(kk * 16 * NV) as *const __m512i;
            let b: [__m512bh; NV] =
                std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(bp.add(j))));
            for (i, row) in acc.iter_mut().enumerate() {
                let a: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*g.add(i * ldg + kk) as i32));
                for j in 0..NV {
                    row[j] = _mm512_dpbf16_ps(row[j], a, b[j]);
                }
            }
        }
        acc
    }

    /// Scales each row by its inverse norm and feeds the sink: for top-k, a whole-vector compare against the
    /// thresholds first (after the first k rows almost every tile stops there).
    #[inline(always)]
    unsafe fn emit<const R: usize, const NV: usize>(
        acc: &[[__m512; NV]; R],
        rows: usize,
        row0: usize,
        inv_norms: Option<&[f32]>,
        q0: usize,
        queries: usize,
        sink: &mut Sink,
    ) {
        let mut buf = [0.0f32; 64];
        let valid = (queries - q0).min(16 * NV);
        for (i, row) in acc.iter().enumerate().take(rows) {
            let r = row0 + i;
            let inv = _mm512_set1_ps(inv_norms.map_or(1.0, |n| n[r]));
            let v: [__m512; NV] = std::array::from_fn(|j| _mm512_mul_ps(row[j], inv));
            for (j, &vj) in v.iter().enumerate() {
                _mm512_storeu_ps(buf.as_mut_ptr().add(16 * j), vj);
            }
            if let Sink::TopK(set) = sink {
                let thr = set.thresholds().as_ptr().add(q0);
                let mut hit = 0u64;
                for (j, &vj) in v.iter().enumerate() {
                    let m = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(vj, _mm512_loadu_ps(thr.add(16 * j)));
                    hit |= u64::from(m) << (16 * j);
                }
                // Only the lanes that passed (padding lanes have +∞ thresholds and never do).
                while hit != 0 {
                    let c = hit.trailing_zeros() as usize;
                    hit &= hit - 1;
                    set.offer(
                        q0 + c,
                        Hit {
                            score: buf[c],
                            index: r as u32,
                        },
                    );
                }
                continue;
            }
            sink.row(r, q0, &buf[..16 * NV], valid);
        }
    }

    /// A tile kernel over one storage type (f32 values or bf16 pairs).
    trait Tile {
        type T: Copy + Default;
        unsafe fn tile<const R: usize, const NV: usize>(
            len: usize,
            g: *const Self::T,
            ld: usize,
            panel: *const Self::T,
        ) -> [[__m512; NV]; R];
    }

    struct F32Tile;
    struct Bf16Tile;

    impl Tile for F32Tile {
        type T = f32;
        #[inline(always)]
        unsafe fn tile<const R: usize, const NV: usize>(
            len: usize,
            g: *const f32,
            ld: usize,
            panel: *const f32,
        ) -> [[__m512; NV]; R] {
            tile_f32::<R, NV>(len, g, ld, panel)
        }
    }

    impl Tile for Bf16Tile {
        type T = u32;
        #[inline(always)]
        unsafe fn tile<const R: usize, const NV: usize>(
            len: usize,
            g: *const u32,
            ld: usize,
            panel: *const u32,
        ) -> [[__m512; NV]; R] {
            tile_bf16::<R, NV>(len, g, ld, panel)
        }
    }

    /// Rows `rows` of a gallery stored `len` elements per row, against every panel of `packed`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run<K: Tile, const R: usize, const NV: usize>(
        g: &[K::T],
        len: usize,
        rows: std::ops::Range<usize>,
        inv_norms: Option<&[f32]>,
        packed: &[K::T],
        queries: usize,
        sink: &mut Sink,
    ) {
        let width = 16 * NV;
        // The last partial tile runs on a zero-padded copy of its rows; the padding rows are never emitted.
        let mut tail: Vec<K::T> = Vec::new();
        for p in 0..queries.div_ceil(width) {
            let (q0, panel) = (p * width, packed.as_ptr().add(p * len * width));
            let mut r = rows.start;
            while r < rows.end {
                let n = R.min(rows.end - r);
                let acc = if n == R {
                    K::tile::<R, NV>(len, g.as_ptr().add(r * len), len, panel)
                } else {
                    tail.clear();
                    tail.extend_from_slice(&g[r * len..(r + n) * len]);
                    tail.resize(R * len, K::T::default());
                    K::tile::<R, NV>(len, tail.as_ptr(), len, panel)
                };
                emit::<R, NV>(&acc, n, r, inv_norms, q0, queries, sink);
                r += n;
            }
        }
    }

    /// Scores f32 gallery rows `rows` (`dim` per row) against every `16·NV`-wide panel of `packed` into `sink`.
    ///
    /// # Safety
    /// AVX-512F must be available; `g` must hold the rows and `packed` every panel (`dim · 16·NV` each).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_f32<const NV: usize>(
        g: &[f32],
        dim: usize,
        rows: std::ops::Range<usize>,
        inv_norms: Option<&[f32]>,
        packed: &[f32],
        queries: usize,
        sink: &mut Sink,
    ) {
        match tile_rows(NV) {
            6 => run::<F32Tile, 6, NV>(g, dim, rows, inv_norms, packed, queries, sink),
            8 => run::<F32Tile, 8, NV>(g, dim, rows, inv_norms, packed, queries, sink),
            _ => run::<F32Tile, 12, NV>(g, dim, rows, inv_norms, packed, queries, sink),
        }
    }

    /// [`block_f32`] for a bf16 gallery (`dim.div_ceil(2)` pairs per row) and bf16-pair panels.
    ///
    /// # Safety
    /// AVX-512F and AVX512_BF16 must be available; extents as for [`block_f32`] in pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block_bf16<const NV: usize>(
        g: &[u32],
        dim: usize,
        rows: std::ops::Range<usize>,
        inv_norms: Option<&[f32]>,
        packed: &[u32],
        queries: usize,
        sink: &mut Sink,
    ) {
        let dp = dim.div_ceil(2);
        match tile_rows(NV) {
            6 => run::<Bf16Tile, 6, NV>(g, dp, rows, inv_norms, packed, queries, sink),
            8 => run::<Bf16Tile, 8, NV>(g, dp, rows, inv_norms, packed, queries, sink),
            _ => run::<Bf16Tile, 12, NV>(g, dp, rows, inv_norms, packed, queries, sink),
        }
    }

    /// Queries at most this many take the row-dot kernels: a tile of 16 query lanes would leave most lanes idle and
    /// issue one broadcast load per multiply–add, while a row-dot loads 16 gallery values per load and keeps the
    /// scan memory-bound.
    pub const ROW_DOT_MAX_QUERIES: usize = 8;

    /// Row groups (of RB rows) ahead of the current one that the row-dot kernel prefetches.
    const PREFETCH_ROWS: usize = 4;

    /// 16 gallery values at `g + 16·step` widened to f32 (the last step masked to `lanes`).
    trait RowLoad {
        type T: Copy;
        /// Elements of `T` per 16 values.
        fn per_step() -> usize;
        /// Elements of `T` per row for `dim` values.
        fn row_len(dim: usize) -> usize;
        unsafe fn load16(row: *const Self::T, step: usize, lanes: usize) -> __m512;
    }

    struct F32Row;
    struct Bf16Row;

    impl RowLoad for F32Row {
        type T = f32;
        fn row_len(dim: usize) -> usize {
            dim
        }
        fn per_step() -> usize {
            16
        }
        #[inline(always)]
        unsafe fn load16(row: *const f32, step: usize, lanes: usize) -> __m512 {
            let m = if lanes >= 16 {
                0xFFFF
            } else {
                ((1u32 << lanes) - 1) as u16
            };
            _mm512_maskz_loadu_ps(m, row.add(16 * step))
        }
    }

    impl RowLoad for Bf16Row {
        type T = u32;
        fn row_len(dim: usize) -> usize {
            dim.div_ceil(2)
        }
        fn per_step() -> usize {
            8
        }
        #[inline(always)]
        unsafe fn load16(row: *const u32, step: usize, lanes: usize) -> __m512 {
            // 8 pairs = 16 bf16 values; bf16 → f32 is a 16-bit shift into the high half.
            let pairs = lanes.div_ceil(2).min(8);
            let m = ((1u32 << pairs) - 1) as u8;
            let v = _mm256_maskz_loadu_epi32(m, row.add(8 * step) as *const i32);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
        }
    }

    /// Rows `rows` against `QN` queries (`q` = `[QN][dim rounded up to 16]`, pre-scaled, zero-padded), `RB` rows
    /// at a time so that `RB·QN` independent accumulators hide the FMA latency.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_dot<L: RowLoad, const QN: usize, const RB: usize>(
        g: &[L::T],
        dim: usize,
        rows: std::ops::Range<usize>,
        inv_norms: Option<&[f32]>,
        q: &[f32],
        nq: usize,
        sink: &mut Sink,
    ) {
        let (len, qlen, steps) = (L::row_len(dim), dim.next_multiple_of(16), dim.div_ceil(16));
        let mut r = rows.start;
        let mut scores = [0.0f32; QN];
        while r < rows.end {
            let n = RB.min(rows.end - r);
            let mut acc = [[_mm512_setzero_ps(); QN]; RB];
            for step in 0..steps {
                let lanes = dim - 16 * step;
                let qv: [__m512; QN] =
                    std::array::from_fn(|j| _mm512_loadu_ps(q.as_ptr().add(j * qlen + 16 * step)));
                for (i, a) in acc.iter_mut().enumerate().take(n) {
                    let row = g.as_ptr().add((r + i) * len);
                    // One prefetch per cache line consumed, PREFETCH_ROWS row groups ahead: a single sequential stream
                    // per core is latency-bound without it (measured 29 GB/s over 2 cores, 2 GB gallery).
                    _mm_prefetch::<_MM_HINT_T0>(
                        row.wrapping_add(PREFETCH_ROWS * RB * len)
                            .wrapping_add(L::per_step() * step)
                            as *const i8,
                    );
                    let gv = L::load16(row, step, lanes);
                    for j in 0..QN {
                        a[j] = _mm512_fmadd_ps(gv, qv[j], a[j]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate().take(n) {
                let inv = inv_norms.map_or(1.0, |v| v[r + i]);
                for j in 0..QN {
                    scores[j] = _mm512_reduce_add_ps(a[j]) * inv;
                }
                sink.row(r + i, 0, &scores, nq);
            }
            r += n;
        }
    }

    /// The row-dot kernel for `QN` ≤ [`ROW_DOT_MAX_QUERIES`] queries over an f32 gallery.
    ///
    /// # Safety
    /// AVX-512F must be available; `q` holds `QN` padded query rows.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_dot_f32<const QN: usize, const RB: usize>(
        g: &[f32],
        dim: usize,
        rows: std::ops::Range<usize>,
        inv_norms: Option<&[f32]>,
        q: &[f32],
        nq: usize,
        sink: &mut Sink,
    ) {
        row_dot::<F32Row, QN, RB>(g, dim, rows, inv_norms, q, nq, sink)
    }

    /// [`row_dot_f32`] over a bf16 gallery, widened to f32 on load (the queries stay f32: no bf16 rounding of them).
    ///
    /// # Safety
    /// AVX-512F and AVX-512VL must be available.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub unsafe fn row_dot_bf16<const QN: usize, const RB: usize>(
        g: &[u32],
        dim: usize,
        rows: std::ops::Range<usize>,
        inv_norms: Option<&[f32]>,
        q: &[f32],
        nq: usize,
        sink: &mut Sink,
    ) {
        row_dot::<Bf16Row, QN, RB>(g, dim, rows, inv_norms, q, nq, sink)
    }
}
