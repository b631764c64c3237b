//! VQA evaluation: free-form or ranked answers, the official result file and VQA accuracy.

use super::error::{EvalError, Result};
use super::{describe, num, output, EvalOptions, EvalReport, Output, Progress};
use crate::data::annotations::VqaSample;
use crate::metrics::{vqa_accuracy, VqaEvaluator, VqaPrediction, VqaQuestion};
use crate::pipeline::Pipeline;
use crate::tasks::vqa as task;
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

/// The answer to each question of a batch: text and score (length-penalized log-probability
/// when generated, probability among the re-ranked candidates when ranked).
pub(super) fn answer_batch(
    p: &Pipeline,
    image_embeds: &Tensor,
    questions: &[&str],
    ranking: Option<&Ranking>,
    opts: &EvalOptions,
) -> crate::Result<Vec<(String, f32)>> {
    let (ids, mask) = p.encode_texts(questions)?;
    let q = task::encode_question(p.model(), image_embeds, &ids, &mask)?;
    match ranking {
        Some(r) => {
            let ranked = task::rank_answers(p.model(), &q, &r.ids, &r.mask, r.k)?;
            ranked
                .into_iter()
                .map(|row| {
                    row.first()
                        .map(|a| (r.answers[a.index].clone(), a.prob))
                        .ok_or_else(|| crate::Error::invalid("no answer was ranked"))
                })
                .collect()
        }
        None => task::generate(p.model(), &q, &opts.beam)?
            .into_iter()
            .map(|row| {
                row.first()
                    .map(|h| (p.tokenizer().decode_postprocessed(&h.ids), h.score))
                    .ok_or_else(|| crate::Error::invalid("beam search returned no answer"))
            })
            .collect(),
    }
}

/// A candidate answer list, tokenized once.
pub(super) struct Ranking {
    pub answers: Vec<String>,
    pub ids: Tensor,
    pub mask: Tensor,
    pub k: usize,
}

impl Ranking {
    pub fn new(p: &Pipeline, answers: &[String], k: usize) -> Result<Self> {
        let enc = p.tokenizer().encode_answers(answers)?;
        let (ids, mask) = enc.to_tensors(p.model().device())?;
        Ok(Self {
            answers: answers.to_vec(),
            ids,
            mask,
            k: k.min(answers.len()),
        })
    }
}

pub(super) fn run(
    p: &Pipeline,
    samples: &[VqaSample],
    answers: Option<&[String]>,
    root: &Path,
    opts: &EvalOptions,
    out: &Output,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let ids: Vec<Value> = samples.iter().map(|s| json!(s.question_id)).collect();
    let mut log = out.log(&ids)?;
    let resumed = ids.iter().filter(|id| log.contains(id)).count();
    let pending: Vec<(&Value, &VqaSample)> = ids
        .iter()
        .zip(samples)
        .filter(|(id, _)| !log.contains(id))
        .collect();
    let ranking = match (answers, pending.is_empty()) {
        (Some(a), false) => Some(Ranking::new(p, a, opts.k)?),
        _ => None,
    };
    progress.start("answering", samples.len() as u64, resumed as u64);
    for chunk in pending.chunks(opts.batch_size) {
        let what = || describe(chunk.iter().map(|(id, s)| (*id, s.image.as_str())));
        let paths: Vec<_> = chunk.iter().map(|(_, s)| root.join(&s.image)).collect();
        let questions: Vec<&str> = chunk.iter().map(|(_, s)| s.question.as_str()).collect();
        let got = p
            .load_images(&paths)
            .and_then(|images| p.model().encode_image(&images))
            .and_then(|embeds| answer_batch(p, &embeds, &questions, ranking.as_ref(), opts))
            .map_err(|source| EvalError::Samples {
                what: what(),
                source,
            })?;
        for ((id, s), (answer, score)) in chunk.iter().zip(got) {
            let mut rec = json!({
                "id": id,
                "image": s.image,
                "question": s.question,
                "answer": answer,
            });
            rec[if ranking.is_some() { "prob" } else { "score" }] = num(score);
            if !s.answers.is_empty() {
                rec["accuracy"] = json!(vqa_accuracy(&answer, &s.answers)?);
            }
            log.append(rec)?;
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();

    let mut result = Vec::with_capacity(samples.len());
    let (mut questions, mut predictions) = (Vec::new(), Vec::new());
    for (id, s) in ids.iter().zip(samples) {
        let answer = log.str_field(id, "answer")?;
        result.push(json!({"question_id": s.question_id, "answer": answer}));
        if !s.answers.is_empty() {
            questions.push(VqaQuestion {
                question_id: s.question_id,
                answers: s.answers.clone(),
                question_type: s.question_type.clone(),
                answer_type: s.answer_type.clone(),
            });
            predictions.push(VqaPrediction {
                question_id: s.question_id,
                answer,
            });
        }
    }
    let result_path = out.path("vqa_result.json");
    output::write_json(&result_path, &Value::Array(result))?;
    let mut metrics = serde_json::Map::new();
    if !questions.is_empty() {
        let report = VqaEvaluator::default().evaluate(&questions, &predictions)?;
        metrics.insert("overall".into(), json!(report.overall));
        metrics.insert("per_answer_type".into(), json!(report.per_answer_type));
        metrics.insert("per_question_type".into(), json!(report.per_question_type));
    }
    metrics.insert("num_questions".into(), json!(samples.len()));
    metrics.insert("num_scored".into(), json!(questions.len()));
    metrics.insert(
        "mode".into(),
        json!(if answers.is_some() {
            "rank"
        } else {
            "generate"
        }),
    );
    out.finish(&log, resumed, Value::Object(metrics), vec![result_path])
}
