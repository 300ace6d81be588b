//! Resizes in the mode PIL opened a file in, for open_clip's transform, which resizes before converting to RGB
//! (`decode::Source` says the mode): premultiplied alpha, CMYK band by band, 16-bit grey at 16 bits. Each ends in
//! the RGB that PIL's `convert("RGB")` gives after the resize.

use super::resize_like_pil;
use crate::error::{Error, Result};
use crate::resample::{Resample, RgbImage};

/// PIL's resize of an "RGBA" or "LA" image: premultiply by alpha (`convert("RGBa")`: c·a/255 rounded as PIL's
/// MULDIV255), resize colour and alpha alike, then divide back (`convert("RGBA")`: ⌊255·c/a⌋ clipped to 255,
/// colour kept where a is 0 or 255). The alpha is then dropped.
pub(super) fn resize_premultiplied(
    img: &RgbImage,
    alpha: &[u8],
    width: usize,
    height: usize,
    filter: Resample,
) -> Result<RgbImage> {
    check_plane(img, alpha.len(), 1, "alpha plane")?;
    let muldiv255 = |c: u8, a: u8| {
        let t = u32::from(c) * u32::from(a) + 128;
        ((t + (t >> 8)) >> 8) as u8
    };
    let premultiplied = RgbImage {
        width: img.width,
        height: img.height,
        data: img
            .data
            .chunks_exact(3)
            .zip(alpha)
            .flat_map(|(px, &a)| px.iter().map(move |&c| muldiv255(c, a)).collect::<Vec<_>>())
            .collect(),
    };
    // The resampler treats channels independently: alpha resized as a grey image gives PIL's alpha band.
    let alpha_rgb = RgbImage {
        width: img.width,
        height: img.height,
        data: alpha.iter().flat_map(|&a| [a, a, a]).collect(),
    };
    let mut colour = resize_like_pil(&premultiplied, width, height, filter)?;
    let alpha = resize_like_pil(&alpha_rgb, width, height, filter)?;
    for (px, a) in colour
        .data
        .chunks_exact_mut(3)
        .zip(alpha.data.chunks_exact(3))
    {
        let a = u32::from(a[0]);
        if a != 0 && a != 255 {
            px.iter_mut()
                .for_each(|c| *c = (255 * u32::from(*c) / a).min(255) as u8);
        }
    }
    Ok(colour)
}

/// PIL's resize of a "CMYK" image (`img`'s size, 4 bytes a pixel in `cmyk`), then its `cmyk2rgb`: the resampler
/// treats bands independently, so C, M, Y go through as one 3-band image and K as a grey one.
pub(super) fn resize_cmyk(
    img: &RgbImage,
    cmyk: &[u8],
    width: usize,
    height: usize,
    filter: Resample,
) -> Result<RgbImage> {
    check_plane(img, cmyk.len(), 4, "CMYK bands")?;
    let bands = |pick: fn(&[u8]) -> [u8; 3]| RgbImage {
        width: img.width,
        height: img.height,
        data: cmyk.chunks_exact(4).flat_map(pick).collect(),
    };
    let cmy = resize_like_pil(&bands(|p| [p[0], p[1], p[2]]), width, height, filter)?;
    let k = resize_like_pil(&bands(|p| [p[3]; 3]), width, height, filter)?;
    let resized: Vec<u8> = cmy
        .data
        .chunks_exact(3)
        .zip(k.data.chunks_exact(3))
        .flat_map(|(c, k)| [c[0], c[1], c[2], k[0]])
        .collect();
    Ok(RgbImage {
        width,
        height,
        data: crate::jpeg::cmyk_to_rgb_like_pil(&resized),
    })
}

/// PIL's resize of an "I;16" image (`img`'s size, one value a pixel in `grey`) at 16 bits, then its conversion to
/// RGB, which clips each value to 255 (not a scaling: PIL's I;16 → RGB rule).
pub(super) fn resize_grey16(
    img: &RgbImage,
    grey: &[u16],
    width: usize,
    height: usize,
    filter: Resample,
) -> Result<RgbImage> {
    check_plane(img, grey.len(), 1, "16-bit grey plane")?;
    let size = (img.width, img.height);
    let resized = crate::resample::resize_grey16_like_pil(grey, size, (width, height), filter);
    Ok(RgbImage {
        width,
        height,
        data: resized
            .iter()
            .flat_map(|&v| [v.min(255) as u8; 3])
            .collect(),
    })
}

/// A source plane of `len` values, `per_pixel` a pixel, must cover `img` exactly.
fn check_plane(img: &RgbImage, len: usize, per_pixel: usize, what: &str) -> Result<()> {
    if len == per_pixel * img.width * img.height {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "{what} of {len} values for a {}x{} image",
        img.width, img.height
    )))
}
