//! Every CPU backend op on every CPU engine this machine runs (scalar, avx2, avx512-f32, avx512-bf16, the AMX
//! emulator, and AMX itself where present) against the f64 reference backend, on fresh random inputs and awkward
//! shapes. Outputs are poisoned with NaN before each op so unwritten elements are caught.
//!
//! The bf16 engines are held to the f64 product of the bf16-rounded inputs, so only the f32 summation differs and
//! the tolerance stays as tight as f32's: a wrong pair, a lost k step or a misplaced tile cannot hide in it.

mod common;

use cliprt::backend::reference::ReferenceBackend;
use cliprt::backend::{self, Activation, Backend, Epilogue, GemmShape};
use cliprt::cpu::{CpuBackend, MatrixEngine, Precision};
use common::*;

/// A backend on every matrix engine this machine runs: each GEMM and attention check runs on all of them.
fn engines() -> Vec<CpuBackend> {
    MatrixEngine::available_engines()
        .into_iter()
        .map(|e| CpuBackend::with_engine(e).unwrap())
        .collect()
}

fn is_bf16(cpu: &CpuBackend) -> bool {
    cpu.precision() == Precision::Bf16
}

fn is_i16(cpu: &CpuBackend) -> bool {
    cpu.precision() == Precision::I16
}

/// Each `len`-long row of `v` on the grid an i16 engine puts it on: steps of max|row| / `limit`, rounded to
/// nearest even (activations: rows of A, limit 16383; weights: rows of W, i.e. output channels, limit 2047). A
/// weight row whose 128 consecutive quantized values could sum past 131 071 − 65 in magnitude (the i32 bound of the
/// kernels' 64-pair sums, src/cpu/matmul/fixed16.rs) takes the coarser step that keeps them under it.
fn i16_rounded(v: &[f32], len: usize, limit: f32) -> Vec<f32> {
    v.chunks(len.max(1))
        .flat_map(|row| {
            let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            let (mut step, mut inv) = if max < 1e-30 {
                (0.0, 0.0)
            } else {
                (max / limit, limit / max)
            };
            if limit == 2047.0 && inv > 0.0 {
                let abs: Vec<f64> = row.iter().map(|&x| f64::from(x.abs())).collect();
                let widest = if abs.len() <= 128 {
                    abs.iter().sum()
                } else {
                    abs.windows(128)
                        .map(|w| w.iter().sum::<f64>())
                        .fold(0.0, f64::max)
                };
                let room = 131_071.0 - 65.0;
                if f64::from(inv) * widest > room {
                    inv = (room / widest) as f32;
                    step = 1.0 / inv;
                }
            }
            row.iter().map(move |&x| (x * inv).round_ties_even() * step)
        })
        .collect()
}

