//! Reading a CLIP checkpoint: safetensors over mmap (single file or sharded), the table of HF key names, dtype and
//! shape checks, and conversion to f32 host tensors. Backends then lay the weights out as they prefer.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::{ClipConfig, EncoderConfig};
use crate::error::{Error, Result};

/// An f32 host tensor with its shape (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The weights of one pre-LN encoder layer, in HF layout: linear weights are `[out, in]`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// q, k and v projections stacked: `[3·D, D]` (fused at load so attention inputs come from one GEMM).
    pub qkv_w: Vec<f32>,
    pub qkv_b: Vec<f32>, // [3·D]
    pub out_w: Vec<f32>, // [D, D]
    pub out_b: Vec<f32>, // [D]
    pub ln1_g: Vec<f32>,
    pub ln1_b: Vec<f32>,
    pub ln2_g: Vec<f32>,
    pub ln2_b: Vec<f32>,
    pub fc1_w: Vec<f32>, // [I, D]
    pub fc1_b: Vec<f32>, // [I]
    pub fc2_w: Vec<f32>, // [D, I]
    pub fc2_b: Vec<f32>, // [D]
}

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

/// One tensor source: a set of mmapped safetensors files and which file holds which key.
pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    index: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`, in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            shard_paths(dir, &index_path)?
        } else if dir.join("pytorch_model.bin").is_file() {
            return Err(Error::MissingFile {
                dir: dir.to_path_buf(),
                file: "model.safetensors",
                hint: " (only pytorch_model.bin is present: convert it to safetensors, e.g. \
                       `CLIPModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`)",
            });
        } else {
            return Err(Error::MissingFile {
                dir: dir.to_path_buf(),
                file: "model.safetensors",
                hint: "",
            });
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut index = BTreeMap::new();
        for path in paths {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the map is read-only; cliprt never writes to checkpoint files while a model is loaded.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Safetensors {
                path: path.clone(),
                msg: e.to_string(),
            })?;
            for name in st.names() {
                index.insert(name.to_string(), files.len());
            }
            files.push((path, mmap));
        }
        Ok(Checkpoint { files, index })
    }

    /// Names of all tensors in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Reads tensor `name` as f32, checking that its shape is `expected`. Returns its stored dtype too.
    pub fn read(&self, name: &str, expected: &[usize]) -> Result<(Vec<f32>, Dtype)> {
        let &file = self
            .index
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let (path, mmap) = &self.files[file];
        // Deserializing again only parses the (already validated) JSON header; tensor data stays in the map.
        let st = SafeTensors::deserialize(mmap).map_err(|e| Error::Safetensors {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let view = st
            .tensor(name)
            .map_err(|_| Error::MissingTensor(name.to_string()))?;
        if view.shape() != expected {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                got: view.shape().to_vec(),
            });
        }
        let bytes = view.data();
        // pod_collect_to_vec copies, so unaligned data in arbitrary files is fine.
        let data = match view.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(bytes),
            Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(bytes)
                .into_iter()
                .map(f16::to_f32)
                .collect(),
            Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(bytes)
                .into_iter()
                .map(bf16::to_f32)
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok((data, view.dtype()))
    }
}

fn shard_paths(dir: &Path, index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(index_path, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| Error::config(index_path, "missing object `weight_map`"))?;
    let mut shards = BTreeSet::new();
    for (key, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::config(index_path, format!("weight_map[{key}] is not a file name"))
        })?;
        // A shard must be a plain file name inside the model folder.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(Error::config(
                index_path,
                format!("shard name {file:?} is not a plain file name"),
            ));
        }
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        return Err(Error::config(index_path, "weight_map lists no shards"));
    }
    Ok(shards.into_iter().map(|f| dir.join(f)).collect())
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
