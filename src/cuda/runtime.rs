//! The CUDA runtime layer under the backend: opening a device or the simulator, device memory and copies, and
//! launching kernels: the argument list, where launches go (a GPU stream or the simulator), the selected variant of
//! every op resolved through the registry's launch rules and fallbacks (src/cuda/kernels.rs), loading the compiled
//! functions, and recording launches into CUDA graphs.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::f16;

use super::device::{context, describe, DeviceInfo};
use super::kernels::{self, Limits, SmemOptIn, Variant, Work};
use super::memory::{convert_to_f16, to_f16, CudaBuf, Mem, MemInner, Staging, STAGE_HALVES};
use super::{compile, sim};
use crate::error::{Error, Result};

/// A kernel argument.
#[derive(Clone, Copy)]
pub(crate) enum Arg<'a> {
    Mem(&'a Mem),
    I32(i32),
    F32(f32),
    /// A null pointer (an optional input the kernel skips).
    Null,
}

/// Where the kernels run.
pub(crate) enum Exec {
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

/// The variant in force for every op: its default, its `CLIPRT_KERNEL_<OP>` override, or an explicit choice.
pub(crate) struct Kernels(HashMap<&'static str, &'static Variant>);

impl Kernels {
    /// Resolves every op's variant; `choices` are `(op, variant)` pairs over the defaults and overrides.
    pub(crate) fn select(choices: &[(&str, &str)]) -> Result<Kernels> {
        if let Some((op, _)) = choices.iter().find(|(o, _)| kernels::op(o).is_none()) {
            return Err(Error::InvalidArgument(format!("no kernel op {op:?}")));
        }
        kernels::OPS
            .iter()
            .map(|op| {
                let v = match choices.iter().find(|(o, _)| *o == op.name) {
                    Some((_, v)) => op.pick(Some(v))?,
                    None => op.selected()?,
                };
                Ok((op.name, v))
            })
            .collect::<Result<_>>()
            .map(Kernels)
    }

    /// The op named `op` and its selected variant.
    pub(crate) fn get(&self, op: &str) -> Result<(&'static kernels::Op, &'static Variant)> {
        let o = kernels::op(op)
            .ok_or_else(|| Error::InvalidArgument(format!("no kernel op {op:?}")))?;
        let v = self
            .0
            .get(o.name)
            .ok_or_else(|| Error::InvalidArgument(format!("no variant of {op}")))?;
        Ok((o, v))
    }

    /// Every variant a launch may use: each selected one and its fallbacks.
    pub(crate) fn reachable(&self) -> Vec<&'static Variant> {
        let mut out: Vec<&'static Variant> = Vec::new();
        for op in kernels::OPS {
            if let Some(&v) = self.0.get(op.name) {
                for c in op.chain(v) {
                    if !out.iter().any(|o| o.symbol == c.symbol) {
                        out.push(c);
                    }
                }
            }
        }
        out
    }
}

/// The dynamic shared memory `v` must be allowed above the default 48 KiB, on a device granting `max` per block.
pub(crate) fn smem_opt_in(v: &Variant, max: usize) -> Option<usize> {
    match v.smem_opt_in {
        SmemOptIn::None => None,
        SmemOptIn::Bytes(n) => Some(n),
        SmemOptIn::DeviceMax => Some(max),
    }
}

