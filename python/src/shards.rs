//! Webdataset shards from Python: the same per-shard outputs as `cliprt index --shards` (src/index/shards.rs), one
//! shard per call, so that an engine (Ray, Spark, a process pool) can hand shards to workers.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use cliprt::index::shards;

use crate::errors::{self, to_py};
use crate::model::Model;

/// expand_shards(patterns) -> list[str]
///
/// Expands shard patterns (a str or a list of str) with brace groups: "data/{00000..00099}.tar" (zero-padded
/// numeric ranges) and "{a,b}" (alternatives), in order.
#[pyfunction]
pub fn expand_shards(patterns: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let list: Vec<String> = match patterns.extract::<String>() {
        Ok(one) => vec![one],
        Err(_) => patterns
            .extract()
            .map_err(|_| errors::input("patterns must be a str or a list of str"))?,
    };
    let mut out = Vec::new();
    for p in &list {
        out.extend(shards::expand(p).map_err(to_py)?);
    }
    Ok(out)
}

/// shard_output_done(model, shard, out_dir) -> bool
///
/// Whether `shard` already has a finished output in `out_dir` from this model (its NAME.json and NAME.npy).
#[pyfunction]
pub fn shard_output_done(
    py: Python<'_>,
    model: &Model,
    shard: &str,
    out_dir: PathBuf,
) -> PyResult<bool> {
    let identity = model.identity(py)?;
    Ok(py.detach(|| shards::is_done(shard, &out_dir, &identity)))
}

/// embed_shard(model, shard, out_dir, batch=32, force=False) -> dict
///
/// Embeds one webdataset shard into out_dir/NAME.npy + NAME.json (all or nothing), unless it already has a finished
/// output from this model (and not `force`). Returns {"shard", "rows", "skipped": [(key, reason)], "already_done"}.
/// A shard that cannot be read (missing, truncated, corrupt) raises; it gets no output.
#[pyfunction]
#[pyo3(signature = (model, shard, out_dir, batch = 32, force = false))]
pub fn embed_shard<'py>(
    py: Python<'py>,
    model: &Model,
    shard: &str,
    out_dir: PathBuf,
    batch: usize,
    force: bool,
) -> PyResult<Bound<'py, PyDict>> {
    if batch == 0 {
        return Err(errors::input("batch must be ≥ 1"));
    }
    let identity = model.identity(py)?;
    let result = py.detach(|| {
        if !force {
            if let Some(done) =
                shards::read_meta(shard, &out_dir).filter(|m| m.model.matches(&identity))
            {
                return Ok(Ok(Err(done.rows)));
            }
        }
        if let Err(e) = std::fs::create_dir_all(&out_dir) {
            return Ok(Err(cliprt::Error::Io {
                path: out_dir.clone(),
                source: e,
            }));
        }
        model
            .pools()
            .run(|| shards::embed_shard(model.clip(), &identity, shard, &out_dir, batch).map(Ok))
    });
    // Ok(report) for an embedded shard, Err(rows) for one already done.
    let report = result?.map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("shard", shard)?;
    match report {
        Err(rows) => {
            d.set_item("rows", rows)?;
            d.set_item("skipped", Vec::<(String, String)>::new())?;
            d.set_item("already_done", true)?;
        }
        Ok(r) => {
            let skipped: Vec<(String, String)> =
                r.skipped.into_iter().map(|s| (s.key, s.reason)).collect();
            d.set_item("rows", r.rows)?;
            d.set_item("skipped", skipped)?;
            d.set_item("already_done", false)?;
        }
    }
    Ok(d)
}

/// check_shard_names(shards)
///
/// Raises InputError when two shards would write the same output (their file names, less `.tar`, are equal).
#[pyfunction]
pub fn check_shard_names(shards: Vec<String>) -> PyResult<()> {
    shards::check_names(&shards).map_err(to_py)
}
