//! `mplug eval` (and `mplug baseline`) as a user runs it: every benchmark on a small annotation
//! set made here, with the golden tiny checkpoints; the files written, resuming, and the errors
//! of bad inputs.

mod common;

use common::{mplug, mplug_ok, scratch, Output};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The tiny checkpoints: the first configuration folder of the golden folder
/// (`MPLUG_GOLDEN_DIR`, else the committed copy).
fn tiny() -> PathBuf {
    common::config_dirs(&common::golden_dir()).remove(0)
}

/// The tests' own example images.
fn images() -> PathBuf {
    common::fixture_images_dir()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// `mplug eval <task> --model <tiny checkpoint> --config <tiny config> <ann> <root> --output
/// <out>` with fast decoding, plus `extra`.
fn eval(task: &str, model: &str, ann: &Path, root: &Path, out: &Path, extra: &[&str]) -> Output {
    let tiny = tiny();
    let checkpoint = tiny.join(format!("{model}.pth"));
    let config = tiny.join("config.json");
    let mut args = vec![
        "eval",
        task,
        "--model",
        s(&checkpoint),
        "--config",
        s(&config),
        s(ann),
        s(root),
        "--output",
        s(out),
        "--batch-size",
        "2",
        "--beam",
        "2",
        "--max-len",
        "5",
        "--json",
    ];
    args.extend(extra);
    mplug(&args)
}

/// A path as an argument.
fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn ok(r: Output) -> Value {
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn predictions(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_keys(v: &Value, keys: &[&str]) {
    for k in keys {
        assert!(v.get(*k).is_some(), "no `{k}` in {v}");
    }
}

#[test]
fn caption_writes_files_and_resumes() {
    let dir = scratch("caption");
    let ann = write(
        &dir.join("test.json"),
        r#"[{"image": "gray.png", "caption": ["a man with a camera"]},
            {"image": "rgb.png", "caption": ["a cat"]},
            {"image": "photo.jpg", "caption": ["a rocket"]}]"#,
    );
    let out = dir.join("out");
    let m = ok(eval("caption", "caption", &ann, &images(), &out, &[]));
    assert_keys(&m, &["Bleu_4", "CIDEr", "ROUGE_L"]);
    assert_eq!(predictions(&out).len(), 3);
    assert_keys(
        &serde_json::from_str::<Value>(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
            .unwrap(),
        &["CIDEr"],
    );
    assert!(out.join("caption_result.json").is_file());

    // Cut the file in the middle of its last line, as a killed run leaves it.
    let text = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap();
    std::fs::write(out.join("predictions.jsonl"), &text[..text.len() - 10]).unwrap();
    let r = eval("caption", "caption", &ann, &images(), &out, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("3 predictions (2 from an earlier run)"),
        "{}",
        r.stderr
    );
    assert_eq!(predictions(&out).len(), 3);
    assert_eq!(
        std::fs::read_to_string(out.join("predictions.jsonl")).unwrap(),
        text
    );

    // The plain output: one `name<TAB>value` line per metric.
    let tiny = tiny();
    let (checkpoint, config, root) = (tiny.join("caption.pth"), tiny.join("config.json"), images());
    let o = mplug_ok(&[
        "eval",
        "caption",
        "--model",
        s(&checkpoint),
        "--config",
        s(&config),
        s(&ann),
        s(&root),
        "--output",
        s(&out),
    ]);
    let stdout = &o.stdout;
    assert!(stdout.lines().any(|l| l.starts_with("CIDEr\t")), "{stdout}");
}

#[test]
fn every_other_task_runs() {
    let dir = scratch("tasks");

    // VQA, ranking the answers of a plain text list.
    let ann = write(
        &dir.join("vqa.json"),
        r#"[{"question_id": 1, "image": "gray.png", "question": "what is this?", "answer": ["camera"]},
            {"question_id": 2, "image": "rgb.png", "question": "is it a cat?", "answer": ["yes"]}]"#,
    );
    let answers = write(&dir.join("answers.txt"), "camera\nyes\nno\n");
    let out = dir.join("vqa");
    let m = ok(eval(
        "vqa",
        "vqa",
        &ann,
        &images(),
        &out,
        &["--answers", answers.to_str().unwrap(), "--k", "2"],
    ));
    assert_keys(&m, &["overall", "per_answer_type"]);
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vqa_result.json")).unwrap())
            .unwrap();
    assert_eq!(result.as_array().unwrap().len(), 2);
    assert_eq!(result[0]["question_id"], json!(1));

    // Retrieval.
    let ann = write(
        &dir.join("retrieval.json"),
        r#"[{"image": "gray.png", "caption": ["a man", "a camera"]},
            {"image": "photo.jpg", "caption": ["a rocket"]}]"#,
    );
    let out = dir.join("retrieval");
    let m = ok(eval("retrieval", "retrieval", &ann, &images(), &out, &[]));
    assert_keys(&m, &["txt_r1", "img_r1", "r_mean"]);
    assert_eq!(m["rescore"], json!("itm"));
    assert_eq!(predictions(&out).len(), 2 + 3);
    // Ranked by ITC alone: the metrics say so.
    let out = dir.join("retrieval-itc");
    let m = ok(eval(
        "retrieval",
        "retrieval",
        &ann,
        &images(),
        &out,
        &["--itc-only"],
    ));
    assert_eq!(m["rescore"], json!("itc"));
    assert_eq!(predictions(&out).len(), 2 + 3);

    // Grounding with xyxy boxes.
    let ann = write(
        &dir.join("grounding.json"),
        r#"[{"image": "rgb.png", "text": "the cat", "bbox": [100, 50, 300, 250]}]"#,
    );
    let out = dir.join("grounding");
    let m = ok(eval(
        "grounding",
        "grounding",
        &ann,
        &images(),
        &out,
        &["--box-format", "xyxy"],
    ));
    assert_keys(&m, &["accuracy", "mean_iou"]);
    assert_eq!(
        predictions(&out)[0]["target"],
        json!([100.0, 50.0, 300.0, 250.0])
    );

    // Video tasks on folders of frames.
    let videos = dir.join("videos");
    for (name, shade) in [("v1", 30u8), ("v2", 200u8)] {
        let clip = videos.join(name);
        std::fs::create_dir_all(&clip).unwrap();
        for i in 0..3u8 {
            let data: Vec<u8> = (0..40 * 30)
                .flat_map(|_| [shade, 20 * i, 255 - shade])
                .collect();
            mplug::input::RgbImage::from_raw(40, 30, data)
                .unwrap()
                .save(clip.join(format!("{i:03}.png")))
                .unwrap();
        }
    }
    let ann = write(
        &dir.join("videoqa.jsonl"),
        "{\"video_id\": \"v1\", \"question\": \"what color?\", \"answer\": \"blue\"}\n\
         {\"video_id\": \"v2\", \"question\": \"what color?\", \"answer\": \"red\"}\n",
    );
    let labels = write(&dir.join("ans2label.json"), r#"{"red": 0, "blue": 1}"#);
    let out = dir.join("videoqa");
    let m = ok(eval(
        "videoqa",
        "vqa",
        &ann,
        &videos,
        &out,
        &["--answers", labels.to_str().unwrap(), "--frames", "2"],
    ));
    assert_keys(&m, &["accuracy"]);
    assert_eq!(predictions(&out).len(), 2);

    let ann = write(
        &dir.join("msrvtt.jsonl"),
        "{\"clip_name\": \"v1\", \"caption\": \"a blue screen\"}\n\
         {\"clip_name\": \"v2\", \"caption\": \"a red screen\"}\n",
    );
    let out = dir.join("videoretrieval");
    let m = ok(eval(
        "videoretrieval",
        "retrieval",
        &ann,
        &videos,
        &out,
        &["--frames", "2"],
    ));
    assert_keys(&m, &["vid_r1", "vid_mdR"]);
    assert_eq!(predictions(&out).len(), 4);
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let dir = scratch("errors");
    let ann = write(
        &dir.join("bad.json"),
        r#"[{"image": "gray.png", "caption": "a"}, {"image": ["x"], "caption": "b"}]"#,
    );
    let r = eval("caption", "caption", &ann, &images(), &dir.join("out"), &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("error: ") && line.contains("bad.json") && line.contains("entry 1"),
        "{line}"
    );

    let ann = write(
        &dir.join("ok.json"),
        r#"[{"image": "gray.png", "caption": "a"}]"#,
    );
    let r = eval(
        "caption",
        "caption",
        &ann,
        &images(),
        &dir.join("out2"),
        &["--answers", "x.txt"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--answers"), "{}", r.stderr);
    // Ranking by ITC alone is for retrieval only.
    let r = eval(
        "caption",
        "caption",
        &ann,
        &images(),
        &dir.join("out2b"),
        &["--itc-only"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("ITC alone"), "{}", r.stderr);

    let r = eval(
        "caption",
        "caption",
        &dir.join("none.json"),
        &images(),
        &dir.join("out3"),
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("none.json"), "{}", r.stderr);

    // A model of another task.
    let r = eval(
        "caption",
        "grounding",
        &ann,
        &images(),
        &dir.join("out4"),
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);

    // An unknown benchmark is a usage error.
    let o = mplug(&["eval", "nocaps", "--model", "m.pth", "a.json", "."]);
    assert_eq!(o.code, 2);
}

/// `mplug baseline` as a user runs it: a video QA prior with question types, in both output
/// forms, and the error of a missing training file.
#[test]
fn baseline_reports_per_question_type() {
    let dir = scratch("baseline");
    let line = |q: &str, a: &str, t: &str| {
        format!(r#"{{"video_id":"v","question":"{q}","answer":"{a}","question_type":"{t}"}}"#)
    };
    let train = write(
        &dir.join("train.jsonl"),
        &[
            line("which way does it move?", "left", "order"),
            line("which way does it move?", "left", "order"),
            line("how many shapes?", "2", "static"),
        ]
        .join("\n"),
    );
    let test = write(
        &dir.join("test.jsonl"),
        &[
            line("which way does it move?", "up", "order"),
            line("how many shapes?", "2", "static"),
        ]
        .join("\n"),
    );
    let run = |extra: &[&str]| -> Output {
        let mut args = vec!["baseline", "videoqa", s(&test)];
        args.extend(extra);
        mplug(&args)
    };
    let train = train.to_str().unwrap();
    let text = run(&["--train", train]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(lines.contains(&"accuracy\t0.5"), "{}", text.stdout);
    assert!(
        lines.contains(&"per_question_type.order\t0.0"),
        "{}",
        text.stdout
    );
    assert!(
        lines.contains(&"per_question_type.static\t1.0"),
        "{}",
        text.stdout
    );
    let json = run(&["--train", train, "--json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["per_question_type"], json!({"order": 0.0, "static": 1.0}));
    let missing = run(&[]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("--train"), "{}", missing.stderr);
}
