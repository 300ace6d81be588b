//! The backend contract: the handful of operations a CLIP forward pass needs, each writing into a caller-owned
//! buffer. The model code (src/model) is written once against this trait; `CpuBackend` runs it fast, and
//! `ReferenceBackend` runs it with plain loops and f64 accumulation as the test oracle.
//!
//! Shapes are validated here, once, by the free functions (`gemm`, `layernorm`, …) that the model calls; a backend's
//! `*_unchecked` methods may assume valid shapes.
//!
//! (over ~700 lines: the one trait, its buffer and epilogue types, and the checking function of each op; split, an
//! op's contract would sit apart from the check that enforces it.)

pub mod host;
pub mod reference;

pub use crate::config::Activation;
use crate::config::ClipConfig;
use crate::error::{Error, Result};

impl Activation {
    /// The activation in f32 (the CPU path).
    #[inline]
    pub fn apply_f32(self, x: f32) -> f32 {
        match self {
            // x·σ(1.702x), written as x / (1 + e^(−1.702x)) to stay finite for large |x|.
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            // 0.5·x·(1 + tanh(u)) = x·σ(2u), written like quick_gelu to stay finite for large |x|.
            Activation::GeluTanh => x / (1.0 + (-2.0 * gelu_tanh_arg(x)).exp()),
        }
    }

    /// The activation in f64 (the reference path).
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)),
            // The definition itself, as the oracle.
            Activation::GeluTanh => {
                let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + u.tanh())
            }
        }
    }
}

/// √(2/π)·(x + 0.044715·x³), the argument of GELU's tanh approximation.
#[inline]
pub(crate) fn gelu_tanh_arg(x: f32) -> f32 {
    0.797_884_6 * (x + 0.044_715 * x * x * x)
}

/// What a GEMM does with its product `x·Wᵀ + b` (b only if the linear layer has a bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// out = x·Wᵀ + b
    Store,
    /// out = act(x·Wᵀ + b): the MLP's first layer.
    Activation(Activation),
    /// out += x·Wᵀ + b: a residual connection fused into the GEMM.
    Accumulate,
}

/// `out[m, n] = x[m, k] · W[n, k]ᵀ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// The MLP of an encoder layer: `rows × dim` in and out, `hidden` wide in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpShape {
    pub rows: usize,
    pub dim: usize,
    pub hidden: usize,
}

impl MlpShape {
    pub fn fc1(&self) -> GemmShape {
        GemmShape {
            m: self.rows,
            n: self.hidden,
            k: self.dim,
        }
    }
    pub fn fc2(&self) -> GemmShape {
        GemmShape {
            m: self.rows,
            n: self.dim,
            k: self.hidden,
        }
    }
}

/// Multi-head self-attention over packed `[q | k | v]` rows: `qkv[batch·seq, 3·heads·head_dim]` →
/// `out[batch·seq, heads·head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Mask keys after the query (text tower).
    pub causal: bool,
}

impl AttnShape {
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// How many keys query `i` attends to when its batch item has `valid` unpadded keys: the causal mask and the
    /// key padding mask together.
    pub fn keys(&self, i: usize, valid: usize) -> usize {
        valid.min(if self.causal { i + 1 } else { self.seq })
    }
}

/// Patch extraction: `pixels[batch, channels, size, size]` → `patches[batch·grid², channels·patch²]`, each row in
/// the conv kernel's (channel, y, x) order so the patch embedding is a plain GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchShape {
    pub batch: usize,
    pub channels: usize,
    pub image_size: usize,
    pub patch: usize,
}

impl PatchShape {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }
    pub fn patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn patch_dim(&self) -> usize {
        self.channels * self.patch * self.patch
    }
}

