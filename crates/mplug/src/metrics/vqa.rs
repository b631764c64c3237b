//! VQA accuracy as the official VQA v2 evaluation (`vqaEval.py`, shipped with
//! mPLUG as `vqaTools/vqaEval.py`) computes it, and exact-match accuracy for
//! video QA.
//!
//! Per question, exactly as the reference:
//! 1. the prediction has `\n`/`\t` replaced by spaces and is stripped, then goes
//!    through [`process_punctuation`] and [`process_digit_article`];
//! 2. only if the ten ground-truth answers are not all identical, each of them
//!    goes through [`process_punctuation`] (not through the digit/article
//!    step, and without stripping — a quirk of the reference kept on purpose);
//! 3. for each ground-truth answer `i`, `acc_i = min(1, #{j ≠ i : gt_j == pred} / 3)`;
//!    the question accuracy is the mean of the `acc_i`.
//!
//! Reports are in percent, rounded like Python's `round(x, n)` (the reference
//! uses `n = 2`; [`VqaEvaluator::with_precision`] changes it).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer, Serialize};

use super::error::{MetricsError, Result};

/// One VQA question with its ground-truth answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaQuestion {
    /// Question id (the key predictions refer to).
    pub question_id: u64,
    /// Ground-truth answers (10 in VQA v2). In JSON either plain strings or
    /// objects with an `answer` field, as in the official annotation files.
    #[serde(deserialize_with = "deserialize_answers")]
    pub answers: Vec<String>,
    /// Question type (e.g. `"what color is the"`), for the per-type breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_type: Option<String>,
    /// Answer type (`"yes/no"`, `"number"`, `"other"`), for the per-type breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_type: Option<String>,
}

/// A model's answer to one question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VqaPrediction {
    /// Id of the answered question.
    pub question_id: u64,
    /// Predicted answer text.
    pub answer: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnswerRepr {
    Plain(String),
    Object { answer: String },
}

fn deserialize_answers<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    let v: Vec<AnswerRepr> = Vec::deserialize(d)?;
    Ok(v.into_iter()
        .map(|a| match a {
            AnswerRepr::Plain(s) | AnswerRepr::Object { answer: s } => s,
        })
        .collect())
}

/// VQA accuracy report (all values in percent, rounded as configured).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaReport {
    /// Mean accuracy over all questions.
    pub overall: f64,
    /// Accuracy of every question.
    pub per_question: BTreeMap<u64, f64>,
    /// Mean accuracy per question type (only questions that have a type).
    pub per_question_type: BTreeMap<String, f64>,
    /// Mean accuracy per answer type (only questions that have a type).
    pub per_answer_type: BTreeMap<String, f64>,
}

/// Official VQA evaluator configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VqaEvaluator {
    /// Decimal places of the reported percentages (`None`: no rounding).
    pub precision: Option<u32>,
}

impl Default for VqaEvaluator {
    fn default() -> Self {
        Self { precision: Some(2) }
    }
}

impl VqaEvaluator {
    /// Evaluator reporting percentages rounded to `precision` decimals
    /// (`None` disables rounding).
    pub fn with_precision(precision: Option<u32>) -> Self {
        Self { precision }
    }

