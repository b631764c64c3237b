//! `mplug finetune` and `mplug pretrain` end to end: a short caption fine-tuning run from the
//! golden tiny checkpoint that writes checkpoints, a resumed run, the result loaded by
//! `mplug caption`; a short pre-training run from scratch on generated images whose
//! per-objective log holds the four losses; pre-training started from BERT and CLIP files;
//! VQA with momentum distillation resumed bit for bit; multi-task loss weights; micro-batches
//! on concurrent threads.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    json_lines(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The bytes of the model a run in `out` wrote.
fn model_bytes(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("model").join("model.safetensors")).unwrap()
}

/// A PNG of `w x h` pixels from `f(x, y) -> [r, g, b]`.
fn write_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

/// `mplug finetune TASK` from the golden tiny `CHECKPOINT` on the example images: batches of 2,
/// a checkpoint every update.
fn finetune(
    task: &str,
    checkpoint: &str,
    lr: &str,
    out: &Path,
    ann: &Path,
    steps: &str,
    extra: &[&str],
) -> Output {
    let (c, k, img) = (
        tiny_model().join(checkpoint),
        tiny_model().join("config.json"),
        images_dir(),
    );
    let mut args = vec![
        "finetune",
        task,
        "--model",
        s(&c),
        "--config",
        s(&k),
        "--data",
        s(ann),
        "--image-root",
        s(&img),
        "--output",
        s(out),
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--save-every",
        "1",
        "--lr1",
        lr,
        "--lr2",
        lr,
        "--workers",
        "2",
    ];
    args.extend(extra);
    mplug(&args)
}

fn finetune_caption(out: &Path, ann: &Path, steps: &str, extra: &[&str]) -> Output {
    finetune("caption", "caption.pth", "1e-4", out, ann, steps, extra)
}

fn finetune_vqa(out: &Path, ann: &Path, steps: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--no-augment"];
    args.extend(extra);
    finetune("vqa", "vqa.pth", "1e-3", out, ann, steps, &args)
}

#[test]
fn finetune_caption_checkpoints_resumes_and_loads() {
    let dir = scratch("train-caption");
    let ann = dir.join("captions.json");
    std::fs::write(
        &ann,
        r#"[{"image": "gray.png", "caption": "a man with a camera"},
            {"image": "rgb.png", "caption": ["a cat", "a small cat on the left"]},
            {"image": "photo.jpg", "caption": "a rocket on its pad"}]"#,
    )
    .unwrap();
    let out = dir.join("run");
    let first = finetune_caption(&out, &ann, "2", &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("latest")).unwrap().trim(),
        "step-2"
    );
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        assert!(out.join("step-2").join(f).is_file(), "step-2 lacks {f}");
    }
    assert_eq!(lines(&out.join("train_log.jsonl")).len(), 2);

    // The same folder again without --resume is refused; with it the run continues.
    let refused = finetune_caption(&out, &ann, "3", &[]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("--resume"), "{}", refused.stderr);
    let resumed = finetune_caption(&out, &ann, "3", &["--resume"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("latest")).unwrap().trim(),
        "step-3"
    );
    let log = lines(&out.join("train_log.jsonl"));
    let steps: Vec<u64> = log.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3]);
    assert!(log.iter().all(|l| l["loss"].as_f64().unwrap().is_finite()));

    // The trained weights load as a model folder and as a checkpoint with its config.
    let model = out.join("model");
    assert_eq!(resumed.stdout.trim(), s(&model));
    let img = image("gray.png");
    let a = mplug_ok(&["caption", "--model", s(&model), "--max-len", "5", s(&img)]);
    let (w, k) = (
        model.join("model.safetensors"),
        tiny_model().join("config.json"),
    );
    let b = mplug_ok(&[
        "caption",
        "--model",
        s(&w),
        "--config",
        s(&k),
        "--max-len",
        "5",
        s(&img),
    ]);
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.stdout.lines().count(), 1);
}

