//! Image-text retrieval evaluation, and the re-ranking both retrieval evaluations share: ITC
//! similarities between every image (or video) and every text, then for each query its top `k`
//! candidates re-scored by ITM, every other score -100, exactly as
//! [`crate::tasks::retrieval::rerank`] and the reference's `evaluation` compute them, but in
//! batches of queries whose results are logged as they come.

use super::error::{EvalError, Result};
use super::output::PredictionLog;
use super::{describe, num, EvalOptions, EvalReport, Output, Progress};
use crate::data::annotations::{pre_caption, RetrievalSample};
use crate::input::Padding;
use crate::metrics::image_text_retrieval;
use crate::pipeline::{Pipeline, Visual};
use crate::tasks::retrieval::{self as task, ImageSide, Rescore, ScoreMatrix, TextSide};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

/// Words kept of an image-retrieval caption and its token limit (`pre_caption(c, 30)`,
/// `max_length=30`).
const IMAGE_TEXT_WORDS: usize = 30;
const IMAGE_TEXT_TOKENS: usize = 30;

/// The visual side of a retrieval set.
pub(super) struct Visuals<'a> {
    /// `image` or `video`: the query kind in ids (`image:3`) and records.
    pub kind: &'static str,
    /// File of each image / video, as the annotation names it.
    pub files: Vec<&'a str>,
}

/// What [`rerank_logged`] leaves: the log and both score matrices.
pub(super) struct Scores {
    pub log: PredictionLog,
    pub resumed: usize,
    pub v2t: ScoreMatrix,
    pub t2v: ScoreMatrix,
    pub k: usize,
    /// How the candidates were scored: the task's protocol, or ITC alone (`opts.itc_only`).
    pub rescore: Rescore,
}

fn query_id(kind: &str, i: usize) -> Value {
    json!(format!("{kind}:{i}"))
}

/// Encodes whatever is pending, re-ranks the pending queries of both directions and returns the
/// full score matrices read back from the log. Candidates are scored as `protocol` says, or
/// by ITC alone where `opts.itc_only`.
#[allow(clippy::too_many_arguments)]
pub(super) fn rerank_logged(
    p: &Pipeline,
    visuals: &Visuals,
    texts: &[String],
    text_tokens: usize,
    protocol: Rescore,
    encode_visual: &mut dyn FnMut(&[usize]) -> crate::Result<ImageSide>,
    opts: &EvalOptions,
    out: &Output,
    progress: &mut dyn Progress,
) -> Result<Scores> {
    let (nv, nt) = (visuals.files.len(), texts.len());
    let v_ids: Vec<Value> = (0..nv).map(|i| query_id(visuals.kind, i)).collect();
    let t_ids: Vec<Value> = (0..nt).map(|i| query_id("text", i)).collect();
    let mut log = out.log(v_ids.iter().chain(&t_ids))?;
    let pending_v: Vec<usize> = (0..nv).filter(|&i| !log.contains(&v_ids[i])).collect();
    let pending_t: Vec<usize> = (0..nt).filter(|&i| !log.contains(&t_ids[i])).collect();
    let resumed = nv + nt - pending_v.len() - pending_t.len();
    let k = opts.k.min(nv).min(nt);
    let rescore = if opts.itc_only {
        Rescore::Similarity
    } else {
        protocol
    };

    if !pending_v.is_empty() || !pending_t.is_empty() {
        let all_v: Vec<usize> = (0..nv).collect();
        progress.start(&format!("encoding {}s", visuals.kind), nv as u64, 0);
        let mut parts = Vec::new();
        for chunk in all_v.chunks(opts.batch_size) {
            let side = encode_visual(chunk).map_err(|source| EvalError::Samples {
                what: describe(chunk.iter().map(|&i| (&v_ids[i], visuals.files[i]))),
                source,
            })?;
            parts.push(side);
            progress.advance(chunk.len() as u64);
        }
        progress.finish();
        let vis = ImageSide {
            embeds: Tensor::cat(&parts.iter().map(|s| &s.embeds).collect::<Vec<_>>(), 0)?,
            feat: Tensor::cat(&parts.iter().map(|s| &s.feat).collect::<Vec<_>>(), 0)?,
        };
        drop(parts);

        progress.start("encoding texts", nt as u64, 0);
        let all_t: Vec<usize> = (0..nt).collect();
        let mut parts: Vec<TextSide> = Vec::new();
        for chunk in all_t.chunks(opts.batch_size.max(64)) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            let side = p
                .encode_texts_with(&batch, Padding::Fixed(text_tokens), text_tokens)
                .and_then(|(ids, mask)| task::encode_texts(p.model(), &ids, &mask))
                .map_err(|source| EvalError::Samples {
                    what: describe(chunk.iter().map(|&i| (&t_ids[i], texts[i].as_str()))),
                    source,
                })?;
            parts.push(side);
            progress.advance(chunk.len() as u64);
        }
        progress.finish();
        let cat = |f: fn(&TextSide) -> &Tensor| -> crate::Result<Tensor> {
            Ok(Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0)?)
        };
        let txt = TextSide {
            embeds: cat(|s| &s.embeds)?,
            mask: cat(|s| &s.mask)?,
            feat: cat(|s| &s.feat)?,
        };
        drop(parts);

        let sims = task::similarities(&vis, &txt)?;
        let directions = [
            (visuals.kind, &pending_v, &v_ids, sims.clone(), true),
            ("text", &pending_t, &t_ids, sims.t()?.contiguous()?, false),
        ];
        for (kind, pending, ids, sims, visual_major) in directions {
            let total = ids.len() as u64;
            let label = if visual_major {
                format!("re-ranking texts per {kind}")
            } else {
                format!("re-ranking {}s per text", visuals.kind)
            };
            progress.start(&label, total, total - pending.len() as u64);
            for chunk in pending.chunks(opts.batch_size) {
                let rows_idx: Vec<u32> = chunk.iter().map(|&i| i as u32).collect();
                let rows_idx = Tensor::new(rows_idx.as_slice(), sims.device())?;
                let rows = sims.index_select(&rows_idx, 0)?;
                let query = if visual_major {
                    task::Query::Image
                } else {
                    task::Query::Text
                };
                let top = task::rerank_rows(
                    p.model(),
                    &vis,
                    &txt,
                    &rows,
                    chunk,
                    query,
                    k,
                    rescore,
                    usize::MAX,
                )
                .map_err(|source| EvalError::Samples {
                    what: describe(chunk.iter().map(|&i| (&ids[i], kind))),
                    source,
                })?;
                for (&q, mut scored) in chunk.iter().zip(top) {
                    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let top: Vec<Value> = scored.iter().map(|&(c, s)| json!([c, num(s)])).collect();
                    let mut rec = json!({"id": ids[q], "query": kind, "index": q, "top": top});
                    rec[if visual_major { visuals.kind } else { "text" }] = if visual_major {
                        json!(visuals.files[q])
                    } else {
                        json!(texts[q])
                    };
                    log.append(rec)?;
                }
                progress.advance(chunk.len() as u64);
            }
            progress.finish();
        }
    }

    let v2t = read_rows(&log, &v_ids, nt)?;
    let t2v = read_rows(&log, &t_ids, nv)?;
    Ok(Scores {
        log,
        resumed,
        v2t,
        t2v,
        k,
        rescore,
    })
}

