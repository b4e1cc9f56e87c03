//! Typed errors of the engine. Every fallible public function returns [`Result`].
//!
//! Messages name the thing at fault (file, tensor, field, shader, operation) and, where it
//! applies, what was expected and what was found, so a user can act without a debugger.

use std::path::PathBuf;

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A backend name that is not one of `auto`, `vulkan`, `metal`, `dx12`, `gl`.
    #[error("unknown backend '{0}': expected one of auto, vulkan, metal, dx12, gl")]
    UnknownBackend(String),

    /// No adapter exists for the requested backend(s).
    #[error("no GPU adapter found for backend '{backend}'{hint}")]
    NoAdapter { backend: String, hint: String },

    /// The adapter selector (index or name substring) matched nothing.
    #[error("no adapter matches '{selector}'; available adapters:\n{available}")]
    AdapterNotFound { selector: String, available: String },

    /// The driver refused to create a device.
    #[error("could not create a device on adapter '{adapter}': {message}")]
    RequestDevice { adapter: String, message: String },

    /// A WGSL shader failed to parse or validate.
    #[error("shader '{shader}' is invalid:\n{message}")]
    Shader { shader: String, message: String },

    /// A shader or entry point that the registry does not hold.
    #[error("unknown shader '{shader}' (entry point '{entry}'): not in the kernel registry")]
    UnknownShader { shader: String, entry: String },

    /// wgpu reported a validation error while doing `operation`.
    #[error("GPU validation error while {operation}: {message}")]
    Validation { operation: String, message: String },

    /// The device ran out of memory while doing `operation`.
    #[error("GPU out of memory while {operation}")]
    OutOfMemory { operation: String },

    /// An internal driver/wgpu error while doing `operation`.
    #[error("GPU internal error while {operation}: {message}")]
    GpuInternal { operation: String, message: String },

    /// Waiting on the device failed (device lost, timeout).
    #[error("GPU device error while {operation}: {message}")]
    Device { operation: String, message: String },

    /// A tensor shape, dtype or length does not fit what an operation needs.
    #[error("{what}: expected {expected}, got {got}")]
    Mismatch {
        what: String,
        expected: String,
        got: String,
    },

    /// A request that exceeds what the adapter can do (limits, features).
    #[error("{what} exceeds the adapter's limits: {detail}")]
    Limit { what: String, detail: String },

    /// A problem with a file: missing, unreadable, truncated, corrupt, or invalid content.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    /// An invalid argument given by the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The model computed NaN or infinite logits or scores: weights or a config whose values
    /// are finite one by one but overflow together, or a restored state that does.
    #[error(
        "the model computed non-finite values ({what}): its weights or config, or a state \
         restored into the session, give NaN or infinity"
    )]
    NonFinite { what: String },
}

impl Error {
    /// Shorthand for [`Error::Mismatch`].
    pub fn mismatch(
        what: impl Into<String>,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Display,
    ) -> Self {
        Error::Mismatch {
            what: what.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    /// Shorthand for [`Error::File`].
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Converts a wgpu error caught by an error scope while doing `operation`.
    pub(crate) fn from_wgpu(operation: &str, error: wgpu::Error) -> Self {
        let operation = operation.to_string();
        match error {
            wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory { operation },
            wgpu::Error::Validation { description, .. } => Error::Validation {
                operation,
                message: description,
            },
            wgpu::Error::Internal { description, .. } => Error::GpuInternal {
                operation,
                message: description,
            },
        }
    }
}

/// Whether `e`, or an error in its chain of sources, is a `T`.
pub(crate) fn caused_by<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<T>() {
            return true;
        }
        cause = c.source();
    }
    false
}