/// The arithmetic of a backend's GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// f32 weights and activations.
    #[default]
    F32,
    /// bf16 weights and activations (rounded to nearest even), products summed in f32 (`vdpbf16ps`).
    Bf16,
    /// fp16 storage with f32 accumulation: the CUDA backend's arithmetic (the CPU runs f32 when asked for it).
    F16,
    /// 16-bit fixed-point products with f32 sums (`vpmaddwd`): weights scaled per output channel, activations per
    /// row; the fast mode of CPUs without AVX-512 (`avx2-i16`). Other devices run their own precision.
    I16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
            Precision::I16 => "i16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Precision> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" | "fp16" => Ok(Precision::F16),
            "i16" | "int16" => Ok(Precision::I16),
            _ => Err(crate::error::Error::InvalidArgument(format!(
                "unknown precision {s:?}: f32, bf16, f16 or i16"
            ))),
        }
    }
}

/// What a backend is and how it computes, for reports (`cliprt info`, every bench row) and for [`crate::Clip`].
#[derive(Clone, Debug, PartialEq)]
pub struct BackendInfo {
    /// The device, e.g. `cpu`, `reference`, `cuda:0 NVIDIA H100 80GB HBM3 (graphs on)`.
    pub device: String,
    /// The matrix engine: a CPU engine ([`crate::cpu::MatrixEngine::name`]), `f64-reference` or `cuda-f16`.
    pub engine: String,
    /// Why this engine was chosen (empty where there was no choice).
    pub reason: String,
    /// The SIMD tier or the GPU's arch.
    pub isa: String,
    /// The arithmetic of the GEMMs: `f32`, `bf16`, `f16` or `f64`.
    pub arithmetic: &'static str,
}

/// A compute backend: the forward pass's ops on buffers owned by the caller, weights prepared once per backend. Its
/// retrieval ops (logits, top-k search) are the sibling trait [`crate::search::Retrieval`]. See ARCHITECTURE.md,
/// "The backend contract"; every implementation runs the conformance suite (tests/conformance.rs).
pub trait Backend: Send + Sync {
    /// An activation buffer.
    type Buf: Send + Sync;
    /// A linear layer's weight (and optional bias), in the backend's preferred layout.
    type Linear: Send + Sync;
    /// Row indices for [`gather_rows`], uploaded once ([`rows`]) so that a recorded graph can reuse them.
    type Index: Send + Sync;
    /// A recorded sequence of launches (a CUDA graph); `()` for backends that record nothing.
    type Graph: Send;

