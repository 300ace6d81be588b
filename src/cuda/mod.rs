//! The CUDA backend: fp16 storage, f32 accumulation, cliprt's own kernels (kernels/*.cu) compiled at run time by
//! NVRTC to CUBIN for the device's exact arch and cached on disk.
//!
//! Everything CUDA is loaded dynamically (cudarc `dynamic-loading`, NVRTC by hand in [`nvrtc`]), so the binary
//! builds and starts anywhere. Missing driver, no device, or no NVRTC: [`Error::DeviceUnavailable`] with the
//! reason, never a panic (cudarc panics on a missing library, so the driver is probed before cudarc touches it),
//! and the CPU backend keeps working in the same process.
//!
//! Buffers hold f16 on the device; [`Backend::upload`]/[`Backend::download`] convert at the boundary (round to
//! nearest even). Weights are converted and uploaded once, when the model is prepared.

mod cache;
pub mod kernels;
mod nvrtc;
pub mod profile;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::f16;

use crate::backend::{
    check_linear, Activation, AttnShape, Backend, Epilogue, GemmShape, PatchShape,
};
use crate::error::{Error, Result};

pub use kernels::{KernelReport, ModuleReport, OPS};

impl From<DriverError> for Error {
    fn from(e: DriverError) -> Self {
        Error::Cuda(e.to_string())
    }
}

/// What the driver says about a device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    /// The NVRTC target the kernels are compiled for, e.g. `sm_90`.
    pub arch: String,
    pub memory_bytes: usize,
}

/// Runs a cudarc call that may panic (a symbol the installed driver lacks) and turns both failure kinds into
/// [`Error::DeviceUnavailable`].
fn guarded<T>(what: &str, f: impl FnOnce() -> std::result::Result<T, DriverError>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::DeviceUnavailable(format!("{what}: {e}"))),
        Err(_) => Err(Error::DeviceUnavailable(format!(
            "{what}: the CUDA driver library could not be used (too old for this build?)"
        ))),
    }
}

/// Number of CUDA devices, or why there are none usable.
pub fn device_count() -> Result<usize> {
    // SAFETY: only tries to dlopen the driver library under its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::DeviceUnavailable(
            "no CUDA driver: libcuda.so not found (no NVIDIA driver on this machine)".into(),
        ));
    }
    let n = guarded("CUDA driver", CudaContext::device_count)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::DeviceUnavailable(format!(
            "cuda:{ordinal}: this machine has {count} CUDA device(s)"
        )));
    }
    guarded(&format!("cuda:{ordinal}"), || CudaContext::new(ordinal))
}

/// Describes device `ordinal` without loading kernels (for `cliprt info`).
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    let ctx = context(ordinal)?;
    describe(&ctx, ordinal)
}

fn describe(ctx: &Arc<CudaContext>, ordinal: usize) -> Result<DeviceInfo> {
    let (major, minor) = ctx.compute_capability()?;
    Ok(DeviceInfo {
        ordinal,
        name: ctx.name()?,
        compute_capability: (major, minor),
        arch: format!("sm_{major}{minor}"),
        memory_bytes: ctx.mem_get_info()?.1,
    })
}

/// Dense fp16 tensor-core peak (f32 accumulate) of the GPUs we know, from the vendors' data sheets.
pub fn peak_fp16_gflops(name: &str) -> Option<f64> {
    const PEAKS: &[(&str, f64)] = &[
        ("H200", 989_000.0),
        ("H100 PCIe", 756_000.0),
        ("H100", 989_000.0),
        ("A100", 312_000.0),
        ("L40S", 362_000.0),
        ("A10G", 70_000.0),
        ("L4", 121_000.0),
    ];
    PEAKS
        .iter()
        .find(|(n, _)| name.contains(n))
        .map(|&(_, p)| p)
}

