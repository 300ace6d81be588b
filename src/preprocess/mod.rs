//! Image → pixel tensor, faithful to HF's `CLIPImageProcessor` with its PIL backend (transformers 5.x, Pillow 13):
//! decode, convert to RGB the way PIL does, resize the shortest side with PIL's separable convolution, center crop
//! with HF's floor offsets, rescale by 1/255 and normalize with the checkpoint's mean/std.
//!
//! EXIF orientation is NOT applied, matching HF (neither PIL.Image.open nor the processor rotates).

use std::path::Path;

use fast_image_resize::{images::Image as FirImage, PixelType, ResizeAlg, ResizeOptions, Resizer};
use serde_json::Value;

use crate::decode::{self, DecodeError, MemoryBudget};
pub use crate::decode::{to_rgb_like_pil, AlphaMode};
use crate::error::{Error, Result};
use crate::limits::{self, model::MAX_IMAGE_SIDE, MAX_RESIZED_PIXELS};
pub use crate::resample::{Resample, RgbImage};
use own_mode::{resize_cmyk, resize_grey16, resize_premultiplied};

mod own_mode;

/// OpenAI's normalization constants (per RGB channel), written as published (f32 rounds them).
#[allow(clippy::excessive_precision)]
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

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
    /// Where a center crop starts when the margin is odd.
    pub crop_rounding: CropRounding,
    /// Resize a file in its own mode, as PIL does when it resizes before converting to RGB (open_clip's transform;
    /// the modes in [`decode::Source`]). HF converts first, so its filter applies to plain RGB for every file.
    pub resize_in_source_mode: bool,
}

