//! The models, written once over the [`crate::backend::Backend`] trait: the layers every family shares ([`layers`]: the
//! pre-LayerNorm transformer encoder layer), and one module per family with its towers, its checkpoint key names and
//! its weights ([`clip`]). Adding a family is adding a module beside `clip` (docs/adding-a-model-family.md).

pub mod clip;
pub mod layers;

pub use clip::weights::ClipWeights;
pub use clip::ClipModel;

use crate::backend::Backend;
use crate::config::ClipConfig;
use crate::error::Result;

/// A model of some family prepared on backend `B`: what the engine runs.
pub trait Model<B: Backend>: Send + Sync {
    fn backend(&self) -> &B;
    fn into_backend(self: Box<Self>) -> B;
    /// Projected image embeddings `[batch, projection_dim]` of preprocessed pixels `[batch, C, H, W]`.
    fn encode_images(&self, pixels: &[f32], batch: usize) -> Result<Vec<f32>>;
    /// Projected text embeddings of token id rows, laid out as the family's text tower needs them (CLIP cuts the
    /// batch at the longest pooled row; a non-causal tower pads to its context length).
    fn encode_texts(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>>;
}

/// The family registry: a checkpoint of one family, read and ready to be prepared on a backend. A new family adds
/// its module beside `clip` and one variant here (docs/adding-a-model-family.md).
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

pub use clip::{TextBatch, TextTower, VisionTower};
