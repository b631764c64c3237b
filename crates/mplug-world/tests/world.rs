//! The procedural world: determinism, file formats read by the project's own readers,
//! vocabulary coverage, boxes, held-out pairs, answers and clips.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use candle_core::Device;
use image::RgbImage;
use mplug::data::Dataset;
use mplug::eval::annotations::{
    read_answer_list, read_caption, read_grounding, read_retrieval, read_video_retrieval,
    read_videoqa, read_vqa, resolve_video, BoxFormat,
};
use mplug::input::{Tokenizer, VideoConfig, VideoPreprocessor, BERT_BASE_UNCASED_VOCAB};
use mplug::metrics::vqa::vqa_accuracy;
use mplug_world::{
    generate, generate_with_threads, is_heldout, render_scene, vocabulary, Background,
    ClipQuestionKind, Color, Object, Scene, Shape, Size, Summary, Tone, WorldConfig, HELDOUT_PAIRS,
    MAX_VOCAB,
};
use serde_json::Value;

const TRAIN: usize = 40;
const CLIPS: usize = 12;
const FRAMES: usize = 10;
/// Images of each of val, test and heldout (the minimum of 50).
const EVAL: usize = 50;
/// Test clips (the minimum of 40).
const TEST_CLIPS: usize = 40;
const SPLITS: [&str; 4] = ["train", "val", "test", "heldout"];

fn config(seed: u64) -> WorldConfig {
    WorldConfig {
        seed,
        train_images: TRAIN,
        image_size: 96,
        train_clips: CLIPS,
        frames: FRAMES,
        places: mplug_world::DEFAULT_PLACES,
    }
}

/// A fresh folder under the system's temporary folder; folders of earlier runs (more than an
/// hour old) are removed on the way.
fn temp_folder(tag: &str) -> PathBuf {
    let root = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if name.starts_with("mplug-world-test-") && old {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!("mplug-world-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The world most tests read, generated once per test process.
fn world() -> &'static (PathBuf, Summary) {
    static WORLD: OnceLock<(PathBuf, Summary)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = temp_folder("shared");
        let summary = generate(&dir, &config(7)).expect("generate the world");
        (dir, summary)
    })
}

