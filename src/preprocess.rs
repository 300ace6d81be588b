//! Image → pixel tensor, faithful to HF's `CLIPImageProcessor` with its PIL backend (transformers 5.x, Pillow 13):
//! decode, convert to RGB the way PIL does, resize the shortest side with PIL's separable convolution, center crop
//! with HF's floor offsets, rescale by 1/255 and normalize with the checkpoint's mean/std.
//!
//! EXIF orientation is NOT applied, matching HF (neither PIL.Image.open nor the processor rotates).

use std::io::Cursor;
use std::path::Path;

use fast_image_resize::{images::Image as FirImage, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageReader, Limits};
use serde_json::Value;

use crate::error::{Error, Result};
pub use crate::resample::{Resample, RgbImage};

/// Images with more pixels than this are refused before decoding. It is PIL's own decompression-bomb error
/// threshold (2 × `Image.MAX_IMAGE_PIXELS`), so cliprt accepts what HF + PIL accept.
pub const MAX_IMAGE_PIXELS: u64 = 2 * 89_478_485;
const MAX_IMAGE_PIXELS_TEXT: &str = "178956970 pixels";

/// OpenAI's normalization constants (per RGB channel), written as published (f32 rounds them).
#[allow(clippy::excessive_precision)]
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// What to do with transparency when converting to RGB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlphaMode {
    /// Composite onto white, as HF's `CLIPImageProcessor` does (default).
    #[default]
    CompositeWhite,
    /// Drop the alpha channel, as OpenAI's original `clip.load` transform does.
    Drop,
}

/// How the image is resized before cropping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Shortest side to `n`, the long side to `int(n · long / short)`.
    ShortestEdge(usize),
    /// Exactly `height × width` (aspect not kept).
    Exact { height: usize, width: usize },
}

/// The preprocessing of one checkpoint, from `preprocessor_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// `None` when `do_resize` is false.
    pub resize: Option<ResizeTarget>,
    /// `(height, width)`; `None` when `do_center_crop` is false.
    pub crop: Option<(usize, usize)>,
    pub resample: Resample,
    /// `None` when `do_rescale` is false.
    pub rescale_factor: Option<f32>,
    /// `None` when `do_normalize` is false.
    pub mean_std: Option<([f32; 3], [f32; 3])>,
    pub alpha: AlphaMode,
}

impl PreprocessConfig {
    /// OpenAI's transform at `image_size`: bicubic shortest side, center crop, OpenAI mean/std.
    pub fn openai(image_size: usize) -> Self {
        PreprocessConfig {
            resize: Some(ResizeTarget::ShortestEdge(image_size)),
            crop: Some((image_size, image_size)),
            resample: Resample::Bicubic,
            rescale_factor: Some(1.0 / 255.0),
            mean_std: Some((OPENAI_MEAN, OPENAI_STD)),
            alpha: AlphaMode::CompositeWhite,
        }
    }

