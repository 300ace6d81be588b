//! open_clip's `SimpleTokenizer` (what `open_clip.get_tokenizer` returns for OpenAI-vocabulary models), with its BPE
//! vocabulary built in (`bpe_simple_vocab_16e6.txt.gz`, the file open_clip and OpenAI's CLIP ship), so an
//! open_clip folder needs no tokenizer file:
//! - cleaning: ftfy's `fix_text` (src/tokenizer/ftfy.rs), `html.unescape` twice, whitespace runs
//!   to one space, lowercase;
//! - the split regex `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`;
//! - byte-level BPE with `</w>` word ends;
//! - `<start_of_text>` … `<end_of_text>`, truncated to the context with the end token kept last.

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use super::ftfy::fix_text;
use super::html::html_unescape;
use crate::error::{Error, Result};

const VOCAB_GZ: &[u8] = include_bytes!("bpe_simple_vocab_16e6.txt.gz");
/// open_clip reads merges 1 ..= 49152 − 256 − 2 of the file.
const MERGES: usize = 49152 - 256 - 2;

/// The vocabulary and merge ranks, built once per process.
struct Bpe {
    byte_char: [char; 256],
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    sot: u32,
    eot: u32,
}

/// GPT-2's byte → printable character map (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    for b in 0..256u32 {
        map[b as usize] = if printable(b) {
            char::from_u32(b).unwrap_or('\0')
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or('\0')
        };
    }
    map
}

fn bpe_tables() -> Result<&'static Bpe> {
    static TABLES: OnceLock<std::result::Result<Bpe, String>> = OnceLock::new();
    TABLES
        .get_or_init(|| {
            let mut text = String::new();
            flate2::read::GzDecoder::new(VOCAB_GZ)
                .read_to_string(&mut text)
                .map_err(|e| format!("the built-in BPE vocabulary: {e}"))?;
            let merges: Vec<(String, String)> = text
                .split('\n')
                .skip(1)
                .take(MERGES)
                .filter_map(|l| {
                    l.split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                })
                .collect();
            let byte_char = bytes_to_unicode();
            // The vocabulary lists the byte characters as `bytes_to_unicode` builds its dict: the printable
            // bytes first, then the others (mapped to 256 + n), each in byte order.
            let mut order: Vec<char> = byte_char.to_vec();
            order.sort_by_key(|&c| (u32::from(c) >= 256, u32::from(c)));
            let mut vocab: Vec<String> = order.iter().map(|c| c.to_string()).collect();
            vocab.extend(order.iter().map(|c| format!("{c}</w>")));
            vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
            vocab.extend(["<start_of_text>".to_string(), "<end_of_text>".to_string()]);
            let encoder: HashMap<String, u32> = vocab
                .into_iter()
                .enumerate()
                .map(|(i, t)| (t, i as u32))
                .collect();
            let ranks = merges
                .into_iter()
                .enumerate()
                .map(|(i, m)| (m, i))
                .collect();
            let special = |t: &str| {
                encoder
                    .get(t)
                    .copied()
                    .ok_or_else(|| format!("the built-in vocabulary lacks {t}"))
            };
            Ok(Bpe {
                byte_char,
                sot: special("<start_of_text>")?,
                eot: special("<end_of_text>")?,
                encoder,
                ranks,
            })
        })
        .as_ref()
        .map_err(|e| Error::Tokenizer(e.clone()))
}

impl Bpe {
    /// open_clip's `bpe`: merge the lowest-ranked adjacent pair until none has a rank.
    fn word(&self, token: &str) -> Vec<String> {
        let chars: Vec<char> = token.chars().collect();
        let Some((last, init)) = chars.split_last() else {
            return Vec::new();
        };
        let mut word: Vec<String> = init.iter().map(|c| c.to_string()).collect();
        word.push(format!("{last}</w>"));
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|p| {
                    self.ranks
                        .get(&(p[0].clone(), p[1].clone()))
                        .map(|&r| (r, p))
                })
                .min_by_key(|(r, _)| *r)
                .map(|(_, p)| (p[0].clone(), p[1].clone()));
            let Some((first, second)) = best else {
                break;
            };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }
}

/// The open_clip tokenizer (the tables are shared by every instance).
pub struct OpenClipTokenizer {
    bpe: &'static Bpe,
    split: fancy_regex::Regex,
}

impl OpenClipTokenizer {
    pub fn new() -> Result<Self> {
        let split = fancy_regex::Regex::new(
            r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| Error::Tokenizer(format!("open_clip split pattern: {e}")))?;
        Ok(OpenClipTokenizer {
            bpe: bpe_tables()?,
            split,
        })
    }

    /// Ids of `text` as open_clip's tokenizer gives them, without its zero padding: at most `context` long.
    pub fn encode(&self, text: &str, context: usize) -> Result<Vec<u32>> {
        let cleaned =
            whitespace_clean(&html_unescape(&html_unescape(&fix_text(text)))).to_lowercase();
        let mut ids = vec![self.bpe.sot];
        for m in self.split.find_iter(&cleaned) {
            let m = m.map_err(|e| Error::Tokenizer(format!("open_clip split: {e}")))?;
            // The pattern matches the special tokens whole (open_clip's BPE cache maps them to themselves).
            match m.as_str() {
                "<start_of_text>" => ids.push(self.bpe.sot),
                "<end_of_text>" => ids.push(self.bpe.eot),
                token => {
                    let mapped: String = token
                        .bytes()
                        .map(|b| self.bpe.byte_char[usize::from(b)])
                        .collect();
                    for piece in self.bpe.word(&mapped) {
                        ids.push(self.bpe.encoder.get(&piece).copied().ok_or_else(|| {
                            Error::Tokenizer(format!("BPE piece {piece:?} outside the vocabulary"))
                        })?);
                    }
                }
            }
        }
        ids.push(self.bpe.eot);
        if ids.len() > context {
            ids.truncate(context.max(1));
            if let Some(last) = ids.last_mut() {
                *last = self.bpe.eot;
            }
        }
        Ok(ids)
    }
}

/// Python's `" ".join(text.split())`: whitespace as `str.isspace` has it.
fn whitespace_clean(text: &str) -> String {
    let space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    text.split(space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
