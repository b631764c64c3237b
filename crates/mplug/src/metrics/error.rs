//! Error type shared by the evaluation metrics.

/// Why a metric could not be computed.
///
/// Every metric in [`crate::metrics`] validates its inputs up front and reports
/// problems through this enum instead of panicking or returning `NaN`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// The evaluated set is empty, so no average can be formed.
    #[error("{what}: nothing to evaluate (empty input)")]
    Empty {
        /// Which metric or input was empty.
        what: &'static str,
    },
    /// Two inputs that must be aligned have different lengths.
    #[error("{what}: length mismatch ({left} vs {right})")]
    LengthMismatch {
        /// Which inputs disagree.
        what: &'static str,
        /// Length of the first input.
        left: usize,
        /// Length of the second input.
        right: usize,
    },
    /// An item has no references / ground-truth answers.
    #[error("{what}: item {index} has no references")]
    NoReferences {
        /// Which metric.
        what: &'static str,
        /// Position (or id) of the offending item.
        index: usize,
    },
    /// An index (e.g. in a text-to-image map) points outside the score matrix.
    #[error("{what}: index {index} out of range (size {size})")]
    IndexOutOfRange {
        /// Which mapping holds the bad index.
        what: &'static str,
        /// The offending index.
        index: usize,
        /// The valid range is `0..size`.
        size: usize,
    },
    /// A score or coordinate is NaN (or otherwise non-finite where finite values are required).
    #[error("{what}: non-finite value at {index}")]
    NonFinite {
        /// Which input holds the value.
        what: &'static str,
        /// Position of the value (row-major for matrices).
        index: usize,
    },
    /// The two sides of a keyed evaluation do not cover the same ids.
    #[error("{what}: ids do not match: {detail}")]
    IdMismatch {
        /// Which metric.
        what: &'static str,
        /// Human-readable description of the mismatch.
        detail: String,
    },
    /// A parameter is outside its valid domain (e.g. n-gram order 0).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}

/// Convenience alias used throughout the metrics module.
pub type Result<T> = std::result::Result<T, MetricsError>;
