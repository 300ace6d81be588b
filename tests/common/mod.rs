//! Helpers shared by the integration tests: fixture paths, reference files, tolerance checks.
#![allow(dead_code)]

use std::path::PathBuf;

/// tests/fixtures, or `CLIPRT_FIXTURES` when set (test binaries carried to another machine, where the source
/// folder compiled into them does not exist: scripts/gpu/run.sh).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("CLIPRT_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// The reference outputs written by tools/make_fixtures.py for one model folder.
pub struct Reference {
    pub images: Vec<String>,
    pub texts: Vec<String>,
    pub ids: Vec<Vec<u32>>,
    pub logit_scale: f32,
    pub pixels: Vec<f32>,
    pub image_embeds: Vec<f32>,
    pub text_embeds: Vec<f32>,
    pub logits: Vec<f32>,
}

pub fn reference(model: &str) -> Reference {
    let dir = fixture(model).join("reference");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let strings = |k: &str| -> Vec<String> {
        manifest[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let npy = |f: &str| cliprt::npy::read_npy(&dir.join(f)).unwrap().0;
    Reference {
        images: strings("images"),
        texts: strings("texts"),
        ids: manifest["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect(),
        logit_scale: manifest["logit_scale"].as_f64().unwrap() as f32,
        pixels: npy("pixels.npy"),
        image_embeds: npy("image_embeds.npy"),
        text_embeds: npy("text_embeds.npy"),
        logits: npy("logits.npy"),
    }
}

/// Asserts |got − want| ≤ atol + rtol·|want| elementwise; reports the worst error and the first failing index.
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0.0f32, 0usize);
    let mut first_bad = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        // Written negated so that NaN counts as a failure.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let bad = !(err <= atol + rtol * w.abs());
        if bad && first_bad.is_none() {
            first_bad = Some(i);
        }
        if err > worst.0 || err.is_nan() {
            worst = (err, i);
        }
    }
    if let Some(i) = first_bad {
        panic!(
            "{what}: max abs err {:e} at {}; first failure at {i}: got {} want {} (atol {atol:e}, rtol {rtol:e})",
            worst.0, worst.1, got[i], want[i]
        );
    }
}

/// Cosine similarity of two vectors, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Checks each row: cosine ≥ `min_cos` and max-abs of the L2-normalized rows ≤ `max_abs`. Returns the worst
/// (cosine, max-abs) seen.
pub fn assert_rows_match(
    got: &[f32],
    want: &[f32],
    dim: usize,
    min_cos: f64,
    max_abs: f32,
    what: &str,
) -> (f64, f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (1.0f64, 0.0f32);
    for (r, (g, w)) in got
        .chunks_exact(dim)
        .zip(want.chunks_exact(dim))
        .enumerate()
    {
        let c = cosine(g, w);
        let (mut gn, mut wn) = (g.to_vec(), w.to_vec());
        cliprt::similarity::normalize_rows(&mut gn, dim);
        cliprt::similarity::normalize_rows(&mut wn, dim);
        let abs = gn
            .iter()
            .zip(&wn)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            c >= min_cos && abs <= max_abs,
            "{what} row {r}: cosine {c:.9}, max abs {abs:e}"
        );
        worst = (worst.0.min(c), worst.1.max(abs));
    }
    worst
}

/// Deterministic pseudo-random f32s in [-scale, scale) (xorshift), for op tests with fresh inputs per seed.
pub fn random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Same index wherever the reference's score is separated from its neighbours (including the first row left out)
/// by more than `sep`; every score within `tol` of the reference's.
pub fn assert_matches(
    got: &cliprt::search::TopK,
    want_k1: &cliprt::search::TopK,
    k: usize,
    sep: f32,
    tol: f32,
    what: &str,
) {
    assert_eq!(got.k, k, "{what}: k");
    for q in 0..got.queries {
        let w: Vec<(usize, f32)> = want_k1.hits(q).collect();
        let g: Vec<(usize, f32)> = got.hits(q).collect();
        for i in 0..k {
            assert!(
                (g[i].1 - w[i].1).abs() <= tol,
                "{what}: query {q} rank {i}: score {} vs {}",
                g[i].1,
                w[i].1
            );
            let apart = |j: Option<usize>| {
                j.and_then(|j| w.get(j))
                    .is_none_or(|n| (n.1 - w[i].1).abs() > sep)
            };
            if apart(i.checked_sub(1)) && apart(Some(i + 1)) {
                assert_eq!(g[i].0, w[i].0, "{what}: query {q} rank {i}");
            }
        }
    }
}

/// `made`, or `None` after printing "skipped: {what} (why)"; with the environment variable `require` set, a
/// missing backend fails the test instead.
pub fn or_skip<T>(made: cliprt::Result<T>, require: &str, what: &str) -> Option<T> {
    match made {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                std::env::var_os(require).is_none(),
                "{require} is set, but: {e}"
            );
            println!("skipped: {what} ({e})");
            None
        }
    }
}

/// A CUDA simulator backend, unless none can be built (`CLIPRT_REQUIRE_SIM` makes that a failure).
pub fn or_skip_sim<T>(made: cliprt::Result<T>) -> Option<T> {
    or_skip(made, "CLIPRT_REQUIRE_SIM", "no CUDA simulator")
}

/// A GPU backend, unless there is none (`CLIPRT_REQUIRE_CUDA` makes that a failure).
pub fn or_skip_gpu<T>(made: cliprt::Result<T>) -> Option<T> {
    or_skip(made, "CLIPRT_REQUIRE_CUDA", "no CUDA device")
}

// Model folders and image files built by hand for the bad-input and hostile-input tests.

use cliprt::{Clip, Device, Error};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// A writable copy of a fixture model folder (the tokenizer symlink resolved to a real file).
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    tmp
}

pub fn load_err(dir: &Path) -> Error {
    match Clip::load(dir, Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

/// Rewrites model.safetensors in `dir` through `edit`, which may drop, replace or add tensors.
pub fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&str, TensorView<'_>) -> Option<(String, Dtype, Vec<usize>, Vec<u8>)>,
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        st.iter().filter_map(|(n, v)| edit(n, v)).collect();
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

pub fn keep(n: &str, v: TensorView<'_>) -> (String, Dtype, Vec<usize>, Vec<u8>) {
    (
        n.to_string(),
        v.dtype(),
        v.shape().to_vec(),
        v.data().to_vec(),
    )
}

/// CRC-32 (PNG's polynomial), to build PNG headers by hand.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // An IDAT with a few bytes so header readers find image data, then IEND.
    for (kind, data) in [
        (&b"IDAT"[..], &[0x78u8, 0x9c, 0x03, 0x00][..]),
        (&b"IEND"[..], &[][..]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

/// A PNG of `width × height` grey pixels, encoded with the image crate (deflate makes flat images tiny).
pub fn flat_png(width: u32, height: u32) -> Vec<u8> {
    let img = image::GrayImage::new(width, height);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Every model fixture with references: the f32 ones and their low-precision copies (which share their pixels).
pub const MODEL_FIXTURES: &[&str] = &[
    "tiny-openai",
    "exotic",
    "tiny-openai-f16",
    "exotic-bf16",
    "siglip-gemma",
    "siglip-spm",
    "openclip-ls",
    "openclip-custom",
];

/// The f32 model fixtures, one per family and format variant, each with its own pixel references.
pub const F32_FIXTURES: &[&str] = &[
    "tiny-openai",
    "exotic",
    "siglip-gemma",
    "siglip-spm",
    "openclip-ls",
    "openclip-custom",
];
