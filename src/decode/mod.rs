//! Image bytes → 8-bit RGB, as PIL decodes and HF converts them, under resource limits (README, "Limits and
//! safety"):
//! - the size comes from the header and is checked before any pixel memory is taken;
//! - every decode in flight reserves its memory from one shared [`MemoryBudget`] (decoded image, RGB conversion,
//!   resize buffers); the decoder's own allocations, metadata such as a compressed ICC profile included, are capped
//!   at its share;
//! - files PIL refuses are refused: a JPEG whose data ends before its EOI marker, a WebP shorter than its RIFF
//!   header says, a GIF whose image data is cut short;
//! - a GIF's first frame is drawn as PIL draws it: on a canvas of the logical screen filled with the frame's
//!   transparent index (else index 0), through the frame's palette.

use std::io::Cursor;
use std::sync::{Condvar, Mutex};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::limits::{DECODE_MEMORY_BYTES, DECODE_METADATA_BYTES, MAX_IMAGE_PIXELS};
pub use crate::resample::RgbImage;
pub use source::{alpha_plane, grey16_plane, Source};
use source::{bmp_opens_as_palette_or_bilevel, png_opens_as_palette_or_bilevel};

mod source;

/// What to do with transparency when converting to RGB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlphaMode {
    /// Composite onto white, as HF's `CLIPImageProcessor` does (default).
    #[default]
    CompositeWhite,
    /// Drop the alpha channel, as OpenAI's original `clip.load` transform does.
    Drop,
}

/// Why bytes did not become an image.
#[derive(Debug)]
pub enum DecodeError {
    /// The header's size is over [`MAX_IMAGE_PIXELS`].
    TooLarge(u32, u32),
    /// Decoding this image alone needs more than the whole decode budget: `(bytes needed, budget)`.
    OverBudget(u64, u64),
    /// Not an image, or a corrupt or truncated one.
    Invalid(String),
}

/// Bytes that decodes in flight may hold together; a reservation waits until others have released enough.
pub struct MemoryBudget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Memory held by one decode; returned to the budget on drop.
pub struct Reservation<'a> {
    budget: &'a MemoryBudget,
    bytes: u64,
}

