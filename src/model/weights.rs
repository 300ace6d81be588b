//! The weights of a CLIP-family model in f32, family-free: both towers' tensors with the parts a family may lack
//! (class token, pre-LN, patch bias, text head bias) optional and the image pooling as one of two heads. Each family
//! maps its checkpoint key names onto these (src/model/{clip,siglip}.rs); [`ClipWeights::random`] builds seeded
//! random weights at a config's shapes for the bench.

use std::collections::BTreeSet;

use crate::config::{ClipConfig, EncoderConfig, Family, TextConfig, VisionConfig};
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
    /// The projection (CLIP) or head (SigLIP) of the pooled row: `[proj, D]`.
    pub projection: Vec<f32>,
    /// SigLIP's head has a bias; CLIP's projection has none.
    pub projection_bias: Option<Vec<f32>>,
}

/// Vision tower weights.
#[derive(Clone, Debug)]
pub struct VisionWeights {
    /// Conv patch embedding as a linear map: `[D, C·p·p]` (the conv kernel flattened).
    pub patch_embedding: Vec<f32>,
    /// SigLIP's conv has a bias; CLIP's has none.
    pub patch_bias: Option<Vec<f32>>,
    /// CLIP's class token `[D]`; SigLIP has none.
    pub class_embedding: Option<Vec<f32>>,
    pub position_embedding: Vec<f32>, // [seq, D]
    /// CLIP's LayerNorm before the encoder (gamma, beta); SigLIP has none.
    pub pre_ln: Option<(Vec<f32>, Vec<f32>)>,
    pub layers: Vec<LayerWeights>,
    pub post_ln_g: Vec<f32>,
    pub post_ln_b: Vec<f32>,
    pub pool: PoolWeights,
}

/// How the image tower turns its tokens into one embedding.
#[derive(Clone, Debug)]
pub enum PoolWeights {
    /// CLIP: post-LN on the class token, then a projection without bias `[proj, D]`.
    ClassToken { projection: Vec<f32> },
    /// SigLIP: post-LN on every token, then the attention-pooling head.
    AttentionHead(Box<HeadWeights>),
}

/// SigLIP's multihead attention-pooling head: a learned probe attends over the tokens (torch's
/// `nn.MultiheadAttention`), then `h + MLP(LN(h))`. Linear weights are `[out, in]`.
#[derive(Clone, Debug)]
pub struct HeadWeights {
    pub probe: Vec<f32>,     // [D]
    pub in_proj_w: Vec<f32>, // [3D, D]: q, k, v stacked
    pub in_proj_b: Vec<f32>, // [3D]
    pub out_w: Vec<f32>,     // [D, D]
    pub out_b: Vec<f32>,     // [D]
    pub ln_g: Vec<f32>,
    pub ln_b: Vec<f32>,
    pub fc1_w: Vec<f32>, // [I, D]
    pub fc1_b: Vec<f32>, // [I]
    pub fc2_w: Vec<f32>, // [D, I]
    pub fc2_b: Vec<f32>, // [D]
}

/// All weights of a CLIP-family model.
#[derive(Clone, Debug)]
pub struct ClipWeights {
    pub text: TextWeights,
    pub vision: VisionWeights,
    /// The stored log of the logit scale (multiply similarities by its exp).
    pub logit_scale_log: f32,
    /// SigLIP's logit bias (added after the scale); 0 for CLIP.
    pub logit_bias: f32,
    /// The dtype the checkpoint stored its tensors in ("F32", "F16", "BF16", or "mixed").
    pub stored_dtype: String,
}

/// Reads tensors from a checkpoint, remembering which dtypes it used.
pub(crate) struct TensorReader<'a> {
    ckpt: &'a Checkpoint,
    dtypes: BTreeSet<String>,
}

impl<'a> TensorReader<'a> {
    pub(crate) fn new(ckpt: &'a Checkpoint) -> Self {
        TensorReader {
            ckpt,
            dtypes: BTreeSet::new(),
        }
    }

