//! Retrieval and zero-shot scoring on the CPU: the fused top-k search (f32 and bf16 galleries, the row-dot and
//! tile kernels) and the logits matrix. Throughput is in queries (elements = queries per search).
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench similarity
//!
//! `cliprt bench --workload search` sweeps the sizes of BENCHMARKS.md against faiss; this bench tracks the kernels.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use cliprt::bench::random_unit_rows;
use cliprt::search::{self, Gallery, Storage};

fn quick<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.warm_up_time(std::time::Duration::from_millis(500));
    g.measurement_time(std::time::Duration::from_secs(3));
    g
}

/// A 100k × 512 gallery: 1 query (row-dot), 64 queries (tiles), k = 10 and 1000.
fn topk(c: &mut Criterion) {
    let (n, dim) = (100_000, 512);
    let rows = random_unit_rows(n, dim, 1);
    let pairs = search::to_bf16_pairs(&rows, dim);
    for (name, storage) in [
        ("f32", Storage::F32(&rows)),
        ("bf16", Storage::Bf16(&pairs)),
    ] {
        let gallery = Gallery::new(storage, dim, true).expect("gallery");
        let mut g = quick(c, &format!("search/{name}"));
        for (nq, k) in [(1, 10), (64, 10), (64, 1000)] {
            let queries = random_unit_rows(nq, dim, 2);
            g.throughput(Throughput::Elements(nq as u64));
            g.bench_function(format!("n{n}_q{nq}_k{k}"), |b| {
                b.iter(|| search::search(&gallery, &queries, k, 1.0).expect("search"))
            });
        }
        g.finish();
    }
}

/// Zero-shot: 32 image embeddings against 1000 class prompts.
fn logits(c: &mut Criterion) {
    let dim = 512;
    let classes = random_unit_rows(1000, dim, 3);
    let images = random_unit_rows(32, dim, 4);
    let gallery = Gallery::new(Storage::F32(&classes), dim, false).expect("gallery");
    let mut g = quick(c, "logits");
    g.throughput(Throughput::Elements(32));
    g.bench_function("32x1000x512", |b| {
        b.iter(|| search::logits(&gallery, &images, 100.0).expect("logits"))
    });
    g.finish();
}

criterion_group!(benches, topk, logits);
criterion_main!(benches);
