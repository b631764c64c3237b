//! Visual-grounding metrics as mPLUG's `vgTools/utils/eval_utils.py`:
//! a prediction is correct when its IoU with the ground-truth box is ≥ 0.5.
//!
//! Boxes are `[x0, y0, x1, y1]` (corners) in any consistent unit, typically
//! pixels. Areas use continuous coordinates (`(x1 − x0)·(y1 − y0)`, no "+1"
//! pixel convention) and the IoU denominator carries the reference's `1e-16`
//! guard, so degenerate boxes give IoU 0 rather than NaN. Inverted boxes
//! (`x1 < x0` or `y1 < y0`) have no area and therefore IoU 0.

use super::error::{MetricsError, Result};

/// A box as `[x0, y0, x1, y1]`.
pub type BoxXyxy = [f64; 4];

/// Default IoU threshold of the grounding accuracy.
pub const IOU_THRESHOLD: f64 = 0.5;

/// Grounding evaluation summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundingMetrics {
    /// Fraction of predictions with IoU ≥ threshold (in `[0, 1]`, as the reference).
    pub accuracy: f64,
    /// Mean IoU.
    pub mean_iou: f64,
    /// Number of predictions with IoU ≥ threshold.
    pub num_correct: usize,
    /// Number of evaluated boxes.
    pub total: usize,
}

/// Intersection over union of two `[x0, y0, x1, y1]` boxes.
pub fn box_iou(a: &BoxXyxy, b: &BoxXyxy) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &BoxXyxy| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    inter / (area(a) + area(b) - inter + 1e-16)
}

/// `[cx, cy, w, h]` → `[x0, y0, x1, y1]` (the model's box head predicts
/// normalized centre/size boxes).
pub fn cxcywh_to_xyxy(b: &[f64; 4]) -> BoxXyxy {
    [
        b[0] - 0.5 * b[2],
        b[1] - 0.5 * b[3],
        b[0] + 0.5 * b[2],
        b[1] + 0.5 * b[3],
    ]
}

/// Clamp a box to `[0, width] × [0, height]` (the reference clamps normalized
/// predictions to `[0, 1]`).
pub fn clamp_box(b: &BoxXyxy, width: f64, height: f64) -> BoxXyxy {
    [
        b[0].clamp(0.0, width),
        b[1].clamp(0.0, height),
        b[2].clamp(0.0, width),
        b[3].clamp(0.0, height),
    ]
}

/// Accuracy at IoU ≥ `threshold` and mean IoU of `predictions[i]` vs `targets[i]`.
///
/// Errors when the inputs are empty, of different lengths, or contain a
/// non-finite coordinate, or when `threshold` is NaN.
pub fn grounding_accuracy(
    predictions: &[BoxXyxy],
    targets: &[BoxXyxy],
    threshold: f64,
) -> Result<GroundingMetrics> {
    if threshold.is_nan() {
        return Err(MetricsError::InvalidParameter(
            "IoU threshold is NaN".into(),
        ));
    }
    if predictions.len() != targets.len() {
        return Err(MetricsError::LengthMismatch {
            what: "grounding boxes",
            left: predictions.len(),
            right: targets.len(),
        });
    }
    if predictions.is_empty() {
        return Err(MetricsError::Empty { what: "grounding" });
    }
    for (what, boxes) in [("predicted boxes", predictions), ("target boxes", targets)] {
        if let Some(index) = boxes.iter().position(|b| b.iter().any(|v| !v.is_finite())) {
            return Err(MetricsError::NonFinite { what, index });
        }
    }
    let ious: Vec<f64> = predictions
        .iter()
        .zip(targets)
        .map(|(p, t)| box_iou(p, t))
        .collect();
    let num_correct = ious.iter().filter(|&&v| v >= threshold).count();
    let total = ious.len();
    Ok(GroundingMetrics {
        accuracy: num_correct as f64 / total as f64,
        mean_iou: ious.iter().sum::<f64>() / total as f64,
        num_correct,
        total,
    })
}
