//! The architecture of a CLIP-family model, read from an HF `config.json` (CLIP in its legacy and modern forms,
//! SigLIP), plus presets for synthetic models.
//!
//! Fields that transformers defaults when absent take transformers' defaults for that family, so a file HF accepts
//! is read the way HF reads it: for CLIP the sizes, layer and head counts are required (HF writes them on every
//! `save_pretrained`), for SigLIP every field has its configuration class's default (the hub's base checkpoints
//! write almost none).

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The MLP activation of one tower (`hidden_act`). CLIP checkpoints differ here: OpenAI's use quick_gelu, many
/// LAION ones exact gelu; using the wrong one gives silently wrong embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x · sigmoid(1.702 x)
    QuickGelu,
    /// x · Φ(x) with the exact erf
    Gelu,
    /// GELU's tanh approximation, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (HF `gelu_pytorch_tanh`, `gelu_new`:
    /// SigLIP's towers)
    GeluTanh,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Activation::QuickGelu),
            // HF's "gelu" is the exact erf form; "gelu_python" is the same function.
            "gelu" | "gelu_python" => Some(Activation::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" => Some(Activation::GeluTanh),
            _ => None,
        }
    }

    /// The name HF uses in config.json.
    pub fn name(self) -> &'static str {
        match self {
            Activation::QuickGelu => "quick_gelu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }

    /// Every activation, for the checks that must cover each.
    pub const ALL: [Activation; 3] = [
        Activation::QuickGelu,
        Activation::Gelu,
        Activation::GeluTanh,
    ];
}

/// The part of a tower's configuration shared by text and vision: one stack of pre-LN encoder layers.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub layer_norm_eps: f32,
    pub activation: Activation,
}

impl EncoderConfig {
    /// Width of one attention head (not always 64: ViT-H/14 has 80, bigG 104).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// The architecture family: what the towers look like around their shared encoder layers (ARCHITECTURE.md, Model
/// families).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// CLIP (OpenAI, LAION, OpenCLIP): vision with a class token, pre-LN and a projection; causal text pooled at the
    /// first end-of-text token; softmax over labels.
    Clip,
    /// SigLIP and SigLIP2's fixed-resolution checkpoints: vision with a patch bias, no class token, an
    /// attention-pooling head; non-causal text padded to the context and pooled at the last position, a head with
    /// bias; a logit bias and a per-pair sigmoid.
    Siglip,
}

impl Family {
    /// The family's name as `cliprt info` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Clip => "clip",
            Family::Siglip => "siglip",
        }
    }

    /// Whether label probabilities are a per-pair sigmoid (SigLIP) rather than a softmax over the labels (CLIP).
    pub fn sigmoid_probabilities(self) -> bool {
        self == Family::Siglip
    }
}

/// The text tower: token + position embeddings, an encoder (causal for CLIP), final LayerNorm, pooling (CLIP: the
/// end-of-text token; SigLIP: the last position).
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub encoder: EncoderConfig,
    pub vocab_size: usize,
    /// Context length: the number of position embeddings (77 for OpenAI, 64 for SigLIP).
    pub max_position_embeddings: usize,
    /// End-of-text id; 2 in legacy OpenAI configs, where HF pools at argmax(ids) instead.
    pub eos_token_id: u32,
    /// The id a non-causal tower's batch is padded with to the context length (SigLIP's processor pads with it;
    /// `Clip::load` takes it from the tokenizer, as the processor does).
    pub pad_token_id: u32,
    /// Whether the processor pads on the left (transformers' GemmaTokenizer, SigLIP2's) rather than the right.
    pub pad_left: bool,
}

/// The image tower: patch embedding, class token (CLIP), pre-LN (CLIP), encoder, then post-LN and pooling.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub encoder: EncoderConfig,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    /// Whether a class token leads the sequence (CLIP); SigLIP has none.
    pub class_token: bool,
}

impl VisionConfig {
    /// Patches per side of the (square) input image.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens in the vision sequence: one per patch, plus the class token where there is one.
    pub fn seq_len(&self) -> usize {
        self.grid() * self.grid() + usize::from(self.class_token)
    }

    /// Input features of one patch (channels × patch × patch).
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }
}