    /// Reads `preprocessor_config.json`; fields it lacks take the OpenAI defaults at `image_size`.
    pub fn from_file(path: &Path, image_size: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        let m = json
            .as_object()
            .ok_or_else(|| Error::config(path, "top level is not a JSON object"))?;
        let bad = |msg: String| Error::config(path, msg);
        let flag = |key: &str| -> Result<bool> {
            match m.get(key) {
                None | Some(Value::Null) => Ok(true),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(bad(format!("`{key}` is not a boolean: {v}"))),
            }
        };
        let dim = |v: &Value, what: &str| -> Result<usize> {
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| bad(format!("`{what}` is not a positive integer: {v}")))
        };
        let mut cfg = PreprocessConfig::openai(image_size);
        cfg.resize = if !flag("do_resize")? {
            None
        } else {
            match m.get("size") {
                None | Some(Value::Null) => cfg.resize,
                Some(v @ Value::Number(_)) => Some(ResizeTarget::ShortestEdge(dim(v, "size")?)),
                Some(Value::Object(s)) => {
                    match (s.get("shortest_edge"), s.get("height"), s.get("width")) {
                        (Some(e), _, _) => {
                            Some(ResizeTarget::ShortestEdge(dim(e, "size.shortest_edge")?))
                        }
                        (None, Some(h), Some(w)) => Some(ResizeTarget::Exact {
                            height: dim(h, "size.height")?,
                            width: dim(w, "size.width")?,
                        }),
                        _ => {
                            return Err(bad(
                                "`size` needs `shortest_edge` or `height` and `width`".into()
                            ))
                        }
                    }
                }
                Some(v) => {
                    return Err(bad(format!(
                        "`size` is neither a number nor an object: {v}"
                    )))
                }
            }
        };
        cfg.crop = if !flag("do_center_crop")? {
            None
        } else {
            match m.get("crop_size") {
                None | Some(Value::Null) => cfg.crop,
                Some(v @ Value::Number(_)) => {
                    let n = dim(v, "crop_size")?;
                    Some((n, n))
                }
                Some(Value::Object(s)) => match (s.get("height"), s.get("width")) {
                    (Some(h), Some(w)) => {
                        Some((dim(h, "crop_size.height")?, dim(w, "crop_size.width")?))
                    }
                    _ => return Err(bad("`crop_size` needs `height` and `width`".into())),
                },
                Some(v) => {
                    return Err(bad(format!(
                        "`crop_size` is neither a number nor an object: {v}"
                    )))
                }
            }
        };
        if let Some(v) = m.get("resample").filter(|v| !v.is_null()) {
            cfg.resample = v
                .as_u64()
                .and_then(Resample::from_pil)
                .ok_or_else(|| bad(format!("`resample` is not a PIL filter code 0–5: {v}")))?;
        }
        cfg.rescale_factor = if !flag("do_rescale")? {
            None
        } else {
            match m.get("rescale_factor") {
                None | Some(Value::Null) => cfg.rescale_factor,
                Some(v) => Some(
                    v.as_f64()
                        .ok_or_else(|| bad(format!("`rescale_factor` is not a number: {v}")))?
                        as f32,
                ),
            }
        };
        if !flag("do_normalize")? {
            cfg.mean_std = None;
        } else {
            let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
                match m.get(key) {
                    None | Some(Value::Null) => Ok(default),
                    Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(f64::NAN) as f32; 3]),
                    Some(Value::Array(a)) if a.len() == 3 => {
                        let mut out = [0.0; 3];
                        for (o, v) in out.iter_mut().zip(a) {
                            *o = v
                                .as_f64()
                                .ok_or_else(|| bad(format!("`{key}` has a non-number: {v}")))?
                                as f32;
                        }
                        Ok(out)
                    }
                    Some(v) => Err(bad(format!("`{key}` is not a list of 3 numbers: {v}"))),
                }
            };
            let mean = triple("image_mean", OPENAI_MEAN)?;
            let std = triple("image_std", OPENAI_STD)?;
            if std.iter().any(|s| !s.is_finite() || *s == 0.0)
                || mean.iter().any(|m| !m.is_finite())
            {
                return Err(bad(
                    "`image_mean`/`image_std` must be finite and std non-zero".into(),
                ));
            }
            cfg.mean_std = Some((mean, std));
        }
        Ok(cfg)
    }

    /// The `(height, width)` of the tensor this config produces from an image of `width × height`.
    pub fn output_size(&self, width: usize, height: usize) -> (usize, usize) {
        let (w, h) = self
            .resize
            .map_or((width, height), |t| resized_size(t, width, height));
        self.crop.unwrap_or((h, w))
    }

    /// Turns an RGB image into a `[3, H, W]` f32 tensor (channel-major).
    pub fn apply(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let resized;
        let img = match self.resize {
            Some(target) => {
                let (w, h) = resized_size(target, img.width, img.height);
                resized = resize_like_pil(img, w, h, self.resample)?;
                &resized
            }
            None => img,
        };
        let (out_h, out_w) = self.crop.unwrap_or((img.height, img.width));
        let (rows, cols) = (
            crop_window(img.height, out_h),
            crop_window(img.width, out_w),
        );
        let scale = self.rescale_factor.unwrap_or(1.0);
        let (mean, std) = self.mean_std.unwrap_or(([0.0; 3], [1.0; 3]));
        let mut out = vec![0.0f32; 3 * out_h * out_w];
        for c in 0..3 {
            // HF pads a crop larger than the image with zeros before rescaling and normalizing.
            let value = |src: Option<u8>| (src.map_or(0.0, f32::from) * scale - mean[c]) / std[c];
            let plane = &mut out[c * out_h * out_w..(c + 1) * out_h * out_w];
            for (y, row) in plane.chunks_exact_mut(out_w).enumerate() {
                for (x, o) in row.iter_mut().enumerate() {
                    let src = match (rows(y), cols(x)) {
                        (Some(sy), Some(sx)) => Some(img.data[(sy * img.width + sx) * 3 + c]),
                        _ => None,
                    };
                    *o = value(src);
                }
            }
        }
        Ok(out)
    }
}

