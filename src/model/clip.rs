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
    let post_ln = r.layernorm("vision_model.post_layernorm", vd)?;
    let vision = VisionWeights {
        patch_embedding: r.get(
            "vision_model.embeddings.patch_embedding.weight",
            &[vd, v.num_channels, v.patch_size, v.patch_size],
        )?,
        patch_bias: None,
        class_embedding: Some(r.get("vision_model.embeddings.class_embedding", &[vd])?),
        position_embedding: r.get(
            "vision_model.embeddings.position_embedding.weight",
            &[v.seq_len(), vd],
        )?,
        // HF spells the pre-LayerNorm key "pre_layrnorm".
        pre_ln: Some(r.layernorm("vision_model.pre_layrnorm", vd)?),
        layers: r.hf_layers("vision_model", &v.encoder)?,
        post_ln_g: post_ln.0,
        post_ln_b: post_ln.1,
        pool: PoolWeights::ClassToken {
            projection: r.get("visual_projection.weight", &[config.projection_dim, vd])?,
        },
    };
    Ok((text, vision))
}
