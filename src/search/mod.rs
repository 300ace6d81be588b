//! Retrieval at scale: the top-k gallery rows of each query by scaled cosine similarity, computed tile by tile
//! with the running top-k kept per thread, so no `queries × gallery` score matrix ever exists and the extra
//! memory is independent of the gallery size. Normalization is fused: query norms are folded into the packed
//! queries, gallery norms are computed once when the [`Gallery`] is built (or skipped for a normalized one).
//!
//! Results are deterministic: ties are broken by the lower gallery index, whatever the thread split. `k` larger
//! than the gallery returns every row. [`logits`] is the same kernel family storing every score (zero-shot).

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod host;
mod kernel;
pub mod topk;

use std::borrow::Cow;

use rayon::prelude::*;

use crate::backend::Backend;
use crate::cpu::isa::{has_avx512_bf16, Isa};
use crate::cpu::matmul::bf16_pair;
use crate::error::{Error, Result};
use crate::similarity::scaled_inv_norm;
use kernel::Sink;
use topk::TopKSet;

/// Largest k accepted (the heaps live per thread and per query).
pub const MAX_K: usize = 4096;

/// What runs [`Retrieval::search`]: its engine, the precision of the gallery rows, and the peak it is measured
/// against in the bench.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchInfo {
    pub engine: String,
    pub precision: &'static str,
    pub isa: String,
    pub peak_gflops: Option<f64>,
}

/// The retrieval ops of a backend, on host embeddings: logits and top-k search over a gallery uploaded once. The
/// sibling of [`Backend`] (implemented beside each backend's kernels: [`host`] for the CPU and the reference,
/// `cuda.rs` for CUDA), checked by the same conformance suite.
pub trait Retrieval: Backend {
    /// A retrieval gallery uploaded once for [`Retrieval::search`].
    type Gallery: Send + Sync + 'static;

    /// `scale · normalize(a) · normalize(b)ᵀ`: `[rows_a, rows_b]` logits of host embeddings `a[rows_a, dim]` and
    /// `b[rows_b, dim]` (CLIP's `logits_per_image`). An all-zero row scores 0.
    fn scaled_cosine(
        &self,
        a: &[f32],
        rows_a: usize,
        b: &[f32],
        rows_b: usize,
        dim: usize,
        scale: f32,
    ) -> Result<Vec<f32>>;
    /// Prepares a gallery of host rows `[rows, dim]` for [`Retrieval::search`] (`normalized`: the rows are unit
    /// length, so no norm pass is needed).
    fn upload_gallery(&self, rows: &[f32], dim: usize, normalized: bool) -> Result<Self::Gallery>;
    /// The `k` best gallery rows of each query row (`dim` wide) by `scale · cos`, best first, ties by the lower
    /// index; `k` past the gallery returns every row (the contract of [`search`]).
    fn search(&self, g: &Self::Gallery, queries: &[f32], k: usize, scale: f32) -> Result<TopK>;
    /// The largest `k` [`Retrieval::search`] takes.
    fn max_k(&self) -> usize {
        MAX_K
    }
    /// The bytes a gallery holds on the backend.
    fn gallery_bytes(&self, g: &Self::Gallery) -> usize;
    /// What runs the search on `threads` threads (by default the model's engine and arithmetic, no peak).
    fn search_info(&self, _threads: usize) -> SearchInfo {
        let i = self.info();
        SearchInfo {
            engine: i.engine,
            precision: i.arithmetic,
            isa: i.isa,
            peak_gflops: None,
        }
    }
}

/// How the gallery's rows are stored.
#[derive(Clone, Copy, Debug)]
pub enum Storage<'a> {
    /// `[rows, dim]` f32.
    F32(&'a [f32]),
    /// `[rows, dim.div_ceil(2)]` bf16 pairs (low half = even column), as [`to_bf16_pairs`] makes them: half the
    /// bytes, and twice the multiply rate with AVX512_BF16.
    Bf16(&'a [u32]),
}

/// A gallery of embeddings to search, borrowed (e.g. from a memory-mapped index) with its inverse norms.
pub struct Gallery<'a> {
    storage: Storage<'a>,
    rows: usize,
    dim: usize,
    /// 1/|row| per row (0 for an all-zero row); `None` when the rows are known to be unit length.
    inv_norms: Option<Cow<'a, [f32]>>,
}

