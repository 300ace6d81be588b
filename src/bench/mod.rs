//! Throughput measurement behind `cliprt bench`: the configuration, the measurement record, timing and the table.
//! The workloads live in `models` (image, text, similarity through one [`crate::Engine`]) and [`search`] (top-k
//! over a random gallery), both timed with warm-up and repetitions and reported with FLOP rates against the peak of
//! the engine that ran.

mod models;
pub mod search;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::cpu::Precision;
use crate::engine::Device;
use crate::error::{Error, Result};

pub use models::{image_flops, prompt_ids, text_flops, PROMPTS};
pub use search::random_unit_rows;

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// The image tower on `[batch, 3, size, size]` pixels.
    Image,
    /// The text tower on `batch` prompts.
    Text,
    /// Zero-shot scoring: `batch` image embeddings against [`SIMILARITY_CLASSES`] text embeddings (L2 normalize,
    /// scaled cosine, softmax).
    Similarity,
    /// Retrieval: top-k of `batch` queries over a random gallery (no model; see [`search`]).
    Search,
}

/// Classes in the similarity workload (ImageNet's 1000).
pub const SIMILARITY_CLASSES: usize = 1000;

impl std::str::FromStr for Workload {
    type Err = Error;
    fn from_str(s: &str) -> Result<Workload> {
        match s {
            "image" => Ok(Workload::Image),
            "text" => Ok(Workload::Text),
            "similarity" => Ok(Workload::Similarity),
            "search" => Ok(Workload::Search),
            _ => Err(Error::InvalidArgument(format!(
                "unknown workload {s:?}: image, text, similarity or search"
            ))),
        }
    }
}

/// What `cliprt bench` runs.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// A preset name (synthetic model) …
    pub arch: String,
    /// … or a real checkpoint folder, which wins over `arch`.
    pub model: Option<PathBuf>,
    pub workloads: Vec<Workload>,
    pub batches: Vec<usize>,
    /// Synthetic text rows of exactly this many tokens (SOT, words, EOT) instead of the real prompts.
    pub prompt_len: Option<usize>,
    pub device: Device,
    pub precision: Precision,
    /// Untimed runs before timing.
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub reps: usize,
    /// The machine's peak GFLOP/s; measured when `None`.
    pub peak_gflops: Option<f64>,
    /// Sizes swept by the search workload.
    pub search: SearchSizes,
    /// What the bench may allocate, estimated before anything is built (default
    /// [`crate::limits::bench_memory_bytes`]).
    pub max_memory: u64,
    /// After each image or text measurement, run it `reps` times more with the CPU backend's op timers on and
    /// report where the time went ([`Measurement::ops`]). CPU only.
    pub breakdown: bool,
}

/// Gallery rows, embedding widths, query counts and k values of the search workload (every combination runs).
#[derive(Clone, Debug)]
pub struct SearchSizes {
    pub galleries: Vec<usize>,
    pub dims: Vec<usize>,
    pub queries: Vec<usize>,
    pub ks: Vec<usize>,
}

impl Default for SearchSizes {
    fn default() -> Self {
        SearchSizes {
            galleries: vec![100_000],
            dims: vec![512],
            queries: vec![1, 64],
            ks: vec![10],
        }
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            arch: "vit-b-32".into(),
            model: None,
            workloads: vec![Workload::Image, Workload::Text],
            batches: vec![1, 8, 32],
            prompt_len: None,
            device: Device::Cpu,
            precision: Precision::F32,
            warmup: 1,
            reps: 5,
            peak_gflops: None,
            search: SearchSizes::default(),
            max_memory: crate::limits::bench_memory_bytes(),
            breakdown: false,
        }
    }
}

