//! The CLIP family (HF `model_type: "clip"`): a ViT image tower with a class token, pre-LayerNorm and a projection,
//! and a causal text tower pooled at the EOT token, each with its HF checkpoint key names (`weights`).

pub mod batch;
pub mod text;
pub mod vision;
pub mod weights;

pub use batch::TextBatch;
pub use text::TextTower;
pub use vision::VisionTower;

use crate::backend::Backend;
use crate::config::ClipConfig;
use crate::error::Result;
use weights::ClipWeights;

/// Both towers of a CLIP model on one backend, plus the logit scale.
pub struct ClipModel<B: Backend> {
    pub backend: B,
    pub config: ClipConfig,
    pub text: TextTower<B>,
    pub vision: VisionTower<B>,
    /// exp of the checkpoint's stored `logit_scale`.
    pub logit_scale: f32,
}

impl<B: Backend> ClipModel<B> {
    /// Prepares `weights` for `backend`, consuming them layer by layer (so the raw and the prepared copies never
    /// both exist in full).
    pub fn new(backend: B, config: &ClipConfig, weights: ClipWeights) -> Result<Self> {
        let logit_scale = weights.logit_scale_log.exp();
        Ok(ClipModel {
            text: TextTower::new(&backend, weights.text, &config.text, config.projection_dim)?,
            vision: VisionTower::new(
                &backend,
                weights.vision,
                &config.vision,
                config.projection_dim,
            )?,
            logit_scale,
            config: config.clone(),
            backend,
        })
    }

    /// Projected image embeddings `[batch, projection_dim]` of `pixels[batch, C, H, W]`.
    pub fn encode_images(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        self.vision.forward(&self.backend, pixels, batch)
    }

    /// Projected text embeddings `[batch, projection_dim]`.
    pub fn encode_texts(&self, batch: &TextBatch) -> Result<Vec<f32>> {
        self.text.forward(&self.backend, batch)
    }
}

impl<B: Backend> super::Model<B> for ClipModel<B> {
    fn backend(&self) -> &B {
        &self.backend
    }
    fn into_backend(self: Box<Self>) -> B {
        self.backend
    }
    fn encode_images(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>> {
        ClipModel::encode_images(self, pixels, batch)
    }
    /// The causal tower: the batch is cut at its longest pooled row (ARCHITECTURE.md, trap 2).
    fn encode_texts(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>> {
        ClipModel::encode_texts(self, &TextBatch::new(rows, &self.config.text)?)
    }
}
