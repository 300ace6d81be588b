//! SentencePiece models (`spiece.model`, a protobuf `ModelProto`), read without a protobuf library, and encoded as
//! the sentencepiece library encodes them: the normalizer's precompiled character map (the `tokenizers` crate's
//! port), its whitespace rules, then the unigram model's best segmentation, written here after sentencepiece's
//! own (`EncodeOptimized`): scores summed in f32 in its order, ties kept by the first candidate, so that equal-score
//! segmentations come out as sentencepiece's do (an f64 Viterbi breaks those ties differently). Consecutive
//! unknown pieces merge into one; with byte fallback an unknown piece becomes its UTF-8 bytes' pieces. Only
//! unigram models are supported (SigLIP's).

use std::collections::HashMap;

use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::{NormalizedString, Normalizer};

/// The kinds of piece sentencepiece distinguishes (`SentencePiece.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

/// A loaded unigram SentencePiece model.
pub struct SentencePiece {
    /// Piece string → (id, score) for the pieces a segmentation may use (normal and user-defined).
    matchable: HashMap<String, (u32, f32)>,
    /// The longest matchable piece in bytes.
    longest: usize,
    unk_id: u32,
    /// The lowest normal piece's score − 10: what an unknown character costs (sentencepiece's kUnkPenalty).
    unk_score: f32,
    /// With byte fallback, the ids of the pieces <0x00>…<0xFF>.
    bytes: Option<Vec<u32>>,
    /// Piece string → id, for every piece (`piece_to_id`).
    ids: HashMap<String, u32>,
    precompiled: Option<Precompiled>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

/// A protobuf field: its number and value.
enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message, in order, with every length checked against the message.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    fn varint(buf: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(varint(&mut buf)?),
            1 => {
                buf = buf.get(8..).ok_or("truncated fixed64")?;
                continue;
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| "length past usize")?;
                if len > buf.len() {
                    return Err(format!(
                        "field {number} claims {len} bytes, {} left",
                        buf.len()
                    ));
                }
                let (data, rest) = buf.split_at(len);
                buf = rest;
                Field::Bytes(data)
            }
            5 => {
                let (data, rest) = buf.split_first_chunk::<4>().ok_or("truncated fixed32")?;
                buf = rest;
                Field::Fixed32(u32::from_le_bytes(*data))
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((number, field));
    }
    Ok(out)
}

