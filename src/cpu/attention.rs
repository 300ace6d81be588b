//! Multi-head self-attention for CLIP's short sequences (50–257 vision tokens, ≤ 77 text), one rayon task per
//! (image or text, head).
//!
//! Per head: `S = Q·Kᵀ` (S is at most 257 × 257 floats, 264 KB: it stays in L2), a SIMD softmax per row with the
//! 1/√d scale and the causal mask folded in, then `O = P·V` written straight into the head's columns of the output.
//! On AVX-512 both products run tiles sized to their width (`rows_times_cols`): Kᵀ is packed into panels of 64
//! keys, V is read in place (masked loads make any head dim work: 64, 80 = 64 + 16, 104 = 64 + 40). The AMX
//! engines run this f32 kernel too, unless asked to run both products on tiles (`amx::attention`,
//! `CpuBackend::with_tile_attention`). AVX2 runs both products on the GEMM's micro-kernel on packed operands
//! (`head_avx2`); only the forced scalar tier uses the `gemm` crate.

use std::cell::RefCell;

use rayon::prelude::*;

use super::amx::TileMode;
use super::isa::Isa;
use super::matmul::sgemm;
use super::simd;
use crate::backend::AttnShape;

thread_local! {
    /// Per-thread scores (and packed Kᵀ) scratch, grown once to the largest head seen.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch buffer of `len` floats (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    super::with_thread_scratch(&SCRATCH, |buf| {
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only its own head's columns of the output rows.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the `Send` wrapper rather than its raw-pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[b·seq + i, h·hd..(h+1)·hd] = softmax(q_i·Kᵀ/√hd [causal]) · V` for every (b, h); `qkv` rows are `[q | k | v]`.
/// With `key_lens`, item b's queries see only its first `key_lens[b]` keys. Lengths are checked by the caller
/// (backend::attention, backend::attention_masked).
///
/// `tiles`: run both products on AMX tiles in that mode (bf16 operands); otherwise the f32 kernel of tier `isa`.
pub fn attention(
    isa: Isa,
    tiles: Option<TileMode>,
    out: &mut [f32],
    qkv: &[f32],
    s: AttnShape,
    key_lens: Option<&[u32]>,
) {
    let items: Vec<Item> = (0..s.batch)
        .map(|b| Item {
            first: b * s.seq,
            rows: s.seq,
            valid: key_lens.map_or(s.seq, |k| (k[b] as usize).clamp(1, s.seq)),
        })
        .collect();
    attend_items(isa, tiles, out, qkv, s, &items);
}

/// Causal attention straight on a packed stream (ARCHITECTURE §7.15): item b's rows are the `lens[b]` rows after
/// item b − 1's, in `qkv` and `out` alike, each row attending to its own item's rows up to itself. `s.seq` is not
/// read. The caller checked that every length is ≥ 1 and that their sum fits both buffers (backend::attention_packed).
pub fn attention_packed(
    isa: Isa,
    tiles: Option<TileMode>,
    out: &mut [f32],
    qkv: &[f32],
    s: AttnShape,
    lens: &[u32],
) {
    let mut first = 0;
    let items: Vec<Item> = lens
        .iter()
        .map(|&len| {
            let rows = len as usize;
            first += rows;
            Item {
                first: first - rows,
                rows,
                valid: rows,
            }
        })
        .collect();
    let s = AttnShape { causal: true, ..s };
    attend_items(isa, tiles, out, qkv, s, &items);
}

/// One sequence of a batch: its rows `first..first + rows` of `qkv` and `out`, and the keys its queries may see.
#[derive(Clone, Copy)]
struct Item {
    first: usize,
    rows: usize,
    valid: usize,
}

impl Item {
    /// The head kernels' view of this item: one sequence of its own length.
    fn shape(self, s: AttnShape) -> AttnShape {
        AttnShape {
            batch: 1,
            seq: self.rows,
            ..s
        }
    }
}

/// Attention over `items` (of width `s.width()`, heads of `s.head_dim`, `s.causal`): one rayon task per (item,
/// head).
fn attend_items(
    isa: Isa,
    tiles: Option<TileMode>,
    out: &mut [f32],
    qkv: &[f32],
    s: AttnShape,
    items: &[Item],
) {
    let d = s.width();
    let rows = items.last().map_or(0, |it| it.first + it.rows);
    assert!(qkv.len() >= rows * 3 * d && out.len() >= rows * d);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let avx512 = cfg!(target_arch = "x86_64") && isa == Isa::Avx512 && isa.available();
    let avx2 = cfg!(target_arch = "x86_64") && isa == Isa::Avx2 && isa.available();
    (0..items.len() * s.heads).into_par_iter().for_each(|bh| {
        let (item, h) = (items[bh / s.heads], bh % s.heads);
        let head = &qkv[item.first * 3 * d + h * s.head_dim..];
        let out = out_ptr.get().wrapping_add(item.first * d + h * s.head_dim);
        let (si, valid) = (item.shape(s), item.valid);
        if let Some(mode) = tiles {
            // SAFETY: as below; a tile mode is only handed out where its tiles can run.
            unsafe { super::amx::attention_head(mode, isa, out, head, si, valid) }
        } else if avx512 || avx2 {
            #[cfg(target_arch = "x86_64")]
            {
                prefetch_head(qkv, s, items, bh + 1);
                // SAFETY: the tier was checked available above; the assert bounds every row this head touches.
                unsafe {
                    if avx512 {
                        head_avx512(out, head, si, valid)
                    } else {
                        head_avx2(out, head, si, valid)
                    }
                }
            }
        } else {
            head_fallback(isa, out, head, si, valid)
        }
    });
}

/// Asks for task `bh`'s q, k and v rows in L2, where the next task on this thread (rayon hands each thread a
/// contiguous range of tasks) will find them. Each row of a head is `head_dim` floats out of `3·width`: a stride
/// of 3–12 KB that the hardware prefetchers do not follow, so without this every head started by waiting on
/// DRAM for its rows (the packing of Kᵀ alone took 9 % of ViT-L/14's attention).
#[cfg(target_arch = "x86_64")]
fn prefetch_head(qkv: &[f32], s: AttnShape, items: &[Item], bh: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    let Some(item) = items.get(bh / s.heads) else {
        return;
    };
    let (d, hd) = (s.width(), s.head_dim);
    let head = qkv[item.first * 3 * d + (bh % s.heads) * hd..].as_ptr() as *const i8;
    let bytes = hd * std::mem::size_of::<f32>();
    for j in 0..item.rows {
        for part in 0..3 {
            let row = head.wrapping_add((j * 3 * d + part * d) * std::mem::size_of::<f32>());
            // Every line the row touches, its last byte's included (rows need not start on a line).
            for at in (0..bytes).step_by(64).chain([bytes - 1]) {
                // SAFETY: a prefetch never faults and reads nothing into the program.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(at)) };
            }
        }
    }
}

/// One head on AVX-512. `head` starts at this head's q columns of the batch item's first row; `out` at its output.
///
/// Only what the masks let through is computed: `Q·Kᵀ` over the first `valid` keys (key padding mask), a causal
/// tower's key panel only for the queries at or after its first key, and `P·V` over the keys each row tile sees.
#[cfg(target_arch = "x86_64")]
unsafe fn head_avx512(out: *mut f32, head: &[f32], s: AttnShape, valid: usize) {
    use super::matmul::avx512::{rows_times_cols, MAX_COLS};
    use super::matmul::TileStore;
    let (d, hd, seq) = (s.width(), s.head_dim, s.seq);
    // Kᵀ in panels of MAX_COLS keys: the widest tile, so a 64-wide product has no wasted columns.
    let panels = valid.div_ceil(MAX_COLS);
    // A row of scores is padded to whole zmm; the softmax zeroes it past each query's keys, up to `seq`.
    let lds = seq.next_multiple_of(16);
    let plain = TileStore::PLAIN;
    with_scratch(panels * hd * MAX_COLS + seq * lds, |buf| {
        let (kt, scores) = buf.split_at_mut(panels * hd * MAX_COLS);
        pack_keys(kt, head.as_ptr().add(d), 3 * d, hd, valid);
        for p in 0..panels {
            let first_key = p * MAX_COLS;
            // Causal: queries before the panel's first key see none of its keys.
            let first_row = if s.causal { first_key } else { 0 };
            rows_times_cols(
                seq - first_row,
                |_, _| hd,
                head.as_ptr().add(first_row * 3 * d),
                3 * d,
                kt.as_ptr().add(p * hd * MAX_COLS),
                MAX_COLS,
                scores.as_mut_ptr().add(first_row * lds + first_key),
                lds,
                MAX_COLS.min(valid - first_key),
                plain,
            );
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (i, row) in scores.chunks_exact_mut(lds).enumerate() {
            let keys = s.keys(i, valid);
            simd::softmax(Isa::Avx512, &mut row[..seq], keys, scale);
        }
        let v = head.as_ptr().add(2 * d);
        for c0 in (0..hd).step_by(MAX_COLS) {
            rows_times_cols(
                seq,
                // The last (largest) key count among the tile's rows: the probabilities past it are zero.
                |r0, rows| s.keys(r0 + rows - 1, valid),
                scores.as_ptr(),
                lds,
                v.add(c0),
                3 * d,
                out.add(c0),
                d,
                MAX_COLS.min(hd - c0),
                plain,
            );
        }
    })
}

/// Kᵀ in panels of [`MAX_COLS`] keys, `kt[p][c][j] = k[MAX_COLS·p + j][c]`, for the first `valid` keys (row `j`
/// of `k` at `k + j·ldk`); lanes past `valid` are never loaded by the products (masked). Blocks of 16 keys × 16
/// channels are transposed in registers: a scalar scatter of each key row took 13 % of ViT-L/14's attention.
///
/// # Safety
/// AVX-512F; `k` valid for `valid` rows of `hd` floats at stride `ldk`; `kt` holds ⌈valid/MAX_COLS⌉ panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_keys(kt: &mut [f32], k: *const f32, ldk: usize, hd: usize, valid: usize) {
    use super::matmul::avx512::{mask16, MAX_COLS};
    use std::arch::x86_64::*;
    assert!(kt.len() >= valid.div_ceil(MAX_COLS) * hd * MAX_COLS);
    /// Round `S` of the transpose swaps the off-diagonal S × S blocks of every 2S × 2S block: rows i and i + S
    /// (bit S of i clear) exchange the columns where bit S differs from the row's.
    #[inline(always)]
    unsafe fn round<const S: usize>(r: &mut [__m512; 16]) {
        // Lane c of row i takes i's column c (bit S clear) or (i+S)'s column c − S; row i + S the rest.
        let lo: [i32; 16] =
            std::array::from_fn(|c| (if c & S == 0 { c } else { 16 + c - S }) as i32);
        let hi: [i32; 16] =
            std::array::from_fn(|c| (if c & S == 0 { c + S } else { 16 + c }) as i32);
        let (lo, hi) = (
            _mm512_loadu_si512(lo.as_ptr() as *const __m512i),
            _mm512_loadu_si512(hi.as_ptr() as *const __m512i),
        );
        for i in 0..16 {
            if i & S == 0 {
                let (a, b) = (r[i], r[i + S]);
                r[i] = _mm512_permutex2var_ps(a, lo, b);
                r[i + S] = _mm512_permutex2var_ps(a, hi, b);
            }
        }
    }
    for j0 in (0..valid).step_by(16) {
        let keys = (valid - j0).min(16);
        // 16 keys never straddle a panel: MAX_COLS is a multiple of 16.
        let panel = kt
            .as_mut_ptr()
            .add((j0 / MAX_COLS) * hd * MAX_COLS + j0 % MAX_COLS);
        for c0 in (0..hd).step_by(16) {
            let chans = (hd - c0).min(16);
            let m = mask16(chans);
            let mut r: [__m512; 16] = std::array::from_fn(|t| {
                if t < keys {
                    _mm512_maskz_loadu_ps(m, k.add((j0 + t) * ldk + c0))
                } else {
                    _mm512_setzero_ps()
                }
            });
            round::<8>(&mut r);
            round::<4>(&mut r);
            round::<2>(&mut r);
            round::<1>(&mut r);
            for (u, row) in r.iter().enumerate().take(chans) {
                _mm512_storeu_ps(panel.add((c0 + u) * MAX_COLS), *row);
            }
        }
    }
}

/// One head on AVX2: both products on the GEMM's 6 × 16 micro-kernel (`matmul::avx2`), every operand packed
/// first: Q and P into 6-row micro-panels, Kᵀ and V into 16-wide panels. Read in place (Q and V rows 3–12 KB apart,
/// one page each for ViT-L), the products ran slower than the `gemm` crate, which packs too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_avx2(out: *mut f32, head: &[f32], s: AttnShape, valid: usize) {
    use super::matmul::avx2::{pack_a, packed_tile, MR, NR};
    use super::matmul::{tile_span, TileStore};
    let (d, hd, seq) = (s.width(), s.head_dim, s.seq);
    let tiles = seq.div_ceil(MR);
    let (key_panels, chan_panels) = (valid.div_ceil(NR), hd.div_ceil(NR));
    // Each packed micro-panel has 2 floats of slack: pack_a's last 8-wide store runs 2 past.
    let (q_len, p_len) = (hd * MR + 2, seq * MR + 2);
    let sizes = [
        key_panels * hd * NR,
        chan_panels * valid * NR,
        tiles * q_len,
        tiles * p_len,
        seq * seq,
    ];
    with_scratch(sizes.iter().sum(), |buf| {
        let (kt, rest) = buf.split_at_mut(sizes[0]);
        let (vp, rest) = rest.split_at_mut(sizes[1]);
        let (qp, rest) = rest.split_at_mut(sizes[2]);
        let (pp, scores) = rest.split_at_mut(sizes[3]);
        let q = head.as_ptr();
        pack_keys_avx2(kt, q.add(d), 3 * d, hd, valid);
        pack_values(vp, q.add(2 * d), 3 * d, hd, valid);
        for t in 0..tiles {
            let (r0, rows) = tile_span(seq, tiles, t);
            pack_a(
                q.add(r0 * 3 * d),
                3 * d,
                rows,
                hd,
                qp.as_mut_ptr().add(t * q_len),
            );
        }
        for p in 0..key_panels {
            let first_key = p * NR;
            for t in 0..tiles {
                let (r0, rows) = tile_span(seq, tiles, t);
                // Causal: a tile whose last query comes before the panel's first key sees none of its keys.
                if s.causal && r0 + rows <= first_key {
                    continue;
                }
                packed_tile(
                    rows,
                    hd,
                    qp.as_ptr().add(t * q_len),
                    kt.as_ptr().add(p * hd * NR),
                    scores.as_mut_ptr().add(r0 * seq + first_key),
                    seq,
                    NR.min(valid - first_key),
                    TileStore::PLAIN,
                );
            }
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
            simd::softmax(Isa::Avx2, row, s.keys(i, valid), scale);
        }
        for t in 0..tiles {
            let (r0, rows) = tile_span(seq, tiles, t);
            // The last (largest) key count among the tile's rows: the probabilities past it are zero.
            let keys = s.keys(r0 + rows - 1, valid);
            let pt = pp.as_mut_ptr().add(t * p_len);
            pack_a(scores.as_ptr().add(r0 * seq), seq, rows, keys, pt);
            for c in 0..chan_panels {
                let c0 = c * NR;
                let v = vp.as_ptr().add(c * valid * NR);
                let o = out.add(r0 * d + c0);
                packed_tile(rows, keys, pt, v, o, d, NR.min(hd - c0), TileStore::PLAIN);
            }
        }
    })
}

