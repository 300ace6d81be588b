//! numpy in and out. Inputs are checked (dtype, dimensions, C order) and copied while the GIL is held, so the
//! computation never reads memory another Python thread may change or free. Outputs are new arrays.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use crate::errors;

/// A C-contiguous float32 array's values and shape. `what` names the argument in errors.
pub fn f32_values(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<f32>, Vec<usize>)> {
    let arr = obj.cast::<numpy::PyArrayDyn<f32>>().map_err(|_| {
        errors::input(format!(
            "{what} must be a numpy float32 array (got {})",
            describe(obj)
        ))
    })?;
    let values = c_order_copy(arr, what)?;
    Ok((values, arr.shape().to_vec()))
}

/// A copy of a C-contiguous array's values; `what` names it in errors.
fn c_order_copy<T: numpy::Element + Copy>(
    arr: &Bound<'_, numpy::PyArrayDyn<T>>,
    what: &str,
) -> PyResult<Vec<T>> {
    let ro = arr
        .try_readonly()
        .map_err(|e| errors::input(format!("{what}: {e}")))?;
    // as_slice also takes a Fortran-ordered array (in its memory order): only C order is row-major.
    ro.as_slice()
        .ok()
        .filter(|_| arr.is_c_contiguous())
        .map(<[T]>::to_vec)
        .ok_or_else(|| {
            errors::input(format!(
                "{what} must be C-contiguous (use numpy.ascontiguousarray)"
            ))
        })
}

/// A `[rows, dim]` float32 matrix (one 1-D vector is one row).
pub fn f32_matrix(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<f32>, usize, usize)> {
    let (values, shape) = f32_values(obj, what)?;
    let (rows, dim) = match shape[..] {
        [d] => (1, d),
        [r, d] => (r, d),
        _ => {
            return Err(errors::input(format!(
                "{what} must be 1-D or 2-D [rows, dim], not {}-D",
                shape.len()
            )))
        }
    };
    if rows == 0 || dim == 0 {
        return Err(errors::input(format!("{what} is empty ({shape:?})")));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(errors::input(format!("{what} holds NaN or infinity")));
    }
    Ok((values, rows, dim))
}

/// A short description of a Python object for an error message: its type, and a numpy array's dtype and shape.
pub fn describe(obj: &Bound<'_, PyAny>) -> String {
    let ty = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    match obj.cast::<numpy::PyUntypedArray>() {
        Ok(a) => format!(
            "array of {} with shape {:?}",
            a.dtype().str().map(|s| s.to_string()).unwrap_or_default(),
            a.shape()
        ),
        Err(_) => ty,
    }
}

/// A `[rows, cols]` numpy array (float32 embeddings and scores, int64 ids) from row-major values.
pub fn matrix<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    PyArray1::from_vec(py, data).reshape([rows, cols])
}

/// One image argument, copied out of its Python object.
pub enum ImageInput {
    /// A file path (`str` or `os.PathLike`).
    Path(std::path::PathBuf),
    /// An encoded file's bytes (`bytes`, `bytearray`).
    Encoded(Vec<u8>),
    /// Decoded pixels: an `[H, W, 3]` (RGB), `[H, W, 4]` (RGBA) or `[H, W]` (grey) uint8 array.
    Pixels(image::DynamicImage),
}

impl ImageInput {
    pub fn extract(obj: &Bound<'_, PyAny>, i: usize) -> PyResult<ImageInput> {
        if let Ok(s) = obj.cast::<PyString>() {
            return Ok(ImageInput::Path(s.to_cow()?.into_owned().into()));
        }
        if let Ok(b) = obj.cast::<PyBytes>() {
            return Ok(ImageInput::Encoded(b.as_bytes().to_vec()));
        }
        if let Ok(b) = obj.cast::<PyByteArray>() {
            return Ok(ImageInput::Encoded(b.to_vec()));
        }
        if let Ok(a) = obj.cast::<numpy::PyArrayDyn<u8>>() {
            return pixels(a, i).map(ImageInput::Pixels);
        }
        if obj.hasattr("__fspath__")? {
            let p = obj.call_method0("__fspath__")?;
            if let Ok(s) = p.cast::<PyString>() {
                return Ok(ImageInput::Path(s.to_cow()?.into_owned().into()));
            }
        }
        Err(errors::input(format!(
            "image {i}: expected a path (str or os.PathLike), encoded bytes, or a uint8 [H, W, 3|4] or [H, W] \
             array, got {}",
            describe(obj)
        )))
    }
}

fn pixels(a: &Bound<'_, numpy::PyArrayDyn<u8>>, i: usize) -> PyResult<image::DynamicImage> {
    let shape = a.shape().to_vec();
    let (h, w, c) = match shape[..] {
        [h, w] => (h, w, 1),
        [h, w, c @ (3 | 4)] => (h, w, c),
        _ => {
            return Err(errors::input(format!(
                "image {i}: a uint8 array must be [H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W] (grey), not {shape:?}"
            )))
        }
    };
    let data = c_order_copy(a, &format!("image {i}"))?;
    let too_big = || errors::input(format!("image {i}: {w}x{h} is too large"));
    let (w, h) = (
        u32::try_from(w).map_err(|_| too_big())?,
        u32::try_from(h).map_err(|_| too_big())?,
    );
    if w == 0 || h == 0 {
        return Err(errors::input(format!("image {i} is empty ({shape:?})")));
    }
    // PIL's Image.fromarray modes: "L", "RGB", "RGBA"; the buffer sizes match the shape by construction.
    let img = match c {
        1 => image::GrayImage::from_raw(w, h, data).map(image::DynamicImage::ImageLuma8),
        3 => image::RgbImage::from_raw(w, h, data).map(image::DynamicImage::ImageRgb8),
        _ => image::RgbaImage::from_raw(w, h, data).map(image::DynamicImage::ImageRgba8),
    };
    img.ok_or_else(too_big)
}

/// Copies the items of a Python sequence of images (a list, a tuple; not a lone str, bytes or array).
pub fn images(seq: &Bound<'_, PyAny>) -> PyResult<Vec<ImageInput>> {
    if seq.is_instance_of::<PyString>()
        || seq.is_instance_of::<PyBytes>()
        || seq.cast::<numpy::PyUntypedArray>().is_ok()
    {
        return Err(errors::input(
            "images must be a sequence (list or tuple) of images; wrap a single one in a list",
        ));
    }
    let mut out = Vec::new();
    for (i, item) in seq.try_iter()?.enumerate() {
        out.push(ImageInput::extract(&item?, i)?);
    }
    if out.is_empty() {
        return Err(errors::to_py(cliprt::Error::EmptyInput("no images given")));
    }
    Ok(out)
}

/// Copies a Python sequence of str (not a lone str).
pub fn texts(seq: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if seq.is_instance_of::<PyString>() {
        return Err(errors::input(
            "texts must be a sequence of str; wrap a single one in a list",
        ));
    }
    let mut out = Vec::new();
    for (i, item) in seq.try_iter()?.enumerate() {
        let item = item?;
        let s = item
            .cast::<PyString>()
            .map_err(|_| errors::input(format!("text {i} is {}, not str", describe(&item))))?;
        out.push(s.to_cow()?.into_owned());
    }
    if out.is_empty() {
        return Err(errors::to_py(cliprt::Error::EmptyInput("no texts given")));
    }
    Ok(out)
}
