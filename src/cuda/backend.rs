//! The CUDA backend: CLIP's ops as launches of the registry's kernels (fp16 storage, f32 accumulation), and the
//! device, memory and launch state they run on.

use half::f16;

use super::device::{peak_fp16_gflops, DeviceInfo};
use super::kernels::{epilogue_code, Work, MAX_HEAD_DIM};
use super::memory::{to_f16, CudaBuf, CudaLinear, Mem};
use super::runtime::{int, Arg, Graph, Runtime};
use super::sim;
use crate::backend::{
    check_linear, AttnShape, Backend, BackendInfo, Epilogue, GemmShape, PatchShape,
};
use crate::config::ClipConfig;
use crate::cpu::Precision;
use crate::device::Device;
use crate::error::{Error, Result};

/// CLIP on one CUDA device (or on the CPU simulator of one).
pub struct CudaBackend {
    pub(crate) rt: Runtime,
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

impl CudaBackend {
    /// Opens device `ordinal` and loads every kernel (compiled for its arch by NVRTC, or from the disk cache): each
    /// op's default variant, or its `CLIPRT_KERNEL_<OP>` override.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        CudaBackend::with_variants(ordinal, &[])
    }

    /// [`CudaBackend::new`] with explicit `(op, variant)` choices (tests and `cliprt profile` compare variants
    /// side by side); ops not named take their default or override.
    pub fn with_variants(ordinal: usize, choices: &[(&str, &str)]) -> Result<CudaBackend> {
        Ok(CudaBackend::on(Runtime::open(ordinal, choices)?))
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
        Ok(CudaBackend::on(Runtime::simulated(choices, sanitizer)?))
    }

    fn on(rt: Runtime) -> CudaBackend {
        CudaBackend {
            rt,
            image_chunk: std::sync::atomic::AtomicUsize::new(image_chunk_env()),
        }
    }

    /// What the driver says about the device (the trait's [`Backend::info`] is the report for benches).
    pub fn device_info(&self) -> &DeviceInfo {
        &self.rt.info
    }

    /// `None` while the towers' forwards are recorded as CUDA graphs (batch-1 latency without launch overhead),
    /// else why not.
    pub fn graphs_off(&self) -> Option<String> {
        self.rt.graphs_off()
    }

