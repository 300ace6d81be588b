//! The hostile-input classes found by fuzzing (issue 16), one test each: every one now gets a typed error or the
//! correct result. Decoder strictness is in tests/decode.rs, the resource bounds (RSS, time, no partial file) of the
//! adversarial files in tests/limits.rs, the fuzz harness's short run in tests/fuzz.rs.

mod common;

use std::path::{Path, PathBuf};

use cliprt::backend::reference::ReferenceBackend;
use cliprt::config::presets;
use cliprt::cpu::{simd, CpuBackend, Isa, MatrixEngine};
use cliprt::index::{Index, IndexOptions};
use cliprt::model::ClipWeights;
use cliprt::model::ModelSpec;
use cliprt::{Activation, Clip, Device, Engine, Error};
use common::*;
use safetensors::Dtype;

fn tiny() -> Clip {
    Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap()
}

fn images(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        std::fs::copy(fixture("images").join(n), dir.path().join(n)).unwrap();
    }
    dir
}

fn build(clip: &Clip, folder: &Path, out: &Path) -> cliprt::Result<cliprt::index::IndexReport> {
    let opts = IndexOptions {
        batch: 2,
        force: true,
    };
    cliprt::index::build(clip, folder, out, &opts, |_| {})
}

/// The byte offset of the embeddings in an index file (see src/index/mod.rs, the layout).
fn embeddings_at(bytes: &[u8]) -> usize {
    let meta = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    64 + meta.next_multiple_of(64)
}

// ---- Panics --------------------------------------------------------------------------------------------------

#[test]
fn a_nan_row_in_an_index_never_ranks_and_never_panics() {
    let clip = tiny();
    let dir = images(&["square.png", "photo.jpg", "grey.png"]);
    let out = dir.path().join("x.idx");
    build(&clip, dir.path(), &out).unwrap();
    let mut bytes = std::fs::read(&out).unwrap();
    let at = embeddings_at(&bytes) + 4 * clip.config().projection_dim; // row 1, column 0
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&out, &bytes).unwrap();
    let idx = Index::open(&out).unwrap();
    let q = clip.embed_texts(&["a cat"]).unwrap().normalized();
    // A row that scores NaN never ranks: the best finite rows come back while there are k of them ...
    for k in [1, 2] {
        let top = idx.search(clip.engine(), &q.data, k).unwrap();
        assert!(top.hits(0).all(|(i, s)| i != 1 && s.is_finite()), "k {k}");
    }
    // ... and asking for more than the finite rows is an error naming the cause, never a panic.
    for k in [3, 10] {
        assert!(
            matches!(
                idx.search(clip.engine(), &q.data, k),
                Err(Error::NonFinite(_))
            ),
            "k {k}"
        );
    }
}

#[test]
fn index_header_sizes_that_overflow_are_refused() {
    let clip = tiny();
    let dir = images(&["square.png"]);
    let out = dir.path().join("x.idx");
    build(&clip, dir.path(), &out).unwrap();
    let good = std::fs::read(&out).unwrap();
    // dim, rows, meta_len, paths_len at their largest and at values whose products wrap.
    for (at, width, value) in [
        (12, 4, u64::from(u32::MAX)),
        (16, 8, u64::MAX),
        (16, 8, 1 << 62),
        (24, 8, u64::MAX),
        (24, 8, u64::MAX - 10),
        (32, 8, u64::MAX),
    ] {
        let mut bad = good.clone();
        bad[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        std::fs::write(&out, &bad).unwrap();
        assert!(
            matches!(Index::open(&out), Err(Error::InvalidArgument(_))),
            "field at {at} = {value}"
        );
    }
}

/// tokenizer.json files on which the tokenizers crate panics (found while hardening; both reproduce with the Python
/// `tokenizers` package too): a Replace normalizer with an empty pattern panics when encoding, a Precompiled
/// normalizer with a garbage charsmap when loading. Both are typed errors, and the process goes on.
#[test]
fn tokenizer_json_that_panics_inside_the_tokenizers_crate_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("tokenizer.json")).unwrap()).unwrap();
    let mut replace = base.clone();
    replace["normalizer"]["normalizers"][1] =
        serde_json::json!({"type": "Replace", "pattern": {"String": ""}, "content": "x"});
    std::fs::write(&path, replace.to_string()).unwrap();
    let tok = cliprt::tokenizer::ClipTokenizer::from_file(&path, 77).unwrap();
    match tok.encode("a photo of a cat") {
        Err(Error::Tokenizer(m)) => assert!(m.contains("tokenizer failed"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut precompiled = base;
    precompiled["normalizer"]["normalizers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"}));
    std::fs::write(&path, precompiled.to_string()).unwrap();
    assert!(matches!(
        cliprt::tokenizer::ClipTokenizer::from_file(&path, 77),
        Err(Error::Tokenizer(_))
    ));
}

