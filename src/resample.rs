//! The 8-bit RGB image type, PIL's resampling filters, and PIL's `Image.resize` for 8-bit RGB, reimplemented to be bit-identical: per-axis convolution with the filter
//! widened by the downscale factor, weights normalized to sum 1 and rounded to 22-bit fixed point, accumulation in
//! i32 starting from one half, and the result clipped to 0..=255 between the two passes.
//!
//! (fast_image_resize's CatmullRom is ≤ 1 LSB from PIL on most images but was measured 2 LSB off on a
//! 333×1000 portrait at 224, so the convolution filters live here; it still serves NEAREST.)

use rayon::prelude::*;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// PIL resampling filters, by the integer HF stores in `resample`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Nearest = 0,
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
}

impl Resample {
    pub(crate) fn from_pil(code: u64) -> Option<Self> {
        Some(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            _ => return None,
        })
    }
}

/// Fractional bits of the fixed-point weights (PIL: 32 − 8 − 2, leaving room for 8-bit input and overflow).
const PRECISION_BITS: u32 = 22;

/// A PIL convolution filter: its kernel and its support (half-width) at scale 1.
fn kernel(filter: Resample) -> (fn(f64) -> f64, f64) {
    fn bicubic(x: f64) -> f64 {
        // Keys' cubic with a = −0.5 (Catmull-Rom).
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    }
    fn bilinear(x: f64) -> f64 {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    }
    fn boxf(x: f64) -> f64 {
        if x > -0.5 && x <= 0.5 {
            1.0
        } else {
            0.0
        }
    }
    fn hamming(x: f64) -> f64 {
        let x = x.abs();
        if x == 0.0 {
            1.0
        } else if x >= 1.0 {
            0.0
        } else {
            let x = x * std::f64::consts::PI;
            // PIL writes these constants as C floats; their f32 values are what it computes with.
            x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
        }
    }
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    fn lanczos(x: f64) -> f64 {
        if (-3.0..3.0).contains(&x) {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    }
    match filter {
        Resample::Bicubic => (bicubic, 2.0),
        Resample::Bilinear => (bilinear, 1.0),
        Resample::Box => (boxf, 0.5),
        Resample::Hamming => (hamming, 1.0),
        Resample::Lanczos => (lanczos, 3.0),
        // Nearest is not a convolution; callers route it elsewhere. Box is its closest convolution.
        Resample::Nearest => (boxf, 0.5),
    }
}

/// The taps of every output position along one axis: the first input it reads and the weight of each input from
/// there, `W` being PIL's normalized `f64` or its 22-bit fixed point.
struct Taps<W> {
    first: Vec<usize>,
    weights: Vec<Vec<W>>,
}

/// PIL's `precompute_coeffs`: the filter widened by the downscale factor, each output's weights normalized to sum 1.
fn float_taps(in_size: usize, out_size: usize, filter: Resample) -> Taps<f64> {
    let (f, base_support) = kernel(filter);
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = base_support * filter_scale;
    let inv_filter_scale = 1.0 / filter_scale;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for o in 0..out_size {
        let center = (o as f64 + 0.5) * scale;
        // PIL rounds the window ends with a C cast (truncation toward zero) of x + 0.5, then clamps.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64)
            .min(in_size as i64)
            .max(lo as i64) as usize;
        let mut w: Vec<f64> = (lo..hi)
            .map(|x| f((x as f64 - center + 0.5) * inv_filter_scale))
            .collect();
        let sum: f64 = w.iter().sum();
        if sum != 0.0 {
            w.iter_mut().for_each(|v| *v /= sum);
        }
        weights.push(w);
        first.push(lo);
    }
    Taps { first, weights }
}

/// [`float_taps`] in PIL's fixed point for 8-bit images (`normalize_coeffs_8bpc`).
fn taps(in_size: usize, out_size: usize, filter: Resample) -> Taps<i32> {
    let Taps { first, weights } = float_taps(in_size, out_size, filter);
    let one = f64::from(1u32 << PRECISION_BITS);
    // Round half away from zero, as PIL's (int)(±0.5 + w·2^22).
    let fixed = |v: f64| {
        if v < 0.0 {
            (-0.5 + v * one) as i32
        } else {
            (0.5 + v * one) as i32
        }
    };
    let weights = weights
        .iter()
        .map(|w| w.iter().map(|&v| fixed(v)).collect())
        .collect();
    Taps { first, weights }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Runs `f(y, row)` over the rows of `data`: in parallel when called from outside rayon's pool (one image, e.g. from
/// the main thread), in order on a pool thread. A caller on a pool thread is one of several parallel decodes, which
/// holds a share of the decode memory budget (src/decode/mod.rs); waiting inside a parallel loop, that thread could pick
/// up another decode that then waits for the very share it holds: a deadlock.
fn for_each_row(data: &mut [u8], row: usize, f: impl Fn(usize, &mut [u8]) + Sync + Send) {
    if rayon::current_thread_index().is_none() {
        data.par_chunks_mut(row)
            .enumerate()
            .for_each(|(y, r)| f(y, r));
    } else {
        data.chunks_mut(row).enumerate().for_each(|(y, r)| f(y, r));
    }
}

/// Resamples the rows (horizontal pass) to `width`, in strips of [`STRIP`] rows: each strip is transposed, resampled
/// as columns (the vertical pass's vector kernel, [`weighted_rows`]) and transposed back. A row pass gathers each
/// output pixel's taps 3 bytes apart, one pixel at a time (measured: 1.3 of the 3.0 ms a 640 × 480 photo took to
/// preprocess); a strip stays in L2 (64 rows of 1280 pixels: 246 KB). The sums are integers, so the order changes
/// nothing: the pixels are PIL's.
fn horizontal(img: &RgbImage, width: usize, filter: Resample) -> RgbImage {
    let t = taps(img.width, width, filter);
    let mut data = vec![0u8; width * img.height * 3];
    for_each_row(&mut data, width * 3 * STRIP, |strip, out| {
        let rows = out.len() / (width * 3);
        let y0 = strip * STRIP;
        // columns[x] = the strip's pixels of column x (rows·3 bytes), then the same for the resampled columns.
        let mut columns = vec![0u8; img.width * rows * 3];
        transpose(
            &img.data[y0 * img.width * 3..][..img.width * rows * 3],
            img.width,
            rows,
            &mut columns,
        );
        let mut resampled = vec![0u8; width * rows * 3];
        for (x, col) in resampled.chunks_exact_mut(rows * 3).enumerate() {
            weighted_rows(&columns, t.first[x], rows * 3, &t.weights[x], col);
        }
        transpose(&resampled, rows, width, out);
    });
    RgbImage {
        width,
        height: img.height,
        data,
    }
}

/// Scratch bytes the horizontal pass from `width` to `resized_width` pixels holds at once: a strip transposed and
/// resampled, on each thread that may run one (every thread of the pool when called from outside it).
pub(crate) fn strip_bytes(width: usize, resized_width: usize) -> u64 {
    let threads = rayon::current_num_threads() as u64;
    threads * 3 * STRIP as u64 * (width as u64 + resized_width as u64)
}

/// Rows per strip of the horizontal pass: a transposed row is then 192 bytes, three whole [`CHUNK`]s.
const STRIP: usize = 64;

/// Values per vector chunk of [`weighted_rows`]: 64 i32 accumulators, four zmm registers.
const CHUNK: usize = 64;

/// `dst` (`w` rows of `h` pixels) = `src` (`h` rows of `w` RGB pixels) mirrored about its diagonal. In blocks of
/// 16 columns, whose `dst` rows (16 × `h` pixels: 3 KB for a strip) stay in L1 while every `src` row passes.
fn transpose(src: &[u8], w: usize, h: usize, dst: &mut [u8]) {
    const BLOCK: usize = 16;
    let (src, dst) = (&src[..w * h * 3], &mut dst[..w * h * 3]);
    for (b, block) in dst.chunks_mut(BLOCK * h * 3).enumerate() {
        let x0 = b * BLOCK;
        for (y, row) in src.chunks_exact(w * 3).enumerate() {
            let pixels = &row[x0 * 3..][..block.len() / h];
            for (column, px) in block.chunks_exact_mut(h * 3).zip(pixels.chunks_exact(3)) {
                column[y * 3..y * 3 + 3].copy_from_slice(px);
            }
        }
    }
}

/// Resamples the columns (vertical pass) to `height`.
fn vertical(img: &RgbImage, height: usize, filter: Resample) -> RgbImage {
    let t = taps(img.height, height, filter);
    let stride = img.width * 3;
    let mut data = vec![0u8; stride * height];
    for_each_row(&mut data, stride, |y, out| {
        weighted_rows(&img.data, t.first[y], stride, &t.weights[y], out)
    });
    RgbImage {
        width: img.width,
        height,
        data,
    }
}

/// `out = clip8(½ + Σᵢ weights[i] · row(first + i))` elementwise, where row `r` is `src[r·stride..][..out.len()]`:
/// one output row of a column pass. Compiled for the widest vector unit the CPU has (the compiler vectorizes the
/// multiply-adds across the row), in chunks of [`CHUNK`] values.
fn weighted_rows(src: &[u8], first: usize, stride: usize, weights: &[i32], out: &mut [u8]) {
    #[inline(always)]
    fn sum(src: &[u8], first: usize, stride: usize, weights: &[i32], out: &mut [u8]) {
        let whole = out.len() / CHUNK * CHUNK;
        let (body, tail) = out.split_at_mut(whole);
        for (c, o) in body.chunks_exact_mut(CHUNK).enumerate() {
            let o: &mut [u8; CHUNK] = o.try_into().expect("a whole chunk");
            chunk(src, first, stride, c * CHUNK, weights, o);
        }
        chunk(src, first, stride, whole, weights, tail);
    }
    /// One chunk of the row from column `at`: a fixed `[u8; CHUNK]` keeps the accumulators in registers across the
    /// taps (with a run-time length they lived on the stack, each tap a store and a reload).
    #[inline(always)]
    fn chunk<O: AsMut<[u8]> + ?Sized>(
        src: &[u8],
        first: usize,
        stride: usize,
        at: usize,
        weights: &[i32],
        out: &mut O,
    ) {
        let out = out.as_mut();
        let mut acc = [1i32 << (PRECISION_BITS - 1); CHUNK];
        for (i, &w) in weights.iter().enumerate() {
            let row = &src[(first + i) * stride + at..][..out.len()];
            acc.iter_mut()
                .zip(row)
                .for_each(|(a, &s)| *a += i32::from(s) * w);
        }
        out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = clip8(a));
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn avx512(src: &[u8], first: usize, stride: usize, weights: &[i32], out: &mut [u8]) {
            sum(src, first, stride, weights, out)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(src: &[u8], first: usize, stride: usize, weights: &[i32], out: &mut [u8]) {
            sum(src, first, stride, weights, out)
        }
        if std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the features were just detected.
            return unsafe { avx512(src, first, stride, weights, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { avx2(src, first, stride, weights, out) };
        }
    }
    sum(src, first, stride, weights, out)
}

/// Which passes PIL's resize runs from `(w, h)` to `(width, height)`, in order (Pillow 13): vertical first when the
/// height shrinks by more than twice what the width shrinks, horizontal first otherwise; an axis whose size is
/// unchanged is not resampled at all. `true` is a horizontal pass.
fn pass_order(w: usize, h: usize, width: usize, height: usize) -> Vec<bool> {
    let shrink_h = h as i64 - height as i64;
    let shrink_w = w as i64 - width as i64;
    let vertical_first = shrink_h > 0 && shrink_h > 2 * shrink_w;
    let passes = if vertical_first {
        [(false, height != h), (true, width != w)]
    } else {
        [(true, width != w), (false, height != h)]
    };
    passes.iter().filter(|p| p.1).map(|p| p.0).collect()
}

/// Resizes with a PIL convolution filter, in Pillow 13's pass order (`pass_order`).
pub fn resize_convolution(
    img: &RgbImage,
    width: usize,
    height: usize,
    filter: Resample,
) -> RgbImage {
    let mut out: Option<RgbImage> = None;
    for horizontal_pass in pass_order(img.width, img.height, width, height) {
        let src = out.as_ref().unwrap_or(img);
        out = Some(if horizontal_pass {
            horizontal(src, width, filter)
        } else {
            vertical(src, height, filter)
        });
    }
    out.unwrap_or_else(|| img.clone())
}

/// PIL's resize of a 16-bit grey image (mode "I;16", `width × height` values, row-major) with a convolution
/// filter (`ImagingResample*_16bpc`): each value is `Σ input · weight` in `f64` with the normalized weights (no
/// fixed point), rounded half away from zero and clamped to 0..=65535 (held to Pillow 13's own output, sums above
/// 65535 included, by tests/openclip.rs). The passes run in `pass_order`.
///
/// # Panics
/// When `plane` holds fewer than `w · h` values (callers check the plane against its image first).
pub fn resize_grey16_like_pil(
    plane: &[u16],
    (w, h): (usize, usize),
    (width, height): (usize, usize),
    filter: Resample,
) -> Vec<u16> {
    let store = |sum: f64| -> u16 {
        let v = if sum >= 0.0 {
            (sum + 0.5) as i64
        } else {
            (sum - 0.5) as i64
        };
        v.clamp(0, 65535) as u16
    };
    let (mut data, mut cur_w, mut cur_h) = (plane[..w * h].to_vec(), w, h);
    for horizontal_pass in pass_order(w, h, width, height) {
        data = if horizontal_pass {
            let t = float_taps(cur_w, width, filter);
            let mut out = Vec::with_capacity(width * cur_h);
            for row in data.chunks_exact(cur_w) {
                for (first, weights) in t.first.iter().zip(&t.weights) {
                    let taps = row[*first..].iter().zip(weights);
                    out.push(store(taps.fold(0.0, |s, (&v, k)| s + f64::from(v) * k)));
                }
            }
            cur_w = width;
            out
        } else {
            let t = float_taps(cur_h, height, filter);
            let mut out = Vec::with_capacity(cur_w * height);
            for (first, weights) in t.first.iter().zip(&t.weights) {
                for x in 0..cur_w {
                    let column = data[first * cur_w + x..].iter().step_by(cur_w);
                    let sum = column
                        .zip(weights)
                        .fold(0.0, |s, (&v, k)| s + f64::from(v) * k);
                    out.push(store(sum));
                }
            }
            cur_h = height;
            out
        };
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PIL's row pass as PIL writes it: each output pixel sums its taps 3 bytes apart (the reference for the
    /// strip-transposed [`horizontal`]).
    fn horizontal_by_pixel(img: &RgbImage, width: usize, filter: Resample) -> RgbImage {
        let t = taps(img.width, width, filter);
        let mut data = Vec::with_capacity(width * img.height * 3);
        for row in img.data.chunks_exact(img.width * 3) {
            for x in 0..width {
                for c in 0..3 {
                    let acc = t.weights[x]
                        .iter()
                        .enumerate()
                        .fold(1i32 << (PRECISION_BITS - 1), |acc, (i, &w)| {
                            acc + i32::from(row[(t.first[x] + i) * 3 + c]) * w
                        });
                    data.push(clip8(acc));
                }
            }
        }
        RgbImage {
            width,
            height: img.height,
            data,
        }
    }

    /// PIL's column pass, one value at a time (the reference for the vectorized [`vertical`]).
    fn vertical_by_value(img: &RgbImage, height: usize, filter: Resample) -> RgbImage {
        let t = taps(img.height, height, filter);
        let stride = img.width * 3;
        let mut data = Vec::with_capacity(stride * height);
        for y in 0..height {
            for v in 0..stride {
                let acc = t.weights[y]
                    .iter()
                    .enumerate()
                    .fold(1i32 << (PRECISION_BITS - 1), |acc, (i, &w)| {
                        acc + i32::from(img.data[(t.first[y] + i) * stride + v]) * w
                    });
                data.push(clip8(acc));
            }
        }
        RgbImage {
            width: img.width,
            height,
            data,
        }
    }

    /// Both passes equal their one-value-at-a-time references exactly, for every filter, on fresh random images:
    /// heights below, at and past a strip (64 rows), rows that are not whole chunks (64 values), up and down.
    #[test]
    fn passes_equal_pil_one_value_at_a_time() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let mut state = seed;
        let mut next = |n: usize| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        };
        let filters = [
            Resample::Bicubic,
            Resample::Bilinear,
            Resample::Lanczos,
            Resample::Box,
            Resample::Hamming,
        ];
        let sizes = [1, 2, 7, 63, 64, 65, 130, 257];
        for case in 0..60 {
            let (w, h) = (
                sizes[case % sizes.len()] + next(40),
                sizes[(case / 2) % sizes.len()] + next(40),
            );
            let img = RgbImage {
                width: w,
                height: h,
                data: (0..w * h * 3).map(|_| next(256) as u8).collect(),
            };
            let filter = filters[case % filters.len()];
            let (nw, nh) = (1 + next(2 * w + 8), 1 + next(2 * h + 8));
            let what = format!("{w}x{h} -> {nw}x{nh} {filter:?}, seed {seed}");
            assert_eq!(
                horizontal(&img, nw, filter),
                horizontal_by_pixel(&img, nw, filter),
                "horizontal {what}"
            );
            assert_eq!(
                vertical(&img, nh, filter),
                vertical_by_value(&img, nh, filter),
                "vertical {what}"
            );
        }
    }
}
