//! The shipped default model, `models/mplug-tiny-world` (with its grounding folder,
//! `models/mplug-tiny-world-grounding`), still reaches the figures its card reports on a fixed
//! test subset (a world generated from seed 2, never trained on), measured by `mplug eval`
//! exactly as the README's commands do; and a short training run from scratch (the recipe's
//! stages: the tower alone, pre-training from that tower, multi-task fine-tuning) lowers every
//! loss.
//!
//! The expected figures live in `models/mplug-tiny-world/ci-figures.json`. After retraining
//! the model, rewrite them with
//! `MPLUG_WRITE_FIGURES=1 cargo test --release -p mplug-cli --test default_model`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The folder that grounds: the default model's grounding round.
fn grounding_dir() -> PathBuf {
    default_model().with_file_name("mplug-tiny-world-grounding")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The subset: the generator's world for seed 2 with 10 training images and 4 training clips
/// (its test split has 50 images and 40 clips).
fn subset(dir: &Path) -> PathBuf {
    let out = dir.join("world");
    let mut cfg = mplug_world::WorldConfig::new(2, 10);
    cfg.train_clips = 4;
    mplug_world::generate(&out, &cfg).expect("the world generates");
    out
}

/// One evaluation of the subset: `mplug eval TASK` arguments and the metrics checked, each
/// with the size of the set it is averaged over (for the margin of one sample).
struct Check {
    name: &'static str,
    /// The model folder evaluated.
    model: PathBuf,
    args: Vec<String>,
    metrics: &'static [&'static str],
}

fn checks(world: &Path, model: &Path) -> Vec<Check> {
    let w = |f: &str| world.join(f).display().to_string();
    let root = world.display().to_string();
    let mk = |name, task: &str, ann: &str, extra: &[String], metrics| Check {
        name,
        model: if task == "grounding" {
            grounding_dir()
        } else {
            model.to_path_buf()
        },
        args: [task.to_string(), w(ann), root.clone()]
            .into_iter()
            .chain(extra.iter().cloned())
            .collect(),
        metrics,
    };
    vec![
        mk("caption", "caption", "caption_test.json", &[], &["CIDEr"]),
        mk("vqa", "vqa", "vqa_test.json", &[], &["overall"]),
        mk(
            "retrieval",
            "retrieval",
            "retrieval_test.json",
            &["--k".to_string(), "16".to_string()],
            &["txt_r1", "img_r1"],
        ),
        mk(
            "grounding",
            "grounding",
            "grounding_test.json",
            &[],
            &["accuracy"],
        ),
        mk(
            "videoqa",
            "videoqa",
            "videoqa_test.jsonl",
            &["--frames".to_string(), "8".to_string()],
            &["accuracy"],
        ),
        mk(
            "videoretrieval",
            "videoretrieval",
            "videoretrieval_test.jsonl",
            &[
                "--frames".to_string(),
                "8".to_string(),
                "--k".to_string(),
                "16".to_string(),
            ],
            &["txt_r1", "vid_r1"],
        ),
    ]
}

/// The margin of a metric: one sample's worth (in the metric's unit) plus a little for
/// floating-point differences between machines.
fn margin(metric: &str, value_scale_percent: bool, samples: f64) -> f64 {
    match metric {
        "CIDEr" => 0.05,
        _ if value_scale_percent => 100.0 / samples + 0.01,
        _ => 1.0 / samples + 1e-4,
    }
}

fn samples_of(metrics: &Value, name: &str) -> f64 {
    let n = ["num_scored", "total", "num_images", "num_videos"]
        .iter()
        .find_map(|k| metrics[*k].as_u64());
    n.unwrap_or_else(|| panic!("{name}: no sample count in {metrics}")) as f64
}

