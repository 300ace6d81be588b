//! The one error type of cliprt. Every failure on an input path is one of these variants, never a panic.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while loading a model or running it on user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file or folder the caller named does not exist.
    #[error("{0}: no such file or folder")]
    NotFound(PathBuf),
    /// The model folder lacks a file the model needs.
    #[error("{dir}: missing {file}{hint}")]
    MissingFile {
        dir: PathBuf,
        file: &'static str,
        hint: &'static str,
    },
    /// config.json (or preprocessor_config.json) is not valid JSON or has a wrong or missing field.
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    /// The checkpoint is not a CLIP model cliprt can run.
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// A safetensors file is truncated, has a garbage header, or is otherwise unreadable.
    #[error("{path}: malformed safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    /// A tensor the model needs is absent from the checkpoint.
    #[error("checkpoint has no tensor `{0}`")]
    MissingTensor(String),
    /// A tensor has a shape other than the one the config implies.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A tensor is stored in a dtype other than f32, f16 or bf16.
    #[error("tensor `{name}` has unsupported dtype {dtype} (cliprt reads F32, F16 and BF16)")]
    UnsupportedDtype { name: String, dtype: String },
    /// tokenizer.json is missing, malformed, or tokenization failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An image file could not be decoded.
    #[error("{path}: cannot decode image: {msg}")]
    Image { path: PathBuf, msg: String },
    /// An image is larger than cliprt accepts (checked from the header, before decoding).
    #[error(
        "{path}: image is {width}x{height}, over the limit of {limit} (decompression-bomb guard)"
    )]
    ImageTooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: &'static str,
    },
    /// An input or argument asks for more than a documented resource limit (src/limits.rs).
    #[error("{what} is {value}, over the limit of {limit}")]
    Limit {
        what: String,
        value: String,
        limit: String,
    },
    /// An embedding, score or weight is NaN or infinite: the weights or inputs overflow f32, or a file is corrupt.
    /// cliprt never writes such a value.
    #[error("non-finite values (NaN or infinity): {0}")]
    NonFinite(String),
    /// A path names a FIFO, device, socket or folder where a regular file is needed (reading it could block forever).
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
    /// Another process holds the lock of an index being built.
    #[error("{0}: another cliprt run is building this index (its journal is locked)")]
    Locked(PathBuf),
    /// A batch of images or texts was empty.
    #[error("empty input: {0}")]
    EmptyInput(&'static str),
    /// A text input was not valid UTF-8.
    #[error("{path}: text is not valid UTF-8 (line {line})")]
    InvalidText { path: PathBuf, line: usize },
    /// Tensor sizes passed to an operation do not agree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A caller-supplied argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The requested device is not available in this build or on this machine.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// A CUDA driver call failed on a device that was available (out of memory, launch failure, …).
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// NVRTC rejected a kernel; `log` is the compiler's output.
    #[error("kernel {kernel} failed to compile:\n{log}")]
    KernelCompile { kernel: String, log: String },
}

impl Error {
    /// What every CUDA entry point of a build without the `cuda` feature returns: the one place this is said.
    pub fn cuda_not_built() -> Self {
        Error::DeviceUnavailable(
            "this build of cliprt has no CUDA support (feature `cuda` is off)".into(),
        )
    }

    /// Wraps an `io::Error` with the path it concerns; a missing file becomes [`Error::NotFound`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(path)
        } else {
            Error::Io { path, source }
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
