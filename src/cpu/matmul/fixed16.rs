//! The 16-bit fixed-point format of the i16 engines (ARCHITECTURE §3): `avx2-i16` (`vpmaddwd`, AVX2-only CPUs)
//! and `avx512-i16` (`vpdpwssd`, AVX512_VNNI) quantize alike, so their products differ only in the order of the
//! f32 sums.
//!
//! **Numbers.** `C = (A_q · W_qᵀ) · s_row · s_col`:
//! - each activation row is scaled onto ±[`A_MAX`] = 2¹⁴ − 1 per call, after a pass that finds its largest |value|;
//! - each weight column (output channel) is scaled once at load onto ±[`W_MAX`] = 2¹¹ − 1, or finer where that
//!   is needed to bound its window sums (below);
//! - both rounded to nearest. An element's error is ≤ half a step of its row's or column's range. For an activation
//!   that is finer than bf16's half ulp (2⁻⁹ of the value) while the row's largest |value| is under 64× it; a
//!   weight column's largest |value| is ≈ 4× its typical one, so its grid is ≈ 8× finer than bf16. Measured: the
//!   fixtures' embeddings at cosine ≥ 0.99997 to f32 (bf16: 0.99991), and tests/ops.rs holds the kernel to bf16's
//!   error bound on rows with 100× outliers.
//! - The kernels sum the products of [`STEPS`] = 64 k pairs into i32 lanes, then move the sum into f32
//!   accumulators. A lane's sum is at most (A_MAX + 1) · Σ|w_q| over the window's 128 weights, so every column's
//!   step is chosen so that any 128 consecutive |w_q| sum to ≤ [`WINDOW_SUM`] (`column_steps`): no i32 ever
//!   overflows, whatever the activations. Real weights (near-Gaussian, largest ≈ 3–4× the typical) stay on the
//!   full ±2047 grid; only flat columns (uniform random weights: the bench's synthetic model) get a step up to
//!   ≈ 2× coarser. 32 pairs at the full grid for every column (the earlier bound) moved the 24 i32 accumulators of
//!   an AVX-512 tile to their f32 sums (on the stack) twice as often: measured on Zen 4 (2 threads, alternated
//!   rounds), ViT-B/32's text GEMMs at 282 rows, best of 6: out-projection 372 → 379 GFLOP/s, fc1 402 → 411, fc2
//!   387 → 398, q|k|v 410 → 407; the i16 text tower at batch 32, best of 8: 55.0 → 54.0 ms.
//! - Non-finite activations make their row's step NaN, so the row's outputs are NaN (as f32 arithmetic would
//!   give), never a silent wrong value. Rows whose largest |value| is below [`TINY`] contribute 0.
//!
//! Weights live as `[panel][⌈k/2⌉][nr]` u32 pairs (low half the even k) on 64-byte boundaries, `nr` the kernel's
//! panel width; A is quantized once per call into rows of pairs, `[m][⌈k/2⌉]`, with one step per row.

use std::arch::x86_64::*;

use super::{par_jobs, zero_k, Aligned, Blocking, Jobs};
use crate::backend::Epilogue;
use crate::cpu::Isa;

/// Largest |quantized weight|: 11 bits and a sign.
pub(super) const W_MAX: f32 = 2047.0;
/// Largest |quantized activation|: 14 bits and a sign.
pub(super) const A_MAX: f32 = 16383.0;
/// k pairs summed in i32 before the sum moves to f32.
pub(super) const STEPS: usize = 64;
/// Largest Σ|w_q| over any `2 · STEPS` consecutive weights of a column: with |a_q| ≤ A_MAX + 1 a window's i32 sum
/// stays within i32 (A NaN quantizes to −32768 and may wrap, but its row's step is NaN: those outputs are NaN
/// whatever the sum).
pub(super) const WINDOW_SUM: f64 = (i32::MAX as i64 / (A_MAX as i64 + 1)) as f64;
/// Below this largest |value| a row of A is taken as zero: its reciprocal scale would overflow f32.
const TINY: f32 = 1e-30;

/// A weight quantized per output column and packed into panels of `nr` columns.
pub(crate) struct PackedI16 {
    /// `[panel][⌈k/2⌉][nr]` quantized pairs.
    pub(super) panels: Aligned<u32>,
    /// Per output column: the value of one quantization step; zero past `n` up to whole panels.
    pub(super) scales: Vec<f32>,
}

