//! Every SIMD tier of the row-wise CPU ops against its scalar twin (same algorithm) and against f64 math, on fresh
//! random inputs with lengths that exercise full vectors and masked tails.

mod common;

use cliprt::cpu::{simd, Isa};
use cliprt::Activation;
use common::*;

const LENS: &[usize] = &[1, 7, 8, 15, 16, 17, 50, 63, 64, 65, 77, 197, 768];

fn vector_tiers() -> Vec<Isa> {
    let tiers: Vec<Isa> = Isa::available_tiers()
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .collect();
    if tiers.is_empty() {
        println!("note: this CPU has no vector tier; only the scalar twin is checked");
    }
    tiers
}

#[test]
fn exp_is_accurate_and_tiers_agree() {
    for &len in LENS {
        let x: Vec<f32> = random(len, len as u64, 30.0);
        let mut scalar = x.clone();
        simd::exp_slice(Isa::Scalar, &mut scalar);
        for (&xi, &s) in x.iter().zip(&scalar) {
            let want = f64::from(xi).exp();
            assert!(
                ((f64::from(s) - want) / want).abs() < 5e-7,
                "exp({xi}) = {s}, want {want}"
            );
        }
        for isa in vector_tiers() {
            let mut got = x.clone();
            simd::exp_slice(isa, &mut got);
            assert_close(&got, &scalar, 0.0, 2e-7, &format!("exp {isa:?} len {len}"));
        }
    }
    // The clamps: no inf, no NaN, underflow to (nearly) zero.
    let mut edge = vec![-1000.0f32, -87.0, 0.0, 88.0, 1000.0];
    simd::exp_slice(Isa::best(), &mut edge);
    assert!(edge.iter().all(|v| v.is_finite()) && edge[0] < 1e-37 && edge[2] == 1.0);
}

#[test]
fn activations_match_f64_on_every_tier() {
    for &len in LENS {
        let x = random(len, 100 + len as u64, 6.0);
        for act in Activation::ALL {
            let want: Vec<f32> = x
                .iter()
                .map(|&v| act.apply_f64(f64::from(v)) as f32)
                .collect();
            let mut scalar = x.clone();
            simd::bias_act(Isa::Scalar, &mut scalar, None, Some(act));
            assert_close(
                &scalar,
                &want,
                3e-7,
                1e-5,
                &format!("{act:?} scalar len {len}"),
            );
            for isa in vector_tiers() {
                let mut got = x.clone();
                simd::bias_act(isa, &mut got, None, Some(act));
                assert_close(
                    &got,
                    &scalar,
                    1e-7,
                    1e-6,
                    &format!("{act:?} {isa:?} len {len}"),
                );
            }
        }
    }
}

#[test]
fn bias_then_activation_on_every_tier() {
    for &len in LENS {
        let x = random(len, 200 + len as u64, 3.0);
        let b = random(len, 300 + len as u64, 1.0);
        for act in [None, Some(Activation::QuickGelu)] {
            let want: Vec<f32> = x
                .iter()
                .zip(&b)
                .map(|(&v, &bb)| {
                    let y = f64::from(v) + f64::from(bb);
                    act.map_or(y, |a| a.apply_f64(y)) as f32
                })
                .collect();
            for isa in Isa::available_tiers() {
                let mut got = x.clone();
                simd::bias_act(isa, &mut got, Some(&b), act);
                assert_close(
                    &got,
                    &want,
                    3e-7,
                    1e-5,
                    &format!("bias {act:?} {isa:?} len {len}"),
                );
            }
        }
    }
}

#[test]
fn softmax_with_causal_tail_on_every_tier() {
    for &len in LENS {
        let row = random(len, 400 + len as u64, 20.0);
        for keys in [1, len.div_ceil(2), len] {
            let scale = 0.125f32;
            let max = row[..keys].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let e: Vec<f64> = row[..keys]
                .iter()
                .map(|&v| (f64::from(v - max) * f64::from(scale)).exp())
                .collect();
            let sum: f64 = e.iter().sum();
            let mut want: Vec<f32> = e.iter().map(|v| (v / sum) as f32).collect();
            want.resize(len, 0.0);
            for isa in Isa::available_tiers() {
                let mut got = row.clone();
                simd::softmax(isa, &mut got, keys, scale);
                assert_close(
                    &got,
                    &want,
                    1e-7,
                    1e-5,
                    &format!("softmax {isa:?} {keys}/{len}"),
                );
            }
        }
    }
}

#[test]
fn layernorm_and_l2_normalize_on_every_tier() {
    for &len in LENS {
        let x: Vec<f32> = random(len, 500 + len as u64, 2.0)
            .iter()
            .map(|v| v + 30.0)
            .collect();
        let g = random(len, 600 + len as u64, 1.0);
        let b = random(len, 700 + len as u64, 1.0);
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / len as f64;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / len as f64;
        let rstd = 1.0 / (var + 1e-5).sqrt();
        let want: Vec<f32> = (0..len)
            .map(|i| ((f64::from(x[i]) - mean) * rstd * f64::from(g[i]) + f64::from(b[i])) as f32)
            .collect();
        let norm = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let unit: Vec<f32> = x.iter().map(|&v| (f64::from(v) / norm) as f32).collect();
        for isa in Isa::available_tiers() {
            let mut got = vec![f32::NAN; len];
            simd::layernorm(isa, &mut got, &x, &g, &b, 1e-5);
            assert_close(
                &got,
                &want,
                2e-4,
                1e-4,
                &format!("layernorm {isa:?} len {len}"),
            );
            let mut n = x.clone();
            simd::l2_normalize(isa, &mut n);
            assert_close(&n, &unit, 1e-7, 1e-5, &format!("l2 {isa:?} len {len}"));
        }
    }
    let mut zero = vec![0.0f32; 20];
    simd::l2_normalize(Isa::best(), &mut zero);
    assert!(zero.iter().all(|&v| v == 0.0));
}

#[test]
fn forcing_an_isa_checks_its_name_and_availability() {
    assert!("avx9".parse::<Isa>().is_err());
    assert_eq!("scalar".parse::<Isa>().unwrap(), Isa::Scalar);
    assert!(Isa::available_tiers().contains(&Isa::Scalar));
}