/// A whole CLIP-family model: its family, both towers and the shared embedding width.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub family: Family,
    pub text: TextConfig,
    pub vision: VisionConfig,
    /// The embedding width both towers map to (SigLIP: the vision width, which the text head maps to).
    pub projection_dim: usize,
}

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
    fn from_json_str(text: &str) -> std::result::Result<Self, ConfigError> {
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
        let text = TextConfig {
            encoder: encoder(t, "text_config", None)?,
            vocab_size: opt_usize(t, "text_config", "vocab_size", 49408)?,
            max_position_embeddings: opt_usize(t, "text_config", "max_position_embeddings", 77)?,
            eos_token_id: opt_u32(t, "text_config", "eos_token_id", 49407)?,
            // transformers' CLIPTextConfig default; the causal tower never reads padding.
            pad_token_id: opt_u32(t, "text_config", "pad_token_id", 1)?,
            pad_left: false,
        };
        let vision = VisionConfig {
            encoder: encoder(v, "vision_config", None)?,
            image_size: req_usize(v, "vision_config", "image_size")?,
            patch_size: req_usize(v, "vision_config", "patch_size")?,
            num_channels: opt_usize(v, "vision_config", "num_channels", 3)?,
            class_token: true,
        };
        Ok(ClipConfig {
            family: Family::Clip,
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
        let text = TextConfig {
            encoder: encoder(t, "text_config", Some(&defaults))?,
            vocab_size: opt_usize(t, "text_config", "vocab_size", 32000)?,
            max_position_embeddings: opt_usize(t, "text_config", "max_position_embeddings", 64)?,
            eos_token_id: opt_u32(t, "text_config", "eos_token_id", 49407)?,
            pad_token_id: opt_u32(t, "text_config", "pad_token_id", 1)?,
            pad_left: false,
        };
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
            projection_dim: projection,
            text,
            vision,
        })
    }

    /// Checks the relations between sizes that the model code relies on, and the architecture limits every family
    /// shares (src/limits.rs): every size computed from a valid config fits far inside usize.
    pub fn validate(&self) -> std::result::Result<(), String> {
        use crate::limits::model::*;
        let (t, v) = (&self.text, &self.vision);
        for (what, value, limit) in [
            ("text_config.hidden_size", t.encoder.hidden_size, MAX_WIDTH),
            (
                "vision_config.hidden_size",
                v.encoder.hidden_size,
                MAX_WIDTH,
            ),
            ("projection_dim", self.projection_dim, MAX_WIDTH),
            (
                "text_config.intermediate_size",
                t.encoder.intermediate_size,
                MAX_INTERMEDIATE,
            ),
            (
                "vision_config.intermediate_size",
                v.encoder.intermediate_size,
                MAX_INTERMEDIATE,
            ),
            (
                "text_config.num_hidden_layers",
                t.encoder.num_layers,
                MAX_LAYERS,
            ),
            (
                "vision_config.num_hidden_layers",
                v.encoder.num_layers,
                MAX_LAYERS,
            ),
            ("text_config.vocab_size", t.vocab_size, MAX_VOCAB),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
                MAX_CONTEXT,
            ),
            ("vision_config.image_size", v.image_size, MAX_IMAGE_SIDE),
            ("vision_config.num_channels", v.num_channels, 4),
        ] {
            if value > limit {
                return Err(format!("{what} is {value}, over the limit of {limit}"));
            }
        }
        for (name, e) in [
            ("text_config", &self.text.encoder),
            ("vision_config", &self.vision.encoder),
        ] {
            if e.hidden_size == 0 || e.num_heads == 0 || e.hidden_size % e.num_heads != 0 {
                return Err(format!(
                    "{name}: hidden_size {} is not a positive multiple of num_attention_heads {}",
                    e.hidden_size, e.num_heads
                ));
            }
            if e.intermediate_size == 0 || e.num_layers == 0 {
                return Err(format!(
                    "{name}: intermediate_size and num_hidden_layers must be positive"
                ));
            }
            if !(e.layer_norm_eps.is_finite() && e.layer_norm_eps > 0.0) {
                return Err(format!("{name}: layer_norm_eps must be positive"));
            }
        }
        if v.patch_size == 0 || v.image_size < v.patch_size || v.num_channels == 0 {
            return Err(format!(
                "vision_config: image_size {} and patch_size {} do not give at least one patch",
                v.image_size, v.patch_size
            ));
        }
        if v.seq_len() > MAX_VISION_TOKENS {
            return Err(format!(
                "vision_config: {} tokens per image, over the limit of {MAX_VISION_TOKENS}",
                v.seq_len()
            ));
        }
        if self.family == Family::Siglip && self.text.pad_token_id as usize >= self.text.vocab_size
        {
            return Err(format!(
                "text_config.pad_token_id {} is outside the vocabulary of {} (SigLIP pads every text with it)",
                self.text.pad_token_id, self.text.vocab_size
            ));
        }
        if self.text.vocab_size == 0
            || self.text.max_position_embeddings < 2
            || self.projection_dim == 0
        {
            return Err(
                "vocab_size, projection_dim must be positive and max_position_embeddings ≥ 2"
                    .into(),
            );
        }
        Ok(())
    }

    /// Number of parameters the checkpoint holds for this architecture (the logit scale included).
    pub fn parameter_count(&self) -> usize {
        fn encoder_params(e: &EncoderConfig) -> usize {
            let (d, i) = (e.hidden_size, e.intermediate_size);
            let layer = 4 * (d * d + d) + (d * i + i) + (i * d + d) + 4 * d;
            e.num_layers * layer
        }
        let (t, v) = (&self.text, &self.vision);
        let (td, vd, p) = (
            t.encoder.hidden_size,
            v.encoder.hidden_size,
            self.projection_dim,
        );
        let text = t.vocab_size * td
            + t.max_position_embeddings * td
            + encoder_params(&t.encoder)
            + 2 * td;
        let vision = vd * v.patch_dim() + v.seq_len() * vd + encoder_params(&v.encoder) + 2 * vd;
        match self.family {
            // Class token, pre-LN, projections without bias, logit scale.
            Family::Clip => text + vision + vd + 2 * vd + p * (td + vd) + 1,
            Family::Siglip => {
                let i = v.encoder.intermediate_size;
                // Patch bias; the head's probe, attention (in and out projections), LayerNorm and MLP.
                let head = vd
                    + (3 * vd * vd + 3 * vd)
                    + (vd * vd + vd)
                    + 2 * vd
                    + (vd * i + i)
                    + (i * vd + vd);
                // Text head with bias; logit scale and bias.
                text + vision + vd + head + (p * td + p) + 2
            }
        }
    }
}

