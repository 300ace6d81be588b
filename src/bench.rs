//! Throughput measurement behind `cliprt bench`: synthetic models at real shapes (seeded random weights, no
//! download) or a real checkpoint, the image tower, the text tower and zero-shot similarity, timed with warm-up and
//! repetitions and reported with FLOP rates against the machine's measured peak.
//!
//! FLOPs are counted from the shapes, 2 per multiply–add, for the work cliprt actually does: every GEMM, both
//! attention products (the causal text attention is counted in full, as it is computed), and the projections.
//! Element-wise work (layernorm, softmax, activations) is not counted.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::backend::reference::ReferenceBackend;
use crate::backend::Backend;
use crate::clip::Device;
use crate::config::{presets, ClipConfig, EncoderConfig};
use crate::cpu::peak::peak_gflops;
use crate::cpu::{CpuBackend, Precision};
use crate::error::{Error, Result};
use crate::model::ClipModel;
use crate::tokenizer::{ClipTokenizer, TextBatch};
use crate::weights::{Checkpoint, ClipWeights};

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
    /// Retrieval: top-k of `batch` queries over a random gallery (no model; see [`crate::search::bench`]).
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

/// The real short prompts of the default text workload.
pub const PROMPTS: [&str; 32] = [
    "a photo of a dog.",
    "a photo of a cat.",
    "a photo of a car.",
    "a photo of a airplane.",
    "a photo of a bird.",
    "a photo of a horse.",
    "a photo of a ship.",
    "a photo of a truck.",
    "a photo of a frog.",
    "a photo of a deer.",
    "a photo of a person riding a bike.",
    "a photo of a bowl of soup.",
    "a photo of a red apple.",
    "a photo of a city street at night.",
    "a photo of a mountain lake.",
    "a photo of a pizza.",
    "a photo of a laptop on a desk.",
    "a photo of a golden retriever.",
    "a photo of a coffee cup.",
    "a photo of a sunset over the ocean.",
    "a photo of a group of people.",
    "a photo of a traffic light.",
    "a photo of a snowy forest.",
    "a photo of a tabby cat sleeping.",
    "a photo of a sailboat.",
    "a photo of a hot air balloon.",
    "a photo of a bowl of fruit.",
    "a photo of a train station.",
    "a photo of a lighthouse.",
    "a photo of a chessboard.",
    "a photo of a violin.",
    "a photo of a bicycle.",
];

/// [`PROMPTS`] tokenized by OpenAI's CLIP tokenizer (the vocabulary every preset uses); a test checks them against
/// the tokenizer. Real checkpoints tokenize the prompts with their own tokenizer.json instead.
const PROMPT_IDS: [&[u32]; 32] = [
    &[49406, 320, 1125, 539, 320, 1929, 269, 49407],
    &[49406, 320, 1125, 539, 320, 2368, 269, 49407],
    &[49406, 320, 1125, 539, 320, 1615, 269, 49407],
    &[49406, 320, 1125, 539, 320, 16451, 269, 49407],
    &[49406, 320, 1125, 539, 320, 3329, 269, 49407],
    &[49406, 320, 1125, 539, 320, 4558, 269, 49407],
    &[49406, 320, 1125, 539, 320, 1158, 269, 49407],
    &[49406, 320, 1125, 539, 320, 4629, 269, 49407],
    &[49406, 320, 1125, 539, 320, 11438, 269, 49407],
    &[49406, 320, 1125, 539, 320, 8700, 269, 49407],
    &[
        49406, 320, 1125, 539, 320, 2533, 6765, 320, 3701, 269, 49407,
    ],
    &[49406, 320, 1125, 539, 320, 3814, 539, 7077, 269, 49407],
    &[49406, 320, 1125, 539, 320, 736, 3055, 269, 49407],
    &[49406, 320, 1125, 539, 320, 1305, 2012, 536, 930, 269, 49407],
    &[49406, 320, 1125, 539, 320, 3965, 2553, 269, 49407],
    &[49406, 320, 1125, 539, 320, 4474, 269, 49407],
    &[
        49406, 320, 1125, 539, 320, 10464, 525, 320, 6550, 269, 49407,
    ],
    &[49406, 320, 1125, 539, 320, 3878, 28394, 269, 49407],
    &[49406, 320, 1125, 539, 320, 2453, 1937, 269, 49407],
    &[49406, 320, 1125, 539, 320, 3424, 962, 518, 4918, 269, 49407],
    &[49406, 320, 1125, 539, 320, 1771, 539, 1047, 269, 49407],
    &[49406, 320, 1125, 539, 320, 3399, 1395, 269, 49407],
    &[49406, 320, 1125, 539, 320, 14191, 4167, 269, 49407],
    &[49406, 320, 1125, 539, 320, 36145, 2368, 6982, 269, 49407],
    &[49406, 320, 1125, 539, 320, 7528, 4440, 269, 49407],
    &[49406, 320, 1125, 539, 320, 2069, 1922, 13634, 269, 49407],
    &[49406, 320, 1125, 539, 320, 3814, 539, 5190, 269, 49407],
    &[49406, 320, 1125, 539, 320, 3231, 2631, 269, 49407],
    &[49406, 320, 1125, 539, 320, 13717, 269, 49407],
    &[49406, 320, 1125, 539, 320, 27170, 1972, 269, 49407],
    &[49406, 320, 1125, 539, 320, 17058, 269, 49407],
    &[49406, 320, 1125, 539, 320, 11652, 269, 49407],
];

