//! `cliprt bench --workload search`: the fused top-k search on a random normalized gallery, timed like the model
//! workloads and validated before timing (the first queries against the f64 reference: recall@k, which must be 1
//! for an f32 gallery up to exact ties).

use std::time::Instant;

use rayon::prelude::*;

use super::{search, search_reference, to_bf16_pairs, Gallery, Storage};
use crate::bench::{measure_peak_gflops, peak_rss_mb, time_runs, Measurement, Workload};
use crate::cpu::{Isa, Precision};
use crate::error::{Error, Result};

/// The sweep: every gallery size × dim × query count × k.
#[derive(Clone, Debug)]
pub struct SearchBench {
    pub galleries: Vec<usize>,
    pub dims: Vec<usize>,
    pub queries: Vec<usize>,
    pub ks: Vec<usize>,
    pub precision: Precision,
    pub warmup: usize,
    pub reps: usize,
    pub peak_gflops: Option<f64>,
}

/// Queries checked against the f64 reference before timing (the reference costs a full f64 pass each).
const VALIDATED_QUERIES: usize = 2;

/// `rows × dim` unit vectors, deterministic per row (in parallel: a 1M × 768 gallery is 768 M values).
pub fn random_unit_rows(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * dim];
    out.par_chunks_mut(dim.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            let mut s = (seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_mul(0xD1B5_4A32_D192_ED03)
                | 1;
            for v in row.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *v = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            }
            let n = row.iter().map(|&v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= n);
        });
    out
}

/// Runs the sweep, calling `report` after each measurement.
pub fn run(cfg: &SearchBench, mut report: impl FnMut(&Measurement)) -> Result<()> {
    for (what, v) in [
        ("--gallery", &cfg.galleries),
        ("--dim", &cfg.dims),
        ("--queries", &cfg.queries),
        ("--k", &cfg.ks),
    ] {
        if v.is_empty() || v.contains(&0) {
            return Err(Error::InvalidArgument(format!("{what} values must be ≥ 1")));
        }
    }
    let isa = Isa::from_env()?;
    let threads = rayon::current_num_threads();
    let bf16 = cfg.precision == Precision::Bf16
        && crate::cpu::isa::has_avx512_bf16()
        && isa == Isa::Avx512;
    let precision = if bf16 { "bf16" } else { "f32" };
    let peak = cfg
        .peak_gflops
        .unwrap_or_else(|| measure_peak_gflops(threads, isa))
        * if bf16 { 2.0 } else { 1.0 };
    for &n in &cfg.galleries {
        for &dim in &cfg.dims {
            let t = Instant::now();
            let rows = random_unit_rows(n, dim, 1);
            let pairs = if bf16 {
                to_bf16_pairs(&rows, dim)
            } else {
                Vec::new()
            };
            let storage = if bf16 {
                Storage::Bf16(&pairs)
            } else {
                Storage::F32(&rows)
            };
            let gallery = Gallery::new(storage, dim, true)?;
            let load_s = t.elapsed().as_secs_f64();
            let gallery_mb = (if bf16 {
                pairs.len() * 4
            } else {
                rows.len() * 4
            }) as f64
                / 1e6;
            for &nq in &cfg.queries {
                let queries = random_unit_rows(nq, dim, 2);
                for &k in &cfg.ks {
                    let recall = validate(&gallery, &rows, &queries, dim, k)?;
                    let (ms, lo, hi) = time_runs(cfg.warmup, cfg.reps, || {
                        search(&gallery, &queries, k, 1.0).map(drop)
                    })?;
                    let gflops = 2.0 * (nq * n * dim) as f64 / (ms / 1e3) / 1e9;
                    report(&Measurement {
                        arch: format!("gallery-{n}x{dim}"),
                        workload: Workload::Search,
                        batch: nq,
                        seq: None,
                        precision,
                        device: "cpu".into(),
                        isa: isa.name().into(),
                        threads,
                        items_per_s: nq as f64 / (ms / 1e3),
                        ms_per_batch: ms,
                        ms_min: lo,
                        ms_max: hi,
                        reps: cfg.reps.max(1),
                        gflops_per_s: gflops,
                        peak_fraction: gflops / peak,
                        peak_gflops: peak,
                        load_s,
                        weights_mb: gallery_mb,
                        peak_rss_mb: peak_rss_mb(),
                        k: Some(k),
                        recall: Some(recall),
                    });
                }
            }
        }
    }
    Ok(())
}

/// recall@k of the first queries against the f64 reference on the f32 rows.
fn validate(g: &Gallery, rows: &[f32], queries: &[f32], dim: usize, k: usize) -> Result<f64> {
    let nq = (queries.len() / dim).min(VALIDATED_QUERIES);
    let probe = &queries[..nq * dim];
    let got = search(g, probe, k, 1.0)?;
    let want = search_reference(rows, dim, probe, k, 1.0);
    let found: usize = (0..nq)
        .map(|q| {
            let w: Vec<usize> = want.hits(q).map(|h| h.0).collect();
            got.hits(q).filter(|h| w.contains(&h.0)).count()
        })
        .sum();
    Ok(found as f64 / (nq * want.k).max(1) as f64)
}
