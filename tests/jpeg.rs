//! JPEG decoded as PIL 13 decodes it (libjpeg-turbo: islow IDCT, fancy upsampling, its colour conversions), on
//! the fixtures of tools/make_jpeg_fixtures.py: every layout PIL writes, baseline and progressive.

mod common;

use cliprt::decode::{self, AlphaMode};
use cliprt::{Clip, Device};
use common::fixture;

fn manifest_images() -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("jpeg").join("manifest.json")).unwrap())
            .unwrap();
    m["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn decode_file(path: &std::path::Path) -> decode::RgbImage {
    let bytes = std::fs::read(path).unwrap();
    let head = decode::header(&bytes).ok().unwrap();
    decode::decode(&bytes, &head, AlphaMode::CompositeWhite)
        .ok()
        .unwrap()
}

/// Every fixture decodes to PIL's exact pixels (`Image.open(p).convert("RGB")`, stored as PNG). The acceptance bar
/// is 1 LSB; cliprt runs libjpeg-turbo's own decoding arithmetic, so any difference at all is a bug.
#[test]
fn jpeg_pixels_equal_pils() {
    let dir = fixture("jpeg");
    let mut report = Vec::new();
    for name in manifest_images() {
        let got = decode_file(&dir.join(&name));
        let want = decode_file(&dir.join(name.replace(".jpg", ".pil.png")));
        assert_eq!(
            (got.width, got.height),
            (want.width, want.height),
            "{name}: size"
        );
        let diffs: Vec<i32> = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let off = diffs.iter().filter(|&&d| d > 0).count();
        if max > 0 {
            report.push(format!(
                "{name}: max {max} LSB, {off} of {} values differ",
                diffs.len()
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// The embeddings of the JPEG fixtures by the tiny-openai model are within cosine 0.99999 of HF float64's
/// (tools/make_jpeg_fixtures.py); the same bar holds at real shapes in tools/parity.py.
#[test]
fn jpeg_embeddings_match_hf_float64() {
    let dir = fixture("jpeg");
    let names = manifest_images();
    let clip = Clip::load(fixture("tiny-openai"), Device::Cpu).unwrap();
    let paths: Vec<_> = names.iter().map(|n| dir.join(n)).collect();
    let got = clip.embed_image_files(&paths).unwrap();
    let (want, shape) = cliprt::npy::read_npy(&dir.join("tiny-openai_image_embeds.npy")).unwrap();
    assert_eq!(shape[0], names.len());
    let dim = shape[1];
    for (i, name) in names.iter().enumerate() {
        let a = got.row(i);
        let b = &want[i * dim..(i + 1) * dim];
        let cos = common::cosine(a, b);
        assert!(cos >= 0.99999, "{name}: cosine {cos}");
    }
}

/// A progressive file whose first scan is repeated past cliprt's limit of 1000 scans is refused with a typed error
/// (libjpeg alone would decode it, warning about the bogus progression, for as long as the scans last); the same
/// file with the scan repeated a few times decodes, as PIL decodes it.
#[test]
fn too_many_progressive_scans_are_refused() {
    let bytes = std::fs::read(fixture("jpeg").join("progressive_420.jpg")).unwrap();
    // The first SOS segment and its entropy-coded data, up to the next marker (not a stuffed 0xFF00 or RSTn).
    let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let mut end = sos + 2;
    while !(bytes[end] == 0xFF && bytes[end + 1] != 0 && !(0xD0..=0xD7).contains(&bytes[end + 1])) {
        end += 1;
    }
    let with_repeats = |n: usize| {
        let mut out = bytes[..end].to_vec();
        for _ in 0..n {
            out.extend_from_slice(&bytes[sos..end]);
        }
        out.extend_from_slice(&bytes[end..]);
        out
    };
    let decode =
        |b: &[u8]| decode::header(b).and_then(|h| decode::decode(b, &h, AlphaMode::CompositeWhite));
    assert!(decode(&with_repeats(3)).is_ok());
    match decode(&with_repeats(1001)) {
        Err(decode::DecodeError::Invalid(m)) => assert!(m.contains("progressive scans"), "{m}"),
        other => panic!("{:?}", other.map(|i| (i.width, i.height))),
    }
}
