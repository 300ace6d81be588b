//! `cliprt.Index` (an index file built by `cliprt index`) and `cliprt.search` (a fused top-k over numpy arrays).

use std::path::PathBuf;

use numpy::PyArray2;
use pyo3::prelude::*;

use crate::arrays;
use crate::errors::{self, to_py};
use crate::model::{pixels_of, Model};
use crate::pools::Pools;

type Hits<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>);

fn hits<'py>(py: Python<'py>, top: cliprt::search::TopK) -> PyResult<Hits<'py>> {
    let ids = top.indices.iter().map(|&i| i as i64).collect();
    Ok((
        arrays::matrix(py, top.scores, top.queries, top.k)?,
        arrays::matrix(py, ids, top.queries, top.k)?,
    ))
}

/// search(queries, gallery, k) -> (scores, ids)
///
/// The k best gallery rows of each query by cosine similarity, like a flat inner-product index over normalized
/// vectors, without writing the score matrix: queries [Q, dim] and gallery [N, dim] are float32 (normalized or
/// not). Returns scores [Q, k'] (float32, best first) and ids [Q, k'] (int64 gallery rows), k' = min(k, N).
#[pyfunction]
#[pyo3(signature = (queries, gallery, k))]
pub fn search<'py>(
    py: Python<'py>,
    queries: &Bound<'py, PyAny>,
    gallery: &Bound<'py, PyAny>,
    k: usize,
) -> PyResult<Hits<'py>> {
    let (q, _, qd) = arrays::f32_matrix(queries, "queries")?;
    let (g, _, gd) = arrays::f32_matrix(gallery, "gallery")?;
    if qd != gd {
        return Err(errors::input(format!(
            "queries are {qd} wide, the gallery {gd}"
        )));
    }
    let top = py
        .detach(|| {
            Pools::shared().run(|| {
                let g = cliprt::search::Gallery::new(cliprt::search::Storage::F32(&g), gd, false)?;
                cliprt::search::search(&g, &q, k, 1.0)
            })
        })?
        .map_err(to_py)?;
    hits(py, top)
}

/// An index file written by `cliprt index` (or `Index.build`), memory-mapped.
///
/// Index(path)
#[pyclass(frozen, module = "cliprt")]
pub struct Index {
    index: cliprt::index::Index,
}

impl Index {
    fn search_embedded<'py>(
        &self,
        py: Python<'py>,
        model: &Model,
        queries: cliprt::Embeddings,
        k: usize,
    ) -> PyResult<Hits<'py>> {
        let q = queries.normalized();
        let top = model.compute(py, |clip| self.index.search(clip.engine(), &q.data, k))?;
        hits(py, top)
    }

    fn check(&self, model: &Model) -> PyResult<()> {
        self.index
            .check_model(model.clip(), self.index.file())
            .map_err(to_py)
    }
}

#[pymethods]
impl Index {
    #[new]
    fn new(path: PathBuf) -> PyResult<Index> {
        Ok(Index {
            index: cliprt::index::Index::open(&path).map_err(to_py)?,
        })
    }

    fn __len__(&self) -> usize {
        self.index.rows()
    }

    /// Embedding width.
    #[getter]
    fn dim(&self) -> usize {
        self.index.dim()
    }

    /// The image path of row `i`.
    fn path(&self, i: usize) -> PyResult<std::ffi::OsString> {
        if i >= self.index.rows() {
            return Err(errors::input(format!(
                "row {i} is out of range (the index has {} rows)",
                self.index.rows()
            )));
        }
        Ok(self.index.path(i).into_os_string())
    }

    /// Every row's image path, in row order.
    #[getter]
    fn paths(&self) -> Vec<std::ffi::OsString> {
        (0..self.index.rows())
            .map(|i| self.index.path(i).into_os_string())
            .collect()
    }

    /// A copy of the (unit-normalized) embeddings [rows, dim].
    fn embeddings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        arrays::matrix(
            py,
            self.index.embeddings().to_vec(),
            self.index.rows(),
            self.index.dim(),
        )
    }

    /// The k best rows for each query vector (float32 [Q, dim], normalized or not) by cosine:
    /// (scores [Q, k'], ids [Q, k']).
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: usize,
    ) -> PyResult<Hits<'py>> {
        let (q, rows, dim) = arrays::f32_matrix(queries, "queries")?;
        if dim != self.index.dim() {
            return Err(errors::input(format!(
                "queries are {dim} wide, the index {}",
                self.index.dim()
            )));
        }
        let e = cliprt::Embeddings { rows, dim, data: q };
        let q = e.normalized();
        let top = py
            .detach(|| Pools::shared().run(|| self.index.search_host(&q.data, k)))?
            .map_err(to_py)?;
        hits(py, top)
    }

    /// The k best rows for each text, embedded by `model` (the model the index was built with).
    fn search_texts<'py>(
        &self,
        py: Python<'py>,
        model: &Model,
        texts: &Bound<'py, PyAny>,
        k: usize,
    ) -> PyResult<Hits<'py>> {
        self.check(model)?;
        let texts = arrays::texts(texts)?;
        let e = model.compute(py, |clip| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            clip.embed_texts(&refs)
        })?;
        self.search_embedded(py, model, e, k)
    }

    /// The k best rows for each image (paths, bytes or arrays, as Model.embed_images takes), embedded by `model`.
    fn search_images<'py>(
        &self,
        py: Python<'py>,
        model: &Model,
        images: &Bound<'py, PyAny>,
        k: usize,
    ) -> PyResult<Hits<'py>> {
        self.check(model)?;
        let inputs = arrays::images(images)?;
        let e = model.compute(py, |clip| clip.embed_each(&inputs, |i| pixels_of(clip, i)))?;
        self.search_embedded(py, model, e, k)
    }

    fn __repr__(&self) -> String {
        format!(
            "cliprt.Index({:?}, rows={}, dim={}, model={:?})",
            self.index.file().display().to_string(),
            self.index.rows(),
            self.index.dim(),
            self.index.identity.model
        )
    }
}
