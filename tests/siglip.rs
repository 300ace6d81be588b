//! The SigLIP family beyond parity (tests/parity.rs): its typed errors, its per-pair sigmoid, and the layouts of
//! its padded text batch.

mod common;

use cliprt::model::{ClipModel, ClipWeights, TextBatch};
use cliprt::{Clip, Device, Error};
use common::*;

/// A config edit, and what the error must name.
type Case = (&'static str, fn(&mut serde_json::Value), &'static str);

fn edit_config(dir: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
}

#[test]
fn unsupported_siglip_variants_are_typed_errors_naming_what() {
    let cases: [Case; 3] = [
        ("NaFlex", |j| j["model_type"] = "siglip2".into(), "NaFlex"),
        (
            "no head",
            |j| j["vision_config"]["vision_use_head"] = false.into(),
            "vision_use_head",
        ),
        (
            "non-square",
            |j| j["vision_config"]["image_size"] = serde_json::json!([32, 48]),
            "not square",
        ),
    ];
    for (what, edit, needle) in cases {
        let tmp = copy_model("siglip-gemma");
        edit_config(tmp.path(), edit);
        match load_err(tmp.path()) {
            Error::UnsupportedModel(msg) => assert!(msg.contains(needle), "{what}: {msg}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // A text head that maps elsewhere than the image embedding: a config error, not a wrong embedding.
    let tmp = copy_model("siglip-gemma");
    edit_config(tmp.path(), |j| {
        j["text_config"]["projection_size"] = 24.into()
    });
    assert!(matches!(load_err(tmp.path()), Error::Config { .. }));
}

#[test]
fn sentencepiece_folder_problems_are_typed_errors() {
    let tmp = copy_model("siglip-spm");
    std::fs::remove_file(tmp.path().join("spiece.model")).unwrap();
    assert!(matches!(
        load_err(tmp.path()),
        Error::MissingFile {
            file: "spiece.model",
            ..
        }
    ));
    for garbage in [
        &b""[..],
        b"\x0a\xff\xff\xff\xff\x0f",
        b"not a model at all",
        b"\x12\x02\x18\x02",
    ] {
        let tmp = copy_model("siglip-spm");
        std::fs::write(tmp.path().join("spiece.model"), garbage).unwrap();
        assert!(
            matches!(load_err(tmp.path()), Error::Tokenizer(_)),
            "{garbage:?}"
        );
    }
}

#[test]
fn missing_head_tensor_and_logit_bias_are_named() {
    for name in [
        "vision_model.head.probe",
        "logit_bias",
        "text_model.head.bias",
    ] {
        let tmp = copy_model("siglip-gemma");
        rewrite_weights(tmp.path(), |n, t| {
            (n != name).then(|| {
                (
                    n.to_string(),
                    t.dtype(),
                    t.shape().to_vec(),
                    t.data().to_vec(),
                )
            })
        });
        match load_err(tmp.path()) {
            Error::MissingTensor(n) => assert_eq!(n, name),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn zero_shot_is_a_per_pair_sigmoid_of_the_biased_logits() {
    let clip = Clip::load(fixture("siglip-spm"), Device::Cpu).unwrap();
    assert_eq!(clip.probability(), "sigmoid");
    let img = fixture("images").join("square.png");
    let labels = ["cat", "dog", "car", "tree"];
    let ranked = clip
        .zero_shot(&[&img], &labels, "a photo of a {}.")
        .unwrap();
    let texts: Vec<String> = labels
        .iter()
        .map(|l| format!("a photo of a {l}."))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let logits = clip
        .logits(
            &clip.embed_image_files(&[&img]).unwrap(),
            &clip.embed_texts(&refs).unwrap(),
        )
        .unwrap();
    for (label, p) in &ranked[0] {
        let i = labels.iter().position(|l| l == label).unwrap();
        let want = 1.0 / (1.0 + (-f64::from(logits[i])).exp());
        assert!(
            (f64::from(*p) - want).abs() < 1e-6,
            "{label}: {p} vs {want}"
        );
    }
    // Logits carry the bias: at cosine 0 the logit is the bias itself.
    assert!((clip.logit_bias() - (-2.5)).abs() < 1e-6);
}

/// The padded layout (parity with transformers' left padding is in tests/parity.rs): a text's embedding does not
/// depend on the batch around it, and the padding side matters (positions move), so the reordering is not a no-op.
#[test]
fn padded_batches_are_row_independent_and_the_side_matters() {
    let clip = Clip::load(fixture("siglip-gemma"), Device::Reference).unwrap();
    let r = reference("siglip-gemma");
    let texts: Vec<&str> = r.texts.iter().take(12).map(String::as_str).collect();
    let got = clip.embed_texts(&texts).unwrap();
    // Each text alone: the batch layout must not leak between rows.
    for (i, t) in texts.iter().enumerate() {
        let one = clip.embed_texts(&[t]).unwrap();
        assert_close(
            &one.data,
            got.row(i),
            1e-6,
            1e-6,
            &format!("text {i} alone"),
        );
    }
    // The same model with the padding side flipped must differ (positions move): the layout is not a no-op.
    let mut config = clip.config().clone();
    assert!(config.text.pad_left);
    config.text.pad_left = false;
    let dir = fixture("siglip-gemma");
    let ckpt = cliprt::weights::Checkpoint::open(&dir).unwrap();
    let weights = ClipWeights::from_checkpoint(&ckpt, &config).unwrap();
    let right = ClipModel::new(
        cliprt::backend::reference::ReferenceBackend,
        &config,
        weights,
    )
    .unwrap();
    let ids = clip.tokenize(&texts).unwrap();
    let flipped = right
        .encode_texts(&TextBatch::for_model(&ids, &config).unwrap())
        .unwrap();
    let short = ids
        .iter()
        .position(|r| r.len() < config.text.max_position_embeddings)
        .unwrap();
    let d = config.projection_dim;
    assert!(
        flipped[short * d..(short + 1) * d]
            .iter()
            .zip(got.row(short))
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "flipping the padding side changed nothing"
    );
}
