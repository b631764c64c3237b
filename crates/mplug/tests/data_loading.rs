//! Training data: annotation parsing, VQA answer weights, deterministic augmented batches, and
//! the grounding flip that swaps `left` and `right` in the text and mirrors the box.

mod common;

use candle_core::Device;
use common::scratch;
use mplug::data::augment::{apply, crop_box, Op};
use mplug::data::{
    answer_weights, swap_left_right, AugmentConfig, DataTask, Dataset, Loader, LoaderConfig,
};
use mplug::eval::BoxFormat;
use mplug::input::{RgbImage, Tokenizer};
use rand::SeedableRng;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A `w x h` image: a gradient with a coloured block on the left third.
fn picture(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        if x < w / 3 {
            image::Rgb([200, seed, 30])
        } else {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                seed.wrapping_mul(3),
            ])
        }
    })
}

fn images(dir: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("img{i}.png");
            picture(40 + 4 * i as u32, 30 + 2 * i as u32, i as u8 * 40)
                .save(dir.join(&name))
                .unwrap();
            name
        })
        .collect()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::bert_base_uncased().unwrap()
}

#[test]
fn pretrain_captions_are_cleaned_and_images_numbered() {
    let dir = scratch("pretrain");
    let ann = write(
        &dir,
        "ann.json",
        r#"[{"image": "a.jpg", "caption": "A Dog, running!"},
            {"image": "b.jpg", "caption": ["Two cats.", "a  cat-pair"]},
            {"image": "a.jpg", "caption": "the same dog"}]"#,
    );
    let d = Dataset::pretrain(&ann).unwrap();
    assert_eq!(d.task, DataTask::Pretrain);
    assert_eq!(d.len(), 3);
    assert_eq!(d.samples[0].texts, ["a dog running"]);
    assert_eq!(d.samples[1].texts, ["two cats", "a cat pair"]);
    let ids: Vec<u64> = d.samples.iter().map(|s| s.image_id).collect();
    assert_eq!(ids, [0, 1, 0]);
}

#[test]
fn caption_and_retrieval_give_one_sample_per_caption() {
    let dir = scratch("caption");
    let ann = write(
        &dir,
        "ann.json",
        r#"[{"image": "x.jpg", "caption": ["one", "two"]}, {"image": "y.jpg", "caption": "three"}]"#,
    );
    let c = Dataset::caption(&ann, None).unwrap();
    let texts: Vec<&str> = c.samples.iter().map(|s| s.texts[0].as_str()).collect();
    assert_eq!(texts, ["one", "two", "three"]);
    let r = Dataset::retrieval(&ann).unwrap();
    assert_eq!(r.task, DataTask::Retrieval);
    let ids: Vec<u64> = r.samples.iter().map(|s| s.image_id).collect();
    assert_eq!(ids, [0, 0, 1]);
}

#[test]
fn karpathy_split_is_selected() {
    let dir = scratch("karpathy");
    let ann = write(
        &dir,
        "dataset_coco.json",
        r#"{"images": [
            {"filepath": "train2014", "filename": "a.jpg", "cocoid": 1, "split": "train",
             "sentences": [{"raw": "A man."}, {"raw": "A person."}]},
            {"filepath": "val2014", "filename": "b.jpg", "cocoid": 2, "split": "test",
             "sentences": [{"raw": "A tree."}]}]}"#,
    );
    let c = Dataset::caption(&ann, Some("train")).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c.samples[0].image, "train2014/a.jpg");
    assert_eq!(c.samples[1].texts, ["a person"]);
}

#[test]
fn vqa_answers_are_weighted_by_frequency() {
    let (a, w) = answer_weights(&["yes", "no", "yes", "yes"].map(String::from));
    assert_eq!(a, ["yes", "no"]);
    assert_eq!(w, [0.75, 0.25]);

    let dir = scratch("vqa");
    let ann = write(
        &dir,
        "vqa.json",
        r#"[{"question_id": 7, "image": "a.jpg", "question": "What colour?",
             "answer": ["red", "red", "blue", "red", "green"]}]"#,
    );
    let d = Dataset::vqa(&ann).unwrap();
    let s = &d.samples[0];
    assert_eq!(s.answers, ["red", "blue", "green"]);
    assert_eq!(s.weights, [0.6, 0.2, 0.2]);
    assert_eq!(s.weights.iter().sum::<f32>(), 1.0);

    // Visual Genome and GQA entries: their one answer weighs 0.5, as in the reference.
    let mixed = write(
        &dir,
        "mixed.json",
        r#"[{"question_id": 1, "image": "a.jpg", "question": "What?", "answer": ["x", "x"],
             "dataset": "vqa"},
            {"question_id": 2, "image": "b.jpg", "question": "Who?", "answer": "a man",
             "dataset": "vg"},
            {"question_id": 3, "image": "c.jpg", "question": "Where?", "answer": "left",
             "dataset": "gqa"}]"#,
    );
    let d = Dataset::vqa(&mixed).unwrap();
    assert_eq!(d.samples[0].weights, [1.0]);
    assert_eq!(d.samples[1].answers, ["a man"]);
    assert_eq!(d.samples[1].weights, [0.5]);
    assert_eq!(d.samples[2].weights, [0.5]);

    let bad = write(
        &dir,
        "noanswer.json",
        r#"[{"question_id": 9, "image": "a.jpg", "question": "Why?"}]"#,
    );
    let e = Dataset::vqa(&bad).unwrap_err().to_string();
    assert!(
        e.contains("noanswer.json") && e.contains("question 9"),
        "{e}"
    );
}

