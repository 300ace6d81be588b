//! Reading an HF `config.json` (CLIP in its legacy and modern forms, SigLIP) with transformers' defaults.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Activation, ClipConfig, EncoderConfig, Family, Format, TextConfig, VisionConfig};
use crate::error::{Error, Result};

impl ClipConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_json_text(path)?;
        Self::from_json_str(&text).map_err(|msg| match msg {
            ConfigError::Invalid(msg) => Error::config(path, msg),
            ConfigError::Unsupported(msg) => Error::UnsupportedModel(msg),
        })
    }

    /// Parses the text of an HF `config.json` of a family cliprt runs.
    pub(super) fn from_json_str(text: &str) -> std::result::Result<Self, ConfigError> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::Invalid(format!("not valid JSON: {e}")))?;
        let root = root
            .as_object()
            .ok_or_else(|| ConfigError::Invalid("top level is not a JSON object".into()))?;
        let config = match root.get("model_type").and_then(Value::as_str) {
            Some("clip") => Self::clip(root)?,
            Some("siglip") => Self::siglip(root)?,
            Some("siglip2") => {
                return Err(ConfigError::Unsupported(
                    "model_type \"siglip2\": a SigLIP2 NaFlex checkpoint (variable resolution and aspect ratio) \
                     is not supported; SigLIP2's fixed-resolution checkpoints (model_type \"siglip\") are"
                        .into(),
                ))
            }
            Some(other) => {
                return Err(ConfigError::Unsupported(format!(
                    "model_type \"{other}\" (cliprt runs \"clip\" and \"siglip\" checkpoints with both towers)"
                )))
            }
            None => return Err(ConfigError::Invalid("missing field `model_type`".into())),
        };
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// An HF CLIP config.
    fn clip(root: &Map<String, Value>) -> std::result::Result<Self, ConfigError> {
        let t = tower(root, "text_config")?;
        let v = tower(root, "vision_config")?;
        // transformers' CLIPTextConfig defaults (pad 1: the causal tower never reads padding).
        let text = text_config(t, None, 49408, 77)?;
        let vision = VisionConfig {
            encoder: encoder(v, "vision_config", None)?,
            image_size: req_usize(v, "vision_config", "image_size")?,
            patch_size: req_usize(v, "vision_config", "patch_size")?,
            num_channels: opt_usize(v, "vision_config", "num_channels", 3)?,
            class_token: true,
        };
        Ok(ClipConfig {
            family: Family::Clip,
            format: Format::Hf,
            text,
            vision,
            projection_dim: opt_usize(root, "", "projection_dim", 512)?,
        })
    }

    /// An HF SigLIP config (SigLIP, and SigLIP2's fixed-resolution checkpoints): every field defaults as
    /// transformers' SiglipTextConfig / SiglipVisionConfig do.
    fn siglip(root: &Map<String, Value>) -> std::result::Result<Self, ConfigError> {
        let empty = Map::new();
        let t = optional_tower(root, "text_config")?.unwrap_or(&empty);
        let v = optional_tower(root, "vision_config")?.unwrap_or(&empty);
        let defaults = EncoderDefaults {
            hidden_size: 768,
            intermediate_size: 3072,
            num_layers: 12,
            num_heads: 12,
            layer_norm_eps: 1e-6,
            activation: "gelu_pytorch_tanh",
        };
        let text = text_config(t, Some(&defaults), 32000, 64)?;
        let vision = VisionConfig {
            encoder: encoder(v, "vision_config", Some(&defaults))?,
            image_size: square(v, "vision_config", "image_size", 224)?,
            patch_size: square(v, "vision_config", "patch_size", 16)?,
            num_channels: opt_usize(v, "vision_config", "num_channels", 3)?,
            class_token: false,
        };
        if v.get("vision_use_head") == Some(&Value::Bool(false)) {
            return Err(ConfigError::Unsupported(
                "vision_config.vision_use_head false: a SigLIP vision tower without its attention-pooling head \
                 has no image embedding"
                    .into(),
            ));
        }
        // The text head maps to projection_size (default: the text width); both embeddings must share a space.
        let projection = opt_usize(
            t,
            "text_config",
            "projection_size",
            text.encoder.hidden_size,
        )?;
        if projection != vision.encoder.hidden_size {
            return Err(ConfigError::Invalid(format!(
                "text_config.projection_size {projection} differs from vision_config.hidden_size {}: the text and \
                 image embeddings would not share a space",
                vision.encoder.hidden_size
            )));
        }
        Ok(ClipConfig {
            family: Family::Siglip,
            format: Format::Hf,
            projection_dim: projection,
            text,
            vision,
        })
    }
}

pub(super) enum ConfigError {
    Invalid(String),
    Unsupported(String),
}

/// A family's defaults for the encoder fields (SigLIP's configuration classes default every one).
pub(super) struct EncoderDefaults {
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    num_heads: usize,
    layer_norm_eps: f64,
    activation: &'static str,
}

