//! L2 normalization, scaled cosine logits and softmax over texts (zero-shot), on host f32 embeddings.

use crate::error::{Error, Result};

/// `factor / |v|` with the sum of squares in f64, or 0 for an all-zero `v` (which then scores 0 everywhere): the
/// one normalization rule of every similarity path, host and device.
pub fn scaled_inv_norm(v: &[f32], factor: f32) -> f32 {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        (f64::from(factor) / norm) as f32
    } else {
        0.0
    }
}

/// L2-normalizes each row of `[rows, dim]` in place (sum of squares in f64). An all-zero row stays zero.
pub fn normalize_rows(data: &mut [f32], dim: usize) {
    if dim == 0 {
        return;
    }
    for row in data.chunks_exact_mut(dim) {
        let inv = scaled_inv_norm(row, 1.0);
        if inv > 0.0 {
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// Checks that `a` and `b` hold `[rows_a, dim]` and `[rows_b, dim]` values (every similarity backend's contract).
pub(crate) fn check_pair(
    a: &[f32],
    rows_a: usize,
    b: &[f32],
    rows_b: usize,
    dim: usize,
) -> Result<()> {
    if a.len() != rows_a * dim || b.len() != rows_b * dim {
        return Err(Error::Shape(format!(
            "similarity of [{rows_a}, {dim}] and [{rows_b}, {dim}] given {} and {} values",
            a.len(),
            b.len()
        )));
    }
    Ok(())
}

/// `scale · normalize(a) · normalize(b)ᵀ`: `[rows_a, rows_b]` logits, the way CLIP scores image–text pairs.
pub fn scaled_cosine(
    a: &[f32],
    rows_a: usize,
    b: &[f32],
    rows_b: usize,
    dim: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    check_pair(a, rows_a, b, rows_b, dim)?;
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    normalize_rows(&mut a, dim);
    normalize_rows(&mut b, dim);
    let mut out = Vec::with_capacity(rows_a * rows_b);
    for ra in a.chunks_exact(dim.max(1)).take(rows_a) {
        for rb in b.chunks_exact(dim.max(1)).take(rows_b) {
            let dot: f64 = ra
                .iter()
                .zip(rb)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum();
            out.push(scale * dot as f32);
        }
    }
    Ok(out)
}

/// The logistic sigmoid 1 / (1 + e^−x) in f64 (SigLIP's per-pair probability): no overflow for any finite x.
pub fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(x)).exp())) as f32
}

/// Softmax of each row of `[rows, cols]`, in f64 with the row maximum subtracted.
pub fn softmax_rows(data: &[f32], cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for row in data.chunks_exact(cols.max(1)) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let exps: Vec<f64> = row.iter().map(|&v| f64::from(v - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        out.extend(exps.iter().map(|e| (e / sum) as f32));
    }
    out
}
