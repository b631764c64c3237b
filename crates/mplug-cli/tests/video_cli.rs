//! `mplug video caption|qa|retrieve` on clips the test writes, and `mplug ground --draw`.

mod common;

use common::*;
use image::codecs::gif::GifEncoder;
use image::{Delay, Frame, Rgba, RgbaImage};
use std::path::{Path, PathBuf};

/// An animated GIF of `n` frames of a square moving across a coloured background.
fn clip(dir: &Path, name: &str, n: u32, colour: [u8; 3]) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let mut enc = GifEncoder::new(file);
    for i in 0..n {
        let mut img = RgbaImage::from_pixel(48, 40, Rgba([colour[0], colour[1], colour[2], 255]));
        for y in 10..22 {
            for x in (4 + 8 * i)..(16 + 8 * i) {
                img.put_pixel(x.min(47), y, Rgba([255, 255, 255, 255]));
            }
        }
        enc.encode_frame(Frame::from_parts(
            img,
            0,
            0,
            Delay::from_numer_denom_ms(100, 1),
        ))
        .unwrap();
    }
    path
}

fn lines(out: &Output) -> Vec<String> {
    out.stdout.lines().map(String::from).collect()
}

#[test]
fn video_subcommands_run_on_gif_clips() {
    let dir = scratch("video-cli");
    let a = clip(&dir, "a.gif", 4, [200, 30, 30]);
    let b = clip(&dir, "b.gif", 3, [30, 30, 200]);
    let model = tiny_model();
    let m = model.to_str().unwrap();
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());

    let out = mplug_ok(&[
        "video",
        "caption",
        "--model",
        m,
        "--frames",
        "3",
        "--beam",
        "2",
        "--min-len",
        "1",
        "--max-len",
        "4",
        "--json",
        a_s,
        b_s,
    ]);
    let got = lines(&out);
    assert_eq!(got.len(), 2, "{got:?}");
    for line in &got {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["captions"][0]["caption"].is_string(), "{line}");
    }

    let out = mplug_ok(&[
        "video",
        "qa",
        "--model",
        m,
        "--frames",
        "3",
        "--beam",
        "2",
        "--max-len",
        "3",
        a_s,
        "what moves?",
    ]);
    assert_eq!(lines(&out).len(), 1);
    let answers = dir.join("answers.txt");
    std::fs::write(&answers, "a square\nnothing\nthe cat\n").unwrap();
    let out = mplug_ok(&[
        "video",
        "qa",
        "--model",
        m,
        "--frames",
        "3",
        "--answers",
        answers.to_str().unwrap(),
        "--k",
        "2",
        a_s,
        "what moves?",
    ]);
    assert_eq!(lines(&out).len(), 2);

    let retrieve = |ranking: &[&str]| {
        let head = ["video", "retrieve", "--model", m, "--frames", "3", "--json"];
        let tail = ["--text", "a red clip", "--text", "a blue clip", a_s, b_s];
        mplug_ok(&[&head[..], ranking, &tail[..]].concat())
    };
    let out = retrieve(&["--k", "1"]);
    let got = lines(&out);
    assert_eq!(got.len(), 2);
    for line in &got {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let texts = v["texts"].as_array().unwrap();
        assert_eq!(texts.len(), 2);
        // Outside the top k the reference's evaluation scores -100.
        assert!(
            texts.iter().any(|t| t["score"].as_f64() == Some(-100.0)),
            "{line}"
        );
    }
    // One clip and two texts at the default k: both texts are re-scored.
    let head = ["video", "retrieve", "--model", m, "--frames", "3", "--json"];
    let out = mplug_ok(
        &[
            &head[..],
            &["--text", "a red clip", "--text", "a blue clip", a_s],
        ]
        .concat(),
    );
    let got = lines(&out);
    assert_eq!(got.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    let texts = v["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 2);
    assert!(
        texts.iter().all(|t| t["score"].as_f64() != Some(-100.0)),
        "{}",
        got[0]
    );
    // By ITC alone every text gets its cosine similarity to the mean frame feature.
    let out = retrieve(&["--itc-only"]);
    for line in &lines(&out) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let scores: Vec<f64> = v["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["score"].as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), 2, "{line}");
        assert!(scores.iter().all(|x| (-1.0..=1.0).contains(x)), "{line}");
    }

    mplug_fails(
        &[
            "video",
            "caption",
            "--model",
            m,
            dir.join("absent.gif").to_str().unwrap(),
        ],
        "absent.gif",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ground_draws_the_box() {
    let dir = scratch("ground-draw");
    let out_png = dir.join("boxed.png");
    let model = tiny_model();
    let img = image("rgb.png");
    mplug_ok(&[
        "ground",
        "--model",
        model.to_str().unwrap(),
        "--draw",
        out_png.to_str().unwrap(),
        img.to_str().unwrap(),
        "the cat",
    ]);
    let drawn = image::open(&out_png).unwrap().to_rgb8();
    let original = image::open(&img).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), original.dimensions());
    let red = drawn.pixels().filter(|p| p.0 == [255, 0, 0]).count();
    assert!(red > 10, "no box drawn ({red} red pixels)");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sampling_is_repeatable_with_a_seed_and_greedy_is_beam_one() {
    let model = tiny_model();
    let m = model.to_str().unwrap();
    let img = image("photo.jpg");
    let i = img.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["caption", "--model", m, "--min-len", "1", "--max-len", "6"];
        args.extend_from_slice(extra);
        args.push(i);
        mplug_ok(&args).stdout
    };
    let sampled = [
        "--sample",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--temperature",
        "1.5",
        "--seed",
        "11",
    ];
    let (a, b) = (run(&sampled), run(&sampled));
    assert_eq!(a, b);
    assert_eq!(run(&["--greedy"]), run(&["--beam", "1"]));
}

#[test]
fn caption_takes_folders_and_list_files() {
    let dir = scratch("caption-inputs");
    let photos = dir.join("photos");
    std::fs::create_dir_all(photos.join("nested")).unwrap();
    std::fs::copy(image("photo.jpg"), photos.join("b.jpg")).unwrap();
    std::fs::copy(image("gray.png"), photos.join("nested/a.png")).unwrap();
    std::fs::write(photos.join("notes.md"), "not an image").unwrap();
    let list = dir.join("list.txt");
    std::fs::write(&list, "photos/b.jpg\n\nphotos/nested/a.png\n").unwrap();
    let model = tiny_model();
    let m = model.to_str().unwrap();
    let from_dir = mplug_ok(&[
        "caption",
        "--model",
        m,
        "--max-len",
        "4",
        photos.to_str().unwrap(),
    ])
    .stdout;
    let from_list = mplug_ok(&[
        "caption",
        "--model",
        m,
        "--max-len",
        "4",
        list.to_str().unwrap(),
    ])
    .stdout;
    assert_eq!(from_dir.lines().count(), 2, "{from_dir}");
    assert_eq!(from_list.lines().count(), 2, "{from_list}");
    let texts = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split('\t').nth(1).unwrap_or("").to_string())
            .collect()
    };
    let mut a = texts(&from_dir);
    let mut b = texts(&from_list);
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    mplug_fails(
        &["caption", "--model", m, empty.to_str().unwrap()],
        "holds no images",
    );
    std::fs::remove_dir_all(&dir).ok();
}
