//! Caption metrics (PTB tokenization, BLEU, ROUGE-L, CIDEr-D) against the
//! golden pycocoevalcap outputs, plus hand-checked small cases.

mod common;

use std::collections::BTreeMap;

use mplug::metrics::{
    bleu, cider_d, evaluate_caption_map, evaluate_captions, evaluate_raw_captions, ptb,
    rouge::lcs_len, rouge_l, tokenize_caption, MetricsError,
};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn golden() -> Value {
    common::golden_io_json("metrics.json")
}

/// Entries of a JSON object keyed by integer ids, in ascending id order.
fn sorted_by_int_key(v: &Value) -> Vec<(i64, &Value)> {
    let mut out: Vec<(i64, &Value)> = v
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| (k.parse::<i64>().expect("integer id"), v))
        .collect();
    out.sort_by_key(|(k, _)| *k);
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

struct Captions {
    raw_cands: Vec<String>,
    raw_refs: Vec<Vec<String>>,
    ptb_cands: Vec<String>,
    ptb_refs: Vec<Vec<String>>,
}

fn captions(g: &Value) -> Captions {
    let c = &g["caption"];
    let raw_cands = sorted_by_int_key(&c["raw_cands"])
        .into_iter()
        .map(|(_, v)| v.as_str().unwrap().to_string())
        .collect();
    let ptb_cands = sorted_by_int_key(&c["ptb_cands"])
        .into_iter()
        .map(|(_, v)| v.as_str().unwrap().to_string())
        .collect();
    let raw_refs = sorted_by_int_key(&c["raw_refs"])
        .into_iter()
        .map(|(_, v)| strings(v))
        .collect();
    let ptb_refs = sorted_by_int_key(&c["ptb_refs"])
        .into_iter()
        .map(|(_, v)| strings(v))
        .collect();
    Captions {
        raw_cands,
        raw_refs,
        ptb_cands,
        ptb_refs,
    }
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= TOL,
        "{what}: got {got}, want {want} (diff {})",
        (got - want).abs()
    );
}

fn assert_all_close(got: &[f64], want: &Value, what: &str) {
    let want: Vec<f64> = want
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(*g, *w, &format!("{what}[{i}]"));
    }
}

#[test]
fn golden_ptb_tokenization_matches() {
    let g = golden();
    let c = captions(&g);
    for (raw, want) in c.raw_cands.iter().zip(&c.ptb_cands) {
        assert_eq!(&tokenize_caption(raw), want, "candidate {raw:?}");
    }
    let mut n = 0;
    for (raws, wants) in c.raw_refs.iter().zip(&c.ptb_refs) {
        assert_eq!(raws.len(), wants.len());
        for (raw, want) in raws.iter().zip(wants) {
            assert_eq!(&tokenize_caption(raw), want, "reference {raw:?}");
            n += 1;
        }
    }
    assert!(n > 0);
}

#[test]
fn golden_caption_scores_from_tokenized() {
    let g = golden();
    let c = captions(&g);
    let want = &g["caption"]["corpus"];
    let s = evaluate_captions(&c.ptb_cands, &c.ptb_refs).unwrap();
    for k in 0..4 {
        assert_close(
            s.bleu.corpus[k],
            want[format!("Bleu_{}", k + 1)].as_f64().unwrap(),
            &format!("Bleu_{}", k + 1),
        );
    }
    assert_close(
        s.rouge_l.corpus,
        want["ROUGE_L"].as_f64().unwrap(),
        "ROUGE_L",
    );
    assert_close(s.cider.corpus, want["CIDEr"].as_f64().unwrap(), "CIDEr");

    let per = &g["caption"]["per_image"];
    assert_all_close(&s.bleu.per_image[3], &per["Bleu_4"], "per-image Bleu_4");
    assert_all_close(&s.rouge_l.per_image, &per["ROUGE_L"], "per-image ROUGE_L");
    assert_all_close(&s.cider.per_image, &per["CIDEr"], "per-image CIDEr");

    // The named map mirrors COCOEvalCap's keys.
    let m = s.to_map();
    assert_close(m["CIDEr"], want["CIDEr"].as_f64().unwrap(), "map CIDEr");
    assert_eq!(m.len(), 6);
}

#[test]
fn golden_caption_scores_from_raw_and_keyed() {
    let g = golden();
    let c = captions(&g);
    let want = &g["caption"]["corpus"];
    let s = evaluate_raw_captions(&c.raw_cands, &c.raw_refs).unwrap();
    assert_close(
        s.bleu.corpus[3],
        want["Bleu_4"].as_f64().unwrap(),
        "raw Bleu_4",
    );
    assert_close(s.cider.corpus, want["CIDEr"].as_f64().unwrap(), "raw CIDEr");

    let cands: BTreeMap<usize, String> = c.ptb_cands.iter().cloned().enumerate().collect();
    let refs: BTreeMap<usize, Vec<String>> = c.ptb_refs.iter().cloned().enumerate().collect();
    let k = evaluate_caption_map(&cands, &refs).unwrap();
    assert_close(
        k.rouge_l.corpus,
        want["ROUGE_L"].as_f64().unwrap(),
        "keyed ROUGE_L",
    );

    let mut missing = refs.clone();
    missing.remove(&0);
    assert!(matches!(
        evaluate_caption_map(&cands, &missing),
        Err(MetricsError::IdMismatch { .. })
    ));
}

