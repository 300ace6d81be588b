//! Retrieval on a CUDA device: the gallery uploaded once, the fused normalize-and-score top-k kernels
//! (kernels/topk.cu), and the scaled-cosine logits kernel (kernels/similarity.cu). The same contracts as the CPU's
//! [`super::search`] and [`super::scaled_logits`], so the backend conformance suite checks both alike.

use super::{Retrieval, SearchInfo, TopK};
use crate::cuda::kernels::{Work, MAX_GPU_K, TOPK_STATIC_SMEM};
use crate::cuda::memory::Mem;
use crate::cuda::runtime::{int, Arg};
use crate::cuda::CudaBackend;
use crate::error::{Error, Result};

/// A retrieval gallery on the device: f32 rows and, unless they are unit length, their inverse norms.
pub struct CudaGallery {
    data: Mem,
    inv_norms: Option<Mem>,
    rows: usize,
    dim: usize,
}

impl CudaGallery {
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The device bytes: the rows and, if kept, their inverse norms.
    pub fn bytes(&self) -> usize {
        self.data.bytes() + self.inv_norms.as_ref().map_or(0, Mem::bytes)
    }
}

/// `scale · normalize(a) · normalize(b)ᵀ` on the device for host f32 embeddings `a[rows_a, dim]`,
/// `b[rows_b, dim]` (the same contract as [`crate::similarity::scaled_cosine`]).
pub(crate) fn scaled_cosine(
    gpu: &CudaBackend,
    a: &[f32],
    rows_a: usize,
    b: &[f32],
    rows_b: usize,
    dim: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    crate::similarity::check_pair(a, rows_a, b, rows_b, dim)?;
    let outputs = rows_a * rows_b;
    if outputs == 0 {
        return Ok(Vec::new());
    }
    let da = gpu.rt.upload_bytes(bytemuck::cast_slice(a))?;
    let db = gpu.rt.upload_bytes(bytemuck::cast_slice(b))?;
    let out = gpu.rt.alloc_bytes(4 * outputs)?;
    let (ra, rb, d) = (int(rows_a, "rows")?, int(rows_b, "rows")?, int(dim, "dim")?);
    // a and b hold rows·dim values, out rows_a·rows_b.
    gpu.rt.launch_op(
        "scaled_cosine",
        Work::Outputs { total: outputs },
        &[
            Arg::Mem(&out),
            Arg::Mem(&da),
            Arg::Mem(&db),
            Arg::I32(ra),
            Arg::I32(rb),
            Arg::I32(d),
            Arg::F32(scale),
        ],
    )?;
    gpu.rt.download_pod(&out, outputs)
}

/// Uploads a gallery `[rows, dim]` for [`CudaBackend::search`] (inverse norms computed here once, in f64,
/// unless `normalized`).
pub(crate) fn upload_gallery(
    gpu: &CudaBackend,
    data: &[f32],
    dim: usize,
    normalized: bool,
) -> Result<CudaGallery> {
    let rows = super::whole_rows(data.len(), dim)?;
    if rows >= u32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "{rows} gallery rows exceed the kernels' 32-bit indices"
        )));
    }
    if rows == 0 {
        return Err(Error::EmptyInput("the gallery is empty"));
    }
    let inv_norms = if normalized {
        None
    } else {
        let inv: Vec<f32> = data
            .chunks_exact(dim)
            .map(|r| crate::similarity::scaled_inv_norm(r, 1.0))
            .collect();
        Some(gpu.rt.upload_bytes(bytemuck::cast_slice(&inv))?)
    };
    Ok(CudaGallery {
        data: gpu.rt.upload_bytes(bytemuck::cast_slice(data))?,
        inv_norms,
        rows,
        dim,
    })
}