/// HF's resize rule: `(width, height)` after resizing an image of `width × height`.
fn resized_size(target: ResizeTarget, width: usize, height: usize) -> (usize, usize) {
    match target {
        ResizeTarget::Exact { height, width } => (width, height),
        ResizeTarget::ShortestEdge(n) => {
            let (short, long) = if width <= height {
                (width, height)
            } else {
                (height, width)
            };
            // int(n · long / short), computed exactly in integers (Python truncates the float quotient).
            let new_long = (n * long) / short;
            if width <= height {
                (n, new_long)
            } else {
                (new_long, n)
            }
        }
    }
}

/// Maps an output coordinate of a center crop of `out` from an axis of length `len` to the source coordinate, or
/// `None` where HF's crop pads. HF: offset = (len − out) // 2 (floor); when the crop is larger, the image is first
/// centered in a zero canvas with ceil((out − len) / 2) before.
fn crop_window(len: usize, out: usize) -> impl Fn(usize) -> Option<usize> {
    let (len_i, out_i) = (len as i64, out as i64);
    let offset = if out_i <= len_i {
        (len_i - out_i) / 2
    } else {
        // Canvas of length `out` with the image at ceil((out − len) / 2); HF's crop of it then starts at 0.
        -((out_i - len_i + 1) / 2)
    };
    move |i| {
        let src = i as i64 + offset;
        (0..len_i).contains(&src).then_some(src as usize)
    }
}

/// Reads and decodes an image file (PNG, JPEG, WebP, BMP, GIF first frame) into RGB as HF + PIL would.
pub fn load_rgb(path: &Path, alpha: AlphaMode) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes, alpha).map_err(|e| match e {
        DecodeError::TooLarge(width, height) => Error::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: MAX_IMAGE_PIXELS_TEXT,
        },
        DecodeError::Invalid(msg) => Error::Image {
            path: path.to_path_buf(),
            msg,
        },
    })
}

enum DecodeError {
    TooLarge(u32, u32),
    Invalid(String),
}

fn decode_rgb(bytes: &[u8], alpha: AlphaMode) -> std::result::Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Invalid("file is empty".into()));
    }
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DecodeError::Invalid(e.to_string()))
    };
    let probe = reader()?;
    if probe.format().is_none() {
        return Err(DecodeError::Invalid("not a recognized image format".into()));
    }
    // The header alone gives the size: refuse bombs before allocating anything for pixels.
    let (w, h) = probe
        .into_dimensions()
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if u64::from(w) * u64::from(h) > MAX_IMAGE_PIXELS {
        return Err(DecodeError::TooLarge(w, h));
    }
    if w == 0 || h == 0 {
        return Err(DecodeError::Invalid(
            "image has zero width or height".into(),
        ));
    }
    let mut decoder = reader()?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(4 << 30);
    decoder.limits(limits);
    let img = decoder
        .decode()
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    Ok(to_rgb_like_pil(img, alpha))
}