#[test]
fn finetune_names_a_bad_annotation() {
    let dir = scratch("train-bad");
    let ann = dir.join("bad.json");
    std::fs::write(&ann, r#"[{"image": "gray.png"}]"#).unwrap();
    let o = finetune_caption(&dir.join("run"), &ann, "1", &[]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("bad.json") && o.stderr.contains("entry 0"),
        "{}",
        o.stderr
    );
    let missing = dir.join("missing-image.json");
    std::fs::write(
        &missing,
        r#"[{"image": "nope.png", "caption": "x"}, {"image": "nope.png", "caption": "y"}]"#,
    )
    .unwrap();
    let o = finetune_caption(&dir.join("run2"), &missing, "1", &[]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("nope.png"), "{}", o.stderr);
}

const TINY: &str = r#"{"image_res": 32,
  "vision": {"patch_size": 8, "width": 48, "layers": 2, "heads": 4},
  "vision_width": 48, "embed_dim": 32,
  "bert": {"hidden_size": 48, "num_attention_heads": 4, "intermediate_size": 96,
    "num_hidden_layers": 3, "text_encoder_layers": 2, "fusion_layers": 3,
    "text_decode_layers": 2, "stride_layer": 2, "encoder_width": 48, "vocab_size": 1024,
    "max_position_embeddings": 32, "layer_norm_eps": 1e-12, "type_vocab_size": 2,
    "hidden_act": "gelu", "pad_token_id": 0}}"#;

fn scenes(dir: &Path) -> PathBuf {
    let root = dir.join("images");
    std::fs::create_dir_all(&root).unwrap();
    let colours = [
        ("red", [220, 20, 20]),
        ("green", [20, 200, 20]),
        ("blue", [20, 20, 220]),
    ];
    let mut entries = Vec::new();
    for (name, c) in colours {
        for half in ["left", "right"] {
            let file = format!("{name}_{half}.png");
            write_png(&root.join(&file), 40, 36, |x, _| {
                if (x < 20) == (half == "left") {
                    c
                } else {
                    [90, 90, 90]
                }
            });
            entries.push(serde_json::json!({
                "image": file,
                "caption": [format!("a {name} block on the {half}"), format!("{name} {half}")],
            }));
        }
    }
    let ann = dir.join("pairs.json");
    std::fs::write(&ann, serde_json::to_string(&entries).unwrap()).unwrap();
    ann
}

