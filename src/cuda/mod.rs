//! The CUDA backend: fp16 storage, f32 accumulation, cliprt's own kernels (kernels/*.cu) compiled at run time by
//! NVRTC to CUBIN for the device's exact arch and cached on disk.
//!
//! Everything CUDA is loaded dynamically (cudarc `dynamic-loading`, NVRTC by hand in `nvrtc.rs`), so the binary
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
pub mod sim;

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
    /// The most shared memory one block may opt in to (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).
    pub max_shared_per_block: usize,
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
        max_shared_per_block: ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )? as usize,
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

/// Device memory: a CUDA allocation, or the simulator's ([`CudaBackend::simulated`]). Untyped: the kernels'
/// parameter lists give it a type.
pub struct Mem {
    inner: MemInner,
    /// The device address (what a kernel receives).
    ptr: u64,
    /// Recorded on the main stream after the (stream-ordered) allocation and zeroing: another stream that
    /// writes the memory waits for it first.
    ready: Option<cudarc::driver::CudaEvent>,
}

enum MemInner {
    Cuda(CudaSlice<u8>),
    Sim(sim::SimMem),
}

impl Mem {
    /// The allocation's size.
    fn bytes(&self) -> usize {
        match &self.inner {
            MemInner::Cuda(slice) => slice.len(),
            MemInner::Sim(m) => m.bytes(),
        }
    }
}

/// A kernel argument.
#[derive(Clone, Copy)]
enum Arg<'a> {
    Mem(&'a Mem),
    I32(i32),
    F32(f32),
    /// A null pointer (an optional input the kernel skips).
    Null,
}

/// Where the kernels run.
enum Exec {
    /// A CUDA device: the stream everything runs on, the loaded functions by symbol, and a second stream that
    /// graphs are recorded on and replayed from. Recording on a stream nobody else uses keeps other threads'
    /// work (launches, frees) out of a graph; replays are ordered after and before the main stream's work.
    Cuda {
        stream: Arc<CudaStream>,
        functions: HashMap<&'static str, CudaFunction>,
        graph_stream: Arc<CudaStream>,
        /// Model inputs upload on it from pinned staging buffers ([`Backend::write_input`]).
        copy_stream: Arc<CudaStream>,
        staging: std::sync::Mutex<Staging>,
    },
    /// The CPU simulator (src/cuda/sim): same kernels, same launches, no GPU.
    Sim(Arc<sim::Simulator>),
}

/// Halves per pinned staging buffer (16 MB): large enough for full-speed DMA, small enough that converting one
/// piece on the host overlaps copying the previous one.
const STAGE_HALVES: usize = 8 << 20;

/// Two pinned (page-locked) host buffers that model inputs are converted into and copied from, alternately;
/// each remembers when its last copy finishes.
#[derive(Default)]
struct Staging {
    buffers: Vec<(
        cudarc::driver::PinnedHostSlice<f16>,
        Option<cudarc::driver::CudaEvent>,
    )>,
    next: usize,
}

impl Drop for Staging {
    fn drop(&mut self) {
        // A copy still reading a buffer must finish before the buffer is freed.
        for (_, copied) in &self.buffers {
            if let Some(e) = copied {
                let _ = e.synchronize();
            }
        }
    }
}

/// An f16 device buffer of `len` values (the allocation holds at least one, as CUDA cannot allocate zero bytes).
pub struct CudaBuf {
    data: Mem,
    len: usize,
}

/// A linear layer on the device: `w[n, k]` (HF layout, K-contiguous as the GEMM wants) and an optional bias.
pub struct CudaLinear {
    w: Mem,
    bias: Option<Mem>,
    n: usize,
    k: usize,
}

/// The kernel symbol of every op: the selected variant (default, `CLIPRT_KERNEL_<OP>` override or an explicit
/// choice) and, for the ops whose faster variants do not take every shape, the v1 fallback.
struct Kernels {
    gemm: &'static kernels::Variant,
    attention: &'static kernels::Variant,
    layernorm: &'static str,
    im2col: &'static str,
    vision_embed: &'static str,
    text_embed: &'static str,
    gather_rows: &'static str,
    scaled_cosine: &'static str,
    topk: &'static str,
    topk_merge: &'static str,
}

