//! The CPU backend: a matrix engine ([`MatrixEngine`]: AMX bf16 tiles, AVX-512 bf16 or f32 micro-kernels, AVX2 i16
//! or f32 micro-kernels, or the `gemm` crate on the forced scalar tier) for the GEMMs, with weights packed once at load for it; attention's products in f32
//! on the SIMD tier (on AMX tiles only when asked); hand-written SIMD for the row-wise ops; rayon threads.
//!
//! The engine is chosen once per backend ([`engine::choose`], with the reason kept for the bench);
//! `CLIPRT_CPU_ISA` caps the SIMD tier, `CLIPRT_CPU_ENGINE` forces an engine and `CLIPRT_AMX_ATTENTION=bf16` puts
//! an AMX engine's attention on tiles. [`breakdown`] times the ops for `cliprt bench --breakdown`.

pub mod amx;
pub mod attention;
pub mod breakdown;
pub mod engine;
pub mod isa;
pub mod matmul;
pub mod peak;
pub mod simd;

use std::sync::Arc;

use rayon::prelude::*;

use crate::backend::{
    check_linear, host, Activation, AttnShape, Backend, BackendInfo, Epilogue, GemmShape, MlpShape,
};
use crate::error::Result;
use breakdown::{timed, timed_counting, OpClass};
pub use engine::MatrixEngine;
pub use isa::Isa;
pub use matmul::{PackedLinear, Precision};

/// Runs `f` with this thread's buffer in `key`, reused across calls (no allocation per layer once warm), or with a
/// fresh default one when a nested call on this thread (rayon work stealing) finds it borrowed.
pub(crate) fn with_thread_scratch<T: Default + 'static, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut T::default()),
    })
}

/// The multithreaded CPU backend.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    engine: MatrixEngine,
    reason: Arc<str>,
    /// Attention's products on AMX tiles (bf16 Q, K, V and P) instead of the f32 AVX-512 kernel; AMX engines only.
    tile_attention: bool,
}

impl Default for CpuBackend {
    /// The best tier this CPU has, f32.
    fn default() -> Self {
        CpuBackend::new(Isa::best(), Precision::F32)
    }
}

impl CpuBackend {
    /// A backend at SIMD tier `isa` (or the best available tier below it) on the fastest engine for `precision`
    /// there: bf16 runs on AMX, else on `vdpbf16ps` where it pays off, else as f32 ([`engine::choose`]).
    /// [`CpuBackend::engine`] and [`CpuBackend::precision`] say what runs, [`CpuBackend::reason`] why.
    pub fn new(isa: Isa, precision: Precision) -> Self {
        let c = engine::choose(isa, precision);
        CpuBackend {
            engine: c.engine,
            reason: c.reason.into(),
            tile_attention: false,
        }
    }

    /// A backend on exactly this engine, or an error when the CPU lacks it.
    pub fn with_engine(engine: MatrixEngine) -> Result<Self> {
        if !engine.available() {
            return Err(crate::error::Error::InvalidArgument(format!(
                "CPU engine {} is not available on this machine",
                engine.name()
            )));
        }
        Ok(CpuBackend {
            engine,
            reason: "engine chosen by the caller".into(),
            tile_attention: false,
        })
    }

    /// With `on`, an AMX engine runs attention's two products on tiles: Q, K, V and the probabilities rounded to
    /// bf16. Off by default: that rounding took bf16's worst cosine to f32 on tools/parity.py's ViT-B/16 text from
    /// 0.99995 to 0.99984 (emulated), under the 0.9999 bar; the f32 AVX-512 kernel (every AMX CPU has AVX-512)
    /// keeps the AMX engine's embeddings those of `avx512-bf16`. No effect on other engines.
    pub fn with_tile_attention(mut self, on: bool) -> Self {
        self.tile_attention = on;
        self
    }

    /// Whether attention runs on AMX tiles ([`CpuBackend::with_tile_attention`] on an AMX engine).
    pub fn tile_attention(&self) -> bool {
        self.tile_attention && self.engine.tiles().is_some()
    }

