//! Minimal .npy (format 1.0) reading and writing of little-endian f32 arrays, written atomically
//! ([`crate::files::Outputs`]).

use std::path::Path;

use crate::error::{Error, Result};

/// Serializes an f32 array of `shape` as .npy bytes.
pub fn to_npy_bytes(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes an f32 array as .npy, atomically.
pub fn write_npy(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    debug_assert_eq!(shape.iter().product::<usize>(), data.len());
    crate::files::write_atomic(path, &to_npy_bytes(data, shape))
}

/// Reads a little-endian f32 (`<f4`) or f64 (`<f8`) C-order .npy file as f32 values with its shape.
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = crate::files::read_limited(path, crate::limits::MAX_NPY_BYTES, ".npy")?;
    let bad = |msg: &str| Error::InvalidArgument(format!("{}: {msg}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran-order arrays are not supported"));
    }
    let width: usize = if header.contains("'<f4'") {
        4
    } else if header.contains("'<f8'") {
        8
    } else {
        return Err(bad("dtype is not <f4 or <f8"));
    };
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in header"))?;
    let shape: Vec<usize> = shape_text
        .trim_start_matches([' ', '('])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let count = shape
        .iter()
        .try_fold(width, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad("shape overflows"))?;
    let body = &bytes[start + header_len..];
    if body.len() != count {
        return Err(bad("data size does not match shape"));
    }
    let data = if width == 4 {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        body.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    Ok((data, shape))
}