impl<'a> Gallery<'a> {
    /// `data` holds whole rows of `dim`. With `normalized`, rows are taken as unit length (no norm pass).
    pub fn new(storage: Storage<'a>, dim: usize, normalized: bool) -> Result<Gallery<'a>> {
        if dim == 0 {
            return Err(Error::InvalidArgument("gallery dimension is 0".into()));
        }
        let (len, per_row) = match storage {
            Storage::F32(d) => (d.len(), dim),
            Storage::Bf16(d) => (d.len(), dim.div_ceil(2)),
        };
        if len % per_row != 0 {
            return Err(Error::Shape(format!(
                "gallery holds {len} values, not whole rows of {per_row}"
            )));
        }
        let rows = len / per_row;
        if rows > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "{rows} gallery rows exceed 2^32"
            )));
        }
        let mut g = Gallery {
            storage,
            rows,
            dim,
            inv_norms: None,
        };
        if !normalized {
            g.inv_norms = Some(Cow::Owned(
                (0..rows)
                    .into_par_iter()
                    .with_min_len(1024)
                    .map_init(
                        || vec![0.0f32; dim],
                        |buf, r| {
                            g.row_f32(r, buf);
                            scaled_inv_norm(buf, 1.0)
                        },
                    )
                    .collect::<Vec<f32>>(),
            ));
        }
        Ok(g)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// "f32" or "bf16".
    pub fn precision(&self) -> &'static str {
        match self.storage {
            Storage::F32(_) => "f32",
            Storage::Bf16(_) => "bf16",
        }
    }

    /// Row `r` widened to f32.
    fn row_f32(&self, r: usize, out: &mut [f32]) {
        match self.storage {
            Storage::F32(d) => out.copy_from_slice(&d[r * self.dim..(r + 1) * self.dim]),
            Storage::Bf16(d) => {
                let dp = self.dim.div_ceil(2);
                for (c, o) in out.iter_mut().enumerate() {
                    let pair = d[r * dp + c / 2];
                    let bits = if c % 2 == 0 {
                        pair & 0xFFFF
                    } else {
                        pair >> 16
                    };
                    *o = f32::from_bits(bits << 16);
                }
            }
        }
    }
}

/// The number of rows `len` f32 values make at width `dim`, or the error every backend's `upload_gallery` gives.
pub(crate) fn whole_rows(len: usize, dim: usize) -> Result<usize> {
    if dim == 0 || !len.is_multiple_of(dim) {
        return Err(Error::Shape(format!(
            "gallery of {len} values is not whole rows of {dim}"
        )));
    }
    Ok(len / dim)
}

/// A gallery that owns its rows, f32 or bf16 pairs, with the inverse norms computed once: what the host backends'
/// [`Retrieval::upload_gallery`] keeps.
pub struct HostGallery {
    rows: HostRows,
    count: usize,
    dim: usize,
    inv_norms: Option<Vec<f32>>,
}

enum HostRows {
    F32(Vec<f32>),
    Bf16(Vec<u32>),
}

impl HostGallery {
    /// `rows` holds whole rows of `dim`; with `bf16` they are stored as bf16 pairs (half the bytes, twice the
    /// multiply rate with AVX512_BF16).
    pub fn new(rows: Vec<f32>, dim: usize, normalized: bool, bf16: bool) -> Result<HostGallery> {
        // Checked on the f32 rows: the bf16 conversion would drop a partial last row silently.
        whole_rows(rows.len(), dim)?;
        let mut g = HostGallery {
            rows: if bf16 {
                HostRows::Bf16(to_bf16_pairs(&rows, dim))
            } else {
                HostRows::F32(rows)
            },
            count: 0,
            dim,
            inv_norms: None,
        };
        // Gallery::new checks the shape and computes the norms (of the stored, possibly rounded, rows).
        let checked = Gallery::new(g.storage(), dim, normalized)?;
        let (count, inv) = (checked.rows, checked.inv_norms.map(Cow::into_owned));
        (g.count, g.inv_norms) = (count, inv);
        Ok(g)
    }