/// gemm_f16_v1, the fallback for shapes a faster variant cannot take (K % 8 ≠ 0, unaligned operands).
const GEMM_V1: &str = "gemm_f16_v1";
/// attention_f16_v1, the fallback for head dims v2 cannot take.
const ATTENTION_V1: &str = "attention_f16_v1";
/// attention_f16_v2, the fallback for sequences whose K and V do not fit v3's shared memory.
const ATTENTION_V2: &str = "attention_f16_v2";
/// The opt-in shared memory per block the simulator grants (an H100's, 227 KiB).
const SIM_MAX_SHARED: usize = 227 * 1024;

/// Dynamic shared memory of attention_f16_v3 for `seq` tokens at head dim `hd`: Q [64] and K, V [seq rounded up to
/// 32] rows of the padded head dim + 8 halves (kernels/attention.cu).
fn attention_v3_smem(seq: usize, hd: usize) -> usize {
    let d = match hd {
        0..=64 => 64,
        65..=80 => 80,
        81..=112 => 112,
        _ => 128,
    };
    (64 + 2 * seq.div_ceil(32) * 32) * (d + 8) * 2
}

/// Dynamic shared memory of gemm_f16_v2 and _v3 (G2_SMEM, G3_SMEM in kernels/gemm.cu).
const GEMM_V2_SMEM: usize = 3 * (128 + 128) * 40 * 2;
const GEMM_V3_SMEM: usize = 4 * (64 + 64) * 40 * 2;

/// The dynamic shared memory a kernel must be allowed above the default 48 KiB, on a device granting `max` per
/// block.
fn dynamic_smem_limit(symbol: &str, max: usize) -> Option<usize> {
    match symbol {
        "gemm_f16_v2" => Some(GEMM_V2_SMEM),
        // Whatever the device grants: the host checks each launch's need against it.
        "attention_f16_v3" => Some(max),
        _ => None,
    }
}

/// The launch of a pipelined gemm variant: (block tile, threads, dynamic shared memory), or `None` for v1.
fn pipelined_gemm(variant: &str) -> Option<(usize, u32, u32)> {
    match variant {
        "v2" => Some((128, 256, GEMM_V2_SMEM as u32)),
        "v3" => Some((64, 128, GEMM_V3_SMEM as u32)),
        _ => None,
    }
}

impl Kernels {
    /// Resolves every op's variant: `pick` chooses it (the env override or the default, or a profiling choice).
    fn select(pick: &dyn Fn(&kernels::Op) -> Result<&'static kernels::Variant>) -> Result<Kernels> {
        let f = |name: &str| -> Result<&'static kernels::Variant> {
            let op = kernels::op(name)
                .ok_or_else(|| Error::InvalidArgument(format!("no kernel op {name}")))?;
            pick(op)
        };
        Ok(Kernels {
            gemm: f("gemm")?,
            attention: f("attention")?,
            layernorm: f("layernorm")?.symbol,
            im2col: f("im2col")?.symbol,
            vision_embed: f("vision_embed")?.symbol,
            text_embed: f("text_embed")?.symbol,
            gather_rows: f("gather_rows")?.symbol,
            scaled_cosine: f("scaled_cosine")?.symbol,
            topk: f("topk")?.symbol,
            topk_merge: f("topk_merge")?.symbol,
        })
    }

    /// Every symbol a launch may use.
    fn symbols(&self) -> Vec<&'static str> {
        vec![
            self.gemm.symbol,
            GEMM_V1,
            self.attention.symbol,
            ATTENTION_V2,
            ATTENTION_V1,
            self.layernorm,
            self.im2col,
            self.vision_embed,
            self.text_embed,
            self.gather_rows,
            self.scaled_cosine,
            self.topk,
            self.topk_merge,
        ]
    }
}

/// Compiles (or reads from the cache) each module holding one of `symbols` once, and loads the functions.
fn load_functions(
    ctx: &Arc<CudaContext>,
    info: &DeviceInfo,
    symbols: &[&'static str],
) -> Result<HashMap<&'static str, CudaFunction>> {
    let arch = info.arch.as_str();
    let mut modules: HashMap<&str, Arc<CudaModule>> = HashMap::new();
    let mut functions = HashMap::new();
    for &symbol in symbols {
        if functions.contains_key(symbol) {
            continue;
        }
        let module_name = kernels::module_of(symbol)
            .ok_or_else(|| Error::InvalidArgument(format!("no kernel {symbol}")))?;
        let module = match modules.get(module_name) {
            Some(m) => m.clone(),
            None => {
                let cubin = kernels::cubin(module_name, arch)?;
                let m = ctx.load_module(Ptx::from_binary(cubin))?;
                modules.insert(module_name, m.clone());
                m
            }
        };
        let f = module.load_function(symbol)?;
        if let Some(bytes) = dynamic_smem_limit(symbol, info.max_shared_per_block) {
            // Above the default 48 KiB a kernel's dynamic shared memory must be allowed explicitly.
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )?;
        }
        functions.insert(symbol, f);
    }
    Ok(functions)
}