    /// Tensor `name`, which must have `shape`.
    pub(crate) fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (data, dtype) = self.ckpt.read(name, shape)?;
        self.dtypes.insert(format!("{dtype:?}"));
        Ok(data)
    }

    /// A LayerNorm's (weight, bias) under `prefix`.
    pub(crate) fn layernorm(&mut self, prefix: &str, d: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.get(&format!("{prefix}.weight"), &[d])?,
            self.get(&format!("{prefix}.bias"), &[d])?,
        ))
    }

    /// A scalar stored 0-d (HF CLIP) or as one element (SigLIP, open_clip).
    pub(crate) fn scalar(&mut self, name: &str) -> Result<f32> {
        match self.get(name, &[]) {
            Ok(v) => Ok(v[0]),
            Err(Error::TensorShape { got, .. }) if got == [1] => Ok(self.get(name, &[1])?[0]),
            Err(e) => Err(e),
        }
    }

    /// One HF encoder layer (`{prefix}.self_attn.{q,k,v,out}_proj`, `layer_norm{1,2}`, `mlp.fc{1,2}`): the key
    /// names CLIP and SigLIP share.
    pub(crate) fn hf_layer(&mut self, prefix: &str, e: &EncoderConfig) -> Result<LayerWeights> {
        let (d, i) = (e.hidden_size, e.intermediate_size);
        let mut qkv_w = Vec::with_capacity(3 * d * d);
        let mut qkv_b = Vec::with_capacity(3 * d);
        for p in ["q_proj", "k_proj", "v_proj"] {
            qkv_w.extend(self.get(&format!("{prefix}.self_attn.{p}.weight"), &[d, d])?);
            qkv_b.extend(self.get(&format!("{prefix}.self_attn.{p}.bias"), &[d])?);
        }
        let (ln1_g, ln1_b) = self.layernorm(&format!("{prefix}.layer_norm1"), d)?;
        let (ln2_g, ln2_b) = self.layernorm(&format!("{prefix}.layer_norm2"), d)?;
        Ok(LayerWeights {
            qkv_w,
            qkv_b,
            out_w: self.get(&format!("{prefix}.self_attn.out_proj.weight"), &[d, d])?,
            out_b: self.get(&format!("{prefix}.self_attn.out_proj.bias"), &[d])?,
            ln1_g,
            ln1_b,
            ln2_g,
            ln2_b,
            fc1_w: self.get(&format!("{prefix}.mlp.fc1.weight"), &[i, d])?,
            fc1_b: self.get(&format!("{prefix}.mlp.fc1.bias"), &[i])?,
            fc2_w: self.get(&format!("{prefix}.mlp.fc2.weight"), &[d, i])?,
            fc2_b: self.get(&format!("{prefix}.mlp.fc2.bias"), &[d])?,
        })
    }

    /// An HF text tower (`text_model.*`, the names CLIP and SigLIP share) with its projection or head.
    pub(crate) fn hf_text(
        &mut self,
        t: &TextConfig,
        projection: Vec<f32>,
        projection_bias: Option<Vec<f32>>,
    ) -> Result<TextWeights> {
        let d = t.encoder.hidden_size;
        let (final_ln_g, final_ln_b) = self.layernorm("text_model.final_layer_norm", d)?;
        Ok(TextWeights {
            token_embedding: self.get(
                "text_model.embeddings.token_embedding.weight",
                &[t.vocab_size, d],
            )?,
            position_embedding: self.get(
                "text_model.embeddings.position_embedding.weight",
                &[t.max_position_embeddings, d],
            )?,
            layers: self.hf_layers("text_model", &t.encoder)?,
            final_ln_g,
            final_ln_b,
            projection,
            projection_bias,
        })
    }

    /// An HF vision tower (`vision_model.*`, the names CLIP and SigLIP share): patch embedding, position embedding,
    /// encoder and post-LN, with the family's own parts given: whether the patch conv has a bias (SigLIP), the class
    /// token (CLIP), the pre-LN's key (CLIP's `pre_layrnorm`) and the pooling.
    pub(crate) fn hf_vision(
        &mut self,
        v: &VisionConfig,
        patch_bias: bool,
        pre_ln: Option<&str>,
        pool: PoolWeights,
    ) -> Result<VisionWeights> {
        let d = v.encoder.hidden_size;
        let e = "vision_model.embeddings";
        let (post_ln_g, post_ln_b) = self.layernorm("vision_model.post_layernorm", d)?;
        Ok(VisionWeights {
            patch_embedding: self.get(
                &format!("{e}.patch_embedding.weight"),
                &[d, v.num_channels, v.patch_size, v.patch_size],
            )?,
            patch_bias: match patch_bias {
                true => Some(self.get(&format!("{e}.patch_embedding.bias"), &[d])?),
                false => None,
            },
            class_embedding: match v.class_token {
                true => Some(self.get(&format!("{e}.class_embedding"), &[d])?),
                false => None,
            },
            position_embedding: self
                .get(&format!("{e}.position_embedding.weight"), &[v.seq_len(), d])?,
            pre_ln: pre_ln.map(|key| self.layernorm(key, d)).transpose()?,
            layers: self.hf_layers("vision_model", &v.encoder)?,
            post_ln_g,
            post_ln_b,
            pool,
        })
    }

    /// Every HF encoder layer of a tower (`{tower}.encoder.layers.N`).
    pub(crate) fn hf_layers(
        &mut self,
        tower: &str,
        e: &EncoderConfig,
    ) -> Result<Vec<LayerWeights>> {
        (0..e.num_layers)
            .map(|l| self.hf_layer(&format!("{tower}.encoder.layers.{l}"), e))
            .collect()
    }

    /// The one dtype every tensor read was stored in, or "mixed".
    pub(crate) fn stored_dtype(&self) -> String {
        match self.dtypes.len() {
            1 => self.dtypes.iter().next().cloned().unwrap_or_default(),
            _ => "mixed".to_string(),
        }
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
    /// A `[n, k]` weight scaled by 1/√k (activations keep their magnitude) and its bias.
    fn linear(&mut self, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        (self.vec(n * k, 1.0 / (k as f32).sqrt()), self.vec(n, 0.1))
    }
    fn layer(&mut self, e: &EncoderConfig) -> LayerWeights {
        let (d, i) = (e.hidden_size, e.intermediate_size);
        let (qkv_w, qkv_b) = self.linear(3 * d, d);
        let (out_w, out_b) = self.linear(d, d);
        let (fc1_w, fc1_b) = self.linear(i, d);
        let (fc2_w, fc2_b) = self.linear(d, i);
        LayerWeights {
            qkv_w,
            qkv_b,
            out_w,
            out_b,
            ln1_g: vec![1.0; d],
            ln1_b: vec![0.0; d],
            ln2_g: vec![1.0; d],
            ln2_b: vec![0.0; d],
            fc1_w,
            fc1_b,
            fc2_w,
            fc2_b,
        }
    }
}