    fn name(&self) -> &'static str;
    /// What this backend is, for reports.
    fn info(&self) -> BackendInfo;
    /// The precision the model's GEMMs run in.
    fn precision(&self) -> Precision {
        Precision::F32
    }
    /// The peak GFLOP/s of the engine that runs the GEMMs on `threads` threads (measured or from a data sheet), for
    /// the bench's %peak; `None` where no honest peak exists.
    fn peak_gflops(&self, _threads: usize) -> Option<f64> {
        None
    }
    /// Runs `forward` (one tower's forward pass) where this backend's ops run best: on the calling thread by
    /// default; the CPU backend moves it onto a worker of its thread pool.
    fn on_workers<R: Send>(&self, forward: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        forward()
    }
    /// Into how many parts a batch of `rows` token rows in all is cut, the parts' forwards run concurrently
    /// ([`Backend::on_workers`] decides where): 1 by default.
    fn batch_parts(&self, _rows: usize) -> usize {
        1
    }
    /// Whether this backend can run a model of `config` (checked before any weight is prepared), or why not.
    fn supports(&self, _config: &ClipConfig) -> Result<()> {
        Ok(())
    }

    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// Copies `data` into the start of an existing buffer (which must hold at least `data.len()` values).
    fn write(&self, buf: &mut Self::Buf, data: &[f32]) -> Result<()>;
    /// [`Backend::write`] for a model input that no queued work reads any more: a backend may copy it
    /// asynchronously (ordered before the launches that follow), overlapping the copy with work already queued.
    fn write_input(&self, buf: &mut Self::Buf, data: &[f32]) -> Result<()> {
        self.write(buf, data)
    }
    /// The most images one forward pass should take at once: larger batches run in chunks of this size, so
    /// that one chunk's upload overlaps the previous chunk's compute. Unlimited by default.
    fn image_chunk(&self) -> usize {
        usize::MAX
    }
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Prepares a linear layer from HF layout `w[out, in]` and an optional bias `[out]`.
    fn linear(
        &self,
        w: &[f32],
        out_features: usize,
        in_features: usize,
        bias: Option<&[f32]>,
    ) -> Result<Self::Linear>;
    /// [`Backend::linear`] for a layer whose products must not be rounded to bf16: the image tower's patch
    /// embedding and first q/k/v projection, whose rounding error every later layer carries (ARCHITECTURE §7.13).
    /// A CPU engine that rounds to bf16 runs it on `avx512-i16` where that pays, else in f32
    /// (`MatrixEngine::precise_engine`); every other backend prepares it as any linear.
    fn linear_precise(
        &self,
        w: &[f32],
        out_features: usize,
        in_features: usize,
        bias: Option<&[f32]>,
    ) -> Result<Self::Linear> {
        self.linear(w, out_features, in_features, bias)
    }
    /// [`Backend::linear`] for a layer that keeps f32 products on every CPU engine, reduced ones included: the text
    /// tower's first layer on the bf16 engines, whose error budget has no room for its inputs' (token embeddings')
    /// outlier channels (ARCHITECTURE §7.13; the i16 engines run that layer as any other,
    /// `layers::PreciseProducts::for_layer`). Every other backend prepares it as any linear.
    fn linear_f32(
        &self,
        w: &[f32],
        out_features: usize,
        in_features: usize,
        bias: Option<&[f32]>,
    ) -> Result<Self::Linear> {
        self.linear(w, out_features, in_features, bias)
    }
    /// `(out_features, in_features, has_bias)` of a prepared layer.
    fn linear_dims(&self, lin: &Self::Linear) -> (usize, usize, bool);

