//! The model workloads of `cliprt bench`: the image tower, the text tower and zero-shot similarity on a synthetic
//! model at real shapes (seeded random weights, no download) or a real checkpoint, through one [`Engine`].
//!
//! FLOPs are counted from the shapes, 2 per multiply–add, for the work cliprt actually does: every GEMM, both
//! attention products (over every query and key: the CPU skips the keys a causal mask hides, so a text tower's
//! rate is slightly understated), and the projections.
//! Element-wise work (layernorm, softmax, activations) is not counted.

use std::time::Instant;

use super::{
    peak_rss_mb, time_runs, BenchConfig, Measurement, OpShare, Workload, SIMILARITY_CLASSES,
};
use crate::backend::Backend;
use crate::config::{presets, ClipConfig, EncoderConfig, Family};
use crate::cpu::breakdown::{self, OpClass};
use crate::cpu::CpuBackend;
use crate::engine::{Device, Engine};
use crate::error::{Error, Result};
use crate::model::ClipWeights;
use crate::model::{ModelSpec, TextBatch};
use crate::tokenizer::ModelTokenizer;

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

/// The prompts' ids for a synthetic model: OpenAI's ids for CLIP; for SigLIP (no start token, end token 1 and a
/// 32000-token vocabulary) the same lengths less the start token, ids folded into the vocabulary. The ids do not
/// change the work; their count does.
fn synthetic_prompts(c: &ClipConfig) -> Vec<Vec<u32>> {
    let ids = prompt_ids();
    match c.family {
        Family::Clip => ids,
        Family::Siglip => {
            let vocab = c.text.vocab_size as u32;
            ids.iter()
                .map(|r| {
                    let words = &r[1..r.len() - 1];
                    words
                        .iter()
                        .map(|&id| 2 + id % (vocab - 2))
                        .chain(std::iter::once(c.text.eos_token_id))
                        .collect()
                })
                .collect()
        }
    }
}

/// FLOPs of one encoder pass over `batch` sequences of `seq` tokens, as it runs: the row-wise products over `rows`
/// rows (`batch · seq`, or fewer for a packed text batch, ARCHITECTURE §7.15), attention over every position; with
/// `pooled`, the last layer's out-projection and MLP cover one row per sequence (`run_encoder_pooled`).
fn encoder_flops(e: &EncoderConfig, batch: usize, seq: usize, rows: usize, pooled: bool) -> f64 {
    let (d, i) = (e.hidden_size as f64, e.intermediate_size as f64);
    let rows = rows as f64;
    let attend = |rows: f64| 2.0 * rows * 3.0 * d * d;
    let residual = |rows: f64| 2.0 * rows * (d * d + 2.0 * d * i);
    // QKᵀ and P·V: 2 · seq² · D multiply–adds per sequence.
    let attention = 4.0 * batch as f64 * (seq * seq) as f64 * d;
    let layer = attend(rows) + attention + residual(rows);
    let last = if pooled {
        attend(rows) + attention + residual(batch as f64)
    } else {
        layer
    };
    match e.num_layers {
        0 => 0.0,
        n => (n - 1) as f64 * layer + last,
    }
}

/// FLOPs of the image tower for `batch` images.
pub fn image_flops(c: &ClipConfig, batch: usize) -> f64 {
    let v = &c.vision;
    let d = v.encoder.hidden_size as f64;
    let patches = (batch * v.grid() * v.grid()) as f64;
    let embed = 2.0 * patches * v.patch_dim() as f64 * d;
    let pool = match c.family {
        Family::Clip => 2.0 * batch as f64 * d * c.projection_dim as f64,
        // The attention-pooling head as it runs (src/model/vision.rs): the in-projection over every token, the
        // attention at full length, then the out-projection and the MLP on one row per image.
        Family::Siglip => {
            let (seq, i) = (v.seq_len() as f64, v.encoder.intermediate_size as f64);
            let b = batch as f64;
            2.0 * b * seq * 3.0 * d * d + 4.0 * b * seq * seq * d + 2.0 * b * (d * d + 2.0 * d * i)
        }
    };
    // CLIP reads the class token's row alone; SigLIP's head attends over every token.
    let pooled = c.family == Family::Clip;
    let tokens = batch * v.seq_len();
    embed + encoder_flops(&v.encoder, batch, v.seq_len(), tokens, pooled) + pool
}

