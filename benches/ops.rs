//! Each CPU op at CLIP's real shapes. Throughput is reported in elements = FLOPs (GEMM, attention) or values
//! (layernorm, softmax, activation), so criterion's "Gelem/s" reads as GFLOP/s or G values/s.
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench ops                 # everything
//!     RAYON_NUM_THREADS=2 cargo bench --bench ops -- gemm/f32      # one family
//!
//! CLIPRT_CPU_ISA=avx2|scalar runs a lower SIMD tier (avx2: its own 6 × 16 kernel; scalar: the gemm crate).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use cliprt::backend::{self, Activation, AttnShape, Backend, Epilogue, GemmShape};
use cliprt::cpu::{simd, CpuBackend, Isa, Precision};

fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn quick<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.warm_up_time(std::time::Duration::from_millis(500));
    g.measurement_time(std::time::Duration::from_secs(2));
    g
}

/// ViT-B/32's four GEMMs at batch 1 (50 rows) and 32 (1600 rows), its text tower's at batch 32 (352 rows), and
/// ViT-L/14's MLP at batch 8.
fn gemms(c: &mut Criterion) {
    let isa = Isa::from_env().expect("CLIPRT_CPU_ISA");
    for precision in [Precision::F32, Precision::Bf16] {
        let cpu = CpuBackend::new(isa, precision);
        if cpu.precision() != precision {
            continue;
        }
        let mut g = quick(c, &format!("gemm/{}", precision.name()));
        for (m, k, n, role) in [
            (1600, 768, 2304, "qkv"),
            (1600, 768, 768, "out"),
            (1600, 768, 3072, "fc1"),
            (1600, 3072, 768, "fc2"),
            (50, 768, 2304, "qkv"),
            (50, 768, 768, "out"),
            (50, 768, 3072, "fc1"),
            (50, 3072, 768, "fc2"),
            // The text tower at batch 32 of short prompts (11 tokens).
            (352, 512, 1536, "text-qkv"),
            (352, 512, 512, "text-out"),
            (352, 512, 2048, "text-fc1"),
            (352, 2048, 512, "text-fc2"),
            (2056, 1024, 4096, "l14-fc1"),
            // Everything in L2: the micro-kernel's own ceiling.
            (144, 256, 256, "in-cache"),
        ] {
            let w = cpu
                .linear(&data(n * k, 1), n, k, Some(&data(n, 2)))
                .unwrap();
            let x = data(m * k, 3);
            let mut out = vec![0.0; m * n];
            let ep = match role {
                "fc1" | "l14-fc1" | "text-fc1" => Epilogue::Activation(Activation::QuickGelu),
                "out" | "fc2" | "text-out" | "text-fc2" => Epilogue::Accumulate,
                _ => Epilogue::Store,
            };
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(format!("{role}/{m}x{k}x{n}"), |b| {
                b.iter(|| backend::gemm(&cpu, &mut out, &x, &w, GemmShape { m, n, k }, ep).unwrap())
            });
        }
        g.finish();
    }
}

fn attention(c: &mut Criterion) {
    let cpu = CpuBackend::from_env(Precision::F32).unwrap();
    let mut g = quick(c, "attention");
    for (batch, seq, heads, hd, causal, name) in [
        (32, 50, 12, 64, false, "b32-vision"),
        (1, 50, 12, 64, false, "b1-vision"),
        (8, 257, 16, 64, false, "l14-vision"),
        (4, 257, 16, 80, false, "h14-hd80"),
        (32, 11, 8, 64, true, "b32-text-short"),
        (32, 77, 8, 64, true, "b32-text-77"),
    ] {
        let s = AttnShape {
            batch,
            seq,
            heads,
            head_dim: hd,
            causal,
        };
        let qkv = data(batch * seq * 3 * s.width(), 4);
        let mut out = vec![0.0; batch * seq * s.width()];
        g.throughput(Throughput::Elements(
            (4 * batch * seq * seq * s.width()) as u64,
        ));
        g.bench_function(name, |b| {
            b.iter(|| backend::attention(&cpu, &mut out, &qkv, s).unwrap())
        });
    }
    g.finish();
}

fn row_ops(c: &mut Criterion) {
    let isa = Isa::from_env().unwrap();
    let cpu = CpuBackend::new(isa, Precision::F32);
    let mut g = quick(c, "rows");
    let (rows, dim) = (1600, 768);
    let x = data(rows * dim, 5);
    let (gamma, beta) = (data(dim, 6), data(dim, 7));
    let mut out = vec![0.0; rows * dim];
    g.throughput(Throughput::Elements((rows * dim) as u64));
    g.bench_function("layernorm/1600x768", |b| {
        b.iter(|| backend::layernorm(&cpu, &mut out, &x, &gamma, &beta, rows, dim, 1e-5).unwrap())
    });
    for act in Activation::ALL {
        let mut y = data(rows * 3072, 8);
        g.throughput(Throughput::Elements(y.len() as u64));
        g.bench_function(format!("{}/1600x3072", act.name()), |b| {
            b.iter(|| {
                y.chunks_mut(3072)
                    .for_each(|r| simd::bias_act(isa, r, None, Some(act)))
            })
        });
    }
    let mut s = data(50 * 64, 9);
    g.throughput(Throughput::Elements(s.len() as u64));
    g.bench_function("softmax/50-rows-of-50", |b| {
        b.iter(|| {
            s.chunks_mut(64)
                .for_each(|r| simd::softmax(isa, r, 50, 0.125))
        })
    });
    g.finish();
}

criterion_group!(benches, gemms, attention, row_ops);
criterion_main!(benches);