    fn storage(&self) -> Storage<'_> {
        match &self.rows {
            HostRows::F32(d) => Storage::F32(d),
            HostRows::Bf16(d) => Storage::Bf16(d),
        }
    }

    /// The gallery to search, borrowing the rows and norms.
    pub fn view(&self) -> Gallery<'_> {
        Gallery {
            storage: self.storage(),
            rows: self.count,
            dim: self.dim,
            inv_norms: self.inv_norms.as_deref().map(Cow::Borrowed),
        }
    }

    /// The bytes the rows take.
    pub fn bytes(&self) -> usize {
        match &self.rows {
            HostRows::F32(d) => 4 * d.len(),
            HostRows::Bf16(d) => 4 * d.len(),
        }
    }

    pub fn rows(&self) -> usize {
        self.count
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The rows, where stored as f32.
    pub fn f32_rows(&self) -> Option<&[f32]> {
        match &self.rows {
            HostRows::F32(d) => Some(d),
            HostRows::Bf16(_) => None,
        }
    }
}

/// `[rows, dim]` f32 → bf16 pairs for [`Storage::Bf16`] (round to nearest even; an odd `dim` is zero-padded).
pub fn to_bf16_pairs(data: &[f32], dim: usize) -> Vec<u32> {
    let dp = dim.div_ceil(2);
    let rows = data.len() / dim.max(1);
    let mut out = vec![0u32; rows * dp];
    out.par_chunks_mut(dp.max(1))
        .zip(data.par_chunks(dim.max(1)))
        .for_each(|(o, row)| {
            for (p, pair) in o.iter_mut().zip(row.chunks(2)) {
                *p = bf16_pair(pair);
            }
        });
    out
}

/// The top-k of each query: row-major `[queries, k]` indices and scaled scores, best first. `k` is the number
/// kept per query: the asked k, or the gallery size if smaller.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    pub queries: usize,
    pub k: usize,
    pub indices: Vec<usize>,
    pub scores: Vec<f32>,
}

impl TopK {
    /// Query `q`'s `(gallery row, score)` pairs, best first.
    pub fn hits(&self, q: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = q * self.k..(q + 1) * self.k;
        self.indices[r.clone()]
            .iter()
            .copied()
            .zip(self.scores[r].iter().copied())
    }
}

/// Which kernel scores a search.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    /// AVX-512 row dot products for `qn` (1, 2, 4 or 8) query slots: few queries.
    RowDot { qn: usize },
    /// AVX-512 tiles over panels of `width` (16, 32, 48 or 64) queries.
    Tiles { width: usize },
    /// Plain loops over panels of `width` queries.
    Portable { width: usize },
}

impl Kernel {
    fn choose(isa: Isa, g: &Gallery, nq: usize) -> Kernel {
        let width = 16 * kernel::panel_vectors(nq);
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && isa.available() {
            let bf16 = matches!(g.storage, Storage::Bf16(_));
            if nq <= kernel::avx512::ROW_DOT_MAX_QUERIES
                && (!bf16 || is_x86_feature_detected!("avx512vl"))
            {
                return Kernel::RowDot {
                    qn: nq.next_power_of_two(),
                };
            }
            if !bf16 || has_avx512_bf16() {
                return Kernel::Tiles { width };
            }
        }
        let _ = (isa, g);
        Kernel::Portable { width }
    }

    /// Query slots the kernel computes (≥ the queries; the rest are padding with +∞ thresholds).
    fn slots(self, nq: usize) -> usize {
        match self {
            Kernel::RowDot { qn } => qn.max(16),
            Kernel::Tiles { width } | Kernel::Portable { width } => nq.div_ceil(width) * width,
        }
    }
}

/// Queries laid out for a kernel, each multiplied by `scale / |q|` (0 for a zero query).
struct Packed {
    kernel: Kernel,
    /// Row-dot: `[qn][dim rounded up to 16]`. Tiles and portable: panels `[dim][width]`.
    f32: Vec<f32>,
    /// Tiles over a bf16 gallery: the panels as bf16 pairs along dim, `[dim/2][width]`.
    bf16: Vec<u32>,
}

