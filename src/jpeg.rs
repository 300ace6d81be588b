//! JPEG decoded as PIL decodes it: by libjpeg-turbo's own decoder, then PIL's conversion to RGB.
//!
//! PIL 13 decodes JPEG with libjpeg-turbo at its defaults: the accurate integer IDCT (ISLOW), fancy (triangle)
//! upsampling of subsampled chroma, and libjpeg's fixed-point YCbCr→RGB tables. A decoder that differs in any of
//! these drifts by a few LSB (image's zune-jpeg did, up to 4 LSB on 4:2:0 files). So cliprt runs that same decoder:
//! the `mozjpeg-sys` crate builds mozjpeg, a libjpeg-turbo fork whose decoding side is libjpeg-turbo's, from C
//! with the system C compiler, plus libjpeg-turbo's SIMD (IDCT, upsampling, colour conversion) where NASM is
//! installed. The SIMD paths are bit-exact with the C code (libjpeg-turbo's design, and tests/jpeg.rs holds both
//! builds to PIL's pixels), so NASM changes only speed: 16–32 % less preprocessing time per JPEG photo
//! (`cargo bench --bench preprocess`). Then, as PIL does:
//! - one component is grey (mode "L"), replicated to RGB;
//! - three are RGB, whatever the file's colour transform (libjpeg converts);
//! - four are CMYK, read inverted as Adobe writes them (PIL's rawmode "CMYK;I"), then PIL's `cmyk2rgb`.
//!
//! libjpeg reports errors through `error_exit`, which must not return; ours unwinds (the C code is compiled with
//! unwind tables) with `resume_unwind`, which skips the panic hook, and `decode` catches it: a bad file is a typed
//! error, never a panic or a message on stderr. Warnings (corrupt entropy data that libjpeg recovers from) are
//! ignored, as PIL ignores them. libjpeg's memory is capped by the decode budget.

use std::ffi::{c_long, CStr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg_sys as ffi;

use crate::resample::RgbImage;

/// Progressive scans in one file. Real encoders write about 10; each scan re-reads the whole coefficient buffer,
/// so a crafted file with hundreds of thousands of tiny scans would decode for minutes (libjpeg-turbo's tools
/// limit this too, `-maxscans`).
const MAX_SCANS: i32 = 1000;

/// Bytes libjpeg may allocate for a `width` × `height` image: the whole-image coefficient buffer a progressive or
/// multi-scan file needs (64 coefficients of 2 bytes per 8×8 block, up to 4 components, padded to 16-pixel MCUs),
/// the row buffers of the upsampler and colour converter, and 1 MiB for tables and headers.
fn libjpeg_memory(width: u32, height: u32) -> u64 {
    let padded = |n: u32| u64::from(n).div_ceil(16) * 16;
    padded(width) * padded(height) * 8 + padded(width) * 256 + (1 << 20)
}

/// Decode memory of a JPEG: libjpeg's own, its output rows (up to 4 bytes per pixel for CMYK) and the RGB image.
pub(crate) fn decode_bytes(width: u32, height: u32) -> u64 {
    libjpeg_memory(width, height) + u64::from(width) * u64::from(height) * (4 + 3)
}

/// The message libjpeg's `error_exit` unwinds with.
struct LibjpegError(String);

/// libjpeg's message for its current error or warning code, with its parameters.
unsafe fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    let Some(format) = (*cinfo.err).format_message else {
        return format!("libjpeg error {}", (*cinfo.err).msg_code);
    };
    // format_message writes up to JMSG_LENGTH_MAX (200) bytes, NUL included, into its buffer; the binding types it
    // as a shared 80-byte array, so it is called through an ABI-identical pointer signature with a 200-byte buffer.
    let mut buffer = [0u8; 200];
    let format: unsafe extern "C-unwind" fn(*mut ffi::jpeg_common_struct, *mut u8) =
        std::mem::transmute(format);
    format(cinfo, buffer.as_mut_ptr());
    CStr::from_bytes_until_nul(&buffer)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "libjpeg error".into())
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let text = message(cinfo);
    resume_unwind(Box::new(LibjpegError(text)));
}

/// Warnings are not printed (PIL decodes through them silently).
unsafe extern "C-unwind" fn silent(_: &mut ffi::jpeg_common_struct) {}

unsafe extern "C-unwind" fn count_scans(cinfo: &mut ffi::jpeg_common_struct) {
    if cinfo.is_decompressor != 0 {
        let d = &*(cinfo as *mut ffi::jpeg_common_struct as *const ffi::jpeg_decompress_struct);
        if d.input_scan_number > MAX_SCANS {
            resume_unwind(Box::new(LibjpegError(format!(
                "more than {MAX_SCANS} progressive scans"
            ))));
        }
    }
}

