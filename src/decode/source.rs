//! What PIL makes of a file before any conversion, where that changes how PIL resizes it: open_clip resizes before
//! converting to RGB, so the mode PIL opened the file in decides the resize (src/preprocess/own_mode.rs).

use image::DynamicImage;

/// What PIL would make of a file before any conversion, where it changes how PIL resizes it (open_clip resizes
/// before converting to RGB): `Image.resize` always resizes modes "P" and "1" with nearest neighbour, "RGBA" and
/// "LA" with premultiplied alpha, "CMYK" band by band, and "I;16" at 16 bits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// PIL opens the file in mode "P" or "1": a palette PNG (colour type 3), a 1-bit grey PNG, a GIF with a
    /// palette, or a BMP of up to 8 bits a pixel whose palette is not PIL's grey ramp.
    pub nearest: bool,
    /// The alpha plane (8 bits, row-major) of a file PIL opens with alpha ("RGBA", "LA"): PIL resizes those with
    /// premultiplied alpha.
    pub alpha: Option<Vec<u8>>,
    /// The bands of a file PIL opens in mode "CMYK" (a four-component JPEG), 4 bytes a pixel in PIL's values.
    pub cmyk: Option<Vec<u8>>,
    /// The values of a file PIL opens in mode "I;16" (16-bit grey without alpha), which PIL resizes at 16 bits.
    pub grey16: Option<Vec<u16>>,
}

/// The values of a 16-bit grey image without alpha (PIL's mode "I;16").
pub fn grey16_plane(img: &DynamicImage) -> Option<Vec<u16>> {
    match img {
        DynamicImage::ImageLuma16(b) => Some(b.as_raw().clone()),
        _ => None,
    }
}

/// The 8-bit alpha plane of a decoded image that has one (16-bit alpha keeps its high byte, as PIL reads it).
pub fn alpha_plane(img: &DynamicImage) -> Option<Vec<u8>> {
    match img {
        DynamicImage::ImageLumaA8(b) => Some(b.as_raw().chunks_exact(2).map(|p| p[1]).collect()),
        DynamicImage::ImageRgba8(b) => Some(b.as_raw().chunks_exact(4).map(|p| p[3]).collect()),
        DynamicImage::ImageLumaA16(b) => Some(
            b.as_raw()
                .chunks_exact(2)
                .map(|p| (p[1] >> 8) as u8)
                .collect(),
        ),
        DynamicImage::ImageRgba16(b) => Some(
            b.as_raw()
                .chunks_exact(4)
                .map(|p| (p[3] >> 8) as u8)
                .collect(),
        ),
        _ => None,
    }
}

/// PIL opens a PNG in mode "P" (colour type 3) or "1" (grey at 1 bit): IHDR is the first chunk, its bit depth
/// and colour type bytes sit at offsets 24 and 25.
pub(super) fn png_opens_as_palette_or_bilevel(bytes: &[u8]) -> bool {
    matches!(
        (bytes.get(24), bytes.get(25)),
        (_, Some(3)) | (Some(1), Some(0))
    )
}

/// PIL opens a BMP of up to 8 bits a pixel in mode "P", unless its palette is grey: entries `(0,0,0), (255,255,255)`
/// for two colours (mode "1"), else entry `i` equal to `(i, i, i)` for every `i` (mode "L"). "P" and "1" are
/// resized with nearest neighbour. The palette follows the info header: 3 bytes an entry after a 12-byte OS/2
/// header, else 4 (BGRX); its length is the header's colour count, or `2^bits` when that is 0.
pub(super) fn bmp_opens_as_palette_or_bilevel(bytes: &[u8]) -> bool {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let Some(header) = u32_at(14) else {
        return false;
    };
    let (bits, colors, entry) = if header == 12 {
        (u16_at(24), Some(0), 3)
    } else {
        (u16_at(28), u32_at(46), 4)
    };
    let (Some(bits), Some(colors)) = (bits, colors) else {
        return false;
    };
    if bits == 0 || bits > 8 {
        return false;
    }
    let colors = if colors == 0 {
        1usize << bits
    } else {
        colors as usize
    };
    let palette = 14 + header as usize;
    let grey_at = |i: usize, value: usize| {
        let at = palette + i * entry;
        bytes
            .get(at..at + 3)
            .is_some_and(|c| c.iter().all(|&v| usize::from(v) == value))
    };
    let grey = if colors == 2 {
        grey_at(0, 0) && grey_at(1, 255)
    } else {
        (0..colors).all(|i| grey_at(i, i))
    };
    // PIL's mode "1" (grey with at most two colours) is resized with nearest neighbour as "P" is.
    !grey || colors <= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BMP header (14-byte file header, `info`-byte info header) with `bits` a pixel and `palette` entries.
    fn bmp(info: u32, bits: u16, colours_used: u32, palette: &[[u8; 3]]) -> Vec<u8> {
        let mut b = vec![0u8; 14 + info as usize];
        b[..2].copy_from_slice(b"BM");
        b[14..18].copy_from_slice(&info.to_le_bytes());
        if info == 12 {
            b[24..26].copy_from_slice(&bits.to_le_bytes());
        } else {
            b[28..30].copy_from_slice(&bits.to_le_bytes());
            b[46..50].copy_from_slice(&colours_used.to_le_bytes());
        }
        let entry = if info == 12 { 3 } else { 4 };
        for c in palette {
            b.extend_from_slice(&c[..entry.min(3)]);
            b.extend(std::iter::repeat_n(0, entry - 3));
        }
        b
    }

    /// PIL's BMP modes: "P" unless the palette is its grey ramp, "1" for two grey colours (both resized with
    /// nearest neighbour), "L" for a longer grey ramp; true colour and cut headers are neither.
    #[test]
    fn bmp_modes_follow_pil() {
        let ramp: Vec<[u8; 3]> = (0..=255).map(|i| [i; 3]).collect();
        assert!(
            !bmp_opens_as_palette_or_bilevel(&bmp(40, 8, 0, &ramp)),
            "grey ramp is L"
        );
        assert!(
            !bmp_opens_as_palette_or_bilevel(&bmp(12, 4, 0, &ramp[..16])),
            "OS/2 ramp is L"
        );
        assert!(
            bmp_opens_as_palette_or_bilevel(&bmp(40, 1, 2, &[[0; 3], [255; 3]])),
            "1"
        );
        let mut tinted = ramp.clone();
        tinted[7] = [7, 7, 8];
        assert!(
            bmp_opens_as_palette_or_bilevel(&bmp(40, 8, 0, &tinted)),
            "P"
        );
        assert!(
            bmp_opens_as_palette_or_bilevel(&bmp(40, 8, 3, &ramp[5..8])),
            "P: not from 0"
        );
        assert!(
            !bmp_opens_as_palette_or_bilevel(&bmp(40, 24, 0, &[])),
            "true colour"
        );
        let whole = bmp(40, 8, 0, &ramp);
        for cut in 0..whole.len() {
            // A cut palette is not PIL's grey ramp; a cut header is not a palette file.
            let _ = bmp_opens_as_palette_or_bilevel(&whole[..cut]);
        }
        assert!(!bmp_opens_as_palette_or_bilevel(&whole[..20]));
    }
}
