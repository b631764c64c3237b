//! VQA accuracy against the golden official-evaluator outputs, plus
//! hand-checked normalization, leave-one-out and video-QA accuracy cases.

mod common;

use mplug::metrics::vqa::{process_digit_article, process_punctuation};
use mplug::metrics::{
    exact_match_accuracy, exact_match_accuracy_by_type, normalize_answer, vqa_accuracy,
    MetricsError, VqaEvaluator, VqaPrediction, VqaQuestion,
};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn golden() -> Value {
    let dir = common::golden_dir();
    let path = dir.join("io/metrics.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden file {} is required: {e}", path.display()));
    serde_json::from_str(&text).expect("metrics.json is valid JSON")
}

fn golden_inputs(g: &Value) -> (Vec<VqaQuestion>, Vec<VqaPrediction>) {
    let qs: Vec<VqaQuestion> = serde_json::from_value(g["vqa"]["questions"].clone()).unwrap();
    let ps: Vec<VqaPrediction> = serde_json::from_value(g["vqa"]["predictions"].clone()).unwrap();
    (qs, ps)
}

#[test]
fn golden_vqa_accuracy() {
    let g = golden();
    let (qs, ps) = golden_inputs(&g);
    assert!(!qs.is_empty());
    // The fixture notes say percentages are rounded to 4 decimals.
    let report = VqaEvaluator::with_precision(Some(4))
        .evaluate(&qs, &ps)
        .unwrap();
    let want_overall = g["vqa"]["overall"].as_f64().unwrap();
    assert!(
        (report.overall - want_overall).abs() <= TOL,
        "{} vs {want_overall}",
        report.overall
    );
    let want = g["vqa"]["per_question"].as_object().unwrap();
    assert_eq!(report.per_question.len(), want.len());
    for (k, v) in want {
        let id: u64 = k.parse().unwrap();
        let got = report.per_question[&id];
        let w = v.as_f64().unwrap();
        assert!((got - w).abs() <= TOL, "question {id}: got {got}, want {w}");
    }
    // Unrounded values agree too, and the single-question API gives fractions.
    let raw = VqaEvaluator::with_precision(None)
        .evaluate(&qs, &ps)
        .unwrap();
    assert!((raw.overall - want_overall).abs() <= 1e-3);
    for (q, p) in qs.iter().zip(&ps) {
        let a = vqa_accuracy(&p.answer, &q.answers).unwrap();
        assert!((100.0 * a - report.per_question[&q.question_id]).abs() <= 1e-3);
    }
    // No types in the fixture → no breakdown.
    assert!(report.per_question_type.is_empty() && report.per_answer_type.is_empty());
}

#[test]
fn normalization_matches_reference_rules() {
    assert_eq!(normalize_answer("  Two dogs\n"), "2 dogs");
    assert_eq!(normalize_answer("the dog"), "dog");
    assert_eq!(normalize_answer("A Dog!"), "dog");
    assert_eq!(normalize_answer("dont know"), "don't know");
    assert_eq!(normalize_answer("none"), "0");
    assert_eq!(normalize_answer("1,000"), "1000");
    assert_eq!(normalize_answer("1.5"), "1.5");
    assert_eq!(normalize_answer("yes."), "yes");
    // Punctuation touching a space is deleted, otherwise replaced by a space.
    assert_eq!(process_punctuation("black-white"), "black white");
    assert_eq!(process_punctuation("black - white"), "black  white");
    assert_eq!(process_punctuation("x, y"), "x y");
    // Apostrophes and colons are not in the punctuation list.
    assert_eq!(process_punctuation("it's 3:30"), "it's 3:30");
    // At most 32 periods are removed (count = re.UNICODE = 32 in the reference).
    let dots = ".".repeat(40);
    assert_eq!(process_punctuation(&dots), ".".repeat(8));
    assert_eq!(
        process_digit_article("An Apple and THE pear"),
        "apple and pear"
    );
}

#[test]
fn leave_one_out_accuracy_hand_checked() {
    let ten = |v: &[(&str, usize)]| -> Vec<String> {
        v.iter()
            .flat_map(|(a, n)| std::iter::repeat_n(a.to_string(), *n))
            .collect()
    };
    // k matches among 10 answers: mean over leave-one-out subsets of min(1, m/3).
    let cases: [(usize, f64); 6] = [
        (0, 0.0),
        (1, 0.3), // 9 subsets with 1 match → 9/30
        (2, 0.6), // 2·(1/3) + 8·(2/3) = 6 → /10
        (3, 0.9), // 3·(2/3) + 7·1 = 9 → /10
        (4, 1.0),
        (10, 1.0),
    ];
    for (k, want) in cases {
        let gts = ten(&[("cat", k), ("dog", 10 - k)]);
        let got = vqa_accuracy("cat", &gts).unwrap();
        assert!((got - want).abs() < 1e-12, "k={k}: {got}");
    }
    // All-identical ground truth is not normalized: "Dog!" ≠ prediction "dog".
    let same = vec!["Dog!".to_string(); 10];
    assert_eq!(vqa_accuracy("dog", &same).unwrap(), 0.0);
    // Ground truth gets punctuation processing but neither digit mapping nor
    // stripping: "two" stays "two" and "2!" becomes "2 ", so neither matches "2".
    let gts = ten(&[("two", 5), ("2!", 3), ("2", 2)]);
    assert!((vqa_accuracy("Two", &gts).unwrap() - 0.6).abs() < 1e-12);
    // ... while "2,000" loses its comma entirely (digit-comma-digit rule).
    let gts = ten(&[("2,000", 3), ("x", 7)]);
    assert!((vqa_accuracy("2000", &gts).unwrap() - 0.9).abs() < 1e-12);
    assert!(matches!(
        vqa_accuracy::<&str>("x", &[]),
        Err(MetricsError::NoReferences { .. })
    ));
}

