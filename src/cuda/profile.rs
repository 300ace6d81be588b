//! `cliprt profile`: every variant of each op at CLIP's real shapes, side by side. Each (op, shape, variant) is
//! first validated against an f64 reference on sampled outputs (a failing variant is reported and not timed), then
//! timed with CUDA events: warm-up launches, then the median of `reps` launches, with inputs rotated over enough
//! copies that they do not sit in L2 between launches. For GEMM, cuBLAS (through cudarc, when libcublas loads) is a
//! reference row: plain `x·Wᵀ` without the fused epilogue, never the default path.
//!
//! On the CUDA simulator (`--device cuda-sim`) every variant is validated at the real shapes and nothing is timed:
//! the check a machine without a GPU can make before a GPU run.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaStream;
use half::f16;

use super::{kernels, peak_bandwidth_gbs, peak_fp16_gflops, CudaBackend, CudaBuf};
use crate::backend::{self, AttnShape, Backend, Epilogue, GemmShape};
use crate::config::presets;
use crate::device::Device;
use crate::error::{Error, Result};

/// What to profile.
#[derive(Clone, Debug)]
pub struct ProfileConfig {
    /// A GPU (validate, then time) or the simulator (validate only): `cuda`, `cuda:N` or `cuda-sim`.
    pub device: Device,
    /// gemm, attention, layernorm (or all of them).
    pub ops: Vec<String>,
    /// Presets whose shapes are used.
    pub archs: Vec<String>,
    /// Image batches; text runs at the same batches with 77 tokens and 16 tokens.
    pub batches: Vec<usize>,
    pub reps: usize,
}

/// One row of the table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub op: String,
    pub shape: String,
    pub variant: String,
    /// "ok", "FAILED: …" (validation) or "skipped: …".
    pub status: String,
    pub median_ms: Option<f64>,
    pub min_ms: Option<f64>,
    /// TFLOP/s (gemm, attention) or GB/s (layernorm).
    pub rate: Option<f64>,
    pub unit: &'static str,
    pub peak_fraction: Option<f64>,
    /// Default variant's median / this variant's median.
    pub vs_default: Option<f64>,
}

impl Row {
    /// A row with its status and no timing yet (`fill` adds it).
    fn untimed(op: &str, shape: &str, variant: &str, status: &str, unit: &'static str) -> Row {
        Row {
            op: op.into(),
            shape: shape.into(),
            variant: variant.into(),
            status: status.into(),
            median_ms: None,
            min_ms: None,
            rate: None,
            unit,
            peak_fraction: None,
            vs_default: None,
        }
    }
}

/// One problem instance.
#[derive(Clone, Copy, Debug)]
enum Case {
    Gemm { s: GemmShape, ep: Epilogue },
    Attention(AttnShape),
    LayerNorm { rows: usize, dim: usize },
}

impl Case {
    fn op(&self) -> &'static str {
        match self {
            Case::Gemm { .. } => "gemm",
            Case::Attention(_) => "attention",
            Case::LayerNorm { .. } => "layernorm",
        }
    }
    /// FLOPs (gemm, attention) or bytes moved (layernorm).
    fn work(&self) -> f64 {
        match *self {
            Case::Gemm { s, .. } => 2.0 * (s.m * s.n * s.k) as f64,
            Case::Attention(a) => 4.0 * (a.batch * a.heads * a.seq * a.seq * a.head_dim) as f64,
            Case::LayerNorm { rows, dim } => 2.0 * 2.0 * (rows * dim) as f64,
        }
    }
}

