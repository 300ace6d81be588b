//! Built-in architectures at the real shapes of public checkpoints, for synthetic (random-weight) models.

use super::{Activation, ClipConfig, EncoderConfig, Family, Format, TextConfig, VisionConfig};

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
        format: Format::Hf,
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
        format: Format::Hf,
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
