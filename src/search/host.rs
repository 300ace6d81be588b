//! [`Retrieval`] on the host backends: the CPU runs the fused SIMD kernels of this module (bf16 gallery rows where
//! its bf16 engines and `vdpbf16ps` run), the reference runs the f64 oracle.

use super::{
    check_request, scaled_logits, search_reference, search_with, HostGallery, Retrieval,
    SearchInfo, TopK, MAX_K,
};
use crate::backend::reference::ReferenceBackend;
use crate::cpu::{engine, isa, peak, CpuBackend, Isa, Precision};
use crate::error::{Error, Result};
use crate::similarity;

/// Whether `cpu` keeps galleries as bf16 pairs: where the bf16 engines run and the scoring kernels have
/// `vdpbf16ps` (half the bytes, twice the multiply rate).
fn bf16_gallery(cpu: &CpuBackend) -> bool {
    cpu.precision() == Precision::Bf16 && cpu.isa() == Isa::Avx512 && isa::has_avx512_bf16()
}

impl Retrieval for CpuBackend {
    type Gallery = HostGallery;

    fn scaled_cosine(
        &self,
        a: &[f32],
        rows_a: usize,
        b: &[f32],
        rows_b: usize,
        dim: usize,
        scale: f32,
    ) -> Result<Vec<f32>> {
        scaled_logits(a, rows_a, b, rows_b, dim, scale)
    }
    fn upload_gallery(&self, rows: &[f32], dim: usize, normalized: bool) -> Result<HostGallery> {
        HostGallery::new(rows.to_vec(), dim, normalized, bf16_gallery(self))
    }
    fn gallery_bytes(&self, g: &HostGallery) -> usize {
        g.bytes()
    }
    fn search_info(&self, threads: usize) -> SearchInfo {
        let (engine, precision, unit) = if bf16_gallery(self) {
            ("avx512-bf16".to_string(), "bf16", peak::Unit::Dpbf16)
        } else {
            let f32_engine = engine::choose(self.isa(), Precision::F32).engine;
            (
                f32_engine.name().to_string(),
                "f32",
                peak::Unit::Fma(self.isa()),
            )
        };
        SearchInfo {
            engine,
            precision,
            isa: self.isa().name().into(),
            peak_gflops: Some(peak::peak_gflops(threads, unit)),
        }
    }
    fn search(&self, g: &HostGallery, queries: &[f32], k: usize, scale: f32) -> Result<TopK> {
        search_with(self.isa(), &g.view(), queries, k, scale)
    }
}

impl Retrieval for ReferenceBackend {
    type Gallery = HostGallery;

    fn scaled_cosine(
        &self,
        a: &[f32],
        rows_a: usize,
        b: &[f32],
        rows_b: usize,
        dim: usize,
        scale: f32,
    ) -> Result<Vec<f32>> {
        similarity::scaled_cosine(a, rows_a, b, rows_b, dim, scale)
    }
    fn upload_gallery(&self, rows: &[f32], dim: usize, normalized: bool) -> Result<HostGallery> {
        HostGallery::new(rows.to_vec(), dim, normalized, false)
    }
    fn gallery_bytes(&self, g: &HostGallery) -> usize {
        g.bytes()
    }
    fn search(&self, g: &HostGallery, queries: &[f32], k: usize, scale: f32) -> Result<TopK> {
        let rows = g
            .f32_rows()
            .ok_or_else(|| Error::InvalidArgument("the reference searches f32 galleries".into()))?;
        check_request(g.dim(), g.rows(), queries, k, MAX_K, scale)?;
        Ok(search_reference(rows, g.dim(), queries, k, scale))
    }
}