/// How a center crop places an odd margin: HF's image processors floor `(len − out) / 2`; torchvision's
/// `CenterCrop` (open_clip's transform) rounds it half to even, Python's `round`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropRounding {
    Floor,
    HalfEven,
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
            crop_rounding: CropRounding::Floor,
            resize_in_source_mode: false,
        }
    }

    /// SigLIP's transform (transformers' SiglipImageProcessor defaults): bicubic straight to `image_size` square,
    /// no crop, mean and std 0.5.
    pub fn siglip(image_size: usize) -> Self {
        PreprocessConfig {
            resize: Some(ResizeTarget::Exact {
                height: image_size,
                width: image_size,
            }),
            crop: None,
            mean_std: Some(([0.5; 3], [0.5; 3])),
            ..PreprocessConfig::openai(image_size)
        }
    }

    /// The image processor's defaults for a model family at `image_size`: what a missing
    /// `preprocessor_config.json`, or a field it lacks, means.
    pub fn for_family(family: crate::config::Family, image_size: usize) -> Self {
        match family {
            crate::config::Family::Clip => PreprocessConfig::openai(image_size),
            crate::config::Family::Siglip => PreprocessConfig::siglip(image_size),
        }
    }

    /// open_clip's inference transform from `preprocess_cfg` of `open_clip_config.json` (open_clip's defaults where
    /// absent: bicubic, OpenAI mean/std, shortest side): `shortest` resizes the short side to `image_size` and
    /// center-crops with torchvision's rounding, `squash` resizes straight to `image_size` square. open_clip
    /// converts to RGB after resizing (PIL's convert, which drops alpha), so the resize runs in the file's own mode
    /// (`resize_in_source_mode`). `longest` (resize-and-pad) is refused.
    pub fn from_open_clip(path: &Path, image_size: usize) -> Result<Self> {
        let text = crate::files::read_json_text(path)?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        let empty = serde_json::Map::new();
        let m = match json.get("preprocess_cfg") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Err(Error::config(path, "`preprocess_cfg` is not an object")),
        };
        let bad = |msg: String| Error::config(path, format!("preprocess_cfg: {msg}"));
        let mut cfg = PreprocessConfig {
            alpha: AlphaMode::Drop,
            crop_rounding: CropRounding::HalfEven,
            resize_in_source_mode: true,
            ..PreprocessConfig::openai(image_size)
        };
        if let Some(size) = m.get("size").filter(|v| !v.is_null()) {
            let side = match size {
                Value::Array(p) if p.len() == 2 && p[0] == p[1] => p[0].as_u64(),
                other => other.as_u64(),
            };
            if side != Some(image_size as u64) {
                return Err(bad(format!(
                    "size {size} differs from the model's image size {image_size}"
                )));
            }
        }
        match m.get("interpolation").and_then(Value::as_str) {
            None | Some("bicubic") => {}
            Some("bilinear") => cfg.resample = Resample::Bilinear,
            Some(other) => {
                return Err(bad(format!(
                    "interpolation {other:?} (bicubic or bilinear)"
                )))
            }
        }
        match m.get("resize_mode").and_then(Value::as_str) {
            None | Some("shortest") => {}
            Some("squash") => {
                cfg.resize = Some(ResizeTarget::Exact {
                    height: image_size,
                    width: image_size,
                });
                cfg.crop = None;
            }
            Some(other) => {
                return Err(Error::UnsupportedModel(format!(
                    "open_clip preprocess_cfg.resize_mode {other:?} (cliprt runs \"shortest\" and \"squash\")"
                )))
            }
        }
        let triple = |key: &str, default| channel_triple(m, key, default, false).map_err(bad);
        cfg.mean_std = Some((triple("mean", OPENAI_MEAN)?, triple("std", OPENAI_STD)?));
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Reads `preprocessor_config.json`; fields it lacks take the OpenAI defaults at `image_size`.
    pub fn from_file(path: &Path, image_size: usize) -> Result<Self> {
        Self::from_file_over(path, PreprocessConfig::openai(image_size))
    }

    /// Reads `preprocessor_config.json`; fields it lacks keep their value in `defaults` (the family's image
    /// processor defaults, [`PreprocessConfig::for_family`]).
    pub fn from_file_over(path: &Path, defaults: PreprocessConfig) -> Result<Self> {
        let text = crate::files::read_json_text(path)?;
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
                .filter(|&n| n > 0 && n <= MAX_IMAGE_SIDE as u64)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    bad(format!(
                        "`{what}` is not an integer in 1..={MAX_IMAGE_SIDE}: {v}"
                    ))
                })
        };
        let mut cfg = defaults;
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
        // Absent, `do_center_crop` keeps the family's default (CLIP crops; SigLIP's processor has no crop).
        let crop_flag = match m.get("do_center_crop") {
            None | Some(Value::Null) => cfg.crop.is_some(),
            Some(_) => flag("do_center_crop")?,
        };
        cfg.crop = if !crop_flag {
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
            let triple = |key: &str, default| channel_triple(m, key, default, true).map_err(bad);
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
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Checks that every pixel value 0–255 maps to a finite f32 (a huge `rescale_factor` or a tiny `image_std`
    /// would overflow to infinity and give NaN embeddings).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let scale = self.rescale_factor.unwrap_or(1.0);
        let (mean, std) = self.mean_std.unwrap_or(([0.0; 3], [1.0; 3]));
        for c in 0..3 {
            for v in [0.0f32, 255.0] {
                let x = (v * scale - mean[c]) / std[c];
                if !x.is_finite() {
                    return Err(format!(
                        "rescale_factor {scale}, image_mean {} and image_std {} map pixel value {v} to {x}",
                        mean[c], std[c]
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads, decodes and preprocesses an image file into a `[3, H, W]` tensor, returned with `(H, W)`. The memory
    /// of the whole step (decode, RGB, resize) is reserved from the shared decode budget before decoding starts.
    pub fn apply_file(&self, path: &Path) -> Result<(Vec<f32>, (usize, usize))> {
        let bytes = crate::files::read_limited(path, limits::MAX_IMAGE_FILE_BYTES, "image")?;
        self.apply_bytes(&bytes, path)
    }

    /// [`PreprocessConfig::apply_file`] for an encoded image in memory (`label` names it in errors).
    pub fn apply_bytes(&self, bytes: &[u8], label: &Path) -> Result<(Vec<f32>, (usize, usize))> {
        with_decoded_bytes(
            bytes,
            label,
            self.alpha,
            |w, h| self.working_bytes(w, h),
            |rgb, source| {
                let pixels = self.apply_source(&rgb, &source)?;
                Ok((pixels, self.output_size(rgb.width, rgb.height)))
            },
        )
    }

    /// Bytes the resize and the output tensor take for an image of `width × height`; refuses a resize to more
    /// than [`MAX_RESIZED_PIXELS`].
    fn working_bytes(&self, width: usize, height: usize) -> Result<u64> {
        let (w, h) = (width as u64, height as u64);
        let (rw, rh) = match self.resize {
            Some(t) => {
                let (rw, rh) = resized_size(t, width, height);
                (rw as u64, rh as u64)
            }
            None => (w, h),
        };
        limits::check("pixels after the resize", rw * rh, MAX_RESIZED_PIXELS)?;
        let (oh, ow) = self.output_size(width, height);
        // Either pass order's intermediate, the resized image (3 bytes a pixel) and the horizontal pass's strips.
        let resize =
            3 * (rw * h + w * rh + rw * rh) + crate::resample::strip_bytes(width, rw as usize);
        // Resizing in the file's own mode runs two 3-band resizes (colour and alpha, or C·M·Y and K) on copies of
        // the source bands, and joins them (4 bytes a pixel); a 16-bit grey resize holds less.
        let source_mode = if self.resize_in_source_mode {
            resize + 6 * w * h + 4 * rw * rh
        } else {
            0
        };
        // The f32 output.
        Ok(resize + source_mode + 12 * (oh as u64) * (ow as u64))
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
        self.apply_filtered(img, self.resample)
    }

    /// The `[3, H, W]` tensor of an image decoded by the caller: as [`PreprocessConfig::apply_file`] would give for
    /// its file, except that a decoded image no longer says whether it had a palette (so it is resized with the
    /// configured filter even where open_clip's PIL would use nearest neighbour).
    pub fn apply_image(&self, img: image::DynamicImage) -> Result<Vec<f32>> {
        let source = decode::Source {
            alpha: decode::alpha_plane(&img),
            grey16: decode::grey16_plane(&img),
            ..decode::Source::default()
        };
        self.apply_source(&to_rgb_like_pil(img, self.alpha), &source)
    }

    /// [`PreprocessConfig::apply`] for a decoded file: with `resize_in_source_mode`, the file is resized in the
    /// mode PIL opened it in ([`decode::Source`]), then converted to RGB: a palette or 1-bit file with nearest
    /// neighbour, a file with alpha with premultiplied alpha (the alpha is then dropped, as `convert("RGB")`
    /// drops it), a CMYK file band by band before `cmyk2rgb`, a 16-bit grey file at 16 bits before its clip.
    fn apply_source(&self, img: &RgbImage, source: &decode::Source) -> Result<Vec<f32>> {
        if !self.resize_in_source_mode {
            return self.apply(img);
        }
        if source.nearest {
            return self.apply_filtered(img, Resample::Nearest);
        }
        let Some(target) = self.resize else {
            return self.apply(img);
        };
        let (w, h) = resized_size(target, img.width, img.height);
        // PIL returns a same-size resize as a plain copy, so converting before or after it is the same.
        if (w, h) == (img.width, img.height) {
            return self.apply(img);
        }
        if let Some(cmyk) = &source.cmyk {
            self.working_bytes(img.width, img.height)?;
            return self.crop_normalize(&resize_cmyk(img, cmyk, w, h, self.resample)?);
        }
        // Nearest neighbour picks the same pixels before or after the clip to 8 bits.
        if let Some(grey) = source
            .grey16
            .as_ref()
            .filter(|_| self.resample != Resample::Nearest)
        {
            self.working_bytes(img.width, img.height)?;
            return self.crop_normalize(&resize_grey16(img, grey, w, h, self.resample)?);
        }
        if let Some(alpha) = source
            .alpha
            .as_ref()
            .filter(|_| self.resample != Resample::Nearest)
        {
            self.working_bytes(img.width, img.height)?;
            return self.crop_normalize(&resize_premultiplied(img, alpha, w, h, self.resample)?);
        }
        self.apply(img)
    }

    /// [`PreprocessConfig::apply`] with the resize filter `filter`.
    fn apply_filtered(&self, img: &RgbImage, filter: Resample) -> Result<Vec<f32>> {
        self.working_bytes(img.width, img.height)?;
        match self.resize {
            Some(target) => {
                let (w, h) = resized_size(target, img.width, img.height);
                self.crop_normalize(&resize_like_pil(img, w, h, filter)?)
            }
            None => self.crop_normalize(img),
        }
    }

    /// Center crop (or pad), rescale and normalize a resized image into the `[3, H, W]` tensor.
    fn crop_normalize(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let (out_h, out_w) = self.crop.unwrap_or((img.height, img.width));
        let rows = crop_window(img.height, out_h, self.crop_rounding);
        let cols = crop_window(img.width, out_w, self.crop_rounding);
        let scale = self.rescale_factor.unwrap_or(1.0);
        let (mean, std) = self.mean_std.unwrap_or(([0.0; 3], [1.0; 3]));
        // Every value a channel can take, computed once with the per-value formula (so the same f32 operations
        // give the same bits); HF pads a crop larger than the image with zeros before rescaling and normalizing.
        let value = |c: usize, v: u8| (f32::from(v) * scale - mean[c]) / std[c];
        let table: [[f32; 256]; 3] =
            std::array::from_fn(|c| std::array::from_fn(|v| value(c, v as u8)));
        let pad: [f32; 3] = std::array::from_fn(|c| value(c, 0));
        let src_cols: Vec<Option<usize>> = (0..out_w).map(cols).collect();
        let mut out = vec![0.0f32; 3 * out_h * out_w];
        for (c, plane) in out.chunks_exact_mut(out_h * out_w).enumerate() {
            for (y, row) in plane.chunks_exact_mut(out_w).enumerate() {
                let line = rows(y).map(|sy| &img.data[sy * img.width * 3..][..img.width * 3]);
                for (o, sx) in row.iter_mut().zip(&src_cols) {
                    *o = line
                        .zip(*sx)
                        .map_or(pad[c], |(l, sx)| table[c][usize::from(l[sx * 3 + c])]);
                }
            }
        }
        Ok(out)
    }
}

/// A per-channel value (`image_mean`, `image_std`, open_clip's `mean`, `std`): three numbers, or one number for all
/// three where `scalar` (HF's image processors accept it), or `default` when absent.
fn channel_triple(
    m: &serde_json::Map<String, Value>,
    key: &str,
    default: [f32; 3],
    scalar: bool,
) -> std::result::Result<[f32; 3], String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) if scalar => Ok([n.as_f64().unwrap_or(f64::NAN) as f32; 3]),
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, v) in out.iter_mut().zip(a) {
                *o = v
                    .as_f64()
                    .ok_or_else(|| format!("`{key}` has a non-number: {v}"))?
                    as f32;
            }
            Ok(out)
        }
        Some(v) => Err(format!("`{key}` is not a list of 3 numbers: {v}")),
    }
}

/// The typed error of a failed decode of `path`.
fn decode_error(path: &Path, e: DecodeError) -> Error {
    match e {
        DecodeError::TooLarge(width, height) => Error::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: "178956970 pixels",
        },
        DecodeError::OverBudget(need, budget) => Error::Limit {
            what: format!("{}: memory to decode and resize this image", path.display()),
            value: format!("{need} bytes"),
            limit: format!("{budget} bytes (the decode budget)"),
        },
        DecodeError::Invalid(msg) => Error::Image {
            path: path.to_path_buf(),
            msg,
        },
    }
}