/// The `k` best rows of `g` for each query row of `queries` by `scale · cos`, best first, ties by lower index
/// (the contract of [`super::search`]), with k ≤ [`MAX_GPU_K`].
pub(crate) fn search(
    gpu: &CudaBackend,
    g: &CudaGallery,
    queries: &[f32],
    k: usize,
    scale: f32,
) -> Result<super::TopK> {
    let dim = g.dim;
    let nq = super::check_request(dim, g.rows, queries, k, MAX_GPU_K, scale)?;
    if TOPK_STATIC_SMEM + 4 * dim > 48 * 1024 {
        return Err(Error::InvalidArgument(format!(
            "dim {dim} exceeds the CUDA top-k's shared memory"
        )));
    }
    // Normalized and scaled on the host, like the CPU kernels' packing.
    let packed: Vec<f32> = queries
        .chunks_exact(dim)
        .flat_map(|q| {
            let f = crate::similarity::scaled_inv_norm(q, scale);
            q.iter().map(move |&v| v * f)
        })
        .collect();
    // Enough blocks to fill the GPU (≈ 1024), slices of at least 256 rows: candidates stay ≤ 1024·k per
    // query whatever the gallery size.
    let slices = (1024 / nq).clamp(1, g.rows.div_ceil(256).max(1)).min(1024);
    let per_slice = g.rows.div_ceil(slices);
    let slices = g.rows.div_ceil(per_slice);
    let (ki, rows_i, dim_i, per_i) = (
        int(k, "k")?,
        int(g.rows, "rows")?,
        int(dim, "dim")?,
        int(per_slice, "rows")?,
    );
    let n_cand = slices * k;
    let q_dev = gpu.rt.upload_bytes(bytemuck::cast_slice(&packed))?;
    let cand_s = gpu.rt.alloc_bytes(4 * nq * n_cand)?;
    let cand_i = gpu.rt.alloc_bytes(4 * nq * n_cand)?;
    // Buffers hold nq·dim queries, rows·dim gallery values and nq·slices·k candidates; a null inverse-norm
    // pointer tells the kernel the gallery is normalized.
    gpu.rt.launch_op(
        "topk",
        Work::TopK {
            queries: nq,
            slices,
            dim,
        },
        &[
            Arg::Mem(&cand_s),
            Arg::Mem(&cand_i),
            Arg::Mem(&q_dev),
            Arg::Mem(&g.data),
            g.inv_norms.as_ref().map_or(Arg::Null, Arg::Mem),
            Arg::I32(rows_i),
            Arg::I32(dim_i),
            Arg::I32(ki),
            Arg::I32(per_i),
        ],
    )?;
    let out_s = gpu.rt.alloc_bytes(4 * nq * k)?;
    let out_i = gpu.rt.alloc_bytes(4 * nq * k)?;
    let n_i = int(n_cand, "candidates")?;
    // Candidates hold nq·n_cand pairs, outputs nq·k.
    gpu.rt.launch_op(
        "topk_merge",
        Work::PerQuery { queries: nq },
        &[
            Arg::Mem(&out_s),
            Arg::Mem(&out_i),
            Arg::Mem(&cand_s),
            Arg::Mem(&cand_i),
            Arg::I32(n_i),
            Arg::I32(ki),
        ],
    )?;
    let scores: Vec<f32> = gpu.rt.download_pod(&out_s, nq * k)?;
    let indices: Vec<u32> = gpu.rt.download_pod(&out_i, nq * k)?;
    let keep = k.min(g.rows);
    let mut top = super::TopK {
        queries: nq,
        k: keep,
        indices: Vec::with_capacity(nq * keep),
        scores: Vec::with_capacity(nq * keep),
    };
    for q in 0..nq {
        // The kernel ranks NaN scores unpredictably: a non-finite kept score or an out-of-range row is the
        // gallery's fault.
        let kept = q * k..q * k + keep;
        if scores[kept.clone()].iter().any(|s| !s.is_finite())
            || indices[kept].iter().any(|&i| i as usize >= g.rows)
        {
            return Err(super::gallery_not_finite());
        }
        top.indices
            .extend(indices[q * k..q * k + keep].iter().map(|&i| i as usize));
        top.scores.extend_from_slice(&scores[q * k..q * k + keep]);
    }
    Ok(top)
}

impl Retrieval for CudaBackend {
    type Gallery = CudaGallery;

    fn scaled_cosine(
        &self,
        a: &[f32],
        rows_a: usize,
        b: &[f32],
        rows_b: usize,
        dim: usize,
        scale: f32,
    ) -> Result<Vec<f32>> {
        scaled_cosine(self, a, rows_a, b, rows_b, dim, scale)
    }
    fn upload_gallery(&self, rows: &[f32], dim: usize, normalized: bool) -> Result<CudaGallery> {
        upload_gallery(self, rows, dim, normalized)
    }
    fn search(&self, g: &CudaGallery, queries: &[f32], k: usize, scale: f32) -> Result<TopK> {
        search(self, g, queries, k, scale)
    }
    fn max_k(&self) -> usize {
        MAX_GPU_K
    }
    fn gallery_bytes(&self, g: &CudaGallery) -> usize {
        g.bytes()
    }
    /// f32 rows on the CUDA cores: no tensor-core peak applies.
    fn search_info(&self, _threads: usize) -> SearchInfo {
        SearchInfo {
            engine: "cuda-f32".into(),
            precision: "f32",
            isa: self.device_info().arch.clone(),
            peak_gflops: None,
        }
    }
}