impl SentencePiece {
    /// Reads a serialized `ModelProto`. Errors name what is malformed or unsupported.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut pieces: Vec<(String, f32, PieceType)> = Vec::new();
        let (mut model_type, mut byte_fallback) = (1u64, false);
        let mut charsmap: &[u8] = &[];
        let (mut add_dummy_prefix, mut remove_extra_whitespaces, mut escape_whitespaces) =
            (true, true, true);
        for (number, field) in fields(bytes)? {
            match (number, field) {
                (1, Field::Bytes(msg)) => {
                    let (mut piece, mut score, mut kind) = (None, 0.0f32, PieceType::Normal);
                    for (n, f) in fields(msg)? {
                        match (n, f) {
                            (1, Field::Bytes(s)) => {
                                piece = Some(
                                    std::str::from_utf8(s)
                                        .map_err(|_| "a piece is not UTF-8")?
                                        .to_string(),
                                )
                            }
                            (2, Field::Fixed32(bits)) => score = f32::from_bits(bits),
                            (3, Field::Varint(t)) => {
                                kind = match t {
                                    1 => PieceType::Normal,
                                    2 => PieceType::Unknown,
                                    3 => PieceType::Control,
                                    4 => PieceType::UserDefined,
                                    5 => PieceType::Unused,
                                    6 => PieceType::Byte,
                                    other => return Err(format!("piece type {other}")),
                                }
                            }
                            _ => {}
                        }
                    }
                    if !score.is_finite() {
                        return Err("a piece's score is not finite".into());
                    }
                    pieces.push((piece.ok_or("a piece without its string")?, score, kind));
                }
                (2, Field::Bytes(trainer)) => {
                    for (n, f) in fields(trainer)? {
                        match (n, f) {
                            (3, Field::Varint(t)) => model_type = t,
                            (35, Field::Varint(b)) => byte_fallback = b != 0,
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(normalizer)) => {
                    for (n, f) in fields(normalizer)? {
                        match (n, f) {
                            (2, Field::Bytes(map)) => charsmap = map,
                            (3, Field::Varint(b)) => add_dummy_prefix = b != 0,
                            (4, Field::Varint(b)) => remove_extra_whitespaces = b != 0,
                            (5, Field::Varint(b)) => escape_whitespaces = b != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if model_type != 1 {
            return Err(format!(
                "model type {model_type} (cliprt reads unigram SentencePiece models, type 1)"
            ));
        }
        let unk = pieces
            .iter()
            .position(|p| p.2 == PieceType::Unknown)
            .ok_or("no unknown piece")?;
        let limit = crate::limits::model::MAX_VOCAB;
        if pieces.len() > limit {
            return Err(format!(
                "{} pieces, over the limit of {limit}",
                pieces.len()
            ));
        }
        // Sentencepiece segments with normal and user-defined pieces only (control, unused and byte pieces never
        // match text); scores bound over normal pieces.
        let normal = pieces
            .iter()
            .filter(|p| p.2 == PieceType::Normal)
            .map(|p| p.1);
        let (min_score, max_score) = normal
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
                (lo.min(s), hi.max(s))
            });
        let (min_score, max_score) = if min_score.is_finite() {
            (min_score, max_score)
        } else {
            (0.0, 0.0)
        };
        let mut ids = HashMap::with_capacity(pieces.len());
        let mut matchable = HashMap::with_capacity(pieces.len());
        for (id, (piece, score, kind)) in pieces.iter().enumerate() {
            let id = id as u32;
            ids.entry(piece.clone()).or_insert(id);
            let score = match kind {
                PieceType::Normal => *score,
                // sentencepiece: user-defined symbols win over any normal segmentation of their span.
                PieceType::UserDefined => piece.len() as f32 * max_score - 0.1,
                _ => continue,
            };
            if !piece.is_empty() {
                matchable.entry(piece.clone()).or_insert((id, score));
            }
        }
        let bytes = if byte_fallback {
            Some(
                (0..=255u8)
                    .map(|b| {
                        ids.get(&format!("<0x{b:02X}>"))
                            .copied()
                            .ok_or_else(|| format!("byte fallback without the piece <0x{b:02X}>"))
                    })
                    .collect::<Result<Vec<u32>, String>>()?,
            )
        } else {
            None
        };
        let precompiled = if charsmap.is_empty() {
            None
        } else {
            Some(Precompiled::from(charsmap).map_err(|e| format!("precompiled charsmap: {e}"))?)
        };
        Ok(SentencePiece {
            longest: matchable.keys().map(String::len).max().unwrap_or(0),
            matchable,
            unk_id: unk as u32,
            unk_score: min_score - 10.0,
            bytes,
            ids,
            precompiled,
            add_dummy_prefix,
            remove_extra_whitespaces,
            escape_whitespaces,
        })
    }

    /// Turns the dummy prefix off (transformers' `legacy=False` does).
    pub fn without_dummy_prefix(mut self) -> Self {
        self.add_dummy_prefix = false;
        self
    }

    /// The id of a piece by its string, as `piece_to_id` gives it.
    pub fn piece_id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    /// The normalized text: the character map, then the whitespace rules (leading, trailing and repeated spaces
    /// dropped; a space in front; spaces as ▁).
    fn normalize(&self, text: &str) -> Result<String, String> {
        let mapped = match &self.precompiled {
            Some(p) => {
                let mut n = NormalizedString::from(text);
                p.normalize(&mut n).map_err(|e| e.to_string())?;
                n.get().to_string()
            }
            None => text.to_string(),
        };
        let mut out = String::with_capacity(mapped.len() + 3);
        let space = if self.escape_whitespaces { '▁' } else { ' ' };
        let body = if self.remove_extra_whitespaces {
            mapped.trim_matches(' ')
        } else {
            mapped.as_str()
        };
        if self.add_dummy_prefix && !body.is_empty() {
            out.push(space);
        }
        let mut previous_space = false;
        for c in body.chars() {
            if c == ' ' {
                if !(self.remove_extra_whitespaces && previous_space) {
                    out.push(space);
                }
                previous_space = true;
            } else {
                out.push(c);
                previous_space = false;
            }
        }
        Ok(out)
    }

    /// The ids of `text`, as `SentencePieceProcessor.encode(text)` gives them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let normalized = self.normalize(text)?;
        let mut out = Vec::new();
        let mut previous_unknown = false;
        for (piece, id) in self.segment(&normalized) {
            let unknown = id == self.unk_id;
            match (&self.bytes, unknown) {
                (Some(bytes), true) => out.extend(piece.bytes().map(|b| bytes[usize::from(b)])),
                // Consecutive unknown pieces merge into one (sentencepiece keeps the run's text together).
                (None, true) if previous_unknown => {}
                _ => out.push(id),
            }
            previous_unknown = unknown;
        }
        Ok(out)
    }

    /// The best segmentation of `text` as (piece text, id): sentencepiece's forward Viterbi, best path ending at
    /// each byte, candidates in order of their start then their end, replaced only by a strictly better f32 score.
    fn segment<'a>(&self, text: &'a str) -> Vec<(&'a str, u32)> {
        #[derive(Clone, Copy)]
        struct Best {
            id: u32,
            score: f32,
            start: Option<usize>,
        }
        let size = text.len();
        let mut best = vec![
            Best {
                id: 0,
                score: 0.0,
                start: None
            };
            size + 1
        ];
        let offer = |node: &mut Best, id: u32, score: f32, start: usize| {
            if node.start.is_none() || score > node.score {
                *node = Best {
                    id,
                    score,
                    start: Some(start),
                };
            }
        };
        for (start, c) in text.char_indices() {
            let here = best[start].score;
            let mut single = false;
            let limit = (start + self.longest).min(size);
            for end in (start + 1..=limit).filter(|&e| text.is_char_boundary(e)) {
                if let Some(&(id, score)) = self.matchable.get(&text[start..end]) {
                    offer(&mut best[end], id, score + here, start);
                    single |= end == start + c.len_utf8();
                }
            }
            if !single {
                offer(
                    &mut best[start + c.len_utf8()],
                    self.unk_id,
                    self.unk_score + here,
                    start,
                );
            }
        }
        let mut pieces = Vec::new();
        let mut end = size;
        while end > 0 {
            let node = best[end];
            // Every char boundary is reached (an unknown character at worst), so each node has a start.
            let start = node.start.unwrap_or(0);
            pieces.push((&text[start..end], node.id));
            end = start;
        }
        pieces.reverse();
        pieces
    }
}
