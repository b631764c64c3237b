//! COCO caption evaluation: BLEU-1..4, ROUGE-L and CIDEr-D together, on
//! PTB-tokenized or raw captions, the way `pycocoevalcap` reports them.

use std::collections::BTreeMap;
use std::fmt::Debug;

use super::bleu::{Bleu, BleuScores};
use super::caption_inputs::{check_caption_inputs, MetricScore};
use super::cider::CiderD;
use super::error::{MetricsError, Result};
use super::ptb::tokenize_caption;
use super::rouge::Rouge;

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