fn pack_queries(
    queries: &[f32],
    nq: usize,
    dim: usize,
    scale: f32,
    kernel: Kernel,
    g: &Gallery,
) -> Packed {
    let factor: Vec<f32> = queries
        .chunks_exact(dim)
        .map(|q| scaled_inv_norm(q, scale))
        .collect();
    let value = |q: usize, kk: usize| {
        if q < nq && kk < dim {
            queries[q * dim + kk] * factor[q]
        } else {
            0.0
        }
    };
    let mut b = Vec::new();
    let f = match kernel {
        Kernel::RowDot { qn } => {
            let len = dim.next_multiple_of(16);
            (0..qn * len).map(|i| value(i / len, i % len)).collect()
        }
        Kernel::Tiles { width } | Kernel::Portable { width } => {
            let panels = nq.div_ceil(width);
            let mut f = vec![0.0f32; panels * dim * width];
            for p in 0..panels {
                for kk in 0..dim {
                    for c in 0..width {
                        f[(p * dim + kk) * width + c] = value(p * width + c, kk);
                    }
                }
            }
            if matches!(
                (kernel, g.storage),
                (Kernel::Tiles { .. }, Storage::Bf16(_))
            ) {
                let dp = dim.div_ceil(2);
                b = vec![0u32; panels * dp * width];
                for p in 0..panels {
                    for kp in 0..dp {
                        for c in 0..width {
                            let q = p * width + c;
                            b[(p * dp + kp) * width + c] =
                                bf16_pair(&[value(q, 2 * kp), value(q, 2 * kp + 1)]);
                        }
                    }
                }
            }
            f
        }
    };
    Packed {
        kernel,
        f32: f,
        bf16: b,
    }
}

/// Checks a top-k request (every backend's contract): whole query rows of `dim`, a non-empty gallery, `k` in
/// `1 ..= max_k`, a finite scale. Returns the number of queries.
pub(crate) fn check_request(
    dim: usize,
    rows: usize,
    queries: &[f32],
    k: usize,
    max_k: usize,
    scale: f32,
) -> Result<usize> {
    let nq = check_queries(dim, rows, queries)?;
    if k == 0 || k > max_k {
        return Err(Error::InvalidArgument(format!(
            "k = {k}: expected 1 ..= {max_k}{}",
            if max_k < MAX_K {
                format!(" here (the CPU search goes to {MAX_K})")
            } else {
                String::new()
            }
        )));
    }
    if !scale.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "scale {scale} is not finite"
        )));
    }
    Ok(nq)
}

/// What a search reports when gallery rows score NaN (a corrupt index, or values that overflow).
pub(crate) fn gallery_not_finite() -> Error {
    Error::NonFinite(
        "gallery rows score NaN: the gallery holds NaN or infinite values (a corrupt index?)"
            .into(),
    )
}

/// Checks a query batch against a gallery of `rows` × `dim`; returns the number of queries.
fn check_queries(dim: usize, rows: usize, queries: &[f32]) -> Result<usize> {
    if queries.is_empty() {
        return Err(Error::EmptyInput("no queries given"));
    }
    if !queries.len().is_multiple_of(dim) {
        return Err(Error::Shape(format!(
            "{} query values are not whole rows of {dim}",
            queries.len()
        )));
    }
    if rows == 0 {
        return Err(Error::EmptyInput("the gallery is empty"));
    }
    if queries.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("a query vector".into()));
    }
    Ok(queries.len() / dim)
}

