//! Caption evaluation: beam-search captions, scored with BLEU, ROUGE-L and CIDEr-D.

use super::error::{EvalError, Result};
use super::{describe, num, output, EvalOptions, EvalReport, Output, Progress};
use crate::data::annotations::CaptionSample;
use crate::metrics::evaluate_raw_captions;
use crate::pipeline::Pipeline;
use serde_json::{json, Value};
use std::path::Path;

pub(super) fn run(
    p: &Pipeline,
    samples: &[CaptionSample],
    root: &Path,
    opts: &EvalOptions,
    out: &Output,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let mut log = out.log(samples.iter().map(|s| &s.id))?;
    let resumed = samples.iter().filter(|s| log.contains(&s.id)).count();
    let pending: Vec<&CaptionSample> = samples.iter().filter(|s| !log.contains(&s.id)).collect();
    progress.start("captioning", samples.len() as u64, resumed as u64);
    for chunk in pending.chunks(opts.batch_size) {
        let what = || describe(chunk.iter().map(|s| (&s.id, s.image.as_str())));
        let paths: Vec<_> = chunk.iter().map(|s| root.join(&s.image)).collect();
        let hyps = p
            .load_images(&paths)
            .and_then(|images| p.caption(&images, &opts.beam))
            .map_err(|source| EvalError::Samples {
                what: what(),
                source,
            })?;
        for (s, h) in chunk.iter().zip(hyps) {
            let best = h.first().ok_or_else(|| EvalError::Samples {
                what: what(),
                source: crate::Error::invalid("beam search returned no caption"),
            })?;
            log.append(json!({
                "id": s.id,
                "image": s.image,
                "caption": best.text,
                "score": num(best.score),
            }))?;
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();

    let mut result = Vec::with_capacity(samples.len());
    let (mut cands, mut refs) = (Vec::new(), Vec::new());
    for s in samples {
        let caption = log.str_field(&s.id, "caption")?;
        result.push(json!({"image_id": s.id, "caption": caption}));
        if !s.references.is_empty() {
            cands.push(caption);
            refs.push(s.references.clone());
        }
    }
    let result_path = out.path("caption_result.json");
    output::write_json(&result_path, &Value::Array(result))?;
    let mut metrics = serde_json::Map::new();
    if !cands.is_empty() {
        let scores = evaluate_raw_captions(&cands, &refs)?;
        for (k, v) in scores.to_map() {
            metrics.insert(k, json!(v));
        }
    }
    metrics.insert("num_images".into(), json!(samples.len()));
    metrics.insert("num_scored".into(), json!(cands.len()));
    out.finish(&log, resumed, Value::Object(metrics), vec![result_path])
}
