//! The CLIP architecture, read from an HF `config.json` (legacy and modern forms), plus presets for synthetic models.
//!
//! Fields that HF writes on every `save_pretrained` (sizes, layer and head counts) are required; fields that
//! transformers itself defaults when absent (eps, activation, vocab size, context length, token ids) take
//! transformers' defaults, so a file HF accepts is read the way HF reads it.

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

/// The text tower: token + position embeddings, a causal encoder, final LayerNorm, pooling at the end-of-text token.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub encoder: EncoderConfig,
    pub vocab_size: usize,
    /// Context length: the number of position embeddings (77 for OpenAI).
    pub max_position_embeddings: usize,
    /// End-of-text id; 2 in legacy OpenAI configs, where HF pools at argmax(ids) instead.
    pub eos_token_id: u32,
}

/// The image tower: patch embedding, class token, pre-LN, encoder, post-LN on the class token.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub encoder: EncoderConfig,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
}

impl VisionConfig {
    /// Patches per side of the (square) input image.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens in the vision sequence: one per patch plus the class token.
    pub fn seq_len(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// Input features of one patch (channels × patch × patch).
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }
}

/// A whole CLIP model: both towers and the shared embedding width.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
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

    /// Parses the text of an HF CLIP `config.json`.
    fn from_json_str(text: &str) -> std::result::Result<Self, ConfigError> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::Invalid(format!("not valid JSON: {e}")))?;
        let root = root
            .as_object()
            .ok_or_else(|| ConfigError::Invalid("top level is not a JSON object".into()))?;
        match root.get("model_type").and_then(Value::as_str) {
            Some("clip") => {}
            Some(other) => {
                return Err(ConfigError::Unsupported(format!(
                    "model_type \"{other}\" (cliprt runs \"clip\" checkpoints with both towers)"
                )))
            }
            None => return Err(ConfigError::Invalid("missing field `model_type`".into())),
        }
        // Legacy OpenAI files carry `text_config_dict`/`vision_config_dict`, sometimes next to a null `text_config`.
        let tower = |name: &str| -> std::result::Result<&Map<String, Value>, ConfigError> {
            [name.to_string(), format!("{name}_dict")]
                .iter()
                .find_map(|k| root.get(k).and_then(Value::as_object))
                .ok_or_else(|| ConfigError::Invalid(format!("missing field `{name}`")))
        };
        let t = tower("text_config")?;
        let v = tower("vision_config")?;
        let text = TextConfig {
            encoder: encoder(t, "text_config")?,
            vocab_size: opt_usize(t, "text_config", "vocab_size", 49408)?,
            max_position_embeddings: opt_usize(t, "text_config", "max_position_embeddings", 77)?,
            eos_token_id: u32::try_from(opt_usize(t, "text_config", "eos_token_id", 49407)?)
                .map_err(|_| {
                    ConfigError::Invalid("text_config.eos_token_id is over 2^32 − 1".into())
                })?,
        };
        let vision = VisionConfig {
            encoder: encoder(v, "vision_config")?,
            image_size: req_usize(v, "vision_config", "image_size")?,
            patch_size: req_usize(v, "vision_config", "patch_size")?,
            num_channels: opt_usize(v, "vision_config", "num_channels", 3)?,
        };
        let projection_dim = opt_usize(root, "", "projection_dim", 512)?;
        let config = ClipConfig {
            text,
            vision,
            projection_dim,
        };
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
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
        let td = t.encoder.hidden_size;
        let vd = v.encoder.hidden_size;
        let text = t.vocab_size * td
            + t.max_position_embeddings * td
            + encoder_params(&t.encoder)
            + 2 * td;
        let vision =
            vd * v.patch_dim() + vd + v.seq_len() * vd + 4 * vd + encoder_params(&v.encoder);
        text + vision + self.projection_dim * (td + vd) + 1
    }
}

enum ConfigError {
    Invalid(String),
    Unsupported(String),
}

fn encoder(m: &Map<String, Value>, ctx: &str) -> std::result::Result<EncoderConfig, ConfigError> {
    let act_name = match m.get("hidden_act") {
        None | Some(Value::Null) => "quick_gelu", // transformers' default for both CLIP towers
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(ConfigError::Invalid(format!(
                "{ctx}.hidden_act is not a string"
            )))
        }
    };
    let activation = Activation::parse(act_name).ok_or_else(|| {
        ConfigError::Unsupported(format!(
            "{ctx}.hidden_act \"{act_name}\" (cliprt supports quick_gelu and gelu)"
        ))
    })?;
    let eps = match m.get("layer_norm_eps") {
        None | Some(Value::Null) => 1e-5,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| ConfigError::Invalid(format!("{ctx}.layer_norm_eps is not a number")))?,
    };
    Ok(EncoderConfig {
        hidden_size: req_usize(m, ctx, "hidden_size")?,
        intermediate_size: req_usize(m, ctx, "intermediate_size")?,
        num_layers: req_usize(m, ctx, "num_hidden_layers")?,
        num_heads: req_usize(m, ctx, "num_attention_heads")?,
        layer_norm_eps: eps as f32,
        activation,
    })
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

    fn enc(hidden: usize, layers: usize, heads: usize, act: Activation) -> EncoderConfig {
        EncoderConfig {
            hidden_size: hidden,
            intermediate_size: 4 * hidden,
            num_layers: layers,
            num_heads: heads,
            layer_norm_eps: 1e-5,
            activation: act,
        }
    }

    /// A CLIP at real shapes: text and vision towers as (width, layers, heads), MLP 4× wide.
    fn clip(
        text: (usize, usize, usize),
        vision: (usize, usize, usize),
        image: usize,
        patch: usize,
        proj: usize,
        act: Activation,
    ) -> ClipConfig {
        ClipConfig {
            text: TextConfig {
                encoder: enc(text.0, text.1, text.2, act),
                vocab_size: 49408,
                max_position_embeddings: 77,
                eos_token_id: 49407,
            },
            vision: VisionConfig {
                encoder: enc(vision.0, vision.1, vision.2, act),
                image_size: image,
                patch_size: patch,
                num_channels: 3,
            },
            projection_dim: proj,
        }
    }

    /// The preset names, in the order `by_name` accepts them.
    pub const NAMES: &[&str] = &[
        "vit-b-32",
        "vit-b-16",
        "vit-l-14",
        "vit-l-14-336",
        "vit-h-14",
    ];

    /// Looks a preset up by name: OpenAI's ViT-B/32, B/16, L/14 and L/14@336 (quick_gelu), and LAION's ViT-H/14
    /// (gelu, head dim 80).
    pub fn by_name(name: &str) -> Option<ClipConfig> {
        use Activation::{Gelu, QuickGelu};
        Some(match name {
            "vit-b-32" => clip((512, 12, 8), (768, 12, 12), 224, 32, 512, QuickGelu),
            "vit-b-16" => clip((512, 12, 8), (768, 12, 12), 224, 16, 512, QuickGelu),
            "vit-l-14" => clip((768, 12, 12), (1024, 24, 16), 224, 14, 768, QuickGelu),
            "vit-l-14-336" => clip((768, 12, 12), (1024, 24, 16), 336, 14, 768, QuickGelu),
            "vit-h-14" => clip((1024, 24, 16), (1280, 32, 16), 224, 14, 1024, Gelu),
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
        // openai/clip-vit-base-patch32 has 151,277,313 parameters.
        assert_eq!(
            presets::by_name("vit-b-32").unwrap().parameter_count(),
            151_277_313
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