/// The token ids of [`PROMPTS`] under the presets' (OpenAI) vocabulary.
pub fn prompt_ids() -> Vec<Vec<u32>> {
    PROMPT_IDS.iter().map(|r| r.to_vec()).collect()
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
}

/// FLOPs of one encoder pass over `batch` sequences of `seq` tokens.
fn encoder_flops(e: &EncoderConfig, batch: usize, seq: usize) -> f64 {
    let (d, i) = (e.hidden_size as f64, e.intermediate_size as f64);
    let rows = (batch * seq) as f64;
    let gemms = 2.0 * rows * (3.0 * d * d + d * d + 2.0 * d * i);
    // QKᵀ and P·V: 2 · seq² · D multiply–adds per sequence.
    let attention = 4.0 * batch as f64 * (seq * seq) as f64 * d;
    e.num_layers as f64 * (gemms + attention)
}

/// FLOPs of the image tower for `batch` images.
pub fn image_flops(c: &ClipConfig, batch: usize) -> f64 {
    let v = &c.vision;
    let d = v.encoder.hidden_size as f64;
    let patches = (batch * v.grid() * v.grid()) as f64;
    let embed = 2.0 * patches * v.patch_dim() as f64 * d;
    let projection = 2.0 * batch as f64 * d * c.projection_dim as f64;
    embed + encoder_flops(&v.encoder, batch, v.seq_len()) + projection
}

