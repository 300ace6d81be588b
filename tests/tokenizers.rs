//! Token ids identical to the reference tokenizers on tricky strings, per tokenizer kind: SigLIP's SentencePiece
//! model under each of SiglipTokenizer's settings, SigLIP2's Gemma tokenizer.json, and open_clip's tokenizer
//! (fixtures from tools/make_siglip_fixtures.py and tools/make_openclip_fixtures.py).

mod common;

use cliprt::tokenizer::ClipTokenizer;
use common::*;

/// Every mismatch between `tok` and the ids of `expected.json` in the fixture folder `name`.
fn mismatches(name: &str, tok: impl Fn(&str, usize) -> Vec<u32>) -> Vec<String> {
    let dir = fixture("tokenizers").join(name);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let context = expected["context"].as_u64().unwrap() as usize;
    let texts = expected["texts"].as_array().unwrap();
    assert!(texts.len() >= 50, "{name}: {} strings", texts.len());
    let mut wrong = Vec::new();
    for (text, ids) in texts.iter().zip(expected["ids"].as_array().unwrap()) {
        let text = text.as_str().unwrap();
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok(text, context);
        if got != want {
            wrong.push(format!("{text:?}: got {got:?}, reference {want:?}"));
        }
    }
    wrong
}

/// open_clip's tokenizer against `open_clip.get_tokenizer` on the tricky strings (mojibake repaired by ftfy's
/// heuristics included).
#[test]
fn open_clip_ids_match_open_clip() {
    let wrong = mismatches("openclip", |text, context| {
        ClipTokenizer::open_clip(context)
            .unwrap()
            .encode(text)
            .unwrap()
    });
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn siglip_sentencepiece_ids_match_transformers() {
    for name in ["siglip", "siglip-not-legacy", "siglip-cased"] {
        let dir = fixture("tokenizers").join(name);
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        let wrong = mismatches(name, |text, context| {
            ClipTokenizer::siglip(&dir.join("spiece.model"), Some(&config), context)
                .unwrap()
                .encode(text)
                .unwrap()
        });
        assert!(wrong.is_empty(), "{name}:\n{}", wrong.join("\n"));
    }
}

/// SigLIP2's Gemma tokenizer (tokenizer.json) against transformers' GemmaTokenizer on the tricky strings.
#[test]
fn gemma_ids_match_transformers() {
    let path = fixture("tokenizers").join("gemma").join("tokenizer.json");
    let wrong = mismatches("gemma", |text, context| {
        ClipTokenizer::from_file(&path, context)
            .unwrap()
            .encode(text)
            .unwrap()
    });
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
