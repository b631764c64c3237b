//! Grounding evaluation: one box per expression, accuracy at IoU 0.5 in pixels of the image.

use super::error::{EvalError, Result};
use super::{describe, EvalOptions, EvalReport, Output, Progress};
use crate::data::annotations::GroundingSample;
use crate::metrics::grounding::{box_iou, grounding_accuracy, BoxXyxy, IOU_THRESHOLD};
use crate::pipeline::Pipeline;
use serde_json::{json, Value};
use std::path::Path;

pub(super) fn run(
    p: &Pipeline,
    samples: &[GroundingSample],
    root: &Path,
    opts: &EvalOptions,
    out: &Output,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let mut log = out.log(samples.iter().map(|s| &s.id))?;
    let resumed = samples.iter().filter(|s| log.contains(&s.id)).count();
    let pending: Vec<&GroundingSample> = samples.iter().filter(|s| !log.contains(&s.id)).collect();
    progress.start("grounding", samples.len() as u64, resumed as u64);
    for chunk in pending.chunks(opts.batch_size) {
        let paths: Vec<_> = chunk.iter().map(|s| root.join(&s.image)).collect();
        let texts: Vec<&str> = chunk.iter().map(|s| s.text.as_str()).collect();
        let boxes = p
            .ground(&paths, &texts)
            .map_err(|source| EvalError::Samples {
                what: describe(chunk.iter().map(|s| (&s.id, s.image.as_str()))),
                source,
            })?;
        for (s, b) in chunk.iter().zip(boxes) {
            let pred: BoxXyxy = b.xyxy.map(f64::from);
            log.append(json!({
                "id": s.id,
                "image": s.image,
                "text": s.text,
                "box": pred,
                "target": s.bbox,
                "iou": box_iou(&pred, &s.bbox),
            }))?;
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();

    let mut preds = Vec::with_capacity(samples.len());
    for s in samples {
        let v = log.field(&s.id, "box")?;
        let b: Option<Vec<f64>> = v
            .as_array()
            .and_then(|a| a.iter().map(Value::as_f64).collect());
        match b.as_deref() {
            Some(&[a, b, c, d]) => preds.push([a, b, c, d]),
            _ => return Err(log.bad_field(&s.id, "box", "four numbers")),
        }
    }
    let targets: Vec<BoxXyxy> = samples.iter().map(|s| s.bbox).collect();
    let m = grounding_accuracy(&preds, &targets, IOU_THRESHOLD)?;
    let metrics = json!({
        "accuracy": m.accuracy,
        "mean_iou": m.mean_iou,
        "num_correct": m.num_correct,
        "total": m.total,
        "iou_threshold": IOU_THRESHOLD,
    });
    out.finish(&log, resumed, metrics, Vec::new())
}
