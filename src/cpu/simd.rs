//! Hand-written SIMD for the CPU backend's row-wise ops (layernorm, softmax, activations, L2 normalize).
//!
//! Each op is written once, generic over a `Simd` tier (16-lane AVX-512, 8-lane AVX2+FMA, or 1-lane scalar), and
//! instantiated per tier inside a `#[target_feature]` wrapper so the intrinsics inline. The scalar tier runs the
//! same algorithm (same polynomials, same order of operations per lane), which makes it the twin every vector tier
//! is tested against. Callers pick a tier with [`Isa`]; a tier the CPU lacks falls back to scalar, so the safe
//! wrappers can never execute an unsupported instruction.

use super::isa::Isa;
use crate::config::Activation;

/// One SIMD register type and the handful of operations the row kernels need.
///
/// # Safety
/// Implementations use CPU features: call them only from code compiled for (and running on) that tier. `n` in the
/// partial load/store is `1..=LANES`; pointers must be valid for `n` elements.
pub(crate) trait Simd {
    const LANES: usize;
    type V: Copy;
    unsafe fn splat(x: f32) -> Self::V;
    /// Loads `n` lanes, the rest set to `fill`.
    unsafe fn load(p: *const f32, n: usize, fill: f32) -> Self::V;
    /// Stores the first `n` lanes.
    unsafe fn store(p: *mut f32, v: Self::V, n: usize);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `a·b + c`, fused.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn abs(a: Self::V) -> Self::V;
    /// Round to nearest integer (ties to even).
    unsafe fn round(a: Self::V) -> Self::V;
    /// `2^n` for integer-valued `n` in [−126, 127].
    unsafe fn pow2(n: Self::V) -> Self::V;
    /// Per lane: `x < 0 ? neg : pos`.
    unsafe fn select_negative(x: Self::V, neg: Self::V, pos: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    unsafe fn hmax(v: Self::V) -> f32;
}

/// The scalar tier: one lane, plain f32 (`mul_add` keeps the fused rounding of the vector tiers).
pub(crate) struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    type V = f32;
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, _n: usize, _fill: f32) -> f32 {
        *p
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32, _n: usize) {
        *p = v
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn min(a: f32, b: f32) -> f32 {
        // x86's MINPS rule, so every tier treats NaN alike: when either is NaN, the second operand.
        if a < b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        // MAXPS's rule: when either is NaN, the second operand.
        if a > b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn abs(a: f32) -> f32 {
        a.abs()
    }
    #[inline(always)]
    unsafe fn round(a: f32) -> f32 {
        a.round_ties_even()
    }
    #[inline(always)]
    unsafe fn pow2(n: f32) -> f32 {
        f32::from_bits(((n as i32 + 127) as u32) << 23)
    }
    #[inline(always)]
    unsafe fn select_negative(x: f32, neg: f32, pos: f32) -> f32 {
        if x < 0.0 {
            neg
        } else {
            pos
        }
    }
    #[inline(always)]
    unsafe fn hsum(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn hmax(v: f32) -> f32 {
        v
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX2 + FMA: 8 lanes; partial rows through `maskload`/`maskstore`.
    pub(crate) struct Avx2;

    #[inline(always)]
    unsafe fn lane_mask8(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, n: usize, fill: f32) -> __m256 {
            if n >= 8 {
                _mm256_loadu_ps(p)
            } else {
                let m = lane_mask8(n);
                _mm256_blendv_ps(
                    _mm256_set1_ps(fill),
                    _mm256_maskload_ps(p, m),
                    _mm256_castsi256_ps(m),
                )
            }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256, n: usize) {
            if n >= 8 {
                _mm256_storeu_ps(p, v)
            } else {
                _mm256_maskstore_ps(p, lane_mask8(n), v)
            }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn abs(a: __m256) -> __m256 {
            _mm256_andnot_ps(_mm256_set1_ps(-0.0), a)
        }
        #[inline(always)]
        unsafe fn round(a: __m256) -> __m256 {
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
        }
        #[inline(always)]
        unsafe fn pow2(n: __m256) -> __m256 {
            let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
        }
        #[inline(always)]
        unsafe fn select_negative(x: __m256, neg: __m256, pos: __m256) -> __m256 {
            // blendv picks by the sign bit, so −0.0 counts as negative; the callers' formulas agree at 0.
            _mm256_blendv_ps(pos, neg, x)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn hmax(v: __m256) -> f32 {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }

    /// AVX-512F: 16 lanes; partial rows through mask registers.
    pub(crate) struct Avx512;

    #[inline(always)]
    fn lane_mask16(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, n: usize, fill: f32) -> __m512 {
            if n >= 16 {
                _mm512_loadu_ps(p)
            } else {
                _mm512_mask_loadu_ps(_mm512_set1_ps(fill), lane_mask16(n), p)
            }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512, n: usize) {
            if n >= 16 {
                _mm512_storeu_ps(p, v)
            } else {
                _mm512_mask_storeu_ps(p, lane_mask16(n), v)
            }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            _mm512_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn abs(a: __m512) -> __m512 {
            _mm512_abs_ps(a)
        }
        #[inline(always)]
        unsafe fn round(a: __m512) -> __m512 {
            _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
        }
        #[inline(always)]
        unsafe fn pow2(n: __m512) -> __m512 {
            _mm512_scalef_ps(_mm512_set1_ps(1.0), n)
        }
        #[inline(always)]
        unsafe fn select_negative(x: __m512, neg: __m512, pos: __m512) -> __m512 {
            let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
            _mm512_mask_blend_ps(m, pos, neg)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn hmax(v: __m512) -> f32 {
            _mm512_reduce_max_ps(v)
        }
    }
}

/// The tier-generic bodies. Each is `#[inline(always)]` so it compiles inside its tier's `#[target_feature]` wrapper.
pub(crate) mod generic {
    use super::Simd;
    use crate::config::Activation;

    /// e^x for a vector: Cody–Waite range reduction (x = n·ln2 + r, |r| ≤ ln2/2) and Cephes' degree-6 polynomial,
    /// ≤ 2 ulp over the clamped range. The clamp keeps 2^n a normal number: below −87.3 the result is ≈ 1e−38 (0 for
    /// our purposes), above 88 it saturates at e^88 ≈ 1.65e38 instead of overflowing. A NaN stays NaN, as in the
    /// reference: min/max return their second operand when one is NaN, so `x` goes second.
    #[inline(always)]
    pub unsafe fn exp<S: Simd>(x: S::V) -> S::V {
        let x = S::min(S::splat(88.0), S::max(S::splat(-87.3), x));
        let n = S::round(S::mul(x, S::splat(std::f32::consts::LOG2_E)));
        let r = S::fma(n, S::splat(-0.693_359_4), x);
        let r = S::fma(n, S::splat(2.121_944_4e-4), r);
        let mut p = S::splat(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = S::fma(p, r, S::splat(c));
        }
        let e = S::add(S::fma(S::mul(p, r), r, r), S::splat(1.0));
        S::mul(e, S::pow2(n))
    }

    /// The activation of a vector.
    ///
    /// quick_gelu: x·σ(1.702x) = x / (1 + e^(−1.702x)), finite for every x; gelu_tanh the same form with 2u.
    /// gelu: 0.5·x·(1 + erf(x/√2)) with erfc from Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e−7): for negative x,
    /// 1 + erf(z) is computed directly as erfc(|z|), avoiding the cancellation of 1 − (1 − ε).
    #[inline(always)]
    pub unsafe fn activation<S: Simd>(x: S::V, act: Activation) -> S::V {
        match act {
            Activation::QuickGelu => {
                let e = exp::<S>(S::mul(x, S::splat(-1.702)));
                S::div(x, S::add(S::splat(1.0), e))
            }
            Activation::Gelu => {
                let z = S::abs(S::mul(x, S::splat(std::f32::consts::FRAC_1_SQRT_2)));
                let t = S::div(
                    S::splat(1.0),
                    S::fma(z, S::splat(0.327_591_1), S::splat(1.0)),
                );
                let mut p = S::splat(1.061_405_4);
                for c in [-1.453_152_1, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
                    p = S::fma(p, t, S::splat(c));
                }
                let erfc = S::mul(S::mul(p, t), exp::<S>(S::mul(S::mul(z, z), S::splat(-1.0))));
                let one_plus_erf = S::select_negative(x, erfc, S::sub(S::splat(2.0), erfc));
                S::mul(S::mul(S::splat(0.5), x), one_plus_erf)
            }
            Activation::GeluTanh => {
                // 0.5·x·(1 + tanh(u)) = x / (1 + e^(−2u)), u = √(2/π)·(x + 0.044715·x³): quick_gelu's form.
                let x3 = S::mul(S::mul(x, x), x);
                let u = S::mul(S::fma(x3, S::splat(0.044_715), x), S::splat(0.797_884_6));
                let e = exp::<S>(S::mul(u, S::splat(-2.0)));
                S::div(x, S::add(S::splat(1.0), e))
            }
        }
    }

    /// `row = act(row + bias)` (either optional).
    #[inline(always)]
    pub unsafe fn bias_act<S: Simd>(
        row: &mut [f32],
        bias: Option<&[f32]>,
        act: Option<Activation>,
    ) {
        let n = row.len();
        assert!(bias.is_none_or(|b| b.len() >= n));
        let mut i = 0;
        while i < n {
            let w = (n - i).min(S::LANES);
            let p = row.as_mut_ptr().add(i);
            let mut v = S::load(p, w, 0.0);
            if let Some(b) = bias {
                v = S::add(v, S::load(b.as_ptr().add(i), w, 0.0));
            }
            if let Some(a) = act {
                v = activation::<S>(v, a);
            }
            S::store(p, v, w);
            i += w;
        }
    }

    /// Σ x over a row with two accumulators (hides the add latency), zero-filled tail.
    #[inline(always)]
    unsafe fn sum<S: Simd>(x: &[f32], mean: Option<f32>) -> f32 {
        let n = x.len();
        let (mut a0, mut a1) = (S::splat(0.0), S::splat(0.0));
        let m = S::splat(mean.unwrap_or(0.0));
        let mut i = 0;
        while i < n {
            let w = (n - i).min(S::LANES);
            let v = S::load(x.as_ptr().add(i), w, mean.unwrap_or(0.0));
            match mean {
                None => a0 = S::add(a0, v),
                Some(_) => {
                    let d = S::sub(v, m);
                    a0 = S::fma(d, d, a0);
                }
            }
            std::mem::swap(&mut a0, &mut a1);
            i += w;
        }
        S::hsum(S::add(a0, a1))
    }

    /// LayerNorm of one row: two passes (mean, then the centred variance) in f32, so rows with a large mean lose no
    /// precision; then `(x − mean)·rstd·γ + β`.
    #[inline(always)]
    pub unsafe fn layernorm<S: Simd>(
        out: &mut [f32],
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let n = x.len();
        assert!(out.len() >= n && gamma.len() >= n && beta.len() >= n);
        let mean = sum::<S>(x, None) / n as f32;
        let var = sum::<S>(x, Some(mean)) / n as f32;
        let rstd = S::splat(1.0 / (var + eps).sqrt());
        let m = S::splat(mean);
        let mut i = 0;
        while i < n {
            let w = (n - i).min(S::LANES);
            let v = S::mul(S::sub(S::load(x.as_ptr().add(i), w, 0.0), m), rstd);
            let v = S::fma(
                v,
                S::load(gamma.as_ptr().add(i), w, 0.0),
                S::load(beta.as_ptr().add(i), w, 0.0),
            );
            S::store(out.as_mut_ptr().add(i), v, w);
            i += w;
        }
    }

    /// In place: `row = softmax(row · scale)` over the first `len` entries; entries from `len` to the end are zeroed
    /// (the causal mask). The max is subtracted first so exp never overflows.
    #[inline(always)]
    pub unsafe fn softmax<S: Simd>(row: &mut [f32], len: usize, scale: f32) {
        assert!(len <= row.len());
        let p = row.as_mut_ptr();
        let mut mx = S::splat(f32::NEG_INFINITY);
        let mut i = 0;
        while i < len {
            let w = (len - i).min(S::LANES);
            mx = S::max(mx, S::load(p.add(i), w, f32::NEG_INFINITY));
            i += w;
        }
        let mx = S::splat(S::hmax(mx));
        let sc = S::splat(scale);
        let mut total = S::splat(0.0);
        i = 0;
        while i < len {
            let w = (len - i).min(S::LANES);
            let e = exp::<S>(S::mul(
                S::sub(S::load(p.add(i), w, f32::NEG_INFINITY), mx),
                sc,
            ));
            S::store(p.add(i), e, w);
            total = S::add(total, e);
            i += w;
        }
        let inv = S::splat(1.0 / S::hsum(total));
        i = 0;
        while i < len {
            let w = (len - i).min(S::LANES);
            S::store(p.add(i), S::mul(S::load(p.add(i), w, 0.0), inv), w);
            i += w;
        }
        row[len..].fill(0.0);
    }

    /// In place: `row /= ‖row‖₂`; an all-zero row stays zero.
    #[inline(always)]
    pub unsafe fn l2_normalize<S: Simd>(row: &mut [f32]) {
        let norm = sum::<S>(row, Some(0.0)).sqrt();
        if norm > 0.0 {
            let inv = S::splat(1.0 / norm);
            let n = row.len();
            let mut i = 0;
            while i < n {
                let w = (n - i).min(S::LANES);
                let p = row.as_mut_ptr().add(i);
                S::store(p, S::mul(S::load(p, w, 0.0), inv), w);
                i += w;
            }
        }
    }

    /// Exponential of a slice, in place (for tests of the polynomial).
    #[inline(always)]
    pub unsafe fn exp_slice<S: Simd>(xs: &mut [f32]) {
        let n = xs.len();
        let mut i = 0;
        while i < n {
            let w = (n - i).min(S::LANES);
            let p = xs.as_mut_ptr().add(i);
            S::store(p, exp::<S>(S::load(p, w, 0.0)), w);
            i += w;
        }
    }
}

/// Declares each op once and generates its per-tier `#[target_feature]` wrappers plus a safe dispatcher that takes
/// an [`Isa`] (an unavailable tier runs the scalar twin).
macro_rules! simd_ops {
    ($( $(#[$doc:meta])* fn $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
        #[cfg(target_arch = "x86_64")]
        mod avx2_tier {
            use super::*;
            $( #[target_feature(enable = "avx2,fma")]
               pub unsafe fn $name($($arg: $ty),*) { generic::$name::<Avx2>($($arg),*) } )*
        }
        #[cfg(target_arch = "x86_64")]
        mod avx512_tier {
            use super::*;
            $( #[target_feature(enable = "avx512f")]
               pub unsafe fn $name($($arg: $ty),*) { generic::$name::<Avx512>($($arg),*) } )*
        }
        $(
            $(#[$doc])*
            pub fn $name(isa: Isa, $($arg: $ty),*) {
                match isa {
                    // SAFETY: `available()` confirmed the CPU runs the tier's instructions; slices bound every access.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 if isa.available() => unsafe { avx512_tier::$name($($arg),*) },
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 if isa.available() => unsafe { avx2_tier::$name($($arg),*) },
                    // SAFETY: the scalar tier uses no special instructions.
                    _ => unsafe { generic::$name::<Scalar>($($arg),*) },
                }
            }
        )*
    };
}

simd_ops! {
    /// `row = act(row + bias)`, either optional.
    fn bias_act(row: &mut [f32], bias: Option<&[f32]>, act: Option<Activation>);
    /// LayerNorm of one row (`out`, `x`, `gamma` and `beta` all of the same length).
    fn layernorm(out: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32], eps: f32);
    /// `row[..len] = softmax(row[..len] · scale)`, `row[len..] = 0`.
    fn softmax(row: &mut [f32], len: usize, scale: f32);
    /// `row /= ‖row‖₂` (zero rows stay zero).
    fn l2_normalize(row: &mut [f32]);
    /// `xs = e^xs` elementwise.
    fn exp_slice(xs: &mut [f32]);
}
