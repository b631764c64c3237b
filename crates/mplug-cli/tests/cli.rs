//! The `mplug` binary end to end on the golden tiny checkpoints: `convert` and `info`, every
//! task subcommand on model folders and on checkpoints, and the errors of bad inputs.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn ckpt(task: &str) -> PathBuf {
    tiny_model().join(format!("{task}.pth"))
}

fn config() -> PathBuf {
    tiny_model().join("config.json")
}

/// Converts a golden checkpoint into `dir/<task>` (task named, or detected when `None`).
fn convert(dir: &Path, task: &str, name_task: bool, extra: &[&str]) -> PathBuf {
    let out = dir.join(task);
    let (c, k) = (ckpt(task), config());
    let mut args = vec!["convert", s(&c), s(&out), "--config", s(&k)];
    if name_task {
        args.extend(["--task", task]);
    }
    args.extend(extra);
    let o = mplug_ok(&args);
    assert_eq!(o.stdout.trim(), s(&out));
    assert!(o.stderr.contains(&format!("{task} model")), "{}", o.stderr);
    for f in ["config.json", "model.safetensors", "vocab.txt", "README.md"] {
        assert!(out.join(f).is_file(), "{} lacks {f}", out.display());
    }
    out
}

/// `--dtype bf16` loads compact weights (bf16 linear weights) and answers;
/// other names are refused by the parser.
#[test]
fn caption_with_bf16_weights() {
    let (m, img) = (tiny_model(), image("rgb.png"));
    let o = mplug_ok(&[
        "caption",
        "--model",
        s(&m),
        "--dtype",
        "bf16",
        "--json",
        s(&img),
    ]);
    let line: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    let score = line["captions"][0]["score"].as_f64().unwrap();
    assert!(score.is_finite(), "{}", o.stdout);
    let o = mplug(&["caption", "--model", s(&m), "--dtype", "f64", s(&img)]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("'f64'") && o.stderr.contains("bf16"),
        "{}",
        o.stderr
    );
}

/// `--dtype int8` loads int8 linear weights and answers, with a score of its own (the f32
/// model's differs by the quantization).
#[test]
fn caption_with_int8_weights() {
    let (m, img) = (tiny_model(), image("rgb.png"));
    let score = |dtype: &str| {
        let o = mplug_ok(&[
            "caption",
            "--model",
            s(&m),
            "--dtype",
            dtype,
            "--json",
            s(&img),
        ]);
        let line: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
        line["captions"][0]["score"].as_f64().unwrap()
    };
    let (int8, f32) = (score("int8"), score("f32"));
    assert!(int8.is_finite(), "{int8}");
    assert_ne!(int8, f32, "int8 weights compute as f32 ones");
}

/// An explicit `--min-len` above `--max-len` is refused with both named; a `--max-len` below
/// the default minimum lowers the minimum with it.
#[test]
fn min_len_above_max_len_is_refused() {
    let (m, img) = (tiny_model(), image("rgb.png"));
    let o = mplug_fails(
        &[
            "caption",
            "--model",
            s(&m),
            "--min-len",
            "30",
            "--max-len",
            "10",
            s(&img),
        ],
        "--min-len 30 is above the maximum length 10",
    );
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    mplug_fails(
        &[
            "vqa",
            "--model",
            s(&m),
            "--min-len",
            "9",
            "--max-len",
            "2",
            s(&img),
            "what?",
        ],
        "--min-len 9",
    );
    mplug_ok(&["caption", "--model", s(&m), "--max-len", "2", s(&img)]);
}