#[test]
fn default_model_reaches_its_reported_figures() {
    let model = default_model();
    for m in [model.clone(), grounding_dir()] {
        assert!(
            m.join("model.safetensors").is_file(),
            "{} has no model",
            m.display()
        );
    }
    let dir = scratch("default-model-figures");
    let world = subset(&dir);
    let figures_path = model.join("ci-figures.json");
    let write = std::env::var_os("MPLUG_WRITE_FIGURES").is_some();
    let expected: Value = if write {
        json!({})
    } else {
        serde_json::from_str(&std::fs::read_to_string(&figures_path).expect("ci-figures.json"))
            .expect("ci-figures.json is JSON")
    };
    let mut measured = serde_json::Map::new();
    let mut failures = Vec::new();
    for check in checks(&world, &model) {
        let out = dir.join(format!("eval-{}", check.name));
        let mut args: Vec<&str> = vec!["eval"];
        args.extend(check.args.iter().map(String::as_str));
        args.extend([
            "--model",
            s(&check.model),
            "--output",
            s(&out),
            "--json",
            "--quiet",
        ]);
        let o = mplug_ok(&args);
        let metrics: Value = serde_json::from_str(o.stdout.trim())
            .unwrap_or_else(|e| panic!("{}: {e}: {}", check.name, o.stdout));
        let n = samples_of(&metrics, check.name);
        let mut got = serde_json::Map::new();
        for m in check.metrics {
            let v = metrics[*m]
                .as_f64()
                .unwrap_or_else(|| panic!("{}: no {m} in {metrics}", check.name));
            got.insert(m.to_string(), json!(v));
            if !write {
                let want = expected[check.name][*m]
                    .as_f64()
                    .unwrap_or_else(|| panic!("ci-figures.json lacks {}.{m}", check.name));
                let percent = matches!(*m, "overall" | "txt_r1" | "img_r1" | "vid_r1");
                let tol = margin(m, percent, n);
                if (v - want).abs() > tol {
                    failures.push(format!(
                        "{} {m}: measured {v:.4}, the card reports {want:.4} (margin {tol:.4})",
                        check.name
                    ));
                }
            }
        }
        measured.insert(check.name.to_string(), Value::Object(got));
    }
    if write {
        let text = serde_json::to_string_pretty(&Value::Object(measured)).unwrap() + "\n";
        std::fs::write(&figures_path, text).expect("write ci-figures.json");
        eprintln!("wrote {}", figures_path.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn losses(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Mean of `key` over the first and the last `n` logged updates.
fn first_and_last(rows: &[Value], key: &str, n: usize) -> (f64, f64) {
    let v: Vec<f64> = rows
        .iter()
        .map(|r| r[key].as_f64().unwrap_or_else(|| panic!("no {key} in {r}")))
        .collect();
    assert!(v.len() >= 2 * n, "{} updates logged", v.len());
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    (mean(&v[..n]), mean(&v[v.len() - n..]))
}

/// The options every stage of the short training run shares (its updates and warm-up apart).
const SHORT_RUN: &[&str] = &[
    "--batch-size",
    "8",
    "--lr1",
    "1e-3",
    "--lr2",
    "1e-3",
    "--save-every",
    "100",
    "--workers",
    "2",
    "--no-augment",
];

#[test]
fn short_training_from_scratch_lowers_every_loss() {
    let dir = scratch("default-model-training");
    let world = subset(&dir);
    let (w, vocab) = (s(&world), world.join("vocab.txt"));
    // The recipe's first stage: the visual tower alone learns the images' labels.
    let tower = dir.join("tower");
    let labels = world.join("labels_train.json");
    mplug_ok(
        &[
            &[
                "pretrain-tower",
                "--preset",
                "tiny",
                "--sincos-positions",
                "--data",
                s(&labels),
                "--image-root",
                w,
                "--out",
                s(&tower),
                "--steps",
                "40",
                "--warmup",
                "4",
            ],
            SHORT_RUN,
        ]
        .concat(),
    );
    let rows = losses(&tower.join("train_log.jsonl"));
    let (first, last) = first_and_last(&rows, "loss", 8);
    assert!(last < first, "tower pre-training: {first:.4} -> {last:.4}");
    let tower_file = tower.join("tower.safetensors");

    let pre = dir.join("pretrain");
    let pretrain = world.join("pretrain.json");
    mplug_ok(
        &[
            &[
                "pretrain",
                "--preset",
                "tiny",
                "--init-clip",
                s(&tower_file),
                "--vocab",
                s(&vocab),
                "--data",
                s(&pretrain),
                "--image-root",
                w,
                "--out",
                s(&pre),
                "--steps",
                "40",
                "--warmup",
                "4",
                "--queue-size",
                "32",
            ],
            SHORT_RUN,
        ]
        .concat(),
    );
    let rows = losses(&pre.join("train_log.jsonl"));
    for key in ["itc", "itm", "mlm", "prefix_lm"] {
        let (first, last) = first_and_last(&rows, key, 8);
        assert!(last < first, "pre-training {key}: {first:.4} -> {last:.4}");
    }
    let multi = dir.join("multitask");
    let data = |task: &str, file: &str| format!("{task}={}", world.join(file).display());
    let (c, v, r, g) = (
        data("caption", "caption_train.json"),
        data("vqa", "vqa_train.json"),
        data("retrieval", "retrieval_train.json"),
        data("grounding", "grounding_train.json"),
    );
    mplug_ok(
        &[
            &[
                "finetune",
                "multitask",
                "--model",
                s(&pre.join("model")),
                "--data",
                &c,
                "--data",
                &v,
                "--data",
                &r,
                "--data",
                &g,
                "--prefix-token",
                "[unused0]",
                "--bins",
                "64",
                "--image-root",
                w,
                "--out",
                s(&multi),
                "--steps",
                "30",
                "--warmup",
                "3",
            ],
            SHORT_RUN,
        ]
        .concat(),
    );
    let rows = losses(&multi.join("train_log.jsonl"));
    for key in ["caption", "vqa", "retrieval", "grounding"] {
        let (first, last) = first_and_last(&rows, key, 6);
        assert!(last < first, "multi-task {key}: {first:.4} -> {last:.4}");
    }
    // The result is a multi-task folder every task command takes.
    let card: Value = serde_json::from_str(
        &std::fs::read_to_string(multi.join("model/config.json")).expect("config.json"),
    )
    .expect("JSON");
    assert_eq!(
        card["tasks"],
        json!(["caption", "vqa", "retrieval", "grounding"])
    );
    let img = world.join("images/test/test_0.png");
    let o = mplug_ok(&[
        "ground",
        "--model",
        s(&multi.join("model")),
        s(&img),
        "the shape",
    ]);
    assert_eq!(o.stdout.split_whitespace().count(), 4, "{}", o.stdout);
}
