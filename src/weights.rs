//! Reading checkpoints: safetensors files (single or sharded), dtype and shape checks, and conversion to f32 host
//! tensors, plus the tensor set of one encoder layer that every family shares. Each model family maps its own key
//! names onto these (the CLIP family: src/model/clip/weights.rs).
//!
//! The files are read, not memory-mapped: every tensor is converted to f32 at load anyway, so a mapping saves no
//! copy, and a mapped file truncated by another process while it loads would kill cliprt with SIGBUS where a read
//! returns an error. Each tensor is read on its own (positioned reads), so the load's peak memory is the converted
//! weights plus one tensor's bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

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

/// One tensor source: a set of safetensors files and where in which file each tensor lies.
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    index: BTreeMap<String, (usize, TensorInfo)>,
}

/// One open safetensors file: its validated header was read, its tensors are read on demand.
struct SafetensorsFile {
    path: PathBuf,
    file: File,
    /// Where the tensor data starts (after the length prefix and the JSON header).
    data_at: u64,
}

/// safetensors' own bound on the JSON header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

impl SafetensorsFile {
    /// Opens `path` and reads and checks its header: every tensor's byte range matches its dtype and shape and
    /// lies inside the file.
    fn open(path: &Path) -> Result<(SafetensorsFile, Metadata)> {
        let bad = |msg: String| Error::Safetensors {
            path: path.to_path_buf(),
            msg,
        };
        let file = crate::files::open_regular(path)?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut prefix = [0u8; 8];
        crate::files::read_exact_at(&file, &mut prefix, 0)
            .map_err(|_| bad(format!("{file_len} bytes, too short for a header")))?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            return Err(bad(format!(
                "header of {header_len} bytes does not fit the file ({file_len} bytes)"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        crate::files::read_exact_at(&file, &mut header, 8).map_err(|e| Error::io(path, e))?;
        let meta: Metadata = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("header is not valid safetensors JSON: {e}")))?;
        let data_len = file_len - 8 - header_len;
        for (name, info) in meta.tensors() {
            let (start, end) = info.data_offsets;
            let want = info
                .shape
                .iter()
                .try_fold(info.dtype.bitsize(), |n, &d| n.checked_mul(d))
                .map(|bits| bits.div_ceil(8));
            if start > end || end as u64 > data_len || want != Some(end - start) {
                return Err(bad(format!(
                    "tensor `{name}`: bytes {start}..{end} do not hold a {:?} {:?} inside the {data_len} data bytes",
                    info.dtype, info.shape
                )));
            }
        }
        let f = SafetensorsFile {
            path: path.to_path_buf(),
            file,
            data_at: 8 + header_len,
        };
        Ok((f, meta))
    }

    /// The bytes of one tensor whose range the header check accepted.
    fn bytes(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let (start, end) = info.data_offsets;
        let mut out = vec![0u8; end - start];
        crate::files::read_exact_at(&self.file, &mut out, self.data_at + start as u64).map_err(
            |e| Error::Safetensors {
                path: self.path.clone(),
                msg: format!("reading tensor data: {e} (was the file truncated while loading?)"),
            },
        )?;
        Ok(out)
    }
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`, in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
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
        Checkpoint::from_paths(paths)
    }

    /// Opens open_clip's `open_clip_model.safetensors` in `dir`.
    pub fn open_open_clip(dir: &Path) -> Result<Self> {
        let path = dir.join("open_clip_model.safetensors");
        if !path.exists() {
            let pickled = ["open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth"]
                .iter()
                .any(|f| dir.join(f).is_file());
            return Err(Error::MissingFile {
                dir: dir.to_path_buf(),
                file: "open_clip_model.safetensors",
                hint: if pickled {
                    " (only a pickled open_clip checkpoint is present: convert it to safetensors, e.g. \
                     `safetensors.torch.save_file(torch.load(path), \"open_clip_model.safetensors\")`)"
                } else {
                    ""
                },
            });
        }
        Checkpoint::from_paths(vec![path])
    }

    /// Opens safetensors files as one tensor source.
    fn from_paths(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = BTreeMap::new();
        for path in paths {
            let (file, meta) = SafetensorsFile::open(&path)?;
            for (name, info) in meta.tensors() {
                index.insert(name, (files.len(), info.clone()));
            }
            files.push(file);
        }
        Ok(Checkpoint { files, index })
    }

    /// Names of all tensors in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Reads tensor `name` as f32, checking that its shape is `expected`. Returns its stored dtype too.
    pub fn read(&self, name: &str, expected: &[usize]) -> Result<(Vec<f32>, Dtype)> {
        let (file, info) = self
            .index
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if info.shape != expected {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: expected.to_vec(),
                got: info.shape.clone(),
            });
        }
        let bytes = &self.files[*file].bytes(info)?[..];
        // pod_collect_to_vec copies, so unaligned data in arbitrary files is fine.
        let data = match info.dtype {
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
        // A NaN or infinite weight makes every embedding non-finite (or, worse, silently finite on a kernel that
        // drops NaN): refuse the checkpoint at load, naming the tensor.
        if data.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "tensor `{name}` of the checkpoint"
            )));
        }
        Ok((data, info.dtype))
    }
}

fn shard_paths(dir: &Path, index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = crate::files::read_json_text(index_path)?;
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