impl MemoryBudget {
    pub const fn new(total: u64) -> MemoryBudget {
        MemoryBudget {
            total,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// The budget every decode of this process shares.
    pub fn global() -> &'static MemoryBudget {
        static GLOBAL: MemoryBudget = MemoryBudget::new(DECODE_MEMORY_BYTES);
        &GLOBAL
    }

    /// Reserves `bytes`, waiting while other decodes hold too much; refused when `bytes` alone exceeds the budget.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, DecodeError> {
        if bytes > self.total {
            return Err(DecodeError::OverBudget(bytes, self.total));
        }
        // A poisoned lock only means another decode panicked; the count itself is still right.
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used + bytes > self.total {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += bytes;
        Ok(Reservation {
            budget: self,
            bytes,
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// An image's header: its size and the bytes its decode will hold.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Decoder output, its working copy, the RGB conversion and the metadata allowance.
    pub decode_bytes: u64,
}

/// Reads the header of `bytes`: format, size (checked against [`MAX_IMAGE_PIXELS`]) and decode memory.
pub fn header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let invalid = |e: &dyn std::fmt::Display| DecodeError::Invalid(e.to_string());
    if bytes.is_empty() {
        return Err(DecodeError::Invalid("file is empty".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid(&e))?;
    let Some(format) = reader.format() else {
        return Err(DecodeError::Invalid("not a recognized image format".into()));
    };
    // Files PIL refuses are refused before any decoder reads them; the header read itself may hold no more than
    // the metadata allowance (the png crate inflates an ICC profile while reading the header).
    check_complete(format, bytes)?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(DECODE_METADATA_BYTES);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| invalid(&e))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_IMAGE_PIXELS {
        return Err(DecodeError::TooLarge(width, height));
    }
    if pixels == 0 {
        return Err(DecodeError::Invalid(
            "image has zero width or height".into(),
        ));
    }
    let bpp = u64::from(decoder.color_type().bytes_per_pixel()).max(4);
    // The decoded image, as much again for a decoder's working planes, the RGB copy, and metadata; a JPEG's
    // libjpeg needs its own reckoning (a progressive file's whole coefficient buffer).
    let pixel_bytes = match format {
        ImageFormat::Jpeg => crate::jpeg::decode_bytes(width, height),
        _ => pixels * (2 * bpp + 3),
    };
    Ok(Header {
        width,
        height,
        decode_bytes: pixel_bytes + DECODE_METADATA_BYTES,
    })
}

/// Decodes `bytes` (PNG, JPEG, WebP, BMP, GIF first frame) into RGB as HF + PIL would. `head` is what [`header`]
/// read from these bytes (it also refused what PIL refuses); the caller holds a reservation of `head.decode_bytes`.
pub fn decode(bytes: &[u8], head: &Header, alpha: AlphaMode) -> Result<RgbImage, DecodeError> {
    decode_with_source(bytes, head, alpha).map(|(rgb, _)| rgb)
}

/// [`decode`], and what PIL would make of the file before converting it ([`Source`]).
pub fn decode_with_source(
    bytes: &[u8],
    head: &Header,
    alpha: AlphaMode,
) -> Result<(RgbImage, Source), DecodeError> {
    let invalid = |e: &dyn std::fmt::Display| DecodeError::Invalid(e.to_string());
    let format = image::guess_format(bytes).map_err(|e| invalid(&e))?;
    if format == ImageFormat::Gif {
        return gif_first_frame(bytes, head.decode_bytes, alpha);
    }
    if format == ImageFormat::Jpeg {
        let decoded =
            crate::jpeg::decode(bytes, head.width, head.height).map_err(DecodeError::Invalid)?;
        let source = Source {
            cmyk: decoded.cmyk,
            ..Source::default()
        };
        return Ok((decoded.rgb, source));
    }
    let nearest = match format {
        ImageFormat::Png => png_opens_as_palette_or_bilevel(bytes),
        ImageFormat::Bmp => bmp_opens_as_palette_or_bilevel(bytes),
        _ => false,
    };
    let completed = complete_like_pil(format, bytes);
    let bytes = completed.as_deref().unwrap_or(bytes);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(head.decode_bytes);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| invalid(&e))?;
    // A palette file stays mode "P" in PIL even with transparency: no premultiplied resize.
    let alpha_plane = if nearest { None } else { alpha_plane(&img) };
    let source = Source {
        nearest,
        alpha: alpha_plane,
        cmyk: None,
        grey16: grey16_plane(&img),
    };
    Ok((to_rgb_like_pil(img, alpha), source))
}

/// Refuses the truncations PIL refuses (checked on the bytes, before decoding).
fn check_complete(format: ImageFormat, bytes: &[u8]) -> Result<(), DecodeError> {
    let truncated = |what: &str| {
        Err(DecodeError::Invalid(format!(
            "image file is truncated ({what})"
        )))
    };
    match format {
        ImageFormat::Jpeg if !jpeg_reaches_eoi(bytes) => {
            truncated("no end-of-image marker after the last scan")
        }
        ImageFormat::Png => png_metadata_within_pil_limit(bytes),
        ImageFormat::WebP => {
            // libwebp refuses a file shorter than the RIFF size it declares.
            let riff = bytes
                .get(4..8)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            match riff {
                Some(n) if u64::from(n) + 8 <= bytes.len() as u64 => Ok(()),
                _ => truncated("shorter than its RIFF header says"),
            }
        }
        _ => Ok(()),
    }
}

/// PIL's limit on a PNG's compressed metadata (`PngImagePlugin.MAX_TEXT_CHUNK`, 1 MiB decompressed).
const PIL_MAX_TEXT_CHUNK: usize = 1 << 20;

/// PIL refuses a PNG whose ICC profile (iCCP) or compressed text (zTXt, iTXt) decompresses to more than 1 MiB; so
/// does cliprt, measuring each stream with a bounded decompression (a multi-GB profile costs 1 MiB, not GBs).
/// Streams that are not valid zlib are left to the decoder, as PIL leaves them.
fn png_metadata_within_pil_limit(b: &[u8]) -> Result<(), DecodeError> {
    let mut at = 8;
    while let Some(len) = b
        .get(at..at + 4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
    {
        let Some(data) = at.checked_add(8 + len).and_then(|end| b.get(at + 8..end)) else {
            break;
        };
        let kind = &b[at + 4..at + 8];
        // The compressed stream: after "keyword NUL method" (iCCP, zTXt), or after iTXt's flag, method, language
        // and translated keyword when its flag says compressed.
        let stream = match kind {
            b"iCCP" | b"zTXt" => data
                .iter()
                .position(|&c| c == 0)
                .and_then(|i| data.get(i + 2..)),
            b"iTXt" => data.iter().position(|&c| c == 0).and_then(|i| {
                let rest = data.get(i + 1..)?;
                if rest.first() != Some(&1) {
                    return None;
                }
                let rest = rest.get(2..)?;
                let lang = rest.iter().position(|&c| c == 0)?;
                let rest = rest.get(lang + 1..)?;
                let translated = rest.iter().position(|&c| c == 0)?;
                rest.get(translated + 1..)
            }),
            _ => None,
        };
        if let Some(stream) = stream {
            if let Err(fdeflate::BoundedDecompressionError::OutputTooLarge { .. }) =
                fdeflate::decompress_to_vec_bounded(stream, PIL_MAX_TEXT_CHUNK + 1)
            {
                return Err(DecodeError::Invalid(format!(
                    "the PNG's {} chunk decompresses to more than 1 MiB (PIL refuses it)",
                    String::from_utf8_lossy(kind)
                )));
            }
        }
        at += 12 + len;
    }
    Ok(())
}

/// The endings PIL does not need, supplied where the crate decoders would refuse the file without them: a PNG cut
/// after its last whole chunk (PIL stops reading at the end of the image data) gets its IEND chunk; an uncompressed
/// BMP missing only the padding of its last row gets that padding. `None` when the bytes are used as they are.
fn complete_like_pil(format: ImageFormat, bytes: &[u8]) -> Option<Vec<u8>> {
    match format {
        ImageFormat::Png => {
            const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
            let mut at = 8; // signature
            loop {
                let len = bytes
                    .get(at..at + 4)
                    .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]));
                let end = len.and_then(|n| (at + 12).checked_add(n as usize));
                match end {
                    Some(end) if end <= bytes.len() => {
                        if &bytes[at + 4..at + 8] == b"IEND" {
                            return None;
                        }
                        at = end;
                    }
                    _ => break,
                }
            }
            let mut out = bytes[..at.min(bytes.len())].to_vec();
            out.extend_from_slice(&IEND);
            Some(out)
        }
        ImageFormat::Bmp => {
            let u32_at = |o: usize| {
                bytes
                    .get(o..o + 4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            };
            let u16_at = |o: usize| {
                bytes
                    .get(o..o + 2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
            };
            let (off, w, h, bpp, comp) = (
                u32_at(10)?,
                u32_at(18)? as i32,
                u32_at(22)? as i32,
                u16_at(28)?,
                u32_at(30)?,
            );
            if comp != 0 || w <= 0 || h == 0 || !matches!(bpp, 8 | 24 | 32) {
                return None;
            }
            let (w, rows, bpp) = (w as u64, u64::from(h.unsigned_abs()), u64::from(bpp));
            let stride = (w * bpp).div_ceil(32) * 4;
            let full = u64::from(off) + stride * rows;
            let needed = full - stride + (w * bpp).div_ceil(8);
            let len = bytes.len() as u64;
            (len >= needed && len < full).then(|| {
                let mut out = bytes.to_vec();
                out.resize(full as usize, 0);
                out
            })
        }
        _ => None,
    }
}

/// Whether a JPEG stream's markers lead, segment by segment and across the entropy-coded scans, to an EOI marker
/// (libjpeg, and so PIL, reports a file without one as truncated). Length-prefixed segments are skipped whole, so
/// an EOI inside an EXIF thumbnail does not count.
fn jpeg_reaches_eoi(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    let mut in_scan = false;
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            if !in_scan {
                return false;
            }
            i += 1;
            continue;
        }
        let m = b[i + 1];
        match m {
            0xD9 => return true,
            // Fill bytes, stuffed zeros and restart markers inside a scan.
            0xFF => i += 1,
            0x00 | 0xD0..=0xD7 if in_scan => i += 2,
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                let Some(len) = b
                    .get(i + 2..i + 4)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                else {
                    return false;
                };
                i += 2 + len;
                in_scan = m == 0xDA;
            }
        }
    }
    false
}

