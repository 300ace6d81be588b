//! `cliprt info`: this machine's CPU (model, SIMD tier, matrix engines and the engine each precision gets), the
//! CUDA status, and optionally a model folder loaded on a device.

use std::path::PathBuf;

use clap::Args;
use cliprt::cpu::{MatrixEngine, Precision};
use cliprt::{Clip, Device, Error, Result};

#[derive(Args)]
pub struct InfoArgs {
    /// Model folder to describe (HF CLIP or SigLIP).
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, reference, cuda, cuda:N or cuda-sim.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let device: Device = a.device.parse()?;
    print_devices(device);
    if let Device::Cuda(n) = device {
        // The device the user asked for must work: its error is the command's error.
        cuda_status(n)?;
    }
    let Some(model) = a.model else {
        return Ok(());
    };
    let clip = Clip::load(&model, device)?;
    let c = clip.config();
    let (t, v) = (&c.text, &c.vision);
    println!("model:            {}", clip.dir().display());
    println!("family:           {}", c.family.name());
    println!("format:           {}", clip.format());
    println!("parameters:       {}", c.parameter_count());
    println!("stored dtype:     {}", clip.stored_dtype());
    println!("embedding dim:    {}", c.projection_dim);
    println!("logit scale:      {:.4}", clip.logit_scale());
    println!("logit bias:       {:.4}", clip.logit_bias());
    println!("probabilities:    {}", clip.probability());
    println!("vision:           {}", describe(&v.encoder));
    println!(
        "image size:       {} (patch {}, {} tokens)",
        v.image_size,
        v.patch_size,
        v.seq_len()
    );
    println!("text:             {}", describe(&t.encoder));
    println!(
        "context length:   {} (vocab {}, eos id {})",
        t.max_position_embeddings, t.vocab_size, t.eos_token_id
    );
    println!("preprocessing:    {:?}", clip.preprocess_config());
    Ok(())
}

fn describe(e: &cliprt::config::EncoderConfig) -> String {
    format!(
        "{} layers, width {}, {} heads (head dim {}), mlp {}, {}, eps {:e}",
        e.num_layers,
        e.hidden_size,
        e.num_heads,
        e.head_dim(),
        e.intermediate_size,
        e.activation.name(),
        e.layer_norm_eps
    )
}

/// Prints the CPU tier and the CUDA status (the latter never fails here; see `cuda_status`).
fn print_devices(device: Device) {
    let isa = cliprt::cpu::Isa::best();
    let bf16 = if cliprt::cpu::isa::has_avx512_bf16() {
        ", AVX512_BF16"
    } else {
        ""
    };
    println!(
        "cpu:              {} ({} SIMD{bf16}, {} threads)",
        cliprt::cpu::isa::cpu_model_name().unwrap_or_else(|| "unknown model".into()),
        isa.name(),
        rayon::current_num_threads()
    );
    println!(
        "amx:              {}",
        cliprt::cpu::amx::support().describe()
    );
    let engines: Vec<_> = MatrixEngine::available_engines()
        .iter()
        .map(|e| e.name())
        .collect();
    println!("cpu engines:      {}", engines.join(", "));
    for p in [Precision::F32, Precision::Bf16, Precision::I16] {
        let c = cliprt::cpu::engine::choose(isa, p);
        println!(
            "{:<18}{} ({})",
            format!("{} engine:", p.name()),
            c.engine.name(),
            c.reason
        );
    }
    let n = match device {
        Device::Cuda(n) => n,
        _ => 0,
    };
    match cuda_status(n) {
        Ok(line) => println!("cuda:             {line}"),
        Err(Error::DeviceUnavailable(why)) => println!("cuda:             unavailable: {why}"),
        Err(e) => println!("cuda:             unavailable: {e}"),
    }
}

/// One line about CUDA device `n`, or why it is unavailable.
fn cuda_status(n: usize) -> Result<String> {
    #[cfg(feature = "cuda")]
    return cliprt::cuda::status(n);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = n;
        Err(Error::cuda_not_built())
    }
}
