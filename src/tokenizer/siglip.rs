//! SigLIP's SentencePiece tokenizer (`spiece.model`), exactly as transformers' `SiglipTokenizer` tokenizes:
//! a "▁" in front of the text (and "▁" inside it read as a space); the text split at its special tokens, which
//! strip the whitespace beside them; each piece between them canonicalized (lowercased, ASCII punctuation removed,
//! whitespace runs collapsed to one space, stripped) and encoded behind the unknown token, whose own pieces are then
//! dropped (transformers' way of encoding without sentencepiece's dummy prefix); a leading lone "▁" before a
//! special token dropped; truncated to the context less one, and the end token appended unless already last.

use std::path::Path;

use super::sentencepiece::SentencePiece;
use crate::error::{Error, Result};

/// One special (added) token: its text, id, and whether it strips the whitespace on its left and right.
#[derive(Clone, Debug)]
struct Special {
    content: String,
    id: u32,
    lstrip: bool,
    rstrip: bool,
}

/// A SigLIP tokenizer: its SentencePiece model and transformers' settings from `tokenizer_config.json`.
pub struct SiglipTokenizer {
    sp: SentencePiece,
    specials: Vec<Special>,
    eos: u32,
    pad: u32,
    unk_text: String,
    /// How many pieces the unknown token's text encodes to (dropped from the front of every encoding).
    unk_pieces: usize,
    /// The id of the lone "▁" piece, if the vocabulary has one.
    underline: Option<u32>,
    do_lower_case: bool,
}

/// A token of the text before ids: a special token, or a piece id.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Special(u32),
    Piece(u32),
}

/// Python's `str.isspace`: Unicode White_Space plus the information separators U+001C–U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

