//! The library's error type: every message names the input at fault.

use std::path::PathBuf;

/// Errors returned by the mplug library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file or value is malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// A checkpoint is unreadable, lacks a tensor, or holds one of the wrong shape.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The model was asked for something its loaded parts cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The model computed NaN or infinite values: its weights or configuration are broken
    /// (the string says which output).
    #[error(
        "the model computed non-finite values (NaN or infinity) in {0}: its weights or configuration are broken"
    )]
    NonFinite(String),
    /// Inputs to a model call are inconsistent (shapes, lengths, ids out of range).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Text, an image or a video could not be turned into model input.
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    /// A metric could not be computed from its inputs.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Errs with [`Error::NonFinite`] naming `what` unless every value is finite.
pub(crate) fn ensure_finite<'a>(
    values: impl IntoIterator<Item = &'a f32>,
    what: &str,
) -> Result<()> {
    if values.into_iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite(what.into()))
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
}