/// V in panels of 16 channels, `vp[p][j][c] = v[j][16p + c]`, for the first `valid` keys (row `j` of `v` at
/// `v + j·ldv`). A head dim ending mid-panel leaves the panel's last lanes stale: the product computes those
/// columns and never stores them.
///
/// # Safety
/// AVX2; `v` valid for `valid` rows of `hd` floats at stride `ldv`; `vp` holds ⌈hd/16⌉ panels of `valid` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_values(vp: &mut [f32], v: *const f32, ldv: usize, hd: usize, valid: usize) {
    use super::matmul::avx2::NR;
    use super::simd::{Avx2, Simd};
    assert!(vp.len() >= hd.div_ceil(NR) * valid * NR);
    for j in 0..valid {
        for c0 in (0..hd).step_by(8) {
            let lanes = (hd - c0).min(8);
            let x = Avx2::load(v.add(j * ldv + c0), lanes, 0.0);
            let dst = vp
                .as_mut_ptr()
                .add((c0 / NR) * valid * NR + j * NR + c0 % NR);
            Avx2::store(dst, x, 8);
        }
    }
}

/// Kᵀ in panels of 16 keys, `kt[p][c][j] = k[16p + j][c]`, for the first `valid` keys (row `j` of `k` at
/// `k + j·ldk`), by 8 × 8 register transposes. Lanes past `valid` in the last panel hold stale values: the
/// products compute them and never store them.
///
/// # Safety
/// AVX2 + FMA; `k` valid for `valid` rows of `hd` floats at stride `ldk`; `kt` holds ⌈valid/16⌉ panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_keys_avx2(kt: &mut [f32], k: *const f32, ldk: usize, hd: usize, valid: usize) {
    use super::matmul::avx2::{transpose8, NR as MAX_COLS};
    use super::simd::{Avx2, Simd};
    use std::arch::x86_64::*;
    assert!(kt.len() >= valid.div_ceil(MAX_COLS) * hd * MAX_COLS);
    for j0 in (0..valid).step_by(8) {
        let keys = (valid - j0).min(8);
        // 8 keys never straddle a panel: MAX_COLS is a multiple of 8.
        let panel = kt
            .as_mut_ptr()
            .add((j0 / MAX_COLS) * hd * MAX_COLS + j0 % MAX_COLS);
        for c0 in (0..hd).step_by(8) {
            let chans = (hd - c0).min(8);
            let r: [__m256; 8] = std::array::from_fn(|t| {
                if t < keys {
                    Avx2::load(k.add((j0 + t) * ldk + c0), chans, 0.0)
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (u, row) in transpose8(r).iter().enumerate().take(chans) {
                _mm256_storeu_ps(panel.add((c0 + u) * MAX_COLS), *row);
            }
        }
    }
}

/// One head on the other tiers: the products through the `gemm` crate, the softmax on the chosen tier. `out` starts
/// at the item's first row, in the head's columns.
fn head_fallback(isa: Isa, out: *mut f32, head: &[f32], s: AttnShape, valid: usize) {
    let (d, hd, seq) = (s.width(), s.head_dim, s.seq);
    with_scratch(seq * seq + seq * hd, |buf| {
        let (scores, o) = buf.split_at_mut(seq * seq);
        // scores[i, j] = Σ_c q[i, c] · k[j, c]: rhs is Kᵀ, read with swapped strides.
        sgemm(
            seq,
            seq,
            hd,
            scores,
            seq,
            false,
            head,
            3 * d,
            1,
            &head[d..],
            1,
            3 * d,
            gemm::Parallelism::None,
        );
        let scale = 1.0 / (hd as f32).sqrt();
        for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
            let keys = s.keys(i, valid);
            simd::softmax(isa, row, keys, scale);
        }
        sgemm(
            seq,
            hd,
            seq,
            o,
            hd,
            false,
            scores,
            seq,
            1,
            &head[2 * d..],
            3 * d,
            1,
            gemm::Parallelism::None,
        );
        for (i, row) in o.chunks_exact(hd).enumerate() {
            // SAFETY: the item's row i of out exists (asserted by the caller); this task owns its head's columns.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(i * d), hd) };
        }
    })
}
