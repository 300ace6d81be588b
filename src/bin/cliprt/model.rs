//! The model arguments shared by the subcommands that load one.

use std::path::PathBuf;

use clap::Args;
use cliprt::{AlphaMode, Clip, Device, Result};

#[derive(Args)]
pub struct ModelArgs {
    /// Model folder: HF format (config.json, model.safetensors, tokenizer.json or spiece.model,
    /// [preprocessor_config.json]) or open_clip format (open_clip_config.json, open_clip_model.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// cpu, reference (slow f64 oracle), cuda, cuda:N or cuda-sim.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Drop the alpha channel (OpenAI's transform) instead of compositing onto white (HF's).
    #[arg(long)]
    pub drop_alpha: bool,
    /// GEMM precision: f32; bf16 (needs AVX512_BF16 or AMX; f32 runs elsewhere); i16 (16-bit fixed-point products,
    /// the fast mode of AVX2-only CPUs; f32 runs where it is not faster).
    #[arg(long, default_value = "f32")]
    pub precision: String,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Clip> {
        let device: Device = self.device.parse()?;
        let mut clip = Clip::load_with(&self.model, device, self.precision.parse()?)?;
        if self.drop_alpha {
            clip.set_alpha_mode(AlphaMode::Drop);
        }
        Ok(clip)
    }
}
