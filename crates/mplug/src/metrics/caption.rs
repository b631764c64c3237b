//! COCO caption evaluation: BLEU-1..4, ROUGE-L and CIDEr-D together, on
//! PTB-tokenized or raw captions, the way `pycocoevalcap` reports them.

use std::collections::BTreeMap;
use std::fmt::Debug;

use super::bleu::{Bleu, BleuScores};
use super::cider::CiderD;
use super::error::{MetricsError, Result};
use super::ptb::tokenize_caption;
use super::rouge::Rouge;

/// Corpus-level value of a metric plus its per-image values.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricScore {
    /// Corpus score (for ROUGE-L and CIDEr-D: the mean of `per_image`).
    pub corpus: f64,
    /// One score per image, in input order.
    pub per_image: Vec<f64>,
}

/// All COCO caption metrics of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionScores {
    /// BLEU-1..4 (corpus and per image).
    pub bleu: BleuScores,
    /// ROUGE-L (β = 1.2).
    pub rouge_l: MetricScore,
    /// CIDEr-D (n = 4, σ = 6).
    pub cider: MetricScore,
}

impl CaptionScores {
    /// Corpus scores under the names pycocoevalcap's `COCOEvalCap` uses
    /// (`Bleu_1`..`Bleu_4`, `ROUGE_L`, `CIDEr`).
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (k, v) in self.bleu.corpus.iter().enumerate() {
            m.insert(format!("Bleu_{}", k + 1), *v);
        }
        m.insert("ROUGE_L".to_string(), self.rouge_l.corpus);
        m.insert("CIDEr".to_string(), self.cider.corpus);
        m
    }
}

/// Evaluate already-tokenized captions: `candidates[i]` is scored against
/// `references[i]`. Tokens are whitespace-separated (see [`tokenize_caption`]).
///
/// Errors when the inputs are empty, misaligned, or an image has no reference.
pub fn evaluate_captions<C, R, S>(candidates: &[C], references: &[R]) -> Result<CaptionScores>
where
    C: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    Ok(CaptionScores {
        bleu: Bleu::default().compute(candidates, references)?,
        rouge_l: Rouge::default().compute(candidates, references)?,
        cider: CiderD::default().compute(candidates, references)?,
    })
}

/// PTB-tokenize raw candidates and references (as `PTBTokenizer` in
/// pycocoevalcap does), then [`evaluate_captions`].
pub fn evaluate_raw_captions<C, R, S>(candidates: &[C], references: &[R]) -> Result<CaptionScores>
where
    C: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    check_caption_inputs("captions", candidates, references)?;
    let cands: Vec<String> = candidates
        .iter()
        .map(|c| tokenize_caption(c.as_ref()))
        .collect();
    let refs: Vec<Vec<String>> = references
        .iter()
        .map(|rs| {
            rs.as_ref()
                .iter()
                .map(|r| tokenize_caption(r.as_ref()))
                .collect()
        })
        .collect();
    evaluate_captions(&cands, &refs)
}

/// Keyed variant of [`evaluate_captions`] (like pycocoevalcap's `gts`/`res`
/// dicts): images are processed in ascending key order, which is the order of
/// the `per_image` vectors. Both maps must have exactly the same keys.
pub fn evaluate_caption_map<K, C, R, S>(
    candidates: &BTreeMap<K, C>,
    references: &BTreeMap<K, R>,
) -> Result<CaptionScores>
where
    K: Ord + Debug,
    C: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    if let Some(k) = candidates.keys().find(|k| !references.contains_key(*k)) {
        return Err(MetricsError::IdMismatch {
            what: "captions",
            detail: format!("candidate id {k:?} has no references"),
        });
    }
    if let Some(k) = references.keys().find(|k| !candidates.contains_key(*k)) {
        return Err(MetricsError::IdMismatch {
            what: "captions",
            detail: format!("reference id {k:?} has no candidate"),
        });
    }
    let cands: Vec<&str> = candidates.values().map(|c| c.as_ref()).collect();
    let refs: Vec<Vec<&str>> = references
        .values()
        .map(|rs| rs.as_ref().iter().map(|r| r.as_ref()).collect())
        .collect();
    evaluate_captions(&cands, &refs)
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