    /// `CLIPRT_CPU_ENGINE` when set, else the tier from `CLIPRT_CPU_ISA` (best available when unset) with the
    /// fastest engine for `precision`; `CLIPRT_AMX_ATTENTION=bf16` puts an AMX engine's attention on tiles
    /// ([`CpuBackend::with_tile_attention`]).
    pub fn from_env(precision: Precision) -> Result<Self> {
        let tiles = match std::env::var("CLIPRT_AMX_ATTENTION").as_deref() {
            Ok("bf16") => true,
            Ok("f32") | Ok("") | Err(_) => false,
            Ok(other) => {
                return Err(crate::error::Error::InvalidArgument(format!(
                    "CLIPRT_AMX_ATTENTION={other}: expected f32 (the default) or bf16"
                )))
            }
        };
        let b = match MatrixEngine::from_env()? {
            Some(e) => {
                let mut b = CpuBackend::with_engine(e)?;
                b.reason = "forced by CLIPRT_CPU_ENGINE".into();
                b
            }
            None => CpuBackend::new(Isa::from_env()?, precision),
        };
        Ok(b.with_tile_attention(tiles))
    }

    /// The SIMD tier of the row-wise ops.
    pub fn isa(&self) -> Isa {
        self.engine.isa()
    }

    /// The matrix engine of the GEMMs and attention products.
    pub fn engine(&self) -> MatrixEngine {
        self.engine
    }

    /// Why this engine runs.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The precision the GEMMs actually run in.
    pub fn precision(&self) -> Precision {
        self.engine.precision()
    }
}

/// The fewest token rows worth a concurrent forward of their own (below, the GEMMs' row blocks would be too few to
/// reuse each weight panel).
const MIN_PART_ROWS: usize = 192;

/// Rows per rayon task for the memory-bound row-wise ops: large enough to amortize scheduling.
const ROWS_PER_TASK: usize = 8;

