//! The models, written once over the [`crate::backend::Backend`] trait. A CLIP-family model is two towers built
//! from shared parts: the pre-LayerNorm encoder layer ([`layers`]), the image tower ([`vision`]: class token or
//! not, pre-LN or not, class-token or attention-head pooling), the text tower ([`text`]) and its batch layout
//! ([`batch`]: cut for a causal tower, padded and masked for a non-causal one). A family is its config
//! (src/config.rs) and its checkpoint key names ([`clip`], [`siglip`]) mapped onto the family-free
//! [`weights::ClipWeights`] (docs/adding-a-model-family.md).

pub mod batch;
pub mod clip;
pub mod layers;
pub mod openclip;
pub mod siglip;
pub mod text;
pub mod vision;
pub mod weights;

pub use batch::TextBatch;
pub use text::TextTower;
pub use vision::VisionTower;
pub use weights::ClipWeights;

use crate::backend::Backend;
use crate::config::{ClipConfig, Family, Format};
use crate::error::{Error, Result};
use crate::weights::Checkpoint;
use weights::TensorReader;

impl ClipWeights {
    /// Reads the weights of the model folder `dir` from the checkpoint files of `config`'s format
    /// (`model.safetensors` or its shards for HF, `open_clip_model.safetensors` for open_clip).
    pub fn from_dir(dir: &std::path::Path, config: &ClipConfig) -> Result<Self> {
        let ckpt = match config.format {
            Format::Hf => Checkpoint::open(dir)?,
            Format::OpenClip(_) => Checkpoint::open_open_clip(dir)?,
        };
        ClipWeights::from_checkpoint(&ckpt, config)
    }

    /// Reads every tensor the model needs from `ckpt` under its family's key names, checking shapes against
    /// `config`. Extra tensors (such as `position_ids` buffers) are ignored.
    pub fn from_checkpoint(ckpt: &Checkpoint, config: &ClipConfig) -> Result<Self> {
        let mut r = TensorReader::new(ckpt);
        let (text, vision, logit_bias) = match (config.family, config.format) {
            (Family::Clip, Format::Hf) => {
                let (t, v) = clip::read_hf(&mut r, config)?;
                (t, v, 0.0)
            }
            (Family::Clip, Format::OpenClip(layout)) => {
                let (t, v) = openclip::read_open_clip(&mut r, config, layout)?;
                (t, v, 0.0)
            }
            (Family::Siglip, Format::Hf) => siglip::read_hf(&mut r, config)?,
            (Family::Siglip, Format::OpenClip(_)) => {
                return Err(Error::UnsupportedModel(
                    "SigLIP in open_clip format (its towers are timm trunks)".into(),
                ))
            }
        };
        let logit_scale_log = r.scalar("logit_scale")?;
        // exp(88.7) overflows f32: every logit would be infinite, every probability NaN.
        if !logit_scale_log.exp().is_finite() {
            return Err(Error::NonFinite(format!(
                "logit_scale {logit_scale_log} (its exp overflows f32)"
            )));
        }
        Ok(ClipWeights {
            text,
            vision,
            logit_scale_log,
            logit_bias,
            stored_dtype: r.stored_dtype(),
        })
    }
}

/// A model of some family prepared on backend `B`: what the engine runs.
pub trait Model<B: Backend>: Send + Sync {
    fn backend(&self) -> &B;
    fn into_backend(self: Box<Self>) -> B;
    /// Projected image embeddings `[batch, projection_dim]` of preprocessed pixels `[batch, C, H, W]`.
    fn encode_images(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>>;
    /// Projected text embeddings of token id rows, laid out as the family's text tower needs them (CLIP cuts the
    /// batch at the longest pooled row; SigLIP pads to its context length and masks the padding).
    fn encode_texts(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>>;
}

/// The family registry: a checkpoint read and ready to be prepared on a backend. Every family of the CLIP kind
/// (two towers, one embedding space) is a [`ClipConfig`] with its `family` and [`ClipWeights`]; a family of
/// another kind would add a variant here (docs/adding-a-model-family.md).
pub enum ModelSpec {
    Clip {
        config: ClipConfig,
        weights: ClipWeights,
    },
}

impl ModelSpec {
    /// Whether `backend` can run this model, or why not (checked before any weight is prepared).
    pub fn check<B: Backend>(&self, backend: &B) -> Result<()> {
        match self {
            ModelSpec::Clip { config, .. } => backend.supports(config),
        }
    }

    /// Prepares the weights on `backend` (consumed layer by layer).
    pub fn prepare<B: Backend + 'static>(self, backend: B) -> Result<Box<dyn Model<B>>> {
        self.check(&backend)?;
        Ok(match self {
            ModelSpec::Clip { config, weights } => {
                Box::new(ClipModel::new(backend, &config, weights)?)
            }
        })
    }
}

/// Both towers of a CLIP-family model on one backend, plus the logit scale and bias.
pub struct ClipModel<B: Backend> {
    pub backend: B,
    pub config: ClipConfig,
    pub text: TextTower<B>,
    pub vision: VisionTower<B>,
    /// exp of the checkpoint's stored `logit_scale`.
    pub logit_scale: f32,
    /// SigLIP's logit bias; 0 for CLIP.
    pub logit_bias: f32,
}

impl<B: Backend> ClipModel<B> {
    /// Prepares `weights` for `backend`, consuming them layer by layer (so the raw and the prepared copies never
    /// both exist in full).
    pub fn new(backend: B, config: &ClipConfig, weights: ClipWeights) -> Result<Self> {
        Ok(ClipModel {
            text: TextTower::new(&backend, weights.text, &config.text, config.projection_dim)?,
            vision: VisionTower::new(
                &backend,
                weights.vision,
                &config.vision,
                config.projection_dim,
            )?,
            logit_scale: weights.logit_scale_log.exp(),
            logit_bias: weights.logit_bias,
            config: config.clone(),
            backend,
        })
    }