/// Converts a decoded image to 8-bit RGB the way PIL + HF's `convert_to_rgb` do:
/// - 8-bit grey is replicated; 16-bit grey ("I;16" in PIL) is CLIPPED to 255, not scaled (PIL's I;16→RGB rule);
/// - other 16-bit images keep the high byte (PIL reads them with the "…;16B" raw modes);
/// - with alpha: composited onto white with PIL's integer alpha_composite (or alpha dropped, OpenAI style).
pub fn to_rgb_like_pil(img: DynamicImage, alpha: AlphaMode) -> RgbImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut data = Vec::with_capacity(width * height * 3);
    let mut push_rgba = |r: u8, g: u8, b: u8, a: u8| {
        let px = match alpha {
            AlphaMode::CompositeWhite => composite_on_white([r, g, b], a),
            AlphaMode::Drop => [r, g, b],
        };
        data.extend_from_slice(&px);
    };
    match img {
        DynamicImage::ImageRgb8(b) => {
            return RgbImage {
                width,
                height,
                data: b.into_raw(),
            }
        }
        DynamicImage::ImageLuma8(b) => b
            .into_raw()
            .into_iter()
            .for_each(|v| push_rgba(v, v, v, 255)),
        DynamicImage::ImageLumaA8(b) => b
            .into_raw()
            .chunks_exact(2)
            .for_each(|p| push_rgba(p[0], p[0], p[0], p[1])),
        DynamicImage::ImageRgba8(b) => b
            .into_raw()
            .chunks_exact(4)
            .for_each(|p| push_rgba(p[0], p[1], p[2], p[3])),
        DynamicImage::ImageLuma16(b) => b.into_raw().into_iter().for_each(|v| {
            let v = v.min(255) as u8;
            push_rgba(v, v, v, 255)
        }),
        DynamicImage::ImageLumaA16(b) => b.into_raw().chunks_exact(2).for_each(|p| {
            let v = (p[0] >> 8) as u8;
            push_rgba(v, v, v, (p[1] >> 8) as u8)
        }),
        DynamicImage::ImageRgb16(b) => b
            .into_raw()
            .chunks_exact(3)
            .for_each(|p| push_rgba((p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8, 255)),
        DynamicImage::ImageRgba16(b) => b.into_raw().chunks_exact(4).for_each(|p| {
            push_rgba(
                (p[0] >> 8) as u8,
                (p[1] >> 8) as u8,
                (p[2] >> 8) as u8,
                (p[3] >> 8) as u8,
            )
        }),
        other => other
            .to_rgba8()
            .into_raw()
            .chunks_exact(4)
            .for_each(|p| push_rgba(p[0], p[1], p[2], p[3])),
    }
    RgbImage {
        width,
        height,
        data,
    }
}

/// PIL's `alpha_composite(white, src)` in its own integer arithmetic (7 fractional bits, rounded /255), so
/// semi-transparent pixels come out bit-identical to HF's conversion.
fn composite_on_white(rgb: [u8; 3], a: u8) -> [u8; 3] {
    const PRECISION_BITS: u32 = 7;
    if a == 0 {
        return [255; 3];
    }
    let sa = u32::from(a);
    let blend = 255 * (255 - sa);
    let outa255 = sa * 255 + blend;
    let coef1 = sa * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let div255 = |v: u32| ((v >> 8) + v) >> 8;
    rgb.map(|c| {
        let tmp = u32::from(c) * coef1 + 255 * coef2;
        (div255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
    })
}

/// Resizes like PIL's `Image.resize` (no reducing_gap). The convolution filters are reimplemented bit-exactly in
/// [`crate::resample`]; NEAREST goes through fast_image_resize, which uses PIL's pixel-centre rule.
pub fn resize_like_pil(
    img: &RgbImage,
    width: usize,
    height: usize,
    filter: Resample,
) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!(
            "cannot resize to {width}x{height}"
        )));
    }
    if filter != Resample::Nearest {
        return Ok(crate::resample::resize_convolution(
            img, width, height, filter,
        ));
    }
    let fir_err = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("resize failed: {e}"));
    let src = FirImage::from_vec_u8(
        img.width as u32,
        img.height as u32,
        img.data.clone(),
        PixelType::U8x3,
    )
    .map_err(|e| fir_err(&e))?;
    let mut dst = FirImage::new(width as u32, height as u32, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Nearest);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| fir_err(&e))?;
    Ok(RgbImage {
        width,
        height,
        data: dst.into_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_resize_rule() {
        let t = ResizeTarget::ShortestEdge(224);
        assert_eq!(resized_size(t, 640, 480), (298, 224));
        assert_eq!(resized_size(t, 333, 1000), (224, 672));
        assert_eq!(resized_size(t, 1, 50), (224, 11200));
    }

    #[test]
    fn crop_offsets_floor_and_pad() {
        let f = crop_window(7, 4); // floor(3/2) = 1
        assert_eq!(
            (0..4).map(&f).collect::<Vec<_>>(),
            vec![Some(1), Some(2), Some(3), Some(4)]
        );
        let g = crop_window(2, 5); // padded: ceil(3/2) = 2 zeros before
        assert_eq!(
            (0..5).map(&g).collect::<Vec<_>>(),
            vec![None, None, Some(0), Some(1), None]
        );
    }

    #[test]
    fn composite_matches_pil_endpoints() {
        assert_eq!(composite_on_white([10, 20, 30], 255), [10, 20, 30]);
        assert_eq!(composite_on_white([10, 20, 30], 0), [255, 255, 255]);
    }
}