/// Reads and decodes an image file (PNG, JPEG, WebP, BMP, GIF first frame) into RGB as HF + PIL would, its decode
/// memory reserved from the shared budget meanwhile.
pub fn load_rgb(path: &Path, alpha: AlphaMode) -> Result<RgbImage> {
    let bytes = crate::files::read_limited(path, limits::MAX_IMAGE_FILE_BYTES, "image")?;
    with_decoded_bytes(&bytes, path, alpha, |_, _| Ok(0), |rgb, _| Ok(rgb))
}

/// Decodes an encoded image, then runs `then` on the RGB image; `label` names it in errors (a path, a tar member).
/// The decode's memory plus `extra(width, height)` more bytes (what `then` will take) stay reserved from the shared
/// budget until `then` returns.
fn with_decoded_bytes<T>(
    bytes: &[u8],
    label: &Path,
    alpha: AlphaMode,
    extra: impl FnOnce(usize, usize) -> Result<u64>,
    then: impl FnOnce(RgbImage, decode::Source) -> Result<T>,
) -> Result<T> {
    limits::check(
        "encoded image bytes",
        bytes.len() as u64,
        limits::MAX_IMAGE_FILE_BYTES,
    )?;
    let fail = |e| decode_error(label, e);
    let head = decode::header(bytes).map_err(fail)?;
    let extra = extra(head.width as usize, head.height as usize)?;
    let _held = MemoryBudget::global()
        .reserve(head.decode_bytes + extra)
        .map_err(fail)?;
    let (rgb, source) = decode::decode_with_source(bytes, &head, alpha).map_err(fail)?;
    then(rgb, source)
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
            // int(n · long / short), computed exactly in integers (Python truncates the float quotient). n is at
            // most MAX_IMAGE_SIDE and long at most 2^32 (image sides are u32): no overflow in 64 bits.
            let new_long = (n as u64 * long as u64 / short.max(1) as u64) as usize;
            if width <= height {
                (n, new_long)
            } else {
                (new_long, n)
            }
        }
    }
}

