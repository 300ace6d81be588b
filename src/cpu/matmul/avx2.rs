//! The f32 GEMM of the `avx2` engine (AVX2 + FMA, no AVX-512: AMD Zen 2/3, Intel before Skylake-SP), the twin of
//! the AVX-512 kernel in the parent module with its own panel shape (ARCHITECTURE §3):
//! - **Micro-kernel.** 6 rows × 16 columns in 12 ymm accumulators; each k step loads the two panel vectors and
//!   broadcasts one A value per row (12 FMAs for 8 loads). Two 256-bit FMA pipes with 4 cycles of latency need 8
//!   independent chains: 12 keep them busy, and the 2 panel vectors and a broadcast fill the 16 ymm registers.
//! - **Packing.** `W` is cut into panels of [`NR`] = 16 output columns, stored k-major (`[k][16]`, zero-padded past
//!   `n`) on 64-byte boundaries: one k step of a panel is exactly one cache line, and no load splits two.
//! - **A packed per job.** The job's row block is copied once per k chunk into micro-panels `[k][6]` (an 8 × 8
//!   transpose per 8 k steps), so a tile's broadcasts read one contiguous stream rather than six rows 3–12 KB
//!   apart, whose lines the prefetchers fetch late.
//! - **Blocking.** A job owns a block of up to 24 tiles (144 rows) × up to 24 panels (384 columns); k runs in
//!   chunks of ≤ [`KC`] = 768. Measured on one Zen 3 core (best of 5, chunk lengths alternated in one process):
//!   256 (the panel chunk in L1) 82–90 GFLOP/s on the ViT-B/32 shapes, 768 86–92: fewer passes over C pay more than
//!   an L1-resident panel (the L2 streams a panel chunk fast enough).
//! - **No software prefetch.** A panel is one cache line per k step, a stream the hardware prefetchers follow. The
//!   AVX-512 kernels' spread prefetch of the next panel ([`super::PanelPrefetch`]) made this kernel slower, measured
//!   on Zen 4 with `CLIPRT_CPU_ISA=avx2` (throwaway probe, ViT-B/32's GEMMs, 2 threads, alternated): f32 at 50 rows
//!   171–179 → 132–155 GFLOP/s, at 400 rows 199–202 → 162–176; i16 at 50 rows 263–266 → 208–240.
//!
//! Replaces the `gemm` crate on these CPUs: its packing of A and B on every call, and the separate bias and
//! activation pass over C, cost more than our prepacked panels and fused store (see BENCHMARKS.md, AVX2 section).

use std::arch::x86_64::*;

use super::{
    chunk_store, k_chunks, par_jobs, tile_span, zero_k, Aligned, Blocking, Jobs, TileStore,
};
use crate::backend::Epilogue;
use crate::cpu::simd::{generic, Avx2, Simd};
use crate::cpu::Isa;

/// Columns per packed weight panel: two ymm.
pub(crate) const NR: usize = 16;
/// Most rows per micro-kernel tile.
pub(crate) const MR: usize = 6;
/// Longest k chunk (see the module docs for the measurement).
const KC: usize = 768;

/// The job shape of this kernel (see [`Jobs`]).
pub(super) const BLOCKING: Blocking = Blocking {
    mr: MR,
    nr: NR,
    tiles_per_block: 24,
    max_panels_per_job: 24,
};

/// Packs `w[n, k]` (HF layout) into panels `[⌈n/16⌉][k][16]`.
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> Aligned<f32> {
    let mut p = Aligned::<f32>::zeroed(n.div_ceil(NR) * k * NR);
    super::fill_panels(p.as_mut_slice(), NR, k, n, |panel, cols| {
        for (t, out) in panel.chunks_exact_mut(NR).enumerate() {
            for (o, col) in out.iter_mut().zip(cols.clone()) {
                *o = w[col * k + t];
            }
        }
    });
    p
}

