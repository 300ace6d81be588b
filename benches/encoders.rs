//! End-to-end tower throughput on synthetic models at real shapes (seeded random weights, no download).
//!
//!     cargo bench --bench encoders                     # ViT-B/32 image tower, batch 1 and 32
//!     CLIPRT_BENCH_ARCH=vit-l-14 cargo bench --bench encoders
//!
//! Threads: the rayon pool (RAYON_NUM_THREADS). Compare with tools/bench_torch.py at the same thread count.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use cliprt::config::presets;
use cliprt::cpu::CpuBackend;
use cliprt::model::ClipModel;
use cliprt::model::ClipWeights;
use cliprt::model::TextBatch;

fn towers(c: &mut Criterion) {
    let arch = std::env::var("CLIPRT_BENCH_ARCH").unwrap_or_else(|_| "vit-b-32".into());
    let config = presets::by_name(&arch)
        .unwrap_or_else(|| panic!("unknown arch {arch}; one of {:?}", presets::NAMES));
    let model = ClipModel::new(
        CpuBackend::default(),
        &config,
        ClipWeights::random(&config, 1),
    )
    .expect("synthetic model");
    let size = config.vision.image_size;
    let mut group = c.benchmark_group(format!("{arch}/cpu-f32"));
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_secs(3));
    group.measurement_time(std::time::Duration::from_secs(30));
    for batch in [1usize, 32] {
        let pixels: Vec<f32> = (0..batch * 3 * size * size)
            .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
            .collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("image/batch{batch}"), |b| {
            b.iter(|| model.encode_images(&pixels, batch).unwrap())
        });
    }
    // 32 short prompts of 9 tokens (SOT, 7 words, EOT), cut at their length as cliprt always does.
    let rows: Vec<Vec<u32>> = (0..32u32)
        .map(|i| {
            [49406]
                .into_iter()
                .chain((0..7).map(|j| 320 + i * 7 + j))
                .chain([49407])
                .collect()
        })
        .collect();
    let batch = TextBatch::new(&rows, &config.text).unwrap();
    group.throughput(Throughput::Elements(32));
    group.bench_function("text/batch32-len9", |b| {
        b.iter(|| model.encode_texts(&batch).unwrap())
    });
    group.finish();
}

criterion_group!(benches, towers);
criterion_main!(benches);