#[test]
fn caption_folder_matches_checkpoint() {
    let dir = scratch("caption");
    let folder = convert(&dir, "caption", true, &[]);
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(card["task"], "caption");
    assert_eq!(card["image_res"], tiny_config().image_res);
    assert_eq!(
        std::fs::read_to_string(folder.join("vocab.txt"))
            .unwrap()
            .lines()
            .count(),
        tiny_config().bert.vocab_size
    );
    let readme = std::fs::read_to_string(folder.join("README.md")).unwrap();
    assert!(readme.contains("caption"), "{readme}");

    let (img1, img2) = (image("gray.png"), image("photo.jpg"));
    let from_folder = mplug_ok(&["caption", "--model", s(&folder), s(&img1), s(&img2)]);
    let (c, k) = (ckpt("caption"), config());
    let from_ckpt = mplug_ok(&[
        "caption",
        "--model",
        s(&c),
        "--config",
        s(&k),
        s(&img1),
        s(&img2),
    ]);
    assert_eq!(from_folder.stdout, from_ckpt.stdout);
    assert_eq!(from_folder.stdout.lines().count(), 2);

    let j = mplug_ok(&[
        "caption",
        "--model",
        s(&folder),
        "--json",
        "--beam",
        "3",
        "--n-best",
        "2",
        s(&img1),
    ]);
    let rows = json_lines(&j.stdout);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["captions"].as_array().unwrap().len(), 2);
}

