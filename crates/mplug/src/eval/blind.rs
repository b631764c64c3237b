//! Blind baselines: the best a model could do from the text alone, without looking at the
//! image, estimated from the training annotations. A trained model must beat them by a wide
//! margin for its figures to mean that it sees.
//!
//! - VQA and video QA: the most frequent training answer of the same question (text
//!   normalized), else of questions starting with the same three words, else overall;
//! - captioning: the most frequent training caption, for every image;
//! - grounding: the mean training box, for every expression;
//! - retrieval: ranking without the image is a random permutation, whose expected
//!   recall@K is `K` over the number of candidates (for text retrieval, the number of
//!   captions of the image times `K` over the number of captions, capped at 1).
//!
//! With question types in the test file (`question_type`), VQA and video QA also report
//! `per_question_type`, as `mplug eval` does.
//!
//! Figures use `mplug eval`'s keys and units: percentages for VQA accuracy and recall,
//! fractions for grounding and video QA accuracy, CIDEr and the other caption metrics as
//! fractions.

use super::error::{EvalError, Result};
use crate::data::annotations::{
    pre_caption, read_caption, read_grounding, read_retrieval, read_video_retrieval, read_videoqa,
    read_vqa, BoxFormat,
};
use crate::metrics::caption::evaluate_raw_captions;
use crate::metrics::grounding::grounding_accuracy;
use crate::metrics::vqa::{
    exact_match_accuracy, exact_match_accuracy_by_type, normalize_answer, vqa_accuracy,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The answer a blind model gives to a question: the most frequent training answer of the
/// same question, of its first three words, or overall.
#[derive(Debug, Clone, Default)]
pub struct AnswerPrior {
    by_question: HashMap<String, HashMap<String, usize>>,
    by_prefix: HashMap<String, HashMap<String, usize>>,
    overall: HashMap<String, usize>,
}

fn question_key(q: &str) -> String {
    pre_caption(q, 50)
}

fn prefix_key(q: &str) -> String {
    question_key(q)
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The most frequent key (ties: the alphabetically first, so that results do not depend on
/// hash order).
fn most_frequent(counts: &HashMap<String, usize>) -> Option<&str> {
    counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, _)| k.as_str())
}

impl AnswerPrior {
    /// Counts the answers of training questions (`(question, answers)` pairs; each answer
    /// counts once per annotator, as in the VQA files).
    pub fn fit<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Self {
        let mut p = AnswerPrior::default();
        for (q, answers) in pairs {
            for a in answers {
                let a = normalize_answer(a);
                for map in [
                    p.by_question.entry(question_key(q)).or_default(),
                    p.by_prefix.entry(prefix_key(q)).or_default(),
                    &mut p.overall,
                ] {
                    *map.entry(a.clone()).or_default() += 1;
                }
            }
        }
        p
    }

    /// The blind answer to `question` (empty when nothing was fitted).
    pub fn answer(&self, question: &str) -> String {
        self.by_question
            .get(&question_key(question))
            .and_then(most_frequent)
            .or_else(|| {
                self.by_prefix
                    .get(&prefix_key(question))
                    .and_then(most_frequent)
            })
            .or_else(|| most_frequent(&self.overall))
            .unwrap_or_default()
            .to_string()
    }
}

fn empty(what: &str, path: &Path) -> EvalError {
    EvalError::Options(format!(
        "{}: no {what} to fit a baseline on",
        path.display()
    ))
}

/// VQA accuracy (percent) of the answer prior fitted on `train` over `test`.
pub fn vqa(train: &Path, test: &Path) -> Result<Value> {
    let train_set = read_vqa(train)?;
    if train_set.is_empty() {
        return Err(empty("questions", train));
    }
    let prior = AnswerPrior::fit(
        train_set
            .iter()
            .map(|s| (s.question.as_str(), s.answers.as_slice())),
    );
    let test_set = read_vqa(test)?;
    let mut all = Vec::new();
    let mut by_type: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in test_set.iter().filter(|s| !s.answers.is_empty()) {
        let acc = vqa_accuracy(&prior.answer(&s.question), &s.answers)?;
        all.push(acc);
        if let Some(t) = &s.question_type {
            by_type.entry(t).or_default().push(acc);
        }
    }
    if all.is_empty() {
        return Err(empty("answered questions", test));
    }
    let pct = |v: &[f64]| 100.0 * v.iter().sum::<f64>() / v.len() as f64;
    let mut out = json!({"overall": pct(&all), "num_questions": all.len()});
    if !by_type.is_empty() {
        let by_type: BTreeMap<&str, f64> = by_type.iter().map(|(k, v)| (*k, pct(v))).collect();
        out["per_question_type"] = json!(by_type);
    }
    Ok(out)
}

/// Video QA accuracy (fraction, exact match) of the answer prior fitted on `train`.
pub fn videoqa(train: &Path, test: &Path) -> Result<Value> {
    let train_set = read_videoqa(train)?;
    let answers: Vec<Vec<String>> = train_set
        .iter()
        .map(|s| s.answer.iter().cloned().collect())
        .collect();
    if train_set.is_empty() {
        return Err(empty("questions", train));
    }
    let prior = AnswerPrior::fit(
        train_set
            .iter()
            .zip(&answers)
            .map(|(s, a)| (s.question.as_str(), a.as_slice())),
    );
    let (mut preds, mut labels, mut types) = (Vec::new(), Vec::new(), Vec::new());
    let test_set = read_videoqa(test)?;
    for s in &test_set {
        if let Some(label) = &s.answer {
            preds.push(prior.answer(&s.question));
            labels.push(normalize_answer(label));
            types.push(s.question_type.as_deref());
        }
    }
    if preds.is_empty() {
        return Err(empty("answered questions", test));
    }
    let mut out = json!({
        "accuracy": exact_match_accuracy(&preds, &labels)?,
        "num_questions": preds.len(),
    });
    let by_type = exact_match_accuracy_by_type(&preds, &labels, &types)?;
    if !by_type.is_empty() {
        out["per_question_type"] = json!(by_type);
    }
    Ok(out)
}

/// Caption metrics of the most frequent training caption given for every test image.
pub fn caption(train: &Path, test: &Path) -> Result<Value> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for s in read_retrieval(train)? {
        for c in s.captions {
            *counts.entry(pre_caption(&c, 30)).or_default() += 1;
        }
    }
    let best = most_frequent(&counts)
        .ok_or_else(|| empty("captions", train))?
        .to_string();
    let samples = read_caption(test, None)?;
    let refs: Vec<Vec<String>> = samples.iter().map(|s| s.references.clone()).collect();
    let cands = vec![best.clone(); refs.len()];
    let scores = evaluate_raw_captions(&cands, &refs)?;
    let mut m = serde_json::Map::new();
    for (k, v) in scores.to_map() {
        m.insert(k, json!(v));
    }
    m.insert("caption".into(), json!(best));
    Ok(Value::Object(m))
}