/// `w[n, k]` (and its bias) checked and packed for `engine`.
fn prepare(
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    engine: MatrixEngine,
) -> Result<PackedLinear> {
    check_linear(w, n, k, bias)?;
    Ok(PackedLinear::new(w, n, k, bias, engine))
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Index = Vec<u32>;
    type Graph = ();
    type Linear = PackedLinear;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn info(&self) -> BackendInfo {
        BackendInfo {
            device: "cpu".into(),
            engine: self.engine.name().into(),
            reason: self.reason.to_string(),
            isa: self.isa().name().into(),
            arithmetic: self.precision().name(),
        }
    }
    fn precision(&self) -> Precision {
        self.engine.precision()
    }
    /// From a thread outside every rayon pool (the CLI's main thread, a caller's own thread), each of a forward's
    /// ≈ 100 parallel ops would be injected into the global pool and waited for across threads, two thread
    /// hand-offs per op; run on a worker, an op is a fork-join among the workers. ViT-B/32 bf16 at 2 threads,
    /// binaries alternated 3 times: batch 1 63–68 → 80–85 images/s, batch 32 +2–4 %, text batch 32 +10 %.
    fn on_workers<R: Send>(&self, forward: impl FnOnce() -> R + Send) -> R {
        if rayon::current_thread_index().is_some() {
            forward()
        } else {
            rayon::scope(|_| forward())
        }
    }

    /// One part per thread, each of at least `MIN_PART_ROWS` rows: a forward's GEMMs, attention and row-wise ops
    /// then run on their own part without waiting for each other at every op.
    fn batch_parts(&self, rows: usize) -> usize {
        (rows / MIN_PART_ROWS).clamp(1, rayon::current_num_threads())
    }

    fn peak_gflops(&self, threads: usize) -> Option<f64> {
        self.engine
            .peak_unit()
            .map(|u| peak::peak_gflops(threads, u))
    }

    host::host_buffer_ops!();

    fn linear(&self, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Result<PackedLinear> {
        prepare(w, n, k, bias, self.engine)
    }
    fn linear_precise(
        &self,
        w: &[f32],
        n: usize,
        k: usize,
        b: Option<&[f32]>,
    ) -> Result<PackedLinear> {
        prepare(w, n, k, b, self.engine.precise_engine())
    }
    fn linear_f32(&self, w: &[f32], n: usize, k: usize, b: Option<&[f32]>) -> Result<PackedLinear> {
        if self.engine.splits_f32_layers() {
            // Split products on the tiles (`MatrixEngine::splits_f32_layers`).
            check_linear(w, n, k, b)?;
            return Ok(PackedLinear::new_split(w, n, k, b));
        }
        prepare(w, n, k, b, self.engine.f32_engine())
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
        let flops = 2.0 * (s.m * w.n * w.k) as f64;
        timed(w.op_class(), flops, || w.run(self.engine, x, s.m, out, ep));
        Ok(())
    }

    fn mlp_unchecked(
        &self,
        x: &mut Vec<f32>,
        hidden: &mut Vec<f32>,
        input: &Vec<f32>,
        fc1: &PackedLinear,
        fc2: &PackedLinear,
        s: MlpShape,
        act: Activation,
    ) -> Result<()> {
        let flops = 2.0 * (s.rows * (fc1.n * fc1.k + fc2.n * fc2.k)) as f64;
        // Unfused, the two GEMMs below count themselves.
        let fused = timed_counting(fc1.op_class(), || {
            let fused = matmul::fused_mlp(self.engine, fc1, fc2, input, s.rows, x, act);
            (fused, if fused { flops } else { 0.0 })
        });
        if !fused {
            self.gemm_unchecked(hidden, input, fc1, s.fc1(), Epilogue::Activation(act))?;
            self.gemm_unchecked(x, hidden, fc2, s.fc2(), Epilogue::Accumulate)?;
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
        let (gamma, beta, isa) = (&gamma[..dim], &beta[..dim], self.isa());
        timed(OpClass::LayerNorm, 0.0, || {
            out[..rows * dim]
                .par_chunks_mut(dim * ROWS_PER_TASK)
                .zip(x[..rows * dim].par_chunks(dim * ROWS_PER_TASK))
                .for_each(|(o, x)| {
                    for (o, x) in o.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                        simd::layernorm(isa, o, x, gamma, beta, eps);
                    }
                })
        });
        Ok(())
    }

    fn attention_unchecked(
        &self,
        out: &mut Vec<f32>,
        qkv: &Vec<f32>,
        s: AttnShape,
        key_lens: Option<&Vec<u32>>,
    ) -> Result<()> {
        // Both products over every query and key, as `cliprt bench` counts them (masked keys are skipped, so a
        // causal tower runs fewer).
        let flops = 4.0 * (s.batch * s.seq * s.seq * s.width()) as f64;
        timed(OpClass::Attention, flops, || {
            let tiles = self.engine.tiles().filter(|_| self.tile_attention);
            attention::attention(
                self.engine.isa(),
                tiles,
                out,
                qkv,
                s,
                key_lens.map(Vec::as_slice),
            )
        });
        Ok(())
    }
    fn attends_packed(&self) -> bool {
        true
    }
    fn attention_packed_unchecked(
        &self,
        out: &mut Vec<f32>,
        qkv: &Vec<f32>,
        s: AttnShape,
        lens: &Vec<u32>,
        rows: usize,
    ) -> Result<()> {
        let lens = &lens[..s.batch];
        let sum: usize = lens.iter().map(|&l| l as usize).sum();
        if sum != rows {
            return Err(crate::error::Error::Shape(format!(
                "sequence lengths sum to {sum}, the packed stream has {rows} rows"
            )));
        }
        // Each item's causal products over its own rows, as `cliprt bench` counts them (per item, every query
        // against every key).
        let flops = 4.0 * lens.iter().map(|&l| (l as f64).powi(2)).sum::<f64>() * s.width() as f64;
        timed(OpClass::Attention, flops, || {
            let tiles = self.engine.tiles().filter(|_| self.tile_attention);
            attention::attention_packed(self.engine.isa(), tiles, out, qkv, s, lens)
        });
        Ok(())
    }
}