#[test]
fn tokenizer_whose_post_processor_overflows_the_context_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("tokenizer.json")).unwrap()).unwrap();
    let sot = serde_json::json!({"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}});
    let mut single = vec![sot; 80];
    single.push(serde_json::json!({"Sequence": {"id": "A", "type_id": 0}}));
    t["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing", "single": single, "pair": [],
        "special_tokens": {"<|startoftext|>": {"id": "<|startoftext|>", "ids": [49406], "tokens": ["<|startoftext|>"]}}
    });
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, t.to_string()).unwrap();
    let tok = cliprt::tokenizer::ClipTokenizer::from_file(&path, 77).unwrap();
    assert!(matches!(tok.encode("a cat"), Err(Error::Tokenizer(_))));
    // A text over the 1 MiB limit is refused before the tokenizer sees it.
    let huge = "a ".repeat(600_000);
    assert!(matches!(tok.encode(&huge), Err(Error::Limit { .. })));
}

/// Each of `jsons`, as a preprocessor_config.json, is a config error.
fn assert_preprocessor_configs_refused(jsons: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    for json in jsons {
        std::fs::write(&path, json).unwrap();
        assert!(
            matches!(
                cliprt::preprocess::PreprocessConfig::from_file(&path, 224),
                Err(Error::Config { .. })
            ),
            "{json}"
        );
    }
}

#[test]
fn preprocessor_sizes_over_the_limit_are_config_errors() {
    assert_preprocessor_configs_refused(&[
        r#"{"size": {"shortest_edge": 4611686018427387904}}"#,
        r#"{"size": {"shortest_edge": 100000}}"#,
        r#"{"size": {"height": 8193, "width": 8}}"#,
        r#"{"crop_size": 18446744073709551615}"#,
        r#"{"size": 1e300}"#,
    ]);
}

// ---- Aborts and unbounded memory -------------------------------------------------------------------------------

#[test]
fn a_strip_whose_resize_exceeds_the_pixel_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let strip = dir.path().join("strip.png");
    std::fs::write(&strip, flat_png(1, 65535)).unwrap();
    // Shortest edge 224 would make it 224 × 14.7 M pixels.
    let cfg = cliprt::preprocess::PreprocessConfig::openai(224);
    assert!(matches!(cfg.apply_file(&strip), Err(Error::Limit { .. })));
    // The tiny model (shortest edge 32) resizes it to 32 × 2.1 M, just inside the limit: the correct result.
    assert_eq!(tiny().preprocess_file(&strip).unwrap().len(), 3 * 32 * 32);
}

// ---- Silent wrong results --------------------------------------------------------------------------------------