#[test]
fn malformed_entries_are_named() {
    let dir = scratch("bad");
    let ann = write(
        &dir,
        "ann.json",
        r#"[{"image": "a.jpg", "caption": "ok"}, {"caption": "no image"}]"#,
    );
    let e = Dataset::pretrain(&ann).unwrap_err().to_string();
    assert!(e.contains("ann.json") && e.contains("entry 1"), "{e}");
    let e = Dataset::caption(dir.join("missing.json"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
    let empty = write(&dir, "empty.json", "[]");
    assert!(Dataset::caption(&empty, None).is_err());
}

#[test]
fn grounding_boxes_are_read_as_xyxy() {
    let dir = scratch("grounding");
    let ann = write(
        &dir,
        "refs.json",
        r#"[{"image": "a.jpg", "text": "Left Dog", "bbox": [10, 20, 30, 40]}]"#,
    );
    let d = Dataset::grounding(&ann, BoxFormat::Xywh).unwrap();
    assert_eq!(d.samples[0].bbox, Some([10.0, 20.0, 40.0, 60.0]));
    assert_eq!(d.samples[0].texts, ["left dog"]);
}

#[test]
fn left_and_right_swap_as_the_reference_does() {
    assert_eq!(
        swap_left_right("the left dog right of the cat"),
        "the right dog left of the cat"
    );
    // Substrings too, exactly as the reference's str.replace chain.
    assert_eq!(swap_left_right("leftmost, bright"), "rightmost, bleft");
    assert_eq!(swap_left_right("no direction"), "no direction");
}

fn loader(dir: &Path, n: usize, seed: u64, workers: usize, augment: bool) -> Loader {
    let names = images(dir, n);
    let entries: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, f)| format!(r#"{{"image": "{f}", "caption": ["cap {i}", "other {i}"]}}"#))
        .collect();
    let ann = write(dir, "ann.json", &format!("[{}]", entries.join(",")));
    Loader::new(
        Dataset::pretrain(&ann).unwrap(),
        dir,
        tokenizer(),
        LoaderConfig {
            batch_size: 3,
            seed,
            resolution: 32,
            max_text_len: 16,
            augment: augment.then(AugmentConfig::pretrain),
            workers,
            prompt: String::new(),
        },
        &Device::Cpu,
    )
    .unwrap()
}

fn pixels(l: &Loader, i: u64) -> Vec<f32> {
    l.batch(i)
        .unwrap()
        .images
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn batches_are_a_function_of_seed_and_index() {
    let dir = scratch("determinism");
    let a = loader(&dir, 5, 11, 1, true);
    let b = loader(&dir, 5, 11, 3, true);
    for i in [0, 1, 4, 7] {
        let (x, y) = (a.batch(i).unwrap(), b.batch(i).unwrap());
        assert_eq!(x.samples, y.samples, "batch {i}");
        assert_eq!(x.texts, y.texts, "batch {i}");
        assert_eq!(
            pixels(&a, i),
            pixels(&b, i),
            "batch {i}: workers changed pixels"
        );
        assert_eq!(x.images.dims(), [3, 3, 32, 32]);
    }
    // Later batches do not depend on earlier ones having been drawn.
    let fresh = loader(&dir, 5, 11, 2, true);
    assert_eq!(pixels(&fresh, 7), pixels(&a, 7));
    // Another index or another seed gives other pixels.
    assert_ne!(pixels(&a, 0), pixels(&a, 1));
    let c = loader(&dir, 5, 12, 1, true);
    assert_ne!(pixels(&a, 0), pixels(&c, 0));
}

#[test]
fn every_epoch_visits_every_sample_once() {
    let dir = scratch("epochs");
    let l = loader(&dir, 6, 3, 2, false);
    assert_eq!(l.batches_per_epoch(), 2);
    let mut first: Vec<usize> = (0..2).flat_map(|i| l.batch(i).unwrap().samples).collect();
    let mut second: Vec<usize> = (2..4).flat_map(|i| l.batch(i).unwrap().samples).collect();
    let order_1 = first.clone();
    first.sort();
    second.sort();
    assert_eq!(first, (0..6).collect::<Vec<_>>());
    assert_eq!(second, (0..6).collect::<Vec<_>>());
    let order_2: Vec<usize> = (2..4).flat_map(|i| l.batch(i).unwrap().samples).collect();
    assert_ne!(order_1, order_2, "epochs should be shuffled differently");
}

#[test]
fn missing_image_is_named() {
    let dir = scratch("missing-image");
    let ann = write(
        &dir,
        "ann.json",
        r#"[{"image": "nope.png", "caption": "x"}]"#,
    );
    let l = Loader::new(
        Dataset::caption(&ann, None).unwrap(),
        &dir,
        tokenizer(),
        LoaderConfig {
            batch_size: 1,
            resolution: 32,
            ..Default::default()
        },
        &Device::Cpu,
    )
    .unwrap();
    let e = l.batch(0).unwrap_err().to_string();
    assert!(e.contains("nope.png") && e.contains("sample 0"), "{e}");
}

#[test]
fn random_resized_crop_stays_in_bounds_and_operations_keep_size() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..200 {
        let (l, t, w, h) = crop_box(50, 30, (0.2, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert!(w > 0 && h > 0 && l + w <= 50 && t + h <= 30);
    }
    let img = picture(24, 20, 9);
    for op in mplug::data::augment::OPS {
        let out = apply(&img, op, 7.0, &mut rng);
        assert_eq!(out.dimensions(), (24, 20), "{op:?}");
    }
    assert_eq!(apply(&img, Op::Identity, 7.0, &mut rng), img);
    // A translation moves the picture: the left column becomes grey fill or shifted content.
    assert_ne!(apply(&img, Op::TranslateX, 7.0, &mut rng), img);
}

#[test]
fn grounding_flip_swaps_text_and_mirrors_box() {
    let dir = scratch("grounding-flip");
    picture(60, 40, 1).save(dir.join("g.png")).unwrap();
    // The box covers the left third.
    let ann = write(
        &dir,
        "refs.json",
        r#"[{"image": "g.png", "text": "the left block", "bbox": [0, 0, 20, 40]}]"#,
    );
    let l = Loader::new(
        Dataset::grounding(&ann, BoxFormat::Xywh).unwrap(),
        &dir,
        tokenizer(),
        LoaderConfig {
            batch_size: 1,
            resolution: 32,
            augment: Some(AugmentConfig::finetune()),
            ..Default::default()
        },
        &Device::Cpu,
    )
    .unwrap();
    let (mut flipped, mut kept) = (0, 0);
    for i in 0..24 {
        let b = l.batch(i).unwrap();
        let t = b.targets.unwrap().to_vec2::<f32>().unwrap().remove(0);
        match b.texts[0].as_str() {
            "the right block" => {
                flipped += 1;
                assert!(t[0] > 0.5, "flipped box centre {t:?}");
            }
            "the left block" => {
                kept += 1;
                assert!(t[0] < 0.5, "box centre {t:?}");
            }
            other => panic!("unexpected text {other}"),
        }
        assert!((t[2] - 1.0 / 3.0).abs() < 1e-3, "width {t:?}");
    }
    assert!(flipped > 0 && kept > 0, "{flipped} flipped, {kept} kept");
}

#[test]
fn labelled_images_load_without_text() {
    let dir = scratch("labels");
    let names = images(&dir, 3);
    let ann = write(
        &dir,
        "labels.json",
        &format!(
            r#"[{{"image": "{}", "labels": ["red", "circle"]}},
                {{"image": "{}", "labels": "square"}},
                {{"image": "{}", "labels": []}}]"#,
            names[0], names[1], names[2]
        ),
    );
    let d = Dataset::labels(&ann).unwrap();
    assert_eq!(d.task, DataTask::Labels);
    assert_eq!(d.samples[0].labels, ["red", "circle"]);
    assert_eq!(d.samples[1].labels, ["square"]);
    assert!(d.samples[2].labels.is_empty());
    assert_eq!(d.label_names(), ["circle", "red", "square"]);
    let l = Loader::new(
        d,
        &dir,
        tokenizer(),
        LoaderConfig {
            batch_size: 3,
            seed: 1,
            resolution: 32,
            max_text_len: 16,
            augment: None,
            workers: 1,
            prompt: String::new(),
        },
        &Device::Cpu,
    )
    .unwrap();
    let b = l.batch(0).unwrap();
    assert_eq!(b.images.dims(), [3, 3, 32, 32]);
    assert_eq!(b.ids.dims(), [3, 0]);

    let bad = write(&dir, "bad.json", r#"[{"image": "a.png", "label": "red"}]"#);
    let e = Dataset::labels(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("labels"), "{e}");
    let bad = write(
        &dir,
        "blank.json",
        r#"[{"image": "a.png", "labels": ["red", " "]}]"#,
    );
    let e = Dataset::labels(&bad).unwrap_err().to_string();
    assert!(e.contains("blank.json") && e.contains("empty"), "{e}");
}
