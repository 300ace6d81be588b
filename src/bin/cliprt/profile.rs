//! `cliprt profile`: every CUDA kernel variant at CLIP's shapes, validated, then timed (`cliprt::cuda::profile`).

use clap::Args;
use cliprt::Result;

#[derive(Args)]
pub struct ProfileArgs {
    /// Comma-separated: gemm, attention, layernorm, all.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    op: Vec<String>,
    /// Presets whose shapes are profiled, comma-separated.
    #[arg(long, default_value = "vit-b-32,vit-l-14", value_delimiter = ',')]
    arch: Vec<String>,
    /// Batch sizes, comma-separated (text runs at 77 and 16 tokens per batch).
    #[arg(long, default_value = "1,32,256", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Timed launches per row (the median is reported).
    #[arg(long, default_value_t = 50)]
    reps: usize,
    /// cuda, cuda:N, or cuda-sim (validation only)
    #[arg(long, default_value = "cuda")]
    device: String,
    /// One JSON object per row.
    #[arg(long)]
    json: bool,
}

#[cfg(feature = "cuda")]
pub fn run(a: ProfileArgs) -> Result<()> {
    let ProfileArgs {
        op: ops,
        arch: archs,
        batch: batches,
        reps,
        device,
        json,
    } = a;
    let device: cliprt::Device = device.parse()?;
    let cfg = cliprt::cuda::profile::ProfileConfig {
        device,
        ops,
        archs,
        batches,
        reps,
    };
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or("-".to_string(), f);
    let mut first = true;
    cliprt::cuda::profile::run(&cfg, |r| {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
            return;
        }
        if std::mem::take(&mut first) {
            println!(
                "{:<10} {:<34} {:<7} {:>9} {:>9} {:>9} {:>7} {:>9}  status",
                "op", "shape", "variant", "median ms", "min ms", "rate", "%peak", "×default"
            );
        }
        println!(
            "{:<10} {:<34} {:<7} {:>9} {:>9} {:>9} {:>7} {:>9}  {}",
            r.op,
            r.shape,
            r.variant,
            opt(r.median_ms, |v| format!("{v:.4}")),
            opt(r.min_ms, |v| format!("{v:.4}")),
            opt(r.rate, |v| format!("{v:.1}")),
            opt(r.peak_fraction, |v| format!("{:.1}%", 100.0 * v)),
            opt(r.vs_default, |v| format!("{v:.2}")),
            if r.status == "ok" {
                r.unit.to_string()
            } else {
                format!("{} {}", r.unit, r.status)
            }
        );
    })
}

#[cfg(not(feature = "cuda"))]
pub fn run(_: ProfileArgs) -> Result<()> {
    Err(cliprt::Error::cuda_not_built())
}