/// DRAM bandwidth in GB/s of the GPUs we know (data sheets), for memory-bound kernels' %peak.
pub fn peak_bandwidth_gbs(name: &str) -> Option<f64> {
    const PEAKS: &[(&str, f64)] = &[
        ("H200", 4_800.0),
        ("H100 PCIe", 2_000.0),
        ("H100", 3_350.0),
        ("A100", 2_039.0),
        ("L40S", 864.0),
        ("A10G", 600.0),
        ("L4", 300.0),
    ];
    PEAKS
        .iter()
        .find(|(n, _)| name.contains(n))
        .map(|&(_, p)| p)
}

/// NVRTC's version and where it was loaded from, or why it is unavailable.
pub fn nvrtc_info() -> Result<((i32, i32), String)> {
    let n = nvrtc::Nvrtc::get()?;
    Ok((n.version(), n.path().to_string()))
}

/// Compiles every kernel module for `arch` with the ptxas report (no GPU needed): `cliprt kernels --check`.
pub fn check(arch: &str) -> Vec<Result<ModuleReport>> {
    kernels::modules()
        .map(|m| kernels::check_module(m, arch))
        .collect()
}

/// An f16 device buffer of `len` values (the allocation holds at least one, as CUDA cannot allocate zero bytes).
pub struct CudaBuf {
    data: CudaSlice<f16>,
    len: usize,
}

/// A linear layer on the device: `w[n, k]` (HF layout, K-contiguous as the GEMM wants) and an optional bias.
pub struct CudaLinear {
    w: CudaSlice<f16>,
    bias: Option<CudaSlice<f16>>,
    n: usize,
    k: usize,
}

struct Kernels {
    gemm: CudaFunction,
    /// Which gemm variant `gemm` is ("v1", "v2").
    gemm_variant: &'static str,
    /// gemm_f16_v1, the fallback for shapes a faster variant cannot take (K % 8 ≠ 0).
    gemm_v1: CudaFunction,
    attention: CudaFunction,
    /// Which attention variant `attention` is.
    attention_variant: &'static str,
    /// attention_f16_v1, the fallback for head dims v2 cannot take.
    attention_v1: CudaFunction,
    layernorm: CudaFunction,
    im2col: CudaFunction,
    vision_embed: CudaFunction,
    text_embed: CudaFunction,
    gather_rows: CudaFunction,
    scaled_cosine: CudaFunction,
    topk: CudaFunction,
    topk_merge: CudaFunction,
}

/// Dynamic shared memory of gemm_f16_v2 (G2_SMEM in kernels/gemm.cu).
const GEMM_V2_SMEM: usize = 3 * (128 + 128) * 40 * 2;

impl Kernels {
    /// Compiles (or reads from the cache) each module once and resolves every op's variant: `pick` chooses it
    /// (the env override or the default, or a profiling choice).
    fn load(
        ctx: &Arc<CudaContext>,
        arch: &str,
        pick: &dyn Fn(&kernels::Op) -> Result<&'static kernels::Variant>,
    ) -> Result<Kernels> {
        let mut modules: HashMap<&str, Arc<CudaModule>> = HashMap::new();
        let mut f = |name: &str, fixed: Option<&str>| -> Result<(CudaFunction, &'static str)> {
            let op = kernels::op(name)
                .ok_or_else(|| Error::InvalidArgument(format!("no kernel op {name}")))?;
            let variant = match fixed {
                Some(v) => op.pick(Some(v))?,
                None => pick(op)?,
            };
            let module = match modules.get(op.module) {
                Some(m) => m.clone(),
                None => {
                    let cubin = kernels::cubin(op.module, arch)?;
                    let m = ctx.load_module(Ptx::from_binary(cubin))?;
                    modules.insert(op.module, m.clone());
                    m
                }
            };
            Ok((module.load_function(variant.symbol)?, variant.name))
        };
        let (gemm, gemm_variant) = f("gemm", None)?;
        let attention = f("attention", None)?;
        if gemm_variant == "v2" {
            // Above the default 48 KiB a kernel's dynamic shared memory must be allowed explicitly.
            gemm.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                GEMM_V2_SMEM as i32,
            )?;
        }
        Ok(Kernels {
            gemm,
            gemm_variant,
            gemm_v1: f("gemm", Some("v1"))?.0,
            attention: attention.0,
            attention_variant: attention.1,
            attention_v1: f("attention", Some("v1"))?.0,
            layernorm: f("layernorm", None)?.0,
            im2col: f("im2col", None)?.0,
            vision_embed: f("vision_embed", None)?.0,
            text_embed: f("text_embed", None)?.0,
            gather_rows: f("gather_rows", None)?.0,
            scaled_cosine: f("scaled_cosine", None)?.0,
            topk: f("topk", None)?.0,
            topk_merge: f("topk_merge", None)?.0,
        })
    }
}

