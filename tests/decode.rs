//! Decoders as strict as PIL, GIF frames drawn as PIL draws them, and the decode memory limits.

mod common;

use cliprt::decode::{self, AlphaMode, DecodeError};
use common::fixture;

fn cliprt_opens(bytes: &[u8]) -> bool {
    decode::header(bytes)
        .and_then(|h| decode::decode(bytes, &h, AlphaMode::CompositeWhite))
        .is_ok()
}

/// Every truncated or corrupted variant in tests/fixtures/decoder_cases.json (made by tools/decoder_cases.py with
/// PIL's verdicts) is accepted by cliprt exactly when PIL accepts it.
#[test]
fn truncated_and_corrupt_files_get_pils_verdict() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("decoder_cases.json")).unwrap()).unwrap();
    let mut wrong = Vec::new();
    for c in &cases {
        let name = c["image"].as_str().unwrap();
        let mut data = std::fs::read(fixture("images").join(name)).unwrap();
        if let Some(cut) = c["cut"].as_u64() {
            data.truncate(cut as usize);
        }
        if let Some(at) = c["flip"].as_u64() {
            data[at as usize] ^= 0xFF;
        }
        let pil = c["pil"].as_bool().unwrap();
        if cliprt_opens(&data) != pil {
            wrong.push(format!("{c} (cliprt opens: {})", !pil));
        }
    }
    assert!(
        wrong.is_empty(),
        "verdicts differ from PIL:\n{}",
        wrong.join("\n")
    );
}

/// A GIF's first frame that covers part of the screen is drawn as PIL draws it (tools/decoder_cases.py wrote the
/// fixtures and PIL's pixels).
#[test]
fn gif_first_frame_on_pils_canvas() {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("gif_expected.json")).unwrap()).unwrap();
    for (name, want) in expected.as_object().unwrap() {
        let bytes = std::fs::read(fixture("images").join(name)).unwrap();
        let head = decode::header(&bytes).ok().unwrap();
        let img = decode::decode(&bytes, &head, AlphaMode::CompositeWhite)
            .ok()
            .unwrap();
        assert_eq!(
            [img.width as u64, img.height as u64],
            [
                want["size"][0].as_u64().unwrap(),
                want["size"][1].as_u64().unwrap()
            ]
        );
        let rgb: Vec<u8> = want["rgb"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(img.data, rgb, "{name}");
    }
}

/// A decode that alone needs more than the budget is refused before decoding; the size limit comes from the header.
#[test]
fn decode_limits_come_before_decoding() {
    // A 2 KB BMP whose header claims 20000 × 20000 (400 M pixels, over PIL's 178 M) is refused from the header.
    let mut bmp = std::fs::read(fixture("images/photo.bmp")).unwrap();
    bmp[18..22].copy_from_slice(&20000u32.to_le_bytes());
    bmp[22..26].copy_from_slice(&20000u32.to_le_bytes());
    assert!(matches!(
        decode::header(&bmp),
        Err(DecodeError::TooLarge(20000, 20000))
    ));
    let budget = decode::MemoryBudget::new(1 << 20);
    assert!(matches!(
        budget.reserve(2 << 20),
        Err(DecodeError::OverBudget(..))
    ));
}

/// A first frame placed beyond the logical screen (left or top past the edge) draws nothing and leaves PIL's canvas,
/// never an out-of-bounds write.
#[test]
fn gif_frame_outside_the_screen_draws_nothing() {
    let mut bytes = std::fs::read(fixture("images/partial_frame.gif")).unwrap();
    let at = bytes.iter().position(|&b| b == 0x2C).unwrap(); // image descriptor: left, top follow
    for (left, top) in [(200u16, 2u16), (3, 200), (9, 6)] {
        bytes[at + 1..at + 3].copy_from_slice(&left.to_le_bytes());
        bytes[at + 3..at + 5].copy_from_slice(&top.to_le_bytes());
        let img = decode::header(&bytes)
            .and_then(|h| decode::decode(&bytes, &h, AlphaMode::CompositeWhite))
            .ok()
            .unwrap();
        assert_eq!((img.width, img.height), (9, 7));
        assert!(
            img.data.chunks(3).all(|p| p == img.data[..3].to_vec()),
            "({left}, {top})"
        );
    }
}