/// The shapes of `cfg`: each preset's four encoder GEMMs, attention and layernorm, for the image tower at every
/// batch and the text tower at 77 and 16 tokens.
fn cases(cfg: &ProfileConfig) -> Result<Vec<(String, Case)>> {
    let mut out = Vec::new();
    for arch in &cfg.archs {
        let c = presets::by_name(arch).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown arch {arch:?}: one of {}",
                presets::NAMES.join(", ")
            ))
        })?;
        let towers = [
            ("image", &c.vision.encoder, c.vision.seq_len(), false),
            ("text", &c.text.encoder, 77, true),
            ("text", &c.text.encoder, 16, true),
        ];
        for &batch in &cfg.batches {
            for (tower, e, seq, causal) in towers {
                let (d, i, rows) = (e.hidden_size, e.intermediate_size, batch * seq);
                let label = |what: &str| format!("{arch} {tower} b{batch} s{seq} {what}");
                let gemm = |n, k, ep| Case::Gemm {
                    s: GemmShape { m: rows, n, k },
                    ep,
                };
                out.push((label("qkv"), gemm(3 * d, d, Epilogue::Store)));
                out.push((label("out+res"), gemm(d, d, Epilogue::Accumulate)));
                out.push((
                    label("fc1+act"),
                    gemm(i, d, Epilogue::Activation(e.activation)),
                ));
                out.push((label("fc2+res"), gemm(d, i, Epilogue::Accumulate)));
                let a = AttnShape {
                    batch,
                    seq,
                    heads: e.num_heads,
                    head_dim: e.head_dim(),
                    causal,
                };
                out.push((label("attention"), Case::Attention(a)));
                out.push((label("layernorm"), Case::LayerNorm { rows, dim: d }));
            }
        }
    }
    let all = cfg.ops.iter().any(|o| o == "all");
    for o in &cfg.ops {
        if !["all", "gemm", "attention", "layernorm"].contains(&o.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "unknown op {o:?}: gemm, attention, layernorm or all"
            )));
        }
    }
    Ok(out
        .into_iter()
        .filter(|(_, c)| all || cfg.ops.iter().any(|o| o == c.op()))
        .collect())
}

/// Deterministic values in [−scale, scale), rounded to fp16 as the device stores them.
fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale;
            f16::from_f32(v).to_f32()
        })
        .collect()
}

/// Up to 16 evenly spread indices in 0..n, the last one included.
fn samples(n: usize) -> Vec<usize> {
    let k = n.min(16);
    (0..k)
        .map(|i| if k == 1 { n - 1 } else { i * (n - 1) / (k - 1) })
        .collect()
}

fn check(got: &[f32], want: &[f64], what: &str) -> std::result::Result<(), String> {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        // fp16 output rounding and f32 accumulation; NaN (a poisoned output left unwritten) fails.
        let within = err <= 2e-3 + 3e-3 * w.abs();
        if !within {
            return Err(format!("{what}: element {i}: got {g}, want {w:.6}"));
        }
    }
    Ok(())
}

/// Inputs and outputs of a case, `sets` copies of each so that rotating them keeps L2 cold.
struct Bufs {
    x: Vec<CudaBuf>,
    out: Vec<CudaBuf>,
    w: Vec<super::CudaLinear>,
    gamma: Option<(CudaBuf, CudaBuf)>,
}

/// Host copies for the reference.
struct Host {
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    init: Vec<f32>,
}

fn host(case: &Case) -> Host {
    match *case {
        Case::Gemm { s, .. } => Host {
            x: values(s.m * s.k, 1, 1.0),
            w: values(s.n * s.k, 2, 1.0 / (s.k as f32).sqrt()),
            bias: values(s.n, 3, 0.5),
            init: values(s.m * s.n, 4, 1.0),
        },
        Case::Attention(a) => Host {
            x: values(a.batch * a.seq * 3 * a.width(), 5, 1.0),
            w: Vec::new(),
            bias: Vec::new(),
            init: Vec::new(),
        },
        Case::LayerNorm { rows, dim } => Host {
            x: values(rows * dim, 6, 3.0).iter().map(|v| v + 2.0).collect(),
            w: values(dim, 7, 1.0),
            bias: values(dim, 8, 0.5),
            init: Vec::new(),
        },
    }
}