/// Maps an output coordinate of a center crop of `out` from an axis of length `len` to the source coordinate, or
/// `None` where the crop pads. HF: offset = (len − out) // 2 (floor); when the crop is larger, the image is first
/// centered in a zero canvas with ceil((out − len) / 2) before. torchvision: offset = round((len − out) / 2) half to
/// even; a larger crop pads (out − len) // 2 before.
fn crop_window(len: usize, out: usize, rounding: CropRounding) -> impl Fn(usize) -> Option<usize> {
    let (len_i, out_i) = (len as i64, out as i64);
    let offset = match (out_i <= len_i, rounding) {
        (true, CropRounding::Floor) => (len_i - out_i) / 2,
        (true, CropRounding::HalfEven) => {
            let (half, odd) = ((len_i - out_i) / 2, (len_i - out_i) % 2 == 1);
            // x.5 rounds to the even neighbour: half if half is even, else half + 1.
            if odd && half % 2 == 1 {
                half + 1
            } else {
                half
            }
        }
        // Canvas of length `out` with the image at ceil((out − len) / 2); HF's crop of it then starts at 0.
        (false, CropRounding::Floor) => -((out_i - len_i + 1) / 2),
        (false, CropRounding::HalfEven) => -((out_i - len_i) / 2),
    };
    move |i| {
        let src = i as i64 + offset;
        (0..len_i).contains(&src).then_some(src as usize)
    }
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
        let f = crop_window(7, 4, CropRounding::Floor); // floor(3/2) = 1
        assert_eq!(
            (0..4).map(&f).collect::<Vec<_>>(),
            vec![Some(1), Some(2), Some(3), Some(4)]
        );
        let g = crop_window(2, 5, CropRounding::Floor); // padded: ceil(3/2) = 2 zeros before
        assert_eq!(
            (0..5).map(&g).collect::<Vec<_>>(),
            vec![None, None, Some(0), Some(1), None]
        );
    }

    #[test]
    fn torchvision_crop_rounds_half_to_even() {
        // Margins 1, 3, 5, 2 → offsets round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, 1.
        for (len, out, want) in [(5, 4, 0), (7, 4, 2), (9, 4, 2), (6, 4, 1)] {
            assert_eq!(
                crop_window(len, out, CropRounding::HalfEven)(0),
                Some(want),
                "{len}→{out}"
            );
        }
        // A larger crop pads floor((out − len) / 2) before.
        assert_eq!(crop_window(2, 5, CropRounding::HalfEven)(1), Some(0));
    }
}