impl ClipWeights {
    /// Seeded random weights at `config`'s shapes (uniform, scaled by 1/√fan_in), for benchmarks that need real
    /// shapes but no download. The embeddings are meaningless; the work is the real model's.
    pub fn random(config: &ClipConfig, seed: u64) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (t, v) = (&config.text, &config.vision);
        let (td, vd, p) = (
            t.encoder.hidden_size,
            v.encoder.hidden_size,
            config.projection_dim,
        );
        let siglip = config.family == Family::Siglip;
        let text_layers = (0..t.encoder.num_layers)
            .map(|_| rng.layer(&t.encoder))
            .collect();
        let vision_layers = (0..v.encoder.num_layers)
            .map(|_| rng.layer(&v.encoder))
            .collect();
        let (projection, bias) = rng.linear(p, td);
        let text = TextWeights {
            token_embedding: rng.vec(t.vocab_size * td, 0.5),
            position_embedding: rng.vec(t.max_position_embeddings * td, 0.5),
            layers: text_layers,
            final_ln_g: vec![1.0; td],
            final_ln_b: vec![0.0; td],
            projection,
            projection_bias: siglip.then_some(bias),
        };
        let (patch_embedding, patch_bias) = rng.linear(vd, v.patch_dim());
        let pool = if siglip {
            let i = v.encoder.intermediate_size;
            let (in_proj_w, in_proj_b) = rng.linear(3 * vd, vd);
            let (out_w, out_b) = rng.linear(vd, vd);
            let (fc1_w, fc1_b) = rng.linear(i, vd);
            let (fc2_w, fc2_b) = rng.linear(vd, i);
            PoolWeights::AttentionHead(Box::new(HeadWeights {
                probe: rng.vec(vd, 0.5),
                in_proj_w,
                in_proj_b,
                out_w,
                out_b,
                ln_g: vec![1.0; vd],
                ln_b: vec![0.0; vd],
                fc1_w,
                fc1_b,
                fc2_w,
                fc2_b,
            }))
        } else {
            PoolWeights::ClassToken {
                projection: rng.linear(p, vd).0,
            }
        };
        let vision = VisionWeights {
            patch_embedding,
            patch_bias: siglip.then_some(patch_bias),
            class_embedding: v.class_token.then(|| rng.vec(vd, 0.5)),
            position_embedding: rng.vec(v.seq_len() * vd, 0.5),
            pre_ln: (!siglip).then(|| (vec![1.0; vd], vec![0.0; vd])),
            layers: vision_layers,
            post_ln_g: vec![1.0; vd],
            post_ln_b: vec![0.0; vd],
            pool,
        };
        ClipWeights {
            text,
            vision,
            // CLIP's trained scale (100) and SigLIP's initial bias (−10).
            logit_scale_log: (if siglip { 10.0f32 } else { 100.0 }).ln(),
            logit_bias: if siglip { -10.0 } else { 0.0 },
            stored_dtype: "F32".into(),
        }
    }
}