/// FLOPs of the text tower for `batch` prompts run at `seq` tokens, the row-wise products over the `rows` rows
/// that reach a pooled row ([`TextBatch::needed_rows`]): the useful work. A causal batch with under 5 % padding runs
/// unpacked, up to that much more than counted.
pub fn text_flops(c: &ClipConfig, batch: usize, seq: usize, rows: usize) -> f64 {
    let d = c.text.encoder.hidden_size as f64;
    encoder_flops(&c.text.encoder, batch, seq, rows, true)
        + 2.0 * batch as f64 * d * c.projection_dim as f64
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
            // Ordinary word ids from 320 on (below the specials at the end of the vocabulary), any vocab size.
            let span = vocab.saturating_sub(400).max(1);
            Ok((0..batch as u32)
                .map(|r| {
                    std::iter::once(sot)
                        .chain((0..len as u32 - 2).map(|j| (320 + (r * 7 + j) % span) % vocab))
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
struct Subject {
    engine: Engine,
    config: ClipConfig,
    arch: String,
    prompts: Vec<Vec<u32>>,
    load_s: f64,
    /// The engine's peak GFLOP/s (given, measured or from a data sheet; NaN where none is known).
    peak: f64,
}

/// The model workloads (image, text, similarity) on `cfg.device`.
pub(super) fn run(cfg: &BenchConfig, mut report: impl FnMut(&Measurement)) -> Result<()> {
    if cfg.device == Device::CudaSim {
        return Err(Error::InvalidArgument(
            "cuda-sim checks kernels on the CPU; its timings mean nothing, so it is not benchmarked".into(),
        ));
    }
    let threads = rayon::current_num_threads();
    let engine = Engine::open(cfg.device, cfg.precision)?;
    let peak = cfg
        .peak_gflops
        .or_else(|| engine.peak_gflops(threads))
        .unwrap_or(f64::NAN);
    let subject = build(cfg, engine, peak)?;
    let measured = measure(cfg, &subject, threads, &mut report);
    if let Device::Cuda(_) = cfg.device {
        // A graph capture that failed during the run switched graphs off: say so next to the numbers.
        eprintln!("after the run: {}", subject.engine.info().device);
    }
    measured
}

/// The bytes a model bench holds: the f32 weights with their transient conversion buffers (≈ 5 bytes a parameter:
/// ViT-B/32's 151 M parameters peak at 698 MB RSS) and the activations of the largest batch.
fn memory_estimate(config: &ClipConfig, batch: usize) -> u64 {
    let params = config.parameter_count() as u64;
    let tower = |e: &crate::config::EncoderConfig, tokens: usize| {
        // Residual, normalized, qkv, attention output and MLP hidden rows, f32.
        let per_token = (8 * e.hidden_size + 2 * e.intermediate_size) as u64 * 4;
        (batch as u64)
            .saturating_mul(tokens as u64)
            .saturating_mul(per_token)
    };
    let acts = tower(&config.vision.encoder, config.vision.seq_len()).max(tower(
        &config.text.encoder,
        config.text.max_position_embeddings,
    ));
    params.saturating_mul(5).saturating_add(acts)
}

/// The model workloads' checks before anything is built: a known arch, a valid config, the memory estimate.
pub(super) fn check(cfg: &BenchConfig) -> Result<()> {
    let config = match &cfg.model {
        Some(dir) => ClipConfig::from_dir(dir)?.0,
        None => presets::by_name(&cfg.arch).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown arch {:?}: one of {}",
                cfg.arch,
                presets::NAMES.join(", ")
            ))
        })?,
    };
    if let Some(len) = cfg.prompt_len {
        let ctx = config.text.max_position_embeddings;
        if len < 2 || len > ctx {
            return Err(Error::InvalidArgument(format!(
                "--prompt-len {len} outside 2..={ctx} (SOT and EOT included)"
            )));
        }
    }
    let batch = cfg.batches.iter().copied().max().unwrap_or(1);
    super::check_memory(
        &format!("this model at batch {batch}"),
        memory_estimate(&config, batch),
        cfg.max_memory,
    )
}

