//! Reading open_clip's `open_clip_config.json` (`model_cfg`) as open_clip's dataclasses default it: the ViT +
//! transformer CLIP that `open_clip.create_model` builds from `vision_cfg`, `text_cfg`, `embed_dim` and
//! `quick_gelu`. Towers cliprt does not run (timm trunks, ResNets, HF text models, CoCa's attentional pooler,
//! custom attention blocks) are refused by name. The `preprocess_cfg` half is read by
//! `PreprocessConfig::from_open_clip`.

use std::path::Path;

use serde_json::{Map, Value};

use super::hf::{dotted, opt_usize, square, ConfigError};
use super::{
    Activation, ClipConfig, EncoderConfig, Family, Format, OpenClipLayout, TextConfig, VisionConfig,
};
use crate::error::{Error, Result};

/// open_clip's SimpleTokenizer: 49408 ids, `<end_of_text>` the last (text pooled at argmax, the first EOT).
const OPENAI_VOCAB: usize = 49408;

impl ClipConfig {
    /// Reads and validates the `model_cfg` of `open_clip_config.json`.
    pub fn from_open_clip_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_json_text(path)?;
        Self::from_open_clip_str(&text).map_err(|msg| match msg {
            ConfigError::Invalid(msg) => Error::config(path, msg),
            ConfigError::Unsupported(msg) => Error::UnsupportedModel(msg),
        })
    }

    pub(super) fn from_open_clip_str(text: &str) -> std::result::Result<Self, ConfigError> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::Invalid(format!("not valid JSON: {e}")))?;
        let cfg = root
            .get("model_cfg")
            .and_then(Value::as_object)
            .ok_or_else(|| ConfigError::Invalid("missing object `model_cfg`".into()))?;
        let empty = Map::new();
        let object = |key: &str| -> std::result::Result<&Map<String, Value>, ConfigError> {
            match cfg.get(key) {
                None | Some(Value::Null) => Ok(&empty),
                Some(Value::Object(m)) => Ok(m),
                Some(_) => Err(ConfigError::Invalid(format!(
                    "model_cfg.{key} is not an object"
                ))),
            }
        };
        let (v, t) = (object("vision_cfg")?, object("text_cfg")?);
        refuse_unsupported(cfg, v, t)?;
        let activation = if flag(cfg, "quick_gelu")? {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        };
        // image_size may be [h, w]; patch_size too.
        let image_size = square(v, "vision_cfg", "image_size", 224)?;
        let patch_size = square(v, "vision_cfg", "patch_size", 16)?;
        let vw = opt_usize(v, "vision_cfg", "width", 768)?;
        let head_width = opt_usize(v, "vision_cfg", "head_width", 64)?;
        if head_width == 0 || vw % head_width != 0 {
            return Err(ConfigError::Invalid(format!(
                "vision_cfg.width {vw} is not a multiple of head_width {head_width}"
            )));
        }
        let vision = VisionConfig {
            encoder: EncoderConfig {
                hidden_size: vw,
                intermediate_size: mlp_width(v, "vision_cfg", vw)?,
                num_layers: layers(v, "vision_cfg", 12)?,
                num_heads: vw / head_width,
                layer_norm_eps: eps(v, "vision_cfg")?,
                activation,
            },
            image_size,
            patch_size,
            num_channels: 3,
            class_token: true,
        };
        let tw = opt_usize(t, "text_cfg", "width", 512)?;
        let text = TextConfig {
            encoder: EncoderConfig {
                hidden_size: tw,
                intermediate_size: mlp_width(t, "text_cfg", tw)?,
                num_layers: layers(t, "text_cfg", 12)?,
                num_heads: opt_usize(t, "text_cfg", "heads", 8)?,
                layer_norm_eps: eps(t, "text_cfg")?,
                activation,
            },
            vocab_size: opt_usize(t, "text_cfg", "vocab_size", OPENAI_VOCAB)?,
            max_position_embeddings: opt_usize(t, "text_cfg", "context_length", 77)?,
            // open_clip pools at argmax(ids): the first <end_of_text>, the largest id of its vocabulary.
            eos_token_id: (OPENAI_VOCAB - 1) as u32,
            pad_token_id: 0,
            pad_left: false,
        };
        if text.vocab_size != OPENAI_VOCAB {
            return Err(ConfigError::Unsupported(format!(
                "text_cfg.vocab_size {} (cliprt runs open_clip text towers on OpenAI's {OPENAI_VOCAB}-token \
                 vocabulary)",
                text.vocab_size
            )));
        }
        let layer_scale =
            |m: &Map<String, Value>| !matches!(m.get("ls_init_value"), None | Some(Value::Null));
        let config = ClipConfig {
            family: Family::Clip,
            format: Format::OpenClip(OpenClipLayout {
                custom_text: flag(cfg, "custom_text")?,
                text_proj_bias: flag(t, "proj_bias")?,
                vision_layer_scale: layer_scale(v),
                text_layer_scale: layer_scale(t),
            }),
            projection_dim: opt_usize(cfg, "model_cfg", "embed_dim", 512)?,
            text,
            vision,
        };
        // The limits every family shares (src/limits.rs), before anything is sized from the config.
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }
}

fn flag(m: &Map<String, Value>, key: &str) -> std::result::Result<bool, ConfigError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ConfigError::Invalid(format!(
            "`{key}` is not a boolean: {v}"
        ))),
    }
}