/// Values rounded to bf16 (nearest even) and back: what a bf16 engine multiplies.
fn bf16_rounded(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// The reference GEMM of `x · wᵀ (+ b)` from `init`, on inputs rounded as `cpu` rounds them.
#[allow(clippy::too_many_arguments)]
fn reference_gemm(
    cpu: &CpuBackend,
    init: &[f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: GemmShape,
    ep: Epilogue,
) -> Vec<f32> {
    let (x, w) = if is_bf16(cpu) {
        (bf16_rounded(x), bf16_rounded(w))
    } else if is_i16(cpu) {
        (i16_rounded(x, s.k, 16383.0), i16_rounded(w, s.k, 2047.0))
    } else {
        (x.to_vec(), w.to_vec())
    };
    let rf = ReferenceBackend;
    let mut want = init.to_vec();
    backend::gemm(
        &rf,
        &mut want,
        &x,
        &rf.linear(&w, s.n, s.k, bias).unwrap(),
        s,
        ep,
    )
    .unwrap();
    want
}

fn poisoned(len: usize) -> Vec<f32> {
    vec![f32::NAN; len]
}

#[test]
fn activations_match_f64() {
    for &x in &[
        -80.0f32, -10.0, -3.3, -1.0, -0.1, 0.0, 1e-3, 0.5, 2.0, 7.5, 80.0,
    ] {
        for act in Activation::ALL {
            let got = act.apply_f32(x);
            let want = act.apply_f64(f64::from(x)) as f32;
            assert!(
                (got - want).abs() <= 1e-6 + 1e-6 * want.abs(),
                "{act:?}({x}) = {got}, want {want}"
            );
            assert!(got.is_finite());
        }
    }
    // erf GELU and quick GELU really differ (a model using the wrong one must fail parity).
    assert!((Activation::Gelu.apply_f32(1.0) - Activation::QuickGelu.apply_f32(1.0)).abs() > 1e-3);
}

#[test]
fn bf16_gemm_is_close_to_the_f64_product() {
    // The unrounded product: what bf16 costs in accuracy, on every bf16 engine here.
    let bf16: Vec<CpuBackend> = engines().into_iter().filter(is_bf16).collect();
    assert!(
        !bf16.is_empty(),
        "the AMX emulator is a bf16 engine on every machine"
    );
    let mut seed = 500;
    for &m in &[1usize, 13, 50, 197] {
        for &(n, k) in &[(1usize, 1usize), (33, 7), (65, 50), (96, 257), (40, 1537)] {
            for ep in [
                Epilogue::Store,
                Epilogue::Accumulate,
                Epilogue::Activation(Activation::Gelu),
            ] {
                seed += 1;
                let w = random(n * k, seed, 0.5);
                let b = random(n, seed + 1, 0.5);
                let x = random(m * k, seed + 2, 1.0);
                let init = if ep == Epilogue::Accumulate {
                    random(m * n, seed + 3, 1.0)
                } else {
                    poisoned(m * n)
                };
                let s = GemmShape { m, n, k };
                let rf = ReferenceBackend;
                let mut want = init.clone();
                backend::gemm(
                    &rf,
                    &mut want,
                    &x,
                    &rf.linear(&w, n, k, Some(&b)).unwrap(),
                    s,
                    ep,
                )
                .unwrap();
                for cpu in &bf16 {
                    let mut got = init.clone();
                    let lin = cpu.linear(&w, n, k, Some(&b)).unwrap();
                    backend::gemm(cpu, &mut got, &x, &lin, s, ep).unwrap();
                    // Inputs rounded to 8-bit mantissas: each product is off by ≲ 2^-8 relative, and k of them add
                    // up like a random walk.
                    let atol = 4e-3 * (k as f32).sqrt();
                    let what = format!("bf16 gemm {} {s:?} {ep:?}", cpu.engine().name());
                    assert_close(&got, &want, atol, 1e-2, &what);
                }
            }
        }
    }
}

/// The i16 engine's own risks: rows with outliers (CLIP's activations have channels 100× their neighbours), i32
/// sums at their worst case (every value at the top of its range, K = 3072), zero rows, and non-finite rows, which
/// must give NaN rather than a finite wrong value.
#[test]
fn i16_gemm_is_close_to_the_f64_product_and_never_overflows() {
    // Every i16 engine this CPU runs (none without AVX2).
    for cpu in engines().into_iter().filter(is_i16) {
        i16_gemm_checks(&cpu);
    }
}

fn i16_gemm_checks(cpu: &CpuBackend) {
    let rf = ReferenceBackend;
    let product = |x: &[f32], w: &[f32], s: GemmShape| {
        let mut want = poisoned(s.m * s.n);
        let lin = rf.linear(w, s.n, s.k, None).unwrap();
        backend::gemm(&rf, &mut want, &x.to_vec(), &lin, s, Epilogue::Store).unwrap();
        want
    };
    let run = |x: &[f32], w: &[f32], s: GemmShape| {
        let mut got = poisoned(s.m * s.n);
        let lin = cpu.linear(w, s.n, s.k, None).unwrap();
        backend::gemm(cpu, &mut got, &x.to_vec(), &lin, s, Epilogue::Store).unwrap();
        got
    };
    // Outliers: every 37th input channel 100× the rest. The unrounded f64 product bounds what i16 costs; the bound
    // is bf16's in `bf16_gemm_is_close_to_the_f64_product` (i16 must be no worse).
    for &(m, n, k) in &[(13usize, 65usize, 768usize), (50, 33, 3072)] {
        let s = GemmShape { m, n, k };
        let mut x = random(m * k, 77, 1.0);
        for (i, v) in x.iter_mut().enumerate() {
            if i % k % 37 == 0 {
                *v *= 100.0;
            }
        }
        let w = random(n * k, 78, 0.5);
        let (got, want) = (run(&x, &w, s), product(&x, &w, s));
        assert_close(
            &got,
            &want,
            4e-3 * (k as f32).sqrt(),
            1e-2,
            "i16 gemm with outliers",
        );
    }
    // The worst case of the i32 sums: |x| and |w| at their largest everywhere, all products of one sign. A flat
    // weight row takes the coarser step that bounds its window sums, so the product is that of its grid value.
    let s = GemmShape {
        m: 7,
        n: 17,
        k: 3072,
    };
    for sign in [1.0f32, -1.0] {
        let x = vec![sign * 3.5; s.m * s.k];
        let w = vec![0.25f32; s.n * s.k];
        let got = run(&x, &w, s);
        let on_grid = i16_rounded(&w[..s.k], s.k, 2047.0)[0];
        assert!((on_grid - 0.25).abs() < 1e-3);
        let want = sign * 3.5 * on_grid * s.k as f32;
        assert!(
            got.iter().all(|&v| (v - want).abs() <= 1e-5 * want.abs()),
            "{:?} vs {want}",
            &got[..3]
        );
    }
    // Zero rows give zero; a row holding NaN or ∞ gives NaN in its outputs only.
    let s = GemmShape { m: 4, n: 20, k: 40 };
    let mut x = random(s.m * s.k, 79, 1.0);
    x[..s.k].fill(0.0);
    x[s.k + 5] = f32::NAN;
    x[2 * s.k + 39] = f32::INFINITY;
    let w = random(s.n * s.k, 80, 0.5);
    let got = run(&x, &w, s);
    assert!(got[..s.n].iter().all(|&v| v == 0.0));
    assert!(got[s.n..3 * s.n].iter().all(|v| v.is_nan()));
    let want = product(&x[3 * s.k..], &w, GemmShape { m: 1, ..s });
    assert_close(
        &got[3 * s.n..],
        &want,
        1e-3,
        1e-3,
        "i16 gemm beside non-finite rows",
    );
}

#[test]
fn gemm_at_clip_strides_matches_reference() {
    // K = 768 / 1024 / 3072 with tiles of 10, 11 and 12 rows take the kernels specialised for those strides.
    let mut seed = 900;
    for &m in &[50usize, 23, 24, 133] {
        for &(n, k) in &[(40usize, 768usize), (33, 3072), (65, 1024)] {
            seed += 1;
            let w = random(n * k, seed, 0.5);
            let b = random(n, seed + 1, 0.5);
            let x = random(m * k, seed + 2, 1.0);
            let s = GemmShape { m, n, k };
            for ep in [Epilogue::Store, Epilogue::Accumulate] {
                let init = random(m * n, seed + 3, 1.0);
                for cpu in engines() {
                    let want = reference_gemm(&cpu, &init, &x, &w, Some(&b), s, ep);
                    let mut got = if ep == Epilogue::Store {
                        poisoned(m * n)
                    } else {
                        init.clone()
                    };
                    let lin = cpu.linear(&w, n, k, Some(&b)).unwrap();
                    backend::gemm(&cpu, &mut got, &x, &lin, s, ep).unwrap();
                    let what = format!("gemm {} {s:?} {ep:?}", cpu.engine().name());
                    assert_close(&got, &want, 1e-5 * (k as f32).sqrt(), 1e-5, &what);
                }
            }
        }
    }
}

/// The MLP with its residual (`x += act(input·W1ᵀ + b1)·W2ᵀ + b2`): on the bf16 engines the hidden activations go
/// from fc1's epilogue to fc2 in bf16, which must give exactly what the two separate GEMMs give (the same f32
/// values, rounded the same way); and every engine must match the f64 reference.
#[test]
fn mlp_equals_its_two_gemms_on_every_engine() {
    let mut seed = 1300;
    // (rows, dim, hidden): odd widths, a hidden width that is not a multiple of a panel, CLIP's own, and a dim too
    // deep for the bf16 kernel's single k chunk (the fused path then falls back to two GEMMs).
    for &(m, d, h) in &[
        (1usize, 7usize, 13usize),
        (7, 64, 96),
        (50, 65, 130),
        (77, 768, 3072),
        (33, 1600, 40),
    ] {
        for act in Activation::ALL {
            seed += 1;
            // Weights at 1/√fan-in, as in a real model, so activations stay of order one.
            let (s1, s2) = (1.0 / (d as f32).sqrt(), 1.0 / (h as f32).sqrt());
            let (w1, b1) = (random(h * d, seed, s1), random(h, seed + 1, 0.3));
            let (w2, b2) = (random(d * h, seed + 2, s2), random(d, seed + 3, 0.3));
            let input = random(m * d, seed + 4, 1.0);
            let x0 = random(m * d, seed + 5, 1.0);
            let s = backend::MlpShape {
                rows: m,
                dim: d,
                hidden: h,
            };
            for cpu in engines() {
                let (fc1, fc2) = (
                    cpu.linear(&w1, h, d, Some(&b1)).unwrap(),
                    cpu.linear(&w2, d, h, Some(&b2)).unwrap(),
                );
                let mut fused = x0.clone();
                let mut hidden = poisoned(m * h);
                backend::mlp(&cpu, &mut fused, &mut hidden, &input, &fc1, &fc2, s, act).unwrap();
                let mut two = x0.clone();
                let mut hid = poisoned(m * h);
                backend::gemm(
                    &cpu,
                    &mut hid,
                    &input,
                    &fc1,
                    s.fc1(),
                    Epilogue::Activation(act),
                )
                .unwrap();
                backend::gemm(&cpu, &mut two, &hid, &fc2, s.fc2(), Epilogue::Accumulate).unwrap();
                let what = format!("mlp {} {s:?} {act:?}", cpu.engine().name());
                assert_eq!(
                    fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    two.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{what}: fused and two GEMMs differ"
                );
                // Against f64: the bf16 engines round the inputs, the weights and the hidden activations.
                let rf = ReferenceBackend;
                let mut want = x0.clone();
                let mut rh = poisoned(m * h);
                let (r1, r2) = (
                    rf.linear(&w1, h, d, Some(&b1)).unwrap(),
                    rf.linear(&w2, d, h, Some(&b2)).unwrap(),
                );
                backend::mlp(&rf, &mut want, &mut rh, &input, &r1, &r2, s, act).unwrap();
                // bf16: three roundings of 2⁻⁹ on terms of order one, summed like a random walk; i16 rounds
                // less (steps of 2⁻¹¹ of a column's range, 2⁻¹⁴ of a row's), the same bound holds it.
                let (atol, rtol) = if is_bf16(&cpu) || is_i16(&cpu) {
                    (2e-2, 1e-2)
                } else {
                    (1e-5 * (h as f32).sqrt(), 1e-5)
                };
                assert_close(&fused, &want, atol, rtol, &what);
            }
        }
    }
}