/// One measurement: one workload at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub arch: String,
    pub workload: Workload,
    pub batch: usize,
    /// Text length the tower ran at (the batch is cut at its longest prompt); null for images and similarity.
    pub seq: Option<usize>,
    pub precision: &'static str,
    pub device: String,
    /// SIMD tier of the CPU backend (the GPU architecture on CUDA).
    pub isa: String,
    /// The matrix engine that ran the products: amx-bf16, avx512-bf16, avx512-f32, avx2, scalar (CPU);
    /// cuda-f16 / cuda-f32; f64-reference.
    pub engine: String,
    /// Why that engine runs (CPU model workloads; empty elsewhere).
    pub engine_reason: String,
    pub threads: usize,
    pub items_per_s: f64,
    /// Median over the timed runs.
    pub ms_per_batch: f64,
    pub ms_min: f64,
    pub ms_max: f64,
    pub reps: usize,
    pub gflops_per_s: f64,
    /// `gflops_per_s / peak_gflops`, against the measured peak of the engine that ran (AMX: `tdpbf16ps`;
    /// avx512-bf16: `vdpbf16ps`; f32: FMAs). NaN where no peak is known (the AMX emulator).
    pub peak_fraction: f64,
    pub peak_gflops: f64,
    /// Seconds to build the model (random weights or checkpoint read, plus packing).
    pub load_s: f64,
    /// The weights' f32 size.
    pub weights_mb: f64,
    /// The process's peak resident memory so far (Linux VmHWM), if known.
    pub peak_rss_mb: Option<f64>,
    /// Search: results kept per query.
    pub k: Option<usize>,
    /// Search: recall@k of the first queries against the f64 reference, checked before timing.
    pub recall: Option<f64>,
    /// With `--breakdown`: the share of the forward's time each op class took, then what the classes leave over
    /// ("other": residual adds, embeddings, pooling, scheduling).
    pub ops: Option<Vec<OpShare>>,
}

/// One op class of a forward ([`crate::cpu::breakdown`]), measured over separate runs with the op timers on.
#[derive(Clone, Debug, Serialize)]
pub struct OpShare {
    pub op: &'static str,
    /// Of the forward's time: the class's time summed over the threads that ran it, over (wall time × concurrent
    /// batch parts).
    pub share: f64,
    /// The class's FLOPs over its share of the wall time: the rate the whole machine ran it at. Null for classes
    /// without FLOPs.
    pub gflops_per_s: Option<f64>,
    /// `gflops_per_s` over the peak of the unit its products run on: `vdpbf16ps` or AMX for bf16 GEMMs, the FMA
    /// rate for f32 GEMMs and for attention (whose products are f32 except on AMX). Null where none is known.
    pub peak_fraction: Option<f64>,
}

/// Refuses a bench configuration whose estimated allocation `bytes` (saturating arithmetic: an absurd size
/// estimates as u64::MAX) is over `max` bytes, before anything is allocated.
pub(crate) fn check_memory(what: &str, bytes: u64, max: u64) -> Result<()> {
    if bytes > max {
        return Err(Error::Limit {
            what: format!("the estimated memory of {what}"),
            value: format!("{:.2} GB", bytes as f64 / 1e9),
            limit: format!("{:.2} GB (raise it with --max-memory-gb)", max as f64 / 1e9),
        });
    }
    Ok(())
}

/// The process's peak resident set in MB (Linux; `None` elsewhere).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Times `f`: `warmup` untimed runs, then `reps` timed ones; returns (median, min, max) in ms.
pub(crate) fn time_runs(
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let mid = ms.len() / 2;
    let median = if ms.len() % 2 == 1 {
        ms[mid]
    } else {
        (ms[mid - 1] + ms[mid]) / 2.0
    };
    Ok((median, ms[0], ms[ms.len() - 1]))
}

