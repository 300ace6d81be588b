//! The scalar oracle: plain loops, f64 accumulation, weights in HF layout. Never optimized; every fast path is
//! tested against it.

use super::{host, AttnShape, Backend, BackendInfo, Epilogue, GemmShape};
use crate::error::Result;

/// The reference backend (host memory, f64 arithmetic inside every op).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReferenceBackend;

/// A linear layer in HF layout `[out, in]`.
pub struct RefLinear {
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
    n: usize,
    k: usize,
}

impl Backend for ReferenceBackend {
    type Buf = Vec<f32>;
    type Index = Vec<u32>;
    type Graph = ();
    type Linear = RefLinear;

    fn name(&self) -> &'static str {
        "reference"
    }
    fn info(&self) -> BackendInfo {
        BackendInfo {
            device: "reference".into(),
            engine: "f64-reference".into(),
            reason: String::new(),
            isa: "f64".into(),
            arithmetic: "f64",
        }
    }

    host::host_buffer_ops!();

    fn linear(&self, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Result<RefLinear> {
        super::check_linear(w, n, k, bias)?;
        Ok(RefLinear {
            w: w.to_vec(),
            bias: bias.map(<[f32]>::to_vec),
            n,
            k,
        })
    }
    fn linear_dims(&self, lin: &RefLinear) -> (usize, usize, bool) {
        (lin.n, lin.k, lin.bias.is_some())
    }

    fn gemm_unchecked(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &RefLinear,
        s: GemmShape,
        ep: Epilogue,
    ) -> Result<()> {
        for i in 0..s.m {
            for j in 0..s.n {
                let mut acc = w.bias.as_ref().map_or(0.0, |b| f64::from(b[j]));
                for t in 0..s.k {
                    acc += f64::from(x[i * s.k + t]) * f64::from(w.w[j * s.k + t]);
                }
                let o = &mut out[i * s.n + j];
                *o = match ep {
                    Epilogue::Store => acc as f32,
                    Epilogue::Activation(a) => a.apply_f64(acc) as f32,
                    Epilogue::Accumulate => (f64::from(*o) + acc) as f32,
                };
            }
        }
        Ok(())
    }

    fn layernorm_unchecked(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        for r in 0..rows {
            let row = &x[r * dim..][..dim];
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / dim as f64;
            let inv = 1.0 / (var + f64::from(eps)).sqrt();
            for c in 0..dim {
                out[r * dim + c] = ((f64::from(row[c]) - mean) * inv * f64::from(gamma[c])
                    + f64::from(beta[c])) as f32;
            }
        }
        Ok(())
    }

    fn attention_unchecked(
        &self,
        out: &mut Vec<f32>,
        qkv: &Vec<f32>,
        s: AttnShape,
        key_lens: Option<&Vec<u32>>,
    ) -> Result<()> {
        let (d, hd) = (s.width(), s.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let at = |b: usize, t: usize, part: usize, h: usize, c: usize| {
            f64::from(qkv[(b * s.seq + t) * 3 * d + part * d + h * hd + c])
        };
        let mut p = vec![0.0f64; s.seq];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let valid = key_lens.map_or(s.seq, |k| k[b] as usize);
                for i in 0..s.seq {
                    let keys = s.keys(i, valid);
                    for (j, pj) in p.iter_mut().enumerate().take(keys) {
                        *pj = (0..hd)
                            .map(|c| at(b, i, 0, h, c) * at(b, j, 1, h, c))
                            .sum::<f64>()
                            * scale;
                    }
                    let max = p[..keys].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for pj in &mut p[..keys] {
                        *pj = (*pj - max).exp();
                        sum += *pj;
                    }
                    for c in 0..hd {
                        let v: f64 = (0..keys).map(|j| p[j] * at(b, j, 2, h, c)).sum();
                        out[(b * s.seq + i) * d + h * hd + c] = (v / sum) as f32;
                    }
                }
            }
        }
        Ok(())
    }
}