#[test]
fn evaluator_breakdown_and_errors() {
    let q = |id: u64, ans: &str, qt: &str, at: &str| VqaQuestion {
        question_id: id,
        answers: vec![ans.to_string(); 10],
        question_type: Some(qt.to_string()),
        answer_type: Some(at.to_string()),
    };
    let p = |id: u64, a: &str| VqaPrediction {
        question_id: id,
        answer: a.to_string(),
    };
    let qs = vec![
        q(1, "yes", "is the", "yes/no"),
        q(2, "no", "is the", "yes/no"),
        q(3, "2", "how many", "number"),
    ];
    let ps = vec![p(1, "yes"), p(2, "yes"), p(3, "two")];
    let r = VqaEvaluator::default().evaluate(&qs, &ps).unwrap();
    assert_eq!(r.per_question[&1], 100.0);
    assert_eq!(r.per_question[&2], 0.0);
    assert_eq!(r.per_question[&3], 100.0);
    assert_eq!(r.overall, 66.67);
    assert_eq!(r.per_question_type["is the"], 50.0);
    assert_eq!(r.per_question_type["how many"], 100.0);
    assert_eq!(r.per_answer_type["yes/no"], 50.0);

    // Official annotation format (answers as objects) deserializes too.
    let j = serde_json::json!({"question_id": 7, "answers": [{"answer": "a", "answer_id": 1}],
                               "question_type": "what", "answer_type": "other"});
    let parsed: VqaQuestion = serde_json::from_value(j).unwrap();
    assert_eq!(parsed.answers, vec!["a".to_string()]);

    let ev = VqaEvaluator::default();
    assert!(matches!(
        ev.evaluate(&[], &[]),
        Err(MetricsError::Empty { .. })
    ));
    assert!(matches!(
        ev.evaluate(&qs, &ps[..2]),
        Err(MetricsError::IdMismatch { .. })
    ));
    let mut extra = ps.clone();
    extra.push(p(9, "x"));
    assert!(matches!(
        ev.evaluate(&qs, &extra),
        Err(MetricsError::IdMismatch { .. })
    ));
    let no_answers = vec![VqaQuestion {
        question_id: 1,
        answers: vec![],
        question_type: None,
        answer_type: None,
    }];
    assert!(matches!(
        ev.evaluate(&no_answers, &ps[..1]),
        Err(MetricsError::NoReferences { .. })
    ));
}

#[test]
fn exact_match_accuracy_for_video_qa() {
    assert_eq!(
        exact_match_accuracy(&["a", "b", "c", "d"], &["a", "x", "c", "D"]).unwrap(),
        0.5
    );
    assert_eq!(exact_match_accuracy(&["a"], &["a"]).unwrap(), 1.0);
    let empty: [&str; 0] = [];
    assert!(matches!(
        exact_match_accuracy(&empty, &empty),
        Err(MetricsError::Empty { .. })
    ));
    assert!(matches!(
        exact_match_accuracy(&["a"], &["a", "b"]),
        Err(MetricsError::LengthMismatch { .. })
    ));
}

#[test]
fn exact_match_accuracy_by_question_type() {
    let preds = ["a", "b", "c", "d", "e"];
    let labels = ["a", "x", "c", "d", "y"];
    let types = [Some("one"), Some("one"), Some("two"), None, Some("two")];
    let by = exact_match_accuracy_by_type(&preds, &labels, &types).unwrap();
    // "one": 1 of 2; "two": 1 of 2 (the untyped hit counts nowhere).
    assert_eq!(by.len(), 2);
    assert_eq!(by["one"], 0.5);
    assert_eq!(by["two"], 0.5);
    let untyped: [Option<&str>; 2] = [None, None];
    assert!(
        exact_match_accuracy_by_type(&["a", "b"], &["a", "b"], &untyped)
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        exact_match_accuracy_by_type(&["a"], &["a"], &[Some("t"), Some("t")]),
        Err(MetricsError::LengthMismatch { .. })
    ));
}