/// libjpeg's state; boxed so the pointers between its parts stay valid, and destroyed on every path.
struct Decompressor {
    cinfo: ffi::jpeg_decompress_struct,
    err: ffi::jpeg_error_mgr,
    progress: ffi::jpeg_progress_mgr,
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // Frees every pool; safe on a struct whose creation failed (its memory manager is then null).
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// A decoded JPEG: its RGB, exactly as `PIL.Image.open(f).convert("RGB")` gives it, and for a four-component file
/// the CMYK bands as PIL holds them in mode "CMYK" (4 bytes a pixel, already inverted), which open_clip resizes
/// before converting.
pub(crate) struct Decoded {
    pub rgb: RgbImage,
    pub cmyk: Option<Vec<u8>>,
}

/// Decodes a JPEG as PIL does. `width` and `height` are what [`crate::decode::header`] read; libjpeg must agree
/// with them.
pub(crate) fn decode(bytes: &[u8], width: u32, height: u32) -> Result<Decoded, String> {
    let decoded = catch_unwind(AssertUnwindSafe(|| unsafe {
        decode_components(bytes, width, height)
    }));
    let (components, raw) = match decoded {
        Ok(result) => result?,
        Err(payload) => {
            let text = match payload.downcast::<LibjpegError>() {
                Ok(e) => e.0,
                // Not ours: a real panic keeps unwinding.
                Err(other) => resume_unwind(other),
            };
            return Err(format!("JPEG: {text}"));
        }
    };
    let (data, cmyk) = match components {
        1 => (raw.iter().flat_map(|&g| [g, g, g]).collect(), None),
        3 => (raw, None),
        _ => {
            // PIL reads Adobe's CMYK inverted (rawmode "CMYK;I").
            let mut cmyk = raw;
            cmyk.iter_mut().for_each(|v| *v = 255 - *v);
            (cmyk_to_rgb_like_pil(&cmyk), Some(cmyk))
        }
    };
    Ok(Decoded {
        rgb: RgbImage {
            width: width as usize,
            height: height as usize,
            data,
        },
        cmyk,
    })
}

/// PIL's `cmyk2rgb` over pixels of 4 bytes in PIL's "CMYK" values: with `nk = 255 − K`, each channel is
/// `nk − round(C · nk / 255)` in PIL's integer rounding (MULDIV255), clipped at 0.
pub(crate) fn cmyk_to_rgb_like_pil(cmyk: &[u8]) -> Vec<u8> {
    cmyk.chunks_exact(4)
        .flat_map(|px| {
            let nk = 255 - u32::from(px[3]);
            let channel = |c: u8| {
                let t = u32::from(c) * nk + 128;
                nk.saturating_sub(((t >> 8) + t) >> 8) as u8
            };
            [channel(px[0]), channel(px[1]), channel(px[2])]
        })
        .collect()
}

/// Runs libjpeg over `bytes`: (components in the output, the output rows). Errors unwind as [`LibjpegError`].
unsafe fn decode_components(
    bytes: &[u8],
    width: u32,
    height: u32,
) -> Result<(usize, Vec<u8>), String> {
    let mut d: Box<Decompressor> = Box::new(std::mem::zeroed());
    ffi::jpeg_std_error(&mut d.err);
    d.err.error_exit = Some(error_exit);
    d.err.output_message = Some(silent);
    d.cinfo.common.err = &mut d.err;
    ffi::jpeg_create_decompress(&mut d.cinfo);
    (*d.cinfo.common.mem).max_memory_to_use =
        c_long::try_from(libjpeg_memory(width, height)).unwrap_or(c_long::MAX);
    d.progress.progress_monitor = Some(count_scans);
    d.cinfo.common.progress = &mut d.progress;
    ffi::jpeg_mem_src(&mut d.cinfo, bytes.as_ptr(), bytes.len() as _);
    ffi::jpeg_read_header(&mut d.cinfo, 1);
    if (d.cinfo.image_width, d.cinfo.image_height) != (width, height) {
        return Err(format!(
            "JPEG: libjpeg reads {}x{}, the header {width}x{height}",
            d.cinfo.image_width, d.cinfo.image_height
        ));
    }
    // PIL's mode follows the component count alone (JpegImagePlugin: 1 → L, 3 → RGB, 4 → CMYK).
    d.cinfo.out_color_space = match d.cinfo.num_components {
        1 => ffi::J_COLOR_SPACE::JCS_GRAYSCALE,
        3 => ffi::J_COLOR_SPACE::JCS_RGB,
        4 => ffi::J_COLOR_SPACE::JCS_CMYK,
        n => return Err(format!("JPEG with {n} components (PIL opens 1, 3 or 4)")),
    };
    ffi::jpeg_start_decompress(&mut d.cinfo);
    let components = d.cinfo.output_components as usize;
    let stride = width as usize * components;
    let mut raw = vec![0u8; stride * height as usize];
    while d.cinfo.output_scanline < d.cinfo.output_height {
        let at = d.cinfo.output_scanline as usize * stride;
        let mut row = raw[at..].as_mut_ptr();
        if ffi::jpeg_read_scanlines(&mut d.cinfo, &mut row, 1) != 1 {
            return Err("JPEG: no scanline decoded".into());
        }
    }
    ffi::jpeg_finish_decompress(&mut d.cinfo);
    Ok((components, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PIL's cmyk2rgb against the formula in real numbers: within half an LSB of (255 − C)(255 − K)/255 at every
    /// (C, K).
    #[test]
    fn cmyk_conversion_rounds_like_pil() {
        for c in 0..=255u8 {
            for k in 0..=255u8 {
                let got = cmyk_to_rgb_like_pil(&[c, c, c, k])[0];
                let exact = f64::from(255 - c) * f64::from(255 - k) / 255.0;
                assert!((f64::from(got) - exact).abs() <= 0.5 + 1e-9, "{c} {k}");
            }
        }
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let mut bytes = vec![
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, 0, 16, 0, 16, 1, 1, 0x11, 0,
        ];
        bytes.extend_from_slice(&[0xFF, 0xD9]);
        match decode(&bytes, 16, 16) {
            Err(m) => assert!(m.starts_with("JPEG: "), "{m}"),
            Ok(_) => panic!("garbage decoded"),
        }
    }
}
