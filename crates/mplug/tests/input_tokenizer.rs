//! Tokenizer parity with the reference (`io/tokenizer.json` of the golden set) and its errors.

mod common;

use candle_core::{DType, Device};
use mplug::input::{EncodeOptions, InputError, Padding, Tokenizer};
use serde_json::Value;

const VOCAB_MD5: &str = "64800d5d8528ce344256daf115d4965e";

fn golden() -> Value {
    common::golden_io_json("tokenizer.json")
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("golden tokenizer.json has no array {key:?}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .expect("array of rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect()
        })
        .collect()
}

/// The reference tokenizer accepts empty texts; the golden set includes some.
fn reference_tokenizer() -> Tokenizer {
    Tokenizer::bert_base_uncased()
        .expect("embedded vocab")
        .with_allow_empty(true)
}

fn assert_rows_eq(what: &str, texts: &[String], got: &[Vec<u32>], want: &[Vec<u32>]) {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{what}: row {i} (text {:?})", texts.get(i));
    }
}

#[test]
fn golden_uses_the_embedded_vocabulary() {
    let g = golden();
    assert_eq!(
        g["vocab_md5"].as_str(),
        Some(VOCAB_MD5),
        "golden tokenizer.json was made with another vocabulary than the embedded one"
    );
}

#[test]
fn single_ids_match_reference() {
    let g = golden();
    let tok = reference_tokenizer();
    let texts = strings(&g, "texts");
    let want = rows(&g["single_ids"]);
    assert_eq!(texts.len(), want.len());
    let got: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tok.encode(t, None).unwrap_or_else(|e| panic!("{t:?}: {e}")))
        .collect();
    assert_rows_eq("single_ids", &texts, &got, &want);
}

fn check_batch(key: &str, options: EncodeOptions) {
    let g = golden();
    let tok = reference_tokenizer();
    let texts = strings(&g, "texts");
    let want_ids = rows(&g[key]["input_ids"]);
    let want_mask = rows(&g[key]["attention_mask"]);
    let batch_texts = &texts[..want_ids.len()];
    let batch = tok
        .encode_batch(batch_texts, &options)
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_rows_eq(key, batch_texts, &batch.input_ids, &want_ids);
    assert_rows_eq(key, batch_texts, &batch.attention_mask, &want_mask);

    let (ids, mask) = batch.to_tensors(&Device::Cpu).expect("tensors");
    assert_eq!(ids.dims(), &[want_ids.len(), want_ids[0].len()]);
    assert_eq!(ids.dtype(), DType::U32);
    assert_eq!(ids.to_vec2::<u32>().expect("ids"), want_ids);
    assert_eq!(mask.to_vec2::<u32>().expect("mask"), want_mask);
    let fmask = batch
        .attention_mask_tensor(&Device::Cpu, DType::F32)
        .expect("f32 mask");
    assert_eq!(fmask.dtype(), DType::F32);
}

#[test]
fn batch_longest_truncated_to_25_matches_reference() {
    check_batch(
        "batch_longest_trunc25",
        EncodeOptions::longest().truncate(25),
    );
}

#[test]
fn batch_padded_to_30_matches_reference() {
    check_batch("batch_maxlen30", EncodeOptions::fixed(30));
}

#[test]
fn postprocessed_decoding_matches_reference() {
    let g = golden();
    let tok = reference_tokenizer();
    let cases = rows(&g["decode_cases"]);
    let want = strings(&g, "decoded_postprocessed");
    assert_eq!(cases.len(), want.len());
    for (ids, w) in cases.iter().zip(&want) {
        assert_eq!(&tok.decode_postprocessed(ids), w, "ids {ids:?}");
    }
    assert_eq!(tok.decode_postprocessed_batch(&cases), want);
}

#[test]
fn decode_keeps_special_tokens_and_cleans_up() {
    let tok = reference_tokenizer();
    let ids = tok.encode("a man's dog, isn't it?", None).unwrap();
    assert_eq!(tok.decode(&ids), "[CLS] a man's dog, isn't it? [SEP]");
    // Out-of-vocabulary ids read as [UNK], as the reference's ids_to_tokens.get(.., unk) does.
    assert_eq!(tok.decode(&[101, 999_999, 102]), "[CLS] [UNK] [SEP]");
    assert_eq!(tok.decode_postprocessed(&[101, 102, 0, 0]), "");
}

#[test]
fn vqa_answers_end_with_sep() {
    let tok = Tokenizer::bert_base_uncased().unwrap();
    let batch = tok.encode_answers(&["yes", "two men"]).unwrap();
    assert_eq!(
        batch.input_ids,
        vec![
            vec![101, 2748, 102, 102, 0],
            vec![101, 2048, 2273, 102, 102]
        ]
    );
    assert_eq!(
        batch.attention_mask,
        vec![vec![1, 1, 1, 1, 0], vec![1, 1, 1, 1, 1]]
    );
    assert!(matches!(
        tok.encode_answers(&["yes", " "]),
        Err(InputError::EmptyText { index: 1 })
    ));
}