    fn gemm_unchecked(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Linear,
        s: GemmShape,
        ep: Epilogue,
    ) -> Result<()>;
    /// The MLP with its residual: `x += act(input · fc1ᵀ + b1) · fc2ᵀ + b2`, `hidden` holding the activations in
    /// between. A backend may hand them to fc2 in its own format instead (the CPU's bf16 engines store them as
    /// bf16 straight from fc1's epilogue, so fc2 needs no conversion pass); the default is two GEMMs.
    #[allow(clippy::too_many_arguments)]
    fn mlp_unchecked(
        &self,
        x: &mut Self::Buf,
        hidden: &mut Self::Buf,
        input: &Self::Buf,
        fc1: &Self::Linear,
        fc2: &Self::Linear,
        s: MlpShape,
        act: Activation,
    ) -> Result<()> {
        self.gemm_unchecked(hidden, input, fc1, s.fc1(), Epilogue::Activation(act))?;
        self.gemm_unchecked(x, hidden, fc2, s.fc2(), Epilogue::Accumulate)
    }
    /// Row-wise LayerNorm over `rows × dim` with f32 statistics.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_unchecked(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// With `key_lens` (one count per batch item, each in 1..=seq), the queries of item `b` attend to its first
    /// `key_lens[b]` keys only (a key padding mask, HF's `attention_mask`), on top of the causal mask if set.
    fn attention_unchecked(
        &self,
        out: &mut Self::Buf,
        qkv: &Self::Buf,
        s: AttnShape,
        key_lens: Option<&Self::Index>,
    ) -> Result<()>;
    /// Whether [`Backend::attention_packed_unchecked`] runs here. Where not, a packed pass spreads q|k|v into the
    /// `batch × seq` layout, attends there and packs the output back: two row copies per layer.
    fn attends_packed(&self) -> bool {
        false
    }
    /// Causal attention straight on a packed stream (ARCHITECTURE §7.15): item b's rows are the `lens[b]` rows
    /// after item b − 1's, in `qkv` and `out` alike; each row attends to its own item's rows up to itself. The
    /// lengths are in 1..=`s.seq`; the backend checks that they sum to `rows`. Only called where
    /// [`Backend::attends_packed`] holds.
    fn attention_packed_unchecked(
        &self,
        _out: &mut Self::Buf,
        _qkv: &Self::Buf,
        _s: AttnShape,
        _lens: &Self::Index,
        _rows: usize,
    ) -> Result<()> {
        Err(Error::InvalidArgument(format!(
            "the {} backend has no packed attention",
            self.name()
        )))
    }
    fn im2col_unchecked(
        &self,
        out: &mut Self::Buf,
        pixels: &Self::Buf,
        s: PatchShape,
    ) -> Result<()>;
    /// `out[b, t] = patches[b, t] + pos[t]` for a `[batch, seq, dim]` output; with a class token (CLIP) the patches
    /// move one row down: `out[b, 0] = class + pos[0]`, `out[b, 1 + p] = patches[b, p] + pos[1 + p]`.
    #[allow(clippy::too_many_arguments)]
    fn vision_embed_unchecked(
        &self,
        out: &mut Self::Buf,
        patches: &Self::Buf,
        class: Option<&Self::Buf>,
        pos: &Self::Buf,
        batch: usize,
        seq: usize,
        dim: usize,
    ) -> Result<()>;
    /// `out[b, t] = token[ids[b, t]] + pos[t]` for the first `n` ids of the index, `[n / seq, seq]`.
    #[allow(clippy::too_many_arguments)]
    fn text_embed_unchecked(
        &self,
        out: &mut Self::Buf,
        ids: &Self::Index,
        n: usize,
        token: &Self::Buf,
        pos: &Self::Buf,
        seq: usize,
        dim: usize,
    ) -> Result<()>;
    fn upload_index(&self, rows: &[u32]) -> Result<Self::Index>;
    /// Overwrites the start of an index with `rows` (it must hold at least that many).
    fn write_index(&self, index: &mut Self::Index, rows: &[u32]) -> Result<()>;
    /// `out[i] = x[rows[i]]` for the first `n` rows of the index, rows of width `dim`.
    fn gather_rows_unchecked(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        rows: &Self::Index,
        n: usize,
        dim: usize,
    ) -> Result<()>;