#[test]
fn nan_or_infinite_weights_are_refused_at_load() {
    for bad in [f32::NAN, f32::INFINITY] {
        let tmp = copy_model("tiny-openai");
        rewrite_weights(tmp.path(), |n, v| {
            let (n, d, s, mut b) = keep(n, v);
            if n == "vision_model.encoder.layers.0.mlp.fc1.weight" && d == Dtype::F32 {
                b[..4].copy_from_slice(&bad.to_le_bytes());
            }
            Some((n, d, s, b))
        });
        match load_err(tmp.path()) {
            Error::NonFinite(m) => assert!(m.contains("fc1.weight"), "{m}"),
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn a_weight_that_overflows_f32_gives_an_error_never_an_embedding() {
    // Projections of 3e38: every projected value overflows to ±infinity.
    let overflowing = |names: &'static [&'static str]| {
        let tmp = copy_model("tiny-openai");
        rewrite_weights(tmp.path(), |n, v| {
            let (n, d, s, b) = keep(n, v);
            if names.contains(&n.as_str()) {
                let big: Vec<u8> = (0..b.len() / 4)
                    .flat_map(|_| 3e38f32.to_le_bytes())
                    .collect();
                return Some((n, d, s, big));
            }
            Some((n, d, s, b))
        });
        tmp
    };
    let tmp = overflowing(&["visual_projection.weight"]);
    let clip = Clip::load(tmp.path(), Device::Cpu).unwrap();
    assert!(matches!(
        clip.embed_image_files(&[fixture("images/square.png")]),
        Err(Error::NonFinite(_))
    ));
    // `cliprt index` records each such image as skipped, and with none left writes no index.
    let dir = images(&["square.png", "photo.jpg"]);
    let out = dir.path().join("x.idx");
    assert!(matches!(
        build(&clip, dir.path(), &out),
        Err(Error::EmptyInput(_))
    ));
    assert!(!out.exists());
    let tmp = overflowing(&["text_projection.weight"]);
    let clip = Clip::load(tmp.path(), Device::Cpu).unwrap();
    assert!(matches!(
        clip.embed_texts(&["a cat"]),
        Err(Error::NonFinite(_))
    ));
}

/// A NaN weight (loaded by hand, past the load check) propagates to the embedding on every CPU engine, as in the
/// f64 reference: no exp clamp or max reduction drops it.
#[test]
fn nan_propagates_through_every_cpu_engine_as_in_the_reference() {
    let config = presets::by_name("vit-b-32").unwrap();
    let mut small = config.clone();
    small.text.encoder.num_layers = 1;
    small.vision.encoder.num_layers = 1;
    let mut weights = ClipWeights::random(&small, 3);
    weights.vision.layers[0].qkv_w[5] = f32::NAN;
    weights.text.layers[0].fc1_w[7] = f32::NAN;
    let pixels = random(3 * 224 * 224, 1, 1.0);
    let ids = vec![vec![49406, 320, 1929, 49407]];
    let mut engines: Vec<(String, Engine)> =
        vec![("reference".into(), Engine::on(ReferenceBackend))];
    for e in MatrixEngine::available_engines() {
        engines.push((
            e.name().into(),
            Engine::on(CpuBackend::with_engine(e).unwrap()),
        ));
    }
    for (name, engine) in engines {
        let m = engine
            .load(ModelSpec::Clip {
                config: small.clone(),
                weights: weights.clone(),
            })
            .unwrap();
        let img = m.encode_images(&pixels, 1).unwrap();
        let txt = m.encode_texts(&ids).unwrap();
        assert!(
            img.iter().all(|v| v.is_nan()),
            "{name}: image embedding {:?}",
            &img[..4]
        );
        assert!(
            txt.iter().all(|v| v.is_nan()),
            "{name}: text embedding {:?}",
            &txt[..4]
        );
    }
}

#[test]
fn exp_softmax_and_activations_propagate_nan_on_every_tier() {
    for isa in Isa::available_tiers() {
        let mut x = vec![f32::NAN, 0.0, 1.0, -200.0, 200.0];
        simd::exp_slice(isa, &mut x);
        assert!(x[0].is_nan() && x[1] == 1.0, "{isa:?} exp {x:?}");
        for poison in [f32::NAN, f32::INFINITY] {
            let mut row: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
            row[20] = poison;
            simd::softmax(isa, &mut row, 37, 1.0);
            assert!(
                row.iter().all(|v| v.is_nan()),
                "{isa:?} softmax with {poison}: {row:?}"
            );
        }
        for act in Activation::ALL {
            let mut row = vec![0.5f32; 19];
            row[3] = f32::NAN;
            simd::bias_act(isa, &mut row, None, Some(act));
            assert!(row[3].is_nan() && row[2].is_finite(), "{isa:?} {act:?}");
        }
    }
}

#[test]
fn preprocessing_that_overflows_f32_is_refused() {
    assert_preprocessor_configs_refused(&[
        r#"{"rescale_factor": 1e300}"#,
        r#"{"rescale_factor": 1e38, "image_std": 0.001}"#,
        r#"{"image_std": [1e-40, 1, 1]}"#,
        r#"{"image_std": 1e-45, "do_rescale": false}"#,
        r#"{"image_mean": [1e300, 0, 0]}"#,
    ]);
}

#[test]
fn eos_token_id_beyond_u32_is_refused() {
    let tmp = copy_model("tiny-openai");
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"eos_token_id\": 2,", "\"eos_token_id\": 4294967298,"),
    )
    .unwrap();
    match load_err(tmp.path()) {
        Error::Config { msg, .. } => assert!(msg.contains("eos_token_id"), "{msg}"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn config_sizes_over_the_shared_limits_are_refused() {
    let tmp = copy_model("tiny-openai");
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    for (from, to) in [
        ("\"hidden_size\": 48", "\"hidden_size\": 4800000"),
        ("\"vocab_size\": 49408", "\"vocab_size\": 4940800000"),
        (
            "\"num_hidden_layers\": 2,",
            "\"num_hidden_layers\": 100000,",
        ),
        ("\"image_size\": 32", "\"image_size\": 4096"), // 262 144 patch tokens
        ("\"image_size\": 32", "\"image_size\": 1000000"),
    ] {
        std::fs::write(&cfg, text.replacen(from, to, 1)).unwrap();
        assert!(matches!(load_err(tmp.path()), Error::Config { .. }), "{to}");
    }
}

/// Runs an index build and kills it inside the progress callback after its first batch (a panic, silenced), leaving
/// the journal behind as an interrupted run does.
fn interrupt_after_first_batch(
    clip: &cliprt::Clip,
    dir: &std::path::Path,
    out: &std::path::Path,
    opts: &IndexOptions,
) {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cliprt::index::build(clip, dir, out, opts, |_| panic!("killed"))
    }));
    std::panic::set_hook(quiet);
}