/// `layers` as one integer (a list is a ResNet's stages, refused before).
fn layers(
    m: &Map<String, Value>,
    ctx: &str,
    default: usize,
) -> std::result::Result<usize, ConfigError> {
    opt_usize(m, ctx, "layers", default)
}

/// The MLP width open_clip builds: `int(width * mlp_ratio)`.
fn mlp_width(
    m: &Map<String, Value>,
    ctx: &str,
    width: usize,
) -> std::result::Result<usize, ConfigError> {
    let ratio = match m.get("mlp_ratio") {
        None | Some(Value::Null) => 4.0,
        Some(v) => v
            .as_f64()
            .filter(|r| r.is_finite() && *r > 0.0 && *r < 64.0)
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{} is not a positive number: {v}",
                    dotted(ctx, "mlp_ratio")
                ))
            })?,
    };
    // Python's int() truncates toward zero; the product is positive and below 2^20.
    Ok((width as f64 * ratio) as usize)
}

/// LayerNorm eps: torch's 1e-5 unless `norm_kwargs.eps` says otherwise.
fn eps(m: &Map<String, Value>, ctx: &str) -> std::result::Result<f32, ConfigError> {
    match m.get("norm_kwargs").and_then(|n| n.get("eps")) {
        None | Some(Value::Null) => Ok(1e-5),
        Some(v) => v.as_f64().map(|e| e as f32).ok_or_else(|| {
            ConfigError::Invalid(format!("{}.norm_kwargs.eps is not a number: {v}", ctx))
        }),
    }
}

/// Refuses, by name, every open_clip option that builds a tower cliprt does not run.
fn refuse_unsupported(
    cfg: &Map<String, Value>,
    v: &Map<String, Value>,
    t: &Map<String, Value>,
) -> std::result::Result<(), ConfigError> {
    let set = |m: &Map<String, Value>, key: &str| {
        !matches!(
            m.get(key),
            None | Some(Value::Null) | Some(Value::Bool(false))
        )
    };
    let unsupported =
        |what: String| Err(ConfigError::Unsupported(format!("open_clip model: {what}")));
    if cfg.contains_key("multimodal_cfg") || set(t, "embed_cls") || set(v, "attentional_pool") {
        return unsupported(
            "CoCa (a multimodal decoder or attentional pooler) is not supported".into(),
        );
    }
    if let Some(name) = v.get("timm_model_name").filter(|n| !n.is_null()) {
        return unsupported(format!(
            "a timm vision trunk (timm_model_name {name}) is not supported"
        ));
    }
    if matches!(v.get("layers"), Some(Value::Array(_))) {
        return unsupported(
            "a ResNet vision tower (vision_cfg.layers is a list of stages) is not supported".into(),
        );
    }
    if let Some(name) = t.get("hf_model_name").filter(|n| !n.is_null()) {
        return unsupported(format!(
            "an HF text tower (hf_model_name {name}) is not supported"
        ));
    }
    if let Some(name) = t.get("hf_tokenizer_name").filter(|n| !n.is_null()) {
        return unsupported(format!(
            "an HF tokenizer (hf_tokenizer_name {name}); cliprt runs open_clip's own BPE tokenizer"
        ));
    }
    if set(cfg, "init_logit_bias") {
        return unsupported(
            "a sigmoid-loss model (init_logit_bias) is not supported in open_clip format".into(),
        );
    }
    for (name, m) in [("vision_cfg", v), ("text_cfg", t)] {
        for key in [
            "qk_norm",
            "scaled_cosine_attn",
            "scale_heads",
            "scale_attn_inner",
            "scale_attn",
            "scale_fc",
            "act_kwargs",
        ] {
            if set(m, key) && m.get(key) != Some(&Value::Object(Map::new())) {
                return unsupported(format!(
                    "{name}.{key} (a custom attention block) is not supported"
                ));
            }
        }
        if let Some(b) = m
            .get("block_type")
            .and_then(Value::as_str)
            .filter(|b| *b != "default")
        {
            return unsupported(format!("{name}.block_type {b:?} is not supported"));
        }
    }
    let is = |m: &Map<String, Value>, key: &str, want: &str| {
        m.get(key).and_then(Value::as_str).is_none_or(|s| s == want)
    };
    if !is(v, "pool_type", "tok") {
        return unsupported(format!(
            "vision_cfg.pool_type {} (cliprt pools the class token)",
            v["pool_type"]
        ));
    }
    if !is(v, "pos_embed_type", "learnable") {
        return unsupported(format!("vision_cfg.pos_embed_type {}", v["pos_embed_type"]));
    }
    if set(v, "no_ln_pre") {
        return unsupported(
            "vision_cfg.no_ln_pre (a ViT without its pre-LayerNorm) is not supported".into(),
        );
    }
    if !is(t, "pool_type", "argmax") {
        return unsupported(format!(
            "text_cfg.pool_type {} (cliprt pools at the end-of-text token)",
            t["pool_type"]
        ));
    }
    if !is(t, "proj_type", "linear") {
        return unsupported(format!("text_cfg.proj_type {}", t["proj_type"]));
    }
    if set(t, "no_causal_mask") {
        return unsupported(
            "text_cfg.no_causal_mask (a non-causal text tower) is not supported".into(),
        );
    }
    Ok(())
}
