//! `mplug::eval` end to end on the golden tiny checkpoints (the golden folder's first
//! configuration): every task on a small annotation set made here (the tests' own fixture
//! images, clips written as GIFs and frame folders), the files it writes, resuming, and the
//! errors of malformed inputs.

mod common;

use candle_core::Device;
use image::{Rgba, RgbaImage};
use mplug::eval::{self, BoxFormat, EvalError, EvalOptions, EvalTask, NoProgress, Progress};
use mplug::pipeline::Pipeline;
use mplug::MplugConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn tiny() -> PathBuf {
    common::config_dirs().remove(0)
}

fn images() -> PathBuf {
    common::fixture_images_dir()
}

fn pipeline(task: EvalTask) -> Pipeline {
    let cfg = MplugConfig::from_file(tiny().join("config.json")).unwrap();
    let t = task.model_task();
    Pipeline::load(
        &cfg,
        tiny().join(format!("{}.pth", t.name())),
        t,
        &Device::Cpu,
    )
    .unwrap()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn write_json(path: &Path, v: &Value) -> PathBuf {
    write(path, &serde_json::to_string_pretty(v).unwrap())
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Equal JSON, numbers within 1e-12 relative (serde_json's float parsing may differ from the
/// written value in the last bit).
fn assert_same_numbers(a: &Value, b: &Value) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-12 * x.abs().max(y.abs()), "{x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.len(), y.len(), "{a} vs {b}");
            for (k, v) in x {
                assert_same_numbers(v, &y[k]);
            }
        }
        _ => assert_eq!(a, b),
    }
}

fn assert_keys(v: &Value, keys: &[&str]) {
    for k in keys {
        assert!(v.get(*k).is_some(), "no `{k}` in {v}");
    }
}

/// Fast decoding for the tiny random models.
fn options(task: EvalTask, out: &Path) -> EvalOptions {
    let mut o = EvalOptions::new(task, out);
    o.batch_size = 2;
    o.beam.beam_size = 2;
    o.beam.max_length = 6;
    o.beam.min_length = o.beam.min_length.min(2);
    o
}

/// Records the stages and how far each got.
#[derive(Debug, Default)]
struct Recorder {
    stages: Vec<(String, u64, u64)>,
    advanced: Vec<u64>,
}

impl Progress for Recorder {
    fn start(&mut self, stage: &str, total: u64, done: u64) {
        self.stages.push((stage.to_string(), total, done));
        self.advanced.push(0);
    }
    fn advance(&mut self, n: u64) {
        if let Some(a) = self.advanced.last_mut() {
            *a += n;
        }
    }
}

/// Drops the last `n` lines of the predictions file, as if the run had been interrupted.
fn drop_last_lines(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let all: Vec<&str> = text.lines().collect();
    let kept: Vec<String> = all[..all.len() - n].iter().map(|s| s.to_string()).collect();
    std::fs::write(path, kept.join("\n") + "\n").unwrap();
    kept
}

