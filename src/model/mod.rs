//! The models, written once over the [`crate::backend::Backend`] trait: the layers every family shares ([`layers`]: the
//! pre-LayerNorm transformer encoder layer), and one module per family with its towers, its checkpoint key names and
//! its weights ([`clip`]). Adding a family is adding a module beside `clip` (docs/adding-a-model-family.md).

pub mod clip;
pub mod layers;

pub use clip::weights::ClipWeights;
pub use clip::ClipModel;

pub use clip::{TextBatch, TextTower, VisionTower};
