//! The CPU backend: f32 (or bf16 GEMMs on AVX512_BF16 CPUs), our own AVX-512 GEMM micro-kernel with weights packed
//! once at load (the `gemm` crate on CPUs without AVX-512), hand-written SIMD for the row-wise ops, rayon threads.
//!
//! The SIMD tier is chosen once per backend ([`Isa`]); `CLIPRT_CPU_ISA` forces a lower one.

pub mod attention;
pub mod isa;
pub mod matmul;
pub mod simd;

use rayon::prelude::*;

use crate::backend::{check_linear, host, AttnShape, Backend, Epilogue, GemmShape};
use crate::error::Result;
pub use isa::Isa;
pub use matmul::{PackedLinear, Precision};

/// The multithreaded CPU backend.
#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    isa: Isa,
    precision: Precision,
}

impl Default for CpuBackend {
    /// The best tier this CPU has, f32.
    fn default() -> Self {
        CpuBackend::new(Isa::best(), Precision::F32)
    }
}

impl CpuBackend {
    /// A backend on tier `isa`, or the best available tier below it, computing GEMMs in `precision`. bf16 needs
    /// AVX-512 with AVX512_BF16; elsewhere it falls back to f32: [`CpuBackend::isa`] and
    /// [`CpuBackend::precision`] say what runs.
    pub fn new(isa: Isa, precision: Precision) -> Self {
        let isa = Isa::ALL
            .into_iter()
            .rev()
            .find(|&i| i <= isa && i.available())
            .unwrap_or(Isa::Scalar);
        CpuBackend {
            isa,
            precision: matmul::effective_precision(isa, precision),
        }
    }

    /// The tier from `CLIPRT_CPU_ISA` (best available when unset) with `precision`.
    pub fn from_env(precision: Precision) -> Result<Self> {
        Ok(CpuBackend::new(Isa::from_env()?, precision))
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The precision the GEMMs actually run in.
    pub fn precision(&self) -> Precision {
        self.precision
    }
}

/// Rows per rayon task for the memory-bound row-wise ops: large enough to amortize scheduling.
const ROWS_PER_TASK: usize = 8;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Index = Vec<u32>;
    type Graph = ();
    type Linear = PackedLinear;

    fn name(&self) -> &'static str {
        "cpu"
    }
    host::host_buffer_ops!();

    fn linear(&self, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Result<PackedLinear> {
        check_linear(w, n, k, bias)?;
        Ok(PackedLinear::new(w, n, k, bias, self.isa, self.precision))
    }
    fn linear_dims(&self, lin: &PackedLinear) -> (usize, usize, bool) {
        (lin.n, lin.k, lin.has_bias())
    }

    fn gemm_unchecked(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &PackedLinear,
        s: GemmShape,
        ep: Epilogue,
    ) -> Result<()> {
        w.run(self.isa, x, s.m, out, ep);
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
        let (gamma, beta) = (&gamma[..dim], &beta[..dim]);
        out[..rows * dim]
            .par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(x[..rows * dim].par_chunks(dim * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                    simd::layernorm(self.isa, o, x, gamma, beta, eps);
                }
            });
        Ok(())
    }

    fn attention_unchecked(&self, out: &mut Vec<f32>, qkv: &Vec<f32>, s: AttnShape) -> Result<()> {
        attention::attention(self.isa, out, qkv, s);
        Ok(())
    }
}
