//! Grounding IoU and accuracy at IoU >= 0.5 on hand-checked cases, including
//! touching, degenerate and inverted boxes and empty inputs.

use mplug::metrics::grounding::{clamp_box, cxcywh_to_xyxy, IOU_THRESHOLD};
use mplug::metrics::{box_iou, grounding_accuracy, MetricsError};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn grounding_iou_and_accuracy() {
    let a = [0.0, 0.0, 10.0, 10.0];
    assert!(close(box_iou(&a, &a), 1.0));
    // Half overlap: inter 50, union 150.
    assert!(close(box_iou(&a, &[5.0, 0.0, 15.0, 10.0]), 1.0 / 3.0));
    // Touching and disjoint boxes.
    assert_eq!(box_iou(&a, &[10.0, 0.0, 20.0, 10.0]), 0.0);
    assert_eq!(box_iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
    // Degenerate and inverted boxes give 0, never NaN.
    assert_eq!(box_iou(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]), 0.0);
    assert_eq!(box_iou(&[10.0, 10.0, 0.0, 0.0], &a), 0.0);
    // IoU exactly 0.5 counts as correct (>=): inter 50, union 100.
    let half = [0.0, 0.0, 10.0, 5.0];
    assert!(close(box_iou(&a, &half), 0.5));

    let preds = [a, half, [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]];
    let gts = [a, a, a, a];
    let m = grounding_accuracy(&preds, &gts, IOU_THRESHOLD).unwrap();
    assert_eq!((m.num_correct, m.total), (2, 4));
    assert!(close(m.accuracy, 0.5));
    assert!(close(m.mean_iou, (1.0 + 0.5 + 1.0 / 3.0) / 4.0));

    assert!(matches!(
        grounding_accuracy(&[], &[], 0.5),
        Err(MetricsError::Empty { .. })
    ));
    assert!(matches!(
        grounding_accuracy(&[a], &[], 0.5),
        Err(MetricsError::LengthMismatch { .. })
    ));
    assert!(matches!(
        grounding_accuracy(&[[0.0, 0.0, f64::NAN, 1.0]], &[a], 0.5),
        Err(MetricsError::NonFinite { .. })
    ));

    assert_eq!(
        cxcywh_to_xyxy(&[5.0, 5.0, 10.0, 4.0]),
        [0.0, 3.0, 10.0, 7.0]
    );
    assert_eq!(
        clamp_box(&[-1.0, 2.0, 12.0, 5.0], 10.0, 4.0),
        [0.0, 2.0, 10.0, 4.0]
    );
}