#[test]
fn caption_end_to_end_and_resume() {
    let dir = common::scratch("caption");
    let ann = write_json(
        &dir.join("coco_karpathy_test.json"),
        &json!([
            {"image": "gray.png", "caption": ["A man with a camera.", "a photographer"]},
            {"image": "rgb.png", "image_id": 7, "caption": "a cat sitting"},
            {"image": "photo.jpg", "caption": ["a rocket on a launch pad"]},
        ]),
    );
    let out = dir.join("out");
    let p = pipeline(EvalTask::Caption);
    let opts = options(EvalTask::Caption, &out);
    let r = eval::run(
        EvalTask::Caption,
        &p,
        &ann,
        &images(),
        &opts,
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!((r.predictions, r.resumed), (3, 0));
    let preds = lines(&out.join("predictions.jsonl"));
    assert_eq!(preds.len(), 3);
    assert_eq!(preds[1]["id"], json!(7));
    assert_eq!(preds[0]["id"], json!("gray.png"));
    for p in &preds {
        assert_keys(p, &["id", "image", "caption", "score"]);
    }
    let metrics = common::read_json(&out.join("metrics.json"));
    assert_keys(
        &metrics,
        &[
            "Bleu_1",
            "Bleu_2",
            "Bleu_3",
            "Bleu_4",
            "ROUGE_L",
            "CIDEr",
            "num_images",
        ],
    );
    assert_same_numbers(&metrics, &r.metrics);
    let result = common::read_json(&out.join("caption_result.json"));
    assert_eq!(result.as_array().unwrap().len(), 3);
    assert_keys(&result[0], &["image_id", "caption"]);

    // An interrupted run: the last prediction is missing; only it is computed again.
    let kept = drop_last_lines(&out.join("predictions.jsonl"), 1);
    let mut rec = Recorder::default();
    let r2 = eval::run(EvalTask::Caption, &p, &ann, &images(), &opts, &mut rec).unwrap();
    assert_eq!((r2.predictions, r2.resumed), (3, 2));
    assert_eq!(rec.stages, vec![("captioning".to_string(), 3, 2)]);
    assert_eq!(rec.advanced, vec![1]);
    let text = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap();
    let again: Vec<&str> = text.lines().collect();
    assert_eq!(again.len(), 3);
    assert_eq!(
        &again[..2],
        &kept[..],
        "finished predictions are left as they were"
    );
    // The recomputed caption is the same (decoding is deterministic), so are the metrics.
    assert_eq!(lines(&out.join("predictions.jsonl")), preds);
    assert_eq!(r2.metrics, r.metrics);

    // A finished run computes nothing.
    let mut rec = Recorder::default();
    let r3 = eval::run(EvalTask::Caption, &p, &ann, &images(), &opts, &mut rec).unwrap();
    assert_eq!(r3.resumed, 3);
    assert_eq!(rec.advanced, vec![0]);
}

#[test]
fn vqa_generated_and_ranked() {
    let dir = common::scratch("vqa");
    let ann = write_json(
        &dir.join("vqa_test.json"),
        &json!([
            {"question_id": 11, "image": "gray.png", "question": "what is the man holding?",
             "answer": ["camera", "camera", "a camera", "tripod"], "answer_type": "other",
             "question_type": "what is the"},
            {"question_id": 12, "image": "rgb.png", "question": "is this a cat?",
             "answer": [{"answer": "yes"}, {"answer": "yes"}], "answer_type": "yes/no"},
            {"question_id": 13, "image": "photo.jpg", "question": "how many rockets?",
             "answer": "1", "answer_type": "number"},
        ]),
    );
    let answers = write_json(
        &dir.join("answer_list.json"),
        &json!(["camera", "yes", "no", "1", "2"]),
    );
    let p = pipeline(EvalTask::Vqa);

    let out = dir.join("generate");
    let opts = options(EvalTask::Vqa, &out);
    let r = eval::run(EvalTask::Vqa, &p, &ann, &images(), &opts, &mut NoProgress).unwrap();
    assert_eq!(r.predictions, 3);
    let preds = lines(&out.join("predictions.jsonl"));
    assert_eq!(preds.len(), 3);
    for p in &preds {
        assert_keys(p, &["id", "question", "answer", "score", "accuracy"]);
    }
    let result = common::read_json(&out.join("vqa_result.json"));
    let ids: Vec<u64> = result
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e.as_object().unwrap().len(), 2, "{e}");
            assert!(e["answer"].is_string());
            e["question_id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(ids, vec![11, 12, 13]);
    assert_keys(
        &r.metrics,
        &[
            "overall",
            "per_answer_type",
            "per_question_type",
            "num_questions",
        ],
    );
    assert_eq!(r.metrics["mode"], json!("generate"));
    assert_eq!(r.metrics["per_answer_type"].as_object().unwrap().len(), 3);

    let out = dir.join("rank");
    let mut opts = options(EvalTask::Vqa, &out);
    opts.answer_list = Some(answers);
    opts.k = 3;
    let r = eval::run(EvalTask::Vqa, &p, &ann, &images(), &opts, &mut NoProgress).unwrap();
    assert_eq!(r.metrics["mode"], json!("rank"));
    let list = ["camera", "yes", "no", "1", "2"];
    for p in lines(&out.join("predictions.jsonl")) {
        assert!(list.contains(&p["answer"].as_str().unwrap()), "{p}");
        let prob = p["prob"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&prob), "{p}");
    }
    // The ranked answers agree with the pipeline's own ranking.
    let imgs = p.load_images(&[images().join("gray.png")]).unwrap();
    let best = p
        .rank_answers(&imgs, &["what is the man holding?"], &list, 3)
        .unwrap()
        .remove(0)
        .remove(0);
    let logged = lines(&out.join("predictions.jsonl"));
    assert_eq!(logged[0]["answer"], json!(best.text));
}