impl PackedI16 {
    /// Whether this holds `n` columns of depth `k` in panels of `nr` (what a kernel asserts before reading).
    pub(super) fn holds(&self, n: usize, k: usize, nr: usize) -> bool {
        let panels = n.div_ceil(nr);
        self.panels.as_slice().len() >= panels * k.div_ceil(2) * nr
            && self.scales.len() >= panels * nr
    }
}

/// The largest |x| of `xs`, NaN if any is NaN.
fn abs_max(xs: &[f32]) -> f32 {
    xs.iter().fold(0f32, |m, &x| {
        if m.is_nan() || x.is_nan() {
            f32::NAN
        } else {
            m.max(x.abs())
        }
    })
}

/// (step, 1 / step) mapping |x| ≤ `max` onto |q| ≤ `limit`: (0, 0) for a row or column that is zero (or below
/// [`TINY`]), (NaN, 0) for a non-finite one.
fn steps(max: f32, limit: f32) -> (f32, f32) {
    if !max.is_finite() {
        (f32::NAN, 0.0)
    } else if max < TINY {
        (0.0, 0.0)
    } else {
        (max / limit, limit / max)
    }
}

/// A weight column's (step, 1 / step): ±[`W_MAX`] over its largest |value|, or a coarser step where needed so that
/// its quantized values over any `2 · STEPS` consecutive k sum to ≤ [`WINDOW_SUM`] in magnitude. Rounding adds ≤ ½
/// per value (`STEPS` per window), f32's products ≪ 1 more, hence the margin of `STEPS + 1`.
fn column_steps(col: &[f32]) -> (f32, f32) {
    let (step, inv) = steps(abs_max(col), W_MAX);
    if inv == 0.0 {
        return (step, inv);
    }
    let widest = window_abs_sum(col, 2 * STEPS);
    let room = WINDOW_SUM - (STEPS + 1) as f64;
    if f64::from(inv) * widest <= room {
        return (step, inv);
    }
    let inv = (room / widest) as f32;
    (1.0 / inv, inv)
}

/// The largest Σ|x| over `len` consecutive values of `xs` (all of them where shorter), in f64.
fn window_abs_sum(xs: &[f32], len: usize) -> f64 {
    let abs = |i: usize| f64::from(xs[i].abs());
    let mut sum: f64 = (0..len.min(xs.len())).map(abs).sum();
    let mut widest = sum;
    for i in len..xs.len() {
        sum += abs(i) - abs(i - len);
        widest = widest.max(sum);
    }
    widest
}

/// `x / step` rounded to nearest even (as `vcvtps2dq` does), clamped to i16.
fn quantize(x: f32, inv_step: f32) -> i16 {
    // Adding 1.5 · 2²³ moves |v| ≤ 2²² to where one ulp is 1, so the addition itself rounds to nearest even
    // (`round_ties_even` is a libm call on baseline x86-64, a fifth of the load time of a model).
    const SHIFT: f32 = 12_582_912.0;
    let v = (x * inv_step).clamp(-32768.0, 32767.0);
    ((v + SHIFT) - SHIFT) as i16
}

/// Two quantized values as one pair word, the first in the low half.
fn pair(lo: i16, hi: i16) -> u32 {
    u32::from(lo as u16) | u32::from(hi as u16) << 16
}

/// Quantizes `w[n, k]` (HF layout) per output column and packs it into panels of `nr` columns.
pub(crate) fn pack(w: &[f32], n: usize, k: usize, nr: usize) -> PackedI16 {
    let (panels, kp) = (n.div_ceil(nr), k.div_ceil(2));
    let mut scales = vec![0f32; panels * nr];
    let mut inv = vec![0f32; n];
    for col in 0..n {
        (scales[col], inv[col]) = column_steps(&w[col * k..(col + 1) * k]);
    }
    let mut p = Aligned::<u32>::zeroed(panels * kp * nr);
    super::fill_panels(p.as_mut_slice(), nr, kp, n, |panel, cols| {
        for (t, out) in panel.chunks_exact_mut(nr).enumerate() {
            for (o, col) in out.iter_mut().zip(cols.clone()) {
                let q = |kk: usize| {
                    if kk < k {
                        quantize(w[col * k + kk], inv[col])
                    } else {
                        0
                    }
                };
                *o = pair(q(2 * t), q(2 * t + 1));
            }
        }
    });
    PackedI16 { panels: p, scales }
}

