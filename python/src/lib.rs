//! `cliprt._cliprt`: the Python bindings of cliprt (PyO3 + numpy). The Python package `cliprt` (python/cliprt)
//! re-exports these and adds the Ray runner. Rules every binding keeps:
//! - numpy arrays in and out, never lists of objects for results;
//! - inputs are copied out of Python objects while the GIL is held, then the GIL is released for the whole
//!   computation (`Python::detach`), so several Python threads can share one model;
//! - every cliprt error becomes a `cliprt.CliprtError` subclass; a bad array raises, never crashes.

mod arrays;
mod errors;
mod index;
mod model;
mod pools;
mod shards;

use pyo3::prelude::*;

#[pymodule]
fn _cliprt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<model::Model>()?;
    m.add_class::<index::Index>()?;
    m.add_function(wrap_pyfunction!(index::search, m)?)?;
    m.add_function(wrap_pyfunction!(shards::expand_shards, m)?)?;
    m.add_function(wrap_pyfunction!(shards::shard_output_done, m)?)?;
    m.add_function(wrap_pyfunction!(shards::embed_shard, m)?)?;
    m.add_function(wrap_pyfunction!(shards::check_shard_names, m)?)?;
    Ok(())
}