#[test]
fn retrieval_matches_the_pipeline_and_resumes() {
    let dir = common::scratch("retrieval");
    let ann = write_json(
        &dir.join("flickr30k_test.json"),
        &json!([
            {"image": "gray.png", "caption": ["A man with a camera.", "a photographer outside"]},
            {"image": "rgb.png", "caption": ["a cat", "a tabby cat looking up"]},
            {"image": "photo.jpg", "caption": ["a rocket", "a launch pad"]},
            {"image": "rgba.png", "caption": ["a cup of coffee"]},
        ]),
    );
    let out = dir.join("out");
    let p = pipeline(EvalTask::Retrieval);
    let mut opts = options(EvalTask::Retrieval, &out);
    opts.k = 3;
    let r = eval::run(
        EvalTask::Retrieval,
        &p,
        &ann,
        &images(),
        &opts,
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(r.predictions, 4 + 7);
    assert_keys(
        &r.metrics,
        &[
            "txt_r1",
            "txt_r5",
            "txt_r10",
            "txt_r_mean",
            "img_r1",
            "img_r5",
            "img_r10",
            "img_r_mean",
            "r_mean",
        ],
    );
    assert_eq!(r.metrics["k"], json!(3));
    let preds = lines(&out.join("predictions.jsonl"));
    assert_eq!(preds.len(), 11);

    // Same scores as the whole-matrix re-ranking of the pipeline on the same texts.
    let files = ["gray.png", "rgb.png", "photo.jpg", "rgba.png"];
    let texts = [
        "a man with a camera",
        "a photographer outside",
        "a cat",
        "a tabby cat looking up",
        "a rocket",
        "a launch pad",
        "a cup of coffee",
    ];
    let paths: Vec<PathBuf> = files.iter().map(|f| images().join(f)).collect();
    let (i2t, t2i) = p
        .retrieve(&p.load_images(&paths).unwrap(), &texts, 3)
        .unwrap();
    for rec in &preds {
        let q = rec["index"].as_u64().unwrap() as usize;
        let row = if rec["query"] == json!("image") {
            &i2t[q]
        } else {
            assert_eq!(rec["text"], json!(texts[q]));
            &t2i[q]
        };
        let top = rec["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        for pair in top {
            let (c, s) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap(),
            );
            assert!((row[c] as f64 - s).abs() < 1e-4, "{rec}: {} vs {s}", row[c]);
        }
        let chosen = row.iter().filter(|&&v| v != -100.0).count();
        assert_eq!(chosen, 3, "{row:?}");
    }

    // Resume after losing two text queries: nothing else is re-ranked.
    drop_last_lines(&out.join("predictions.jsonl"), 2);
    let mut rec = Recorder::default();
    let r2 = eval::run(EvalTask::Retrieval, &p, &ann, &images(), &opts, &mut rec).unwrap();
    assert_eq!((r2.predictions, r2.resumed), (11, 9));
    let last = rec.stages.last().unwrap();
    assert_eq!((last.1, last.2), (7, 5), "{:?}", rec.stages);
    assert_eq!(rec.advanced.last(), Some(&2));
    assert_eq!(r2.metrics, r.metrics);
}

