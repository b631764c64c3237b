//! `mplug index` / `mplug search` end to end on the golden tiny retrieval checkpoint, and the
//! `--batch-size` / `--output` options of `mplug caption` and `mplug retrieve`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A folder `dir/photos` with copies of the named example images.
fn photos(dir: &Path, names: &[&str]) -> PathBuf {
    let root = dir.join("photos");
    std::fs::create_dir_all(&root).unwrap();
    for n in names {
        std::fs::copy(image(n), root.join(n)).unwrap();
    }
    root
}

/// `mplug index ROOT --json EXTRA...` with the golden folder as model: the summary.
fn index(root: &Path, extra: &[&str]) -> Value {
    let m = tiny_model();
    let mut args = vec!["index", s(root), "--model", s(&m), "--json", "--quiet"];
    args.extend(extra);
    let o = mplug_ok(&args);
    json_lines(&o.stdout).remove(0)
}

fn counts(v: &Value) -> [u64; 4] {
    ["added", "updated", "removed", "unchanged"].map(|k| v[k].as_u64().unwrap())
}

/// `mplug search TEXT` on an index: `(file name, itm, itc)` best first.
fn search(index: &Path, text: &str, extra: &[&str]) -> Vec<(String, f64, f64)> {
    let m = tiny_model();
    let mut args = vec![
        "search",
        text,
        "--model",
        s(&m),
        "--index",
        s(index),
        "--json",
    ];
    args.extend(extra);
    let o = mplug_ok(&args);
    json_lines(&o.stdout)
        .iter()
        .map(|h| {
            let p = PathBuf::from(h["path"].as_str().unwrap());
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                h["itm"].as_f64().unwrap(),
                h["itc"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// `mplug retrieve --text TEXT IMAGES...`: ITM score per file name.
fn retrieve_scores(text: &str, images: &[PathBuf]) -> HashMap<String, f64> {
    let m = tiny_model();
    let mut args = vec!["retrieve", "--model", s(&m), "--json", "--text", text];
    args.extend(images.iter().map(|p| s(p)));
    let o = mplug_ok(&args);
    json_lines(&o.stdout)
        .iter()
        .map(|row| {
            let p = PathBuf::from(row["image"].as_str().unwrap());
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                row["texts"][0]["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_scores(hits: &[(String, f64, f64)], want: &HashMap<String, f64>, tol: f64) {
    for (name, itm, itc) in hits {
        let w = want[name];
        assert!(
            (itm - w).abs() <= tol,
            "{name}: search ITM {itm} vs retrieve {w} (tolerance {tol})"
        );
        assert!((-1.0001..=1.0001).contains(itc), "{name}: ITC {itc}");
    }
    for pair in hits.windows(2) {
        assert!(pair[0].1 >= pair[1].1, "not ranked by ITM: {hits:?}");
    }
}

#[test]
fn index_search_update_and_remove() {
    let dir = scratch("index-update");
    let root = photos(&dir, &["gray.png", "rgb.png", "photo.jpg"]);
    std::fs::write(root.join("broken.jpg"), b"not a jpeg at all").unwrap();
    let idx = root.join(".mplug-index");

    // Build: the broken file is reported and skipped.
    let m = tiny_model();
    let o = mplug_ok(&[
        "index",
        s(&root),
        "--model",
        s(&m),
        "--json",
        "--tokens-dtype",
        "f32",
    ]);
    let v = json_lines(&o.stdout).remove(0);
    assert_eq!(counts(&v), [3, 0, 0, 0], "{v}");
    assert_eq!(v["images"], 3);
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{v}");
    assert!(skipped[0]["path"].as_str().unwrap().ends_with("broken.jpg"));
    assert!(o.stderr.contains("warning: skipped") && o.stderr.contains("broken.jpg"));
    for f in [
        "manifest.json",
        "features.safetensors",
        "tokens-0000.safetensors",
    ] {
        assert!(idx.join(f).is_file(), "index lacks {f}");
    }

    // Search: every image re-ranked, ITM scores as `mplug retrieve` computes them.
    let text = "a cat on a sofa";
    let hits = search(&idx, text, &["--k", "16", "--top", "10"]);
    assert_eq!(hits.len(), 3, "{hits:?}");
    let files: Vec<PathBuf> = ["gray.png", "rgb.png", "photo.jpg"]
        .iter()
        .map(|n| root.join(n))
        .collect();
    assert_scores(&hits, &retrieve_scores(text, &files), 1e-4);
    // --top and --k bound the results.
    assert_eq!(search(&idx, text, &["--top", "2"]).len(), 2);
    assert_eq!(search(&idx, text, &["--k", "1"]).len(), 1);
    let plain = mplug_ok(&["search", text, "--model", s(&m), "--index", s(&idx)]);
    assert_eq!(plain.stdout.lines().count(), 3);
    assert_eq!(plain.stdout.lines().next().unwrap().split('\t').count(), 3);

    // Nothing changed: nothing encoded.
    assert_eq!(counts(&index(&root, &[])), [0, 0, 0, 3]);

    // A new photo: only it is encoded.
    std::fs::copy(image("rgba.png"), root.join("rgba.png")).unwrap();
    let v = index(&root, &["--tokens-dtype", "f32"]);
    assert_eq!(counts(&v), [1, 0, 0, 3], "{v}");
    assert_eq!(v["images"], 4);

    // A changed photo is encoded again; a deleted one is dropped.
    std::fs::copy(image("rgb.png"), root.join("photo.jpg")).unwrap();
    std::fs::remove_file(root.join("gray.png")).unwrap();
    std::fs::remove_file(root.join("broken.jpg")).unwrap();
    let v = index(&root, &["--tokens-dtype", "f32"]);
    assert_eq!(counts(&v), [0, 1, 1, 2], "{v}");
    assert_eq!(v["images"], 3);
    assert!(v["skipped"].as_array().unwrap().is_empty());

    let hits = search(&idx, text, &[]);
    let names: Vec<&str> = hits.iter().map(|h| h.0.as_str()).collect();
    assert_eq!(hits.len(), 3, "{names:?}");
    assert!(!names.contains(&"gray.png"), "{names:?}");
    let files: Vec<PathBuf> = ["rgb.png", "rgba.png", "photo.jpg"]
        .iter()
        .map(|n| root.join(n))
        .collect();
    assert_scores(&hits, &retrieve_scores(text, &files), 1e-4);
}

#[test]
fn token_storage_options() {
    let dir = scratch("index-tokens");
    let names = ["gray.png", "rgb.png", "photo.jpg", "rgba.png"];
    let root = photos(&dir, &names);
    let files: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
    let text = "a rocket launch";
    let want = retrieve_scores(text, &files);

    // Default: f16 tokens, a little rounding in the ITM scores.
    let f16 = dir.join("f16");
    index(&root, &["--index", s(&f16), "--batch-size", "3"]);
    let hits = search(&f16, text, &[]);
    assert_eq!(hits.len(), 4);
    assert_scores(&hits, &want, 2e-2);

    // No tokens: the top k images are encoded again from their files, exactly.
    let none = dir.join("none");
    index(
        &root,
        &["--index", s(&none), "--no-tokens", "--batch-size", "1"],
    );
    let shards = std::fs::read_dir(&none)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tokens-"))
        .count();
    assert_eq!(shards, 0);
    let hits = search(&none, text, &[]);
    assert_eq!(hits.len(), 4);
    assert_scores(&hits, &want, 1e-4);

    // A file changed after indexing without tokens is reported, not mis-scored.
    std::fs::copy(image("rgb.png"), root.join("gray.png")).unwrap();
    let m = tiny_model();
    mplug_fails(
        &[
            "search",
            text,
            "--model",
            s(&m),
            "--index",
            s(&none),
            "--k",
            "4",
        ],
        "changed since it was indexed",
    );
}

#[test]
fn other_models_and_missing_index_are_refused() {
    let dir = scratch("index-refuse");
    let root = photos(&dir, &["gray.png", "photo.jpg"]);
    let idx = dir.join("idx");
    index(&root, &["--index", s(&idx)]);
    let m = tiny_model();
    let k = m.join("config.json");

    // The same checkpoint named as a file with its configuration is the same model.
    let c = m.join("retrieval.pth");
    let o = mplug_ok(&[
        "search",
        "a dog",
        "--model",
        s(&c),
        "--config",
        s(&k),
        "--index",
        s(&idx),
        "--json",
    ]);
    assert_eq!(o.stdout.lines().count(), 2);

    // Another retrieval model (the same weights converted to f16) is refused...
    let other = dir.join("retrieval-f16");
    mplug_ok(&[
        "convert",
        s(&c),
        s(&other),
        "--config",
        s(&k),
        "--task",
        "retrieval",
        "--dtype",
        "f16",
    ]);
    mplug_fails(
        &["search", "a dog", "--model", s(&other), "--index", s(&idx)],
        "another model",
    );
    mplug_fails(
        &["index", s(&root), "--model", s(&other), "--index", s(&idx)],
        "--rebuild",
    );
    // ... unless the index is rebuilt for it.
    let o = mplug_ok(&[
        "index",
        s(&root),
        "--model",
        s(&other),
        "--index",
        s(&idx),
        "--rebuild",
        "--json",
    ]);
    assert_eq!(counts(&json_lines(&o.stdout)[0]), [2, 0, 0, 0]);
    let o = mplug_ok(&[
        "search",
        "a dog",
        "--model",
        s(&other),
        "--index",
        s(&idx),
        "--json",
    ]);
    assert_eq!(o.stdout.lines().count(), 2);

    // A model for another task, a missing index, a missing folder.
    let g = m.join("grounding.pth");
    mplug_fails(
        &[
            "index",
            s(&root),
            "--model",
            s(&g),
            "--config",
            s(&k),
            "--index",
            s(&idx),
        ],
        "not a retrieval model",
    );
    let nowhere = dir.join("nowhere");
    mplug_fails(
        &["search", "a dog", "--model", s(&m), "--index", s(&nowhere)],
        "holds no image index",
    );
    mplug_fails(&["index", s(&nowhere), "--model", s(&m)], "is not a folder");
    // A different image folder for the same index is refused.
    let root2 = dir.join("more");
    std::fs::create_dir_all(&root2).unwrap();
    mplug_fails(
        &["index", s(&root2), "--model", s(&other), "--index", s(&idx)],
        "is for images under",
    );

    // The same model with its weights in another format is refused by name (its features
    // differ a little from f32's); rebuilt with them, the index answers in that format only.
    let formats = dir.join("formats");
    index(&root, &["--index", s(&formats)]);
    let search_in = |dtype: &'static str| {
        vec![
            "search",
            "a dog",
            "--model",
            s(&m),
            "--index",
            s(&formats),
            "--dtype",
            dtype,
        ]
    };
    mplug_fails(&search_in("bf16"), "made with f32 weights");
    let index_bf16 = [
        "index",
        s(&root),
        "--model",
        s(&m),
        "--index",
        s(&formats),
        "--dtype",
        "bf16",
    ];
    mplug_fails(&index_bf16, "--rebuild");
    let o = mplug_ok(&[&index_bf16[..], &["--rebuild", "--json"]].concat());
    assert_eq!(counts(&json_lines(&o.stdout)[0]), [2, 0, 0, 0]);
    assert_eq!(mplug_ok(&search_in("bf16")).stdout.lines().count(), 2);
    mplug_fails(&search_in("f32"), "made with bf16 weights");
}

#[test]
fn caption_and_retrieve_batches_write_jsonl() {
    let dir = scratch("batch-output");
    let m = tiny_model();
    let imgs: Vec<PathBuf> = ["gray.png", "rgb.png", "photo.jpg"]
        .iter()
        .map(|n| image(n))
        .collect();
    let img_args: Vec<&str> = imgs.iter().map(|p| s(p)).collect();

    // Captions: batches of one written to a file equal one batch printed as JSON.
    let mut args = vec!["caption", "--model", s(&m), "--json", "--batch-size", "8"];
    args.extend(&img_args);
    let whole = mplug_ok(&args);
    let out = dir.join("captions.jsonl");
    let mut args = vec!["caption", "--model", s(&m), "--batch-size", "1"];
    args.extend(["--output", s(&out)]);
    args.extend(&img_args);
    let o = mplug_ok(&args);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(json_lines(&written).len(), 3);
    // The same captions; scores equal to rounding, not bit for bit: decoding one image's five
    // beams runs the few-row kernel (up to 8 rows, its own summation order), eight images'
    // forty beams run gemm.
    for (a, b) in json_lines(&written).iter().zip(&json_lines(&whole.stdout)) {
        let (mut a, mut b) = (a.clone(), b.clone());
        let (ca, cb) = (a["captions"].take(), b["captions"].take());
        assert_eq!(a, b);
        let (ca, cb) = (ca.as_array().unwrap(), cb.as_array().unwrap());
        assert_eq!(ca.len(), cb.len());
        for (x, y) in ca.iter().zip(cb) {
            assert_eq!(x["caption"], y["caption"]);
            let (sx, sy) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
            assert!((sx - sy).abs() <= 1e-5 * sx.abs().max(1.0), "{sx} vs {sy}");
        }
    }

    // Retrieval: the same, scores within rounding.
    let base = [
        "retrieve",
        "--model",
        s(&m),
        "--text",
        "a cat",
        "--text",
        "a rocket",
    ];
    let mut args = base.to_vec();
    args.push("--json");
    args.extend(&img_args);
    let whole = json_lines(&mplug_ok(&args).stdout);
    let out = dir.join("retrieve.jsonl");
    let mut args = base.to_vec();
    args.extend(["--batch-size", "2", "--output", s(&out)]);
    args.extend(&img_args);
    mplug_ok(&args);
    let batched = json_lines(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(batched.len(), 3);
    for (a, b) in whole.iter().zip(&batched) {
        assert_eq!(a["image"], b["image"]);
        for (x, y) in a["texts"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["texts"].as_array().unwrap())
        {
            assert_eq!(x["text"], y["text"]);
            let (x, y) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
    mplug_fails(
        &[
            "caption",
            "--model",
            s(&m),
            "--batch-size",
            "0",
            img_args[0],
        ],
        "--batch-size",
    );
}

/// A failing run leaves an existing `--output` file as it was (and no partial file beside it);
/// a run that succeeds replaces it.
#[test]
fn output_file_is_replaced_only_by_a_complete_run() {
    let dir = scratch("output-kept");
    let m = tiny_model();
    let out = dir.join("captions.jsonl");
    std::fs::write(&out, "earlier results\n").unwrap();
    let missing = dir.join("missing.png");
    let good = image("rgb.png");
    let o = mplug(&[
        "caption",
        "--model",
        s(&m),
        "--batch-size",
        "1",
        "--output",
        s(&out),
        s(&good),
        s(&missing),
    ]);
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier results\n");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        [std::ffi::OsString::from("captions.jsonl")],
        "{names:?}"
    );
    mplug_ok(&["caption", "--model", s(&m), "--output", s(&out), s(&good)]);
    assert_eq!(json_lines(&std::fs::read_to_string(&out).unwrap()).len(), 1);
}