fn build(cfg: &BenchConfig, engine: Engine, peak: f64) -> Result<Subject> {
    let t = Instant::now();
    let (config, weights, arch, prompts) = match &cfg.model {
        Some(dir) => {
            let (config, _) = ClipConfig::from_dir(dir)?;
            engine.supports(&config)?;
            let weights = ClipWeights::from_dir(dir, &config)?;
            let tokenizer = ModelTokenizer::for_config(dir, &config)?.tokenizer;
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
            engine.supports(&config)?;
            let weights = ClipWeights::random(&config, 1);
            let prompts = synthetic_prompts(&config);
            (config, weights, cfg.arch.clone(), prompts)
        }
    };
    let engine = engine.load(ModelSpec::Clip {
        config: config.clone(),
        weights,
    })?;
    Ok(Subject {
        engine,
        config,
        arch,
        prompts,
        load_s: t.elapsed().as_secs_f64(),
        peak,
    })
}

fn measure(
    cfg: &BenchConfig,
    s: &Subject,
    threads: usize,
    report: &mut impl FnMut(&Measurement),
) -> Result<()> {
    let c = &s.config;
    let info = s.engine.info();
    // CLIP's trained exp(logit_scale); the value does not change the work.
    let logit_scale = 100.0;
    let weights_mb = c.parameter_count() as f64 * 4.0 / 1e6;
    // `--breakdown`'s f32 peak, measured once for every row that needs it.
    let f32_peak = std::cell::OnceCell::new();
    for &workload in &cfg.workloads {
        for &batch in &cfg.batches {
            let mut ops = None;
            let (seq, flops, (ms, lo, hi)) = match workload {
                // Runs without a model: super::search.
                Workload::Search => continue,
                Workload::Image => {
                    let size = c.vision.image_size;
                    let pixels = synthetic_pixels(batch * c.vision.num_channels * size * size);
                    let mut run = || s.engine.encode_images(&pixels, batch).map(drop);
                    let t = time_runs(cfg.warmup, cfg.reps, &mut run)?;
                    if cfg.breakdown {
                        let tokens = batch * c.vision.seq_len();
                        ops = Some(op_shares(cfg, s, (threads, &f32_peak), batch, tokens, run)?);
                    }
                    (None, image_flops(c, batch), t)
                }
                Workload::Text => {
                    let rows = text_rows(batch, cfg.prompt_len, &s.prompts, c)?;
                    let tb = TextBatch::for_model(&rows, c)?;
                    let mut run = || s.engine.encode_texts(&rows).map(drop);
                    let t = time_runs(cfg.warmup, cfg.reps, &mut run)?;
                    if cfg.breakdown {
                        let tokens = rows.iter().map(Vec::len).sum();
                        ops = Some(op_shares(cfg, s, (threads, &f32_peak), batch, tokens, run)?);
                    }
                    let flops = text_flops(c, batch, tb.seq_len, tb.needed_rows());
                    (Some(tb.seq_len), flops, t)
                }
                Workload::Similarity => {
                    let dim = c.projection_dim;
                    let images = synthetic_pixels(batch * dim);
                    let texts = synthetic_pixels(SIMILARITY_CLASSES * dim);
                    let t = time_runs(cfg.warmup, cfg.reps, || {
                        let logits = s.engine.logits(
                            &images,
                            batch,
                            &texts,
                            SIMILARITY_CLASSES,
                            dim,
                            logit_scale,
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
                precision: info.arithmetic,
                device: info.device.clone(),
                isa: info.isa.clone(),
                engine: info.engine.clone(),
                engine_reason: info.reason.clone(),
                threads,
                items_per_s: batch as f64 / (ms / 1e3),
                ms_per_batch: ms,
                ms_min: lo,
                ms_max: hi,
                reps: cfg.reps.max(1),
                gflops_per_s: gflops,
                peak_fraction: gflops / s.peak,
                peak_gflops: s.peak,
                load_s: s.load_s,
                weights_mb,
                peak_rss_mb: peak_rss_mb(),
                k: None,
                recall: None,
                ops,
            });
        }
    }
    Ok(())
}

/// `--breakdown`: `cfg.reps` more runs of `run` (a forward of `batch` items, `tokens` token rows) with the CPU
/// backend's op timers on, as shares of the time the forwards' concurrent batch parts ran. `f32_peak` holds the
/// FMA peak on `threads` once measured.
fn op_shares(
    cfg: &BenchConfig,
    s: &Subject,
    (threads, f32_peak): (usize, &std::cell::OnceCell<f64>),
    batch: usize,
    tokens: usize,
    mut run: impl FnMut() -> Result<()>,
) -> Result<Vec<OpShare>> {
    let cpu = s.engine.backend::<CpuBackend>().ok_or_else(|| {
        Error::InvalidArgument("--breakdown times the CPU backend's ops: --device cpu".into())
    })?;
    // The model runs a batch as this many concurrent parts, each on a thread of its own (ClipModel's encode_*).
    let parts = cpu.batch_parts(tokens).min(batch).max(1) as f64;
    let (wall, times) = breakdown::record(|| -> Result<f64> {
        let start = Instant::now();
        for _ in 0..cfg.reps.max(1) {
            run()?;
        }
        Ok(start.elapsed().as_secs_f64())
    });
    let wall = wall?;
    let f32_peak = *f32_peak.get_or_init(|| match cpu.engine().precision() {
        crate::backend::Precision::F32 => s.peak,
        _ => cpu
            .engine()
            .f32_engine()
            .peak_unit()
            .map_or(f64::NAN, |u| crate::cpu::peak::peak_gflops(threads, u)),
    });
    let known = |p: f64| (p.is_finite() && p > 0.0).then_some(p);
    let mut shares: Vec<OpShare> = OpClass::ALL
        .iter()
        .map(|&class| {
            let share = times.seconds(class) / (wall * parts);
            let flops = times.flops(class);
            let gflops = (flops > 0.0 && share > 0.0).then(|| flops / (share * wall) / 1e9);
            let peak = match class {
                OpClass::GemmBf16 | OpClass::GemmI16 => known(s.peak),
                // Three tile products per product.
                OpClass::GemmBf16x3 => known(s.peak / 3.0),
                OpClass::GemmF32 | OpClass::Attention => known(f32_peak),
                OpClass::LayerNorm => None,
            };
            OpShare {
                op: class.name(),
                share,
                gflops_per_s: gflops,
                peak_fraction: gflops.zip(peak).map(|(g, p)| g / p),
            }
        })
        .filter(|o| o.share > 0.0)
        .collect();
    let counted: f64 = shares.iter().map(|o| o.share).sum();
    shares.push(OpShare {
        op: "other",
        share: (1.0 - counted).max(0.0),
        gflops_per_s: None,
        peak_fraction: None,
    });
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_b_32_image_flops_match_the_known_count() {
        // ≈ 4.4 GMAC per image for 12 full layers at 50 tokens, the patch GEMM and the projection; the last
        // layer's out-projection and MLP then run on the class token only: 49 rows × (768² + 2·768·3072) MACs
        // fewer.
        let c = presets::by_name("vit-b-32").unwrap();
        let skipped = 2.0 * 49.0 * (768.0 * 768.0 + 2.0 * 768.0 * 3072.0);
        let gflop = (image_flops(&c, 1) + skipped) / 1e9;
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