/// Adds C / bias, applies the activation and stores the first `cols` columns of an `R × 8V` accumulator tile.
#[inline(always)]
pub(super) unsafe fn store_tile<const R: usize, const V: usize>(
    acc: &[[__m256; V]; R],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    st: TileStore,
) {
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let lanes = cols.saturating_sub(8 * j).min(8);
            if lanes == 0 {
                continue;
            }
            let p = c.add(i * ldc + 8 * j);
            let mut v = v;
            if st.load_c {
                v = _mm256_add_ps(v, Avx2::load(p, lanes, 0.0));
            }
            if !st.bias.is_null() {
                v = _mm256_add_ps(v, Avx2::load(st.bias.add(8 * j), lanes, 0.0));
            }
            if let Some(a) = st.act {
                v = generic::activation::<Avx2>(v, a);
            }
            Avx2::store(p, v, lanes);
        }
    }
}

/// `C[R, cols] (+)= A[R, kc] · B[kc, 16]`: A a packed micro-panel (`[kc][MR]`, [`pack_a`]), B a panel chunk
/// (`[kc][16]`, aligned in the GEMM; the unaligned load costs nothing on aligned data).
#[inline(always)]
unsafe fn tile<const R: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    st: TileStore,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for kk in 0..kc {
        let bp = b.add(kk * NR);
        let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm256_broadcast_ss(&*a.add(kk * MR + i));
            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
        }
    }
    store_tile::<R, 2>(&acc, c, ldc, cols, st);
}

/// [`tile`] for a run-time height `rows` ≤ [`MR`]: `C[rows, cols] (+)= A · B` over `kc` steps, A a packed
/// micro-panel, B a 16-wide panel chunk.
///
/// # Safety
/// As [`tile`]: AVX2 + FMA, A valid for `kc·MR` floats, B for `kc·16`, C for `rows` rows of `cols` at `ldc`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn packed_tile(
    rows: usize,
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    st: TileStore,
) {
    match rows {
        6 => tile::<6>(kc, a, b, c, ldc, cols, st),
        5 => tile::<5>(kc, a, b, c, ldc, cols, st),
        4 => tile::<4>(kc, a, b, c, ldc, cols, st),
        3 => tile::<3>(kc, a, b, c, ldc, cols, st),
        2 => tile::<2>(kc, a, b, c, ldc, cols, st),
        1 => tile::<1>(kc, a, b, c, ldc, cols, st),
        _ => unreachable!("tile height {rows} outside 1..={MR}"),
    }
}

thread_local! {
    /// A job's packed A block (f32 values or i16 pair words), reused across calls on this thread.
    static A_BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Packs `rows` ≤ [`MR`] rows of A (row stride `lda`), `kc` columns from `a`, into `dst` as `[kc][MR]`: the tile's
/// broadcasts then read one contiguous stream instead of six rows 3–12 KB apart (measured on Zen 3: the strided
/// rows held the kernel near 70 % of the FMA peak). Rows past `rows` hold whatever is there: a tile of that height
/// never reads them. `dst` must have room for `kc·MR + 2` floats (the last 8-wide store runs 2 past).
#[inline(always)]
pub(crate) unsafe fn pack_a(a: *const f32, lda: usize, rows: usize, kc: usize, dst: *mut f32) {
    let row = |i: usize| a.add(i.min(rows - 1) * lda);
    let mut kk = 0;
    // 8 k steps at a time: load 8 columns of each row (rows past `rows` repeat the last, harmlessly), transpose
    // the 8 × 8 block (two rows unused), and store each k step's 6 values with one 8-wide store: the 2 extra lanes
    // are overwritten by the next step's store.
    while kk + 8 <= kc {
        let r: [__m256; 8] = std::array::from_fn(|i| {
            if i < MR {
                _mm256_loadu_ps(row(i).add(kk))
            } else {
                _mm256_setzero_ps()
            }
        });
        let t = transpose8(r);
        for (j, v) in t.iter().enumerate() {
            _mm256_storeu_ps(dst.add((kk + j) * MR), *v);
        }
        kk += 8;
    }
    for kk in kk..kc {
        for i in 0..MR {
            *dst.add(kk * MR + i) = *row(i).add(kk);
        }
    }
}

/// The transpose of an 8 × 8 block held as 8 row vectors.
#[inline(always)]
pub(crate) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
    let t: [__m256; 8] = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u: [__m256; 8] = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    [
        _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
        _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
    ]
}