fn alloc(g: &CudaBackend, case: &Case, h: &Host) -> Result<Bufs> {
    let (in_len, out_len) = match *case {
        Case::Gemm { s, .. } => (s.m * s.k, s.m * s.n),
        Case::Attention(a) => (a.batch * a.seq * 3 * a.width(), a.batch * a.seq * a.width()),
        Case::LayerNorm { rows, dim } => (rows * dim, rows * dim),
    };
    let w_len = if let Case::Gemm { s, .. } = case {
        s.n * s.k
    } else {
        0
    };
    // ≥ 256 MB touched per rotation: several times any L2 (one set on the simulator, which is not timed).
    let bytes = 2 * (in_len + out_len + w_len);
    let sets = if g.is_simulated() {
        1
    } else {
        (256usize << 20).div_ceil(bytes.max(1)).clamp(1, 8)
    };
    let mut b = Bufs {
        x: Vec::new(),
        out: Vec::new(),
        w: Vec::new(),
        gamma: None,
    };
    for _ in 0..sets {
        b.x.push(g.upload(&h.x)?);
        b.out.push(g.alloc(out_len)?);
        if let Case::Gemm { s, .. } = case {
            b.w.push(g.linear(&h.w, s.n, s.k, Some(&h.bias))?);
        }
    }
    if let Case::LayerNorm { .. } = case {
        b.gamma = Some((g.upload(&h.w)?, g.upload(&h.bias)?));
    }
    Ok(b)
}

fn launch(g: &CudaBackend, case: &Case, b: &mut Bufs, set: usize) -> Result<()> {
    match *case {
        Case::Gemm { s, ep } => backend::gemm(g, &mut b.out[set], &b.x[set], &b.w[set], s, ep),
        Case::Attention(a) => backend::attention(g, &mut b.out[set], &b.x[set], a),
        Case::LayerNorm { rows, dim } => {
            let (gm, bt) = b
                .gamma
                .as_ref()
                .ok_or_else(|| Error::Shape("layernorm without gamma".into()))?;
            backend::layernorm(g, &mut b.out[set], &b.x[set], gm, bt, rows, dim, 1e-5)
        }
    }
}

