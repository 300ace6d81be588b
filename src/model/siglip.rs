//! The SigLIP family's HF checkpoint key names (`model_type: "siglip"`, SigLIP2's fixed-resolution checkpoints
//! too): a ViT with a patch bias, no class token and no pre-LN, pooled by a multihead attention head; a non-causal
//! text tower pooled at the last position with a head that has a bias; a logit bias.

use super::weights::{HeadWeights, PoolWeights, TensorReader, TextWeights, VisionWeights};
use crate::config::ClipConfig;
use crate::error::Result;

/// Both towers of an HF SigLIP checkpoint, and its logit bias.
pub(crate) fn read_hf(
    r: &mut TensorReader,
    config: &ClipConfig,
) -> Result<(TextWeights, VisionWeights, f32)> {
    let (t, v) = (&config.text, &config.vision);
    let (td, vd, p) = (
        t.encoder.hidden_size,
        v.encoder.hidden_size,
        config.projection_dim,
    );
    let projection = r.get("text_model.head.weight", &[p, td])?;
    let bias = r.get("text_model.head.bias", &[p])?;
    let text = r.hf_text(t, projection, Some(bias))?;
    let i = v.encoder.intermediate_size;
    let h = "vision_model.head";
    let (ln_g, ln_b) = r.layernorm(&format!("{h}.layernorm"), vd)?;
    let head = HeadWeights {
        probe: r.get(&format!("{h}.probe"), &[1, 1, vd])?,
        in_proj_w: r.get(&format!("{h}.attention.in_proj_weight"), &[3 * vd, vd])?,
        in_proj_b: r.get(&format!("{h}.attention.in_proj_bias"), &[3 * vd])?,
        out_w: r.get(&format!("{h}.attention.out_proj.weight"), &[vd, vd])?,
        out_b: r.get(&format!("{h}.attention.out_proj.bias"), &[vd])?,
        ln_g,
        ln_b,
        fc1_w: r.get(&format!("{h}.mlp.fc1.weight"), &[i, vd])?,
        fc1_b: r.get(&format!("{h}.mlp.fc1.bias"), &[i])?,
        fc2_w: r.get(&format!("{h}.mlp.fc2.weight"), &[vd, i])?,
        fc2_b: r.get(&format!("{h}.mlp.fc2.bias"), &[vd])?,
    };
    let vision = r.hf_vision(v, true, None, PoolWeights::AttentionHead(Box::new(head)))?;
    let logit_bias = r.scalar("logit_bias")?;
    Ok((text, vision, logit_bias))
}
