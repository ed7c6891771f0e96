//! Typed errors of the library. A user mistake is one clear line, never a panic.

/// Everything the library can refuse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that an op cannot combine.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A dtype an op does not support (yet).
    #[error("{op}: dtype {dtype:?} is not supported, use f32")]
    DType { op: &'static str, dtype: crate::tensor::DType },
    /// Inputs that live on different devices.
    #[error("{op}: inputs are on different devices ({a} and {b})")]
    DeviceMismatch { op: &'static str, a: crate::device::Device, b: crate::device::Device },
    /// A bad argument that is not a shape (e.g. zero groups, negative eps).
    #[error("{op}: {msg}")]
    Argument { op: &'static str, msg: String },
    /// Autograd misuse (backward on a non-scalar, nothing requires grad).
    #[error("backward: {0}")]
    Autograd(String),
    /// A CUDA device was asked for and cannot be used.
    #[error("--device cuda: {0}")]
    NoCuda(String),
    /// A CUDA driver or launch failure.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// An op needs its input on another device.
    #[error("{op}: expected a tensor on {expected}, got {got}")]
    WrongDevice { op: &'static str, expected: &'static str, got: crate::device::Device },
    /// A data or model file that cannot be used, with the file named.
    #[error("{path}: {msg}")]
    Data { path: String, msg: String },
    /// I/O with the path named.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for a shape error.
pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, msg: msg.into() })
}

/// Shorthand for an argument error.
pub(crate) fn arg_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Argument { op, msg: msg.into() })
}