/// A file replaced after an interrupted run is embedded again when the run resumes, not kept from the journal.
#[test]
fn a_file_replaced_after_an_interruption_is_embedded_again() {
    let clip = tiny();
    let dir = images(&["square.png", "photo.jpg"]);
    let out = dir.path().join("x.idx");
    let opts = IndexOptions {
        batch: 1,
        force: true,
    };
    // Interrupt after the first batch (photo.jpg, first by name) by failing inside the progress callback.
    interrupt_after_first_batch(&clip, dir.path(), &out, &opts);
    assert!(!out.exists());
    // Replace photo.jpg by another image, then resume.
    std::fs::copy(
        fixture("images/landscape.png"),
        dir.path().join("photo.jpg"),
    )
    .unwrap();
    let report = cliprt::index::build(&clip, dir.path(), &out, &opts, |_| {}).unwrap();
    assert_eq!(
        report.resumed, 0,
        "the replaced file must not count as done"
    );
    let idx = Index::open(&out).unwrap();
    let want = clip
        .embed_image_files(&[fixture("images/landscape.png")])
        .unwrap()
        .normalized();
    let row = &idx.embeddings()[..idx.dim()];
    assert!(
        cosine(row, &want.data) > 0.99999,
        "the index kept the old embedding"
    );
}

/// A journal whose last record claims an absurd length (a torn write, or a hostile file) is resumed up to its last
/// whole record: the claimed length is never allocated, and the run completes the index.
#[test]
fn a_journal_record_claiming_an_absurd_length_is_dropped_not_allocated() {
    let clip = tiny();
    let dir = images(&["square.png", "photo.jpg", "grey.png"]);
    let out = dir.path().join("x.idx");
    let opts = IndexOptions {
        batch: 1,
        force: true,
    };
    interrupt_after_first_batch(&clip, dir.path(), &out, &opts);
    let journal = dir.path().join("x.idx.partial");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
    bytes.extend_from_slice(&[7; 64]);
    std::fs::write(&journal, &bytes).unwrap();
    let report = cliprt::index::build(&clip, dir.path(), &out, &opts, |_| {}).unwrap();
    assert_eq!((report.indexed, report.resumed), (3, 1));
    assert!(!journal.exists());
}

// ---- Corruption ------------------------------------------------------------------------------------------------

#[test]
fn a_second_index_run_on_the_same_output_is_refused_while_the_first_runs() {
    let clip = tiny();
    let dir = images(&["square.png", "photo.jpg", "grey.png"]);
    let out = dir.path().join("x.idx");
    let (started, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            let opts = IndexOptions {
                batch: 1,
                force: true,
            };
            let mut once = true;
            cliprt::index::build(&clip, dir.path(), &out, &opts, |_| {
                if std::mem::take(&mut once) {
                    started.wait();
                    release.wait();
                }
            })
        });
        started.wait();
        let second = build(&clip, dir.path(), &out);
        release.wait();
        assert!(matches!(second, Err(Error::Locked(_))), "{second:?}");
        first.join().unwrap().unwrap();
    });
    assert_eq!(Index::open(&out).unwrap().rows(), 3);
    // Once the first run is done, the output can be rebuilt.
    build(&clip, dir.path(), &out).unwrap();
}

// ---- Hangs and files -------------------------------------------------------------------------------------------

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn a_fifo_named_like_an_image_never_blocks() {
    let clip = tiny();
    let dir = images(&["square.png"]);
    mkfifo(&dir.path().join("x.png"));
    assert!(matches!(
        clip.preprocess_file(dir.path().join("x.png")),
        Err(Error::NotAFile(_))
    ));
    let out = tempfile::tempdir().unwrap();
    let report = build(&clip, dir.path(), &out.path().join("x.idx")).unwrap();
    assert_eq!(report.indexed, 1, "the FIFO is passed over");
}

#[test]
fn non_utf8_file_names_stay_distinct_and_exact() {
    use std::os::unix::ffi::OsStrExt;
    let clip = tiny();
    let dir = tempfile::tempdir().unwrap();
    let names: [&[u8]; 2] = [b"\xff.png", b"\xfe.png"];
    for (n, src) in names.iter().zip(["square.png", "photo.jpg"]) {
        std::fs::copy(
            fixture("images").join(src),
            dir.path().join(std::ffi::OsStr::from_bytes(n)),
        )
        .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("x.idx");
    assert_eq!(build(&clip, dir.path(), &out).unwrap().indexed, 2);
    let idx = Index::open(&out).unwrap();
    let mut got: Vec<PathBuf> = (0..2).map(|i| idx.path(i)).collect();
    got.sort();
    let mut want: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.path().join(std::ffi::OsStr::from_bytes(n)))
        .collect();
    want.sort();
    assert_eq!(got, want);
}
