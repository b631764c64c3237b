//! Properties over generated inputs (proptest): tokenization round trips, the letterbox's box
//! mapping and its inverse, the grounding flip, and the edge cases of the box and answer
//! metrics.

use mplug::data::grounding_augment::flip_box;
use mplug::input::{LetterboxInfo, Tokenizer};
use mplug::metrics::grounding::box_iou;
use mplug::metrics::vqa::vqa_accuracy;
use mplug::tasks::grounding::{cxcywh_to_xyxy, generalized_iou};
use proptest::prelude::*;
use std::sync::OnceLock;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::bert_base_uncased().expect("BERT's vocabulary"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Lowercase words decode to themselves (WordPiece covers every ASCII letter), and case
    /// does not matter to an uncased vocabulary.
    #[test]
    fn words_round_trip_through_the_tokenizer(words in prop::collection::vec("[a-z]{1,12}", 1..8)) {
        let text = words.join(" ");
        let t = tokenizer();
        let ids = t.encode(&text, None).unwrap();
        prop_assert_eq!(ids.first().copied(), Some(t.cls_id()));
        prop_assert_eq!(ids.last().copied(), Some(t.sep_id()));
        prop_assert_eq!(t.decode_postprocessed(&ids), text.clone());
        prop_assert_eq!(t.encode(&text.to_uppercase(), None).unwrap(), ids);
    }

    /// Truncation keeps `[CLS]` first and `[SEP]` last, within the limit.
    #[test]
    fn truncation_keeps_the_frame(words in prop::collection::vec("[a-z]{1,8}", 1..30), limit in 3usize..20) {
        let t = tokenizer();
        let ids = t.encode(&words.join(" "), Some(limit)).unwrap();
        prop_assert!(ids.len() <= limit);
        prop_assert_eq!(ids.first().copied(), Some(t.cls_id()));
        prop_assert_eq!(ids.last().copied(), Some(t.sep_id()));
    }

    /// A box inside the image maps to the model's canvas fractions and back to itself.
    #[test]
    fn letterbox_box_mapping_inverts(
        w in 1u32..3000, h in 1u32..3000, size in prop::sample::select(vec![224u32, 256, 336, 384]),
        a in 0.0f32..1.0, b in 0.0f32..1.0, c in 0.0f32..1.0, d in 0.0f32..1.0,
    ) {
        let info = LetterboxInfo::new(w, h, size).unwrap();
        let (x0, x1) = ((a.min(c)) * w as f32, (a.max(c)) * w as f32);
        let (y0, y1) = ((b.min(d)) * h as f32, (b.max(d)) * h as f32);
        let cxcywh = info.box_from_original([x0, y0, x1, y1]);
        for v in cxcywh {
            prop_assert!((-1e-4..=1.0 + 1e-4).contains(&v), "{cxcywh:?}");
        }
        let back = info.box_to_original(cxcywh);
        let tol = 1e-3 * w.max(h) as f32;
        for (got, want) in back.iter().zip([x0, y0, x1, y1]) {
            prop_assert!((got - want).abs() <= tol, "{back:?} vs {:?}", [x0, y0, x1, y1]);
        }
    }

    /// The grounding flip mirrors an `(x0, y0, x1, y1)` box inside the image, and twice is the
    /// identity.
    #[test]
    fn flipping_twice_is_the_identity(w in 1u32..2000, a in 0.0f64..1.0, b in 0.0f64..1.0, y0 in 0.0f64..500.0, bh in 0.0f64..500.0) {
        let (x0, x1) = (a.min(b) * w as f64, a.max(b) * w as f64);
        let bbox = [x0, y0, x1, y0 + bh];
        let once = flip_box(bbox, w);
        prop_assert!(once[0] >= -1e-9 && once[0] <= once[2] && once[2] <= w as f64 + 1e-9, "{once:?}");
        prop_assert!(((once[2] - once[0]) - (x1 - x0)).abs() < 1e-9);
        let twice = flip_box(once, w);
        for (p, q) in twice.iter().zip(bbox) {
            prop_assert!((p - q).abs() < 1e-9, "{twice:?} vs {bbox:?}");
        }
    }

    /// IoU is symmetric, within [0, 1], 1 for a box with itself and 0 for disjoint boxes.
    #[test]
    fn box_iou_is_a_similarity(
        a in prop::array::uniform4(0.0f64..100.0), b in prop::array::uniform4(0.0f64..100.0),
    ) {
        let norm = |v: [f64; 4]| [v[0].min(v[2]), v[1].min(v[3]), v[0].max(v[2]) + 1.0, v[1].max(v[3]) + 1.0];
        let (a, b) = (norm(a), norm(b));
        let ab = box_iou(&a, &b);
        prop_assert!((0.0..=1.0).contains(&ab), "{ab}");
        prop_assert!((ab - box_iou(&b, &a)).abs() < 1e-12);
        prop_assert!((box_iou(&a, &a) - 1.0).abs() < 1e-12);
        let far = [a[2] + 1.0, a[3] + 1.0, a[2] + 5.0, a[3] + 5.0];
        prop_assert_eq!(box_iou(&a, &far), 0.0);
    }

    /// Generalized IoU lies in [-1, 1] and is 1 for a box with itself, up to the reference's
    /// 1e-5 guard in the union (which matters for tiny boxes: 1 - 1e-5 / area).
    #[test]
    fn generalized_iou_is_bounded(a in prop::array::uniform4(0.05f32..0.95), b in prop::array::uniform4(0.05f32..0.95)) {
        let (a, b) = (cxcywh_to_xyxy(&a), cxcywh_to_xyxy(&b));
        let g = generalized_iou(&a, &b);
        prop_assert!((-1.0 - 1e-5..=1.0 + 1e-5).contains(&g), "{g}");
        let area = (a[2] - a[0]) * (a[3] - a[1]);
        let own = generalized_iou(&a, &a);
        prop_assert!(own <= 1.0 && 1.0 - own <= 1e-5 / area + 1e-5, "{own} for area {area}");
    }

    /// VQA accuracy is in [0, 1]; an answer that at least four of ten annotators gave scores 1
    /// (every annotator left out still sees three others agree), three 0.9, none 0. (Answers
    /// are drawn from letters that are not articles: the prediction `a` is normalized to
    /// nothing, as the reference normalizes it, and then matches no annotator.)
    #[test]
    fn vqa_accuracy_is_bounded(answers in prop::collection::vec("[b-d]", 10), pred in "[b-e]") {
        let acc = vqa_accuracy(&pred, &answers).unwrap();
        prop_assert!((0.0..=1.0).contains(&acc), "{acc}");
        let n = answers.iter().filter(|a| **a == pred).count();
        if n >= 4 { prop_assert!((acc - 1.0).abs() < 1e-12); }
        if n == 3 { prop_assert!((acc - 0.9).abs() < 1e-12); }
        if n == 0 { prop_assert_eq!(acc, 0.0); }
    }
}