/// Compiles (or reads from the cache) each module holding one of `variants` once, and loads the functions.
pub(crate) fn load_functions(
    ctx: &Arc<CudaContext>,
    info: &DeviceInfo,
    variants: &[&'static Variant],
) -> Result<HashMap<&'static str, CudaFunction>> {
    let arch = info.arch.as_str();
    let mut modules: HashMap<&str, Arc<CudaModule>> = HashMap::new();
    let mut functions = HashMap::new();
    for v in variants {
        let symbol = v.symbol;
        if functions.contains_key(symbol) {
            continue;
        }
        let module_name = kernels::module_of(symbol)
            .ok_or_else(|| Error::InvalidArgument(format!("no kernel {symbol}")))?;
        let module = match modules.get(module_name) {
            Some(m) => m.clone(),
            None => {
                let cubin = compile::cubin(module_name, arch)?;
                let m = ctx.load_module(Ptx::from_binary(cubin))?;
                modules.insert(module_name, m.clone());
                m
            }
        };
        let f = module.load_function(symbol)?;
        if let Some(bytes) = smem_opt_in(v, info.max_shared_per_block) {
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

/// A recorded CUDA graph (the towers' forward at one batch size: launch-free replays).
pub struct Graph(cudarc::driver::CudaGraph);

// SAFETY: a graph is used by one thread at a time: it lives in a tower's scratch, which a forward takes out of its
// mutex for the whole call (CUDA requires serialized access to a graph, not a particular thread).
unsafe impl Send for Graph {}

/// `Some(reason)` when CUDA graphs are switched off by the environment.
pub(crate) fn graphs_env() -> Option<String> {
    (std::env::var("CLIPRT_CUDA_GRAPHS").as_deref() == Ok("0"))
        .then(|| "off by CLIPRT_CUDA_GRAPHS=0".to_string())
}

/// `v` as a kernel's 32-bit int argument.
pub(crate) fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Shape(format!(
            "{what} = {v} exceeds the kernels' 32-bit index range"
        ))
    })
}

/// Where and how a CUDA backend's kernels run: the device (or simulator), its description, the selected kernel
/// variants, and the graph-capture state.
pub(crate) struct Runtime {
    pub(crate) exec: Exec,
    pub(crate) info: DeviceInfo,
    pub(crate) k: Kernels,
    /// Why CUDA graphs are off (`CLIPRT_CUDA_GRAPHS=0`, or a capture that failed), or `None` while they are used.
    pub(crate) graphs_off: std::sync::Mutex<Option<String>>,
    /// The thread recording a graph, if any: its launches go to the capture stream (see [`Exec::Cuda`]).
    pub(crate) capturing: std::sync::Mutex<Option<std::thread::ThreadId>>,
}

/// The opt-in shared memory per block the simulator grants (an H100's, 227 KiB).
const SIM_MAX_SHARED: usize = 227 * 1024;

impl Runtime {
    /// Opens device `ordinal` and loads the kernels of `choices` (over the defaults and overrides).
    pub(crate) fn open(ordinal: usize, choices: &[(&str, &str)]) -> Result<Runtime> {
        let ctx = context(ordinal)?;
        let info = describe(&ctx, ordinal)?;
        let k = Kernels::select(choices)?;
        let functions = load_functions(&ctx, &info, &k.reachable())?;
        // SAFETY: everything of this backend runs on its one stream, in order, so cudarc's per-buffer events (for
        // multi-stream use) are not needed; they would also be recorded inside graph captures.
        unsafe { ctx.disable_event_tracking() };
        Ok(Runtime {
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
        })
    }

    /// The simulator built with `sanitizer`, with the kernels of `choices`.
    pub(crate) fn simulated(
        choices: &[(&str, &str)],
        sanitizer: sim::Sanitizer,
    ) -> Result<Runtime> {
        let k = Kernels::select(choices)?;
        let sim = sim::Simulator::start_with(sanitizer)?;
        for v in k.reachable() {
            if let Some(bytes) = smem_opt_in(v, SIM_MAX_SHARED) {
                sim.set_max_dynamic_smem(v.symbol, bytes as u32)?;
            }
        }
        Ok(Runtime {
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
        })
    }

    /// `None` while the towers' forwards are recorded as CUDA graphs (batch-1 latency without launch overhead),
    /// else why not.
    pub(crate) fn graphs_off(&self) -> Option<String> {
        self.graphs_off.lock().ok().and_then(|g| g.clone())
    }

