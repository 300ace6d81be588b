//! `cliprt bench --workload search`: the fused top-k search on a random normalized gallery through one [`Engine`],
//! timed like the model workloads and validated before timing (the first queries against the f64 reference:
//! recall@k, which must be 1 for an f32 gallery up to exact ties).

use std::time::Instant;

use rayon::prelude::*;

use super::{peak_rss_mb, time_runs, Measurement, Workload};
use crate::cpu::Precision;
use crate::engine::{Device, Engine, Gallery};
use crate::error::{Error, Result};
use crate::search::{search_reference, TopK};

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
    /// Any device but the simulator (its timings mean nothing).
    pub device: Device,
    /// Bytes the sweep may allocate (see `bench::check_memory`).
    pub max_memory: u64,
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

/// What a measurement reports besides its timings.
struct Point {
    n: usize,
    dim: usize,
    nq: usize,
    k: usize,
    precision: &'static str,
    device: String,
    isa: String,
    engine: String,
    threads: usize,
    peak: f64,
    load_s: f64,
    gallery_mb: f64,
    recall: f64,
}

impl Point {
    fn measurement(self, (ms, lo, hi): (f64, f64, f64), reps: usize) -> Measurement {
        let gflops = 2.0 * (self.nq * self.n * self.dim) as f64 / (ms / 1e3) / 1e9;
        Measurement {
            arch: format!("gallery-{}x{}", self.n, self.dim),
            workload: Workload::Search,
            batch: self.nq,
            seq: None,
            precision: self.precision,
            device: self.device,
            isa: self.isa,
            engine: self.engine,
            engine_reason: String::new(),
            threads: self.threads,
            items_per_s: self.nq as f64 / (ms / 1e3),
            ms_per_batch: ms,
            ms_min: lo,
            ms_max: hi,
            reps: reps.max(1),
            gflops_per_s: gflops,
            peak_fraction: gflops / self.peak,
            peak_gflops: self.peak,
            load_s: self.load_s,
            weights_mb: self.gallery_mb,
            peak_rss_mb: peak_rss_mb(),
            k: Some(self.k),
            recall: Some(self.recall),
            ops: None,
        }
    }
}

/// Runs the sweep, calling `report` after each measurement.
/// The sweep's sizes are ≥ 1 and its largest allocation fits `max_memory` (see `bench::check_memory`).
pub(super) fn check_sizes(s: &super::SearchSizes, max_memory: u64) -> Result<()> {
    for (what, v) in [
        ("--gallery", &s.galleries),
        ("--dim", &s.dims),
        ("--queries", &s.queries),
        ("--k", &s.ks),
    ] {
        if v.is_empty() || v.contains(&0) {
            return Err(Error::InvalidArgument(format!("{what} values must be ≥ 1")));
        }
    }
    let k = s.ks.iter().copied().max().unwrap_or(0) as u64;
    for &n in &s.galleries {
        for &dim in &s.dims {
            for &nq in &s.queries {
                let (n, dim, nq) = (n as u64, dim as u64, nq as u64);
                // f32 rows, a bf16 copy, the queries (and their packed copy) and the kept hits.
                let bytes = n
                    .saturating_mul(dim)
                    .saturating_mul(6)
                    .saturating_add(nq.saturating_mul(dim).saturating_mul(8))
                    .saturating_add(nq.saturating_mul(k).saturating_mul(16));
                super::check_memory(
                    &format!("a {n} × {dim} gallery with {nq} queries"),
                    bytes,
                    max_memory,
                )?;
            }
        }
    }
    Ok(())
}

/// Runs the sweep, calling `report` after each measurement.
pub fn run(cfg: &SearchBench, mut report: impl FnMut(&Measurement)) -> Result<()> {
    check_sizes(
        &super::SearchSizes {
            galleries: cfg.galleries.clone(),
            dims: cfg.dims.clone(),
            queries: cfg.queries.clone(),
            ks: cfg.ks.clone(),
        },
        cfg.max_memory,
    )?;
    if cfg.device == Device::CudaSim {
        return Err(Error::InvalidArgument(
            "cuda-sim checks kernels on the CPU; its timings mean nothing, so it is not benchmarked".into(),
        ));
    }
    let engine = Engine::open(cfg.device, cfg.precision)?;
    let threads = rayon::current_num_threads();
    let info = engine.search_info(threads);
    let peak = cfg.peak_gflops.or(info.peak_gflops).unwrap_or(f64::NAN);
    let device = engine.info().device;
    for &n in &cfg.galleries {
        for &dim in &cfg.dims {
            let t = Instant::now();
            let rows = random_unit_rows(n, dim, 1);
            let gallery = engine.upload_gallery(&rows, dim, true)?;
            let load_s = t.elapsed().as_secs_f64();
            let gallery_mb = gallery.bytes() as f64 / 1e6;
            for &nq in &cfg.queries {
                let queries = random_unit_rows(nq, dim, 2);
                for &k in &cfg.ks {
                    let recall = validate(&engine, &gallery, &rows, &queries, dim, k)?;
                    let times = time_runs(cfg.warmup, cfg.reps, || {
                        engine.search(&gallery, &queries, k, 1.0).map(drop)
                    })?;
                    let point = Point {
                        n,
                        dim,
                        nq,
                        k,
                        precision: info.precision,
                        device: device.clone(),
                        isa: info.isa.clone(),
                        engine: info.engine.clone(),
                        threads,
                        peak,
                        load_s,
                        gallery_mb,
                        recall,
                    };
                    report(&point.measurement(times, cfg.reps));
                }
            }
        }
    }
    Ok(())
}

/// Fraction of `want`'s hits that `got` also returns.
fn overlap(got: &TopK, want: &TopK) -> f64 {
    let found: usize = (0..want.queries)
        .map(|q| {
            let w: Vec<usize> = want.hits(q).map(|h| h.0).collect();
            got.hits(q).filter(|h| w.contains(&h.0)).count()
        })
        .sum();
    found as f64 / (want.queries * want.k).max(1) as f64
}

/// recall@k of the first queries against the f64 reference on the f32 rows.
fn validate(
    engine: &Engine,
    g: &Gallery,
    rows: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
) -> Result<f64> {
    let nq = (queries.len() / dim).min(VALIDATED_QUERIES);
    let probe = &queries[..nq * dim];
    let got = engine.search(g, probe, k, 1.0)?;
    Ok(overlap(&got, &search_reference(rows, dim, probe, k, 1.0)))
}