/// Compares sampled outputs of one launch on set 0 with the f64 reference.
fn validate(
    g: &CudaBackend,
    case: &Case,
    h: &Host,
    b: &mut Bufs,
) -> Result<std::result::Result<(), String>> {
    let out_len = g.len(&b.out[0]);
    let init = if matches!(
        case,
        Case::Gemm {
            ep: Epilogue::Accumulate,
            ..
        }
    ) {
        h.init.clone()
    } else {
        vec![f32::NAN; out_len]
    };
    g.write(&mut b.out[0], &init)?;
    launch(g, case, b, 0)?;
    let got = g.download(&b.out[0])?;
    Ok(match *case {
        Case::Gemm { s, ep } => samples(s.m).into_iter().try_for_each(|r| {
            let want: Vec<f64> = (0..s.n)
                .map(|c| {
                    let dot: f64 = (0..s.k)
                        .map(|t| f64::from(h.x[r * s.k + t]) * f64::from(h.w[c * s.k + t]))
                        .sum();
                    let v = dot + f64::from(h.bias[c]);
                    match ep {
                        Epilogue::Store => v,
                        Epilogue::Accumulate => v + f64::from(h.init[r * s.n + c]),
                        Epilogue::Activation(a) => a.apply_f64(v),
                    }
                })
                .collect();
            check(&got[r * s.n..(r + 1) * s.n], &want, &format!("row {r}"))
        }),
        Case::Attention(a) => {
            let (w, hd) = (a.width(), a.head_dim);
            let at = |b: usize, t: usize, part: usize, hh: usize, c: usize| {
                f64::from(h.x[(b * a.seq + t) * 3 * w + part * w + hh * hd + c])
            };
            samples(a.batch * a.heads * a.seq)
                .into_iter()
                .try_for_each(|p| {
                    let (b, hh, q) = (p / (a.heads * a.seq), (p / a.seq) % a.heads, p % a.seq);
                    let keys = if a.causal { q + 1 } else { a.seq };
                    let scale = 1.0 / (hd as f64).sqrt();
                    let sc: Vec<f64> = (0..keys)
                        .map(|j| {
                            (0..hd)
                                .map(|c| at(b, q, 0, hh, c) * at(b, j, 1, hh, c))
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let want: Vec<f64> = (0..hd)
                        .map(|c| (0..keys).map(|j| e[j] * at(b, j, 2, hh, c)).sum::<f64>() / sum)
                        .collect();
                    let o = (b * a.seq + q) * w + hh * hd;
                    check(
                        &got[o..o + hd],
                        &want,
                        &format!("batch {b} head {hh} query {q}"),
                    )
                })
        }
        Case::LayerNorm { rows, dim } => samples(rows).into_iter().try_for_each(|r| {
            let x = &h.x[r * dim..(r + 1) * dim];
            let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
            let var = x
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / dim as f64;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            let want: Vec<f64> = (0..dim)
                .map(|c| (f64::from(x[c]) - mean) * rstd * f64::from(h.w[c]) + f64::from(h.bias[c]))
                .collect();
            check(&got[r * dim..(r + 1) * dim], &want, &format!("row {r}"))
        }),
    })
}

/// Median and minimum of `reps` launches, each between two CUDA events, after 3 warm-up launches.
fn time(
    stream: &Arc<CudaStream>,
    reps: usize,
    sets: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<(f64, f64)> {
    for i in 0..3 {
        f(i % sets)?;
    }
    let mut ms = Vec::with_capacity(reps);
    for i in 0..reps.max(1) {
        // Timing events: cudarc's default flags disable timing.
        let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        f(i % sets)?;
        let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        ms.push(f64::from(start.elapsed_ms(&end)?));
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0]))
}

/// Runs the profile, calling `report` for every row (variants of one shape come together, default first).
pub fn run(cfg: &ProfileConfig, mut report: impl FnMut(&Row)) -> Result<()> {
    if !matches!(cfg.device, Device::Cuda(_) | Device::CudaSim) {
        return Err(Error::InvalidArgument(
            "profile runs on a cuda device (cuda, cuda:N, or cuda-sim to validate without timing)"
                .into(),
        ));
    }
    if cfg.batches.is_empty() || cfg.batches.contains(&0) {
        return Err(Error::InvalidArgument("batch sizes must be ≥ 1".into()));
    }
    for &b in &cfg.batches {
        crate::limits::check("--batch", b as u64, crate::limits::MAX_PROFILE_BATCH as u64)?;
    }
    crate::limits::check(
        "--reps",
        cfg.reps as u64,
        crate::limits::MAX_BENCH_RUNS as u64,
    )?;
    let list = cases(cfg)?;
    if list.is_empty() {
        return Err(Error::InvalidArgument("nothing to profile".into()));
    }
    let base = super::backend_for(cfg.device, &[])?;
    let name = base.device_info().name.clone();
    let (flops_peak, bw_peak) = (peak_fp16_gflops(&name), peak_bandwidth_gbs(&name));
    // One backend per (op, variant), created once.
    let mut backends: Vec<(&'static str, &'static str, CudaBackend)> = Vec::new();
    for op_name in ["gemm", "attention", "layernorm"] {
        let op = kernels::op(op_name)
            .ok_or_else(|| Error::InvalidArgument(format!("no op {op_name}")))?;
        let mut vs: Vec<&kernels::Variant> = op.variants.iter().collect();
        vs.sort_by_key(|v| v.name != op.default);
        for v in vs {
            backends.push((
                op_name,
                v.name,
                super::backend_for(cfg.device, &[(op_name, v.name)])?,
            ));
        }
    }
    let blas = cublas(&base);
    for (label, case) in &list {
        let h = host(case);
        let mut default_ms = None;
        for (op, variant, g) in backends.iter().filter(|(o, _, _)| *o == case.op()) {
            let mut b = alloc(g, case, &h)?;
            let unit = if matches!(case, Case::LayerNorm { .. }) {
                "GB/s"
            } else {
                "TFLOP/s"
            };
            let mut row = Row::untimed(op, label, variant, "ok", unit);
            let before = g.simulator_stats().ok();
            if let Err(e) = validate(g, case, &h, &mut b)? {
                row.status = format!("FAILED: {e}");
                report(&row);
                continue;
            }
            if let (Some(before), Ok(after)) = (before, g.simulator_stats()) {
                // The simulator validates and counts ldmatrix bank conflicts; it does not time.
                let extra = after.ldmatrix_extra_wavefronts - before.ldmatrix_extra_wavefronts;
                let matrices = after.ldmatrix_matrices - before.ldmatrix_matrices;
                row.status = format!(
                    "ok (validated on the simulator, not timed; ldmatrix bank conflicts: {extra} extra wavefronts \
                     over {matrices} matrices)"
                );
                report(&row);
                continue;
            }
            let sets = b.x.len();
            let (med, min) = time(g.stream()?, cfg.reps, sets, |i| launch(g, case, &mut b, i))?;
            fill(
                &mut row,
                case,
                med,
                min,
                flops_peak,
                bw_peak,
                &mut default_ms,
            );
            report(&row);
        }
        if let (Case::Gemm { s, .. }, Some(blas)) = (case, &blas) {
            report(&blas.row(&base, label, *s, &h, cfg.reps, flops_peak, &mut default_ms)?);
        }
    }
    if blas.is_none()
        && !base.is_simulated()
        && list.iter().any(|(_, c)| matches!(c, Case::Gemm { .. }))
    {
        report(&Row::untimed(
            "gemm",
            "-",
            "cublas",
            "skipped: libcublas not found (add its folder to LD_LIBRARY_PATH)",
            "TFLOP/s",
        ));
    }
    Ok(())
}

fn fill(
    row: &mut Row,
    case: &Case,
    med: f64,
    min: f64,
    flops_peak: Option<f64>,
    bw_peak: Option<f64>,
    default_ms: &mut Option<f64>,
) {
    let per_s = case.work() / (med / 1e3);
    let (rate, peak) = match case {
        Case::LayerNorm { .. } => (per_s / 1e9, bw_peak),
        _ => (per_s / 1e12, flops_peak.map(|g| g / 1e3)),
    };
    row.median_ms = Some(med);
    row.min_ms = Some(min);
    row.rate = Some(rate);
    row.peak_fraction = peak.map(|p| rate / p);
    let base = *default_ms.get_or_insert(med);
    row.vs_default = Some(base / med);
}

/// cuBLAS through cudarc, if libcublas loads (probed first: cudarc panics on a missing library).
struct Blas(cudarc::cublas::CudaBlas);

fn cublas(g: &CudaBackend) -> Option<Blas> {
    let stream = g.stream().ok()?.clone();
    // SAFETY: only tries to dlopen libcublas.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return None;
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cudarc::cublas::CudaBlas::new(stream)
    }))
    .ok()?
    .ok()
    .map(Blas)
}

