//! The CLIP family's open_clip key names (`open_clip_model.safetensors`): `visual.conv1`, `visual.class_embedding`,
//! `visual.positional_embedding`, `visual.ln_pre`, `visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias,
//! attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj, ls_1.gamma, ls_2.gamma}`, `visual.ln_post`, `visual.proj` (stored
//! `[width, embed_dim]`), and the text tower's `token_embedding`, `positional_embedding`, `transformer.resblocks.N`,
//! `ln_final`, `text_projection` (at the top level, or under `text.` for CustomTextCLIP), `logit_scale`.

use super::weights::{PoolWeights, TensorReader, TextWeights, VisionWeights};
use crate::config::{ClipConfig, EncoderConfig, OpenClipLayout};
use crate::error::Result;
use crate::weights::LayerWeights;

/// One residual block. Layer scale (`ls_1`, `ls_2`: a per-channel gamma on the attention and MLP outputs) is folded
/// into the out-projection and `c_proj` at load: γ⊙(Wx + b) = (diag(γ)·W)x + γ⊙b, so the encoder runs unchanged
/// (one extra f32 rounding of each weight, ≤ 2⁻²⁴ relative).
fn block(
    r: &mut TensorReader,
    prefix: &str,
    e: &EncoderConfig,
    layer_scale: bool,
) -> Result<LayerWeights> {
    let (d, i) = (e.hidden_size, e.intermediate_size);
    let (ln1_g, ln1_b) = r.layernorm(&format!("{prefix}.ln_1"), d)?;
    let (ln2_g, ln2_b) = r.layernorm(&format!("{prefix}.ln_2"), d)?;
    let mut w = LayerWeights {
        // in_proj_weight stacks q, k and v exactly as the fused QKV GEMM wants them.
        qkv_w: r.get(&format!("{prefix}.attn.in_proj_weight"), &[3 * d, d])?,
        qkv_b: r.get(&format!("{prefix}.attn.in_proj_bias"), &[3 * d])?,
        out_w: r.get(&format!("{prefix}.attn.out_proj.weight"), &[d, d])?,
        out_b: r.get(&format!("{prefix}.attn.out_proj.bias"), &[d])?,
        ln1_g,
        ln1_b,
        ln2_g,
        ln2_b,
        fc1_w: r.get(&format!("{prefix}.mlp.c_fc.weight"), &[i, d])?,
        fc1_b: r.get(&format!("{prefix}.mlp.c_fc.bias"), &[i])?,
        fc2_w: r.get(&format!("{prefix}.mlp.c_proj.weight"), &[d, i])?,
        fc2_b: r.get(&format!("{prefix}.mlp.c_proj.bias"), &[d])?,
    };
    if layer_scale {
        let g1 = r.get(&format!("{prefix}.ls_1.gamma"), &[d])?;
        let g2 = r.get(&format!("{prefix}.ls_2.gamma"), &[d])?;
        scale_rows(&mut w.out_w, &mut w.out_b, &g1);
        scale_rows(&mut w.fc2_w, &mut w.fc2_b, &g2);
    }
    Ok(w)
}

/// `W[j, :] *= γ[j]`, `b[j] *= γ[j]`.
fn scale_rows(w: &mut [f32], b: &mut [f32], gamma: &[f32]) {
    let cols = w.len() / gamma.len().max(1);
    for ((row, bias), &g) in w.chunks_exact_mut(cols).zip(b.iter_mut()).zip(gamma) {
        row.iter_mut().for_each(|v| *v *= g);
        *bias *= g;
    }
}

/// `[rows, cols]` → `[cols, rows]` (open_clip stores its projections input-major: `x @ proj`).
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

/// Both towers of an open_clip checkpoint.
pub(crate) fn read_open_clip(
    r: &mut TensorReader,
    config: &ClipConfig,
    layout: OpenClipLayout,
) -> Result<(TextWeights, VisionWeights)> {
    let (t, v, p) = (&config.text, &config.vision, config.projection_dim);
    let (tw, vw) = (t.encoder.hidden_size, v.encoder.hidden_size);
    let tp = if layout.custom_text { "text." } else { "" };
    let text_layers = (0..t.encoder.num_layers)
        .map(|l| {
            block(
                r,
                &format!("{tp}transformer.resblocks.{l}"),
                &t.encoder,
                layout.text_layer_scale,
            )
        })
        .collect::<Result<_>>()?;
    let (final_ln_g, final_ln_b) = r.layernorm(&format!("{tp}ln_final"), tw)?;
    let (projection, projection_bias) = if layout.text_proj_bias {
        (
            r.get(&format!("{tp}text_projection.weight"), &[p, tw])?,
            Some(r.get(&format!("{tp}text_projection.bias"), &[p])?),
        )
    } else {
        (
            transpose(&r.get(&format!("{tp}text_projection"), &[tw, p])?, tw, p),
            None,
        )
    };
    let text = TextWeights {
        token_embedding: r.get(&format!("{tp}token_embedding.weight"), &[t.vocab_size, tw])?,
        position_embedding: r.get(
            &format!("{tp}positional_embedding"),
            &[t.max_position_embeddings, tw],
        )?,
        layers: text_layers,
        final_ln_g,
        final_ln_b,
        projection,
        projection_bias,
    };
    let vision_layers = (0..v.encoder.num_layers)
        .map(|l| {
            block(
                r,
                &format!("visual.transformer.resblocks.{l}"),
                &v.encoder,
                layout.vision_layer_scale,
            )
        })
        .collect::<Result<_>>()?;
    let (post_ln_g, post_ln_b) = r.layernorm("visual.ln_post", vw)?;
    let vision = VisionWeights {
        patch_embedding: r.get(
            "visual.conv1.weight",
            &[vw, v.num_channels, v.patch_size, v.patch_size],
        )?,
        patch_bias: None,
        class_embedding: Some(r.get("visual.class_embedding", &[vw])?),
        position_embedding: r.get("visual.positional_embedding", &[v.seq_len(), vw])?,
        pre_ln: Some(r.layernorm("visual.ln_pre", vw)?),
        layers: vision_layers,
        post_ln_g,
        post_ln_b,
        pool: PoolWeights::ClassToken {
            projection: transpose(&r.get("visual.proj", &[vw, p])?, vw, p),
        },
    };
    Ok((text, vision))
}