/// Grounding accuracy at IoU 0.5 (fraction) of the mean training box.
pub fn grounding(train: &Path, test: &Path, format: BoxFormat) -> Result<Value> {
    let boxes = read_grounding(train, format)?;
    if boxes.is_empty() {
        return Err(empty("boxes", train));
    }
    let mut mean = [0.0f64; 4];
    for b in &boxes {
        for (m, v) in mean.iter_mut().zip(b.bbox) {
            *m += v / boxes.len() as f64;
        }
    }
    let targets: Vec<[f64; 4]> = read_grounding(test, format)?
        .into_iter()
        .map(|s| s.bbox)
        .collect();
    if targets.is_empty() {
        return Err(empty("boxes", test));
    }
    let preds = vec![mean; targets.len()];
    let m = grounding_accuracy(&preds, &targets, 0.5)?;
    Ok(json!({"accuracy": m.accuracy, "mean_iou": m.mean_iou, "box": mean}))
}

/// Expected recall@1/5/10 (percent) of a random ranking of the test set's images and
/// captions.
pub fn retrieval(test: &Path) -> Result<Value> {
    let samples = read_retrieval(test)?;
    let images = samples.len();
    let texts: usize = samples.iter().map(|s| s.captions.len()).sum();
    if images == 0 || texts == 0 {
        return Err(empty("images with captions", test));
    }
    let mut m = serde_json::Map::new();
    for k in [1usize, 5, 10] {
        // Text retrieval: P(one of the image's c captions in a random top k of `texts`).
        let tr: f64 = samples
            .iter()
            .map(|s| chance_hit(texts, s.captions.len(), k))
            .sum::<f64>()
            / images as f64;
        let ir = (k as f64 / images as f64).min(1.0);
        m.insert(format!("txt_r{k}"), json!(100.0 * tr));
        m.insert(format!("img_r{k}"), json!(100.0 * ir));
    }
    Ok(Value::Object(m))
}