    /// Score `predictions` against `questions`.
    ///
    /// Errors when there are no questions, a question has no answers, ids are
    /// duplicated, or the prediction ids differ from the question ids (the
    /// reference asserts that both sets are equal).
    pub fn evaluate(
        &self,
        questions: &[VqaQuestion],
        predictions: &[VqaPrediction],
    ) -> Result<VqaReport> {
        if questions.is_empty() {
            return Err(MetricsError::Empty { what: "VQA" });
        }
        let mut preds: HashMap<u64, &str> = HashMap::with_capacity(predictions.len());
        for p in predictions {
            if preds.insert(p.question_id, &p.answer).is_some() {
                return Err(MetricsError::IdMismatch {
                    what: "VQA",
                    detail: format!("duplicate prediction for question {}", p.question_id),
                });
            }
        }
        let mut seen = std::collections::HashSet::with_capacity(questions.len());
        for q in questions {
            if !seen.insert(q.question_id) {
                return Err(MetricsError::IdMismatch {
                    what: "VQA",
                    detail: format!("duplicate question {}", q.question_id),
                });
            }
            if !preds.contains_key(&q.question_id) {
                return Err(MetricsError::IdMismatch {
                    what: "VQA",
                    detail: format!("no prediction for question {}", q.question_id),
                });
            }
        }
        if let Some(p) = predictions.iter().find(|p| !seen.contains(&p.question_id)) {
            return Err(MetricsError::IdMismatch {
                what: "VQA",
                detail: format!("prediction for unknown question {}", p.question_id),
            });
        }

        let mut accs = Vec::with_capacity(questions.len());
        let mut per_question = BTreeMap::new();
        let mut by_qtype: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut by_atype: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (index, q) in questions.iter().enumerate() {
            if q.answers.is_empty() {
                return Err(MetricsError::NoReferences { what: "VQA", index });
            }
            let acc = accuracy_unchecked(preds[&q.question_id], &q.answers);
            accs.push(acc);
            per_question.insert(q.question_id, self.round(100.0 * acc));
            if let Some(t) = &q.question_type {
                by_qtype.entry(t.clone()).or_default().push(acc);
            }
            if let Some(t) = &q.answer_type {
                by_atype.entry(t.clone()).or_default().push(acc);
            }
        }
        let pct = |v: &[f64]| self.round(100.0 * v.iter().sum::<f64>() / v.len() as f64);
        Ok(VqaReport {
            overall: pct(&accs),
            per_question,
            per_question_type: by_qtype.iter().map(|(k, v)| (k.clone(), pct(v))).collect(),
            per_answer_type: by_atype.iter().map(|(k, v)| (k.clone(), pct(v))).collect(),
        })
    }

    fn round(&self, x: f64) -> f64 {
        match self.precision {
            Some(n) => py_round(x, n),
            None => x,
        }
    }
}

/// Python's `round(x, n)`: correctly rounded, ties to even on the exact value.
fn py_round(x: f64, n: u32) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{:.*}", n as usize, x).parse().unwrap_or(x)
}

/// Accuracy (fraction in `[0, 1]`) of one predicted answer against the
/// ground-truth answers, with the official normalization.
///
/// Errors when `gt_answers` is empty.
pub fn vqa_accuracy<S: AsRef<str>>(prediction: &str, gt_answers: &[S]) -> Result<f64> {
    if gt_answers.is_empty() {
        return Err(MetricsError::NoReferences {
            what: "VQA",
            index: 0,
        });
    }
    Ok(accuracy_unchecked(prediction, gt_answers))
}

fn accuracy_unchecked<S: AsRef<str>>(prediction: &str, gt_answers: &[S]) -> f64 {
    let res = normalize_answer(prediction);
    let raw: Vec<&str> = gt_answers.iter().map(|a| a.as_ref()).collect();
    let all_same = raw.iter().all(|a| *a == raw[0]);
    let gts: Vec<String> = if all_same {
        raw.iter().map(|a| a.to_string()).collect()
    } else {
        raw.iter().map(|a| process_punctuation(a)).collect()
    };
    let matches_total = gts.iter().filter(|g| **g == res).count();
    let sum: f64 = gts
        .iter()
        .map(|g| {
            let others = matches_total - usize::from(*g == res);
            (others as f64 / 3.0).min(1.0)
        })
        .sum();
    sum / gts.len() as f64
}

/// Normalize a predicted answer as the reference does: `\n`/`\t` → space,
/// strip, [`process_punctuation`], then [`process_digit_article`].
pub fn normalize_answer(answer: &str) -> String {
    let a = answer.replace(['\n', '\t'], " ");
    process_digit_article(&process_punctuation(a.trim()))
}