impl Blas {
    /// Plain `out = x·Wᵀ` in fp16 with f32 compute (cublasGemmEx), validated and timed like the variants.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        g: &CudaBackend,
        label: &str,
        s: GemmShape,
        h: &Host,
        reps: usize,
        flops_peak: Option<f64>,
        default_ms: &mut Option<f64>,
    ) -> Result<Row> {
        use cudarc::cublas::{sys::cublasOperation_t as Op, Gemm, GemmConfig};
        let stream = g.stream()?;
        let to16 = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<f16>>();
        let (x, w) = (
            stream.clone_htod(&to16(&h.x))?,
            stream.clone_htod(&to16(&h.w))?,
        );
        let mut out = stream.alloc_zeros::<f16>(s.m * s.n)?;
        let (m, n, k) = (s.m as i32, s.n as i32, s.k as i32);
        // Row-major out[m, n] = x[m, k]·w[n, k]ᵀ is column-major outᵀ[n, m] = wᵀ-as-stored (transposed) · xᵀ.
        let cfg = GemmConfig {
            transa: Op::CUBLAS_OP_T,
            transb: Op::CUBLAS_OP_N,
            m: n,
            n: m,
            k,
            alpha: f16::ONE,
            lda: k,
            ldb: k,
            beta: f16::ZERO,
            ldc: n,
        };
        let gemm = |out: &mut cudarc::driver::CudaSlice<f16>| -> Result<()> {
            // SAFETY: x holds m·k, w n·k and out m·n halves, as the config describes.
            unsafe { self.0.gemm(cfg, &w, &x, out) }
                .map_err(|e| Error::Cuda(format!("cuBLAS: {e:?}")))
        };
        gemm(&mut out)?;
        let got: Vec<f32> = stream
            .clone_dtoh(&out)?
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let mut row = Row::untimed("gemm", label, "cublas", "ok (no epilogue)", "TFLOP/s");
        let bad = samples(s.m).into_iter().try_for_each(|r| {
            let want: Vec<f64> = (0..s.n)
                .map(|c| {
                    (0..s.k)
                        .map(|t| f64::from(h.x[r * s.k + t]) * f64::from(h.w[c * s.k + t]))
                        .sum()
                })
                .collect();
            check(&got[r * s.n..(r + 1) * s.n], &want, &format!("row {r}"))
        });
        if let Err(e) = bad {
            row.status = format!("FAILED: {e}");
            return Ok(row);
        }
        let (med, min) = time(stream, reps, 1, |_| gemm(&mut out))?;
        fill(
            &mut row,
            &Case::Gemm {
                s,
                ep: Epilogue::Store,
            },
            med,
            min,
            flops_peak,
            None,
            default_ms,
        );
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_every_tower_gemm_and_filter_by_op() {
        let cfg = ProfileConfig {
            device: Device::Cuda(0),
            ops: vec!["all".into()],
            archs: vec!["vit-b-32".into()],
            batches: vec![1, 32],
            reps: 1,
        };
        let all = cases(&cfg).unwrap();
        // 2 batches × 3 towers (image, text 77, text 16) × (4 GEMMs + attention + layernorm).
        assert_eq!(all.len(), 36);
        assert!(all.iter().any(|(l, c)| l == "vit-b-32 image b32 s50 fc2+res"
            && matches!(c, Case::Gemm { s, ep: Epilogue::Accumulate } if (s.m, s.n, s.k) == (1600, 768, 3072))));
        assert!(all
            .iter()
            .any(|(_, c)| matches!(c, Case::Attention(a) if a.causal && a.seq == 77)));
        let gemm_only = cases(&ProfileConfig {
            ops: vec!["gemm".into()],
            ..cfg.clone()
        })
        .unwrap();
        assert_eq!(gemm_only.len(), 24);
        assert!(cases(&ProfileConfig {
            ops: vec!["conv".into()],
            ..cfg.clone()
        })
        .is_err());
        assert!(cases(&ProfileConfig {
            archs: vec!["vit-z".into()],
            ..cfg
        })
        .is_err());
    }

    #[test]
    fn samples_include_both_ends() {
        assert_eq!(samples(1), vec![0]);
        assert_eq!(samples(3), vec![0, 1, 2]);
        let s = samples(1000);
        assert_eq!((s.len(), s[0], s[15]), (16, 0, 999));
    }
}
