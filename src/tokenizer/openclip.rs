//! open_clip's `SimpleTokenizer` (what `open_clip.get_tokenizer` returns for OpenAI-vocabulary models), with its BPE
//! vocabulary built in (`bpe_simple_vocab_16e6.txt.gz`, the file open_clip and OpenAI's CLIP ship), so an
//! open_clip folder needs no tokenizer file:
//! - cleaning: ftfy's `fix_text` (see [`fix_text`] for the parts reproduced), `html.unescape` twice, whitespace runs
//!   to one space, lowercase;
//! - the split regex `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`;
//! - byte-level BPE with `</w>` word ends;
//! - `<start_of_text>` … `<end_of_text>`, truncated to the context with the end token kept last.

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use tokenizers::NormalizedString;

use super::html_entities::HTML5;
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

/// Python's `html.unescape`: named references from the HTML5 table (the longest known prefix of a name without
/// `;`, as browsers read legacy forms), decimal and hex references with HTML5's replacements.
fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (replacement, used) = charref(rest);
        out.push_str(&replacement);
        rest = &rest[used..];
    }
    out.push_str(rest);
    out
}

/// One reference at the start of `s` (which starts with '&'): its replacement and the bytes it used.
fn charref(s: &str) -> (String, usize) {
    let body = &s[1..];
    if let Some(num) = body.strip_prefix('#') {
        let (hex, digits) = match num.strip_prefix(['x', 'X']) {
            Some(h) => (true, h),
            None => (false, num),
        };
        let len = digits
            .chars()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        if len > 0 {
            let prefix = 2 + usize::from(hex);
            let semi = usize::from(digits[len..].starts_with(';'));
            let value =
                u32::from_str_radix(&digits[..len], if hex { 16 } else { 10 }).unwrap_or(u32::MAX);
            return (numeric(value), prefix + len + semi);
        }
        return ("&".into(), 1);
    }
    // Python's pattern: up to 32 characters that are not whitespace, '<', '&', '#' or ';', then an optional ';'.
    let name_len: usize = body
        .chars()
        .take_while(|c| !matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return ("&".into(), 1);
    }
    let with_semi = name_len + usize::from(body[name_len..].starts_with(';'));
    let name = &body[..with_semi];
    if let Some(v) = entity(name) {
        return (v.to_string(), 1 + with_semi);
    }
    // The longest prefix that names a legacy (no ';') reference, the rest kept as text.
    let mut ends: Vec<usize> = name
        .char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i > 1)
        .collect();
    ends.reverse();
    for end in ends {
        if let Some(v) = entity(&name[..end]) {
            return (format!("{v}{}", &name[end..]), 1 + with_semi);
        }
    }
    (format!("&{name}"), 1 + with_semi)
}

fn entity(name: &str) -> Option<&'static str> {
    HTML5
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| HTML5[i].1)
}

/// A numeric reference's replacement, as Python's `html._replace_charref`.
fn numeric(n: u32) -> String {
    // Windows-1252's characters for the C1 range, as HTML5 maps those references.
    const C1: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{0192}', '\u{201e}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{02c6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{8d}',
        '\u{017d}', '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}',
        '\u{2013}', '\u{2014}', '\u{02dc}', '\u{2122}', '\u{0161}', '\u{203a}', '\u{0153}',
        '\u{9d}', '\u{017e}', '\u{0178}',
    ];
    match n {
        0x00 => "\u{fffd}".into(),
        0x0d => "\r".into(),
        0x80..=0x9f => C1[(n - 0x80) as usize].to_string(),
        0xd800..=0xdfff | 0x110000.. => "\u{fffd}".into(),
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        _ if n & 0xfffe == 0xfffe => String::new(),
        _ => char::from_u32(n).map(String::from).unwrap_or_default(),
    }
}

/// ftfy's `fix_text` with its default settings, except its repair of mojibake (`fix_encoding`: text decoded in the
/// wrong encoding, found by ftfy's heuristics), which cliprt does not reproduce. Until the text stops changing:
/// HTML references ending in `;` (when the text has no '<'), C1 controls read as Windows-1252, Latin ligatures
/// split, full- and half-width forms to normal width, curly quotes straightened, line breaks to `\n`, ANSI
/// terminal escapes and stray control characters removed, NFC.
fn fix_text(text: &str) -> String {
    let html = !text.contains('<');
    let mut text = text.to_string();
    // ftfy loops until nothing changes; each pass only shortens or normalizes, so a few passes suffice.
    for _ in 0..8 {
        let before = text.clone();
        if html {
            text = unescape_semicolon_entities(&text);
        }
        text = text.chars().map(c1_to_cp1252).collect();
        text = text.chars().flat_map(fix_char).collect();
        text = text
            .replace("\r\n", "\n")
            .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
        text = remove_terminal_escapes(&text);
        text.retain(|c| !is_removed_control(c));
        let mut n = NormalizedString::from(text.as_str());
        n.nfc();
        text = n.get().to_string();
        if text == before {
            break;
        }
    }
    text
}

/// ftfy's `unescape_html`: `&#?[0-9A-Za-z]{1,24};` references that html.unescape decodes.
fn unescape_semicolon_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let body = &rest[1..];
        let hash = usize::from(body.starts_with('#'));
        let len = body[hash..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .take(25)
            .count();
        if (1..=24).contains(&len) && body[hash + len..].starts_with(';') {
            let reference = &rest[..2 + hash + len];
            out.push_str(&html_unescape(reference));
            rest = &rest[reference.len()..];
        } else {
            out.push('&');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `ESC [` + digits and ';' + a letter.
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\u{1b}[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let params = after
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ';')
            .count();
        match after[params..].chars().next() {
            Some(c) if c.is_ascii_alphabetic() => rest = &after[params + 1..],
            _ => {
                out.push_str("\u{1b}[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// ftfy's `fix_c1_controls`: a C1 control character is the Windows-1252 byte it was meant to be.
fn c1_to_cp1252(c: char) -> char {
    if ('\u{80}'..='\u{9f}').contains(&c) {
        numeric(c as u32).chars().next().unwrap_or(c)
    } else {
        c
    }
}

/// Ligatures (ftfy's table), width forms (NFKC of U+FF01–U+FFEF, U+3000 to a space), curly quotes.
fn fix_char(c: char) -> Vec<char> {
    let fixed = match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        '\u{3000}' => " ",
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => "'",
        '\u{201c}'..='\u{201f}' => "\"",
        _ => "",
    };
    if !fixed.is_empty() {
        return fixed.chars().collect();
    }
    if ('\u{ff01}'..='\u{ffef}').contains(&c) {
        let mut n = NormalizedString::from(c.to_string().as_str());
        n.nfkc();
        return n.get().chars().collect();
    }
    vec![c]
}

/// ftfy's `remove_control_chars` set.
fn is_removed_control(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0x206a..=0x206f | 0xfeff | 0xfff9..=0xfffc)
}