enum ConfigError {
    Invalid(String),
    Unsupported(String),
}

/// A family's defaults for the encoder fields (SigLIP's configuration classes default every one).
struct EncoderDefaults {
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    num_heads: usize,
    layer_norm_eps: f64,
    activation: &'static str,
}

/// A tower's encoder fields; with `defaults`, absent fields take them, else sizes are required (CLIP).
fn encoder(
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
fn square(
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

fn opt_u32(
    m: &Map<String, Value>,
    ctx: &str,
    key: &str,
    default: u32,
) -> std::result::Result<u32, ConfigError> {
    u32::try_from(opt_usize(m, ctx, key, default as usize)?)
        .map_err(|_| ConfigError::Invalid(format!("{} is over 2^32 − 1", dotted(ctx, key))))
}

fn req_usize(
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

fn opt_usize(
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

fn as_usize(v: &Value, ctx: &str, key: &str) -> std::result::Result<usize, ConfigError> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "field `{}` is not a non-negative integer: {v}",
                dotted(ctx, key)
            ))
        })
}

fn dotted(ctx: &str, key: &str) -> String {
    if ctx.is_empty() {
        key.to_string()
    } else {
        format!("{ctx}.{key}")
    }
}

/// Built-in architectures at the real shapes of public checkpoints, for synthetic (random-weight) models.
pub mod presets {
    use super::*;

    /// An encoder as (width, layers, heads, MLP width).
    type Tower = (usize, usize, usize, usize);

    fn enc(t: Tower, eps: f32, act: Activation) -> EncoderConfig {
        EncoderConfig {
            hidden_size: t.0,
            num_layers: t.1,
            num_heads: t.2,
            intermediate_size: t.3,
            layer_norm_eps: eps,
            activation: act,
        }
    }

    /// A CLIP at real shapes: OpenAI's vocabulary and context, eps 1e-5.
    fn clip(
        text: Tower,
        vision: Tower,
        image: usize,
        patch: usize,
        proj: usize,
        act: Activation,
    ) -> ClipConfig {
        ClipConfig {
            family: Family::Clip,
            text: TextConfig {
                encoder: enc(text, 1e-5, act),
                vocab_size: 49408,
                max_position_embeddings: 77,
                eos_token_id: 49407,
                pad_token_id: 1,
                pad_left: false,
            },
            vision: VisionConfig {
                encoder: enc(vision, 1e-5, act),
                image_size: image,
                patch_size: patch,
                num_channels: 3,
                class_token: true,
            },
            projection_dim: proj,
        }
    }

