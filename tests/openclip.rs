//! The open_clip format beyond parity (tests/parity.rs): towers cliprt does not run are typed errors naming them,
//! missing or pickled weights are named, and a folder holding both formats reads the HF files.

mod common;

use cliprt::{Clip, Device, Error};
use common::*;

fn edit_open_clip(dir: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) {
    let path = dir.join("open_clip_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
}

/// A config edit, and what the error must name.
type Case = (&'static str, fn(&mut serde_json::Value), &'static str);

#[test]
fn unsupported_towers_are_typed_errors_naming_them() {
    let cases: [Case; 8] = [
        (
            "timm",
            |j| {
                j["model_cfg"]["vision_cfg"]["timm_model_name"] =
                    "vit_so400m_patch14_siglip_384".into()
            },
            "timm",
        ),
        (
            "resnet",
            |j| j["model_cfg"]["vision_cfg"]["layers"] = serde_json::json!([3, 4, 6, 3]),
            "ResNet",
        ),
        (
            "coca",
            |j| j["model_cfg"]["multimodal_cfg"] = serde_json::json!({"width": 512}),
            "CoCa",
        ),
        (
            "hf text",
            |j| j["model_cfg"]["text_cfg"]["hf_model_name"] = "xlm-roberta-base".into(),
            "HF text tower",
        ),
        (
            "qk norm",
            |j| j["model_cfg"]["vision_cfg"]["qk_norm"] = true.into(),
            "qk_norm",
        ),
        (
            "avg pool",
            |j| j["model_cfg"]["vision_cfg"]["pool_type"] = "avg".into(),
            "pool_type",
        ),
        (
            "longest",
            |j| j["preprocess_cfg"]["resize_mode"] = "longest".into(),
            "longest",
        ),
        (
            "vocab",
            |j| j["model_cfg"]["text_cfg"]["vocab_size"] = 250002.into(),
            "vocab_size",
        ),
    ];
    for (what, edit, needle) in cases {
        let tmp = copy_model("openclip-ls");
        edit_open_clip(tmp.path(), edit);
        match load_err(tmp.path()) {
            Error::UnsupportedModel(msg) => assert!(msg.contains(needle), "{what}: {msg}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn missing_or_pickled_weights_are_named() {
    let tmp = copy_model("openclip-ls");
    std::fs::remove_file(tmp.path().join("open_clip_model.safetensors")).unwrap();
    let hint = |e: Error| match e {
        Error::MissingFile {
            file: "open_clip_model.safetensors",
            hint,
            ..
        } => hint,
        other => panic!("{other:?}"),
    };
    assert_eq!(hint(load_err(tmp.path())), "");
    std::fs::write(tmp.path().join("open_clip_pytorch_model.bin"), b"pickle").unwrap();
    assert!(hint(load_err(tmp.path())).contains("convert"));
    // A missing tensor is named with its open_clip key.
    let tmp = copy_model("openclip-ls");
    let path = tmp.path().join("open_clip_model.safetensors");
    std::fs::rename(&path, tmp.path().join("model.safetensors")).unwrap();
    rewrite_weights(tmp.path(), |n, t| {
        (n != "visual.transformer.resblocks.1.ls_2.gamma").then(|| {
            (
                n.to_string(),
                t.dtype(),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
    });
    std::fs::rename(tmp.path().join("model.safetensors"), &path).unwrap();
    match load_err(tmp.path()) {
        Error::MissingTensor(n) => assert_eq!(n, "visual.transformer.resblocks.1.ls_2.gamma"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_folder_with_both_formats_reads_the_hf_files() {
    let tmp = copy_model("tiny-openai");
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(fixture("openclip-ls").join(f), tmp.path().join(f)).unwrap();
    }
    let both = Clip::load(tmp.path(), Device::Cpu).unwrap();
    assert!(both.format().starts_with("hf-transformers"));
    let open_clip = Clip::load(fixture("openclip-ls"), Device::Cpu).unwrap();
    assert!(open_clip.format().starts_with("open_clip"));
    assert_eq!(open_clip.config().text.max_position_embeddings, 20);
}

/// A transparent or 16-bit grey image decoded by the caller is resized in its own mode too (open_clip's PIL
/// resizes "RGBA" with premultiplied alpha, "I;16" at 16 bits): the same pixels as from its file.
#[test]
fn decoded_images_resize_in_their_own_mode_like_files() {
    let clip = Clip::load(fixture("openclip-ls"), Device::Cpu).unwrap();
    for name in ["rgba.png", "grey_alpha.png", "grey16.png", "landscape.png"] {
        let path = fixture("images").join(name);
        let decoded = image::open(&path).unwrap();
        assert_eq!(
            clip.preprocess_image(&decoded).unwrap(),
            clip.preprocess_file(&path).unwrap(),
            "{name}"
        );
    }
}

/// PIL's own 16-bit resizes (tools/make_openclip_fixtures.py), value for value: every filter, up and down,
/// sums above 65535 stored as PIL stores them.
#[test]
fn grey16_resize_equals_pil() {
    use cliprt::resample::{resize_grey16_like_pil, Resample};
    let text = std::fs::read_to_string(fixture("resize16").join("expected.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let numbers = |v: &serde_json::Value| -> Vec<u16> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u16)
            .collect()
    };
    let size = |v: &serde_json::Value| {
        (
            v["width"].as_u64().unwrap() as usize,
            v["height"].as_u64().unwrap() as usize,
        )
    };
    let input = numbers(&json["input"]);
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 25);
    for case in cases {
        let filter = match case["filter"].as_u64().unwrap() {
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            other => panic!("filter {other}"),
        };
        let got = resize_grey16_like_pil(&input, size(&json), size(case), filter);
        assert_eq!(
            got,
            numbers(&case["output"]),
            "{:?} to {:?}",
            filter,
            size(case)
        );
    }
}
