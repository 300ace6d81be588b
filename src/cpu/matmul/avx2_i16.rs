//! The GEMM of the `avx2-i16` engine: 16-bit fixed-point products on AVX2 (`vpmaddwd`), the fast mode of CPUs
//! without AVX-512 (ARCHITECTURE §3). On Zen 3 one `vpmaddwd` + `vpaddd` pair does 16 multiply-adds at 1.6× the
//! rate of 8 f32 FMAs (measured: 80 against 50 G multiply-adds/s on one core), so the product runs at up to 3.2×
//! the f32 arithmetic rate while bf16 products do not exist on these CPUs.
//!
//! **Numbers**: the fixed-point format of [`fixed16`](super::fixed16) (11-bit weights per output column, 14-bit
//! activations per row, i32 sums moved into f32 every [`STEPS`] k pairs).
//!
//! **Kernel.** The f32 kernel's shape (6 rows × 16 columns, 12 accumulators; see [`avx2`](super::avx2)) on i32
//! lanes: a panel step is 16 columns × one k pair (64 bytes, one cache line), an A step one broadcast pair per row.
//! Weights live in panels of 16 columns; each job copies A's quantized rows into micro-panels `[pair][6]` with the
//! f32 kernel's transposing packer. Bias, activation and residual are fused into the store as everywhere.

use std::arch::x86_64::*;

use super::avx2::{job_nest, store_tile, MR, NR};
use super::fixed16::{run_jobs, PackedI16, QuantA, STEPS};
use super::{Blocking, Jobs, TileStore};
use crate::backend::Epilogue;
use crate::cpu::Isa;

/// Longest k chunk (elements, even): a panel chunk is 384 pairs × 64 bytes = 24 KB, inside L1.
const KC: usize = 768;

/// The job shape: as the f32 AVX2 kernel's (the A block is half its bytes).
pub(super) const BLOCKING: Blocking = super::avx2::BLOCKING;

/// Quantizes `w[n, k]` (HF layout) into this kernel's 16-column panels.
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> PackedI16 {
    super::fixed16::pack(w, n, k, NR)
}

/// One tile's operands: `pairs` k pairs of A (a packed micro-panel `[pairs][MR]`) and of B (a panel chunk
/// `[pairs][16]`), the tile's row steps and its panel's 16 column steps.
#[derive(Clone, Copy)]
struct Operands {
    pairs: usize,
    a: *const u32,
    b: *const u32,
    row_steps: *const f32,
    col_steps: *const f32,
}

/// `C[R, cols] (+)= (A_q · B_q) · s_row · s_col`.
#[inline(always)]
unsafe fn tile<const R: usize>(o: Operands, c: *mut f32, ldc: usize, cols: usize, st: TileStore) {
    let mut sum = [[_mm256_setzero_ps(); 2]; R];
    let mut p0 = 0;
    while p0 < o.pairs {
        let end = (p0 + STEPS).min(o.pairs);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for p in p0..end {
            let bp = o.b.add(p * NR) as *const __m256i;
            let (b0, b1) = (_mm256_loadu_si256(bp), _mm256_loadu_si256(bp.add(1)));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_set1_epi32(*o.a.add(p * MR + i) as i32);
                row[0] = _mm256_add_epi32(row[0], _mm256_madd_epi16(ai, b0));
                row[1] = _mm256_add_epi32(row[1], _mm256_madd_epi16(ai, b1));
            }
        }
        for (s, r) in sum.iter_mut().zip(&acc) {
            s[0] = _mm256_add_ps(s[0], _mm256_cvtepi32_ps(r[0]));
            s[1] = _mm256_add_ps(s[1], _mm256_cvtepi32_ps(r[1]));
        }
        p0 = end;
    }
    let cs = [
        _mm256_loadu_ps(o.col_steps),
        _mm256_loadu_ps(o.col_steps.add(8)),
    ];
    for (i, s) in sum.iter_mut().enumerate() {
        let rs = _mm256_set1_ps(*o.row_steps.add(i));
        s[0] = _mm256_mul_ps(_mm256_mul_ps(s[0], rs), cs[0]);
        s[1] = _mm256_mul_ps(_mm256_mul_ps(s[1], rs), cs[1]);
    }
    store_tile::<R, 2>(&sum, c, ldc, cols, st);
}

/// [`tile`] for a run-time height `rows` ≤ [`MR`].
#[inline(always)]
unsafe fn packed_tile(
    rows: usize,
    o: Operands,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    st: TileStore,
) {
    match rows {
        6 => tile::<6>(o, c, ldc, cols, st),
        5 => tile::<5>(o, c, ldc, cols, st),
        4 => tile::<4>(o, c, ldc, cols, st),
        3 => tile::<3>(o, c, ldc, cols, st),
        2 => tile::<2>(o, c, ldc, cols, st),
        1 => tile::<1>(o, c, ldc, cols, st),
        _ => unreachable!("tile height {rows} outside 1..={MR}"),
    }
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn job(
    jobs: &Jobs,
    j: usize,
    a: &QuantA,
    m: usize,
    k: usize,
    w: &PackedI16,
    n: usize,
    bias: *const f32,
    c: *mut f32,
    ep: Epilogue,
) {
    let kp = k.div_ceil(2);
    let (panels, col_steps) = (w.panels.as_slice().as_ptr(), w.scales.as_ptr());
    // The pair words go through the f32 packer as bits.
    let words = a.pairs.as_ptr() as *const f32;
    job_nest(jobs, j, m, n, words, kp, KC / 2, ep, bias, |t| {
        let o = Operands {
            pairs: t.klen,
            a: t.a as *const u32,
            b: panels.add(t.p * kp * NR + t.k0 * NR),
            row_steps: a.steps.as_ptr().add(t.r0),
            col_steps: col_steps.add(t.col),
        };
        packed_tile(t.rows, o, c.add(t.r0 * n + t.col), n, t.cols, t.st);
    });
}

/// `out[m, n] (+)= a[m, k] · Wᵀ` on the quantized panels of [`pack`], with the epilogue `ep` fused into the last k
/// chunk's store.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    a: &[f32],
    m: usize,
    k: usize,
    w: &PackedI16,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    ep: Epilogue,
) {
    assert!(Isa::Avx2.available());
    let shape = (Isa::Avx2, BLOCKING);
    run_jobs(shape, a, m, k, w, n, bias, out, ep, |jobs, j, qa, b, c| {
        // SAFETY: AVX2 asserted above; `run_jobs` checked the quantized A, the panels, their steps, bias and
        // out for m, n, k; each job writes its own rectangle of out.
        unsafe { job(jobs, j, qa, m, k, w, n, b, c, ep) }
    });
}