#[test]
fn info_prints_configuration_and_parameter_counts() {
    let dir = scratch("info");
    let folder = convert(&dir, "retrieval", false, &[]);
    let o = mplug_ok(&["info", s(&folder)]);
    assert!(o.stdout.contains("retrieval (config.json)"), "{}", o.stdout);
    for part in [
        "visual",
        "text encoder",
        "fusion",
        "decoder",
        "heads",
        "total",
    ] {
        assert!(o.stdout.contains(part), "no {part} in {}", o.stdout);
    }
    let j = mplug_ok(&["info", s(&folder), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["task"], "retrieval");
    assert_eq!(v["config"]["embed_dim"], 32);
    let p = &v["parameters"];
    assert!(p["visual"].as_u64().unwrap() > 0);
    assert!(p["text_encoder"].as_u64().unwrap() > 0);
    assert!(p["fusion"].as_u64().unwrap() > 0);
    assert!(p["heads"].as_u64().unwrap() > 0);
    // A retrieval model has no decoder.
    assert_eq!(p["decoder"], 0);
    let parts: u64 = [
        "visual",
        "text_encoder",
        "fusion",
        "decoder",
        "heads",
        "other",
    ]
    .iter()
    .map(|k| p[k].as_u64().unwrap())
    .sum();
    assert_eq!(v["parameters_total"].as_u64().unwrap(), parts);

    // A bare checkpoint: the task is detected from its keys.
    let (c, k) = (ckpt("grounding"), config());
    let o = mplug_ok(&["info", s(&c), "--config", s(&k)]);
    assert!(
        o.stdout.contains("grounding (detected from the keys)"),
        "{}",
        o.stdout
    );
}

#[test]
fn vqa_folder_in_f16_answers_and_ranks() {
    let dir = scratch("vqa");
    let folder = convert(&dir, "vqa", false, &["--dtype", "f16"]);
    let j = mplug_ok(&["info", s(&folder), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["task"], "vqa");
    assert!(v["dtypes"]["f16"].as_u64().unwrap() > 0, "{v}");
    assert!(v["dtypes"].get("f32").is_none(), "{v}");

    let img = image("rgb.png");
    let o = mplug_ok(&[
        "vqa",
        "--model",
        s(&folder),
        "--json",
        s(&img),
        "what is this?",
    ]);
    let rows = json_lines(&o.stdout);
    assert_eq!(rows[0]["question"], "what is this?");
    assert!(!rows[0]["answers"].as_array().unwrap().is_empty());

    let answers = dir.join("answers.txt");
    std::fs::write(&answers, "a cat\na dog\nnothing\n").unwrap();
    let o = mplug_ok(&[
        "vqa",
        "--model",
        s(&folder),
        "--answers",
        s(&answers),
        "--k",
        "2",
        "--json",
        s(&img),
        "what animal is it?",
    ]);
    let rows = json_lines(&o.stdout);
    let ranked = rows[0]["answers"].as_array().unwrap();
    assert_eq!(ranked.len(), 2);
    let total: f64 = ranked.iter().map(|r| r["prob"].as_f64().unwrap()).sum();
    assert!(total > 0.0 && total <= 1.0 + 1e-4, "{total}");
}

#[test]
fn ground_and_retrieve_on_folders_match_checkpoints() {
    let dir = scratch("ground-retrieve");
    let k = config();
    let img = image("rgba.png");

    let g = convert(&dir, "grounding", false, &[]);
    let from_folder = mplug_ok(&["ground", "--model", s(&g), "--json", s(&img), "the cup"]);
    let c = ckpt("grounding");
    let from_ckpt = mplug_ok(&[
        "ground",
        "--model",
        s(&c),
        "--config",
        s(&k),
        "--json",
        s(&img),
        "the cup",
    ]);
    assert_eq!(from_folder.stdout, from_ckpt.stdout);
    let v = &json_lines(&from_folder.stdout)[0];
    let b: Vec<f64> = v["box_xyxy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(b[0] <= b[2] && b[1] <= b[3], "{b:?}");

    let r = convert(&dir, "retrieval", true, &[]);
    let (i1, i2) = (image("gray.png"), image("photo.jpg"));
    let args = |m: &Path| -> Vec<String> {
        [
            "retrieve",
            "--model",
            s(m),
            "--json",
            "--k",
            "2",
            "--text",
            "a camera",
            "--text",
            "a rocket",
            "--text",
            "coffee",
        ]
        .iter()
        .map(|x| x.to_string())
        .chain([s(&i1).to_string(), s(&i2).to_string()])
        .collect()
    };
    let fa = args(&r);
    let from_folder = mplug_ok(&fa.iter().map(String::as_str).collect::<Vec<_>>());
    let c = ckpt("retrieval");
    let mut ca = args(&c);
    ca.extend(["--config".to_string(), s(&k).to_string()]);
    let from_ckpt = mplug_ok(&ca.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(from_folder.stdout, from_ckpt.stdout);
    let rows = json_lines(&from_folder.stdout);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["texts"].as_array().unwrap().len(), 3);
    let scores = |row: &serde_json::Value| -> Vec<f64> {
        row["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["score"].as_f64().unwrap())
            .collect()
    };
    // ITM re-scores the top 2 of 3; the third keeps the -100 of texts left out.
    for row in &rows {
        assert_eq!(scores(row)[2], -100.0, "{row}");
    }
    // --itc-only scores every text by its cosine similarity, best first.
    let mut ia = fa.clone();
    ia.push("--itc-only".to_string());
    let by_itc = mplug_ok(&ia.iter().map(String::as_str).collect::<Vec<_>>());
    for row in json_lines(&by_itc.stdout) {
        let v = scores(&row);
        assert_eq!(v.len(), 3, "{row}");
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)), "{row}");
        assert!(v.windows(2).all(|w| w[0] >= w[1]), "{row}");
    }
}

#[test]
fn golden_folder_and_demo_run() {
    // The golden folder holds per-task checkpoints beside a config.json.
    let img = image("gray.png");
    let o = mplug_ok(&["caption", "--model", s(&tiny_model()), s(&img)]);
    assert_eq!(o.stdout.lines().count(), 1);
    // The demo runs the default model on its bundled examples, every task.
    let o = mplug_ok(&["demo"]);
    for section in [
        "== captioning",
        "== visual question answering",
        "== retrieval",
        "== grounding",
        "== zero-shot video",
    ] {
        assert!(o.stdout.contains(section), "{}", o.stdout);
    }
    // Retrieval shows ITC's choice next to the ITM re-ranking's.
    assert!(
        o.stdout.contains("ITC: ") && o.stdout.contains("ITM: "),
        "{}",
        o.stdout
    );
    // It grounds with the grounding folder beside the default model.
    assert!(
        o.stdout.contains("mplug-tiny-world-grounding"),
        "{}",
        o.stdout
    );
}

#[test]
fn bench_prints_every_figure_as_json() {
    let o = mplug_ok(&[
        "bench",
        "--preset",
        "tiny",
        "--runs",
        "1",
        "--batch-size",
        "1,2",
        "--beam",
        "2",
        "--max-len",
        "2",
        "--vqa-len",
        "2",
        "--itm-pairs",
        "3",
        "--train-res",
        "32",
        "--json",
    ]);
    let lines = json_lines(&o.stdout);
    let get = |name: &str| {
        lines
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` in {}", o.stdout))
    };
    for b in [1, 2] {
        let tower = get(&format!("vision_b{b}_64"));
        assert_eq!(tower["images"], b);
        assert!(tower["median_s"].as_f64().unwrap() > 0.0);
        assert!(tower["gflop_per_s"].as_f64().unwrap() > 0.0);
    }
    get("caption_beam2_len2_b1");
    get("caption_beam2_len2_b1_uncached");
    get("vqa_beam2_len2_b1");
    assert_eq!(get("itm_pairs3_len30")["pairs"], 3);
    assert!(
        get("peak_memory_after_inference")["bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let train = get("caption_train_step_32_b2");
    assert_eq!(train["samples"], 2);
    // Only the parts asked for run.
    let tower_once = [
        "bench",
        "--preset",
        "tiny",
        "--runs",
        "1",
        "--only",
        "tower",
        "--batch-size",
        "1",
        "--json",
    ];
    let o = mplug_ok(&tower_once);
    let names: Vec<String> = json_lines(&o.stdout)
        .iter()
        .map(|l| l["name"].to_string())
        .collect();
    assert_eq!(
        names,
        [
            "\"setup\"",
            "\"vision_b1_64\"",
            "\"peak_memory_after_inference\""
        ],
        "{}",
        o.stdout
    );
    // int8 weights measure too; an unknown weight type is refused with the known ones named.
    let o = mplug_ok(&[&tower_once[..], &["--dtype", "int8"]].concat());
    let lines = json_lines(&o.stdout);
    assert_eq!(lines[0]["dtype"], "int8", "{}", o.stdout);
    assert!(lines[1]["median_s"].as_f64().unwrap() > 0.0, "{}", o.stdout);
    mplug_fails(&["bench", "--preset", "tiny", "--dtype", "int4"], "int8");
}

#[test]
fn convert_refuses_to_overwrite_and_wrong_tasks() {
    let dir = scratch("convert-errors");
    let folder = convert(&dir, "caption", true, &[]);
    let (c, k) = (ckpt("caption"), config());
    mplug_fails(
        &["convert", s(&c), s(&folder), "--config", s(&k)],
        "--force",
    );
    let o = mplug_ok(&[
        "convert",
        s(&c),
        s(&folder),
        "--config",
        s(&k),
        "--task",
        "caption",
        "--force",
    ]);
    assert_eq!(o.code, 0);
    // A grounding checkpoint is not a VQA model.
    let g = ckpt("grounding");
    let out = dir.join("g-as-vqa");
    mplug_fails(
        &[
            "convert",
            s(&g),
            s(&out),
            "--config",
            s(&k),
            "--task",
            "vqa",
        ],
        "grounding",
    );
    // No configuration anywhere.
    let lonely = dir.join("lonely.pth");
    std::fs::copy(&c, &lonely).unwrap();
    mplug_fails(&["convert", s(&lonely), s(&dir.join("x"))], "--preset");
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = scratch("bad-inputs");
    let k = config();
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
    let c = ckpt("caption");
    mplug_fails(
        &["caption", "--model", s(&c), "--config", s(&k), s(&corrupt)],
        "corrupt.png",
    );
    // A missing image.
    let missing = dir.join("missing.jpg");
    mplug_fails(
        &["caption", "--model", s(&c), "--config", s(&k), s(&missing)],
        "missing.jpg",
    );
    // A missing model.
    let nowhere = dir.join("nowhere.pth");
    let img = image("gray.png");
    mplug_fails(
        &[
            "caption",
            "--model",
            s(&nowhere),
            "--config",
            s(&k),
            s(&img),
        ],
        "does not exist",
    );
    // Another task's checkpoint.
    let g = ckpt("grounding");
    mplug_fails(
        &["vqa", "--model", s(&g), "--config", s(&k), s(&img), "what?"],
        "is a grounding model",
    );
    mplug_fails(
        &[
            "ground",
            "--model",
            s(&c),
            "--config",
            s(&k),
            s(&img),
            "the cup",
        ],
        "caption",
    );
    let r = ckpt("retrieval");
    mplug_fails(
        &["caption", "--model", s(&r), "--config", s(&k), s(&img)],
        "is a retrieval model",
    );
    // A model folder made for another task.
    let folder = convert(&dir, "grounding", false, &[]);
    mplug_fails(
        &["vqa", "--model", s(&folder), s(&img), "what?"],
        "is a grounding model",
    );
    // A file that is not a checkpoint.
    mplug_fails(
        &[
            "caption",
            "--model",
            s(&corrupt),
            "--config",
            s(&k),
            s(&img),
        ],
        "not a checkpoint",
    );
    // Usage errors are clap's (exit 2).
    assert_eq!(mplug(&["caption"]).code, 2);
    assert_eq!(mplug(&["convert", "--dtype", "f8", "a", "b"]).code, 2);
}

/// A checkpoint file read with `--config` takes the vocabulary and the tasks of that
/// config.json's folder when it has none of its own (a training run's `step-N/` read with its
/// `model/config.json`). The default model's vocabulary is its own (the world's words after
/// BERT's first 104 entries), so its questions read with BERT's would be other token ids, and
/// its weights alone look like a grounding model's.
#[test]
fn checkpoint_file_reads_the_vocabulary_beside_its_config() {
    let folder = default_model();
    let dir = scratch("vocab-beside-config");
    let ckpt = dir.join("model.safetensors");
    std::fs::copy(folder.join("model.safetensors"), &ckpt).unwrap();
    let img = folder.join("examples/scene_3.png");
    let question = "what color is the dotted square?";
    // With --json the answer's score is printed too, which other token ids would change.
    let from_folder = mplug_ok(&["vqa", "--model", s(&folder), s(&img), question, "--json"]);
    let with_config = folder.join("config.json");
    let from_ckpt = mplug_ok(&[
        "vqa",
        "--model",
        s(&ckpt),
        "--config",
        s(&with_config),
        s(&img),
        question,
        "--json",
    ]);
    assert_eq!(from_ckpt.stdout, from_folder.stdout);
}

/// A reader that closes the pipe early (`mplug demo | head -1`) ends the command quietly: no
/// panic, no backtrace.
#[test]
fn a_closed_stdout_ends_the_command_without_a_panic() {
    let mut child = std::process::Command::new(MPLUG)
        .arg("demo")
        .env("RAYON_NUM_THREADS", "2")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mplug demo");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !out.status.success(),
        "the demo cannot have printed everything"
    );
}

/// Sizes that cannot fit in memory and thread counts no machine has are refused up front, each
/// naming its option or field (they aborted with an allocation failure, or spawned threads for
/// minutes).
#[test]
fn impossible_sizes_and_thread_counts_are_refused() {
    let model = default_model();
    let img = model.join("examples").join("scene_3.png");
    let clip = model.join("examples").join("clip_0.gif");
    mplug_fails(
        &["--threads", "100000", "caption", s(&img)],
        "--threads must be 1..=1024",
    );
    mplug_fails(
        &["video", "caption", "--frames", "100000", s(&clip)],
        "frames must be 1..=256",
    );
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    for (field, value, needle) in [
        ("image_res", serde_json::json!(1_000_000), "image_res"),
        ("layer_norm_eps", serde_json::json!(-1), "layer_norm_eps"),
    ] {
        let dir = scratch(&format!("impossible-{field}"));
        for f in ["model.safetensors", "vocab.txt"] {
            std::fs::copy(model.join(f), dir.join(f)).unwrap();
        }
        let mut bad = card.clone();
        let slot = if bad.get(field).is_some() {
            &mut bad[field]
        } else {
            &mut bad["bert"][field]
        };
        *slot = value;
        std::fs::write(dir.join("config.json"), bad.to_string()).unwrap();
        mplug_fails(&["caption", "--model", s(&dir), s(&img)], needle);
    }
}

/// NaN weights are an error naming the cause, not an empty caption with a null score: NaN in
/// the visual tower (caption, VQA and retrieval all refuse it) and NaN in the decoder alone
/// (caption and VQA).
#[test]
fn nan_weights_are_an_error_not_an_empty_answer() {
    let model = default_model();
    let img = model.join("examples").join("scene_3.png");
    let weights =
        candle_core::safetensors::load(model.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let poisoned = |name: &str, pick: &dyn Fn(&str) -> bool| -> std::path::PathBuf {
        let dir = scratch(&format!("nan-{name}"));
        for f in ["config.json", "vocab.txt"] {
            std::fs::copy(model.join(f), dir.join(f)).unwrap();
        }
        let mut changed = 0;
        let map: std::collections::HashMap<String, candle_core::Tensor> = weights
            .iter()
            .map(|(k, t)| {
                let t = if pick(k) {
                    changed += 1;
                    (t.zeros_like().unwrap() + f64::NAN).unwrap()
                } else {
                    t.clone()
                };
                (k.clone(), t)
            })
            .collect();
        assert!(changed > 0, "no tensor picked for {name}");
        candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
        dir
    };
    let tower = poisoned("tower", &|k| {
        k.contains("visual") && k.ends_with("ln_post.weight")
    });
    let decoder = poisoned("decoder", &|k| {
        k.starts_with("text_decoder.") && k.ends_with("output.LayerNorm.weight")
    });
    for dir in [&tower, &decoder] {
        mplug_fails(&["caption", "--model", s(dir), s(&img)], "non-finite");
        mplug_fails(
            &["vqa", "--model", s(dir), s(&img), "what is there?"],
            "non-finite",
        );
    }
    mplug_fails(
        &[
            "retrieve",
            "--model",
            s(&tower),
            "--text",
            "a shape",
            s(&img),
        ],
        "non-finite",
    );
}

/// List files as users write them (issue 26's defects): `--answers` takes VQA's JSON answer
/// list (its entries are ranked, not its lines); a byte-order mark before the first image of a
/// list file is skipped; a list file with nothing in it is an error, not a silent success.
#[test]
fn list_files_in_the_forms_users_write() {
    let model = default_model();
    let dir = scratch("list-files");
    let img = dir.join("photo.png");
    std::fs::copy(model.join("examples").join("scene_3.png"), &img).unwrap();
    let answers = dir.join("answer_list.json");
    std::fs::write(&answers, "[\n  \"red\",\n  \"two squares\"\n]\n").unwrap();
    let o = mplug_ok(&[
        "vqa",
        "--json",
        "--answers",
        s(&answers),
        "--k",
        "5",
        s(&img),
        "what colour?",
    ]);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    let mut ranked: Vec<&str> = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["answer"].as_str().unwrap())
        .collect();
    ranked.sort();
    assert_eq!(ranked, ["red", "two squares"], "{}", o.stdout);

    let list = dir.join("images.txt");
    std::fs::write(&list, "\u{feff}photo.png\n").unwrap();
    let o = mplug_ok(&["caption", s(&list)]);
    assert!(o.stdout.contains("photo.png\t"), "{}", o.stdout);
    assert!(!o.stdout.contains('\u{feff}'), "{}", o.stdout);

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    mplug_fails(&["caption", s(&empty)], "lists no images");
    let no_answers = dir.join("none.txt");
    std::fs::write(&no_answers, "").unwrap();
    mplug_fails(
        &["vqa", "--answers", s(&no_answers), s(&img), "what colour?"],
        "lists no answers",
    );
}

/// A control character in a file name (an escape sequence) reaches neither the output lines
/// nor the error line raw: both write it escaped.
#[test]
fn control_bytes_in_file_names_are_escaped() {
    let model = default_model();
    let dir = scratch("control-names");
    let img = dir.join("a\u{1b}[31mred.png");
    std::fs::copy(model.join("examples").join("scene_3.png"), &img).unwrap();
    let o = mplug_ok(&["caption", s(&img)]);
    assert!(!o.stdout.contains('\u{1b}'), "{:?}", o.stdout);
    assert!(o.stdout.contains("a\\u{1b}[31mred.png"), "{:?}", o.stdout);
    let missing = dir.join("gone\u{1b}[2J.png");
    let o = mplug_fails(&["caption", s(&missing)], "gone\\u{1b}[2J.png");
    assert!(!o.stderr.contains('\u{1b}'), "{:?}", o.stderr);
}

/// A model folder without its `vocab.txt` is refused, naming the file (issue 26's defect: it
/// decoded with BERT's vocabulary, `[unused213] ...`).
#[test]
fn a_model_folder_without_its_vocabulary_is_refused() {
    let model = default_model();
    let dir = scratch("no-vocab");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(f), dir.join(f)).unwrap();
    }
    let img = model.join("examples").join("scene_3.png");
    mplug_fails(&["caption", "--model", s(&dir), s(&img)], "vocab.txt");
}

/// Zero-shot classification (issue 26): each label's probability is the softmax over the labels
/// of its prompt's ITC similarity at the model's temperature, so the probabilities sum to 1
/// and follow the similarities; a labels file gives what repeated `--label` gives, `--top`
/// keeps the best, and a model without ITC heads or no label is an error.
#[test]
fn classify_gives_probabilities_over_the_labels() {
    let img = default_model().join("examples").join("scene_12.png");
    let labels = [
        "a red circle",
        "a blue square",
        "a green cross",
        "an orange triangle",
    ];
    let mut args = vec!["classify", "--json", "--top", "0"];
    for l in &labels {
        args.extend(["--label", l]);
    }
    args.push(s(&img));
    let out = mplug_ok(&args);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    let got = v["labels"].as_array().expect("labels");
    assert_eq!(got.len(), labels.len());
    let score = |l: &serde_json::Value| l["score"].as_f64().expect("score");
    let sim = |l: &serde_json::Value| l["similarity"].as_f64().expect("similarity");
    let total: f64 = got.iter().map(score).sum();
    assert!((total - 1.0).abs() < 1e-5, "probabilities sum to {total}");
    for w in got.windows(2) {
        assert!(score(&w[0]) >= score(&w[1]), "not best first: {v}");
        assert!(
            sim(&w[0]) >= sim(&w[1]),
            "scores do not follow similarities: {v}"
        );
    }
    // Softmax at one temperature: log-ratios of scores are proportional to similarity gaps.
    let t = (sim(&got[0]) - sim(&got[1])) / (score(&got[0]) / score(&got[1])).ln();
    let t2 = (sim(&got[0]) - sim(&got[3])) / (score(&got[0]) / score(&got[3])).ln();
    assert!((t - t2).abs() < 1e-3 * t.abs(), "temperatures {t} and {t2}");

    let dir = scratch("classify");
    let file = dir.join("labels.txt");
    std::fs::write(&file, labels.join("\n") + "\n").unwrap();
    let from_file = mplug_ok(&[
        "classify",
        "--json",
        "--top",
        "2",
        "--labels-file",
        s(&file),
        s(&img),
    ]);
    let f: serde_json::Value = serde_json::from_str(from_file.stdout.trim()).expect("JSON");
    assert_eq!(f["labels"].as_array().map(Vec::len), Some(2));
    assert_eq!(f["labels"][0], v["labels"][0]);
    assert_eq!(f["labels"][1], v["labels"][1]);

    // ITM re-scoring: every label gets the ITM head's match probability, which orders them;
    // the ITC probabilities stay those above.
    let mut itm_args = args.clone();
    itm_args.insert(1, "--itm");
    let r: serde_json::Value =
        serde_json::from_str(mplug_ok(&itm_args).stdout.trim()).expect("JSON");
    let rescored = r["labels"].as_array().expect("labels");
    let m = |l: &serde_json::Value| l["match_prob"].as_f64().expect("match_prob");
    for l in rescored {
        assert!(m(l) > 0.0 && m(l) < 1.0, "{l}");
        let same = got
            .iter()
            .find(|g| g["label"] == l["label"])
            .expect("label");
        assert_eq!(same["score"], l["score"]);
    }
    for w in rescored.windows(2) {
        assert!(
            m(&w[0]) >= m(&w[1]),
            "not ordered by match probability: {r}"
        );
    }

    mplug_fails(&["classify", s(&img)], "no labels");
    let k = config();
    let caption = ckpt("caption");
    mplug_fails(
        &[
            "classify",
            "--model",
            s(&caption),
            "--config",
            s(&k),
            "--label",
            "a",
            s(&img),
        ],
        "caption",
    );
    std::fs::remove_dir_all(&dir).ok();
}
