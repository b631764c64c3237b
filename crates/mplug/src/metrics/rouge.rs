//! ROUGE-L exactly as `pycocoevalcap.rouge.Rouge` computes it.
//!
//! Per image: tokens are obtained with Python's `str.split(" ")` (so repeated
//! spaces yield empty tokens, as in the reference); for every reference the
//! LCS length gives a precision `lcs / |cand|` and a recall `lcs / |ref|`; the
//! maxima of precision and recall over the references are combined into
//! `F = (1 + β²)·P·R / (R + β²·P)` (β = 1.2), or 0 when either maximum is 0.
//! The corpus score is the plain mean over images.

use super::caption_inputs::{check_caption_inputs, mean, MetricScore};
use super::error::{MetricsError, Result};

/// ROUGE-L scorer configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rouge {
    /// Recall weight β of the F-measure (1.2 in pycocoevalcap).
    pub beta: f64,
}

impl Default for Rouge {
    fn default() -> Self {
        Self { beta: 1.2 }
    }
}

/// Length of the longest common subsequence of two token sequences.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if short.is_empty() {
        return 0;
    }
    // Single rolling row over the shorter sequence.
    let mut prev = vec![0usize; short.len() + 1];
    let mut cur = vec![0usize; short.len() + 1];
    for x in long {
        for (j, y) in short.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[short.len()]
}

impl Rouge {
    /// ROUGE-L of one candidate against its references (reference `calc_score`).
    ///
    /// Errors when `references` is empty.
    pub fn score_one<S: AsRef<str>>(&self, candidate: &str, references: &[S]) -> Result<f64> {
        if references.is_empty() {
            return Err(MetricsError::NoReferences {
                what: "ROUGE-L",
                index: 0,
            });
        }
        Ok(self.score_unchecked(candidate, references))
    }

    fn score_unchecked<S: AsRef<str>>(&self, candidate: &str, references: &[S]) -> f64 {
        let cand: Vec<&str> = candidate.split(' ').collect();
        let mut prec_max = f64::NEG_INFINITY;
        let mut rec_max = f64::NEG_INFINITY;
        for r in references {
            let toks: Vec<&str> = r.as_ref().split(' ').collect();
            let lcs = lcs_len(&toks, &cand) as f64;
            prec_max = prec_max.max(lcs / cand.len() as f64);
            rec_max = rec_max.max(lcs / toks.len() as f64);
        }
        if prec_max != 0.0 && rec_max != 0.0 {
            let b2 = self.beta * self.beta;
            ((1.0 + b2) * prec_max * rec_max) / (rec_max + b2 * prec_max)
        } else {
            0.0
        }
    }

    /// Per-image ROUGE-L and their mean.
    ///
    /// Errors when the inputs are empty, misaligned, or an image has no reference.
    pub fn compute<C, R, S>(&self, candidates: &[C], references: &[R]) -> Result<MetricScore>
    where
        C: AsRef<str>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        check_caption_inputs("ROUGE-L", candidates, references)?;
        let per_image: Vec<f64> = candidates
            .iter()
            .zip(references)
            .map(|(c, r)| self.score_unchecked(c.as_ref(), r.as_ref()))
            .collect();
        Ok(MetricScore {
            corpus: mean(&per_image),
            per_image,
        })
    }
}

/// ROUGE-L with β = 1.2; see [`Rouge::compute`].
pub fn rouge_l<C, R, S>(candidates: &[C], references: &[R]) -> Result<MetricScore>
where
    C: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    Rouge::default().compute(candidates, references)
}
