//! Errors of an evaluation run: each names the file (and, for annotations, the entry) at fault.

use std::path::PathBuf;

/// Errors returned by [`crate::eval`].
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// An annotation or answer-list file is unreadable or malformed.
    #[error(transparent)]
    Annotation(#[from] crate::data::annotations::AnnotationError),
    /// A file of an earlier run in the output folder cannot be resumed from.
    #[error("{path}: {msg}")]
    Output {
        /// The file in the output folder.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The evaluation options are inconsistent.
    #[error("{0}")]
    Options(String),
    /// The model failed on some samples (an unreadable image, an empty text, ...).
    #[error("{what}: {source}")]
    Samples {
        /// The samples of the failing batch (ids and files).
        what: String,
        /// The library error.
        #[source]
        source: crate::Error,
    },
    /// A model call failed outside any one sample (encoding the answer list, ...).
    #[error(transparent)]
    Model(#[from] crate::Error),
    /// A metric could not be computed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// The result type of [`crate::eval`].
pub type Result<T> = std::result::Result<T, EvalError>;

impl EvalError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<candle_core::Error> for EvalError {
    fn from(e: candle_core::Error) -> Self {
        EvalError::Model(e.into())
    }
}

impl From<crate::input::InputError> for EvalError {
    fn from(e: crate::input::InputError) -> Self {
        EvalError::Model(e.into())
    }
}