const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// Python `\d` restricted to common decimal-digit blocks.
fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
        || ('\u{660}'..='\u{669}').contains(&c)
        || ('\u{6f0}'..='\u{6f9}').contains(&c)
        || ('\u{966}'..='\u{96f}').contains(&c)
        || ('\u{ff10}'..='\u{ff19}').contains(&c)
}

/// The reference `processPunctuation`.
///
/// Each punctuation character is deleted when it touches a space in the input
/// or the input contains a digit-comma-digit sequence, otherwise replaced by a
/// space; then periods not followed by a digit are deleted (at most 32 of
/// them, because the reference passes `re.UNICODE` as the `count` argument).
pub fn process_punctuation(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let comma_digit = chars
        .windows(3)
        .any(|w| is_digit(w[0]) && w[1] == ',' && is_digit(w[2]));
    let mut out = text.to_string();
    for p in PUNCT {
        let touches_space = chars
            .windows(2)
            .any(|w| (w[0] == p && w[1] == ' ') || (w[0] == ' ' && w[1] == p));
        if touches_space || comma_digit {
            out = out.replace(p, "");
        } else {
            out = out.replace(p, " ");
        }
    }
    let chars: Vec<char> = out.chars().collect();
    let mut result = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let next_is_digit = chars.get(i + 1).is_some_and(|&n| is_digit(n));
        if c == '.' && !next_is_digit && removed < 32 {
            removed += 1;
            continue;
        }
        result.push(c);
    }
    result
}

const MANUAL_MAP: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// The reference `processDigitArticle`: lower-case, split on whitespace, map
/// number words to digits (`none → 0`, `one → 1` … `ten → 10`), drop the
/// articles `a`/`an`/`the`, restore apostrophes of common contractions
/// (`dont → don't`), and join with single spaces.
pub fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|w| !w.is_empty())
        .map(|w| {
            MANUAL_MAP
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact-match accuracy (fraction in `[0, 1]`), as mPLUG's video QA
/// evaluation (`videoqa_mplug.py`, `cal_metric`): a prediction counts when it
/// equals its label string exactly.
///
/// Errors when the inputs are empty or of different lengths.
pub fn exact_match_accuracy<P: AsRef<str>, L: AsRef<str>>(
    predictions: &[P],
    labels: &[L],
) -> Result<f64> {
    if predictions.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            what: "exact-match accuracy",
            left: predictions.len(),
            right: labels.len(),
        });
    }
    if predictions.is_empty() {
        return Err(MetricsError::Empty {
            what: "exact-match accuracy",
        });
    }
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p.as_ref() == l.as_ref())
        .count();
    Ok(correct as f64 / predictions.len() as f64)
}

/// [`exact_match_accuracy`] per question type: for every type that occurs in `types` (one
/// entry per prediction; `None` leaves a question out of the breakdown), the fraction of its
/// questions answered exactly.
///
/// Errors when the three inputs differ in length.
pub fn exact_match_accuracy_by_type<P: AsRef<str>, L: AsRef<str>, T: AsRef<str>>(
    predictions: &[P],
    labels: &[L],
    types: &[Option<T>],
) -> Result<BTreeMap<String, f64>> {
    for n in [labels.len(), types.len()] {
        if predictions.len() != n {
            return Err(MetricsError::LengthMismatch {
                what: "exact-match accuracy by question type",
                left: predictions.len(),
                right: n,
            });
        }
    }
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for ((p, l), t) in predictions.iter().zip(labels).zip(types) {
        if let Some(t) = t {
            let c = counts.entry(t.as_ref().to_string()).or_default();
            c.0 += usize::from(p.as_ref() == l.as_ref());
            c.1 += 1;
        }
    }
    Ok(counts
        .into_iter()
        .map(|(t, (hits, n))| (t, hits as f64 / n as f64))
        .collect())
}
