//! What `embed` spends on one image before the tower: decode (JPEG through libjpeg-turbo, PNG), PIL's bicubic
//! resize of the shortest side, the center crop and the normalization. Throughput is in images; one thread, inside
//! a one-thread pool as in a pipeline's parallel decodes (called from outside a pool, the resize would spread its
//! rows over every core).
//!
//!     cargo bench --bench preprocess
//!
//! The JPEGs are photo-like (smooth gradients, edges and noise, as the pipeline bench's shards) at the sizes
//! img2dataset-style datasets hold, encoded here so the bench needs no files.

use std::io::Cursor;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder};

use cliprt::preprocess::PreprocessConfig;

/// A `w × h` RGB picture: two gradients, a disc with a sharp edge and ±12 of hashed noise.
fn photo(w: u32, h: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let noise =
                ((x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)) % 25) as i32 - 12;
            let (dx, dy) = (x as i32 - w as i32 / 2, y as i32 - h as i32 / 3);
            let disc = if dx * dx + dy * dy < (h as i32 / 4).pow(2) {
                60
            } else {
                0
            };
            for base in [255 * x / w.max(1), 255 * y / h.max(1), 128 + (x + y) % 64] {
                px.push((base as i32 + noise + disc).clamp(0, 255) as u8);
            }
        }
    }
    px
}

fn jpeg(w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(&photo(w, h), w, h, ExtendedColorType::Rgb8)
        .expect("encoding an in-memory JPEG");
    out
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&photo(w, h), w, h, ExtendedColorType::Rgb8)
        .expect("encoding an in-memory PNG");
    out.into_inner()
}

fn preprocess(c: &mut Criterion) {
    let config = PreprocessConfig::openai(224);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let mut g = c.benchmark_group("preprocess");
    g.sample_size(20);
    g.warm_up_time(std::time::Duration::from_millis(500));
    g.measurement_time(std::time::Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    for (name, bytes) in [
        ("jpeg-640x480-q90", jpeg(640, 480, 90)),
        ("jpeg-320x240-q90", jpeg(320, 240, 90)),
        ("jpeg-1280x960-q85", jpeg(1280, 960, 85)),
        ("png-640x480", png(640, 480)),
    ] {
        g.bench_function(name, |b| {
            pool.install(|| b.iter(|| config.apply_bytes(&bytes, Path::new(name)).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
