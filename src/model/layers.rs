//! The pre-LN transformer encoder layer shared by both towers, and the activation workspace it runs in.

use crate::backend::{self, AttnShape, Backend, Epilogue, GemmShape, MlpShape, Rows};
use crate::config::EncoderConfig;
use crate::error::Result;
use crate::weights::LayerWeights;

/// One encoder layer's weights, prepared for backend `B`.
pub struct EncoderLayer<B: Backend> {
    ln1_g: B::Buf,
    ln1_b: B::Buf,
    qkv: B::Linear,
    out: B::Linear,
    ln2_g: B::Buf,
    ln2_b: B::Buf,
    fc1: B::Linear,
    fc2: B::Linear,
}

impl<B: Backend> EncoderLayer<B> {
    /// Layer `index` of its tower: layer 0's q/k/v projection keeps f32 products on the CPU's bf16 engines too
    /// (`Backend::linear_f32`, ARCHITECTURE §7.13).
    pub fn new(b: &B, w: &LayerWeights, c: &EncoderConfig, index: usize) -> Result<Self> {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let qkv = if index == 0 {
            b.linear_f32(&w.qkv_w, 3 * d, d, Some(&w.qkv_b))?
        } else {
            b.linear(&w.qkv_w, 3 * d, d, Some(&w.qkv_b))?
        };
        Ok(EncoderLayer {
            ln1_g: b.upload(&w.ln1_g)?,
            ln1_b: b.upload(&w.ln1_b)?,
            qkv,
            out: b.linear(&w.out_w, d, d, Some(&w.out_b))?,
            ln2_g: b.upload(&w.ln2_g)?,
            ln2_b: b.upload(&w.ln2_b)?,
            fc1: b.linear(&w.fc1_w, i, d, Some(&w.fc1_b))?,
            fc2: b.linear(&w.fc2_w, d, i, Some(&w.fc2_b))?,
        })
    }
}

/// Activation buffers for one forward pass of a tower, sized once for `rows = batch · seq` and reused by every
/// layer (no allocation inside the layer loop).
pub struct Workspace<B: Backend> {
    /// Rows the buffers hold (a workspace serves any batch up to this many rows).
    pub rows: usize,
    /// The residual stream `[rows, D]`.
    pub x: B::Buf,
    /// LayerNorm output `[rows, D]`.
    pub(super) norm: B::Buf,
    /// Packed q|k|v `[rows, 3D]`.
    pub(super) qkv: B::Buf,
    /// Attention output `[rows, D]`.
    pub(super) attn: B::Buf,
    /// MLP hidden `[rows, I]`.
    pub(super) mlp: B::Buf,
}

impl<B: Backend> Workspace<B> {
    pub fn new(b: &B, rows: usize, c: &EncoderConfig) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Workspace {
            rows,
            x: b.alloc(rows * d)?,
            norm: b.alloc(rows * d)?,
            qkv: b.alloc(rows * 3 * d)?,
            attn: b.alloc(rows * d)?,
            mlp: b.alloc(rows * c.intermediate_size)?,
        })
    }
}

/// A value kept from one forward pass to the next (a tower's activation buffers), so that repeated calls at the
/// same or a smaller shape allocate and page-fault nothing: at ViT-B/32 batch 32 that is ≈ 100 MB per call, a few
/// percent of the forward. A caller that finds it taken (another thread mid-forward) builds its own.
pub struct Reuse<T>(std::sync::Mutex<Option<T>>);

impl<T> Default for Reuse<T> {
    fn default() -> Self {
        Reuse(std::sync::Mutex::new(None))
    }
}

impl<T> Reuse<T> {
    /// The kept value if `fits` accepts it, else a new one from `make`.
    pub fn take_or(
        &self,
        fits: impl Fn(&T) -> bool,
        make: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        // A poisoned lock only means a panic elsewhere mid-forward: the buffers are plain data, still usable.
        let kept = match self.0.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        match kept {
            Some(v) if fits(&v) => Ok(v),
            _ => make(),
        }
    }

    /// Keeps `v` for the next call.
    pub fn keep(&self, v: T) {
        match self.0.lock() {
            Ok(mut g) => *g = Some(v),
            Err(p) => *p.into_inner() = Some(v),
        }
    }
}

/// Runs `layers` over the residual stream `ws.x` (`batch × seq` rows):
/// x += out_proj(attention(LN1(x)));  x += fc2(act(fc1(LN2(x)))). With `key_lens`, item b attends only to its
/// first `key_lens[b]` tokens (a padding mask).
#[allow(clippy::too_many_arguments)]
pub fn run_encoder<B: Backend>(
    b: &B,
    layers: &[EncoderLayer<B>],
    c: &EncoderConfig,
    ws: &mut Workspace<B>,
    batch: usize,
    seq: usize,
    causal: bool,
    key_lens: Option<&Rows<B>>,
) -> Result<()> {
    let rows = batch * seq;
    let (d, i) = (c.hidden_size, c.intermediate_size);
    let attn = AttnShape {
        batch,
        seq,
        heads: c.num_heads,
        head_dim: c.head_dim(),
        causal,
    };
    for l in layers {
        backend::layernorm(
            b,
            &mut ws.norm,
            &ws.x,
            &l.ln1_g,
            &l.ln1_b,
            rows,
            d,
            c.layer_norm_eps,
        )?;
        backend::gemm(
            b,
            &mut ws.qkv,
            &ws.norm,
            &l.qkv,
            GemmShape {
                m: rows,
                n: 3 * d,
                k: d,
            },
            Epilogue::Store,
        )?;
        match key_lens {
            Some(k) => backend::attention_masked(b, &mut ws.attn, &ws.qkv, attn, k)?,
            None => backend::attention(b, &mut ws.attn, &ws.qkv, attn)?,
        }
        backend::gemm(
            b,
            &mut ws.x,
            &ws.attn,
            &l.out,
            GemmShape {
                m: rows,
                n: d,
                k: d,
            },
            Epilogue::Accumulate,
        )?;
        backend::layernorm(
            b,
            &mut ws.norm,
            &ws.x,
            &l.ln2_g,
            &l.ln2_b,
            rows,
            d,
            c.layer_norm_eps,
        )?;
        let mlp = MlpShape {
            rows,
            dim: d,
            hidden: i,
        };
        backend::mlp(
            b,
            &mut ws.x,
            &mut ws.mlp,
            &ws.norm,
            &l.fc1,
            &l.fc2,
            mlp,
            c.activation,
        )?;
    }
    Ok(())
}