/// Runs gallery rows `rows` through the packed queries' kernel into `sink`.
fn score_rows(
    g: &Gallery,
    packed: &Packed,
    nq: usize,
    rows: std::ops::Range<usize>,
    sink: &mut Sink,
) {
    let inv = g.inv_norms.as_deref();
    let dim = g.dim;
    match packed.kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::RowDot { qn } => {
            use kernel::avx512::{row_dot_bf16, row_dot_f32};
            let q = &packed.f32;
            // SAFETY: Kernel::choose checked AVX-512F (and VL for bf16); q holds qn padded rows.
            unsafe {
                match (g.storage, qn) {
                    (Storage::F32(d), 1) => row_dot_f32::<1, 8>(d, dim, rows, inv, q, nq, sink),
                    (Storage::F32(d), 2) => row_dot_f32::<2, 4>(d, dim, rows, inv, q, nq, sink),
                    (Storage::F32(d), 4) => row_dot_f32::<4, 2>(d, dim, rows, inv, q, nq, sink),
                    (Storage::F32(d), _) => row_dot_f32::<8, 1>(d, dim, rows, inv, q, nq, sink),
                    (Storage::Bf16(d), 1) => row_dot_bf16::<1, 8>(d, dim, rows, inv, q, nq, sink),
                    (Storage::Bf16(d), 2) => row_dot_bf16::<2, 4>(d, dim, rows, inv, q, nq, sink),
                    (Storage::Bf16(d), 4) => row_dot_bf16::<4, 2>(d, dim, rows, inv, q, nq, sink),
                    (Storage::Bf16(d), _) => row_dot_bf16::<8, 1>(d, dim, rows, inv, q, nq, sink),
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Tiles { width } => {
            use kernel::avx512::{block_bf16, block_f32};
            let (pf, pb) = (&packed.f32, &packed.bf16);
            // SAFETY: Kernel::choose checked AVX-512F (and AVX512_BF16 for bf16); the panels are `width` wide.
            unsafe {
                match (g.storage, width / 16) {
                    (Storage::F32(d), 1) => block_f32::<1>(d, dim, rows, inv, pf, nq, sink),
                    (Storage::F32(d), 2) => block_f32::<2>(d, dim, rows, inv, pf, nq, sink),
                    (Storage::F32(d), 3) => block_f32::<3>(d, dim, rows, inv, pf, nq, sink),
                    (Storage::F32(d), _) => block_f32::<4>(d, dim, rows, inv, pf, nq, sink),
                    (Storage::Bf16(d), 1) => block_bf16::<1>(d, dim, rows, inv, pb, nq, sink),
                    (Storage::Bf16(d), 2) => block_bf16::<2>(d, dim, rows, inv, pb, nq, sink),
                    (Storage::Bf16(d), 3) => block_bf16::<3>(d, dim, rows, inv, pb, nq, sink),
                    (Storage::Bf16(d), _) => block_bf16::<4>(d, dim, rows, inv, pb, nq, sink),
                }
            }
        }
        // A bf16 gallery is widened row by row.
        Kernel::Portable { width } => kernel::portable::block(
            rows,
            dim,
            |r, out| g.row_f32(r, out),
            inv,
            &packed.f32,
            nq,
            width,
            sink,
        ),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("Kernel::choose picks the AVX-512 kernels only on x86_64"),
    }
}

/// Gallery rows per parallel task: about 256 KiB of rows, so a task's rows stay in L2 across query panels.
fn block_rows(g: &Gallery) -> usize {
    let bytes_per_row = match g.storage {
        Storage::F32(_) => 4 * g.dim,
        Storage::Bf16(_) => 4 * g.dim.div_ceil(2),
    };
    ((256 << 10) / bytes_per_row.max(1)).clamp(12, 1 << 16) / 12 * 12
}

/// The `k` best gallery rows of each query (rows of `queries`, `dim` wide) by `scale · cos(q, g)`, with the
/// CPU's best SIMD tier (or `CLIPRT_CPU_ISA`).
pub fn search(g: &Gallery, queries: &[f32], k: usize, scale: f32) -> Result<TopK> {
    search_with(Isa::from_env()?, g, queries, k, scale)
}

/// [`search`] on a given SIMD tier (a tier the CPU lacks falls back to the portable kernel). A row that scores NaN
/// (a NaN or infinite value in a corrupt gallery) never ranks; when fewer than `k` rows score a finite value the
/// search is [`Error::NonFinite`], never a short or NaN-ranked result.
pub fn search_with(isa: Isa, g: &Gallery, queries: &[f32], k: usize, scale: f32) -> Result<TopK> {
    let nq = check_request(g.dim, g.rows, queries, k, MAX_K, scale)?;
    let k = k.min(g.rows);
    let packed = pack_queries(queries, nq, g.dim, scale, Kernel::choose(isa, g, nq), g);
    let slots = packed.kernel.slots(nq);
    let per_block = block_rows(g);
    let blocks = g.rows.div_ceil(per_block);
    let mut set = (0..blocks)
        .into_par_iter()
        .fold(
            || TopKSet::new(nq, slots, k),
            |mut set, b| {
                let rows = b * per_block..((b + 1) * per_block).min(g.rows);
                score_rows(g, &packed, nq, rows, &mut Sink::TopK(&mut set));
                set
            },
        )
        .reduce_with(TopKSet::merge)
        .unwrap_or_else(|| TopKSet::new(nq, slots, k));
    let (mut indices, mut scores) = (Vec::with_capacity(nq * k), Vec::with_capacity(nq * k));
    for q in 0..nq {
        let hits = set.sorted(q);
        // A NaN score never enters the top-k, so a query short of k hits met rows that score NaN; an infinite
        // score comes from an infinite value.
        if hits.len() < k || hits.iter().any(|h| !h.score.is_finite()) {
            return Err(gallery_not_finite());
        }
        for h in hits {
            indices.push(h.index as usize);
            scores.push(h.score);
        }
    }
    Ok(TopK {
        queries: nq,
        k,
        indices,
        scores,
    })
}

/// Every score: `[queries, gallery rows]` of `scale · cos(q, g)` (zero-shot sizes; the same kernels, storing).
pub fn logits(g: &Gallery, queries: &[f32], scale: f32) -> Result<Vec<f32>> {
    let nq = check_queries(g.dim, g.rows, queries)?;
    let kernel = Kernel::choose(Isa::from_env()?, g, nq);
    let packed = pack_queries(queries, nq, g.dim, scale, kernel, g);
    let mut out = vec![0.0f32; nq * g.rows];
    let rows = g.rows;
    score_rows(
        g,
        &packed,
        nq,
        0..rows,
        &mut Sink::Store {
            out: &mut out,
            rows,
        },
    );
    Ok(out)
}

/// [`crate::similarity::scaled_cosine`] on the fused SIMD kernels (f32 sums; the norms computed once per row):
/// what zero-shot scoring runs on the CPU. `similarity::scaled_cosine` stays the f64 oracle.
pub fn scaled_logits(
    a: &[f32],
    rows_a: usize,
    b: &[f32],
    rows_b: usize,
    dim: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    crate::similarity::check_pair(a, rows_a, b, rows_b, dim)?;
    if rows_a == 0 || rows_b == 0 {
        return Ok(Vec::new());
    }
    let gallery = Gallery::new(Storage::F32(b), dim, false)?;
    logits(&gallery, a, scale)
}

/// The oracle: every score in f64, the exact top-k kept in a sorted list (ties by lower index). For tests and
/// benchmark validation; its memory is O(k), so a benchmark's peak memory stays the kernel's.
pub fn search_reference(
    gallery: &[f32],
    dim: usize,
    queries: &[f32],
    k: usize,
    scale: f32,
) -> TopK {
    let norm = |v: &[f32]| {
        v.iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    };
    let rows = gallery.len() / dim;
    let nq = queries.len() / dim;
    let k = k.min(rows);
    let (mut indices, mut scores) = (Vec::new(), Vec::new());
    for q in queries.chunks_exact(dim) {
        let qn = norm(q);
        // Best first: (score, index), ordered by score descending then index ascending.
        let mut best: Vec<(f64, usize)> = Vec::with_capacity(k + 1);
        for (i, g) in gallery.chunks_exact(dim).enumerate() {
            let dot: f64 = q
                .iter()
                .zip(g)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let denom = qn * norm(g);
            let s = if denom > 0.0 {
                f64::from(scale) * dot / denom
            } else {
                0.0
            };
            // Rows come in index order, so an equal score ranks after those already kept.
            if best.len() == k && best.last().is_some_and(|w| s <= w.0) {
                continue;
            }
            let at = best.partition_point(|b| b.0 >= s);
            best.insert(at, (s, i));
            best.truncate(k);
        }
        for (s, i) in best {
            indices.push(i);
            scores.push(s as f32);
        }
    }
    TopK {
        queries: nq,
        k,
        indices,
        scores,
    }
}
