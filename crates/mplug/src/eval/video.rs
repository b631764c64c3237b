//! Zero-shot video evaluation: MSRVTT-QA with a VQA model, MSRVTT retrieval with a retrieval
//! model. Frames go through the visual tower one by one and their tokens are concatenated.

use super::error::{EvalError, Result};
use super::retrieval::{rerank_logged, Visuals};
use super::vqa::{answer_batch, Ranking};
use super::{describe, num, EvalOptions, EvalReport, Output, Progress};
use crate::data::annotations::{pre_caption, resolve_video, VideoQaSample, VideoRetrievalSample};
use crate::input::{VideoConfig, VideoPreprocessor};
use crate::metrics::{exact_match_accuracy, exact_match_accuracy_by_type, video_text_retrieval};
use crate::pipeline::{Pipeline, Visual};
use crate::tasks::retrieval::{ImageSide, Rescore};
use crate::tasks::video as task;
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

/// Words kept of a video-retrieval caption and its token limit (`pre_caption(c, 40)`,
/// `max_length=35`).
const VIDEO_TEXT_WORDS: usize = 40;
const VIDEO_TEXT_TOKENS: usize = 35;

/// `(B, N, 3, R, R)` frames of the named videos under `root`.
fn load_clips(
    p: &Pipeline,
    pre: &VideoPreprocessor,
    root: &Path,
    names: &[&str],
) -> crate::Result<Tensor> {
    let mut clips = Vec::with_capacity(names.len());
    for name in names {
        let path = resolve_video(root, name).ok_or_else(|| {
            crate::Error::invalid(format!(
                "no video `{name}` under {} (looked for the name itself, with .mp4, .avi, \
                 .webm, .mkv, .mov or .gif, and a folder of frames)",
                root.display()
            ))
        })?;
        clips.push(pre.load(&path, p.model().device())?.frames);
    }
    Ok(Tensor::stack(&clips, 0)?)
}

fn preprocessor(p: &Pipeline, opts: &EvalOptions) -> Result<VideoPreprocessor> {
    let res = p.model().config.image_res as u32;
    Ok(VideoPreprocessor::new(VideoConfig::new(
        opts.num_frames,
        res,
    ))?)
}

pub(super) fn run_qa(
    p: &Pipeline,
    samples: &[VideoQaSample],
    answers: Option<&[String]>,
    root: &Path,
    opts: &EvalOptions,
    out: &Output,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let pre = preprocessor(p, opts)?;
    let mut log = out.log(samples.iter().map(|s| &s.question_id))?;
    let resumed = samples
        .iter()
        .filter(|s| log.contains(&s.question_id))
        .count();
    let pending: Vec<&VideoQaSample> = samples
        .iter()
        .filter(|s| !log.contains(&s.question_id))
        .collect();
    let ranking = match (answers, pending.is_empty()) {
        (Some(a), false) => Some(Ranking::new(p, a, opts.k)?),
        _ => None,
    };
    progress.start("answering", samples.len() as u64, resumed as u64);
    for chunk in pending.chunks(opts.batch_size) {
        let names: Vec<&str> = chunk.iter().map(|s| s.video.as_str()).collect();
        let questions: Vec<&str> = chunk.iter().map(|s| s.question.as_str()).collect();
        let got = load_clips(p, &pre, root, &names)
            .and_then(|frames| task::encode_frames(p.model(), &frames))
            .and_then(|embeds| answer_batch(p, &embeds, &questions, ranking.as_ref(), opts))
            .map_err(|source| EvalError::Samples {
                what: describe(chunk.iter().map(|s| (&s.question_id, s.video.as_str()))),
                source,
            })?;
        for (s, (answer, score)) in chunk.iter().zip(got) {
            let mut rec = json!({
                "id": s.question_id,
                "video": s.video,
                "question": s.question,
                "answer": answer,
            });
            rec[if ranking.is_some() { "prob" } else { "score" }] = num(score);
            if let Some(label) = &s.answer {
                rec["correct"] = json!(&answer == label);
            }
            log.append(rec)?;
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();

    let (mut preds, mut labels, mut types) = (Vec::new(), Vec::new(), Vec::new());
    for s in samples {
        let answer = log.str_field(&s.question_id, "answer")?;
        if let Some(label) = &s.answer {
            preds.push(answer);
            labels.push(label.clone());
            types.push(s.question_type.as_deref());
        }
    }
    let mut metrics = serde_json::Map::new();
    if !preds.is_empty() {
        metrics.insert(
            "accuracy".into(),
            json!(exact_match_accuracy(&preds, &labels)?),
        );
        let by_type = exact_match_accuracy_by_type(&preds, &labels, &types)?;
        if !by_type.is_empty() {
            metrics.insert("per_question_type".into(), json!(by_type));
        }
    }
    metrics.insert("num_questions".into(), json!(samples.len()));
    metrics.insert("num_scored".into(), json!(preds.len()));
    metrics.insert(
        "mode".into(),
        json!(if answers.is_some() {
            "rank"
        } else {
            "generate"
        }),
    );
    out.finish(&log, resumed, Value::Object(metrics), Vec::new())
}

pub(super) fn run_retrieval(
    p: &Pipeline,
    samples: &[VideoRetrievalSample],
    root: &Path,
    opts: &EvalOptions,
    out: &Output,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let pre = preprocessor(p, opts)?;
    let texts: Vec<String> = samples
        .iter()
        .map(|s| pre_caption(&s.caption, VIDEO_TEXT_WORDS))
        .collect();
    let visuals = Visuals {
        kind: "video",
        files: samples.iter().map(|s| s.video.as_str()).collect(),
    };
    let mut encode = |idx: &[usize]| -> crate::Result<ImageSide> {
        let names: Vec<&str> = idx.iter().map(|&i| samples[i].video.as_str()).collect();
        p.image_side(Visual::Clips(&load_clips(p, &pre, root, &names)?))
    };
    let scores = rerank_logged(
        p,
        &visuals,
        &texts,
        VIDEO_TEXT_TOKENS,
        Rescore::ItmPlusSimilarity,
        &mut encode,
        opts,
        out,
        progress,
    )?;
    let n = samples.len();
    let identity: Vec<usize> = (0..n).collect();
    let m = video_text_retrieval(&scores.v2t, &scores.t2v, &identity, &identity)?;
    let metrics = json!({
        "txt_r1": m.txt_r1,
        "txt_r5": m.txt_r5,
        "txt_r10": m.txt_r10,
        "txt_r_mean": m.txt_r_mean,
        "vid_r1": m.vid_r1,
        "vid_r5": m.vid_r5,
        "vid_r10": m.vid_r10,
        "vid_r_mean": m.vid_r_mean,
        "vid_mdR": m.vid_median_rank,
        "r_mean": m.r_mean,
        "num_videos": n,
        "k": scores.k,
        "rescore": scores.rescore.name(),
    });
    out.finish(&scores.log, scores.resumed, metrics, Vec::new())
}