#[test]
fn ptb_contractions_and_punctuation() {
    let cases = [
        (
            "Don't touch the dog's tail!",
            "do n't touch the dog 's tail",
        ),
        (
            "A man can't ride; it's raining.",
            "a man ca n't ride it 's raining",
        ),
        (
            "We'll see. They're here, I'm sure",
            "we 'll see they 're here i 'm sure",
        ),
        (
            "a man (wearing a hat) sits",
            "a man -lrb- wearing a hat -rrb- sits",
        ),
        ("A \"STOP\" sign -- red", "a stop sign red"),
        (
            "a t-shirt with 1,000 dots... and 1.5 stripes",
            "a t-shirt with 1,000 dots and 1.5 stripes",
        ),
        ("a black/white cat", "a black\\/white cat"),
        ("a grey colour scheme", "a gray color scheme"),
        ("two dogs' bowls", "two dogs bowls"),
        ("It cannot be", "it can not be"),
        ("won't", "wo n't"),
        ("at 5 o'clock", "at 5 o'clock"),
        ("", ""),
        ("...", ""),
        ("a   b\nc", "a b c"),
    ];
    for (raw, want) in cases {
        assert_eq!(tokenize_caption(raw), want, "raw {raw:?}");
    }
    assert_eq!(
        ptb::ptb_tokens("He said \"hi\"."),
        vec!["He", "said", "``", "hi", "''", "."]
    );
    assert_eq!(ptb::americanize("favourite"), "favorite");
    assert_eq!(ptb::americanize("tour"), "tour");
    assert_eq!(ptb::americanize("contour"), "contour");
    assert_eq!(ptb::americanize("behaviours"), "behaviors");
}

#[test]
fn bleu_hand_checked() {
    // Identical candidate and reference: every precision is (c+1e-15)/(c+1e-9) ≈ 1.
    let s = bleu(&["a b c d"], &[vec!["a b c d"]]).unwrap();
    for v in &s.corpus {
        assert!((v - 1.0).abs() < 1e-8, "{v}");
    }
    // Unigram precision 2/3, no higher-order matches, candidate longer than ref.
    let s = bleu(&["a b x"], &[vec!["a b"]]).unwrap();
    let p1 = (2.0 + 1e-15) / (3.0 + 1e-9);
    assert!((s.corpus[0] - p1).abs() < 1e-12);
    let p2 = (1.0 + 1e-15) / (2.0 + 1e-9);
    assert!((s.corpus[1] - (p1 * p2).sqrt()).abs() < 1e-12);
    // Brevity penalty: candidate of 2 words, closest reference of 4.
    let s = bleu(&["a b"], &[vec!["a b c d", "a b c d e f"]]).unwrap();
    let bp = (1.0 - 4.0 / 2.0f64).exp();
    assert!((s.corpus[0] - bp).abs() < 1e-8);
    // Empty candidate: score 0, no NaN.
    let s = bleu(&[""], &[vec!["a b"]]).unwrap();
    assert!(s.corpus.iter().all(|v| v.is_finite() && *v < 1e-6));
    // Errors instead of panics.
    let no_refs: Vec<Vec<&str>> = vec![vec![]];
    assert!(matches!(
        bleu(&["a"], &no_refs),
        Err(MetricsError::NoReferences { .. })
    ));
    let empty: [&str; 0] = [];
    let empty_refs: Vec<Vec<&str>> = vec![];
    assert!(matches!(
        bleu(&empty, &empty_refs),
        Err(MetricsError::Empty { .. })
    ));
    assert!(matches!(
        bleu(&["a", "b"], &[vec!["a"]]),
        Err(MetricsError::LengthMismatch { .. })
    ));
}

#[test]
fn rouge_hand_checked() {
    assert_eq!(lcs_len(&["a", "b", "c", "d"], &["a", "c", "d", "x"]), 3);
    assert_eq!(lcs_len::<&str>(&[], &["a"]), 0);
    // cand "a c d", ref "a b c d": lcs 3, P = 1, R = 3/4.
    let s = rouge_l(&["a c d"], &[vec!["a b c d"]]).unwrap();
    let (p, r, b2) = (1.0, 0.75, 1.44);
    let want = (1.0 + b2) * p * r / (r + b2 * p);
    assert!((s.corpus - want).abs() < 1e-12);
    // No overlap → 0.
    let s = rouge_l(&["x y"], &[vec!["a b"]]).unwrap();
    assert_eq!(s.corpus, 0.0);
}

#[test]
fn cider_hand_checked() {
    // A single image: ref_len = ln(1) = 0 and every reference n-gram has df = 1,
    // so all weights vanish; the guarded division keeps the score at 0 (no NaN).
    let s = cider_d(&["a b c"], &[vec!["a b c"]]).unwrap();
    assert_eq!(s.corpus, 0.0);
    // Two images: the candidate identical to its single reference scores 10 * mean
    // over orders with non-empty vectors (orders 1..3 give cosine 1, order 4 is 0).
    let s = cider_d(&["a b c", "x y z"], &[vec!["a b c"], vec!["p q r"]]).unwrap();
    assert!(
        (s.per_image[0] - 10.0 * 3.0 / 4.0).abs() < 1e-9,
        "{:?}",
        s.per_image
    );
    assert_eq!(s.per_image[1], 0.0);
    assert!((s.corpus - 3.75).abs() < 1e-9);
}