impl SiglipTokenizer {
    /// Loads `spiece.model` and, if present, `tokenizer_config.json` (special tokens, `do_lower_case`, `legacy`).
    pub fn open(model: &Path, config: Option<&serde_json::Value>) -> Result<Self> {
        let bytes =
            crate::files::read_limited(model, crate::limits::MAX_JSON_BYTES, "spiece.model")?;
        let bad = |e: String| Error::Tokenizer(format!("{}: {e}", model.display()));
        let mut sp = SentencePiece::from_bytes(&bytes).map_err(bad)?;
        let get_str = |key: &str, default: &str| -> String {
            match config.and_then(|c| c.get(key)) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Object(o)) => o
                    .get("content")
                    .and_then(|v| v.as_str())
                    .unwrap_or(default)
                    .to_string(),
                _ => default.to_string(),
            }
        };
        let flag = |key: &str, default: bool| {
            config
                .and_then(|c| c.get(key))
                .and_then(|v| v.as_bool())
                .unwrap_or(default)
        };
        // transformers' SentencePieceBackend: legacy=False loads the model without its dummy prefix.
        if !flag("legacy", true) {
            sp = sp.without_dummy_prefix();
        }
        let (eos_text, unk_text, pad_text) = (
            get_str("eos_token", "</s>"),
            get_str("unk_token", "<unk>"),
            get_str("pad_token", "</s>"),
        );
        let id_of = |t: &str| {
            sp.piece_id(t).ok_or_else(|| {
                Error::Tokenizer(format!(
                    "{}: special token {t:?} is not a piece of the model",
                    model.display()
                ))
            })
        };
        let mut specials = Vec::new();
        // Saved tokenizers list their added tokens with ids and strip flags; else SiglipTokenizer's three.
        if let Some(added) = config
            .and_then(|c| c.get("added_tokens_decoder"))
            .and_then(|v| v.as_object())
        {
            for (id, t) in added {
                let id = id.parse::<u32>().map_err(|_| {
                    Error::Tokenizer(format!("added_tokens_decoder key {id:?} is not an id"))
                })?;
                let content = t
                    .get("content")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| Error::Tokenizer(format!("added token {id} has no content")))?;
                let strip = |k: &str| t.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                specials.push(Special {
                    content: content.to_string(),
                    id,
                    lstrip: strip("lstrip"),
                    rstrip: strip("rstrip"),
                });
            }
        }
        for text in [&eos_text, &unk_text, &pad_text] {
            if !specials.iter().any(|s| &s.content == text) {
                specials.push(Special {
                    content: text.clone(),
                    id: id_of(text)?,
                    lstrip: true,
                    rstrip: true,
                });
            }
        }
        let find = |t: &str| specials.iter().find(|s| s.content == t).map(|s| s.id);
        let (eos, pad) = (find(&eos_text), find(&pad_text));
        let unk_pieces = sp.encode(&unk_text).map_err(bad)?.len();
        Ok(SiglipTokenizer {
            underline: sp.piece_id("▁"),
            eos: eos.ok_or_else(|| bad("no end token".into()))?,
            pad: pad.ok_or_else(|| bad("no pad token".into()))?,
            sp,
            specials,
            unk_text,
            unk_pieces,
            do_lower_case: flag("do_lower_case", true),
        })
    }

    /// The pad token's id.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// SiglipTokenizer's `canonicalize_text`: lowercase (if set), ASCII punctuation removed, whitespace runs to
    /// one space, stripped.
    fn canonicalize(&self, text: &str) -> String {
        let lowered;
        let text = if self.do_lower_case {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let mut out = String::with_capacity(text.len());
        let mut in_space = false;
        for c in text.chars().filter(|c| !c.is_ascii_punctuation()) {
            if py_space(c) {
                in_space = true;
            } else {
                if in_space && !out.is_empty() {
                    out.push(' ');
                }
                in_space = false;
                out.push(c);
            }
        }
        out
    }

    /// Splits `text` at its special tokens (the earliest match, the longest there), as transformers' trie does.
    fn split<'a>(&'a self, text: &'a str) -> Vec<(&'a str, Option<&'a Special>)> {
        let mut parts = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            let best = self
                .specials
                .iter()
                .filter(|s| !s.content.is_empty() && text[i..].starts_with(&s.content))
                .max_by_key(|s| s.content.len());
            match best {
                Some(s) => {
                    parts.push((&text[start..i], None));
                    parts.push((&text[i..i + s.content.len()], Some(s)));
                    i += s.content.len();
                    start = i;
                }
                None => i += text[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        parts.push((&text[start..], None));
        parts
    }

    /// Token ids of `text`, the end token included, at most `max_len` long.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let prefixed = format!("▁{}", text.replace('▁', " "));
        let mut parts: Vec<(String, Option<&Special>)> = self
            .split(&prefixed)
            .into_iter()
            .map(|(t, s)| (t.to_string(), s))
            .collect();
        // Each special token strips the whitespace beside it from its neighbours (AddedToken lstrip/rstrip).
        for i in 0..parts.len() {
            if let Some(s) = parts[i].1 {
                if s.rstrip && i + 1 < parts.len() && parts[i + 1].1.is_none() {
                    parts[i + 1].0 = parts[i + 1].0.trim_start_matches(py_space).to_string();
                }
                if s.lstrip && i > 0 && parts[i - 1].1.is_none() {
                    parts[i - 1].0 = parts[i - 1].0.trim_end_matches(py_space).to_string();
                }
            }
        }
        let fail = |e: String| Error::Tokenizer(format!("cannot tokenize: {e}"));
        let mut tokens = Vec::new();
        for (part, special) in &parts {
            if let Some(s) = special {
                tokens.push(Token::Special(s.id));
                continue;
            }
            if part.is_empty() {
                continue;
            }
            let canonical = self.canonicalize(part);
            let ids = self
                .sp
                .encode(&format!("{}{canonical}", self.unk_text))
                .map_err(fail)?;
            let keep = if ids.len() >= self.unk_pieces {
                &ids[self.unk_pieces..]
            } else {
                &ids[..]
            };
            tokens.extend(keep.iter().map(|&id| Token::Piece(id)));
        }
        if let ([Token::Piece(first), Token::Special(_), ..], Some(u)) =
            (tokens.as_slice(), self.underline)
        {
            if *first == u {
                tokens.remove(0);
            }
        }
        let mut ids: Vec<u32> = tokens
            .into_iter()
            .map(|t| match t {
                Token::Special(id) | Token::Piece(id) => id,
            })
            .collect();
        ids.truncate(max_len.saturating_sub(1));
        if ids.last() != Some(&self.eos) {
            ids.push(self.eos);
        }
        Ok(ids)
    }
}