/// Quantizes `a[m, k]` once per call into `q` (`[m][⌈k/2⌉]` pair words) and each row's step into `row_steps`: one
/// parallel pass, so the jobs of several panel groups that share rows only copy them.
fn quantize_a(a: &[f32], m: usize, k: usize, q: &mut [u32], row_steps: &mut [f32]) {
    use rayon::prelude::*;
    let kp = k.div_ceil(2);
    // 16 rows per task: ViT-B/32's 1600-row GEMMs make 100 tasks, batch 1's 50 rows 4.
    const ROWS: usize = 16;
    a[..m * k]
        .par_chunks(ROWS * k)
        .zip(q[..m * kp].par_chunks_mut(ROWS * kp))
        .zip(row_steps[..m].par_chunks_mut(ROWS))
        .for_each(|((rows, q), st)| {
            for ((row, qrow), step) in rows.chunks_exact(k).zip(q.chunks_exact_mut(kp)).zip(st) {
                let (s, inv) = steps(abs_max_avx2(row), A_MAX);
                *step = s;
                // SAFETY: AVX2 (asserted in `run`); k values into ⌈k/2⌉ pairs.
                unsafe { quantize_row_avx2(row, inv, qrow) };
            }
        });
}

/// [`abs_max`] with AVX2 (the pass reads all of A once per GEMM).
fn abs_max_avx2(xs: &[f32]) -> f32 {
    // SAFETY: the avx2-i16 engine runs only where AVX2 is present (asserted in `run`); loads stay inside `xs`.
    unsafe { abs_max_avx2_unchecked(xs) }
}

#[target_feature(enable = "avx2")]
unsafe fn abs_max_avx2_unchecked(xs: &[f32]) -> f32 {
    let (mut m, mut nan) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let sign = _mm256_set1_ps(-0.0);
    let mut chunks = xs.chunks_exact(8);
    for c in chunks.by_ref() {
        let x = _mm256_loadu_ps(c.as_ptr());
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, x));
        // vmaxps drops NaN operands: they are tracked on their own.
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    if _mm256_movemask_ps(nan) != 0 {
        return f32::NAN;
    }
    abs_max(&lanes).max(abs_max(chunks.remainder()))
}

/// Quantizes the values of `src` (1 / step `inv`) into its ⌈len/2⌉ pair words at the start of `dst`.
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(src: &[f32], inv: f32, dst: &mut [u32]) {
    let len = src.len();
    assert!(dst.len() >= len.div_ceil(2));
    let (src, dst) = (src.as_ptr(), dst.as_mut_ptr());
    let s = _mm256_set1_ps(inv);
    let mut i = 0;
    while i + 16 <= len {
        let lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src.add(i)), s));
        let hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src.add(i + 8)), s));
        // vpackssdw saturates to i16 per 128-bit lane ([lo 0-3, hi 0-3 | lo 4-7, hi 4-7]); the permute restores
        // k order.
        let packed = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(lo, hi));
        _mm256_storeu_si256(dst.add(i / 2) as *mut __m256i, packed);
        i += 16;
    }
    while i < len {
        let hi = if i + 1 < len {
            quantize(*src.add(i + 1), inv)
        } else {
            0
        };
        *dst.add(i / 2) = pair(quantize(*src.add(i), inv), hi);
        i += 2;
    }
}

thread_local! {
    /// A call's quantized A (`[m][⌈k/2⌉]` pair words), reused across calls on this thread.
    static A_QUANT: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A's quantized rows and their steps, as the jobs read them.
pub(super) struct QuantA<'a> {
    pub pairs: &'a [u32],
    pub steps: &'a [f32],
}

/// `out[m, n] (+)= a[m, k] · Wᵀ` for an i16 kernel of tier `isa` and job shape `blocking`: checks the operands,
/// handles k = 0, quantizes A once and runs `job(jobs, j, A, bias, out)` for every job, in parallel (each job
/// writes its own rectangle of `out`). The caller asserted its kernel's instructions (AVX2 at least).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_jobs(
    (isa, blocking): (Isa, Blocking),
    a: &[f32],
    m: usize,
    k: usize,
    w: &PackedI16,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    ep: Epilogue,
    job: impl Fn(&Jobs, usize, &QuantA, *const f32, *mut f32) + Sync,
) {
    assert!(a.len() >= m * k && out.len() >= m * n);
    assert!(w.holds(n, k, blocking.nr) && bias.is_none_or(|b| b.len() >= n));
    if k == 0 {
        return zero_k(isa, out, m, n, bias, ep);
    }
    with_quantized(a, m, k, |qa| {
        par_jobs(
            blocking,
            m,
            n,
            std::ptr::null::<u32>(),
            std::ptr::null::<u32>(),
            bias,
            out.as_mut_ptr(),
            |jobs, j, _, _, b, c| job(jobs, j, qa, b, c),
        )
    });
}