/// A retrieval gallery on the device: f32 rows and, unless they are unit length, their inverse norms.
pub struct CudaGallery {
    data: Mem,
    inv_norms: Option<Mem>,
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

/// CLIP on one CUDA device (or on the CPU simulator of one).
pub struct CudaBackend {
    exec: Exec,
    info: DeviceInfo,
    k: Kernels,
    /// Why CUDA graphs are off (`CLIPRT_CUDA_GRAPHS=0`, or a capture that failed), or `None` while they are used.
    graphs_off: std::sync::Mutex<Option<String>>,
    /// The thread recording a graph, if any: its launches go to the capture stream (see [`Exec::Cuda`]).
    capturing: std::sync::Mutex<Option<std::thread::ThreadId>>,
    /// [`Backend::image_chunk`]: `CLIPRT_IMAGE_CHUNK`, else [`IMAGE_CHUNK`].
    image_chunk: std::sync::atomic::AtomicUsize,
}

/// Images per forward chunk on a GPU. Only the first chunk's upload is exposed (the others hide behind the
/// previous chunk's compute), so smaller is better until the GEMMs starve: 128 images are 6,400 rows per GEMM at
/// ViT-B/32 (50 row tiles of v2 × 6 to 24 column tiles, several waves on 132 SMs) and 38 MB of fp16 pixels
/// (≈ 1.5 ms over PCIe 4). A reasoned first choice, not a measured one: `CLIPRT_IMAGE_CHUNK` overrides it.
pub const IMAGE_CHUNK: usize = 128;

fn image_chunk_env() -> usize {
    std::env::var("CLIPRT_IMAGE_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(IMAGE_CHUNK)
}

/// A recorded CUDA graph (the towers' forward at one batch size: launch-free replays).
pub struct Graph(cudarc::driver::CudaGraph);

// SAFETY: a graph is used by one thread at a time: it lives in a tower's scratch, which a forward takes out of its
// mutex for the whole call (CUDA requires serialized access to a graph, not a particular thread).
unsafe impl Send for Graph {}

/// `Some(reason)` when CUDA graphs are switched off by the environment.
fn graphs_env() -> Option<String> {
    (std::env::var("CLIPRT_CUDA_GRAPHS").as_deref() == Ok("0"))
        .then(|| "off by CLIPRT_CUDA_GRAPHS=0".to_string())
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
    let mut out = vec![f16::ZERO; data.len()];
    convert_to_f16(&mut out, data);
    out
}

/// `out[i] = f16(data[i])`, in parallel pieces.
fn convert_to_f16(out: &mut [f16], data: &[f32]) {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    out.par_chunks_mut(1 << 18)
        .zip(data.par_chunks(1 << 18))
        .for_each(|(o, i)| o.convert_from_f32_slice(i));
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
        let k = Kernels::select(&choose(choices))?;
        let functions = load_functions(&ctx, &info, &k.symbols())?;
        // SAFETY: everything of this backend runs on its one stream, in order, so cudarc's per-buffer events (for
        // multi-stream use) are not needed; they would also be recorded inside graph captures.
        unsafe { ctx.disable_event_tracking() };
        Ok(CudaBackend {
            // Not the legacy default stream: graph capture needs a real stream.
            exec: Exec::Cuda {
                stream: ctx.new_stream()?,
                functions,
                graph_stream: ctx.new_stream()?,
                copy_stream: ctx.new_stream()?,
                staging: std::sync::Mutex::new(Staging::default()),
            },
            info,
            k,
            graphs_off: std::sync::Mutex::new(graphs_env()),
            capturing: std::sync::Mutex::new(None),
            image_chunk: std::sync::atomic::AtomicUsize::new(image_chunk_env()),
        })
    }

    /// The same backend on the CPU simulator ([`sim`]): the kernels compiled by the host C++ compiler, run with
    /// one host thread per CUDA thread under AddressSanitizer, launched by exactly the host code a GPU gets. For
    /// checking kernels and launch logic without a GPU; slow, so for small shapes. Needs a C++20 compiler (`CXX`,
    /// default `c++`); without one, [`Error::DeviceUnavailable`].
    pub fn simulated(choices: &[(&str, &str)]) -> Result<CudaBackend> {
        CudaBackend::simulated_with(choices, sim::Sanitizer::Address)
    }

    /// [`CudaBackend::simulated`] with the simulator built with `sanitizer` ([`sim::Sanitizer::Thread`] finds
    /// data races between CUDA threads).
    pub fn simulated_with(
        choices: &[(&str, &str)],
        sanitizer: sim::Sanitizer,
    ) -> Result<CudaBackend> {
        let k = Kernels::select(&choose(choices))?;
        let sim = sim::Simulator::start_with(sanitizer)?;
        for symbol in k.symbols() {
            if let Some(bytes) = dynamic_smem_limit(symbol, SIM_MAX_SHARED) {
                sim.set_max_dynamic_smem(symbol, bytes as u32)?;
            }
        }
        Ok(CudaBackend {
            exec: Exec::Sim(sim),
            info: DeviceInfo {
                ordinal: 0,
                name: "cliprt CUDA simulator (CPU)".into(),
                compute_capability: (9, 0),
                arch: "sim".into(),
                memory_bytes: 0,
                // An H100's.
                max_shared_per_block: SIM_MAX_SHARED,
            },
            k,
            graphs_off: std::sync::Mutex::new(Some("the simulator runs launches eagerly".into())),
            capturing: std::sync::Mutex::new(None),
            image_chunk: std::sync::atomic::AtomicUsize::new(image_chunk_env()),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// `None` while the towers' forwards are recorded as CUDA graphs (batch-1 latency without launch overhead),
    /// else why not.
    pub fn graphs_off(&self) -> Option<String> {
        self.graphs_off.lock().ok().and_then(|g| g.clone())
    }

    /// Sets how many images one forward chunk takes (see [`Backend::image_chunk`]; at least 1).
    pub fn set_image_chunk(&self, images: usize) {
        self.image_chunk
            .store(images.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Switches CUDA graphs off for this backend (`why` is what [`CudaBackend::graphs_off`] reports).
    pub fn disable_graphs(&self, why: &str) {
        if let Ok(mut g) = self.graphs_off.lock() {
            *g = Some(why.to_string());
        }
    }

    /// The simulator's shared-memory statistics (bank conflicts of ldmatrix) since this backend started; an error
    /// on a real device.
    pub fn simulator_stats(&self) -> Result<sim::SimStats> {
        match &self.exec {
            Exec::Sim(sim) => sim.stats(),
            Exec::Cuda { .. } => Err(Error::InvalidArgument(
                "shared-memory statistics come from the CUDA simulator only".into(),
            )),
        }
    }

    /// Whether this backend runs on the CPU simulator.
    pub fn is_simulated(&self) -> bool {
        matches!(self.exec, Exec::Sim(_))
    }

    /// The CUDA stream (profiling and cuBLAS need a real device).
    pub(crate) fn stream(&self) -> Result<&Arc<CudaStream>> {
        match &self.exec {
            Exec::Cuda { stream, .. } => Ok(stream),
            Exec::Sim(_) => Err(Error::DeviceUnavailable(
                "the CUDA simulator has no stream to time or to hand to cuBLAS".into(),
            )),
        }
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
        match &self.exec {
            Exec::Cuda { stream, .. } => Ok(stream.synchronize()?),
            // Every simulated launch runs to completion before it returns.
            Exec::Sim(_) => Ok(()),
        }
    }

    /// `bytes` of zeroed device memory (at least one byte: CUDA cannot allocate zero).
    fn alloc_bytes(&self, bytes: usize) -> Result<Mem> {
        let bytes = bytes.max(1);
        Ok(match &self.exec {
            Exec::Cuda { stream, .. } => {
                let slice = stream.alloc_zeros::<u8>(bytes)?;
                let ptr = slice.device_ptr(stream).0;
                Mem {
                    inner: MemInner::Cuda(slice),
                    ptr,
                    ready: Some(stream.record_event(None)?),
                }
            }
            Exec::Sim(sim) => {
                let m = sim.alloc(bytes)?;
                Mem {
                    ptr: m.ptr(),
                    inner: MemInner::Sim(m),
                    ready: None,
                }
            }
        })
    }

    /// Device memory holding `data`.
    fn upload_bytes(&self, data: &[u8]) -> Result<Mem> {
        let mut m = self.alloc_bytes(data.len())?;
        self.write_bytes(&mut m, data)?;
        Ok(m)
    }

    /// Overwrites the first `data.len()` bytes of `m`.
    fn write_bytes(&self, m: &mut Mem, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match (&self.exec, &mut m.inner) {
            (Exec::Cuda { stream, .. }, MemInner::Cuda(slice)) => {
                let mut dst = slice.slice_mut(0..data.len());
                Ok(stream.memcpy_htod(data, &mut dst)?)
            }
            (Exec::Sim(sim), MemInner::Sim(mem)) => sim.write(mem, 0, data),
            _ => Err(Error::InvalidArgument("memory of another device".into())),
        }
    }

    /// The first `len` bytes of `m`.
    fn download_bytes(&self, m: &Mem, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        match (&self.exec, &m.inner) {
            (Exec::Cuda { stream, .. }, MemInner::Cuda(slice)) => {
                Ok(stream.clone_dtoh(&slice.slice(0..len))?)
            }
            (Exec::Sim(sim), MemInner::Sim(mem)) => sim.read(mem, 0, len),
            _ => Err(Error::InvalidArgument("memory of another device".into())),
        }
    }

    fn download_pod<T: bytemuck::Pod>(&self, m: &Mem, count: usize) -> Result<Vec<T>> {
        let bytes = self.download_bytes(m, count * std::mem::size_of::<T>())?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Launches `symbol` with `args` on the stream (or runs it on the simulator).
    fn launch(&self, symbol: &'static str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        match &self.exec {
            Exec::Cuda {
                stream,
                functions,
                graph_stream,
                ..
            } => {
                // The recording thread's launches go into its graph.
                let me = std::thread::current().id();
                let recording =
                    *self.capturing.lock().unwrap_or_else(|p| p.into_inner()) == Some(me);
                let stream = if recording { graph_stream } else { stream };
                let f = functions
                    .get(symbol)
                    .ok_or_else(|| Error::Cuda(format!("kernel {symbol} is not loaded")))?;
                let null: u64 = 0;
                let mut l = stream.launch_builder(f);
                for a in args {
                    match a {
                        Arg::Mem(Mem {
                            inner: MemInner::Cuda(slice),
                            ..
                        }) => l.arg(slice),
                        Arg::Mem(_) => {
                            return Err(Error::InvalidArgument("memory of another device".into()))
                        }
                        Arg::I32(v) => l.arg(v),
                        Arg::F32(v) => l.arg(v),
                        Arg::Null => l.arg(&null),
                    };
                }
                // SAFETY: every call site passes its kernel's parameter list in order with buffers of the sizes
                // the kernel reads and writes (shapes are checked by the backend:: wrappers and here); the
                // simulator checks each call site's argument kinds against the kernel's C++ signature in CI.
                unsafe { l.launch(cfg) }?;
                Ok(())
            }
            Exec::Sim(sim) => {
                let args: Vec<sim::SimArg> = args
                    .iter()
                    .map(|a| match a {
                        Arg::Mem(m) => sim::SimArg::Ptr(m.ptr),
                        Arg::I32(v) => sim::SimArg::I32(*v),
                        Arg::F32(v) => sim::SimArg::F32(*v),
                        Arg::Null => sim::SimArg::Ptr(0),
                    })
                    .collect();
                sim.launch(
                    symbol,
                    cfg.grid_dim,
                    cfg.block_dim,
                    cfg.shared_mem_bytes,
                    &args,
                )
            }
        }
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
        let da = self.upload_bytes(bytemuck::cast_slice(a))?;
        let db = self.upload_bytes(bytemuck::cast_slice(b))?;
        let out = self.alloc_bytes(4 * outputs)?;
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
        // a and b hold rows·dim values, out rows_a·rows_b.
        self.launch(
            self.k.scaled_cosine,
            cfg,
            &[
                Arg::Mem(&out),
                Arg::Mem(&da),
                Arg::Mem(&db),
                Arg::I32(ra),
                Arg::I32(rb),
                Arg::I32(d),
                Arg::F32(scale),
            ],
        )?;
        self.download_pod(&out, outputs)
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
            Some(self.upload_bytes(bytemuck::cast_slice(&inv))?)
        };
        Ok(CudaGallery {
            data: self.upload_bytes(bytemuck::cast_slice(data))?,
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
        let q_dev = self.upload_bytes(bytemuck::cast_slice(&packed))?;
        let cand_s = self.alloc_bytes(4 * nq * n_cand)?;
        let cand_i = self.alloc_bytes(4 * nq * n_cand)?;
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(nq).map_err(|_| Error::Shape("too many queries".into()))?,
                slices as u32,
                1,
            ),
            block_dim: (256, 1, 1),
            // The query, in dynamic shared memory.
            shared_mem_bytes: (4 * dim) as u32,
        };
        // Buffers hold nq·dim queries, rows·dim gallery values and nq·slices·k candidates; a null inverse-norm
        // pointer tells the kernel the gallery is normalized.
        self.launch(
            self.k.topk,
            cfg,
            &[
                Arg::Mem(&cand_s),
                Arg::Mem(&cand_i),
                Arg::Mem(&q_dev),
                Arg::Mem(&g.data),
                g.inv_norms.as_ref().map_or(Arg::Null, Arg::Mem),
                Arg::I32(rows_i),
                Arg::I32(dim_i),
                Arg::I32(ki),
                Arg::I32(per_i),
            ],
        )?;
        let out_s = self.alloc_bytes(4 * nq * k)?;
        let out_i = self.alloc_bytes(4 * nq * k)?;
        let n_i = int(n_cand, "candidates")?;
        let cfg = LaunchConfig {
            grid_dim: (nq as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // Candidates hold nq·n_cand pairs, outputs nq·k.
        self.launch(
            self.k.topk_merge,
            cfg,
            &[
                Arg::Mem(&out_s),
                Arg::Mem(&out_i),
                Arg::Mem(&cand_s),
                Arg::Mem(&cand_i),
                Arg::I32(n_i),
                Arg::I32(ki),
            ],
        )?;
        let scores: Vec<f32> = self.download_pod(&out_s, nq * k)?;
        let indices: Vec<u32> = self.download_pod(&out_i, nq * k)?;
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
}

/// The pick function of [`Kernels::select`] for explicit `(op, variant)` choices over the defaults/overrides.
fn choose<'a>(
    choices: &'a [(&'a str, &'a str)],
) -> impl Fn(&kernels::Op) -> Result<&'static kernels::Variant> + 'a {
    move |op: &kernels::Op| match choices.iter().find(|(o, _)| *o == op.name) {
        Some((_, v)) => op.pick(Some(v)),
        None => op.selected(),
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Linear = CudaLinear;
    type Index = Mem;
    type Graph = Graph;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf> {
        Ok(CudaBuf {
            data: self.alloc_bytes(2 * len)?,
            len,
        })
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        Ok(CudaBuf {
            data: self.upload_bytes(bytemuck::cast_slice(&to_f16(data)))?,
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
        self.write_bytes(&mut buf.data, bytemuck::cast_slice(&to_f16(data)))
    }

    fn write_input(&self, buf: &mut CudaBuf, data: &[f32]) -> Result<()> {
        let (
            Exec::Cuda {
                stream,
                copy_stream,
                staging,
                ..
            },
            MemInner::Cuda(dst),
        ) = (&self.exec, &mut buf.data.inner)
        else {
            return self.write(buf, data);
        };
        // After the buffer's allocation and zeroing on the main stream (not after the main stream's later work,
        // which the copy is meant to overlap).
        if let Some(ready) = &buf.data.ready {
            copy_stream.wait(ready)?;
        }
        if data.len() > buf.len {
            return Err(Error::Shape(format!(
                "writing {} values into a buffer of {}",
                data.len(),
                buf.len
            )));
        }
        let mut st = staging
            .lock()
            .map_err(|_| Error::Cuda("staging buffers poisoned".into()))?;
        if st.buffers.is_empty() {
            for _ in 0..2 {
                // SAFETY: pinned memory starts uninitialized; every piece is written before it is copied.
                let host = unsafe { stream.context().alloc_pinned::<f16>(STAGE_HALVES) }?;
                st.buffers.push((host, None));
            }
        }
        for (i, piece) in data.chunks(STAGE_HALVES).enumerate() {
            let b = st.next;
            st.next = (b + 1) % st.buffers.len();
            let (host, copied) = &mut st.buffers[b];
            // The previous copy out of this buffer must be done before it is overwritten.
            if let Some(e) = copied.take() {
                e.synchronize()?;
            }
            let host = &mut host.as_mut_slice()?[..piece.len()];
            convert_to_f16(host, piece);
            let at = 2 * i * STAGE_HALVES;
            let mut dst = dst.slice_mut(at..at + 2 * piece.len());
            // An asynchronous DMA from page-locked memory: the host goes on converting the next piece.
            copy_stream.memcpy_htod(bytemuck::cast_slice::<f16, u8>(host), &mut dst)?;
            *copied = Some(copy_stream.record_event(None)?);
        }
        // Launches queued from now on run after the upload.
        stream.join(copy_stream)?;
        Ok(())
    }

    fn image_chunk(&self) -> usize {
        self.image_chunk.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        let host: Vec<f16> = self.download_pod(&buf.data, buf.len)?;
        Ok(host.iter().map(|v| v.to_f32()).collect())
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
        // 16-byte cp.async chunks need K % 8 == 0 and 16-byte aligned operands (CUDA allocations are; checked
        // rather than assumed).
        let vec =
            s.k.is_multiple_of(8) && x.data.ptr.is_multiple_of(16) && w.w.ptr.is_multiple_of(16);
        // A pipelined variant (v2, v3) where it can run, else v1 (the selected variant or the fallback). The
        // pipelined ones have no `vec` argument: they always copy 16-byte chunks.
        let pipelined = pipelined_gemm(self.k.gemm.name).filter(|_| vec);
        let (symbol, tile, threads, smem) = match pipelined {
            Some((tile, threads, smem)) => (self.k.gemm.symbol, tile, threads, smem),
            None => (GEMM_V1, 64, 128, 0),
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
        // The bias pointer is read only when has_bias != 0.
        let bias = w.bias.as_ref().map_or(Arg::Null, Arg::Mem);
        let mut args = vec![
            Arg::Mem(&out.data),
            Arg::Mem(&x.data),
            Arg::Mem(&w.w),
            bias,
            Arg::I32(m),
            Arg::I32(n),
            Arg::I32(k),
            Arg::I32(has_bias),
            Arg::I32(epilogue_code(ep)),
        ];
        if pipelined.is_none() {
            args.push(Arg::I32(i32::from(vec)));
        }
        self.launch(symbol, cfg, &args)
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
        self.launch(
            self.k.layernorm,
            cfg,
            &[
                Arg::Mem(&out.data),
                Arg::Mem(&x.data),
                Arg::Mem(&gamma.data),
                Arg::Mem(&beta.data),
                Arg::I32(r),
                Arg::I32(d),
                Arg::F32(eps),
            ],
        )
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
        // CLIP scales queries by head_dim^−½ before the product.
        let scale = (s.head_dim as f32).sqrt().recip();
        // v2 and v3 copy 16-byte (8-half) chunks of each head: head dims that are a multiple of 8 (all of CLIP's);
        // v3 also needs the sequence's K and V to fit in shared memory, else v2 runs.
        let tensor_cores = s.head_dim.is_multiple_of(8);
        let v3_smem = attention_v3_smem(s.seq, s.head_dim);
        let (symbol, queries_per_block, threads, smem) = match self.k.attention.name {
            "v3" if tensor_cores && v3_smem <= self.info.max_shared_per_block => {
                (self.k.attention.symbol, 64, 128, v3_smem as u32)
            }
            "v2" | "v3" if tensor_cores => (ATTENTION_V2, 64, 128, 0),
            _ => (ATTENTION_V1, 8, 256, 0),
        };
        let cfg = LaunchConfig {
            grid_dim: (
                s.seq.div_ceil(queries_per_block) as u32,
                s.heads as u32,
                s.batch as u32,
            ),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        // Every attention variant takes the same list.
        self.launch(
            symbol,
            cfg,
            &[
                Arg::Mem(&out.data),
                Arg::Mem(&qkv.data),
                Arg::I32(seq),
                Arg::I32(heads),
                Arg::I32(hd),
                Arg::I32(i32::from(s.causal)),
                Arg::F32(scale),
            ],
        )
    }

    fn im2col_unchecked(&self, out: &mut CudaBuf, pixels: &CudaBuf, s: PatchShape) -> Result<()> {
        let total = s.batch * s.patches() * s.patch_dim();
        let (b, c) = (int(s.batch, "batch")?, int(s.channels, "channels")?);
        let (size, p) = (int(s.image_size, "image size")?, int(s.patch, "patch")?);
        self.launch(
            self.k.im2col,
            elementwise(total),
            &[
                Arg::Mem(&out.data),
                Arg::Mem(&pixels.data),
                Arg::I32(b),
                Arg::I32(c),
                Arg::I32(size),
                Arg::I32(p),
            ],
        )
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
        self.launch(
            self.k.vision_embed,
            elementwise(batch * seq * dim),
            &[
                Arg::Mem(&out.data),
                Arg::Mem(&patches.data),
                Arg::Mem(&class.data),
                Arg::Mem(&pos.data),
                Arg::I32(b),
                Arg::I32(s),
                Arg::I32(d),
            ],
        )
    }

    fn text_embed_unchecked(
        &self,
        out: &mut CudaBuf,
        ids: &Mem,
        n: usize,
        token: &CudaBuf,
        pos: &CudaBuf,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        // ids were checked against the vocabulary by backend::text_embed / write_rows' callers.
        let (rows, s, d) = (int(n, "rows")?, int(seq, "seq")?, int(dim, "dim")?);
        self.launch(
            self.k.text_embed,
            elementwise(n * dim),
            &[
                Arg::Mem(&out.data),
                Arg::Mem(ids),
                Arg::Mem(&token.data),
                Arg::Mem(&pos.data),
                Arg::I32(rows),
                Arg::I32(s),
                Arg::I32(d),
            ],
        )
    }

    fn upload_index(&self, rows: &[u32]) -> Result<Mem> {
        self.upload_bytes(bytemuck::cast_slice(rows))
    }

    fn write_index(&self, index: &mut Mem, rows: &[u32]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(rows);
        if bytes.len() > index.bytes() {
            return Err(Error::Shape(format!(
                "writing {} indices into an index of {}",
                rows.len(),
                index.bytes() / 4
            )));
        }
        self.write_bytes(index, bytes)
    }

    fn gather_rows_unchecked(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        rows: &Mem,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        // rows were checked by backend::gather_rows.
        let (ni, d) = (int(n, "rows")?, int(dim, "dim")?);
        self.launch(
            self.k.gather_rows,
            elementwise(n * dim),
            &[
                Arg::Mem(&out.data),
                Arg::Mem(&x.data),
                Arg::Mem(rows),
                Arg::I32(ni),
                Arg::I32(d),
            ],
        )
    }

    fn record(&self, enqueue: &mut dyn FnMut() -> Result<()>) -> Result<Option<Graph>> {
        let Exec::Cuda {
            graph_stream: stream,
            ..
        } = &self.exec
        else {
            // The simulator runs every launch as it comes.
            return Ok(None);
        };
        let mut off = self
            .graphs_off
            .lock()
            .map_err(|_| Error::Cuda("graph state poisoned".into()))?;
        if off.is_some() {
            return Ok(None);
        }
        // Thread-local mode: only this thread's unsafe calls (none, between begin and end) would break it.
        stream.begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )?;
        let ran = enqueue();
        let ended = stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        match (ran, ended) {
            (Ok(()), Ok(Some(g))) => Ok(Some(Graph(g))),
            // Whatever broke the capture (an operation capture does not support, a driver without graphs), the
            // work runs eagerly from now on; a genuine error recurs there and is reported then.
            (ran, ended) => {
                let why = match (ran, ended) {
                    (Err(e), _) => e.to_string(),
                    (_, Err(e)) => e.to_string(),
                    _ => "the capture was invalidated".to_string(),
                };
                *off = Some(why);
                Ok(None)
            }
        }
    }

    fn replay(&self, graph: &Graph) -> Result<()> {
        let Exec::Cuda {
            stream,
            graph_stream,
            ..
        } = &self.exec
        else {
            return Err(Error::Cuda("a graph replay without a CUDA device".into()));
        };
        // After the main stream's work so far (the uploaded inputs), before what follows (the download).
        graph_stream.join(stream)?;
        graph.0.launch()?;
        stream.join(graph_stream)?;
        Ok(())
    }
}
