//! Retrieval recall@K and median rank on hand-checked cases, including ties
//! and empty inputs.

use mplug::metrics::retrieval::{median_rank, rank_of, recall_at_k};
use mplug::metrics::{image_text_retrieval, video_text_retrieval, MetricsError};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn rank_and_ties() {
    assert_eq!(rank_of(&[0.1f32, 0.9, 0.5], 1).unwrap(), 0);
    assert_eq!(rank_of(&[0.1f32, 0.9, 0.5], 0).unwrap(), 2);
    // Ties: equal scores with a larger index rank first (reversed stable argsort).
    assert_eq!(rank_of(&[1.0f64, 1.0, 1.0], 2).unwrap(), 0);
    assert_eq!(rank_of(&[1.0f64, 1.0, 1.0], 0).unwrap(), 2);
    assert_eq!(rank_of(&[0.0f64, 1.0, 1.0, 0.5], 1).unwrap(), 1);
    assert!(matches!(
        rank_of(&[1.0f64], 3),
        Err(MetricsError::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        rank_of(&[1.0f64, f64::NAN], 0),
        Err(MetricsError::NonFinite { .. })
    ));
    // Infinite scores are ordinary values.
    assert_eq!(rank_of(&[f64::NEG_INFINITY, 0.0], 0).unwrap(), 1);

    assert!(close(
        recall_at_k(&[Some(0), Some(4), Some(5), None], 5).unwrap(),
        50.0
    ));
    assert!(matches!(
        recall_at_k(&[], 1),
        Err(MetricsError::Empty { .. })
    ));
    assert!(close(median_rank(&[0, 2, 4]).unwrap(), 3.0));
    assert!(close(median_rank(&[0, 1, 2, 9]).unwrap(), 2.5));
    assert!(matches!(median_rank(&[]), Err(MetricsError::Empty { .. })));
}

#[test]
fn image_text_recall_hand_checked() {
    // 2 images × 4 texts; texts 0,1 → image 0, texts 2,3 → image 1.
    let i2t = vec![
        vec![0.1f32, 0.8, 0.3, 0.9], // image 0: best own caption (t1) at rank 1
        vec![0.0f32, 0.1, 0.7, 0.2], // image 1: t2 at rank 0
    ];
    let t2i = vec![
        vec![0.9f32, 0.1], // t0 → image 0 rank 0
        vec![0.2f32, 0.8], // t1 → image 0 rank 1
        vec![0.5f32, 0.5], // t2 → image 1, tie: larger index first → rank 0
        vec![0.5f32, 0.5], // t3 → image 1 rank 0
    ];
    let txt2img = [0, 0, 1, 1];
    let img2txts = vec![vec![0, 1], vec![2, 3]];
    let m = image_text_retrieval(&i2t, &t2i, &txt2img, &img2txts).unwrap();
    assert!(close(m.txt_r1, 50.0) && close(m.txt_r5, 100.0) && close(m.txt_r10, 100.0));
    assert!(close(m.img_r1, 75.0) && close(m.img_r5, 100.0));
    assert!(close(m.txt_r_mean, 250.0 / 3.0));
    assert!(close(m.img_r_mean, 275.0 / 3.0));
    assert!(close(m.r_mean, (250.0 / 3.0 + 275.0 / 3.0) / 2.0));

    // An image without captions is a TR miss (reference rank 1e20).
    let m = image_text_retrieval(&i2t, &t2i, &txt2img, &[vec![0, 1], vec![]]).unwrap();
    assert!(close(m.txt_r10, 50.0));

    // Errors instead of panics.
    let empty: Vec<Vec<f32>> = vec![];
    assert!(matches!(
        image_text_retrieval(&empty, &empty, &[], &[]),
        Err(MetricsError::Empty { .. })
    ));
    assert!(matches!(
        image_text_retrieval(&i2t, &t2i, &[0, 0, 1], &img2txts),
        Err(MetricsError::LengthMismatch { .. })
    ));
    assert!(matches!(
        image_text_retrieval(&i2t, &t2i, &[0, 0, 1, 5], &img2txts),
        Err(MetricsError::IndexOutOfRange { .. })
    ));
    let ragged = vec![vec![0.1f32, 0.2], vec![0.0f32, 0.1, 0.7, 0.2]];
    assert!(matches!(
        image_text_retrieval(&ragged, &t2i, &txt2img, &img2txts),
        Err(MetricsError::LengthMismatch { .. })
    ));
}

#[test]
fn video_text_recall_and_median_rank() {
    // 3 videos × 3 texts, text i ↔ video i.
    let v2t = vec![
        vec![0.9f64, 0.1, 0.0], // rank 0
        vec![0.5f64, 0.4, 0.6], // rank 2
        vec![0.0f64, 0.0, 0.0], // all tied, target is the last index → rank 0
    ];
    let t2v = vec![
        vec![0.1f64, 0.2, 0.3],          // rank 2
        vec![0.0f64, 1.0, 0.0],          // rank 0
        vec![-100.0f64, -100.0, -100.0], // all tied → rank 0
    ];
    let m = video_text_retrieval(&v2t, &t2v, &[0, 1, 2], &[0, 1, 2]).unwrap();
    assert!(close(m.txt_r1, 200.0 / 3.0) && close(m.txt_r5, 100.0));
    assert!(close(m.vid_r1, 200.0 / 3.0) && close(m.vid_r10, 100.0));
    assert!(close(m.vid_median_rank, 1.0)); // 1-based ranks {3, 1, 1}
    assert!(close(m.r_mean, (m.txt_r_mean + m.vid_r_mean) / 2.0));

    let empty: Vec<Vec<f64>> = vec![];
    assert!(matches!(
        video_text_retrieval(&empty, &empty, &[], &[]),
        Err(MetricsError::Empty { .. })
    ));
    let nan = vec![vec![f64::NAN, 0.0], vec![0.0, 1.0]];
    assert!(matches!(
        video_text_retrieval(&nan, &nan, &[0, 1], &[0, 1]),
        Err(MetricsError::NonFinite { .. })
    ));
}
