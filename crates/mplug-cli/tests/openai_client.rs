//! The OpenAI-compatible endpoints driven by OpenAI's own Python library
//! (`tests/clients/openai_client.py`), as existing clients call them: the models list, chat
//! completions (caption, VQA with `n` and `max_tokens`, streaming), embeddings (the library
//! asks for base64) and an error. The answers must be the command line's.
//!
//! The library comes from PyPI: `.ci/run` installs it into a venv and names its Python in
//! `MPLUG_TEST_PYTHON`. Without it the test says so and passes, except under CI, where it
//! fails.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;

#[test]
fn openais_python_library_speaks_to_the_server() {
    let Some(python) = std::env::var_os("MPLUG_TEST_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test: set MPLUG_TEST_PYTHON to a Python with the openai package"
        );
        eprintln!("SKIPPED: MPLUG_TEST_PYTHON is not set (a Python with `pip install openai`)");
        return;
    };
    let server = Server::with_args(&[]);
    let img = default_model().join("examples").join("scene_12.png");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/openai_client.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(format!("http://{}", server.addr))
        .arg(&img)
        .output()
        .expect("run the Python client");
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("the client prints JSON");

    assert_eq!(
        got["models"],
        json!([
            "mplug-caption",
            "mplug-vqa",
            "mplug-retrieval",
            "mplug-grounding"
        ])
    );
    let cli = |args: &[&str]| -> Value {
        serde_json::from_str(mplug_ok(args).stdout.trim()).expect("JSON")
    };
    let path = img.to_str().expect("utf-8 path");
    let caption = cli(&["caption", "--json", path]);
    assert_eq!(got["caption"], caption["captions"][0]["caption"]);
    assert_eq!(got["streamed"], got["caption"]);
    assert_eq!(got["caption_finish"], "stop");
    assert!(got["caption_usage"].as_u64().unwrap_or(0) > 0);

    let vqa = cli(&[
        "vqa",
        "--json",
        "--n-best",
        "2",
        "--max-len",
        "5",
        path,
        "what color is the circle?",
    ]);
    let want: Vec<&Value> = vqa["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .map(|a| &a["answer"])
        .collect();
    assert_eq!(
        got["answers"]
            .as_array()
            .map(|a| a.iter().collect::<Vec<_>>()),
        Some(want)
    );

    // The embeddings (sent as base64 little-endian f32) are the native endpoint's features.
    let b64 = image_b64_path(&img);
    let native = server
        .post_json(
            "/v1/embed",
            &json!({"texts": ["a red circle"], "images": [b64]}),
        )
        .json();
    let close = |a: &Value, b: &Value| {
        let (a, b) = (a.as_array().expect("list"), b.as_array().expect("list"));
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(f64::NAN)).abs() < 1e-6
            })
    };
    assert!(close(&got["embeddings"][0], &native["text_embeddings"][0]));
    assert!(close(&got["embeddings"][1], &native["image_embeddings"][0]));

    assert_eq!(got["no_image_error"][0], 422, "{}", got["no_image_error"]);
    assert!(
        got["no_image_error"][1]
            .as_str()
            .is_some_and(|m| m.contains("no image")),
        "{}",
        got["no_image_error"]
    );
}