    /// Projected image embeddings `[batch, projection_dim]` of `pixels[batch, C, H, W]`.
    pub fn encode_images(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        let b = &self.backend;
        b.on_workers(|| self.vision.forward(b, pixels, batch))
    }

    /// Projected text embeddings `[batch, projection_dim]` of a laid-out batch.
    pub fn encode_texts(&self, batch: &TextBatch) -> Result<Vec<f32>> {
        let b = &self.backend;
        b.on_workers(|| self.text.forward(b, batch))
    }
}

impl<B: Backend> Model<B> for ClipModel<B> {
    fn backend(&self) -> &B {
        &self.backend
    }
    fn into_backend(self: Box<Self>) -> B {
        self.backend
    }
    /// In the backend's [`Backend::batch_parts`], run concurrently (each image is independent of the others).
    fn encode_images(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        let (b, v) = (&self.backend, &self.config.vision);
        let per_image = v.num_channels * v.image_size * v.image_size;
        // A malformed call goes whole to the tower, which says what is wrong with it.
        if pixels.len() != batch * per_image {
            return ClipModel::encode_images(self, pixels, batch);
        }
        let parts = b.batch_parts(batch * v.seq_len());
        b.on_workers(|| {
            in_parts(parts, 0, batch, &|first, n| {
                let part = &pixels[first * per_image..(first + n) * per_image];
                ClipModel::encode_images(self, part, n)
            })
        })
    }
    /// The family's layout (ARCHITECTURE.md, trap 2): CLIP's cut batch, SigLIP's padded and masked one; in the
    /// backend's [`Backend::batch_parts`], each part laid out on its own (a causal part cut at its own longest row:
    /// the same embeddings).
    fn encode_texts(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>> {
        let b = &self.backend;
        let parts = b.batch_parts(rows.iter().map(Vec::len).sum());
        b.on_workers(|| {
            in_parts(parts, 0, rows.len(), &|first, n| {
                let part = TextBatch::for_model(&rows[first..first + n], &self.config)?;
                ClipModel::encode_texts(self, &part)
            })
        })
    }
}

/// `f(first, count)` over `parts` consecutive, near-equal slices of the items `first..first + n`, run concurrently
/// (`rayon::join`), the outputs concatenated in item order. Fewer parts than asked when there are fewer items.
fn in_parts(
    parts: usize,
    first: usize,
    n: usize,
    f: &(dyn Fn(usize, usize) -> Result<Vec<f32>> + Sync),
) -> Result<Vec<f32>> {
    let parts = parts.min(n);
    if parts <= 1 {
        return f(first, n);
    }
    let left_parts = parts / 2;
    let left = n * left_parts / parts;
    let (a, b) = rayon::join(
        || in_parts(left_parts, first, left, f),
        || in_parts(parts - left_parts, first + left, n - left, f),
    );
    let mut out = a?;
    out.extend(b?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_item_once_in_order() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (parts, n) in [(1, 5), (2, 5), (3, 7), (4, 4), (8, 3), (2, 1), (2, 0)] {
            let calls = std::sync::Mutex::new(Vec::new());
            let out = pool
                .install(|| {
                    in_parts(parts, 10, n, &|first, count| {
                        calls.lock().unwrap().push(count);
                        Ok((first..first + count).map(|i| i as f32).collect())
                    })
                })
                .unwrap();
            let want: Vec<f32> = (10..10 + n).map(|i| i as f32).collect();
            assert_eq!(out, want, "{parts} parts of {n}");
            let calls = calls.into_inner().unwrap();
            assert_eq!(calls.len(), parts.min(n).max(1), "{parts} parts of {n}");
            assert!(calls.iter().all(|&c| c + 1 >= n / parts.min(n).max(1)));
        }
        // An error in any part is the call's error.
        let err = pool.install(|| {
            in_parts(2, 0, 4, &|first, _| {
                if first == 0 {
                    Ok(vec![0.0])
                } else {
                    Err(crate::error::Error::EmptyInput("part"))
                }
            })
        });
        assert!(err.is_err());
    }
}
