//! One engine: the single way to open a device and run CLIP on it (ARCHITECTURE.md, "The engine"). An [`Engine`]
//! wraps one [`Backend`] (with its [`Retrieval`] ops) behind an object-safe interface: image and text encoding once a model is loaded, logits,
//! top-k search over an uploaded gallery, and the `supports` check. [`crate::Clip`], `cliprt bench`, the search
//! bench and the CLI all go through it; adding a backend means implementing [`Backend`] and [`Retrieval`] and adding its arm to
//! [`Engine::open`] (docs/adding-a-backend.md).

use std::any::Any;

use crate::backend::reference::ReferenceBackend;
use crate::backend::{Backend, BackendInfo};
use crate::config::ClipConfig;
use crate::cpu::{CpuBackend, Precision};
pub use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::{Model, ModelSpec};
use crate::search::{Retrieval, SearchInfo, TopK};

/// A gallery uploaded by [`Engine::upload_gallery`], in the backend's own form.
pub struct Gallery {
    inner: Box<dyn Any + Send + Sync>,
    rows: usize,
    dim: usize,
    bytes: usize,
}

impl Gallery {
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// What the gallery holds on its device, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The object-safe face of a backend and its model, written once for every [`Backend`].
trait Runner: Send + Sync {
    fn info(&self) -> BackendInfo;
    fn precision(&self) -> Precision;
    fn peak_gflops(&self, threads: usize) -> Option<f64>;
    fn supports(&self, config: &ClipConfig) -> Result<()>;
    fn load(self: Box<Self>, spec: ModelSpec) -> Result<Box<dyn Runner>>;
    fn loaded(&self) -> bool;
    fn encode_images(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>>;
    fn encode_texts(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>>;
    #[allow(clippy::too_many_arguments)]
    fn scaled_cosine(
        &self,
        a: &[f32],
        rows_a: usize,
        b: &[f32],
        rows_b: usize,
        dim: usize,
        scale: f32,
    ) -> Result<Vec<f32>>;
    fn upload_gallery(&self, rows: &[f32], dim: usize, normalized: bool) -> Result<Gallery>;
    fn search(&self, g: &Gallery, queries: &[f32], k: usize, scale: f32) -> Result<TopK>;
    fn max_k(&self) -> usize;
    fn search_info(&self, threads: usize) -> SearchInfo;
    fn backend_any(&self) -> &dyn Any;
}

/// A backend, and the model prepared on it once one is loaded.
enum Held<B: Backend> {
    Open(B),
    Loaded(Box<dyn Model<B>>),
}

impl<B: Backend> Held<B> {
    fn backend(&self) -> &B {
        match self {
            Held::Open(b) => b,
            Held::Loaded(m) => m.backend(),
        }
    }

    fn model(&self) -> Result<&dyn Model<B>> {
        match self {
            Held::Loaded(m) => Ok(m.as_ref()),
            Held::Open(_) => Err(Error::InvalidArgument(
                "no model is loaded on this engine (Engine::load)".into(),
            )),
        }
    }
}

impl<B: Backend + Retrieval + 'static> Runner for Held<B> {
    fn info(&self) -> BackendInfo {
        self.backend().info()
    }
    fn precision(&self) -> Precision {
        self.backend().precision()
    }
    fn peak_gflops(&self, threads: usize) -> Option<f64> {
        self.backend().peak_gflops(threads)
    }
    fn supports(&self, config: &ClipConfig) -> Result<()> {
        self.backend().supports(config)
    }
    fn load(self: Box<Self>, spec: ModelSpec) -> Result<Box<dyn Runner>> {
        let backend = match *self {
            Held::Open(b) => b,
            Held::Loaded(m) => m.into_backend(),
        };
        Ok(Box::new(Held::Loaded(spec.prepare(backend)?)))
    }
    fn loaded(&self) -> bool {
        matches!(self, Held::Loaded(_))
    }
    fn encode_images(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        self.model()?.encode_images(pixels, batch)
    }
    fn encode_texts(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>> {
        self.model()?.encode_texts(rows)
    }
    fn scaled_cosine(
        &self,
        a: &[f32],
        rows_a: usize,
        b: &[f32],
        rows_b: usize,
        dim: usize,
        scale: f32,
    ) -> Result<Vec<f32>> {
        self.backend()
            .scaled_cosine(a, rows_a, b, rows_b, dim, scale)
    }
    fn upload_gallery(&self, rows: &[f32], dim: usize, normalized: bool) -> Result<Gallery> {
        // Every backend checks the shape (whole rows of a nonzero dim) before it uploads.
        let g = self.backend().upload_gallery(rows, dim, normalized)?;
        Ok(Gallery {
            bytes: self.backend().gallery_bytes(&g),
            inner: Box::new(g),
            rows: rows.len() / dim,
            dim,
        })
    }
    fn search(&self, g: &Gallery, queries: &[f32], k: usize, scale: f32) -> Result<TopK> {
        let own = g
            .inner
            .downcast_ref::<B::Gallery>()
            .ok_or_else(|| Error::InvalidArgument("a gallery uploaded by another engine".into()))?;
        self.backend().search(own, queries, k, scale)
    }
    fn max_k(&self) -> usize {
        self.backend().max_k()
    }
    fn search_info(&self, threads: usize) -> SearchInfo {
        self.backend().search_info(threads)
    }
    fn backend_any(&self) -> &dyn Any {
        self.backend()
    }
}

/// An opened backend, with a model once [`Engine::load`]ed.
///
/// ```no_run
/// use cliprt::engine::{Device, Engine};
/// use cliprt::cpu::Precision;
/// let engine = Engine::open(Device::Cpu, Precision::F32)?;
/// let gallery = engine.upload_gallery(&vec![0.5; 4 * 512], 512, false)?;
/// let top = engine.search(&gallery, &vec![0.5; 512], 3, 1.0)?;
/// # Ok::<(), cliprt::Error>(())
/// ```
pub struct Engine {
    runner: Box<dyn Runner>,
}

impl Engine {
    /// Opens `device` (a missing GPU fails here, before any weight is read). `precision` chooses the CPU's matrix
    /// engine ([`crate::cpu::engine::choose`], `CLIPRT_CPU_ENGINE` forces one); the reference runs f64, CUDA fp16.
    pub fn open(device: Device, precision: Precision) -> Result<Engine> {
        Ok(match device {
            Device::Cpu => Engine::on(CpuBackend::from_env(precision)?),
            Device::Reference => Engine::on(ReferenceBackend),
            Device::Cuda(_) | Device::CudaSim => open_cuda(device)?,
        })
    }

    /// An engine on a given backend (a CPU engine of the caller's choice, a CUDA backend with chosen kernel
    /// variants, a new backend under test).
    pub fn on<B: Backend + Retrieval + 'static>(backend: B) -> Engine {
        Engine {
            runner: Box::new(Held::Open(backend)),
        }
    }

    /// Prepares a model (of any family: [`ModelSpec`]) on this engine, after checking that the backend supports
    /// it, replacing a model loaded before.
    pub fn load(self, spec: ModelSpec) -> Result<Engine> {
        Ok(Engine {
            runner: self.runner.load(spec)?,
        })
    }

    /// Whether a model is loaded.
    pub fn is_loaded(&self) -> bool {
        self.runner.loaded()
    }

    /// What runs: device, engine and why, SIMD tier or GPU arch, arithmetic.
    pub fn info(&self) -> BackendInfo {
        self.runner.info()
    }

    /// The precision the GEMMs run in.
    pub fn precision(&self) -> Precision {
        self.runner.precision()
    }

    /// The engine's peak GFLOP/s on `threads` threads, where one is known (see [`Backend::peak_gflops`]).
    pub fn peak_gflops(&self, threads: usize) -> Option<f64> {
        self.runner.peak_gflops(threads)
    }

    /// Whether this engine can run a model of `config`, or why not.
    pub fn supports(&self, config: &ClipConfig) -> Result<()> {
        self.runner.supports(config)
    }

    /// Projected image embeddings `[batch, projection_dim]` of `pixels[batch, 3, H, W]` (needs a loaded model).
    pub fn encode_images(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        self.runner.encode_images(pixels, batch)
    }

    /// Projected text embeddings `[rows, projection_dim]` of token id rows (needs a loaded model, which lays
    /// them out as its text tower needs).
    pub fn encode_texts(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>> {
        self.runner.encode_texts(rows)
    }

    /// `scale · normalize(a) · normalize(b)ᵀ`, `[rows_a, rows_b]` (see [`Retrieval::scaled_cosine`]).
    pub fn logits(
        &self,
        a: &[f32],
        rows_a: usize,
        b: &[f32],
        rows_b: usize,
        dim: usize,
        scale: f32,
    ) -> Result<Vec<f32>> {
        self.runner.scaled_cosine(a, rows_a, b, rows_b, dim, scale)
    }

    /// Uploads `[rows, dim]` embeddings for [`Engine::search`] (`normalized`: unit rows, no norm pass).
    pub fn upload_gallery(&self, rows: &[f32], dim: usize, normalized: bool) -> Result<Gallery> {
        self.runner.upload_gallery(rows, dim, normalized)
    }

    /// The `k` best rows of `gallery` for each query row by `scale · cos` (see [`Retrieval::search`]).
    pub fn search(&self, gallery: &Gallery, queries: &[f32], k: usize, scale: f32) -> Result<TopK> {
        self.runner.search(gallery, queries, k, scale)
    }

    /// The largest `k` [`Engine::search`] takes.
    pub fn max_k(&self) -> usize {
        self.runner.max_k()
    }

    /// What runs [`Engine::search`] (see [`Retrieval::search_info`]).
    pub fn search_info(&self, threads: usize) -> SearchInfo {
        self.runner.search_info(threads)
    }

    /// The backend, where it is a `B` (e.g. the [`CpuBackend`] to ask for its matrix engine).
    pub fn backend<B: Backend + 'static>(&self) -> Option<&B> {
        self.runner.backend_any().downcast_ref::<B>()
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(device: Device) -> Result<Engine> {
    Ok(Engine::on(crate::cuda::backend_for(device, &[])?))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_: Device) -> Result<Engine> {
    Err(Error::cuda_not_built())
}