/// Expected recall@1/5/10 (percent) of a random ranking of a video retrieval test set.
pub fn video_retrieval(test: &Path) -> Result<Value> {
    let n = read_video_retrieval(test)?.len();
    if n == 0 {
        return Err(empty("videos", test));
    }
    let mut m = serde_json::Map::new();
    for k in [1usize, 5, 10] {
        // One caption per video: both directions pick 1 of n.
        let r = json!(100.0 * (k as f64 / n as f64).min(1.0));
        m.insert(format!("txt_r{k}"), r.clone());
        m.insert(format!("vid_r{k}"), r);
    }
    Ok(Value::Object(m))
}

/// Probability that a uniformly random order of `n` items puts at least one of `good` of
/// them in its first `k`.
fn chance_hit(n: usize, good: usize, k: usize) -> f64 {
    if good == 0 {
        return 0.0;
    }
    // 1 - C(n - good, k) / C(n, k), as a running product.
    let mut miss = 1.0;
    for i in 0..k.min(n) {
        let bad_left = n.saturating_sub(good) as f64 - i as f64;
        miss *= (bad_left / (n as f64 - i as f64)).max(0.0);
    }
    1.0 - miss
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_answers_the_most_frequent_answer_of_the_question() {
        let yes = vec!["yes".to_string(); 3];
        let no = vec!["no".to_string(); 10];
        let red = vec!["red".to_string(), "red".to_string(), "blue".to_string()];
        let p = AnswerPrior::fit([
            ("is there a star?", yes.as_slice()),
            ("is there a circle?", no.as_slice()),
            ("what color is the star?", red.as_slice()),
        ]);
        assert_eq!(p.answer("Is there a star?"), "yes");
        // Unknown question: the most frequent answer of "is there a".
        assert_eq!(p.answer("is there a cross?"), "no");
        assert_eq!(p.answer("what color is the cross?"), "red");
        assert_eq!(p.answer("how many shapes?"), "no");
        assert_eq!(AnswerPrior::default().answer("anything"), "");
    }

    #[test]
    fn video_prior_reports_accuracy_per_question_type() {
        let dir = std::env::temp_dir().join(format!("mplug-blind-videoqa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = |q: &str, a: &str, t: &str| {
            format!(r#"{{"video_id":"v","question":"{q}","answer":"{a}","question_type":"{t}"}}"#)
        };
        let train = [
            line("which way does it move?", "left", "order"),
            line("which way does it move?", "left", "order"),
            line("which way does it move?", "up", "order"),
            line("how many shapes?", "2", "static"),
        ];
        let test = [
            line("which way does it move?", "left", "order"),
            line("which way does it move?", "right", "order"),
            line("how many shapes?", "2", "static"),
        ];
        std::fs::write(dir.join("train.jsonl"), train.join("\n")).unwrap();
        std::fs::write(dir.join("test.jsonl"), test.join("\n")).unwrap();
        let got = videoqa(&dir.join("train.jsonl"), &dir.join("test.jsonl")).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        // "left" for every direction question (1 of 2), "2" for the count (1 of 1).
        assert!((got["accuracy"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(got["per_question_type"]["order"], json!(0.5));
        assert_eq!(got["per_question_type"]["static"], json!(1.0));
    }

    #[test]
    fn chance_recall_matches_counting() {
        // One good item among 4, top 1: 1/4; top 4: certain.
        assert!((chance_hit(4, 1, 1) - 0.25).abs() < 1e-12);
        assert!((chance_hit(4, 1, 4) - 1.0).abs() < 1e-12);
        // Two good among 4, top 1: 1/2; top 2: 1 - (2/4 * 1/3) = 5/6.
        assert!((chance_hit(4, 2, 1) - 0.5).abs() < 1e-12);
        assert!((chance_hit(4, 2, 2) - 5.0 / 6.0).abs() < 1e-12);
    }
}
