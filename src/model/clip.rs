//! The CLIP family's HF checkpoint key names (`model_type: "clip"`): a ViT image tower with a class token,
//! pre-LayerNorm (spelled `pre_layrnorm`) and a projection, and a causal text tower pooled at the first EOT.

use super::weights::{PoolWeights, TensorReader, TextWeights, VisionWeights};
use crate::config::ClipConfig;
use crate::error::Result;

/// Both towers of an HF CLIP checkpoint.
pub(crate) fn read_hf(
    r: &mut TensorReader,
    config: &ClipConfig,
) -> Result<(TextWeights, VisionWeights)> {
    let (t, v) = (&config.text, &config.vision);
    let (td, vd) = (t.encoder.hidden_size, v.encoder.hidden_size);
    let projection = r.get("text_projection.weight", &[config.projection_dim, td])?;
    let text = r.hf_text(t, projection, None)?;
    let pool = PoolWeights::ClassToken {
        projection: r.get("visual_projection.weight", &[config.projection_dim, vd])?,
    };
    // HF spells the pre-LayerNorm key "pre_layrnorm".
    let vision = r.hf_vision(v, false, Some("vision_model.pre_layrnorm"), pool)?;
    Ok((text, vision))
}