#[test]
fn grounding_end_to_end() {
    let dir = common::scratch("grounding");
    // Objects with xywh boxes, one listing two expressions, and a RefCOCO split tuple.
    let ann = write_json(
        &dir.join("refcoco_testA.json"),
        &json!([
            {"image": "rgb.png", "text": "the cat", "bbox": [100, 50, 200, 200], "ref_id": 5},
            {"image": "photo.jpg", "expression": ["the rocket", "the tall thing"], "bbox": [300.7, 20.2, 50.9, 380]},
            ["gray.png", "mask.png", [10, 10, 300, 480], "The Man", "attributes"],
        ]),
    );
    let out = dir.join("out");
    let p = pipeline(EvalTask::Grounding);
    let opts = options(EvalTask::Grounding, &out);
    let r = eval::run(
        EvalTask::Grounding,
        &p,
        &ann,
        &images(),
        &opts,
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(r.predictions, 4);
    assert_keys(
        &r.metrics,
        &["accuracy", "mean_iou", "num_correct", "total"],
    );
    assert_eq!(r.metrics["total"], json!(4));
    let preds = lines(&out.join("predictions.jsonl"));
    let ids: Vec<Value> = preds.iter().map(|p| p["id"].clone()).collect();
    assert_eq!(ids, vec![json!(5), json!("1#0"), json!("1#1"), json!(2)]);
    // Truncated to integers, then xywh -> xyxy, as the reference.
    assert_eq!(preds[1]["target"], json!([300.0, 20.0, 350.0, 400.0]));
    assert_eq!(preds[3]["text"], json!("the man"));
    for p in &preds {
        let b: Vec<f64> = p["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(b[0] <= b[2] && b[1] <= b[3], "{p}");
    }

    // The same file read with the other box format is refused with the entry named.
    let mut opts = options(EvalTask::Grounding, &dir.join("xyxy"));
    opts.box_format = BoxFormat::Xyxy;
    let e = eval::run(
        EvalTask::Grounding,
        &p,
        &ann,
        &images(),
        &opts,
        &mut NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("refcoco_testA.json") && e.contains("entry 1"),
        "{e}"
    );
}

/// Writes an animated GIF of `n` frames cut from a fixture image.
fn gif(path: &Path, source: &str, n: usize) {
    let img = image::open(images().join(source)).unwrap().to_rgba8();
    let frames = (0..n).map(|i| {
        let x = (i as u32 * 20) % (img.width() - 96);
        let crop = image::imageops::crop_imm(&img, x, 0, 96, 80).to_image();
        image::Frame::new(crop)
    });
    let file = std::fs::File::create(path).unwrap();
    let mut enc = image::codecs::gif::GifEncoder::new(file);
    enc.encode_frames(frames).unwrap();
}

/// Writes a folder of `n` PNG frames.
fn frame_folder(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let v = (40 * i) as u8;
        RgbaImage::from_pixel(48, 32, Rgba([v, 255 - v, 128, 255]))
            .save(dir.join(format!("{i:05}.png")))
            .unwrap();
    }
}

fn videos(dir: &Path) -> PathBuf {
    let root = dir.join("videos");
    std::fs::create_dir_all(&root).unwrap();
    gif(&root.join("video7010.gif"), "rgb.png", 4);
    gif(&root.join("video7020.gif"), "photo.jpg", 3);
    frame_folder(&root.join("video7030"), 5);
    root
}

#[test]
fn videoqa_end_to_end() {
    let dir = common::scratch("videoqa");
    let root = videos(&dir);
    let ann = write(
        &dir.join("test.jsonl"),
        concat!(
            r#"{"video_id": "video7010", "question": "what is in the video?", "answer": "cat", "#,
            r#""question_type": "static"}"#,
            "\n",
            r#"{"video_id": "video7020", "question": "what flies?", "answer": "rocket", "#,
            r#""question_type": "change"}"#,
            "\n\n",
            r#"{"video_id": "video7030", "question": "what color is it?", "answer": "green"}"#,
            "\n",
        ),
    );
    let ans2label = write(
        &dir.join("train_ans2label.json"),
        r#"{"rocket": 0, "cat": 1, "green": 2, "dog": 3}"#,
    );
    let out = dir.join("out");
    let p = pipeline(EvalTask::VideoQa);
    let mut opts = options(EvalTask::VideoQa, &out);
    opts.answer_list = Some(ans2label);
    opts.num_frames = 3;
    opts.k = 4;
    let r = eval::run(EvalTask::VideoQa, &p, &ann, &root, &opts, &mut NoProgress).unwrap();
    assert_eq!(r.predictions, 3);
    assert_keys(&r.metrics, &["accuracy", "num_questions"]);
    let acc = r.metrics["accuracy"].as_f64().unwrap();
    let preds = lines(&out.join("predictions.jsonl"));
    let ids: Vec<Value> = preds.iter().map(|p| p["id"].clone()).collect();
    assert_eq!(ids, vec![json!(0), json!(1), json!(2)]);
    let correct = preds.iter().filter(|p| p["correct"] == json!(true)).count();
    assert!((acc - correct as f64 / 3.0).abs() < 1e-12);
    for p in &preds {
        assert!(["rocket", "cat", "green", "dog"].contains(&p["answer"].as_str().unwrap()));
    }
    // Per question type: the two typed questions, each its own type; the untyped one in none.
    let by_type = r.metrics["per_question_type"].as_object().unwrap();
    assert_eq!(by_type.len(), 2);
    for (i, t) in [(0, "static"), (1, "change")] {
        let hit = if preds[i]["correct"] == json!(true) {
            1.0
        } else {
            0.0
        };
        assert_eq!(by_type[t], json!(hit), "{t}");
    }

    // Resume with a missing line.
    drop_last_lines(&out.join("predictions.jsonl"), 1);
    let r2 = eval::run(EvalTask::VideoQa, &p, &ann, &root, &opts, &mut NoProgress).unwrap();
    assert_eq!((r2.predictions, r2.resumed), (3, 2));
    assert_eq!(lines(&out.join("predictions.jsonl")), preds);
}

#[test]
fn videoretrieval_end_to_end() {
    let dir = common::scratch("videoretrieval");
    let root = videos(&dir);
    let ann = write(
        &dir.join("msrvtt_test.jsonl"),
        concat!(
            r#"{"clip_name": "video7010", "caption": "a cat looks at the camera"}"#,
            "\n",
            r#"{"clip_name": "video7020", "caption": "a rocket is launched"}"#,
            "\n",
            r#"{"clip_name": "video7030", "caption": ["colors change slowly"]}"#,
            "\n",
        ),
    );
    let out = dir.join("out");
    let p = pipeline(EvalTask::VideoRetrieval);
    let mut opts = options(EvalTask::VideoRetrieval, &out);
    opts.num_frames = 2;
    opts.k = 2;
    let r = eval::run(
        EvalTask::VideoRetrieval,
        &p,
        &ann,
        &root,
        &opts,
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(r.predictions, 6);
    assert_keys(
        &r.metrics,
        &[
            "txt_r1", "txt_r5", "txt_r10", "vid_r1", "vid_r5", "vid_r10", "vid_mdR", "r_mean",
        ],
    );
    let preds = lines(&out.join("predictions.jsonl"));
    assert_eq!(preds.len(), 6);
    assert!(preds.iter().any(|p| p["id"] == json!("video:2")));
    assert!(preds.iter().any(|p| p["id"] == json!("text:2")));
    // With everything done, a rerun encodes nothing.
    let mut rec = Recorder::default();
    let r2 = eval::run(EvalTask::VideoRetrieval, &p, &ann, &root, &opts, &mut rec).unwrap();
    assert_eq!(r2.resumed, 6);
    assert!(rec.stages.is_empty(), "{:?}", rec.stages);
    assert_eq!(r2.metrics, r.metrics);

    // A missing video is named.
    let bad = write(
        &dir.join("missing.jsonl"),
        "{\"clip_name\": \"video9999\", \"caption\": \"nothing\"}\n",
    );
    let opts = options(EvalTask::VideoRetrieval, &dir.join("missing"));
    let e = eval::run(
        EvalTask::VideoRetrieval,
        &p,
        &bad,
        &root,
        &opts,
        &mut NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("video9999"), "{e}");
}

fn run_err(task: EvalTask, p: &Pipeline, ann: &Path, out: &Path) -> (EvalError, String) {
    let opts = options(task, out);
    let e = eval::run(task, p, ann, &images(), &opts, &mut NoProgress).unwrap_err();
    let s = e.to_string();
    (e, s)
}

#[test]
fn malformed_annotations_are_named() {
    let dir = common::scratch("malformed");
    let p = pipeline(EvalTask::Caption);
    let out = dir.join("out");

    let ann = write_json(
        &dir.join("no_image.json"),
        &json!([{"image": "gray.png", "caption": ["a"]}, {"caption": ["b"]}]),
    );
    let (e, s) = run_err(EvalTask::Caption, &p, &ann, &out);
    assert!(matches!(e, EvalError::Annotation { .. }), "{e:?}");
    assert!(
        s.contains("no_image.json") && s.contains("entry 1") && s.contains("`image`"),
        "{s}"
    );

    let ann = write(&dir.join("broken.json"), "[{\"image\": \"gray.png\",");
    let (_, s) = run_err(EvalTask::Caption, &p, &ann, &out);
    assert!(
        s.contains("broken.json") && s.contains("not valid JSON"),
        "{s}"
    );

    let ann = write(
        &dir.join("lines.jsonl"),
        "{\"image\": \"gray.png\"}\n{\"image\": 3}\n",
    );
    let (_, s) = run_err(EvalTask::Caption, &p, &ann, &out);
    assert!(
        s.contains("lines.jsonl") && s.contains("line 2") && s.contains("must be a string"),
        "{s}"
    );

    let ann = write_json(
        &dir.join("dup.json"),
        &json!([{"image": "a.png", "image_id": 1}, {"image": "b.png", "image_id": 1}]),
    );
    let (_, s) = run_err(EvalTask::Caption, &p, &ann, &out);
    assert!(s.contains("entry 1") && s.contains("repeats"), "{s}");

    let ann = write(&dir.join("empty.json"), "[]");
    let (_, s) = run_err(EvalTask::Caption, &p, &ann, &out);
    assert!(s.contains("empty.json") && s.contains("no entries"), "{s}");

    assert!(
        !out.exists(),
        "a malformed annotation file leaves no output folder"
    );

    // A missing image names the file and the sample.
    let ann = write_json(
        &dir.join("missing.json"),
        &json!([{"image": "nope.png", "image_id": 4}]),
    );
    let (e, s) = run_err(EvalTask::Caption, &p, &ann, &dir.join("missing"));
    assert!(matches!(e, EvalError::Samples { .. }), "{e:?}");
    assert!(s.contains("nope.png") && s.contains("id 4"), "{s}");

    // A VQA entry without its question.
    let vqa = pipeline(EvalTask::Vqa);
    let ann = write_json(
        &dir.join("vqa.json"),
        &json!([{"question_id": 1, "image": "gray.png"}]),
    );
    let (_, s) = run_err(EvalTask::Vqa, &vqa, &ann, &dir.join("vqa"));
    assert!(
        s.contains("vqa.json") && s.contains("entry 0") && s.contains("`question`"),
        "{s}"
    );

    // A bad answer list.
    let ann = write_json(
        &dir.join("vqa_ok.json"),
        &json!([{"question_id": 1, "image": "gray.png", "question": "what?"}]),
    );
    let list = write(&dir.join("answers.json"), "[\"yes\", 3]");
    let mut opts = options(EvalTask::Vqa, &dir.join("vqa2"));
    opts.answer_list = Some(list);
    let s = eval::run(EvalTask::Vqa, &vqa, &ann, &images(), &opts, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(s.contains("answers.json") && s.contains("entry 1"), "{s}");

    // The wrong model for the task.
    let (e, _) = run_err(EvalTask::Vqa, &p, &ann, &dir.join("wrong"));
    assert!(matches!(e, EvalError::Options(_)), "{e:?}");
}

#[test]
fn an_output_folder_of_another_run_is_refused() {
    let dir = common::scratch("foreign");
    let p = pipeline(EvalTask::Caption);
    let out = dir.join("out");
    let a = write_json(
        &dir.join("a.json"),
        &json!([{"image": "gray.png", "caption": "a man"}]),
    );
    let opts = options(EvalTask::Caption, &out);
    eval::run(EvalTask::Caption, &p, &a, &images(), &opts, &mut NoProgress).unwrap();

    // Another annotation file with other ids.
    let b = write_json(
        &dir.join("b.json"),
        &json!([{"image": "photo.jpg", "caption": "a rocket"}]),
    );
    let s = eval::run(EvalTask::Caption, &p, &b, &images(), &opts, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        s.contains("predictions.jsonl") && s.contains("another evaluation"),
        "{s}"
    );

    // Another task.
    let g = pipeline(EvalTask::Grounding);
    let ann = write_json(
        &dir.join("g.json"),
        &json!([{"image": "gray.png", "text": "a man", "bbox": [0, 0, 10, 10]}]),
    );
    let gopts = options(EvalTask::Grounding, &out);
    let s = eval::run(
        EvalTask::Grounding,
        &g,
        &ann,
        &images(),
        &gopts,
        &mut NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(
        s.contains("run.json") && s.contains("caption evaluation"),
        "{s}"
    );
}
