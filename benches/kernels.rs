//! The CUDA kernel variants at CLIP's shapes, under criterion (wall clock around launch + synchronize). Without a
//! GPU it prints "skipped: no CUDA device" and measures nothing. `cliprt profile` is the fuller tool: it validates
//! each variant first and times with CUDA events.
//!
//!     cargo bench --bench kernels

use criterion::{criterion_group, criterion_main, Criterion};

#[cfg(feature = "cuda")]
fn kernels(c: &mut Criterion) {
    use cliprt::backend::{self, AttnShape, Backend, Epilogue, GemmShape};
    use cliprt::cuda::{kernels::op, CudaBackend};
    use criterion::Throughput;

    let base = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            return;
        }
    };
    let data = |len: usize| {
        (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect::<Vec<f32>>()
    };
    let mut g = c.benchmark_group("cuda/gemm");
    // ViT-B/32 at batch 32: 1600 rows; the four encoder GEMMs.
    for (n, k, name) in [
        (2304, 768, "qkv"),
        (768, 768, "out"),
        (3072, 768, "fc1"),
        (768, 3072, "fc2"),
    ] {
        let s = GemmShape { m: 1600, n, k };
        g.throughput(Throughput::Elements((2 * s.m * s.n * s.k) as u64));
        for v in op("gemm").expect("gemm op").variants {
            let gpu = CudaBackend::with_variants(0, &[("gemm", v.name)]).expect("variant");
            let (x, w) = (
                gpu.upload(&data(s.m * k)).expect("x"),
                gpu.linear(&data(n * k), n, k, None).expect("w"),
            );
            let mut out = gpu.alloc(s.m * n).expect("out");
            g.bench_function(format!("{name}_{}x{n}x{k}/{}", s.m, v.name), |b| {
                b.iter(|| {
                    backend::gemm(&gpu, &mut out, &x, &w, s, Epilogue::Store).expect("gemm");
                    gpu.synchronize().expect("sync")
                })
            });
        }
    }
    g.finish();
    let mut g = c.benchmark_group("cuda/attention");
    let a = AttnShape {
        batch: 32,
        seq: 50,
        heads: 12,
        head_dim: 64,
        causal: false,
    };
    let qkv = base.upload(&data(32 * 50 * 3 * 768)).expect("qkv");
    let mut out = base.alloc(32 * 50 * 768).expect("out");
    g.throughput(Throughput::Elements((4 * 32 * 12 * 50 * 50 * 64) as u64));
    g.bench_function("vit-b-32_b32", |b| {
        b.iter(|| {
            backend::attention(&base, &mut out, &qkv, a).expect("attention");
            base.synchronize().expect("sync")
        })
    });
    g.finish();
}

#[cfg(not(feature = "cuda"))]
fn kernels(_: &mut Criterion) {
    println!("skipped: this build has no CUDA support");
}

criterion_group!(benches, kernels);
criterion_main!(benches);