#[test]
fn empty_text_is_an_error_by_default() {
    let tok = Tokenizer::bert_base_uncased().unwrap();
    for text in ["", "   ", "\u{200b}\t\n"] {
        let err = tok.encode(text, None).unwrap_err();
        assert!(
            matches!(err, InputError::EmptyText { index: 0 }),
            "{text:?}: {err}"
        );
    }
    let err = tok
        .encode_batch(&["a cat", "dog", ""], &EncodeOptions::longest())
        .unwrap_err();
    assert!(matches!(err, InputError::EmptyText { index: 2 }), "{err}");
    assert!(err.to_string().contains("#2"), "{err}");
    assert!(matches!(
        tok.encode_batch::<&str>(&[], &EncodeOptions::longest()),
        Err(InputError::EmptyBatch)
    ));
}

#[test]
fn too_long_text_is_an_error_without_truncation() {
    let tok = Tokenizer::bert_base_uncased()
        .unwrap()
        .with_max_positions(16);
    let long = "the quick brown fox jumps over the lazy dog ".repeat(3);
    let err = tok.encode(&long, None).unwrap_err();
    match &err {
        InputError::TextTooLong {
            index,
            tokens,
            limit,
        } => assert_eq!((*index, *tokens, *limit), (0, 29, 16)),
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("29 tokens"), "{err}");
    // With truncation the same text fits.
    let ids = tok.encode(&long, Some(16)).unwrap();
    assert_eq!(ids.len(), 16);
    assert_eq!((ids[0], ids[15]), (101, 102));
    // Batches: the default limit is 512 positions.
    let tok = Tokenizer::bert_base_uncased().unwrap();
    let huge = "word ".repeat(600);
    let err = tok
        .encode_batch(&["short", huge.as_str()], &EncodeOptions::longest())
        .unwrap_err();
    assert!(
        matches!(
            err,
            InputError::TextTooLong {
                index: 1,
                tokens: 602,
                limit: 512
            }
        ),
        "{err}"
    );
    // Fixed padding without truncation refuses a longer text.
    let opts = EncodeOptions {
        padding: Padding::Fixed(4),
        truncation: None,
    };
    let err = tok
        .encode_batch(&["one two three four"], &opts)
        .unwrap_err();
    assert!(
        matches!(err, InputError::TextTooLong { limit: 4, .. }),
        "{err}"
    );
    // Truncation shorter than [CLS] [SEP] is a configuration error.
    assert!(matches!(
        tok.encode("a", Some(1)),
        Err(InputError::InvalidConfig(_))
    ));
}

#[test]
fn vocab_file_and_tokenizer_json_give_the_same_ids() {
    let g = golden();
    let texts = strings(&g, "texts");
    let want = rows(&g["single_ids"]);
    let vocab_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/bert-base-uncased-vocab.txt"
    );
    let from_vocab = Tokenizer::from_file(vocab_path)
        .unwrap()
        .with_allow_empty(true);

    // A Hugging Face tokenizer.json equivalent to BertTokenizerFast(bert-base-uncased).
    let vocab: serde_json::Map<String, Value> = std::fs::read_to_string(vocab_path)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, t)| (t.to_string(), Value::from(i as u64)))
        .collect();
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst",
            "stride": 0},
        "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(100, "[UNK]"), special(101, "[CLS]"),
            special(102, "[SEP]"), special(103, "[MASK]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
            "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": vocab}
    });
    let dir = std::env::temp_dir().join(format!("mplug-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("tokenizer.json");
    std::fs::write(&json_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let from_json = Tokenizer::from_file(&json_path)
        .unwrap()
        .with_allow_empty(true);
    std::fs::remove_dir_all(&dir).ok();

    for (text, w) in texts.iter().zip(&want) {
        assert_eq!(
            &from_vocab.encode(text, None).unwrap(),
            w,
            "vocab.txt: {text:?}"
        );
        // The file's own truncation (8) is ignored.
        assert_eq!(
            &from_json.encode(text, None).unwrap(),
            w,
            "tokenizer.json: {text:?}"
        );
    }
}

#[test]
fn bad_tokenizer_files_are_errors() {
    let err = Tokenizer::from_file("/nonexistent/vocab.txt").unwrap_err();
    assert!(matches!(err, InputError::TokenizerLoad { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/vocab.txt"), "{err}");
    let err = Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.json"),
        "{err}"
    );
    // A vocabulary without the BERT special tokens.
    let err =
        Tokenizer::from_vocab_bytes(b"a\nb\nc\n", std::path::Path::new("tiny.txt")).unwrap_err();
    assert!(
        matches!(err, InputError::MissingSpecialToken { .. }),
        "{err}"
    );
}

#[test]
fn tokenize_gives_wordpieces() {
    let tok = Tokenizer::bert_base_uncased().unwrap();
    assert_eq!(
        tok.tokenize("Tabs\tand newlines").unwrap(),
        vec!["tab", "##s", "and", "new", "##lines"]
    );
    assert_eq!(tok.token_to_id("[MASK]"), Some(103));
    assert_eq!(tok.id_to_token(2748).as_deref(), Some("yes"));
}