/// Where one tile of a job runs: panel `p` (output columns `col..col + cols`), rows `r0..r0 + rows`, the k chunk
/// starting at word `k0` of a row (`klen` words), A's micro-panel for it (`[klen][MR]` words) and the store flags.
pub(super) struct TilePlace {
    pub p: usize,
    pub col: usize,
    pub cols: usize,
    pub r0: usize,
    pub rows: usize,
    pub k0: usize,
    pub klen: usize,
    pub a: *const f32,
    pub st: TileStore,
}

/// The loop nest of job `j`, shared by the f32 and i16 kernels. A is `m` rows of `words` 32-bit words (f32 values,
/// or i16 pairs whose bits [`pack_a`] moves unchanged), cut into k chunks of ≤ `max_chunk` words. Per chunk, the
/// job's tiles of A are copied into micro-panels, then `tile` runs every panel × tile product, panels outer: a
/// panel chunk, read once from memory, serves all the job's tiles from cache.
///
/// # Safety
/// AVX2; `a` valid for `m · words` words; `tile` given in-bounds places of an `m × n` output.
// Its own target features, not `inline(always)`: the closure below is a function of its own, and without AVX2
// enabled there the intrinsics of `pack_a` stay calls (measured: the GEMM at 60 % of its speed).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn job_nest(
    jobs: &Jobs,
    j: usize,
    m: usize,
    n: usize,
    a: *const f32,
    words: usize,
    max_chunk: usize,
    ep: Epilogue,
    bias: *const f32,
    tile: impl Fn(&TilePlace),
) {
    let (t0, nt, p0, np) = jobs.job(j);
    let (chunks, kc) = k_chunks(words, 1, max_chunk);
    let run = |ablock: &mut Vec<f32>| {
        ablock.resize(nt * kc * MR + 2, 0.0);
        for ch in 0..chunks {
            let (k0, klen) = (ch * kc, kc.min(words - ch * kc));
            for t in 0..nt {
                let (r0, rows) = tile_span(m, jobs.tiles, t0 + t);
                let dst = ablock.as_mut_ptr().add(t * kc * MR);
                pack_a(a.add(r0 * words + k0), words, rows, klen, dst);
            }
            let st = chunk_store(ep, ch, chunks, bias);
            for p in p0..p0 + np {
                let col = p * NR;
                for t in 0..nt {
                    let (r0, rows) = tile_span(m, jobs.tiles, t0 + t);
                    tile(&TilePlace {
                        p,
                        col,
                        cols: NR.min(n - col),
                        r0,
                        rows,
                        k0,
                        klen,
                        a: ablock.as_ptr().add(t * kc * MR),
                        st: st.at_column(col),
                    });
                }
            }
        }
    };
    crate::cpu::with_thread_scratch(&A_BLOCK, run);
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn job(
    jobs: &Jobs,
    j: usize,
    a: *const f32,
    m: usize,
    k: usize,
    w: *const f32,
    n: usize,
    bias: *const f32,
    c: *mut f32,
    ep: Epilogue,
) {
    job_nest(jobs, j, m, n, a, k, KC, ep, bias, |t| {
        let panel = w.add(t.p * k * NR + t.k0 * NR);
        let cp = c.add(t.r0 * n + t.col);
        packed_tile(t.rows, t.klen, t.a, panel, cp, n, t.cols, t.st);
    });
}

/// `out[m, n] (+)= a[m, k] · Wᵀ` on the panels of [`pack`], with the epilogue `ep` fused into the last k chunk's
/// store.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    a: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    ep: Epilogue,
) {
    assert!(Isa::Avx2.available());
    assert!(a.len() >= m * k && out.len() >= m * n);
    assert!(w.len() >= n.div_ceil(NR) * k * NR && bias.is_none_or(|b| b.len() >= n));
    assert!(
        (w.as_ptr() as usize).is_multiple_of(64),
        "AVX2 panels must be 64-byte aligned"
    );
    if k == 0 {
        return zero_k(Isa::Avx2, out, m, n, bias, ep);
    }
    // SAFETY: AVX2 + FMA asserted above; a, w, bias and out were bounds-checked for m, n, k (panels are aligned
    // for the aligned loads); each job writes its own rectangle of out.
    par_jobs(
        BLOCKING,
        m,
        n,
        a.as_ptr(),
        w.as_ptr(),
        bias,
        out.as_mut_ptr(),
        |jobs, j, a, w, b, c| unsafe { job(jobs, j, a, m, k, w, n, b, c, ep) },
    );
}