#[test]
fn pretrain_from_scratch_logs_each_loss() {
    let dir = scratch("train-pretrain");
    let ann = scenes(&dir);
    let cfg = dir.join("tiny.json");
    std::fs::write(&cfg, TINY).unwrap();
    let out = dir.join("run");
    let root = dir.join("images");
    let o = mplug(&[
        "pretrain",
        "--config",
        s(&cfg),
        "--data",
        s(&ann),
        "--image-root",
        s(&root),
        "--output",
        s(&out),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--queue-size",
        "16",
        "--lr1",
        "1e-3",
        "--lr2",
        "1e-3",
        "--warmup",
        "1",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let log = lines(&out.join("train_log.jsonl"));
    assert_eq!(log.len(), 3);
    for l in &log {
        for k in ["itc", "itm", "mlm", "prefix_lm", "loss"] {
            let v = l[k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k} missing in {l}"));
            // MLM is 0 when no token of a short caption was drawn for masking.
            assert!(v.is_finite() && v >= 0.0, "{k} = {v} in {l}");
        }
    }
    assert_eq!(lines(&out.join("train_log.jsonl")).len(), 3);
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(card["task"], "pretrain");

    // The pre-trained folder retrieves zero-shot (its ITC and ITM heads are pre-training's
    // own), and is refused for the tasks it was not trained for.
    let model = out.join("model");
    let image = root.join("red_left.png");
    let texts = ["a red block on the left", "a blue block on the right"];
    let o = mplug_ok(&[
        "retrieve",
        "--model",
        s(&model),
        "--json",
        "--text",
        texts[0],
        "--text",
        texts[1],
        s(&image),
    ]);
    let rows = json_lines(&o.stdout);
    assert_eq!(rows.len(), 1, "{}", o.stdout);
    let mut ranked: Vec<&str> = rows[0]["texts"]
        .as_array()
        .unwrap_or_else(|| panic!("no ranked texts in {}", rows[0]))
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    ranked.sort_unstable();
    assert_eq!(ranked, [texts[1], texts[0]], "both texts ranked");
    mplug_fails(
        &["vqa", "--model", s(&model), s(&image), "what is it?"],
        "is a pretrain model, not a vqa model",
    );

    // A switched-off objective is not computed and logs null.
    let out2 = dir.join("run-itc-off");
    let o = mplug(&[
        "pretrain",
        "--config",
        s(&cfg),
        "--data",
        s(&ann),
        "--image-root",
        s(&root),
        "--output",
        s(&out2),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--queue-size",
        "0",
        "--itc",
        "0",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let l = &lines(&out2.join("train_log.jsonl"))[0];
    assert!(l["itc"].is_null() && l["mlm"].as_f64().is_some(), "{l}");
}

/// `--data-parallel 2` computes the two micro-batches of an update on two threads and makes
/// the update `--accumulate 2` makes alone; it is refused where an update has one micro-batch
/// or momentum state moves between micro-batches.
#[test]
fn data_parallel_makes_the_serial_update() {
    let dir = scratch("train-data-parallel");
    let ann = dir.join("captions.json");
    std::fs::write(
        &ann,
        r#"[{"image": "gray.png", "caption": "a man with a camera"},
            {"image": "rgb.png", "caption": "a small cat on the left"},
            {"image": "photo.jpg", "caption": "a rocket on its pad"},
            {"image": "gray.png", "caption": "a photographer outdoors"}]"#,
    )
    .unwrap();
    let serial = dir.join("serial");
    let r = finetune_caption(&serial, &ann, "3", &["--accumulate", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let parallel = dir.join("parallel");
    let r = finetune_caption(
        &parallel,
        &ann,
        "3",
        &["--accumulate", "2", "--data-parallel", "2"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        model_bytes(&serial) == model_bytes(&parallel),
        "concurrent micro-batches changed the update"
    );
    let losses = |out: &Path| -> Vec<f64> {
        lines(&out.join("train_log.jsonl"))
            .iter()
            .map(|l| l["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(losses(&serial), losses(&parallel));

    let one = finetune_caption(&dir.join("one"), &ann, "1", &["--data-parallel", "2"]);
    assert_eq!(one.code, 1);
    assert!(one.stderr.contains("--accumulate"), "{}", one.stderr);
    let vqa = dir.join("vqa.json");
    std::fs::write(
        &vqa,
        r#"[{"image": "gray.png", "question": "what is the man holding?", "answer": ["camera"]}]"#,
    )
    .unwrap();
    let distill = finetune_vqa(
        &dir.join("distill"),
        &vqa,
        "1",
        &["--distill", "--accumulate", "2", "--data-parallel", "2"],
    );
    assert_eq!(distill.code, 1);
    assert!(distill.stderr.contains("momentum"), "{}", distill.stderr);
}

#[test]
fn vqa_distillation_changes_training_and_resumes_bit_for_bit() {
    let dir = scratch("train-vqa-distill");
    let ann = dir.join("vqa.json");
    std::fs::write(
        &ann,
        r#"[{"image": "gray.png", "question": "what is the man holding?", "answer": ["camera", "camera", "a camera"]},
            {"image": "rgb.png", "question": "what animal is this?", "answer": ["cat"]},
            {"image": "photo.jpg", "question": "what is on the pad?", "answer": ["rocket", "a rocket"]}]"#,
    )
    .unwrap();

    let whole = dir.join("whole");
    let r = finetune_vqa(&whole, &ann, "4", &["--distill"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The momentum copy travels with every checkpoint.
    assert!(whole.join("step-2").join("momentum.safetensors").is_file());

    // A run killed after update 2: the folder as it was then (the learning-rate schedule
    // spans the planned 4 updates, so the first leg cannot be a shorter run).
    let split = dir.join("split");
    std::fs::create_dir_all(split.join("step-2")).unwrap();
    for f in std::fs::read_dir(whole.join("step-2")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), split.join("step-2").join(f.file_name())).unwrap();
    }
    std::fs::write(split.join("latest"), "step-2\n").unwrap();
    let r = finetune_vqa(&split, &ann, "4", &["--distill", "--resume"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        model_bytes(&whole) == model_bytes(&split),
        "a resumed distillation run differs from an uninterrupted one"
    );

    // The distillation weight ramps up from 0 over the first epoch (2 batches here), so the
    // soft targets change the later updates.
    let plain = dir.join("plain");
    let r = finetune_vqa(&plain, &ann, "4", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(model_bytes(&whole) != model_bytes(&plain));

    let bad = finetune_vqa(&dir.join("bad"), &ann, "1", &["--distill", "--alpha", "2"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("--alpha 2"), "{}", bad.stderr);
}

#[test]
fn multitask_continues_a_multitask_folder_with_task_weights() {
    let dir = scratch("train-task-weight");
    let ann = dir.join("captions.json");
    std::fs::write(
        &ann,
        r#"[{"image": "gray.png", "caption": "a man with a camera"},
            {"image": "rgb.png", "caption": "a cat"}]"#,
    )
    .unwrap();
    // A multi-task run trains every part: the shipped multi-task model has them all.
    let model = default_model();
    let img = images_dir();
    let data = format!("caption={}", s(&ann));
    let run = |weight: &str, out: &str| {
        let out = dir.join(out);
        mplug(&[
            "finetune",
            "multitask",
            "--model",
            s(&model),
            "--data",
            &data,
            "--task-weight",
            weight,
            "--image-root",
            s(&img),
            "--output",
            s(&out),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--workers",
            "1",
        ])
    };
    let r = run("vqa=2", "a");
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no --data for task `vqa`"),
        "{}",
        r.stderr
    );
    let r = run("caption=-1", "b");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("finite number >= 0"), "{}", r.stderr);
    let r = run("caption", "c");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("expected TASK=W"), "{}", r.stderr);
    // A weight scales the update's loss; the logged per-task loss stays unweighted.
    let r = run("caption=3", "d");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The folder has no MLM head (multi-task inference never reads it): it starts fresh.
    assert!(r.stderr.contains("no MLM head"), "{}", r.stderr);
    let log = lines(&dir.join("d").join("train_log.jsonl"));
    let (total, caption) = (
        log[0]["loss"].as_f64().unwrap(),
        log[0]["caption"].as_f64().unwrap(),
    );
    assert!(
        (total - 3.0 * caption).abs() < 1e-4 * total.abs(),
        "{total} vs 3 x {caption}"
    );
}

/// The largest absolute difference between two tensors of the same shape.
fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let f = |t: &candle_core::Tensor| {
        t.to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
    };
    (f(a) - f(b))
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `mplug pretrain` of the golden tiny configuration on the pairs `ann` that [`scenes`] wrote
/// into `dir`: one update of 2 pairs at lr 1e-7 (weights move by about 1e-7), plus `extra`.
fn pretrain_one_tiny_step(dir: &Path, ann: &Path, out: &Path, extra: &[&str]) -> Output {
    let k = tiny_model().join("config.json");
    let root = dir.join("images");
    let mut args = vec![
        "pretrain",
        "--config",
        s(&k),
        "--data",
        s(ann),
        "--image-root",
        s(&root),
        "--output",
        s(out),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--queue-size",
        "0",
        "--lr1",
        "1e-7",
        "--lr2",
        "1e-7",
        "--warmup",
        "0",
        "--no-augment",
    ];
    args.extend_from_slice(extra);
    mplug(&args)
}

#[test]
fn pretrain_starts_from_bert_and_clip_checkpoints() {
    use candle_core::Tensor;
    use std::collections::HashMap;
    let dir = scratch("train-init");
    let ann = scenes(&dir);
    let ckpt = mplug::Checkpoint::load(tiny_model().join("vqa.pth")).unwrap();
    let golden: HashMap<String, Tensor> = ckpt
        .keys()
        .into_iter()
        .map(|k| (k.to_string(), ckpt.tensor(k).unwrap()))
        .collect();
    // A Hugging Face BERT folder (BertForMaskedLM keys) made of the golden decoder's
    // self-attention and feed-forward weights, and an OpenAI-layout CLIP visual tower.
    let bert: HashMap<String, Tensor> = golden
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("text_decoder.")?;
            (!rest.contains("crossattention") && !rest.ends_with("position_ids"))
                .then(|| (rest.to_string(), v.clone()))
        })
        .collect();
    let clip: HashMap<String, Tensor> = golden
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("visual_encoder.")?;
            Some((rest.to_string(), v.clone()))
        })
        .collect();
    assert!(bert.len() > 10 && clip.len() > 10);
    let bert_dir = dir.join("bert");
    std::fs::create_dir_all(&bert_dir).unwrap();
    candle_core::safetensors::save(&bert, bert_dir.join("model.safetensors")).unwrap();
    std::fs::write(bert_dir.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let clip_file = dir.join("clip.safetensors");
    candle_core::safetensors::save(&clip, &clip_file).unwrap();

    let out = dir.join("run");
    let o = pretrain_one_tiny_step(
        &dir,
        &ann,
        &out,
        &["--init-bert", s(&bert_dir), "--init-clip", s(&clip_file)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("from BERT/CLIP"), "{}", o.stderr);
    let trained = mplug::Checkpoint::load(out.join("model").join("model.safetensors")).unwrap();
    let got = |k: &str| {
        trained
            .get(k)
            .unwrap()
            .unwrap_or_else(|| panic!("the trained model lacks {k}"))
    };
    // One update at lr 1e-7 moves a weight by about 1e-7: the towers hold the sources' values
    // (the last visual block and decoder layer of the configuration).
    let cfg = tiny_config();
    let block = format!(
        "visual_encoder.visual.transformer.resblocks.{}.attn.in_proj_weight",
        cfg.vision.layers - 1
    );
    let decoder = format!(
        "text_decoder.bert.encoder.layer.{}.output.dense.weight",
        cfg.bert.text_decode_layers - 1
    );
    for (ours, source) in [
        (
            "visual_encoder.visual.conv1.weight",
            "visual_encoder.visual.conv1.weight",
        ),
        (block.as_str(), block.as_str()),
        (
            "text_encoder.encoder.layer.0.attention.self.query.weight",
            "text_decoder.bert.encoder.layer.0.attention.self.query.weight",
        ),
        (decoder.as_str(), decoder.as_str()),
        (
            "text_encoder.embeddings.word_embeddings.weight",
            "text_decoder.bert.embeddings.word_embeddings.weight",
        ),
    ] {
        let d = max_diff(&got(ours), &golden[source]);
        assert!(d < 1e-5, "{ours} is {d} away from its source {source}");
    }
    // Cross-attention is new: it does not come from BERT.
    let cross = "text_decoder.bert.encoder.layer.0.crossattention.self.key.weight";
    assert!(max_diff(&got(cross), &golden[cross]) > 1e-2);
}

#[test]
fn pretrain_starts_positions_from_a_sincos_table() {
    let dir = scratch("train-sincos");
    let ann = scenes(&dir);
    let cfg = tiny_config();
    let run = |out: &Path, extra: &[&str]| {
        let o = pretrain_one_tiny_step(&dir, &ann, out, extra);
        assert_eq!(o.code, 0, "{}", o.stderr);
        mplug::Checkpoint::load(out.join("model").join("model.safetensors"))
            .unwrap()
            .tensor(mplug::train::init::POSITIONAL_EMBEDDING)
            .unwrap()
    };
    let table =
        mplug::train::init::sincos_positional_embedding(cfg.grid_size(), cfg.vision.width).unwrap();
    // One update at lr 1e-7: the embedding is the table's, and without the flag it is not.
    let with = run(&dir.join("sincos"), &["--sincos-positions"]);
    assert!(max_diff(&with, &table) < 1e-5);
    let without = run(&dir.join("random"), &[]);
    assert!(max_diff(&without, &table) > 1e-2);
}