/// Runs `f` on `a[m, k]` quantized ([`quantize_a`]) into this thread's scratch. The caller asserted AVX2.
fn with_quantized<R>(a: &[f32], m: usize, k: usize, f: impl FnOnce(&QuantA) -> R) -> R {
    let mut row_steps = vec![0f32; m];
    crate::cpu::with_thread_scratch(&A_QUANT, |q| {
        q.resize(m * k.div_ceil(2), 0);
        quantize_a(a, m, k, q, &mut row_steps);
        f(&QuantA {
            pairs: q,
            steps: &row_steps,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_rounds_to_nearest_and_keeps_the_sign() {
        let (step, inv) = steps(2.0, A_MAX);
        assert_eq!(step, 2.0 / A_MAX);
        assert_eq!(quantize(2.0, inv), A_MAX as i16);
        assert_eq!(quantize(-2.0, inv), -A_MAX as i16);
        assert_eq!(quantize(step * 2.5, inv), 2, "ties go to even");
        assert_eq!(pair(-1, 1), 0x0001_FFFF);
        assert_eq!(steps(0.0, A_MAX), (0.0, 0.0));
        assert!(steps(f32::INFINITY, A_MAX).0.is_nan());
        assert!(abs_max(&[1.0, f32::NAN, 3.0]).is_nan());
    }

    /// Every window of `2 · STEPS` quantized weights of every column, read back from the panels, sums to
    /// ≤ WINDOW_SUM in magnitude, and no |w_q| passes W_MAX; near-Gaussian columns keep the full ±W_MAX grid.
    #[test]
    fn weight_windows_cannot_overflow_i32_and_real_weights_keep_the_full_grid() {
        let (k, nr) = (300, 16);
        let flat = vec![0.7f32; k];
        let mut alternating: Vec<f32> = (0..k)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        alternating[5] = 1.0000001;
        // A uniform column (the synthetic model's weights) and a near-Gaussian one: a sum of four uniforms.
        let mut seed = 12345u64;
        let mut uniform = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let flat_random: Vec<f32> = (0..k).map(|_| uniform()).collect();
        let gaussian: Vec<f32> = (0..k)
            .map(|_| (0..4).map(|_| uniform()).sum::<f32>())
            .collect();
        let cols = [flat, alternating, flat_random, gaussian.clone()];
        let w: Vec<f32> = cols.concat();
        let packed = pack(&w, cols.len(), k, nr);
        let kp = k.div_ceil(2);
        for (c, col) in cols.iter().enumerate() {
            let q: Vec<i32> = (0..kp)
                .flat_map(|t| {
                    let word = packed.panels.as_slice()[t * nr + c];
                    [
                        i32::from(word as u16 as i16),
                        i32::from((word >> 16) as u16 as i16),
                    ]
                })
                .take(k)
                .collect();
            assert!(q.iter().all(|v| v.abs() <= W_MAX as i32), "column {c}");
            let widest = q
                .windows(2 * STEPS)
                .map(|win| win.iter().map(|v| f64::from(v.abs())).sum::<f64>())
                .fold(0.0, f64::max);
            assert!(
                widest <= WINDOW_SUM,
                "column {c}: a window sums to {widest}"
            );
            // The grid still reproduces the column to half a step.
            let step = packed.scales[c];
            for (v, x) in q.iter().zip(col) {
                assert!((*v as f32 * step - x).abs() <= 0.5001 * step, "column {c}");
            }
        }
        assert_eq!(
            packed.scales[3],
            abs_max(&gaussian) / W_MAX,
            "near-Gaussian: full grid"
        );
        assert!(packed.scales[0] > 0.7 / W_MAX, "flat: a coarser step");
    }

    #[test]
    fn vector_row_quantization_matches_the_scalar_rule() {
        if !Isa::Avx2.available() {
            return;
        }
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919 % 61) as f32 - 30.0) * 0.37)
            .collect();
        let (_, inv) = steps(abs_max(&x), A_MAX);
        assert_eq!(abs_max_avx2(&x), abs_max(&x));
        let mut got = vec![0u32; 19];
        // SAFETY: AVX2 checked; 37 values into 19 pairs.
        unsafe { quantize_row_avx2(&x, inv, &mut got) };
        let want: Vec<u32> = x
            .chunks(2)
            .map(|p| {
                pair(
                    quantize(p[0], inv),
                    p.get(1).map_or(0, |&v| quantize(v, inv)),
                )
            })
            .collect();
        assert_eq!(got, want);
    }
}