    /// Sets how many images one forward chunk takes (see [`Backend::image_chunk`]; at least 1).
    pub fn set_image_chunk(&self, images: usize) {
        self.image_chunk
            .store(images.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Switches CUDA graphs off for this backend (`why` is what [`CudaBackend::graphs_off`] reports).
    pub fn disable_graphs(&self, why: &str) {
        self.rt.disable_graphs(why)
    }

    /// The simulator's shared-memory statistics (bank conflicts of ldmatrix) since this backend started; an error
    /// on a real device.
    pub fn simulator_stats(&self) -> Result<sim::SimStats> {
        self.rt.simulator_stats()
    }

    /// Whether this backend runs on the CPU simulator.
    pub fn is_simulated(&self) -> bool {
        self.rt.is_simulated()
    }

    /// The CUDA stream (profiling and cuBLAS need a real device).
    pub(crate) fn stream(&self) -> Result<&std::sync::Arc<cudarc::driver::CudaStream>> {
        self.rt.stream()
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.rt.synchronize()
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
    fn info(&self) -> BackendInfo {
        let graphs = match self.rt.graphs_off() {
            None => "graphs on".to_string(),
            Some(why) => format!("graphs off: {why}"),
        };
        BackendInfo {
            device: format!(
                "cuda:{} {} ({graphs})",
                self.rt.info.ordinal, self.rt.info.name
            ),
            engine: "cuda-f16".into(),
            reason: String::new(),
            isa: self.rt.info.arch.clone(),
            arithmetic: "f16",
        }
    }
    fn precision(&self) -> Precision {
        Precision::F16
    }
    fn peak_gflops(&self, _threads: usize) -> Option<f64> {
        peak_fp16_gflops(&self.rt.info.name)
    }
    /// Checked at load, so an unsupported model fails before any upload.
    fn supports(&self, config: &ClipConfig) -> Result<()> {
        for (tower, e) in [
            ("text", &config.text.encoder),
            ("vision", &config.vision.encoder),
        ] {
            if e.head_dim() > MAX_HEAD_DIM {
                return Err(Error::UnsupportedModel(format!(
                    "{tower} head dim {} (the CUDA attention kernels handle up to {MAX_HEAD_DIM})",
                    e.head_dim()
                )));
            }
        }
        Ok(())
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf> {
        Ok(CudaBuf {
            data: self.rt.alloc_bytes(2 * len)?,
            len,
        })
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        Ok(CudaBuf {
            data: self.rt.upload_bytes(bytemuck::cast_slice(&to_f16(data)))?,
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
        self.rt
            .write_bytes(&mut buf.data, bytemuck::cast_slice(&to_f16(data)))
    }

    fn write_input(&self, buf: &mut CudaBuf, data: &[f32]) -> Result<()> {
        self.rt.write_input_staged(buf, data)
    }

    fn image_chunk(&self) -> usize {
        self.image_chunk.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        let host: Vec<f16> = self.rt.download_pod(&buf.data, buf.len)?;
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
        // rather than assumed). The pipelined variants take only such shapes; the registry falls back to v1.
        let aligned =
            s.k.is_multiple_of(8) && x.data.ptr.is_multiple_of(16) && w.w.ptr.is_multiple_of(16);
        // The bias pointer is read only when has_bias != 0.
        let bias = w.bias.as_ref().map_or(Arg::Null, Arg::Mem);
        self.rt.launch_op(
            "gemm",
            Work::Gemm { s, aligned },
            &[
                Arg::Mem(&out.data),
                Arg::Mem(&x.data),
                Arg::Mem(&w.w),
                bias,
                Arg::I32(m),
                Arg::I32(n),
                Arg::I32(k),
                Arg::I32(has_bias),
                Arg::I32(epilogue_code(ep)),
                Arg::I32(i32::from(aligned)),
            ],
        )
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
        self.rt.launch_op(
            "layernorm",
            Work::Rows { rows },
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

    fn attention_unchecked(
        &self,
        out: &mut CudaBuf,
        qkv: &CudaBuf,
        s: AttnShape,
        key_lens: Option<&Mem>,
    ) -> Result<()> {
        let (seq, heads, hd) = (
            int(s.seq, "seq")?,
            int(s.heads, "heads")?,
            int(s.head_dim, "head_dim")?,
        );
        // CLIP scales queries by head_dim^−½ before the product.
        let scale = (s.head_dim as f32).sqrt().recip();
        self.rt.launch_op(
            "attention",
            Work::Attention(s),
            &[
                Arg::Mem(&out.data),
                Arg::Mem(&qkv.data),
                // A null pointer: every key of the sequence is valid.
                key_lens.map_or(Arg::Null, Arg::Mem),
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
        self.rt.launch_op(
            "im2col",
            Work::Elements { total },
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
        class: Option<&CudaBuf>,
        pos: &CudaBuf,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()> {
        let (b, s, d) = (int(batch, "batch")?, int(seq, "seq")?, int(dim, "dim")?);
        self.rt.launch_op(
            "vision_embed",
            Work::Elements {
                total: batch * seq * dim,
            },
            &[
                Arg::Mem(&out.data),
                Arg::Mem(&patches.data),
                // A null class pointer: no class token.
                class.map_or(Arg::Null, |c| Arg::Mem(&c.data)),
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
        self.rt.launch_op(
            "text_embed",
            Work::Elements { total: n * dim },
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
        self.rt.upload_bytes(bytemuck::cast_slice(rows))
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
        self.rt.write_bytes(index, bytes)
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
        self.rt.launch_op(
            "gather_rows",
            Work::Elements { total: n * dim },
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
        self.rt.record_graph(enqueue)
    }

    fn replay(&self, graph: &Graph) -> Result<()> {
        self.rt.replay_graph(graph)
    }
}

/// The CUDA backend for `device` (a GPU or the simulator) with explicit `(op, variant)` kernel choices: the one
/// place a [`Device`] becomes a CUDA backend (the engine, `cliprt profile`).
pub fn backend_for(device: Device, choices: &[(&str, &str)]) -> Result<CudaBackend> {
    match device {
        Device::Cuda(n) => CudaBackend::with_variants(n, choices),
        Device::CudaSim => CudaBackend::simulated(choices),
        other => Err(Error::InvalidArgument(format!(
            "{other:?} is not a CUDA device (cuda, cuda:N, cuda-sim)"
        ))),
    }
}
