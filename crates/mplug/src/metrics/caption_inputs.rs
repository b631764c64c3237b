//! What the caption metrics (BLEU, ROUGE-L, CIDEr-D) share: the score type, the checks of
//! their inputs and Python's whitespace split. [`super::caption`] runs them together.

use super::error::{MetricsError, Result};

/// Corpus-level value of a metric plus its per-image values.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricScore {
    /// Corpus score (for ROUGE-L and CIDEr-D: the mean of `per_image`).
    pub corpus: f64,
    /// One score per image, in input order.
    pub per_image: Vec<f64>,
}

/// Validate aligned caption inputs: non-empty, same length, every image has
/// at least one reference.
pub(crate) fn check_caption_inputs<C, R, S>(
    what: &'static str,
    candidates: &[C],
    references: &[R],
) -> Result<()>
where
    R: AsRef<[S]>,
{
    if candidates.len() != references.len() {
        return Err(MetricsError::LengthMismatch {
            what,
            left: candidates.len(),
            right: references.len(),
        });
    }
    if candidates.is_empty() {
        return Err(MetricsError::Empty { what });
    }
    if let Some(index) = references.iter().position(|r| r.as_ref().is_empty()) {
        return Err(MetricsError::NoReferences { what, index });
    }
    Ok(())
}

/// Python's `str.split()` without arguments: split on runs of whitespace
/// (Unicode whitespace plus the ASCII separators U+001C..U+001F).
pub(crate) fn python_split(s: &str) -> Vec<&str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|t| !t.is_empty())
        .collect()
}

/// Arithmetic mean; callers guarantee a non-empty slice.
pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}