    /// Records what `enqueue` launches into a graph without running it, or returns `None` where the backend does
    /// not record (the caller then runs `enqueue` itself). `enqueue` may only launch work on buffers that outlive
    /// the graph and must not copy from the host. See [`run_recorded`].
    fn record(&self, enqueue: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Graph>>;
    /// Runs a recorded graph.
    fn replay(&self, graph: &Self::Graph) -> Result<()>;
}

/// Runs `enqueue` as the graph `graphs[key]`: recorded on first use where the backend records, replayed after;
/// called directly where it does not. The caller keeps `graphs` with the buffers the graph uses (a graph holds
/// their addresses), and drops both together.
pub fn run_recorded<B: Backend, K: std::hash::Hash + Eq>(
    b: &B,
    graphs: &mut std::collections::HashMap<K, B::Graph>,
    key: K,
    enqueue: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    if let Some(g) = graphs.get(&key) {
        return b.replay(g);
    }
    match b.record(enqueue)? {
        Some(g) => {
            b.replay(&g)?;
            graphs.insert(key, g);
            Ok(())
        }
        None => enqueue(),
    }
}

/// Row indices (or token ids) on a backend, for [`gather_rows`] and [`text_embed`].
pub struct Rows<B: Backend> {
    index: B::Index,
    len: usize,
    /// How many the index holds.
    capacity: usize,
    /// The largest and smallest row (checked against the source of every gather, and key counts against 1..=seq).
    max: Option<usize>,
    min: Option<usize>,
}

impl<B: Backend> Rows<B> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Uploads row indices for [`gather_rows`].
pub fn rows<B: Backend>(b: &B, rows: &[usize]) -> Result<Rows<B>> {
    let idx: Vec<u32> = rows
        .iter()
        .map(|&r| u32::try_from(r).map_err(|_| Error::Shape(format!("row {r} exceeds 32 bits"))))
        .collect::<Result<_>>()?;
    Ok(Rows {
        index: b.upload_index(&idx)?,
        len: rows.len(),
        capacity: rows.len(),
        max: rows.iter().copied().max(),
        min: rows.iter().copied().min(),
    })
}

/// Replaces the contents of `rows` with `values` (at most its capacity), in place: a recorded graph that reads the
/// index sees the new values.
pub fn write_rows<B: Backend>(b: &B, rows: &mut Rows<B>, values: &[u32]) -> Result<()> {
    if values.len() > rows.capacity {
        return Err(Error::Shape(format!(
            "{} indices into an index of {}",
            values.len(),
            rows.capacity
        )));
    }
    b.write_index(&mut rows.index, values)?;
    rows.len = values.len();
    rows.max = values.iter().map(|&v| v as usize).max();
    rows.min = values.iter().map(|&v| v as usize).min();
    Ok(())
}

/// Checks a weight matrix `[n, k]` and bias `[n]` before a backend prepares them.
pub(crate) fn check_linear(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Result<()> {
    if w.len() != n * k {
        return Err(Error::Shape(format!(
            "linear weight has {} values, expected {n}×{k}",
            w.len()
        )));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(Error::Shape(format!(
                "linear bias has {} values, expected {n}",
                b.len()
            )));
        }
    }
    Ok(())
}

fn need<B: Backend>(b: &B, buf: &B::Buf, len: usize, what: &str) -> Result<()> {
    let have = b.len(buf);
    if have < len {
        return Err(Error::Shape(format!(
            "{what} holds {have} values, needs {len}"
        )));
    }
    Ok(())
}

/// Checked GEMM with epilogue; see [`Epilogue`].
pub fn gemm<B: Backend>(
    b: &B,
    out: &mut B::Buf,
    x: &B::Buf,
    w: &B::Linear,
    s: GemmShape,
    ep: Epilogue,
) -> Result<()> {
    let (n, k, _) = b.linear_dims(w);
    if (n, k) != (s.n, s.k) {
        return Err(Error::Shape(format!("gemm {s:?} with a [{n}, {k}] weight")));
    }
    need(b, x, s.m * s.k, "gemm input")?;
    need(b, out, s.m * s.n, "gemm output")?;
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    b.gemm_unchecked(out, x, w, s, ep)
}

/// Checked MLP with residual; see [`Backend::mlp_unchecked`].
#[allow(clippy::too_many_arguments)]
pub fn mlp<B: Backend>(
    b: &B,
    x: &mut B::Buf,
    hidden: &mut B::Buf,
    input: &B::Buf,
    fc1: &B::Linear,
    fc2: &B::Linear,
    s: MlpShape,
    act: Activation,
) -> Result<()> {
    for (w, want, name) in [(fc1, s.fc1(), "fc1"), (fc2, s.fc2(), "fc2")] {
        let (n, k, _) = b.linear_dims(w);
        if (n, k) != (want.n, want.k) {
            return Err(Error::Shape(format!(
                "mlp {s:?}: {name} weight is [{n}, {k}]"
            )));
        }
    }
    need(b, input, s.rows * s.dim, "mlp input")?;
    need(b, x, s.rows * s.dim, "mlp residual")?;
    need(b, hidden, s.rows * s.hidden, "mlp hidden")?;
    if s.rows == 0 || s.dim == 0 {
        return Ok(());
    }
    if s.hidden == 0 {
        // No hidden units: only fc2's bias remains, which the checked GEMMs handle on every backend.
        gemm(b, hidden, input, fc1, s.fc1(), Epilogue::Activation(act))?;
        return gemm(b, x, hidden, fc2, s.fc2(), Epilogue::Accumulate);
    }
    b.mlp_unchecked(x, hidden, input, fc1, fc2, s, act)
}

/// Checked LayerNorm.
#[allow(clippy::too_many_arguments)]
pub fn layernorm<B: Backend>(
    b: &B,
    out: &mut B::Buf,
    x: &B::Buf,
    gamma: &B::Buf,
    beta: &B::Buf,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    need(b, x, rows * dim, "layernorm input")?;
    need(b, out, rows * dim, "layernorm output")?;
    need(b, gamma, dim, "layernorm gamma")?;
    need(b, beta, dim, "layernorm beta")?;
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    b.layernorm_unchecked(out, x, gamma, beta, rows, dim, eps)
}

/// Checked attention.
pub fn attention<B: Backend>(b: &B, out: &mut B::Buf, qkv: &B::Buf, s: AttnShape) -> Result<()> {
    let rows = s.batch * s.seq;
    need(b, qkv, rows * 3 * s.width(), "attention qkv")?;
    need(b, out, rows * s.width(), "attention output")?;
    if rows == 0 || s.width() == 0 {
        return Ok(());
    }
    b.attention_unchecked(out, qkv, s, None)
}

/// Checked causal attention on a packed stream of `rows` rows ([`Backend::attention_packed_unchecked`]): one
/// length per batch item, each in 1..=seq, summing to `rows`.
pub fn attention_packed<B: Backend>(
    b: &B,
    out: &mut B::Buf,
    qkv: &B::Buf,
    s: AttnShape,
    lens: &Rows<B>,
    rows: usize,
) -> Result<()> {
    if !b.attends_packed() {
        return Err(Error::InvalidArgument(format!(
            "the {} backend has no packed attention",
            b.name()
        )));
    }
    need(b, qkv, rows * 3 * s.width(), "attention qkv")?;
    need(b, out, rows * s.width(), "attention output")?;
    if lens.len != s.batch {
        return Err(Error::Shape(format!(
            "{} sequence lengths for a batch of {}",
            lens.len, s.batch
        )));
    }
    // The bounds keep each item within seq; the sum (which `Rows` does not keep) is checked by the backend,
    // which holds the lengths.
    if lens.min.is_some_and(|m| m == 0) || lens.max.is_some_and(|m| m > s.seq) {
        return Err(Error::Shape(format!(
            "sequence lengths must be in 1..={}, got {:?}..={:?}",
            s.seq, lens.min, lens.max
        )));
    }
    if s.width() == 0 {
        return Ok(());
    }
    b.attention_packed_unchecked(out, qkv, s, &lens.index, rows)
}

/// Checked attention under a key padding mask: the queries of batch item `b` attend only to its first
/// `key_lens[b]` keys (each count in 1..=seq), as HF's `attention_mask` does for right-padded text.
pub fn attention_masked<B: Backend>(
    b: &B,
    out: &mut B::Buf,
    qkv: &B::Buf,
    s: AttnShape,
    key_lens: &Rows<B>,
) -> Result<()> {
    let rows = s.batch * s.seq;
    need(b, qkv, rows * 3 * s.width(), "attention qkv")?;
    need(b, out, rows * s.width(), "attention output")?;
    if key_lens.len != s.batch {
        return Err(Error::Shape(format!(
            "{} key lengths for a batch of {}",
            key_lens.len, s.batch
        )));
    }
    if rows == 0 || s.width() == 0 {
        return Ok(());
    }
    // A count of 0 would be a softmax over nothing (NaN); past seq would read the next item's keys.
    if key_lens.min.is_some_and(|m| m == 0) || key_lens.max.is_some_and(|m| m > s.seq) {
        return Err(Error::Shape(format!(
            "key lengths must be in 1..={}, got {:?}..={:?}",
            s.seq, key_lens.min, key_lens.max
        )));
    }
    b.attention_unchecked(out, qkv, s, Some(&key_lens.index))
}

/// Checked patch extraction.
pub fn im2col<B: Backend>(b: &B, out: &mut B::Buf, pixels: &B::Buf, s: PatchShape) -> Result<()> {
    if s.patch == 0 || s.grid() == 0 {
        return Err(Error::Shape(format!("{s:?} has no whole patch")));
    }
    need(
        b,
        pixels,
        s.batch * s.channels * s.image_size * s.image_size,
        "pixels",
    )?;
    need(b, out, s.batch * s.patches() * s.patch_dim(), "patches")?;
    if s.batch == 0 {
        return Ok(());
    }
    b.im2col_unchecked(out, pixels, s)
}

/// Checked vision embedding assembly: the patch embeddings plus the position embedding, after an optional class
/// token (a family's choice: CLIP has one, SigLIP none).
#[allow(clippy::too_many_arguments)]
pub fn vision_embed<B: Backend>(
    b: &B,
    out: &mut B::Buf,
    patches: &B::Buf,
    class: Option<&B::Buf>,
    pos: &B::Buf,
    batch: usize,
    seq: usize,
    dim: usize,
) -> Result<()> {
    let lead = usize::from(class.is_some());
    if seq <= lead {
        return Err(Error::Shape(format!(
            "a vision sequence of {seq} has no patch row"
        )));
    }
    need(b, patches, batch * (seq - lead) * dim, "patch embeddings")?;
    if let Some(class) = class {
        need(b, class, dim, "class embedding")?;
    }
    need(b, pos, seq * dim, "position embedding")?;
    need(b, out, batch * seq * dim, "vision embeddings")?;
    b.vision_embed_unchecked(out, patches, class, pos, batch, seq, dim)
}

/// Checked text embedding; ids must be inside the token table.
pub fn text_embed<B: Backend>(
    b: &B,
    out: &mut B::Buf,
    ids: &Rows<B>,
    token: &B::Buf,
    pos: &B::Buf,
    seq: usize,
    dim: usize,
) -> Result<()> {
    let n = ids.len;
    if seq == 0 || !n.is_multiple_of(seq) {
        return Err(Error::Shape(format!("{n} ids are not whole rows of {seq}")));
    }
    let vocab = b.len(token).checked_div(dim).unwrap_or(0);
    if let Some(bad) = ids.max.filter(|&m| m >= vocab) {
        return Err(Error::Shape(format!(
            "token id {bad} outside a vocabulary of {vocab}"
        )));
    }
    need(b, pos, seq * dim, "position embedding")?;
    need(b, out, n * dim, "text embeddings")?;
    if n == 0 {
        return Ok(());
    }
    b.text_embed_unchecked(out, &ids.index, n, token, pos, seq, dim)
}

/// Checked row gather: `out[i] = x[rows[i]]` for the first `n` indices of `rows`.
pub fn gather_rows<B: Backend>(
    b: &B,
    out: &mut B::Buf,
    x: &B::Buf,
    rows: &Rows<B>,
    n: usize,
    dim: usize,
) -> Result<()> {
    if n > rows.len {
        return Err(Error::Shape(format!(
            "gathering {n} rows with an index of {}",
            rows.len
        )));
    }
    let have = b.len(x).checked_div(dim).unwrap_or(0);
    if let Some(bad) = rows.max.filter(|&m| m >= have) {
        return Err(Error::Shape(format!("row {bad} outside {have} rows")));
    }
    need(b, out, n * dim, "gathered rows")?;
    if n == 0 {
        return Ok(());
    }
    b.gather_rows_unchecked(out, x, &rows.index, n, dim)
}
