//! CIDEr-D exactly as `pycocoevalcap.cider.Cider` computes it.
//!
//! Reproduced details of the reference `CiderScorer`:
//! * document frequency `df(g)` = number of images whose *references* contain
//!   n-gram `g` (computed over the evaluated set only);
//! * `ref_len = ln(number of images)` and the tf-idf weight of an n-gram with
//!   term frequency `tf` is `tf · (ref_len − ln(max(1, df)))`;
//! * per order `n`, the similarity to a reference is
//!   `Σ_g min(v_hyp(g), v_ref(g)) · v_ref(g) / (‖v_hyp‖·‖v_ref‖)` (the division
//!   is skipped when either norm is 0), times the Gaussian length penalty
//!   `exp(−δ²/(2σ²))`, σ = 6;
//! * the "length" entering δ is, as in the reference implementation, the
//!   number of **bigrams** of each sentence;
//! * the image score is the mean over orders, divided by the number of
//!   references, times 10; the corpus score is the mean over images.

use std::collections::HashMap;

use super::bleu::ngram_counts;
use super::caption_inputs::{check_caption_inputs, mean, python_split, MetricScore};
use super::error::{MetricsError, Result};

/// CIDEr-D scorer configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CiderD {
    /// Maximum n-gram order (4).
    pub n: usize,
    /// Standard deviation of the Gaussian length penalty (6.0).
    pub sigma: f64,
}

impl Default for CiderD {
    fn default() -> Self {
        Self { n: 4, sigma: 6.0 }
    }
}

/// tf-idf vector of one sentence, split by n-gram order.
struct TfIdf<'a> {
    vec: Vec<HashMap<Vec<&'a str>, f64>>,
    norm: Vec<f64>,
    length: f64,
}

impl CiderD {
    /// Score `candidates[i]` against `references[i]` for every image `i`.
    ///
    /// Errors when the inputs are empty, misaligned, an image has no
    /// reference, `n == 0` or `sigma` is not a positive finite number.
    pub fn compute<C, R, S>(&self, candidates: &[C], references: &[R]) -> Result<MetricScore>
    where
        C: AsRef<str>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        if self.n == 0 {
            return Err(MetricsError::InvalidParameter(
                "CIDEr order n must be >= 1".into(),
            ));
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(MetricsError::InvalidParameter(format!(
                "CIDEr sigma must be positive and finite, got {}",
                self.sigma
            )));
        }
        check_caption_inputs("CIDEr", candidates, references)?;
        let n = self.n;

        let ctest: Vec<HashMap<Vec<&str>, usize>> = candidates
            .iter()
            .map(|c| ngram_counts(&python_split(c.as_ref()), n))
            .collect();
        let crefs: Vec<Vec<HashMap<Vec<&str>, usize>>> = references
            .iter()
            .map(|rs| {
                rs.as_ref()
                    .iter()
                    .map(|r| ngram_counts(&python_split(r.as_ref()), n))
                    .collect()
            })
            .collect();

        // Document frequency over the references of each image.
        let mut df: HashMap<&[&str], f64> = HashMap::new();
        for refs in &crefs {
            let mut seen: std::collections::HashSet<&[&str]> = std::collections::HashSet::new();
            for r in refs {
                for g in r.keys() {
                    seen.insert(g.as_slice());
                }
            }
            for g in seen {
                *df.entry(g).or_insert(0.0) += 1.0;
            }
        }
        let ref_len = (crefs.len() as f64).ln();

        let to_vec = |cnts| counts_to_vec(cnts, &df, ref_len, n);

        let two_sigma_sq = 2.0 * self.sigma * self.sigma;
        let mut per_image = Vec::with_capacity(ctest.len());
        for (test, refs) in ctest.iter().zip(&crefs) {
            let hyp = to_vec(test);
            let mut score = vec![0.0f64; n];
            for r in refs {
                let rv = to_vec(r);
                let delta = hyp.length - rv.length;
                let penalty = (-(delta * delta) / two_sigma_sq).exp();
                for (k, acc) in score.iter_mut().enumerate() {
                    let mut val = 0.0f64;
                    for (g, &wh) in &hyp.vec[k] {
                        let wr = rv.vec[k].get(g).copied().unwrap_or(0.0);
                        val += wh.min(wr) * wr;
                    }
                    if hyp.norm[k] != 0.0 && rv.norm[k] != 0.0 {
                        val /= hyp.norm[k] * rv.norm[k];
                    }
                    *acc += val * penalty;
                }
            }
            let avg = score.iter().sum::<f64>() / n as f64;
            per_image.push(avg / refs.len() as f64 * 10.0);
        }
        Ok(MetricScore {
            corpus: mean(&per_image),
            per_image,
        })
    }
}

/// Map n-gram counts to tf-idf weights (reference `counts2vec`).
fn counts_to_vec<'a>(
    cnts: &HashMap<Vec<&'a str>, usize>,
    df: &HashMap<&[&str], f64>,
    ref_len: f64,
    n: usize,
) -> TfIdf<'a> {
    let mut vec: Vec<HashMap<Vec<&'a str>, f64>> = vec![HashMap::new(); n];
    let mut norm = vec![0.0f64; n];
    let mut length = 0usize;
    for (g, &tf) in cnts {
        let d = df.get(g.as_slice()).copied().unwrap_or(0.0).max(1.0).ln();
        let k = g.len() - 1;
        let w = tf as f64 * (ref_len - d);
        norm[k] += w * w;
        vec[k].insert(g.clone(), w);
        // As in the reference: the "length" is the number of bigrams.
        if k == 1 {
            length += tf;
        }
    }
    TfIdf {
        vec,
        norm: norm.into_iter().map(f64::sqrt).collect(),
        length: length as f64,
    }
}

/// CIDEr-D with n = 4, σ = 6; see [`CiderD::compute`].
pub fn cider_d<C, R, S>(candidates: &[C], references: &[R]) -> Result<MetricScore>
where
    C: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    CiderD::default().compute(candidates, references)
}
