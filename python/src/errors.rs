//! cliprt's errors as Python exceptions: one base class, `CliprtError`, and a subclass per kind of cause.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    cliprt,
    CliprtError,
    PyException,
    "Base class of every error cliprt raises."
);
create_exception!(
    cliprt,
    ModelError,
    CliprtError,
    "The model folder cannot be loaded: a missing or malformed file, an unsupported checkpoint."
);
create_exception!(
    cliprt,
    ImageError,
    CliprtError,
    "An image cannot be decoded, or is over the size limits."
);
create_exception!(
    cliprt,
    InputError,
    CliprtError,
    "A bad argument: an array of the wrong dtype, shape or order, an empty batch, an over-limit request."
);
create_exception!(
    cliprt,
    IndexFileError,
    CliprtError,
    "An index or shard output cannot be read, written or locked."
);
create_exception!(
    cliprt,
    DeviceError,
    CliprtError,
    "The device is unavailable (no GPU, driver or NVRTC) or failed."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CliprtError", py.get_type::<CliprtError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("ImageError", py.get_type::<ImageError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("IndexFileError", py.get_type::<IndexFileError>())?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    Ok(())
}

/// The Python exception of a cliprt error, with cliprt's own message.
pub fn to_py(e: cliprt::Error) -> PyErr {
    use cliprt::Error as E;
    let msg = e.to_string();
    match e {
        E::MissingFile { .. }
        | E::Config { .. }
        | E::UnsupportedModel(_)
        | E::Safetensors { .. }
        | E::MissingTensor(_)
        | E::TensorShape { .. }
        | E::UnsupportedDtype { .. }
        | E::Tokenizer(_) => ModelError::new_err(msg),
        E::Image { .. } | E::ImageTooLarge { .. } => ImageError::new_err(msg),
        E::DeviceUnavailable(_) | E::Cuda(_) | E::KernelCompile { .. } => DeviceError::new_err(msg),
        E::Locked(_) => IndexFileError::new_err(msg),
        E::Limit { .. }
        | E::EmptyInput(_)
        | E::InvalidText { .. }
        | E::Shape(_)
        | E::InvalidArgument(_)
        | E::NonFinite(_) => InputError::new_err(msg),
        _ => CliprtError::new_err(msg),
    }
}

/// An [`InputError`] with `msg`.
pub fn input(msg: impl Into<String>) -> PyErr {
    InputError::new_err(msg.into())
}
