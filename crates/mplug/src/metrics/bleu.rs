//! BLEU-1..n exactly as `pycocoevalcap.bleu.Bleu` computes it.
//!
//! Inputs are captions that are already tokenized (tokens separated by
//! whitespace), normally the output of [`crate::metrics::ptb::tokenize_caption`].
//!
//! Reproduced details of the reference `BleuScorer` (option `"closest"`):
//! * n-gram counts of the candidate are clipped by the maximum count of that
//!   n-gram in any single reference;
//! * the effective reference length of each candidate is the reference length
//!   closest to the candidate length (ties go to the shorter reference);
//! * corpus BLEU-k is the geometric mean of the corpus-level modified
//!   precisions, each computed as `(correct + 1e-15) / (guess + 1e-9)`, times
//!   the brevity penalty `exp(1 - r/c)` when `c < r` (again with the
//!   `1e-15`/`1e-9` guards on the ratio);
//! * per-image BLEU-k uses the same formula on the image's own counts.

use std::collections::HashMap;

use super::caption_inputs::{check_caption_inputs, python_split};
use super::error::{MetricsError, Result};

/// Guard added to numerators (`tiny` in `bleu_scorer.py`).
const TINY: f64 = 1e-15;
/// Guard added to denominators (`small` in `bleu_scorer.py`).
const SMALL: f64 = 1e-9;

/// BLEU scorer configuration (maximum n-gram order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bleu {
    /// Maximum n-gram order; COCO reports BLEU-1..4 (`n = 4`).
    pub n: usize,
}

impl Default for Bleu {
    fn default() -> Self {
        Self { n: 4 }
    }
}

/// Corpus-level and per-image BLEU-1..n.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScores {
    /// `corpus[k]` is corpus BLEU-(k+1).
    pub corpus: Vec<f64>,
    /// `per_image[k][i]` is BLEU-(k+1) of image `i` (input order).
    pub per_image: Vec<Vec<f64>>,
}

/// Sufficient statistics of one candidate against its references.
#[derive(Debug, Clone)]
struct Cooked {
    testlen: usize,
    reflen: usize,
    guess: Vec<usize>,
    correct: Vec<usize>,
}

/// Count all n-grams of order `1..=n` of `words`.
pub(crate) fn ngram_counts<'a>(words: &[&'a str], n: usize) -> HashMap<Vec<&'a str>, usize> {
    let mut counts = HashMap::new();
    for k in 1..=n {
        if words.len() < k {
            break;
        }
        for window in words.windows(k) {
            *counts.entry(window.to_vec()).or_insert(0) += 1;
        }
    }
    counts
}

impl Bleu {
    /// Create a scorer for BLEU-1..`n`.
    pub fn new(n: usize) -> Self {
        Self { n }
    }

    /// Score `candidates[i]` against `references[i]` for every image `i`.
    ///
    /// Errors when the inputs are empty, misaligned, an image has no reference,
    /// or `n == 0`.
    pub fn compute<C, R, S>(&self, candidates: &[C], references: &[R]) -> Result<BleuScores>
    where
        C: AsRef<str>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        if self.n == 0 {
            return Err(MetricsError::InvalidParameter(
                "BLEU order n must be >= 1".into(),
            ));
        }
        check_caption_inputs("BLEU", candidates, references)?;
        let n = self.n;
        let cooked: Vec<Cooked> = candidates
            .iter()
            .zip(references)
            .map(|(c, r)| self.cook(c.as_ref(), r.as_ref()))
            .collect();

        let mut per_image: Vec<Vec<f64>> = vec![Vec::with_capacity(cooked.len()); n];
        let mut total_testlen = 0usize;
        let mut total_reflen = 0usize;
        let mut total_guess = vec![0usize; n];
        let mut total_correct = vec![0usize; n];
        for c in &cooked {
            total_testlen += c.testlen;
            total_reflen += c.reflen;
            for k in 0..n {
                total_guess[k] += c.guess[k];
                total_correct[k] += c.correct[k];
            }
            let scores = bleu_from_counts(&c.correct, &c.guess, c.testlen, c.reflen);
            for (k, s) in scores.into_iter().enumerate() {
                per_image[k].push(s);
            }
        }
        let corpus = bleu_from_counts(&total_correct, &total_guess, total_testlen, total_reflen);
        Ok(BleuScores { corpus, per_image })
    }

    fn cook<S: AsRef<str>>(&self, candidate: &str, references: &[S]) -> Cooked {
        let n = self.n;
        let mut reflens = Vec::with_capacity(references.len());
        let mut maxcounts: HashMap<Vec<&str>, usize> = HashMap::new();
        for r in references {
            let words = python_split(r.as_ref());
            reflens.push(words.len());
            for (g, c) in ngram_counts(&words, n) {
                let e = maxcounts.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        let words = python_split(candidate);
        let testlen = words.len();
        // 'closest': min over (|l - testlen|, l), i.e. ties resolved to the shorter length.
        let reflen = reflens
            .iter()
            .copied()
            .min_by_key(|&l| (l.abs_diff(testlen), l))
            .unwrap_or(0);
        let guess = (1..=n).map(|k| (testlen + 1).saturating_sub(k)).collect();
        let mut correct = vec![0usize; n];
        for (g, c) in ngram_counts(&words, n) {
            let m = maxcounts.get(&g).copied().unwrap_or(0);
            correct[g.len() - 1] += c.min(m);
        }
        Cooked {
            testlen,
            reflen,
            guess,
            correct,
        }
    }
}

/// Cumulative BLEU-1..n from clipped matches, guesses and lengths.
fn bleu_from_counts(correct: &[usize], guess: &[usize], testlen: usize, reflen: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(correct.len());
    let mut prod = 1.0f64;
    for (k, (&c, &g)) in correct.iter().zip(guess).enumerate() {
        prod *= (c as f64 + TINY) / (g as f64 + SMALL);
        out.push(prod.powf(1.0 / (k as f64 + 1.0)));
    }
    let ratio = (testlen as f64 + TINY) / (reflen as f64 + SMALL);
    if ratio < 1.0 {
        let bp = (1.0 - 1.0 / ratio).exp();
        for s in &mut out {
            *s *= bp;
        }
    }
    out
}

/// BLEU-1..4 with the COCO settings; see [`Bleu::compute`].
pub fn bleu<C, R, S>(candidates: &[C], references: &[R]) -> Result<BleuScores>
where
    C: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    Bleu::default().compute(candidates, references)
}