/// Score rows rebuilt from the logged `top` lists (-100 elsewhere).
fn read_rows(log: &PredictionLog, ids: &[Value], width: usize) -> Result<ScoreMatrix> {
    ids.iter()
        .map(|id| {
            let bad = || log.bad_field(id, "top", &format!("a list of [index < {width}, score]"));
            let top = log.field(id, "top")?.as_array().ok_or_else(bad)?;
            let mut row = vec![-100f32; width];
            for item in top {
                let pair = item.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
                let c = pair[0]
                    .as_u64()
                    .filter(|&c| (c as usize) < width)
                    .ok_or_else(bad)?;
                let s = pair[1].as_f64().ok_or_else(bad)?;
                row[c as usize] = s as f32;
            }
            Ok(row)
        })
        .collect()
}

pub(super) fn run(
    p: &Pipeline,
    samples: &[RetrievalSample],
    root: &Path,
    opts: &EvalOptions,
    out: &Output,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let mut texts = Vec::new();
    let mut txt2img = Vec::new();
    let mut img2txts = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let mut mine = Vec::with_capacity(s.captions.len());
        for c in &s.captions {
            mine.push(texts.len());
            texts.push(pre_caption(c, IMAGE_TEXT_WORDS));
            txt2img.push(i);
        }
        img2txts.push(mine);
    }
    let visuals = Visuals {
        kind: "image",
        files: samples.iter().map(|s| s.image.as_str()).collect(),
    };
    let mut encode = |idx: &[usize]| -> crate::Result<ImageSide> {
        let paths: Vec<_> = idx.iter().map(|&i| root.join(&samples[i].image)).collect();
        p.image_side(Visual::Images(&p.load_images(&paths)?))
    };
    let scores = rerank_logged(
        p,
        &visuals,
        &texts,
        IMAGE_TEXT_TOKENS,
        Rescore::Itm,
        &mut encode,
        opts,
        out,
        progress,
    )?;
    let m = image_text_retrieval(&scores.v2t, &scores.t2v, &txt2img, &img2txts)?;
    let metrics = json!({
        "txt_r1": m.txt_r1,
        "txt_r5": m.txt_r5,
        "txt_r10": m.txt_r10,
        "txt_r_mean": m.txt_r_mean,
        "img_r1": m.img_r1,
        "img_r5": m.img_r5,
        "img_r10": m.img_r10,
        "img_r_mean": m.img_r_mean,
        "r_mean": m.r_mean,
        "num_images": samples.len(),
        "num_texts": texts.len(),
        "k": scores.k,
        "rescore": scores.rescore.name(),
    });
    out.finish(&scores.log, scores.resumed, metrics, Vec::new())
}
