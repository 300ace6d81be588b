//! Every listed bad input gets its specific error variant — never a panic, never a half-written output.

mod common;

use std::path::{Path, PathBuf};

use cliprt::{Clip, Device, Error};
use common::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

#[test]
fn missing_path() {
    assert!(matches!(
        load_err(Path::new("/definitely/not/here")),
        Error::NotFound(_)
    ));
}

#[test]
fn folder_without_config() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_err(tmp.path()),
        Error::MissingFile {
            file: "config.json",
            ..
        }
    ));
}

#[test]
fn malformed_config_missing_field_unsupported_type() {
    let tmp = copy_model("tiny-openai");
    let cfg = tmp.path().join("config.json");
    let original = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, "{ not json").unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Config { .. }));
    std::fs::write(&cfg, original.replace("\"num_hidden_layers\": 2,", "")).unwrap();
    match load_err(tmp.path()) {
        Error::Config { msg, .. } => assert!(msg.contains("num_hidden_layers"), "{msg}"),
        e => panic!("{e:?}"),
    }
    std::fs::write(
        &cfg,
        original.replace("\"model_type\": \"clip\"", "\"model_type\": \"blip\""),
    )
    .unwrap();
    assert!(matches!(load_err(tmp.path()), Error::UnsupportedModel(_)));
    // Relabelled as SigLIP, CLIP's towers do not fit SigLIP's structure (the text head must map to the vision
    // width): a config error naming it, before any weight is read.
    std::fs::write(
        &cfg,
        original.replace("\"model_type\": \"clip\"", "\"model_type\": \"siglip\""),
    )
    .unwrap();
    match load_err(tmp.path()) {
        Error::Config { msg, .. } => assert!(msg.contains("projection_size"), "{msg}"),
        e => panic!("{e:?}"),
    }
    std::fs::write(
        &cfg,
        original.replace("\"hidden_act\": \"quick_gelu\"", "\"hidden_act\": \"relu\""),
    )
    .unwrap();
    assert!(matches!(load_err(tmp.path()), Error::UnsupportedModel(_)));
    std::fs::write(
        &cfg,
        original.replace("\"num_attention_heads\": 3", "\"num_attention_heads\": 5"),
    )
    .unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Config { .. }));
}

#[test]
fn safetensors_truncated_garbage_absurd_header() {
    let tmp = copy_model("tiny-openai");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Safetensors { .. }));
    let mut garbage = 64u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[b'#'; 64]);
    std::fs::write(&path, &garbage).unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Safetensors { .. }));
    let mut absurd = u64::MAX.to_le_bytes().to_vec();
    absurd.extend_from_slice(b"{}");
    std::fs::write(&path, &absurd).unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Safetensors { .. }));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Safetensors { .. }));
}

#[test]
fn missing_tensor_wrong_shape_unsupported_dtype() {
    let tmp = copy_model("tiny-openai");
    let target = "vision_model.encoder.layers.1.mlp.fc1.weight";
    let original = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
    rewrite_weights(tmp.path(), |n, v| (n != target).then(|| keep(n, v)));
    assert!(matches!(load_err(tmp.path()), Error::MissingTensor(n) if n == target));

    std::fs::write(tmp.path().join("model.safetensors"), &original).unwrap();
    rewrite_weights(tmp.path(), |n, v| {
        let mut t = keep(n, v);
        if n == target {
            t.2 = vec![t.2[1], t.2[0]];
        }
        Some(t)
    });
    assert!(matches!(load_err(tmp.path()), Error::TensorShape { name, .. } if name == target));

    std::fs::write(tmp.path().join("model.safetensors"), &original).unwrap();
    rewrite_weights(tmp.path(), |n, v| {
        let mut t = keep(n, v);
        if n == target {
            t.1 = Dtype::I32; // same byte width, wrong type
        }
        Some(t)
    });
    assert!(matches!(load_err(tmp.path()), Error::UnsupportedDtype { name, .. } if name == target));
}

#[test]
fn extra_tensors_are_ignored_and_shards_load() {
    let tmp = copy_model("exotic");
    rewrite_weights(tmp.path(), |n, v| Some(keep(n, v)));
    // Split into two shards with an index, as HF does for large checkpoints, plus an unused extra tensor.
    let bytes = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<_> = st.iter().map(|(n, v)| keep(n, v)).collect();
    all.push((
        "text_model.embeddings.position_ids".into(),
        Dtype::I64,
        vec![1, 40],
        vec![0u8; 320],
    ));
    let (a, b) = all.split_at(all.len() / 2);
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView<'_>)> = part
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(
            tmp.path().join(&file),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        for (n, ..) in part.iter() {
            map.insert(n.clone(), file.clone().into());
        }
    }
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = Clip::load(tmp.path(), Device::Cpu).unwrap();
    let single = Clip::load(fixture("exotic"), Device::Cpu).unwrap();
    let t = ["a photo of a cat"];
    assert_eq!(
        sharded.embed_texts(&t).unwrap(),
        single.embed_texts(&t).unwrap()
    );
}

