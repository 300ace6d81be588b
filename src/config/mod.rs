//! The architecture of a CLIP-family model, read from an HF `config.json` (CLIP in its legacy and modern forms,
//! SigLIP), plus presets for synthetic models.
//!
//! Fields that transformers defaults when absent take transformers' defaults for that family, so a file HF accepts
//! is read the way HF reads it: for CLIP the sizes, layer and head counts are required (HF writes them on every
//! `save_pretrained`), for SigLIP every field has its configuration class's default (the hub's base checkpoints
//! write almost none).

mod hf;
pub mod openclip;
pub mod presets;
#[cfg(test)]
mod tests;

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

/// How a checkpoint is laid out: which files, which tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// HF transformers: `config.json`, `model.safetensors` (or shards), HF key names.
    Hf,
    /// open_clip: `open_clip_config.json`, `open_clip_model.safetensors`, open_clip's key names.
    OpenClip(OpenClipLayout),
}

/// What an open_clip checkpoint's key names depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenClipLayout {
    /// `custom_text`: the text tower's tensors live under `text.` (CustomTextCLIP) rather than at the top level.
    pub custom_text: bool,
    /// `text_cfg.proj_bias`: the text projection is a Linear with bias (`text_projection.weight`/`.bias`) rather
    /// than a `[width, embed_dim]` matrix.
    pub text_proj_bias: bool,
    /// `ls_init_value` set: each block scales its attention and MLP outputs by learned `ls_1`/`ls_2` gammas.
    pub vision_layer_scale: bool,
    pub text_layer_scale: bool,
}

impl Format {
    /// The format's name as `cliprt info` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Hf => "hf-transformers (config.json, model.safetensors)",
            Format::OpenClip(_) => "open_clip (open_clip_config.json, open_clip_model.safetensors)",
        }
    }
}

/// A whole CLIP-family model: its family, both towers and the shared embedding width.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub family: Family,
    /// The checkpoint's layout (presets: HF).
    pub format: Format,
    pub text: TextConfig,
    pub vision: VisionConfig,
    /// The embedding width both towers map to (SigLIP: the vision width, which the text head maps to).
    pub projection_dim: usize,
}

impl ClipConfig {
    /// The config of the model folder `dir` and the file it came from: `config.json` (HF) where present, else
    /// `open_clip_config.json` (open_clip). HF files win where both are present: they are what transformers reads,
    /// and LAION's repositories ship the same weights in both formats.
    pub fn from_dir(dir: &std::path::Path) -> crate::error::Result<(Self, std::path::PathBuf)> {
        let hf = dir.join("config.json");
        let open_clip = dir.join("open_clip_config.json");
        // Present but not a regular file (a FIFO, a folder) is reported as such when it is read.
        if hf.exists() {
            Ok((ClipConfig::from_file(&hf)?, hf))
        } else if open_clip.exists() {
            Ok((ClipConfig::from_open_clip_file(&open_clip)?, open_clip))
        } else {
            Err(crate::error::Error::MissingFile {
                dir: dir.to_path_buf(),
                file: "config.json",
                hint: " (nor open_clip_config.json)",
            })
        }
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