/// The first frame of a GIF as PIL renders it (see the module docs); the gif crate refuses cut-short image data.
fn gif_first_frame(
    bytes: &[u8],
    max_bytes: u64,
    alpha: AlphaMode,
) -> Result<(RgbImage, Source), DecodeError> {
    let invalid = |e: &dyn std::fmt::Display| DecodeError::Invalid(e.to_string());
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    opts.set_memory_limit(gif::MemoryLimit::Bytes(
        std::num::NonZeroU64::new(max_bytes.max(1)).unwrap_or(std::num::NonZeroU64::MIN),
    ));
    opts.check_lzw_end_code(true);
    let mut d = opts
        .read_info(Cursor::new(bytes))
        .map_err(|e| invalid(&e))?;
    let (width, height) = (usize::from(d.width()), usize::from(d.height()));
    let global = d.global_palette().map(<[u8]>::to_vec);
    let frame = d
        .read_next_frame()
        .map_err(|e| invalid(&e))?
        .ok_or_else(|| DecodeError::Invalid("GIF holds no image".into()))?;
    let fill = frame.transparent.unwrap_or(0);
    let mut canvas = vec![fill; width * height];
    let (fw, fh) = (usize::from(frame.width), usize::from(frame.height));
    let (left, top) = (usize::from(frame.left), usize::from(frame.top));
    if frame.buffer.len() < fw * fh {
        return Err(DecodeError::Invalid(
            "image file is truncated (GIF frame data)".into(),
        ));
    }
    // The part of the frame inside the screen (a frame placed past its right or bottom edge draws nothing).
    let w = fw.min(width.saturating_sub(left));
    if w > 0 {
        for y in 0..fh.min(height.saturating_sub(top)) {
            let dst = (top + y) * width + left;
            canvas[dst..dst + w].copy_from_slice(&frame.buffer[y * fw..y * fw + w]);
        }
    }
    let palette = frame.palette.clone().or(global);
    let mut data = Vec::with_capacity(width * height * 3);
    for &i in &canvas {
        // PIL: mode "L" without any palette; a palette shorter than the index reads as black.
        let rgb = match &palette {
            Some(p) => {
                let at = 3 * usize::from(i);
                p.get(at..at + 3).map_or([0; 3], |c| [c[0], c[1], c[2]])
            }
            None => [i; 3],
        };
        let a = if frame.transparent == Some(i) { 0 } else { 255 };
        data.extend_from_slice(&match alpha {
            AlphaMode::CompositeWhite => composite_on_white(rgb, a),
            AlphaMode::Drop => rgb,
        });
    }
    let source = Source {
        nearest: palette.is_some(),
        ..Source::default()
    };
    Ok((
        RgbImage {
            width,
            height,
            data,
        },
        source,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_matches_pil_endpoints() {
        assert_eq!(composite_on_white([10, 20, 30], 255), [10, 20, 30]);
        assert_eq!(composite_on_white([10, 20, 30], 0), [255, 255, 255]);
    }

    #[test]
    fn budget_refuses_what_never_fits_and_returns_on_drop() {
        let b = MemoryBudget::new(100);
        assert!(matches!(
            b.reserve(101),
            Err(DecodeError::OverBudget(101, 100))
        ));
        let r = b.reserve(60).ok().unwrap();
        drop(r);
        let _again = b.reserve(100).ok().unwrap();
    }

    #[test]
    fn jpeg_marker_walk() {
        // SOI, APP0 (len 4), SOS (len 3) + entropy data with a stuffed 0xFF00, then EOI.
        let ok = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xDA, 0, 3, 9, 5, 0xFF, 0, 7, 0xFF, 0xD9,
        ];
        assert!(jpeg_reaches_eoi(&ok));
        assert!(!jpeg_reaches_eoi(&ok[..ok.len() - 1]));
        // An EOI inside a segment (an EXIF thumbnail) does not count.
        let hidden = [
            0xFF, 0xD8, 0xFF, 0xE1, 0, 4, 0xFF, 0xD9, 0xFF, 0xDA, 0, 3, 9, 5,
        ];
        assert!(!jpeg_reaches_eoi(&hidden));
    }
}
