//! Text → token ids, exactly as transformers tokenizes for the model: a `tokenizer.json` (CLIP's
//! `CLIPTokenizerFast`, SigLIP2's GemmaTokenizer) is the contract, truncated to the context length with the
//! end-of-text token kept last; SigLIP's `spiece.model` goes through [`siglip`] (transformers' SiglipTokenizer).
//! [`sentencepiece`] reads SentencePiece models.

mod ftfy;
mod ftfy_tables;
mod html;
mod html_entities;
pub mod openclip;
pub mod sentencepiece;
pub mod siglip;

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// Where a tokenizer's ids come from.
enum Kind {
    /// A `tokenizer.json` through the tokenizers crate.
    Json(Box<Tokenizer>),
    /// SigLIP's SentencePiece model through transformers' SiglipTokenizer rules.
    Siglip(Box<siglip::SiglipTokenizer>),
    /// open_clip's SimpleTokenizer with its built-in vocabulary.
    OpenClip(Box<openclip::OpenClipTokenizer>),
}

/// The tokenizer of one model.
pub struct ClipTokenizer {
    kind: Kind,
    context_length: usize,
    /// How transformers' processor pads a batch for this tokenizer (`tokenizer_config.json`): the pad token's id,
    /// and whether it pads on the left. Only a non-causal text tower (SigLIP) sees padding.
    pad_id: Option<u32>,
    pad_left: bool,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` and sets truncation to `context_length` tokens (special tokens included).
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer(format!(
                "{}: no such file",
                path.display()
            )));
        }
        let text = crate::files::read_json_text(path)?;
        let parsed = contain_panic(|| text.parse::<Tokenizer>().map_err(|e| e.to_string()));
        let mut inner = parsed
            .and_then(|r| r)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        // The tokenizer truncates before its post-processor adds <|startoftext|>/<|endoftext|>, leaving room for
        // them: an over-long text becomes SOT + the first (context − 2) tokens + EOT, exactly as HF truncation=True.
        inner
            .with_truncation(Some(TruncationParams {
                max_length: context_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        Ok(ClipTokenizer {
            kind: Kind::Json(Box::new(inner)),
            context_length,
            pad_id: None,
            pad_left: false,
        })
    }

    /// open_clip's tokenizer (built-in vocabulary), truncating to `context_length`.
    pub fn open_clip(context_length: usize) -> Result<Self> {
        Ok(ClipTokenizer {
            kind: Kind::OpenClip(Box::new(openclip::OpenClipTokenizer::new()?)),
            context_length,
            pad_id: Some(0),
            pad_left: false,
        })
    }

    /// SigLIP's `spiece.model` with the settings of `tokenizer_config.json` (if given), truncating to
    /// `context_length`. The processor pads it on the right with its pad token.
    pub fn siglip(
        model: &Path,
        config: Option<&serde_json::Value>,
        context_length: usize,
    ) -> Result<Self> {
        let sp = siglip::SiglipTokenizer::open(model, config)?;
        Ok(ClipTokenizer {
            pad_id: Some(sp.pad_id()),
            kind: Kind::Siglip(Box::new(sp)),
            context_length,
            pad_left: false,
        })
    }

    /// Reads the padding transformers applies from `tokenizer_config.json` beside the tokenizer, if present: the
    /// pad token (`pad_token`, a string or an AddedToken object) and the side (`padding_side`, else the
    /// tokenizer class's default: left for GemmaTokenizer and Siglip2Tokenizer, right for the others).
    fn with_tokenizer_config(
        mut self,
        path: &Path,
        json: Option<&serde_json::Value>,
    ) -> Result<Self> {
        let (Some(json), Kind::Json(inner)) = (json, &self.kind) else {
            return Ok(self);
        };
        let class = json
            .get("tokenizer_class")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let class_left = matches!(
            class.trim_end_matches("Fast"),
            "GemmaTokenizer" | "Siglip2Tokenizer"
        );
        self.pad_left = match json.get("padding_side").and_then(|v| v.as_str()) {
            Some("left") => true,
            Some("right") => false,
            Some(other) => {
                return Err(Error::config(
                    path,
                    format!("padding_side {other:?} is neither \"left\" nor \"right\""),
                ))
            }
            None => class_left,
        };
        let pad = match json.get("pad_token") {
            Some(serde_json::Value::String(t)) => Some(t.as_str()),
            Some(serde_json::Value::Object(o)) => o.get("content").and_then(|v| v.as_str()),
            _ => None,
        };
        if let Some(pad) = pad {
            self.pad_id = Some(inner.token_to_id(pad).ok_or_else(|| {
                Error::config(
                    path,
                    format!("pad_token {pad:?} is not in tokenizer.json's vocabulary"),
                )
            })?);
        }
        Ok(self)
    }

    /// The pad token's id from `tokenizer_config.json`, if it names one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Whether the processor pads on the left.
    pub fn pad_left(&self) -> bool {
        self.pad_left
    }

    /// The context length texts are truncated to.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Token ids of one text, special tokens included, at most `context_length` long.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        crate::limits::check(
            "a text's length in bytes",
            text.len() as u64,
            crate::limits::MAX_TEXT_BYTES as u64,
        )?;
        let fail = |e: String| Error::Tokenizer(format!("cannot tokenize {:?}: {e}", short(text)));
        let ids = match &self.kind {
            Kind::Json(inner) => contain_panic(|| {
                inner
                    .encode(text, true)
                    .map(|enc| enc.get_ids().to_vec())
                    .map_err(|e| e.to_string())
            })
            .and_then(|r| r)
            .map_err(fail)?,
            Kind::Siglip(sp) => {
                contain_panic(|| sp.encode(text, self.context_length)).map_err(fail)??
            }
            Kind::OpenClip(oc) => {
                contain_panic(|| oc.encode(text, self.context_length)).map_err(fail)??
            }
        };
        // Truncation cannot cut below the special tokens a post-processor adds.
        if ids.len() > self.context_length {
            return Err(Error::Tokenizer(format!(
                "{} ids for a context of {}: tokenizer.json's post-processor adds more special tokens than fit",
                ids.len(),
                self.context_length
            )));
        }
        if ids.is_empty() {
            return Err(Error::Tokenizer(
                "tokenizer produced no tokens (does tokenizer.json add <|startoftext|>/<|endoftext|>?)".into(),
            ));
        }
        Ok(ids)
    }

    /// Token ids of each text.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        if texts.is_empty() {
            return Err(Error::EmptyInput("no texts given"));
        }
        texts.iter().map(|t| self.encode(t)).collect()
    }
}

/// A model folder's tokenizer with the pooling rule of its text tower: what `cliprt tokenize` needs without
/// loading the weights, read exactly as [`crate::Clip::load`] reads it.
pub struct ModelTokenizer {
    pub tokenizer: ClipTokenizer,
    pub eos_token_id: u32,
}

impl ModelTokenizer {
    /// The tokenizer of the model folder `dir`, its config read as `Clip::load` reads it (HF or open_clip).
    pub fn open(dir: &Path) -> Result<ModelTokenizer> {
        let (config, _) = crate::config::ClipConfig::from_dir(dir)?;
        ModelTokenizer::for_config(dir, &config)
    }

    /// The tokenizer of `dir` for a model of `config`, chosen as transformers' AutoTokenizer chooses it: the
    /// class `tokenizer_config.json` names, else the family's own. A SigLIP folder whose class is SiglipTokenizer
    /// (or unnamed) reads `spiece.model`, any other `tokenizer.json`.
    pub fn for_config(dir: &Path, config: &crate::config::ClipConfig) -> Result<ModelTokenizer> {
        let config_path = dir.join("tokenizer_config.json");
        let json: Option<serde_json::Value> = if config_path.exists() {
            let text = crate::files::read_json_text(&config_path)?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| Error::config(&config_path, format!("not valid JSON: {e}")))?,
            )
        } else {
            None
        };
        let class = json
            .as_ref()
            .and_then(|j| j.get("tokenizer_class"))
            .and_then(|v| v.as_str())
            .map(|c| c.trim_end_matches("Fast").to_string());
        let context = config.text.max_position_embeddings;
        if let crate::config::Format::OpenClip(_) = config.format {
            // open_clip's own tokenizer, whatever else the folder holds (open_clip.get_tokenizer ignores it).
            return Ok(ModelTokenizer {
                tokenizer: ClipTokenizer::open_clip(context)?,
                eos_token_id: config.text.eos_token_id,
            });
        }
        let sentencepiece = config.family == crate::config::Family::Siglip
            && class.as_deref().is_none_or(|c| c == "SiglipTokenizer");
        let tokenizer = if sentencepiece {
            let model = dir.join("spiece.model");
            if !model.exists() {
                return Err(Error::MissingFile {
                    dir: dir.to_path_buf(),
                    file: "spiece.model",
                    hint:
                        " (SigLIP's SentencePiece model; a SigLIP2 folder names GemmaTokenizer in \
                           tokenizer_config.json and ships tokenizer.json)",
                });
            }
            ClipTokenizer::siglip(&model, json.as_ref(), context)?
        } else {
            ClipTokenizer::from_file(&dir.join("tokenizer.json"), context)?
                .with_tokenizer_config(&config_path, json.as_ref())?
        };
        Ok(ModelTokenizer {
            tokenizer,
            eos_token_id: config.text.eos_token_id,
        })
    }

    /// The position the text tower pools each row of ids at.
    pub fn pooling_position(&self, ids: &[u32]) -> usize {
        pooling_position(ids, self.eos_token_id)
    }
}

/// Reads a UTF-8 file with one text per line; blank lines are skipped, a trailing `\r` is dropped.
pub fn read_text_file(path: &Path) -> Result<Vec<String>> {
    let bytes = crate::files::read_limited(path, crate::limits::MAX_TEXT_FILE_BYTES, "text file")?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        Error::InvalidText {
            path: path.to_path_buf(),
            line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
        }
    })?;
    Ok(text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// Runs `f`, turning a panic into an error message. The tokenizers crate panics on some malformed tokenizer.json
/// contents (an id its vocabulary lacks, say) instead of returning an error; a model folder is user input, so that
/// must not take the process down. The panic's default report is silenced while `f` runs on this thread.
fn contain_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    use std::cell::Cell;
    use std::panic::{self, AssertUnwindSafe};
    thread_local!(static CONTAINED: Cell<bool> = const { Cell::new(false) });
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    CONTAINED.with(|c| c.set(true));
    // AssertUnwindSafe: on a panic the tokenizer's state is not used again for this call, and encoding does not
    // mutate it.
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(false));
    result.map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        format!("the tokenizer failed ({msg}); is tokenizer.json intact?")
    })
}

fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The position whose hidden state the text tower pools, following HF's rule: with a legacy config
/// (`eos_token_id == 2`) the first position of the largest id; otherwise the first position of `eos_token_id`
/// (position 0 when it is absent, as torch's argmax over an all-false mask gives).
pub fn pooling_position(ids: &[u32], eos_token_id: u32) -> usize {
    if eos_token_id == 2 {
        // First maximum: Iterator::max_by_key would return the last one, and HF pads with the EOT id itself.
        let mut best = 0;
        for (i, &id) in ids.iter().enumerate() {
            if id > ids[best] {
                best = i;
            }
        }
        best
    } else {
        ids.iter().position(|&id| id == eos_token_id).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_maximum_and_first_eos() {
        assert_eq!(pooling_position(&[49406, 320, 49407, 49407, 49407], 2), 2);
        assert_eq!(pooling_position(&[49406, 320, 49407, 49407], 49407), 2);
        assert_eq!(pooling_position(&[5, 6, 7], 49407), 0);
    }
}