    /// Switches CUDA graphs off for this backend (`why` is what [`CudaBackend::graphs_off`] reports).
    pub(crate) fn disable_graphs(&self, why: &str) {
        if let Ok(mut g) = self.graphs_off.lock() {
            *g = Some(why.to_string());
        }
    }

    /// The simulator's shared-memory statistics (bank conflicts of ldmatrix) since this backend started; an error
    /// on a real device.
    pub(crate) fn simulator_stats(&self) -> Result<sim::SimStats> {
        match &self.exec {
            Exec::Sim(sim) => sim.stats(),
            Exec::Cuda { .. } => Err(Error::InvalidArgument(
                "shared-memory statistics come from the CUDA simulator only".into(),
            )),
        }
    }

    /// Whether this backend runs on the CPU simulator.
    pub(crate) fn is_simulated(&self) -> bool {
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

    /// Waits for all queued work.
    pub(crate) fn synchronize(&self) -> Result<()> {
        match &self.exec {
            Exec::Cuda { stream, .. } => Ok(stream.synchronize()?),
            // Every simulated launch runs to completion before it returns.
            Exec::Sim(_) => Ok(()),
        }
    }
}

impl Runtime {
    /// Launches `op`'s selected variant for `work` with `args`: the registry's launch rule gives the geometry, and
    /// where the variant cannot take the shape its fallback runs (every variant of an op takes the same `args`).
    pub(crate) fn launch_op(&self, op: &str, work: Work, args: &[Arg]) -> Result<()> {
        let (op, start) = self.k.get(op)?;
        let limits = Limits {
            max_shared: self.info.max_shared_per_block,
        };
        let (v, l) = op.resolve(start, &work, &limits)?;
        let cfg = LaunchConfig {
            grid_dim: l.grid,
            block_dim: (l.block, 1, 1),
            shared_mem_bytes: l.smem,
        };
        self.launch(v.symbol, cfg, args)
    }

    /// Launches `symbol` with `args` on the stream (or runs it on the simulator).
    pub(crate) fn launch(
        &self,
        symbol: &'static str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
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

    /// [`Backend::record`]: captures `enqueue`'s launches on the graph stream, or `None` where graphs are off.
    pub(crate) fn record_graph(
        &self,
        enqueue: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<Graph>> {
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

    /// [`Backend::replay`].
    pub(crate) fn replay_graph(&self, graph: &Graph) -> Result<()> {
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

    /// `bytes` of zeroed device memory (at least one byte: CUDA cannot allocate zero).
    pub(crate) fn alloc_bytes(&self, bytes: usize) -> Result<Mem> {
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
    pub(crate) fn upload_bytes(&self, data: &[u8]) -> Result<Mem> {
        let mut m = self.alloc_bytes(data.len())?;
        self.write_bytes(&mut m, data)?;
        Ok(m)
    }

    /// Overwrites the first `data.len()` bytes of `m`.
    pub(crate) fn write_bytes(&self, m: &mut Mem, data: &[u8]) -> Result<()> {
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
    pub(crate) fn download_bytes(&self, m: &Mem, len: usize) -> Result<Vec<u8>> {
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

    pub(crate) fn download_pod<T: bytemuck::Pod>(&self, m: &Mem, count: usize) -> Result<Vec<T>> {
        let bytes = self.download_bytes(m, count * std::mem::size_of::<T>())?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// [`crate::backend::Backend::write_input`] on a GPU: `data` converted into pinned staging buffers and copied
    /// asynchronously on the copy stream, ordered before the launches that follow.
    pub(crate) fn write_input_staged(&self, buf: &mut CudaBuf, data: &[f32]) -> Result<()> {
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
            if data.len() > buf.len {
                return Err(Error::Shape(format!(
                    "writing {} values into a buffer of {}",
                    data.len(),
                    buf.len
                )));
            }
            return self.write_bytes(&mut buf.data, bytemuck::cast_slice(&to_f16(data)));
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
}
