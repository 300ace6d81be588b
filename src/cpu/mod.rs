//! The CPU backend: f32, GEMMs through the `gemm` crate (its AVX2/AVX-512 kernels, chosen at run time), everything
//! else spread over cores with rayon. Weights are pre-transposed once to `[in, out]`, which the gemm crate runs
//! faster than `[out, in]` at small batch.

use rayon::prelude::*;

use crate::backend::{check_linear, host, AttnShape, Backend, Epilogue, GemmShape};
use crate::error::Result;

/// The multithreaded f32 CPU backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// A linear layer: weight transposed to `[k, n]` (row-major) and an optional bias `[n]`.
pub struct CpuLinear {
    wt: Vec<f32>,
    bias: Option<Vec<f32>>,
    n: usize,
    k: usize,
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with explicit strides (row stride, column stride) for each operand.
///
/// The gemm crate's contract is `dst := alpha·dst + beta·lhs·rhs` (the reverse of BLAS's naming): alpha = 1 with
/// `read_dst` accumulates, beta = 1 scales the product by one.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    threads: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds the strided accesses below, so the unsafe call cannot read or write outside the slices.
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above keep every index within the slices; dst does not alias lhs or rhs (&mut borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            threads,
        );
    }
}

/// Rows per rayon task for the memory-bound row-wise ops: large enough to amortize scheduling.
const ROWS_PER_TASK: usize = 16;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Linear = CpuLinear;

    fn name(&self) -> &'static str {
        "cpu"
    }
    host::host_buffer_ops!();

    fn linear(&self, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Result<CpuLinear> {
        check_linear(w, n, k, bias)?;
        let mut wt = vec![0.0f32; n * k];
        for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            for (t, &v) in row.iter().enumerate() {
                wt[t * n + j] = v;
            }
        }
        Ok(CpuLinear {
            wt,
            bias: bias.map(<[f32]>::to_vec),
            n,
            k,
        })
    }
    fn linear_dims(&self, lin: &CpuLinear) -> (usize, usize, bool) {
        (lin.n, lin.k, lin.bias.is_some())
    }

    fn gemm_unchecked(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &CpuLinear,
        s: GemmShape,
        ep: Epilogue,
    ) -> Result<()> {
        let out = &mut out[..s.m * s.n];
        sgemm(
            s.m,
            s.n,
            s.k,
            out,
            s.n,
            ep == Epilogue::Accumulate,
            x,
            s.k,
            1,
            &w.wt,
            s.n,
            1,
            gemm::Parallelism::Rayon(0),
        );
        // k = 0 leaves dst untouched in gemm; the product is then zero.
        if s.k == 0 && ep != Epilogue::Accumulate {
            out.fill(0.0);
        }
        let bias = w.bias.as_deref();
        match (ep, bias) {
            (Epilogue::Store | Epilogue::Accumulate, None) => {}
            (Epilogue::Store | Epilogue::Accumulate, Some(b)) => {
                out.par_chunks_mut(s.n * ROWS_PER_TASK).for_each(|rows| {
                    for row in rows.chunks_exact_mut(s.n) {
                        row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
                    }
                })
            }
            (Epilogue::Activation(a), b) => {
                out.par_chunks_mut(s.n * ROWS_PER_TASK).for_each(|rows| {
                    for row in rows.chunks_exact_mut(s.n) {
                        match b {
                            Some(b) => row
                                .iter_mut()
                                .zip(b)
                                .for_each(|(o, b)| *o = a.apply_f32(*o + b)),
                            None => row.iter_mut().for_each(|o| *o = a.apply_f32(*o)),
                        }
                    }
                })
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
        out[..rows * dim]
            .par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(x[..rows * dim].par_chunks(dim * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                    // Two passes (mean, then centred variance) in f32: no cancellation for rows with a large mean.
                    let mean = x.iter().sum::<f32>() / dim as f32;
                    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
                    let inv = 1.0 / (var + eps).sqrt();
                    for (((o, &v), g), b) in o.iter_mut().zip(x).zip(gamma.iter()).zip(beta.iter())
                    {
                        *o = (v - mean) * inv * g + b;
                    }
                }
            });
        Ok(())
    }

    fn attention_unchecked(&self, out: &mut Vec<f32>, qkv: &Vec<f32>, s: AttnShape) -> Result<()> {
        let (d, hd, seq) = (s.width(), s.head_dim, s.seq);
        let scale = 1.0 / (hd as f32).sqrt();
        // One task per (batch, head): S×S scores by GEMM straight from the packed qkv rows, softmax in f32, P·V.
        let heads: Vec<Vec<f32>> = (0..s.batch * s.heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / s.heads, bh % s.heads);
                let base = b * seq * 3 * d + h * hd;
                let q = &qkv[base..];
                let k = &qkv[base + d..];
                let v = &qkv[base + 2 * d..];
                let mut scores = vec![0.0f32; seq * seq];
                // scores[i, j] = Σ_c q[i, c] · k[j, c]: rhs is Kᵀ, read with swapped strides.
                sgemm(
                    seq,
                    seq,
                    hd,
                    &mut scores,
                    seq,
                    false,
                    q,
                    3 * d,
                    1,
                    k,
                    1,
                    3 * d,
                    gemm::Parallelism::None,
                );
                for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
                    let keys = if s.causal { i + 1 } else { seq };
                    let max = row[..keys].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                    let mut sum = 0.0f32;
                    for x in &mut row[..keys] {
                        *x = ((*x - max) * scale).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    row[..keys].iter_mut().for_each(|x| *x *= inv);
                    row[keys..].fill(0.0);
                }
                let mut o = vec![0.0f32; seq * hd];
                sgemm(
                    seq,
                    hd,
                    seq,
                    &mut o,
                    hd,
                    false,
                    &scores,
                    seq,
                    1,
                    v,
                    3 * d,
                    1,
                    gemm::Parallelism::None,
                );
                o
            })
            .collect();
        for (bh, o) in heads.iter().enumerate() {
            let (b, h) = (bh / s.heads, bh % s.heads);
            for (i, row) in o.chunks_exact(hd).enumerate() {
                out[(b * seq + i) * d + h * hd..][..hd].copy_from_slice(row);
            }
        }
        Ok(())
    }
}
