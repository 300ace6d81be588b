//! The GEMM of the `avx512-i16` engine: 16-bit fixed-point products with AVX512_VNNI's `vpdpwssd` (ARCHITECTURE §3).
//! One `vpdpwssd zmm` does 32 multiply-adds, as many as `vdpbf16ps` and twice an f32 FMA (measured on Zen 4:
//! 77 G instructions' worth of 64 operations each per second on one core, the same as `vdpbf16ps`), on a grid ≈ 8×
//! finer than bf16's: so it runs every product at the bf16 rate, including the ones bf16 must leave in f32
//! (§7.13), whose rounding the later layers carry.
//!
//! **Numbers**: the fixed-point format of [`fixed16`](super::fixed16), as the `avx2-i16` engine's.
//!
//! **Kernel.** The AVX-512 f32/bf16 kernels' shape and job walk (`avx512::for_each_tile`): tiles of up to 8 rows ×
//! 48 columns on the 48-column panels, `[panel][⌈k/2⌉][48]` pairs, A's quantized pairs broadcast in place (no
//! packing). The 24 i32 accumulators take 24 of the 32 zmm, so the f32 sums they move into every [`STEPS`] k pairs
//! live on the stack (an L1 round trip per 32 products of each accumulator). Bias, activation and residual are fused
//! into the store as everywhere.

use std::arch::x86_64::*;

use super::avx512::{for_each_tile, prefetch_tile, store_tile};
use super::fixed16::{run_jobs, PackedI16, QuantA, STEPS};
use super::{PanelPrefetch, TileStore, BLOCKING, NR, NV};
use crate::backend::Epilogue;
use crate::cpu::isa::has_avx512_vnni;
use crate::cpu::Isa;

/// Quantizes `w[n, k]` (HF layout) into this kernel's 48-column panels.
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> PackedI16 {
    super::fixed16::pack(w, n, k, NR)
}

/// One tile's operands: `pairs` k pairs of A (rows of quantized pairs at stride `lda`) and of B (a panel chunk
/// `[pairs][48]`), the tile's row steps, its panel's 48 column steps, and the next panel to prefetch.
#[derive(Clone, Copy)]
struct Operands {
    pairs: usize,
    a: *const u32,
    lda: usize,
    b: *const u32,
    row_steps: *const f32,
    col_steps: *const f32,
    next: PanelPrefetch,
}

/// `C[R, cols] (+)= (A_q · B_q) · s_row · s_col`.
#[inline(always)]
unsafe fn tile<const R: usize>(o: Operands, c: *mut f32, ldc: usize, cols: usize, st: TileStore) {
    let mut sums = [[_mm512_setzero_ps(); NV]; R];
    let mut p0 = 0;
    while p0 < o.pairs {
        let end = (p0 + STEPS).min(o.pairs);
        if end == o.pairs {
            // The last window: ≈ 32 steps (≈ 800 cycles) before the store, about a DRAM round trip.
            prefetch_tile::<R>(c, ldc);
        }
        let mut acc = [[_mm512_setzero_si512(); NV]; R];
        for kk in p0..end {
            // This tile's share of the next panel (as the bf16 kernel).
            o.next.step(kk);
            let bp = o.b.add(kk * NR) as *const __m512i;
            let bv: [__m512i; NV] = std::array::from_fn(|j| _mm512_loadu_si512(bp.add(j)));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_epi32(*o.a.add(i * o.lda + kk) as i32);
                for j in 0..NV {
                    row[j] = _mm512_dpwssd_epi32(row[j], ai, bv[j]);
                }
            }
        }
        for (s, r) in sums.iter_mut().zip(&acc) {
            for j in 0..NV {
                s[j] = _mm512_add_ps(s[j], _mm512_cvtepi32_ps(r[j]));
            }
        }
        p0 = end;
    }
    let cs: [__m512; NV] = std::array::from_fn(|j| _mm512_loadu_ps(o.col_steps.add(16 * j)));
    for (i, s) in sums.iter_mut().enumerate() {
        let rs = _mm512_set1_ps(*o.row_steps.add(i));
        for j in 0..NV {
            s[j] = _mm512_mul_ps(_mm512_mul_ps(s[j], rs), cs[j]);
        }
    }
    store_tile::<R, NV>(&sums, c, ldc, cols, st);
}

#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn job(
    jobs: &super::Jobs,
    j: usize,
    qa: &QuantA,
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
    for_each_tile(jobs, j, m, kp, n, bias, ep, |t| {
        let panel = panels.add(t.p * kp * NR + t.k0 * NR);
        let o = Operands {
            pairs: t.klen,
            a: qa.pairs.as_ptr().add(t.r0 * kp + t.k0),
            lda: kp,
            b: panel,
            row_steps: qa.steps.as_ptr().add(t.r0),
            col_steps: col_steps.add(t.col),
            next: t.prefetch(panels as *const u8, kp),
        };
        let (cp, cols, st) = (c.add(t.r0 * n + t.col), t.cols, t.st);
        match t.rows {
            8 => tile::<8>(o, cp, n, cols, st),
            7 => tile::<7>(o, cp, n, cols, st),
            6 => tile::<6>(o, cp, n, cols, st),
            5 => tile::<5>(o, cp, n, cols, st),
            4 => tile::<4>(o, cp, n, cols, st),
            3 => tile::<3>(o, cp, n, cols, st),
            2 => tile::<2>(o, cp, n, cols, st),
            1 => tile::<1>(o, cp, n, cols, st),
            rows => unreachable!("tile height {rows} outside 1..=8"),
        }
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
    assert!(Isa::Avx512.available() && has_avx512_vnni());
    let shape = (Isa::Avx512, BLOCKING);
    run_jobs(shape, a, m, k, w, n, bias, out, ep, |jobs, j, qa, b, c| {
        // SAFETY: AVX-512F and AVX512_VNNI asserted above; `run_jobs` checked the quantized A, the panels, their steps, bias and
        // out for m, n, k; each job writes its own rectangle of out.
        unsafe { job(jobs, j, qa, m, k, w, n, b, c, ep) }
    });
}