/// A tower's encoder fields; with `defaults`, absent fields take them, else sizes are required (CLIP).
pub(super) fn encoder(
    m: &Map<String, Value>,
    ctx: &str,
    defaults: Option<&EncoderDefaults>,
) -> std::result::Result<EncoderConfig, ConfigError> {
    let act_name = match m.get("hidden_act") {
        // transformers' default: quick_gelu for both CLIP towers, the family's own elsewhere.
        None | Some(Value::Null) => defaults.map_or("quick_gelu", |d| d.activation),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(ConfigError::Invalid(format!(
                "{ctx}.hidden_act is not a string"
            )))
        }
    };
    let activation = Activation::parse(act_name).ok_or_else(|| {
        ConfigError::Unsupported(format!(
            "{ctx}.hidden_act \"{act_name}\" (cliprt supports quick_gelu, gelu and gelu_pytorch_tanh)"
        ))
    })?;
    let eps = match m.get("layer_norm_eps") {
        None | Some(Value::Null) => defaults.map_or(1e-5, |d| d.layer_norm_eps),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| ConfigError::Invalid(format!("{ctx}.layer_norm_eps is not a number")))?,
    };
    let size = |key: &str, default: Option<usize>| match default {
        Some(d) => opt_usize(m, ctx, key, d),
        None => req_usize(m, ctx, key),
    };
    Ok(EncoderConfig {
        hidden_size: size("hidden_size", defaults.map(|d| d.hidden_size))?,
        intermediate_size: size("intermediate_size", defaults.map(|d| d.intermediate_size))?,
        num_layers: size("num_hidden_layers", defaults.map(|d| d.num_layers))?,
        num_heads: size("num_attention_heads", defaults.map(|d| d.num_heads))?,
        layer_norm_eps: eps as f32,
        activation,
    })
}

/// An HF `text_config` with the family's defaults for the vocabulary and context sizes; eos 49407 and pad 1 are
/// both families' transformers defaults.
fn text_config(
    t: &Map<String, Value>,
    defaults: Option<&EncoderDefaults>,
    vocab: usize,
    context: usize,
) -> std::result::Result<TextConfig, ConfigError> {
    Ok(TextConfig {
        encoder: encoder(t, "text_config", defaults)?,
        vocab_size: opt_usize(t, "text_config", "vocab_size", vocab)?,
        max_position_embeddings: opt_usize(t, "text_config", "max_position_embeddings", context)?,
        eos_token_id: opt_u32(t, "text_config", "eos_token_id", 49407)?,
        pad_token_id: opt_u32(t, "text_config", "pad_token_id", 1)?,
        pad_left: false,
    })
}

/// A tower's sub-object; legacy OpenAI files carry `text_config_dict`/`vision_config_dict`, sometimes next to a
/// null `text_config`.
fn optional_tower<'a>(
    root: &'a Map<String, Value>,
    name: &str,
) -> std::result::Result<Option<&'a Map<String, Value>>, ConfigError> {
    for key in [name.to_string(), format!("{name}_dict")] {
        match root.get(&key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => return Ok(Some(m)),
            Some(_) => {
                return Err(ConfigError::Invalid(format!(
                    "field `{key}` is not an object"
                )))
            }
        }
    }
    Ok(None)
}

fn tower<'a>(
    root: &'a Map<String, Value>,
    name: &str,
) -> std::result::Result<&'a Map<String, Value>, ConfigError> {
    optional_tower(root, name)?
        .ok_or_else(|| ConfigError::Invalid(format!("missing field `{name}`")))
}

/// A size given as one integer or as an equal `[height, width]` pair (transformers accepts both); cliprt's towers
/// are square.
pub(super) fn square(
    m: &Map<String, Value>,
    ctx: &str,
    key: &str,
    default: usize,
) -> std::result::Result<usize, ConfigError> {
    match m.get(key) {
        Some(Value::Array(pair)) => match pair.as_slice() {
            [h, w] if h == w => as_usize(h, ctx, key),
            _ => Err(ConfigError::Unsupported(format!(
                "{} {} is not square (cliprt runs square inputs)",
                dotted(ctx, key),
                Value::Array(pair.clone())
            ))),
        },
        _ => opt_usize(m, ctx, key, default),
    }
}

pub(super) fn opt_u32(
    m: &Map<String, Value>,
    ctx: &str,
    key: &str,
    default: u32,
) -> std::result::Result<u32, ConfigError> {
    u32::try_from(opt_usize(m, ctx, key, default as usize)?)
        .map_err(|_| ConfigError::Invalid(format!("{} is over 2^32 − 1", dotted(ctx, key))))
}

pub(super) fn req_usize(
    m: &Map<String, Value>,
    ctx: &str,
    key: &str,
) -> std::result::Result<usize, ConfigError> {
    match m.get(key) {
        None | Some(Value::Null) => Err(ConfigError::Invalid(format!(
            "missing field `{}`",
            dotted(ctx, key)
        ))),
        Some(v) => as_usize(v, ctx, key),
    }
}

pub(super) fn opt_usize(
    m: &Map<String, Value>,
    ctx: &str,
    key: &str,
    default: usize,
) -> std::result::Result<usize, ConfigError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => as_usize(v, ctx, key),
    }
}

pub(super) fn as_usize(v: &Value, ctx: &str, key: &str) -> std::result::Result<usize, ConfigError> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "field `{}` is not a non-negative integer: {v}",
                dotted(ctx, key)
            ))
        })
}

pub(super) fn dotted(ctx: &str, key: &str) -> String {
    if ctx.is_empty() {
        key.to_string()
    } else {
        format!("{ctx}.{key}")
    }
}