fn root() -> &'static Path {
    &world().0
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn jsonl(name: &str) -> Vec<Value> {
    std::fs::read_to_string(root().join(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn split_images(split: &str) -> usize {
    if split == "train" {
        TRAIN
    } else {
        EVAL
    }
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn load_png(path: &Path) -> RgbImage {
    image::open(path).unwrap().into_rgb8()
}

#[test]
fn the_same_seed_gives_the_same_bytes_whatever_the_threads() {
    let (a, _) = world();
    let b = TempDir(temp_folder("one-thread"));
    generate_with_threads(&b.0, &config(7), 1).unwrap();
    let fa = files_under(a);
    let fb = files_under(&b.0);
    assert_eq!(fa, fb);
    assert!(fa.len() > 2 * TRAIN, "{} files", fa.len());
    for f in &fa {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.0.join(f)).unwrap(),
        );
        assert!(x == y, "{} differs between runs", f.display());
    }
}

#[test]
fn another_seed_gives_other_images() {
    let (a, _) = world();
    let c = TempDir(temp_folder("other-seed"));
    let mut cfg = config(8);
    cfg.train_clips = 0;
    let summary = generate(&c.0, &cfg).unwrap();
    assert_eq!((summary.train_clips, summary.test_clips), (0, 0));
    assert!(!c.0.join("videoqa_train.jsonl").exists());
    let mut same = 0;
    for i in 0..TRAIN {
        let name = format!("images/train/train_{i}.png");
        if std::fs::read(a.join(&name)).unwrap() == std::fs::read(c.0.join(&name)).unwrap() {
            same += 1;
        }
    }
    assert_eq!(same, 0, "{same} train images are identical across seeds");
    assert_ne!(
        std::fs::read(a.join("caption_train.json")).unwrap(),
        std::fs::read(c.0.join("caption_train.json")).unwrap()
    );
}

#[test]
fn summary_and_world_file_agree() {
    let (dir, summary) = world();
    let counts: Vec<(&str, usize)> = summary
        .splits
        .iter()
        .map(|s| (s.name.as_str(), s.images))
        .collect();
    assert_eq!(
        counts,
        [
            ("train", TRAIN),
            ("val", EVAL),
            ("test", EVAL),
            ("heldout", EVAL)
        ]
    );
    assert_eq!(
        (summary.train_clips, summary.test_clips),
        (CLIPS, TEST_CLIPS)
    );
    for s in &summary.splits {
        assert_eq!(s.captions, 5 * s.images);
        assert!(
            s.questions >= 4 * s.images && s.questions <= 6 * s.images,
            "{s:?}"
        );
        assert!(
            s.expressions >= s.images && s.expressions <= 3 * s.images,
            "{s:?}"
        );
    }
    let w = json("world.json");
    assert_eq!(w["config"]["seed"], 7);
    assert_eq!(
        w["heldout_pairs"].as_array().unwrap().len(),
        HELDOUT_PAIRS.len()
    );
    let files: Vec<&str> = w["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(files, summary.files);
    for f in &files {
        assert!(dir.join(f).is_file(), "{f} listed but missing");
    }
    for f in [
        "vocab.txt",
        "pretrain.json",
        "answer_list.json",
        "videoqa_answers.json",
        "videocaption_test.json",
        "grounding_heldout.json",
    ] {
        assert!(files.contains(&f), "{f} not listed");
    }
}

#[test]
fn every_file_reads_with_the_project_readers() {
    let r = root();
    let n_train = TRAIN * 5;
    assert_eq!(
        Dataset::pretrain(r.join("pretrain.json")).unwrap().len(),
        n_train
    );
    assert_eq!(
        Dataset::caption(r.join("caption_train.json"), None)
            .unwrap()
            .len(),
        n_train
    );
    let retrieval = Dataset::retrieval(r.join("retrieval_train.json")).unwrap();
    assert_eq!(retrieval.len(), n_train);
    assert_eq!(
        retrieval.samples.last().unwrap().image_id as usize,
        TRAIN - 1
    );
    assert!(!Dataset::vqa(r.join("vqa_train.json")).unwrap().is_empty());
    let grounding = Dataset::grounding(r.join("grounding_train.json"), BoxFormat::Xywh).unwrap();
    assert!(grounding.len() >= TRAIN);
    for split in ["val", "test", "heldout"] {
        let caps = read_caption(r.join(format!("caption_{split}.json")), None).unwrap();
        assert_eq!(caps.len(), EVAL);
        assert!(caps.iter().all(|c| c.references.len() == 5));
        let ret = read_retrieval(r.join(format!("retrieval_{split}.json"))).unwrap();
        assert_eq!(ret.len(), EVAL);
        assert!(ret.iter().all(|s| s.captions.len() == 5));
    }
    let mut ids = HashSet::new();
    for split in SPLITS {
        let vqa = read_vqa(r.join(format!("vqa_{split}.json"))).unwrap();
        let images: HashSet<&str> = vqa.iter().map(|q| q.image.as_str()).collect();
        assert_eq!(images.len(), split_images(split), "{split}");
        for q in &vqa {
            assert!(
                ids.insert(q.question_id),
                "question id {} repeats",
                q.question_id
            );
            assert_eq!(q.answers.len(), 10);
            assert!(q.question.ends_with('?'));
            assert!(["yes/no", "number", "other"].contains(&q.answer_type.as_deref().unwrap()));
            assert!(q.question_type.is_some());
            assert!(r.join(&q.image).is_file());
        }
        let g = read_grounding(r.join(format!("grounding_{split}.json")), BoxFormat::Xywh).unwrap();
        assert!(g.len() >= split_images(split));
        for s in &g {
            assert!(r.join(&s.image).is_file());
        }
    }
    let answers = read_answer_list(r.join("answer_list.json")).unwrap();
    assert!(answers.len() >= 20, "{answers:?}");

    let qa_train = read_videoqa(r.join("videoqa_train.jsonl")).unwrap();
    let qa_test = read_videoqa(r.join("videoqa_test.jsonl")).unwrap();
    let videos: HashSet<&str> = qa_test.iter().map(|q| q.video.as_str()).collect();
    assert_eq!(videos.len(), TEST_CLIPS);
    assert!(qa_train.len() >= 2 * CLIPS && qa_train.len() <= 3 * CLIPS);
    for q in qa_train.iter().chain(&qa_test) {
        assert!(resolve_video(r, &q.video).is_some_and(|p| p.is_file()));
        assert!(q.answer.is_some());
    }
    let video_answers = read_answer_list(r.join("videoqa_answers.json")).unwrap();
    for q in qa_train.iter().chain(&qa_test) {
        assert!(video_answers.contains(q.answer.as_ref().unwrap()));
    }
    assert_eq!(
        read_video_retrieval(r.join("videoretrieval_train.jsonl"))
            .unwrap()
            .len(),
        CLIPS
    );
    let ret = read_video_retrieval(r.join("videoretrieval_test.jsonl")).unwrap();
    assert_eq!(ret.len(), TEST_CLIPS);
    assert!(ret.iter().all(|s| resolve_video(r, &s.video).is_some()));
    let vc = read_caption(r.join("videocaption_test.json"), None).unwrap();
    assert_eq!(vc.len(), TEST_CLIPS);
    assert!(vc
        .iter()
        .all(|c| c.references.len() == 1 && c.image.ends_with(".gif")));
}

/// Each clip question says what it needs to see: its answer fits its type (directions and
/// grow/shrink need the frames' order; counts any one frame), and each clip's first question,
/// about its event, needs more than one frame.
#[test]
fn clip_questions_carry_what_they_need_to_see() {
    let r = root();
    let names: Vec<&str> = ClipQuestionKind::ALL.iter().map(|k| k.name()).collect();
    let mut seen = HashSet::new();
    let mut clips_seen = HashSet::new();
    for split in ["train", "test"] {
        for q in read_videoqa(r.join(format!("videoqa_{split}.jsonl"))).unwrap() {
            let t = q
                .question_type
                .as_deref()
                .expect("every clip question has a type");
            assert!(names.contains(&t), "unknown question type {t}");
            seen.insert(t.to_string());
            let a = q.answer.as_deref().unwrap();
            if ["left", "right", "up", "down", "grow", "shrink"].contains(&a) {
                assert_eq!(t, "order", "{}", q.question);
            }
            if a.parse::<u32>().is_ok() {
                assert_eq!(t, "static", "{}", q.question);
            }
            if clips_seen.insert(q.video.clone()) {
                assert_ne!(t, "static", "first question of {}: {}", q.video, q.question);
            }
        }
    }
    assert_eq!(seen.len(), names.len(), "types seen: {seen:?}");
}

/// Every text the world writes.
fn all_texts() -> Vec<String> {
    let mut texts = Vec::new();
    for e in json("pretrain.json").as_array().unwrap() {
        texts.push(e["caption"].as_str().unwrap().to_string());
    }
    for split in ["val", "test", "heldout"] {
        for e in json(&format!("caption_{split}.json")).as_array().unwrap() {
            for c in e["caption"].as_array().unwrap() {
                texts.push(c.as_str().unwrap().to_string());
            }
        }
    }
    for split in SPLITS {
        for e in json(&format!("vqa_{split}.json")).as_array().unwrap() {
            texts.push(e["question"].as_str().unwrap().to_string());
            for a in e["answer"].as_array().unwrap() {
                texts.push(a.as_str().unwrap().to_string());
            }
        }
        for e in json(&format!("grounding_{split}.json")).as_array().unwrap() {
            texts.push(e["text"].as_str().unwrap().to_string());
        }
    }
    for split in ["train", "test"] {
        for e in jsonl(&format!("videoqa_{split}.jsonl")) {
            texts.push(e["question"].as_str().unwrap().to_string());
            texts.push(e["answer"].as_str().unwrap().to_string());
        }
        for e in jsonl(&format!("videoretrieval_{split}.jsonl")) {
            texts.push(e["caption"].as_str().unwrap().to_string());
        }
    }
    texts
}

#[test]
fn every_text_tokenizes_with_the_world_vocabulary() {
    let path = root().join("vocab.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, vocabulary());
    assert!(lines.len() < MAX_VOCAB, "{} tokens", lines.len());
    let bert: Vec<&str> = BERT_BASE_UNCASED_VOCAB.lines().take(104).collect();
    assert_eq!(&lines[..104], &bert[..]);
    assert_eq!(
        (lines[0], lines[100], lines[103]),
        ("[PAD]", "[UNK]", "[MASK]")
    );
    let unique: HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(unique.len(), lines.len(), "repeated vocabulary lines");
    let tok = Tokenizer::from_vocab_bytes(text.as_bytes(), &path).unwrap();
    assert_eq!(tok.token_to_id("[UNK]"), Some(100));
    let texts = all_texts();
    assert!(texts.len() > 1000);
    for t in &texts {
        assert_eq!(t, &t.to_lowercase());
        assert!(!t.contains(['.', ',', '!', '\'']), "punctuation in {t:?}");
        let ids = tok.encode(t, None).unwrap();
        assert!(!ids.contains(&100), "{t:?} has unknown words: {ids:?}");
        // one word, one token: the vocabulary holds every word whole
        let words = t.split(' ').count() + t.matches('?').count();
        assert_eq!(ids.len(), words + 2, "{t:?}");
    }
    // Captions carry no punctuation at all.
    for e in json("pretrain.json").as_array().unwrap() {
        assert!(!e["caption"].as_str().unwrap().contains('?'));
    }
}

/// Whether a pixel looks like an object rather than the grey background.
fn object_like(p: [u8; 3], tone_dark: bool) -> bool {
    let [r, g, b] = p.map(i32::from);
    let saturation = (r - g).abs() + (g - b).abs() + (r - b).abs();
    saturation > 60 || (tone_dark && r.min(g).min(b) > 130)
}

#[test]
fn boxes_lie_inside_the_image_and_cover_their_objects() {
    let scenes = json("scenes.json");
    let mut single = 0;
    for s in scenes.as_array().unwrap() {
        let objects = s["objects"].as_array().unwrap();
        for o in objects {
            let b: Vec<u64> = o["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert!(b[2] > 2 && b[3] > 2, "{s}");
            assert!(b[0] + b[2] <= 96 && b[1] + b[3] <= 96, "{s}");
        }
        if objects.len() != 1 {
            continue;
        }
        single += 1;
        let img = load_png(&root().join(s["image"].as_str().unwrap()));
        let dark = s["background"]["tone"] == "dark";
        let b: Vec<u32> = objects[0]["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let (mut inside, mut inside_obj, mut outside, mut outside_obj) = (0, 0, 0, 0);
        for (x, y, p) in img.enumerate_pixels() {
            let like = object_like(p.0, dark);
            let in_box = x >= b[0] && x < b[0] + b[2] && y >= b[1] && y < b[1] + b[3];
            let near = x + 1 >= b[0] && x <= b[0] + b[2] && y + 1 >= b[1] && y <= b[1] + b[3];
            if in_box {
                inside += 1;
                inside_obj += like as usize;
            } else if !near {
                outside += 1;
                outside_obj += like as usize;
            }
        }
        let share_in = inside_obj as f64 / inside as f64;
        let share_out = outside_obj as f64 / outside as f64;
        assert!(
            share_in > 0.3,
            "{}: {share_in} of the box looks like the object",
            s["image"]
        );
        assert!(
            share_out < 0.01,
            "{}: {share_out} outside the box looks like it",
            s["image"]
        );
    }
    assert!(single >= 10, "only {single} single-object images");
}

#[test]
fn the_rasterizer_puts_a_known_object_where_expected() {
    let scene = |o: Object| Scene {
        objects: vec![o],
        background: Background::plain(Tone::Light, 200),
        noise: 0.0,
        noise_seed: 0,
    };
    // A large red circle in the middle: radius 0.18 * 96 = 17.28 px around (48, 48).
    let circle = Object::new(Shape::Circle, Color::Red, Size::Large, 0.5, 0.5);
    let r = render_scene(&scene(circle), 96);
    let [x, y, w, h] = r.boxes[0];
    assert!(
        (30..=32).contains(&x) && (30..=32).contains(&y),
        "{:?}",
        r.boxes
    );
    assert!((33..=36).contains(&w) && w == h, "{:?}", r.boxes);
    assert_eq!(r.image.get_pixel(48, 48).0, Color::Red.rgb());
    assert_eq!(r.image.get_pixel(2, 2).0, [200, 200, 200]);
    assert_eq!(r.image.get_pixel(x + w + 1, 48).0, [200, 200, 200]);
    // A small unrotated square at (0.25, 0.75) of a 200 px image: half side 0.82 * 0.1 * 200.
    let square = Object::new(Shape::Square, Color::Blue, Size::Small, 0.25, 0.75);
    let r = render_scene(&scene(square), 200);
    assert_eq!(r.boxes[0], [34, 134, 32, 32]);
    assert_eq!(r.image.get_pixel(50, 150).0, Color::Blue.rgb());
    // In front, a second object hides part of the first, whose box shrinks to what shows.
    let back = Object::new(Shape::Square, Color::Green, Size::Large, 0.5, 0.5);
    let front = Object::new(Shape::Square, Color::Orange, Size::Large, 0.75, 0.5);
    let mut two = scene(back);
    two.objects.push(front);
    let r = render_scene(&two, 100);
    let alone = render_scene(&scene(back), 100).boxes[0];
    assert_eq!(r.boxes[0][0], alone[0]);
    assert!(r.boxes[0][2] < alone[2], "{:?} vs {alone:?}", r.boxes);
    assert_eq!(r.image.get_pixel(62, 50).0, Color::Orange.rgb());
}

#[test]
fn heldout_pairs_occur_in_heldout_images_only() {
    let scenes = json("scenes.json");
    let mut per_split: BTreeMap<String, usize> = BTreeMap::new();
    for s in scenes.as_array().unwrap() {
        let split = s["split"].as_str().unwrap();
        *per_split.entry(split.to_string()).or_default() += 1;
        let pairs: Vec<(Color, Shape)> = s["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let c = Color::ALL
                    .into_iter()
                    .find(|c| o["color"] == c.name())
                    .unwrap();
                let sh = Shape::ALL
                    .into_iter()
                    .find(|x| o["shape"] == x.name())
                    .unwrap();
                (c, sh)
            })
            .collect();
        let held = pairs.iter().filter(|(c, s)| is_heldout(*c, *s)).count();
        if split == "heldout" {
            assert!(held >= 1, "{s}");
        } else {
            assert_eq!(held, 0, "{s}");
        }
        let unique: HashSet<&(Color, Shape)> = pairs.iter().collect();
        assert_eq!(
            unique.len(),
            pairs.len(),
            "two objects share colour and shape: {s}"
        );
    }
    assert_eq!(per_split["train"], TRAIN);
    assert_eq!(per_split["heldout"], EVAL);
    // The texts of other splits never name a held-out pair.
    let names: Vec<String> = HELDOUT_PAIRS
        .iter()
        .map(|(c, s)| format!("{} {}", c.name(), s.name()))
        .collect();
    for split in ["train", "val", "test"] {
        for file in [format!("caption_{split}.json"), format!("vqa_{split}.json")] {
            let text = std::fs::read_to_string(root().join(&file)).unwrap();
            for n in &names {
                assert!(!text.contains(n.as_str()), "{file} names {n}");
            }
        }
    }
    // Held-out captions name them.
    let caps = json("caption_heldout.json");
    for e in caps.as_array().unwrap() {
        let joined: Vec<&str> = e["caption"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let joined = joined.join(" | ");
        assert!(
            names.iter().any(|n| joined.contains(n.as_str())),
            "{joined}"
        );
    }
}

#[test]
fn answers_agree_with_the_scenes() {
    let answers: HashSet<String> = read_answer_list(root().join("answer_list.json"))
        .unwrap()
        .into_iter()
        .collect();
    let scenes = json("scenes.json");
    let by_image: BTreeMap<&str, &Vec<Value>> = scenes
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["image"].as_str().unwrap(),
                s["objects"].as_array().unwrap(),
            )
        })
        .collect();
    let mut counted = 0;
    for split in SPLITS {
        let vqa = read_vqa(root().join(format!("vqa_{split}.json"))).unwrap();
        for q in &vqa {
            let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
            for a in &q.answers {
                *tally.entry(a).or_default() += 1;
            }
            let (majority, votes) = tally.iter().max_by_key(|(_, n)| **n).unwrap();
            assert!(*votes >= 6, "{q:?}");
            // The official evaluation normalizes the prediction ("two" -> "2"): the majority
            // answer, predicted, must score in full.
            assert_eq!(
                vqa_accuracy(majority, &q.answers).unwrap(),
                1.0,
                "{majority:?} predicted for {q:?}"
            );
            assert!(
                answers.contains(*majority),
                "{majority} not in answer_list.json"
            );
            let objects = by_image[q.image.as_str()];
            let Some(rest) = q.question.strip_prefix("how many ") else {
                continue;
            };
            let noun = rest
                .trim_end_matches('?')
                .trim_end_matches(" are there")
                .trim_end_matches(" are in the image");
            let words: Vec<&str> = noun.split(' ').collect();
            let expected = match words.as_slice() {
                ["shapes" | "objects"] => objects.len(),
                [color, "shapes" | "objects"] => {
                    objects.iter().filter(|o| o["color"] == *color).count()
                }
                [plural] => objects
                    .iter()
                    .filter(|o| {
                        Shape::ALL
                            .iter()
                            .any(|s| s.plural() == *plural && o["shape"] == s.name())
                    })
                    .count(),
                _ => panic!("unexpected count question {:?}", q.question),
            };
            assert_eq!(*majority, expected.to_string(), "{q:?}");
            assert_eq!(q.answer_type.as_deref(), Some("number"));
            counted += 1;
        }
    }
    assert!(counted > 30, "only {counted} count questions");
}

#[test]
fn clips_decode_with_the_project_reader() {
    let pre = VideoPreprocessor::new(VideoConfig::new(FRAMES, 32)).unwrap();
    let dir = root().join("clips");
    let mut n = 0;
    for split in ["train", "test"] {
        for e in std::fs::read_dir(dir.join(split)).unwrap().flatten() {
            let clip = pre.load(e.path(), &Device::Cpu).unwrap();
            assert_eq!(clip.total_frames, FRAMES, "{}", e.path().display());
            assert_eq!(clip.frames.dims(), [FRAMES, 3, 32, 32]);
            n += 1;
        }
    }
    assert_eq!(n, CLIPS + TEST_CLIPS);
    // Frames differ over a clip (something happens), and the GIF loops with 100 ms frames.
    let bytes = std::fs::read(dir.join("test/test_0.gif")).unwrap();
    assert!(
        bytes.windows(11).any(|w| w == b"NETSCAPE2.0"),
        "no loop extension"
    );
    use image::AnimationDecoder;
    let dec = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes)).unwrap();
    let frames = dec.into_frames().collect_frames().unwrap();
    assert_eq!(frames.len(), FRAMES);
    assert_eq!(frames[0].delay().numer_denom_ms(), (100, 1));
    assert_ne!(frames[0].buffer(), frames[FRAMES - 1].buffer());
}

#[test]
fn bad_settings_and_outputs_are_refused() {
    let dir = TempDir(temp_folder("bad"));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = generate(&file, &config(1)).unwrap_err().to_string();
    assert!(e.contains("a-file") && e.contains("not a folder"), "{e}");
    let e = generate(&file.join("below"), &config(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("below"), "{e}");
    let mut cfg = config(1);
    cfg.train_images = 0;
    let e = generate(&dir.0.join("out"), &cfg).unwrap_err().to_string();
    assert!(e.contains("at least one train image"), "{e}");
    assert!(
        !dir.0.join("out").exists(),
        "nothing is written for a bad setting"
    );
    let mut cfg = config(1);
    cfg.frames = 7;
    assert!(generate(&dir.0.join("out"), &cfg)
        .unwrap_err()
        .to_string()
        .contains("frames"));
    let mut cfg = config(1);
    cfg.image_size = 8;
    assert!(generate(&dir.0.join("out"), &cfg)
        .unwrap_err()
        .to_string()
        .contains("image size"));
}

#[test]
fn split_sizes_follow_the_train_size() {
    let cfg = WorldConfig::new(0, 2000);
    assert_eq!(
        (cfg.eval_images(), cfg.train_clips, cfg.test_clips()),
        (200, 500, 100)
    );
    assert_eq!((cfg.image_size, cfg.frames), (96, 8));
    let small = WorldConfig::new(0, 40);
    assert_eq!(
        (small.eval_images(), small.train_clips, small.test_clips()),
        (50, 10, 40)
    );
}

#[test]
fn labels_name_each_object_shape_colour_and_pair() {
    let r = root();
    let scenes = json("scenes.json");
    let scenes = scenes.as_array().unwrap();
    for split in SPLITS {
        let data = Dataset::labels(r.join(format!("labels_{split}.json"))).unwrap();
        assert_eq!(data.len(), split_images(split), "{split}");
        let of_split: Vec<&Value> = scenes.iter().filter(|s| s["split"] == split).collect();
        for (sample, scene) in data.samples.iter().zip(&of_split) {
            assert_eq!(sample.image, scene["image"].as_str().unwrap());
            let mut want: Vec<String> = Vec::new();
            for o in scene["objects"].as_array().unwrap() {
                let (shape, colour) = (o["shape"].as_str().unwrap(), o["color"].as_str().unwrap());
                want.extend([
                    shape.to_string(),
                    colour.to_string(),
                    format!("{colour} {shape}"),
                ]);
            }
            want.sort();
            want.dedup();
            assert_eq!(sample.labels, want, "{}", sample.image);
        }
    }
    let train = Dataset::labels(r.join("labels_train.json")).unwrap();
    let names = train.label_names();
    assert!(names.contains(&"circle".to_string()) && names.contains(&"red".to_string()));
    // Held-out colour-shape pairs never label a training image.
    for (colour, shape) in HELDOUT_PAIRS {
        let pair = format!("{} {}", colour.name(), shape.name());
        assert!(!names.contains(&pair), "{pair} labels a training image");
    }
}
