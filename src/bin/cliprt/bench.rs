//! `cliprt bench`: the table (or JSON lines) of `cliprt::bench::run`.

use std::path::PathBuf;

use clap::Args;
use cliprt::Result;

#[derive(Args)]
pub struct BenchArgs {
    /// Preset for the synthetic model: vit-b-32, vit-b-16, vit-l-14, vit-l-14-336, vit-h-14, vit-bigg-14 (CLIP),
    /// siglip-b-16, siglip-so400m-14-384 (SigLIP).
    #[arg(long, default_value = "vit-b-32")]
    arch: String,
    /// A real checkpoint folder (HF or open_clip format) instead of a synthetic model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Comma-separated: image, text, similarity, search (search needs no model: a random gallery).
    #[arg(long, default_value = "image,text", value_delimiter = ',')]
    workload: Vec<String>,
    /// Search: gallery rows, comma-separated.
    #[arg(long, default_value = "100000", value_delimiter = ',')]
    gallery: Vec<usize>,
    /// Search: embedding width, comma-separated.
    #[arg(long, default_value = "512", value_delimiter = ',')]
    dim: Vec<usize>,
    /// Search: queries per search (the items of items/s), comma-separated.
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    queries: Vec<usize>,
    /// Search: results per query, comma-separated.
    #[arg(long, default_value = "10", value_delimiter = ',')]
    k: Vec<usize>,
    /// Comma-separated batch sizes.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Text rows of exactly N tokens (SOT and EOT included) instead of the built-in real prompts.
    #[arg(long)]
    prompt_len: Option<usize>,
    /// cpu, reference or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32; bf16 (bf16 GEMMs with f32 accumulation; needs AVX512_BF16 or AMX); i16 (16-bit fixed-point GEMMs, AVX2
    /// CPUs). Where the engine is missing or not faster, f32 runs and is reported.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Untimed runs per measurement.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// The machine's peak GFLOP/s for the %peak column (default: measured with an FMA loop).
    #[arg(long)]
    peak_gflops: Option<f64>,
    /// One JSON object per line per measurement instead of a table.
    #[arg(long)]
    json: bool,
    /// Also time the CPU backend's ops (GEMMs by precision, attention, LayerNorm) over --reps more runs of each
    /// image and text measurement, and show each class's share of the time, its GFLOP/s and its fraction of its
    /// unit's peak (JSON: `ops`).
    #[arg(long)]
    breakdown: bool,
    /// What the bench may allocate, in GB, estimated before it starts; larger sweeps are refused (default: half the
    /// physical memory, at least 2 GiB).
    #[arg(long)]
    max_memory_gb: Option<f64>,
}

/// The library's bench configuration of these arguments, with `--json` and whether a peak was given.
pub fn config(a: BenchArgs) -> Result<(cliprt::bench::BenchConfig, bool, bool)> {
    let BenchArgs {
        arch,
        model,
        workload,
        gallery,
        dim,
        queries,
        k,
        batch,
        prompt_len,
        device,
        precision,
        warmup,
        reps,
        peak_gflops,
        json,
        breakdown,
        max_memory_gb,
    } = a;
    let max_memory = match max_memory_gb {
        None => cliprt::limits::bench_memory_bytes(),
        Some(gb) if gb.is_finite() && gb > 0.0 => (gb * 1e9).min(u64::MAX as f64) as u64,
        Some(gb) => {
            return Err(cliprt::Error::InvalidArgument(format!(
                "--max-memory-gb {gb}: expected a positive number"
            )))
        }
    };
    let cfg = cliprt::bench::BenchConfig {
        arch,
        model,
        workloads: workload.iter().map(|w| w.parse()).collect::<Result<_>>()?,
        batches: batch,
        prompt_len,
        device: device.parse()?,
        precision: precision.parse()?,
        warmup,
        reps,
        peak_gflops,
        search: cliprt::bench::SearchSizes {
            galleries: gallery,
            dims: dim,
            queries,
            ks: k,
        },
        max_memory,
        breakdown,
    };
    Ok((cfg, json, peak_gflops.is_some()))
}

pub fn run(a: BenchArgs) -> Result<()> {
    let (cfg, json, peak_given) = config(a)?;
    let mut first = true;
    cliprt::bench::run(&cfg, |m| {
        if json {
            println!("{}", serde_json::to_string(m).unwrap_or_default());
            return;
        }
        if first {
            first = false;
            println!(
                "cliprt {} on {} ({}, engine {}, {} threads, peak {:.0} GFLOP/s {}); \
                 model built in {:.2} s, weights {:.0} MB f32",
                env!("CARGO_PKG_VERSION"),
                m.device,
                m.isa,
                m.engine,
                m.threads,
                m.peak_gflops,
                if peak_given { "given" } else { "measured" },
                m.load_s,
                m.weights_mb
            );
            if !m.engine_reason.is_empty() {
                println!("engine {}: {}", m.engine, m.engine_reason);
            }
            println!("{}", cliprt::bench::table_header());
        }
        println!("{}", cliprt::bench::table_row(m));
    })?;
    if !json {
        if let Some(mb) = cliprt::bench::peak_rss_mb() {
            println!("peak memory (RSS): {mb:.0} MB");
        }
    }
    Ok(())
}