    /// A SigLIP at real shapes: both towers alike, 32000-token vocabulary, context 64, eps 1e-6, tanh GELU.
    fn siglip(tower: Tower, image: usize, patch: usize) -> ClipConfig {
        let act = Activation::GeluTanh;
        ClipConfig {
            family: Family::Siglip,
            text: TextConfig {
                encoder: enc(tower, 1e-6, act),
                vocab_size: 32000,
                max_position_embeddings: 64,
                eos_token_id: 1,
                pad_token_id: 1,
                pad_left: false,
            },
            vision: VisionConfig {
                encoder: enc(tower, 1e-6, act),
                image_size: image,
                patch_size: patch,
                num_channels: 3,
                class_token: false,
            },
            projection_dim: tower.0,
        }
    }

    /// The preset names, in the order `by_name` accepts them.
    pub const NAMES: &[&str] = &[
        "vit-b-32",
        "vit-b-16",
        "vit-l-14",
        "vit-l-14-336",
        "vit-h-14",
        "vit-bigg-14",
        "siglip-b-16",
        "siglip-so400m-14-384",
    ];

    /// Looks a preset up by name: OpenAI's ViT-B/32, B/16, L/14 and L/14@336 (quick_gelu); OpenCLIP's ViT-H/14
    /// (head dim 80) and ViT-bigG/14 (head dim 104, MLP 8192) (gelu); SigLIP B/16 at 224 and So400m/14 at 384
    /// (head dim 72, MLP 4304).
    pub fn by_name(name: &str) -> Option<ClipConfig> {
        use Activation::{Gelu, QuickGelu};
        Some(match name {
            "vit-b-32" => clip(
                (512, 12, 8, 2048),
                (768, 12, 12, 3072),
                224,
                32,
                512,
                QuickGelu,
            ),
            "vit-b-16" => clip(
                (512, 12, 8, 2048),
                (768, 12, 12, 3072),
                224,
                16,
                512,
                QuickGelu,
            ),
            "vit-l-14" => clip(
                (768, 12, 12, 3072),
                (1024, 24, 16, 4096),
                224,
                14,
                768,
                QuickGelu,
            ),
            "vit-l-14-336" => clip(
                (768, 12, 12, 3072),
                (1024, 24, 16, 4096),
                336,
                14,
                768,
                QuickGelu,
            ),
            "vit-h-14" => clip(
                (1024, 24, 16, 4096),
                (1280, 32, 16, 5120),
                224,
                14,
                1024,
                Gelu,
            ),
            "vit-bigg-14" => clip(
                (1280, 32, 20, 5120),
                (1664, 48, 16, 8192),
                224,
                14,
                1280,
                Gelu,
            ),
            "siglip-b-16" => siglip((768, 12, 12, 3072), 224, 16),
            "siglip-so400m-14-384" => siglip((1152, 27, 16, 4304), 384, 14),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_count_parameters() {
        for name in presets::NAMES {
            let c = presets::by_name(name).unwrap();
            c.validate().unwrap();
        }
        // openai/clip-vit-base-patch32 has 151,277,313 parameters; SigLIP B/16 203,155,970 and So400m/14-384
        // 877,960,498 (`sum(p.numel() for p in SiglipModel(config).parameters())` in transformers 5.24).
        assert_eq!(
            presets::by_name("vit-b-32").unwrap().parameter_count(),
            151_277_313
        );
        assert_eq!(
            presets::by_name("siglip-b-16").unwrap().parameter_count(),
            203_155_970
        );
        assert_eq!(
            presets::by_name("siglip-so400m-14-384")
                .unwrap()
                .parameter_count(),
            877_960_498
        );
    }

    #[test]
    fn legacy_dict_form_and_defaults() {
        let json = r#"{"model_type":"clip","text_config":null,
            "text_config_dict":{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":2,"eos_token_id":2},
            "vision_config_dict":{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"image_size":32,"patch_size":8,"hidden_act":"gelu"},
            "projection_dim":16}"#;
        let c = ClipConfig::from_json_str(json).ok().unwrap();
        assert_eq!(c.text.eos_token_id, 2);
        assert_eq!(c.text.encoder.activation, Activation::QuickGelu);
        assert_eq!(c.vision.encoder.activation, Activation::Gelu);
        assert_eq!(c.vision.seq_len(), 17);
        assert_eq!(c.text.max_position_embeddings, 77);
    }

    #[test]
    fn every_activation_round_trips_through_its_hf_name() {
        for act in Activation::ALL {
            assert_eq!(Activation::parse(act.name()), Some(act));
        }
        assert_eq!(Activation::parse("gelu_new"), Some(Activation::GeluTanh));
        assert_eq!(Activation::parse("relu"), None);
    }
}
