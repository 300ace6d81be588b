//! The CLIP family's weights: the HF key names of every tensor of both towers, read from a [`Checkpoint`] with
//! their shapes checked against the config, or seeded random weights at the real shapes (the bench).

use std::collections::BTreeSet;

use crate::config::{ClipConfig, EncoderConfig};
use crate::error::{Error, Result};
use crate::weights::{Checkpoint, LayerWeights};

/// Text tower weights.
#[derive(Clone, Debug)]
pub struct TextWeights {
    pub token_embedding: Vec<f32>,    // [V, D]
    pub position_embedding: Vec<f32>, // [P, D]
    pub layers: Vec<LayerWeights>,
    pub final_ln_g: Vec<f32>,
    pub final_ln_b: Vec<f32>,
    pub projection: Vec<f32>, // [proj, D], no bias
}

/// Vision tower weights.
#[derive(Clone, Debug)]
pub struct VisionWeights {
    /// Conv patch embedding as a linear map: `[D, C·p·p]` (the conv kernel flattened), no bias.
    pub patch_embedding: Vec<f32>,
    pub class_embedding: Vec<f32>,    // [D]
    pub position_embedding: Vec<f32>, // [N+1, D]
    pub pre_ln_g: Vec<f32>,
    pub pre_ln_b: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub post_ln_g: Vec<f32>,
    pub post_ln_b: Vec<f32>,
    pub projection: Vec<f32>, // [proj, D], no bias
}

/// All weights of a CLIP model in f32, HF layout.
#[derive(Clone, Debug)]
pub struct ClipWeights {
    pub text: TextWeights,
    pub vision: VisionWeights,
    /// The stored log of the logit scale (multiply similarities by its exp).
    pub logit_scale_log: f32,
    /// The dtype the checkpoint stored its tensors in ("F32", "F16", "BF16", or "mixed").
    pub stored_dtype: String,
}

/// Collects tensors while remembering which dtypes the checkpoint used.
struct Reader<'a> {
    ckpt: &'a Checkpoint,
    dtypes: BTreeSet<String>,
}

impl Reader<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (data, dtype) = self.ckpt.read(name, shape)?;
        self.dtypes.insert(format!("{dtype:?}"));
        Ok(data)
    }

    fn layer(&mut self, prefix: &str, e: &EncoderConfig) -> Result<LayerWeights> {
        let (d, i) = (e.hidden_size, e.intermediate_size);
        let mut qkv_w = Vec::with_capacity(3 * d * d);
        let mut qkv_b = Vec::with_capacity(3 * d);
        for p in ["q_proj", "k_proj", "v_proj"] {
            qkv_w.extend(self.get(&format!("{prefix}.self_attn.{p}.weight"), &[d, d])?);
            qkv_b.extend(self.get(&format!("{prefix}.self_attn.{p}.bias"), &[d])?);
        }
        Ok(LayerWeights {
            qkv_w,
            qkv_b,
            out_w: self.get(&format!("{prefix}.self_attn.out_proj.weight"), &[d, d])?,
            out_b: self.get(&format!("{prefix}.self_attn.out_proj.bias"), &[d])?,
            ln1_g: self.get(&format!("{prefix}.layer_norm1.weight"), &[d])?,
            ln1_b: self.get(&format!("{prefix}.layer_norm1.bias"), &[d])?,
            ln2_g: self.get(&format!("{prefix}.layer_norm2.weight"), &[d])?,
            ln2_b: self.get(&format!("{prefix}.layer_norm2.bias"), &[d])?,
            fc1_w: self.get(&format!("{prefix}.mlp.fc1.weight"), &[i, d])?,
            fc1_b: self.get(&format!("{prefix}.mlp.fc1.bias"), &[i])?,
            fc2_w: self.get(&format!("{prefix}.mlp.fc2.weight"), &[d, i])?,
            fc2_b: self.get(&format!("{prefix}.mlp.fc2.bias"), &[d])?,
        })
    }

    fn layers(&mut self, tower: &str, e: &EncoderConfig) -> Result<Vec<LayerWeights>> {
        (0..e.num_layers)
            .map(|l| self.layer(&format!("{tower}.encoder.layers.{l}"), e))
            .collect()
    }
}