/// A retrieval gallery on the device: f32 rows and, unless they are unit length, their inverse norms.
pub struct CudaGallery {
    data: CudaSlice<f32>,
    inv_norms: Option<CudaSlice<f32>>,
    rows: usize,
    dim: usize,
}

impl CudaGallery {
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// The largest k of the CUDA top-k kernels (their shared-memory sort holds 2·k pairs); the CPU goes to 4096.
pub const MAX_GPU_K: usize = 2048;
/// Shared memory the top-k kernel declares statically (its candidate buffer), in bytes.
const TOPK_STATIC_SMEM: usize = 4096 * 8 + 16;

/// CLIP on one CUDA device.
pub struct CudaBackend {
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    k: Kernels,
}

/// The largest head dimension attention_f16_v1 handles (4 dimensions per lane).
const MAX_HEAD_DIM: usize = 128;

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Shape(format!(
            "{what} = {v} exceeds the kernels' 32-bit index range"
        ))
    })
}

/// A 1-D launch of 256-thread blocks for grid-stride kernels over `total` elements.
fn elementwise(total: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (total.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The epilogue code the GEMM kernel reads (EPI_* in kernels/common.cuh).
fn epilogue_code(ep: Epilogue) -> i32 {
    match ep {
        Epilogue::Store => 0,
        Epilogue::Accumulate => 1,
        Epilogue::Activation(Activation::QuickGelu) => 2,
        Epilogue::Activation(Activation::Gelu) => 3,
    }
}

/// f32 → f16 (round to nearest even) on the host, in parallel for large inputs: at ViT-L/14 batch 256 the pixels
/// alone are 38 M values, which one core converts in tens of milliseconds.
fn to_f16(data: &[f32]) -> Vec<f16> {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    let mut out = vec![f16::ZERO; data.len()];
    out.par_chunks_mut(1 << 18)
        .zip(data.par_chunks(1 << 18))
        .for_each(|(o, i)| o.convert_from_f32_slice(i));
    out
}

impl CudaBackend {
    /// Opens device `ordinal` and loads every kernel (compiled for its arch by NVRTC, or from the disk cache): each
    /// op's default variant, or its `CLIPRT_KERNEL_<OP>` override.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        CudaBackend::with_variants(ordinal, &[])
    }

    /// [`CudaBackend::new`] with explicit `(op, variant)` choices (tests and `cliprt profile` compare variants
    /// side by side); ops not named take their default or override.
    pub fn with_variants(ordinal: usize, choices: &[(&str, &str)]) -> Result<CudaBackend> {
        let ctx = context(ordinal)?;
        let info = describe(&ctx, ordinal)?;
        let pick = |op: &kernels::Op| match choices.iter().find(|(o, _)| *o == op.name) {
            Some((_, v)) => op.pick(Some(v)),
            None => op.selected(),
        };
        let k = Kernels::load(&ctx, &info.arch, &pick)?;
        Ok(CudaBackend {
            stream: ctx.default_stream(),
            info,
            k,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Whether the kernels can run `config` (checked at load, so an unsupported model fails before any upload).
    pub fn supports(&self, config: &crate::config::ClipConfig) -> Result<()> {
        for (tower, e) in [
            ("text", &config.text.encoder),
            ("vision", &config.vision.encoder),
        ] {
            if e.head_dim() > MAX_HEAD_DIM {
                return Err(Error::UnsupportedModel(format!(
                    "{tower} head dim {} (the CUDA attention kernel handles up to {MAX_HEAD_DIM})",
                    e.head_dim()
                )));
            }
        }
        Ok(())
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// `scale · normalize(a) · normalize(b)ᵀ` on the device for host f32 embeddings `a[rows_a, dim]`,
    /// `b[rows_b, dim]` (the same contract as [`crate::similarity::scaled_cosine`]).
    pub fn scaled_cosine(
        &self,
        a: &[f32],
        rows_a: usize,
        b: &[f32],
        rows_b: usize,
        dim: usize,
        scale: f32,
    ) -> Result<Vec<f32>> {
        crate::similarity::check_pair(a, rows_a, b, rows_b, dim)?;
        let outputs = rows_a * rows_b;
        if outputs == 0 {
            return Ok(Vec::new());
        }
        let (da, db) = (self.stream.clone_htod(a)?, self.stream.clone_htod(b)?);
        let mut out = self.stream.alloc_zeros::<f32>(outputs)?;
        let (ra, rb, d) = (int(rows_a, "rows")?, int(rows_b, "rows")?, int(dim, "dim")?);
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(outputs.div_ceil(8))
                    .map_err(|_| Error::Shape("too many logits".into()))?,
                1,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.stream.launch_builder(&self.k.scaled_cosine);
        l.arg(&mut out)
            .arg(&da)
            .arg(&db)
            .arg(&ra)
            .arg(&rb)
            .arg(&d)
            .arg(&scale);
        // SAFETY: argument list matches scaled_cosine_f32_v1; a, b hold rows·dim values and out rows_a·rows_b.
        unsafe { l.launch(cfg) }?;
        Ok(self.stream.clone_dtoh(&out)?)
    }

    /// Uploads a gallery `[rows, dim]` for [`CudaBackend::search`] (inverse norms computed here once, in f64,
    /// unless `normalized`).
    pub fn upload_gallery(
        &self,
        data: &[f32],
        dim: usize,
        normalized: bool,
    ) -> Result<CudaGallery> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(Error::Shape(format!(
                "gallery of {} values is not whole rows of {dim}",
                data.len()
            )));
        }
        let rows = data.len() / dim;
        if rows >= u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "{rows} gallery rows exceed the kernels' 32-bit indices"
            )));
        }
        if rows == 0 {
            return Err(Error::EmptyInput("the gallery is empty"));
        }
        let inv_norms = if normalized {
            None
        } else {
            let inv: Vec<f32> = data
                .chunks_exact(dim)
                .map(|r| crate::similarity::scaled_inv_norm(r, 1.0))
                .collect();
            Some(self.stream.clone_htod(&inv)?)
        };
        Ok(CudaGallery {
            data: self.stream.clone_htod(data)?,
            inv_norms,
            rows,
            dim,
        })
    }

    /// The `k` best rows of `g` for each query row of `queries` by `scale · cos`, best first, ties by lower index
    /// (the contract of [`crate::search::search`]), with k ≤ [`MAX_GPU_K`].
    pub fn search(
        &self,
        g: &CudaGallery,
        queries: &[f32],
        k: usize,
        scale: f32,
    ) -> Result<crate::search::TopK> {
        let dim = g.dim;
        let nq = crate::search::check_request(dim, g.rows, queries, k, MAX_GPU_K, scale)?;
        if TOPK_STATIC_SMEM + 4 * dim > 48 * 1024 {
            return Err(Error::InvalidArgument(format!(
                "dim {dim} exceeds the CUDA top-k's shared memory"
            )));
        }
        // Normalized and scaled on the host, like the CPU kernels' packing.
        let packed: Vec<f32> = queries
            .chunks_exact(dim)
            .flat_map(|q| {
                let f = crate::similarity::scaled_inv_norm(q, scale);
                q.iter().map(move |&v| v * f)
            })
            .collect();
        // Enough blocks to fill the GPU (≈ 1024), slices of at least 256 rows: candidates stay ≤ 1024·k per
        // query whatever the gallery size.
        let slices = (1024 / nq).clamp(1, g.rows.div_ceil(256).max(1)).min(1024);
        let per_slice = g.rows.div_ceil(slices);
        let slices = g.rows.div_ceil(per_slice);
        let (ki, rows_i, dim_i, per_i) = (
            int(k, "k")?,
            int(g.rows, "rows")?,
            int(dim, "dim")?,
            int(per_slice, "rows")?,
        );
        let n_cand = slices * k;
        let q_dev = self.stream.clone_htod(&packed)?;
        let mut cand_s = self.stream.alloc_zeros::<f32>(nq * n_cand)?;
        let mut cand_i = self.stream.alloc_zeros::<u32>(nq * n_cand)?;
        let mut l = self.stream.launch_builder(&self.k.topk);
        l.arg(&mut cand_s).arg(&mut cand_i).arg(&q_dev).arg(&g.data);
        // A null pointer tells the kernel the gallery is normalized.
        let null: u64 = 0;
        match &g.inv_norms {
            Some(n) => l.arg(n),
            None => l.arg(&null),
        };
        l.arg(&rows_i).arg(&dim_i).arg(&ki).arg(&per_i);
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(nq).map_err(|_| Error::Shape("too many queries".into()))?,
                slices as u32,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (4 * dim) as u32,
        };
        // SAFETY: arguments match topk_f32_v1; buffers hold nq·dim queries, rows·dim gallery values and
        // nq·slices·k candidates; dynamic shared memory holds the query.
        unsafe { l.launch(cfg) }?;
        let mut out_s = self.stream.alloc_zeros::<f32>(nq * k)?;
        let mut out_i = self.stream.alloc_zeros::<u32>(nq * k)?;
        let n_i = int(n_cand, "candidates")?;
        let mut l = self.stream.launch_builder(&self.k.topk_merge);
        l.arg(&mut out_s)
            .arg(&mut out_i)
            .arg(&cand_s)
            .arg(&cand_i)
            .arg(&n_i)
            .arg(&ki);
        let cfg = LaunchConfig {
            grid_dim: (nq as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match topk_merge_f32_v1; candidates hold nq·n_cand pairs, outputs nq·k.
        unsafe { l.launch(cfg) }?;
        let (scores, indices) = (
            self.stream.clone_dtoh(&out_s)?,
            self.stream.clone_dtoh(&out_i)?,
        );
        let keep = k.min(g.rows);
        let mut top = crate::search::TopK {
            queries: nq,
            k: keep,
            indices: Vec::with_capacity(nq * keep),
            scores: Vec::with_capacity(nq * keep),
        };
        for q in 0..nq {
            top.indices
                .extend(indices[q * k..q * k + keep].iter().map(|&i| i as usize));
            top.scores.extend_from_slice(&scores[q * k..q * k + keep]);
        }
        Ok(top)
    }

    fn upload_u32(&self, v: &[u32]) -> Result<CudaSlice<u32>> {
        // One element at least: CUDA cannot allocate zero bytes.
        if v.is_empty() {
            return Ok(self.stream.alloc_zeros::<u32>(1)?);
        }
        Ok(self.stream.clone_htod(v)?)
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Linear = CudaLinear;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf> {
        Ok(CudaBuf {
            data: self.stream.alloc_zeros::<f16>(len.max(1))?,
            len,
        })
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        if data.is_empty() {
            return self.alloc(0);
        }
        Ok(CudaBuf {
            data: self.stream.clone_htod(&to_f16(data))?,
            len: data.len(),
        })
    }

    fn write(&self, buf: &mut CudaBuf, data: &[f32]) -> Result<()> {
        if data.len() > buf.len {
            return Err(Error::Shape(format!(
                "writing {} values into a buffer of {}",
                data.len(),
                buf.len
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut dst = buf.data.slice_mut(0..data.len());
        Ok(self.stream.memcpy_htod(&to_f16(data), &mut dst)?)
    }

    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        let host = self.stream.clone_dtoh(&buf.data)?;
        Ok(host[..buf.len].iter().map(|v| v.to_f32()).collect())
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn linear(&self, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Result<CudaLinear> {
        check_linear(w, n, k, bias)?;
        Ok(CudaLinear {
            w: self.upload(w)?.data,
            bias: bias.map(|b| self.upload(b).map(|b| b.data)).transpose()?,
            n,
            k,
        })
    }

    fn linear_dims(&self, lin: &CudaLinear) -> (usize, usize, bool) {
        (lin.n, lin.k, lin.bias.is_some())
    }

    fn gemm_unchecked(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaLinear,
        s: GemmShape,
        ep: Epilogue,
    ) -> Result<()> {
        let (m, n, k) = (int(s.m, "m")?, int(s.n, "n")?, int(s.k, "k")?);
        let has_bias = i32::from(w.bias.is_some());
        let code = epilogue_code(ep);
        // 16-byte cp.async chunks need K % 8 == 0 and 16-byte aligned operands (CUDA allocations are; checked
        // rather than assumed).
        let aligned = |p: u64| p.is_multiple_of(16);
        let vec = i32::from(
            s.k.is_multiple_of(8)
                && aligned(x.data.device_ptr(&self.stream).0)
                && aligned(w.w.device_ptr(&self.stream).0),
        );
        let bias = w.bias.as_ref().unwrap_or(&w.w);
        // v2 where it can run (K % 8 == 0, aligned), else v1 (the selected variant or the fallback). v2 has no
        // `vec` argument: it always copies 16-byte chunks.
        let v2 = self.k.gemm_variant == "v2" && vec == 1;
        let (f, tile, threads, smem) = if v2 {
            (&self.k.gemm, 128, 256, GEMM_V2_SMEM as u32)
        } else if self.k.gemm_variant == "v1" {
            (&self.k.gemm, 64, 128, 0)
        } else {
            (&self.k.gemm_v1, 64, 128, 0)
        };
        let cfg = LaunchConfig {
            grid_dim: (s.n.div_ceil(tile) as u32, s.m.div_ceil(tile) as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        if cfg.grid_dim.1 > 65_535 {
            return Err(Error::Shape(format!(
                "gemm with {} rows exceeds the grid limit",
                s.m
            )));
        }
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut out.data)
            .arg(&x.data)
            .arg(&w.w)
            .arg(bias)
            .arg(&m)
            .arg(&n)
            .arg(&k)
            .arg(&has_bias)
            .arg(&code);
        if !v2 {
            l.arg(&vec);
        }
        // SAFETY: arguments match gemm_f16_v1 (with `vec`) or gemm_f16_v2 (K % 8 == 0 and aligned operands,
        // checked above; its dynamic shared memory limit was raised at load); shapes were checked by backend::gemm.
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    fn layernorm_unchecked(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        gamma: &CudaBuf,
        beta: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let (r, d) = (int(rows, "rows")?, int(dim, "dim")?);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.stream.launch_builder(&self.k.layernorm);
        l.arg(&mut out.data)
            .arg(&x.data)
            .arg(&gamma.data)
            .arg(&beta.data)
            .arg(&r)
            .arg(&d)
            .arg(&eps);
        // SAFETY: arguments match layernorm_f16_v1; shapes were checked by backend::layernorm.
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    fn attention_unchecked(&self, out: &mut CudaBuf, qkv: &CudaBuf, s: AttnShape) -> Result<()> {
        if s.head_dim > MAX_HEAD_DIM {
            return Err(Error::UnsupportedModel(format!(
                "head dim {} (the CUDA attention kernel handles up to {MAX_HEAD_DIM})",
                s.head_dim
            )));
        }
        if s.batch > 65_535 || s.heads > 65_535 {
            return Err(Error::Shape(format!(
                "attention {s:?} exceeds the grid limits"
            )));
        }
        let (seq, heads, hd) = (
            int(s.seq, "seq")?,
            int(s.heads, "heads")?,
            int(s.head_dim, "head_dim")?,
        );
        let causal = i32::from(s.causal);
        // CLIP scales queries by head_dim^−½ before the product.
        let scale = (s.head_dim as f32).sqrt().recip();
        // v2 copies 16-byte (8-half) chunks of each head: head dims that are a multiple of 8 (all of CLIP's).
        let (f, cfg) = if self.k.attention_variant == "v2" && s.head_dim.is_multiple_of(8) {
            let cfg = LaunchConfig {
                grid_dim: (s.seq.div_ceil(64) as u32, s.heads as u32, s.batch as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            (&self.k.attention, cfg)
        } else {
            let cfg = LaunchConfig {
                grid_dim: (s.seq.div_ceil(8) as u32, s.heads as u32, s.batch as u32),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let f = if self.k.attention_variant == "v1" {
                &self.k.attention
            } else {
                &self.k.attention_v1
            };
            (f, cfg)
        };
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut out.data)
            .arg(&qkv.data)
            .arg(&seq)
            .arg(&heads)
            .arg(&hd)
            .arg(&causal)
            .arg(&scale);
        // SAFETY: arguments match attention_f16_v1 and _v2 (same list); shapes were checked by backend::attention.
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    fn im2col_unchecked(&self, out: &mut CudaBuf, pixels: &CudaBuf, s: PatchShape) -> Result<()> {
        let total = s.batch * s.patches() * s.patch_dim();
        let (b, c) = (int(s.batch, "batch")?, int(s.channels, "channels")?);
        let (size, p) = (int(s.image_size, "image size")?, int(s.patch, "patch")?);
        let mut l = self.stream.launch_builder(&self.k.im2col);
        l.arg(&mut out.data)
            .arg(&pixels.data)
            .arg(&b)
            .arg(&c)
            .arg(&size)
            .arg(&p);
        // SAFETY: arguments match im2col_f16_v1; shapes were checked by backend::im2col.
        unsafe { l.launch(elementwise(total)) }?;
        Ok(())
    }

    fn vision_embed_unchecked(
        &self,
        out: &mut CudaBuf,
        patches: &CudaBuf,
        class: &CudaBuf,
        pos: &CudaBuf,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        let (b, s, d) = (int(batch, "batch")?, int(seq, "seq")?, int(dim, "dim")?);
        let mut l = self.stream.launch_builder(&self.k.vision_embed);
        l.arg(&mut out.data)
            .arg(&patches.data)
            .arg(&class.data)
            .arg(&pos.data)
            .arg(&b)
            .arg(&s)
            .arg(&d);
        // SAFETY: arguments match vision_embed_f16_v1; shapes were checked by backend::vision_embed.
        unsafe { l.launch(elementwise(batch * seq * dim)) }?;
        Ok(())
    }

    fn text_embed_unchecked(
        &self,
        out: &mut CudaBuf,
        ids: &[u32],
        token: &CudaBuf,
        pos: &CudaBuf,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let dev_ids = self.upload_u32(ids)?;
        let (rows, s, d) = (int(ids.len(), "rows")?, int(seq, "seq")?, int(dim, "dim")?);
        let mut l = self.stream.launch_builder(&self.k.text_embed);
        l.arg(&mut out.data)
            .arg(&dev_ids)
            .arg(&token.data)
            .arg(&pos.data)
            .arg(&rows)
            .arg(&s)
            .arg(&d);
        // SAFETY: arguments match text_embed_f16_v1; ids were checked against the vocabulary by backend::text_embed.
        unsafe { l.launch(elementwise(ids.len() * dim)) }?;
        Ok(())
    }

    fn gather_rows_unchecked(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        rows: &[usize],
        dim: usize,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let idx: Vec<u32> = rows
            .iter()
            .map(|&r| {
                u32::try_from(r).map_err(|_| Error::Shape(format!("row {r} exceeds 32 bits")))
            })
            .collect::<Result<_>>()?;
        let dev_rows = self.upload_u32(&idx)?;
        let (n, d) = (int(rows.len(), "rows")?, int(dim, "dim")?);
        let mut l = self.stream.launch_builder(&self.k.gather_rows);
        l.arg(&mut out.data)
            .arg(&x.data)
            .arg(&dev_rows)
            .arg(&n)
            .arg(&d);
        // SAFETY: arguments match gather_rows_f16_v1; rows were checked by backend::gather_rows.
        unsafe { l.launch(elementwise(rows.len() * dim)) }?;
        Ok(())
    }
}