/// FLOPs of the text tower for `batch` prompts run at `seq` tokens.
pub fn text_flops(c: &ClipConfig, batch: usize, seq: usize) -> f64 {
    let d = c.text.encoder.hidden_size as f64;
    encoder_flops(&c.text.encoder, batch, seq) + 2.0 * batch as f64 * d * c.projection_dim as f64
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

/// Deterministic pixels in the normalized range (the content does not change the work).
fn synthetic_pixels(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect()
}

/// `batch` token rows: the real prompts (cycled), or synthetic rows of exactly `len` tokens.
fn text_rows(
    batch: usize,
    len: Option<usize>,
    prompts: &[Vec<u32>],
    c: &ClipConfig,
) -> Result<Vec<Vec<u32>>> {
    match len {
        Some(len) => {
            let ctx = c.text.max_position_embeddings;
            if len < 2 || len > ctx {
                return Err(Error::InvalidArgument(format!(
                    "--prompt-len {len} outside 2..={ctx} (SOT and EOT included)"
                )));
            }
            let (sot, eot) = (c.text.eos_token_id.saturating_sub(1), c.text.eos_token_id);
            let vocab = c.text.vocab_size as u32;
            Ok((0..batch as u32)
                .map(|r| {
                    std::iter::once(sot)
                        .chain((0..len as u32 - 2).map(|j| 320 + (r * 7 + j) % (vocab - 400)))
                        .chain(std::iter::once(eot))
                        .collect()
                })
                .collect())
        }
        None => Ok((0..batch)
            .map(|r| prompts[r % prompts.len()].clone())
            .collect()),
    }
}

/// A model under test, with what the measurements need to know about it.
struct Subject<B: Backend> {
    model: ClipModel<B>,
    arch: String,
    prompts: Vec<Vec<u32>>,
    load_s: f64,
}

/// Runs every (workload, batch) of `cfg`, calling `report` after each measurement.
pub fn run(cfg: &BenchConfig, mut report: impl FnMut(&Measurement)) -> Result<()> {
    if cfg.batches.is_empty() || cfg.batches.contains(&0) {
        return Err(Error::InvalidArgument("batch sizes must be ≥ 1".into()));
    }
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
    let models: Vec<Workload> = cfg
        .workloads
        .iter()
        .copied()
        .filter(|&w| w != Workload::Search)
        .collect();
    if !models.is_empty() {
        run_models(
            &BenchConfig {
                workloads: models,
                ..cfg.clone()
            },
            &mut report,
        )?;
    }
    if cfg.workloads.contains(&Workload::Search) {
        let s = &cfg.search;
        crate::search::bench::run(
            &crate::search::bench::SearchBench {
                galleries: s.galleries.clone(),
                dims: s.dims.clone(),
                queries: s.queries.clone(),
                ks: s.ks.clone(),
                precision: cfg.precision,
                warmup: cfg.warmup,
                reps: cfg.reps,
                peak_gflops: cfg.peak_gflops,
                device: cfg.device,
            },
            &mut report,
        )?;
    }
    Ok(())
}

/// The model workloads (image, text, similarity) on `cfg.device`.
fn run_models(cfg: &BenchConfig, mut report: impl FnMut(&Measurement)) -> Result<()> {
    let threads = rayon::current_num_threads();
    match cfg.device {
        Device::Cpu => {
            let backend = CpuBackend::from_env(cfg.precision)?;
            let engine = backend.engine();
            let peak = cfg.peak_gflops.unwrap_or_else(|| {
                engine.peak_unit().map_or(f64::NAN, |u| peak_gflops(threads, u))
            });
            let run = Run {
                isa: backend.isa().name().into(),
                engine: engine.name().into(),
                engine_reason: backend.reason().into(),
                precision: backend.precision().name(),
                device: "cpu".into(),
                peak,
            };
            let subject = build(cfg, backend)?;
            measure(cfg, &subject, threads, &run, &mut report)
        }
        Device::Reference => {
            // The f64 oracle has no engine peak worth dividing by (plain loops in f64): NaN unless given.
            let peak = cfg.peak_gflops.unwrap_or(f64::NAN);
            let run = Run {
                isa: "f64".into(),
                engine: "f64-reference".into(),
                engine_reason: String::new(),
                precision: "f64",
                device: "reference".into(),
                peak,
            };
            let subject = build(cfg, ReferenceBackend)?;
            measure(cfg, &subject, threads, &run, &mut report)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => {
            let backend = crate::cuda::CudaBackend::new(n)?;
            let info = backend.info().clone();
            let peak = cfg
                .peak_gflops
                .or_else(|| crate::cuda::peak_fp16_gflops(&info.name))
                .unwrap_or(f64::NAN);
            let graphs = |b: &crate::cuda::CudaBackend| match b.graphs_off() {
                None => "graphs on".to_string(),
                Some(why) => format!("graphs off: {why}"),
            };
            let device = format!("cuda:{n} {} ({})", info.name, graphs(&backend));
            let run = Run {
                isa: info.arch.clone(),
                engine: "cuda-f16".into(),
                engine_reason: String::new(),
                precision: "f16",
                device,
                peak,
            };
            let subject = build(cfg, backend)?;
            let measured = measure(cfg, &subject, threads, &run, &mut report);
            // A capture that failed during the run switched graphs off: say so next to the numbers.
            eprintln!("cuda:{n} after the run: {}", graphs(&subject.model.backend));
            measured
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(n) => Err(Error::DeviceUnavailable(format!(
            "cuda:{n}: this build of cliprt has no CUDA support (feature `cuda` is off)"
        ))),
        Device::CudaSim => Err(Error::InvalidArgument(
            "cuda-sim checks kernels on the CPU; its timings mean nothing, so it is not benchmarked".into(),
        )),
    }
}

fn build<B: Backend>(cfg: &BenchConfig, backend: B) -> Result<Subject<B>> {
    let t = Instant::now();
    let (config, weights, arch, prompts) = match &cfg.model {
        Some(dir) => {
            let config = ClipConfig::from_file(&dir.join("config.json"))?;
            let weights = ClipWeights::from_checkpoint(&Checkpoint::open(dir)?, &config)?;
            let tokenizer = ClipTokenizer::from_file(
                &dir.join("tokenizer.json"),
                config.text.max_position_embeddings,
            )?;
            let prompts = tokenizer.encode_batch(&PROMPTS)?;
            let name = dir
                .file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned());
            (config, weights, name, prompts)
        }
        None => {
            let config = presets::by_name(&cfg.arch).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown arch {:?}: one of {}",
                    cfg.arch,
                    presets::NAMES.join(", ")
                ))
            })?;
            let weights = ClipWeights::random(&config, 1);
            (config, weights, cfg.arch.clone(), prompt_ids())
        }
    };
    let model = ClipModel::new(backend, &config, weights)?;
    Ok(Subject {
        model,
        arch,
        prompts,
        load_s: t.elapsed().as_secs_f64(),
    })
}