impl ClipWeights {
    /// Reads every tensor the model needs from `ckpt`, checking shapes against `config`. Extra tensors (such as
    /// `position_ids` buffers) are ignored.
    pub fn from_checkpoint(ckpt: &Checkpoint, config: &ClipConfig) -> Result<Self> {
        let mut r = Reader {
            ckpt,
            dtypes: BTreeSet::new(),
        };
        let t = &config.text;
        let td = t.encoder.hidden_size;
        let text = TextWeights {
            token_embedding: r.get(
                "text_model.embeddings.token_embedding.weight",
                &[t.vocab_size, td],
            )?,
            position_embedding: r.get(
                "text_model.embeddings.position_embedding.weight",
                &[t.max_position_embeddings, td],
            )?,
            layers: r.layers("text_model", &t.encoder)?,
            final_ln_g: r.get("text_model.final_layer_norm.weight", &[td])?,
            final_ln_b: r.get("text_model.final_layer_norm.bias", &[td])?,
            projection: r.get("text_projection.weight", &[config.projection_dim, td])?,
        };
        let v = &config.vision;
        let vd = v.encoder.hidden_size;
        let vision = VisionWeights {
            patch_embedding: r.get(
                "vision_model.embeddings.patch_embedding.weight",
                &[vd, v.num_channels, v.patch_size, v.patch_size],
            )?,
            class_embedding: r.get("vision_model.embeddings.class_embedding", &[vd])?,
            position_embedding: r.get(
                "vision_model.embeddings.position_embedding.weight",
                &[v.seq_len(), vd],
            )?,
            // HF spells the pre-LayerNorm key "pre_layrnorm".
            pre_ln_g: r.get("vision_model.pre_layrnorm.weight", &[vd])?,
            pre_ln_b: r.get("vision_model.pre_layrnorm.bias", &[vd])?,
            layers: r.layers("vision_model", &v.encoder)?,
            post_ln_g: r.get("vision_model.post_layernorm.weight", &[vd])?,
            post_ln_b: r.get("vision_model.post_layernorm.bias", &[vd])?,
            projection: r.get("visual_projection.weight", &[config.projection_dim, vd])?,
        };
        // logit_scale is a 0-d tensor in HF checkpoints; accept a 1-element vector too.
        let logit_scale_log = match r.get("logit_scale", &[]) {
            Ok(v) => v[0],
            Err(Error::TensorShape { got, .. }) if got == [1] => r.get("logit_scale", &[1])?[0],
            Err(e) => return Err(e),
        };
        // exp(88.7) overflows f32: every logit would be infinite, every probability NaN.
        if !logit_scale_log.exp().is_finite() {
            return Err(Error::NonFinite(format!(
                "logit_scale {logit_scale_log} (its exp overflows f32)"
            )));
        }
        let stored_dtype = if r.dtypes.len() == 1 {
            r.dtypes.into_iter().next().unwrap_or_default()
        } else {
            "mixed".to_string()
        };
        Ok(ClipWeights {
            text,
            vision,
            logit_scale_log,
            stored_dtype,
        })
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), for synthetic weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.next() * scale).collect()
    }
}

impl ClipWeights {
    /// Seeded random weights at `config`'s shapes (uniform, scaled by 1/√fan_in), for benchmarks that need real
    /// shapes but no download. The embeddings are meaningless; the work is the real model's.
    pub fn random(config: &ClipConfig, seed: u64) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut layer = |e: &EncoderConfig| {
            let (d, i) = (e.hidden_size, e.intermediate_size);
            let (sd, si) = (1.0 / (d as f32).sqrt(), 1.0 / (i as f32).sqrt());
            LayerWeights {
                qkv_w: rng.vec(3 * d * d, sd),
                qkv_b: rng.vec(3 * d, 0.1),
                out_w: rng.vec(d * d, sd),
                out_b: rng.vec(d, 0.1),
                ln1_g: vec![1.0; d],
                ln1_b: vec![0.0; d],
                ln2_g: vec![1.0; d],
                ln2_b: vec![0.0; d],
                fc1_w: rng.vec(i * d, sd),
                fc1_b: rng.vec(i, 0.1),
                fc2_w: rng.vec(d * i, si),
                fc2_b: rng.vec(d, 0.1),
            }
        };
        let (t, v) = (&config.text, &config.vision);
        let (td, vd, p) = (
            t.encoder.hidden_size,
            v.encoder.hidden_size,
            config.projection_dim,
        );
        let text_layers = (0..t.encoder.num_layers)
            .map(|_| layer(&t.encoder))
            .collect();
        let vision_layers = (0..v.encoder.num_layers)
            .map(|_| layer(&v.encoder))
            .collect();
        ClipWeights {
            text: TextWeights {
                token_embedding: rng.vec(t.vocab_size * td, 0.5),
                position_embedding: rng.vec(t.max_position_embeddings * td, 0.5),
                layers: text_layers,
                final_ln_g: vec![1.0; td],
                final_ln_b: vec![0.0; td],
                projection: rng.vec(p * td, 1.0 / (td as f32).sqrt()),
            },
            vision: VisionWeights {
                patch_embedding: rng.vec(vd * v.patch_dim(), 1.0 / (v.patch_dim() as f32).sqrt()),
                class_embedding: rng.vec(vd, 0.5),
                position_embedding: rng.vec(v.seq_len() * vd, 0.5),
                pre_ln_g: vec![1.0; vd],
                pre_ln_b: vec![0.0; vd],
                layers: vision_layers,
                post_ln_g: vec![1.0; vd],
                post_ln_b: vec![0.0; vd],
                projection: rng.vec(p * vd, 1.0 / (vd as f32).sqrt()),
            },
            logit_scale_log: (100.0f32).ln(),
            stored_dtype: "F32".into(),
        }
    }
}
