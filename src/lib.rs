//! # cliprt
//!
//! A from-scratch CLIP inference runtime: loads CLIP-family checkpoints (HF CLIP and SigLIP/SigLIP2 folders, and
//! open_clip's format; weights in f32/f16/bf16), tokenizes and preprocesses exactly like their reference library
//! (HF transformers + PIL, open_clip), and runs both towers on the CPU (f32, or bf16 where the CPU has it) or on a CUDA GPU (fp16 with f32 accumulation,
//! cliprt's own kernels compiled at run time by NVRTC; feature `cuda`, on by default).
//!
//! ```no_run
//! use cliprt::{Clip, Device};
//! let clip = Clip::load("clip-vit-base-patch32", Device::Cpu)?;
//! let probs = clip.zero_shot(&["cat.png"], &["cat", "dog", "car"], "a photo of a {}.")?;
//! for (label, p) in &probs[0] {
//!     println!("{label}: {p:.3}");
//! }
//! # Ok::<(), cliprt::Error>(())
//! ```

pub mod backend;
pub mod bench;
pub(crate) mod checksum;
pub mod clip;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decode;
pub mod device;
pub mod engine;
pub mod error;
pub mod files;
pub mod index;
pub mod jpeg;
pub mod limits;
pub mod model;
pub mod npy;
pub mod preprocess;
pub mod resample;
pub mod search;
pub mod similarity;
pub mod tokenizer;
pub mod weights;

pub use clip::{Clip, Embeddings};
pub use config::{Activation, ClipConfig};
pub use cpu::Precision;
pub use engine::{Device, Engine};
pub use error::{Error, Result};
pub use preprocess::AlphaMode;
