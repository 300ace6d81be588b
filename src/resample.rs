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

/// The fixed-point taps of every output position along one axis.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn taps(in_size: usize, out_size: usize, filter: Resample) -> Taps {
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
        let one = f64::from(1u32 << PRECISION_BITS);
        // Round half away from zero, as PIL's (int)(±0.5 + w·2^22).
        weights.push(
            w.iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect(),
        );
        first.push(lo);
    }
    Taps { first, weights }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Runs `f(y, row)` over the rows of `data`: in parallel when called from outside rayon's pool (one image, e.g. from
/// the main thread), in order on a pool thread. A caller on a pool thread is one of several parallel decodes, which
/// holds a share of the decode memory budget (src/decode.rs); waiting inside a parallel loop, that thread could pick
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

/// Resamples the rows (horizontal pass) to `width`.
fn horizontal(img: &RgbImage, width: usize, filter: Resample) -> RgbImage {
    let t = taps(img.width, width, filter);
    let mut data = vec![0u8; width * img.height * 3];
    for_each_row(&mut data, width * 3, |y, out| {
        let row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        for (x, px) in out.chunks_exact_mut(3).enumerate() {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &w) in t.weights[x].iter().enumerate() {
                let src = &row[(t.first[x] + i) * 3..][..3];
                for c in 0..3 {
                    acc[c] += i32::from(src[c]) * w;
                }
            }
            for c in 0..3 {
                px[c] = clip8(acc[c]);
            }
        }
    });
    RgbImage {
        width,
        height: img.height,
        data,
    }
}

/// Resamples the columns (vertical pass) to `height`.
fn vertical(img: &RgbImage, height: usize, filter: Resample) -> RgbImage {
    let t = taps(img.height, height, filter);
    let stride = img.width * 3;
    let mut data = vec![0u8; stride * height];
    for_each_row(&mut data, stride, |y, out| {
        let mut acc = vec![1i32 << (PRECISION_BITS - 1); stride];
        for (i, &w) in t.weights[y].iter().enumerate() {
            let src = &img.data[(t.first[y] + i) * stride..][..stride];
            acc.iter_mut()
                .zip(src)
                .for_each(|(a, &s)| *a += i32::from(s) * w);
        }
        out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = clip8(a));
    });
    RgbImage {
        width: img.width,
        height,
        data,
    }
}

/// Resizes with a PIL convolution filter, in Pillow 13's pass order: vertical first when the height shrinks by
/// more than twice what the width shrinks, horizontal first otherwise. An axis whose size is unchanged is not
/// resampled at all (as in PIL).
pub fn resize_convolution(
    img: &RgbImage,
    width: usize,
    height: usize,
    filter: Resample,
) -> RgbImage {
    let shrink_h = img.height as i64 - height as i64;
    let shrink_w = img.width as i64 - width as i64;
    let vertical_first = shrink_h > 0 && shrink_h > 2 * shrink_w;
    let need_h = width != img.width;
    let need_v = height != img.height;
    match (need_h, need_v, vertical_first) {
        (false, false, _) => img.clone(),
        (true, false, _) => horizontal(img, width, filter),
        (false, true, _) => vertical(img, height, filter),
        (true, true, false) => vertical(&horizontal(img, width, filter), height, filter),
        (true, true, true) => horizontal(&vertical(img, height, filter), width, filter),
    }
}