/// Checks `cfg` against every rule and limit before anything is built: sizes, run counts and the estimated memory
/// (see `check_memory`). [`run`] calls it first; `cliprt bench` arguments can be vetted with it alone.
pub fn check(cfg: &BenchConfig) -> Result<()> {
    if cfg.batches.is_empty() || cfg.batches.contains(&0) {
        return Err(Error::InvalidArgument("batch sizes must be ≥ 1".into()));
    }
    crate::limits::check(
        "--warmup",
        cfg.warmup as u64,
        crate::limits::MAX_BENCH_RUNS as u64,
    )?;
    crate::limits::check(
        "--reps",
        cfg.reps as u64,
        crate::limits::MAX_BENCH_RUNS as u64,
    )?;
    if let Some(p) = cfg.peak_gflops {
        if !(p.is_finite() && p > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "--peak-gflops {p}: expected a positive number"
            )));
        }
    }
    if cfg.workloads.is_empty() {
        return Err(Error::InvalidArgument("no workload given".into()));
    }
    if cfg.breakdown && cfg.device != Device::Cpu {
        return Err(Error::InvalidArgument(
            "--breakdown times the CPU backend's ops: --device cpu".into(),
        ));
    }
    if cfg.workloads.iter().any(|&w| w != Workload::Search) {
        models::check(cfg)?;
    }
    if cfg.workloads.contains(&Workload::Search) {
        search::check_sizes(&cfg.search, cfg.max_memory)?;
    }
    Ok(())
}

/// Runs every (workload, batch) of `cfg`, calling `report` after each measurement.
pub fn run(cfg: &BenchConfig, mut report: impl FnMut(&Measurement)) -> Result<()> {
    check(cfg)?;
    let models: Vec<Workload> = cfg
        .workloads
        .iter()
        .copied()
        .filter(|&w| w != Workload::Search)
        .collect();
    if !models.is_empty() {
        models::run(
            &BenchConfig {
                workloads: models,
                ..cfg.clone()
            },
            &mut report,
        )?;
    }
    if cfg.workloads.contains(&Workload::Search) {
        let s = &cfg.search;
        search::run(
            &search::SearchBench {
                galleries: s.galleries.clone(),
                dims: s.dims.clone(),
                queries: s.queries.clone(),
                ks: s.ks.clone(),
                precision: cfg.precision,
                warmup: cfg.warmup,
                reps: cfg.reps,
                peak_gflops: cfg.peak_gflops,
                device: cfg.device,
                max_memory: cfg.max_memory,
            },
            &mut report,
        )?;
    }
    Ok(())
}

/// The table header matching [`table_row`].
pub fn table_header() -> String {
    format!(
        "{:<12} {:<10} {:>5} {:>4} {:>5} {:>12} {:>10} {:>10} {:>17} {:>9} {:>6}",
        "arch",
        "workload",
        "batch",
        "seq/k",
        "prec",
        "engine",
        "items/s",
        "ms/batch",
        "spread (min–max)",
        "GFLOP/s",
        "%peak"
    )
}

/// One measurement as a table row.
pub fn table_row(m: &Measurement) -> String {
    let workload = match m.workload {
        Workload::Image => "image",
        Workload::Text => "text",
        Workload::Similarity => "similarity",
        Workload::Search => "search",
    };
    format!(
        "{:<12} {:<10} {:>5} {:>4} {:>5} {:>12} {:>10.2} {:>10.2} {:>17} {:>9.1} {:>5.1}%",
        m.arch,
        workload,
        m.batch,
        // Search rows show k in the seq column.
        m.seq.or(m.k).map_or("-".into(), |s| s.to_string()),
        m.precision,
        m.engine,
        m.items_per_s,
        m.ms_per_batch,
        format!("{:.1}–{:.1}", m.ms_min, m.ms_max),
        m.gflops_per_s,
        100.0 * m.peak_fraction
    ) + &m
        .recall
        .map_or(String::new(), |r| format!("  recall@k {r:.4}"))
        + &m.ops.as_deref().map_or(String::new(), breakdown_line)
}

/// `--breakdown`'s line under a row: each class's share of the time, its rate and its fraction of its unit's peak.
fn breakdown_line(ops: &[OpShare]) -> String {
    let parts: Vec<String> = ops
        .iter()
        .map(|o| {
            let rate = o.gflops_per_s.map_or(String::new(), |g| {
                let peak = o.peak_fraction.map_or(String::new(), |f| {
                    format!(", {:.1}% of its peak", 100.0 * f)
                });
                format!(" ({g:.0} GFLOP/s{peak})")
            });
            format!("{} {:.1}%{rate}", o.op, 100.0 * o.share)
        })
        .collect();
    format!("\n  time: {}", parts.join(" · "))
}