#[test]
fn pytorch_bin_only_says_convert() {
    let tmp = copy_model("tiny-openai");
    std::fs::rename(
        tmp.path().join("model.safetensors"),
        tmp.path().join("pytorch_model.bin"),
    )
    .unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, Error::MissingFile { .. }));
    assert!(e.to_string().contains("convert"), "{e}");
}

#[test]
fn tokenizer_missing_or_malformed() {
    let tmp = copy_model("tiny-openai");
    let tok = tmp.path().join("tokenizer.json");
    std::fs::remove_file(&tok).unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Tokenizer(_)));
    std::fs::write(&tok, "{\"model\": 12}").unwrap();
    assert!(matches!(load_err(tmp.path()), Error::Tokenizer(_)));
}

#[test]
fn missing_cuda_device_is_a_clear_error() {
    // No machine has 999 GPUs: unavailable everywhere, whether or not CUDA is installed.
    match Clip::load(fixture("tiny-openai"), Device::Cuda(999)) {
        Err(Error::DeviceUnavailable(msg)) => assert!(msg.to_lowercase().contains("cuda"), "{msg}"),
        other => panic!("{:?}", other.err()),
    }
    assert!(matches!(
        "gpu".parse::<Device>(),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn bad_images() {
    let clip = Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    assert!(matches!(
        clip.preprocess_file(tmp.path().join("nope.png")),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        clip.preprocess_file(write("empty.png", b"")),
        Err(Error::Image { .. })
    ));
    let good = std::fs::read(fixture("images").join("square.png")).unwrap();
    let truncated = write("truncated.png", &good[..good.len() / 2]);
    assert!(matches!(
        clip.preprocess_file(&truncated),
        Err(Error::Image { .. })
    ));
    let text = write("notes.png", b"this is plain text, not an image at all");
    assert!(matches!(
        clip.preprocess_file(&text),
        Err(Error::Image { .. })
    ));
    // 20000 × 20000 = 4e8 pixels: refused from the header, before any pixel buffer exists.
    let bomb = write("bomb.png", &png_header(20_000, 20_000));
    let r = clip.preprocess_file(&bomb);
    assert!(
        matches!(r, Err(Error::ImageTooLarge { width: 20_000, .. })),
        "{r:?}"
    );
    // A failing image in a batch fails the batch with that image's error.
    let ok = fixture("images").join("square.png");
    assert!(matches!(
        clip.embed_image_files(&[ok, truncated]),
        Err(Error::Image { .. })
    ));
}

#[test]
fn other_formats_decode() {
    let clip = Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap();
    for f in ["photo.jpg", "photo.webp", "photo.bmp", "photo.gif"] {
        let px = clip
            .preprocess_file(fixture("images").join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(px.len(), 3 * 32 * 32);
    }
}

#[test]
fn empty_batches() {
    let clip = Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap();
    let none: [&str; 0] = [];
    assert!(matches!(clip.embed_texts(&none), Err(Error::EmptyInput(_))));
    let no_paths: [PathBuf; 0] = [];
    assert!(matches!(
        clip.embed_image_files(&no_paths),
        Err(Error::EmptyInput(_))
    ));
    assert!(matches!(
        clip.embed_pixels(&[], 0),
        Err(Error::EmptyInput(_))
    ));
    assert!(matches!(
        clip.zero_shot(&[fixture("images").join("square.png")], &none, "{}"),
        Err(Error::EmptyInput(_))
    ));
}

#[test]
fn very_long_text_is_truncated_not_an_error() {
    let clip = Clip::load(fixture("exotic"), Device::Cpu).unwrap();
    let long = "lorem ipsum ".repeat(900); // ~10,000 characters
    assert!(long.len() >= 10_000);
    let ids = clip.tokenize(&[long.as_str()]).unwrap().remove(0);
    assert_eq!(ids.len(), 40); // the exotic model's context length
    assert_eq!(*ids.last().unwrap(), 49407);
    assert_eq!(clip.embed_texts(&[long.as_str()]).unwrap().rows, 1);
}

#[test]
fn non_utf8_text_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("texts.txt");
    std::fs::write(&p, b"fine line\nsecond \xff\xfe line\n").unwrap();
    assert!(matches!(
        cliprt::tokenizer::read_text_file(&p),
        Err(Error::InvalidText { line: 2, .. })
    ));
    std::fs::write(&p, "one\r\n\n  \ntwo\n").unwrap();
    assert_eq!(
        cliprt::tokenizer::read_text_file(&p).unwrap(),
        vec!["one", "two"]
    );
}

#[test]
fn wrong_pixel_tensor_shape() {
    let clip = Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap();
    assert!(matches!(
        clip.embed_pixels(&vec![0.0; 3 * 31 * 31], 1),
        Err(Error::Shape(_))
    ));
    let bad_ids = vec![vec![49406, 60_000, 49407]];
    assert!(matches!(
        clip.embed_token_ids(&bad_ids),
        Err(Error::InvalidArgument(_))
    ));
}
