//! Reading checkpoints: safetensors over mmap (single file or sharded), dtype and shape checks, and conversion to
//! f32 host tensors, plus the tensor set of one encoder layer that every family shares. Each model family maps its
//! own key names onto these (the CLIP family: src/model/clip/weights.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

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