/// What every measurement of one backend shares.
struct Run {
    isa: String,
    engine: String,
    engine_reason: String,
    precision: &'static str,
    device: String,
    /// The engine's peak GFLOP/s (measured, or given).
    peak: f64,
}

fn measure<B: Backend>(
    cfg: &BenchConfig,
    s: &Subject<B>,
    threads: usize,
    run: &Run,
    report: &mut impl FnMut(&Measurement),
) -> Result<()> {
    let c = &s.model.config;
    let weights_mb = c.parameter_count() as f64 * 4.0 / 1e6;
    for &workload in &cfg.workloads {
        for &batch in &cfg.batches {
            let (seq, flops, (ms, lo, hi)) = match workload {
                // Runs without a model: crate::search::bench.
                Workload::Search => continue,
                Workload::Image => {
                    let size = c.vision.image_size;
                    let pixels = synthetic_pixels(batch * c.vision.num_channels * size * size);
                    let t = time_runs(cfg.warmup, cfg.reps, || {
                        s.model.encode_images(&pixels, batch).map(drop)
                    })?;
                    (None, image_flops(c, batch), t)
                }
                Workload::Text => {
                    let rows = text_rows(batch, cfg.prompt_len, &s.prompts, c)?;
                    let tb = TextBatch::new(&rows, &c.text)?;
                    let t =
                        time_runs(cfg.warmup, cfg.reps, || s.model.encode_texts(&tb).map(drop))?;
                    (Some(tb.seq_len), text_flops(c, batch, tb.seq_len), t)
                }
                Workload::Similarity => {
                    let dim = c.projection_dim;
                    let images = synthetic_pixels(batch * dim);
                    let texts = synthetic_pixels(SIMILARITY_CLASSES * dim);
                    let t = time_runs(cfg.warmup, cfg.reps, || {
                        let logits = crate::similarity::scaled_logits(
                            &images,
                            batch,
                            &texts,
                            SIMILARITY_CLASSES,
                            dim,
                            s.model.logit_scale,
                        )?;
                        std::hint::black_box(crate::similarity::softmax_rows(
                            &logits,
                            SIMILARITY_CLASSES,
                        ));
                        Ok(())
                    })?;
                    (None, 2.0 * (batch * SIMILARITY_CLASSES * dim) as f64, t)
                }
            };
            let gflops = flops / (ms / 1e3) / 1e9;
            report(&Measurement {
                arch: s.arch.clone(),
                workload,
                batch,
                seq,
                precision: run.precision,
                device: run.device.clone(),
                isa: run.isa.clone(),
                engine: run.engine.clone(),
                engine_reason: run.engine_reason.clone(),
                threads,
                items_per_s: batch as f64 / (ms / 1e3),
                ms_per_batch: ms,
                ms_min: lo,
                ms_max: hi,
                reps: cfg.reps.max(1),
                gflops_per_s: gflops,
                peak_fraction: gflops / run.peak,
                peak_gflops: run.peak,
                load_s: s.load_s,
                weights_mb,
                peak_rss_mb: peak_rss_mb(),
                k: None,
                recall: None,
            });
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_b_32_image_flops_match_the_known_count() {
        // ≈ 4.4 GMAC per image: 12 layers at 50 tokens, the patch GEMM and the projection.
        let c = presets::by_name("vit-b-32").unwrap();
        let gflop = image_flops(&c, 1) / 1e9;
        assert!((8.7..8.9).contains(&gflop), "{gflop}");
        assert!((image_flops(&c, 32) / image_flops(&c, 1) - 32.0).abs() < 1e-9);
    }

    #[test]
    fn synthetic_text_rows_have_the_asked_length() {
        let c = presets::by_name("vit-b-32").unwrap();
        let rows = text_rows(3, Some(9), &prompt_ids(), &c).unwrap();
        assert!(rows
            .iter()
            .all(|r| r.len() == 9 && r[8] == 49407 && r[0] == 49406));
        assert!(text_rows(1, Some(78), &prompt_ids(), &c).is_err());
        assert!(text_rows(1, Some(1), &prompt_ids(), &c).is_err());
    }
}
