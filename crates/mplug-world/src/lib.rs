//! A procedural visual world: seeded synthetic images and clips of coloured shapes, annotated in
//! the file formats of the benchmarks mPLUG trains and evaluates on (COCO captions, VQA v2,
//! image-text retrieval, RefCOCO grounding, MSRVTT video QA, retrieval and captioning), and
//! image labels (`labels_{split}.json`, [`scene_labels`]) that pre-train the visual tower alone.
//!
//! - [`scene`]: shapes, colours, sizes, textures, backgrounds and the sampling of unambiguous
//!   scenes; [`HELDOUT_PAIRS`] never occur outside the held-out split.
//! - [`render`]: the anti-aliased rasterizer and exact boxes ([`render_scene`]).
//! - [`language`]: captions, questions with ten answers, referring expressions.
//! - [`clips`]: animated GIF clips with one event each.
//! - [`vocab`]: the vocabulary every text tokenizes with ([`vocabulary`]).
//!
//! [`generate`] writes it all under one folder. Every random choice comes from a generator
//! seeded by the world's seed and the item's split and index, so the files are byte-identical
//! for one seed and size whatever the number of threads.

pub mod clips;
pub mod language;
pub mod render;
pub mod scene;
pub mod vocab;

pub use clips::{Clip, ClipQuestionKind, Direction, Event, FRAME_DELAY_MS};
pub use render::{render_scene, Rendered};
pub use scene::{
    is_heldout, snap_to_lattice, Background, BackgroundKind, Color, Object, Scene, Shape, Size,
    Texture, Tone, DEFAULT_PLACES, HELDOUT_PAIRS, LARGE_RADIUS, MAX_OVERLAP, MAX_TOTAL_OVERLAP,
    SMALL_RADIUS, TINY_PATCH_PLACES,
};
pub use vocab::{vocabulary, MAX_VOCAB, WORDS};

use std::collections::BTreeSet;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use language::{annotate, Annotations};
use mplug::{Error, Result};

/// Smallest accepted image side, in pixels.
pub const MIN_IMAGE_SIZE: u32 = 32;
/// Largest accepted image side, in pixels.
pub const MAX_IMAGE_SIZE: u32 = 1024;
/// Fewest frames per clip.
pub const MIN_FRAMES: usize = 8;
/// Most frames per clip.
pub const MAX_FRAMES: usize = 16;
/// Fewest images of the val, test and held-out splits (and test clips).
pub const MIN_EVAL_IMAGES: usize = 50;
/// Fewest test clips.
pub const MIN_TEST_CLIPS: usize = 40;
/// Most places per image side of the objects' lattice.
pub const MAX_PLACES: u32 = 64;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorldConfig {
    /// Seed of every random choice: one seed and size give byte-identical files.
    pub seed: u64,
    /// Number of train images (at least 1); val, test and held-out splits have
    /// `max(train_images / 10, 50)` images each.
    pub train_images: usize,
    /// Side of the square images and clips, in pixels (32 to 1024; default 96).
    pub image_size: u32,
    /// Number of train clips (default `train_images / 4`); the test split has
    /// `max(train_clips / 5, 40)`. Zero writes no clips and no video files.
    pub train_clips: usize,
    /// Frames per clip (8 to 16; default 8), shown 100 ms each.
    pub frames: usize,
    /// Objects' centres stand on the cell centres of a `places` x `places` lattice
    /// ([`snap_to_lattice`]; [`TINY_PATCH_PLACES`], the default [`DEFAULT_PLACES`], lines
    /// them up with the tiny preset's patches); 0 puts them anywhere. A lattice moves each
    /// object drawn onto it and draws nothing itself: single-object scenes stay the same but
    /// for their place; in a scene of several, a move that makes objects overlap too much
    /// redraws the object, so such scenes can differ.
    pub places: u32,
}

impl WorldConfig {
    /// `train_images` train images from `seed`, with the default image size (96), clips
    /// (`train_images / 4`), frames (8) and lattice ([`DEFAULT_PLACES`]).
    pub fn new(seed: u64, train_images: usize) -> Self {
        Self {
            seed,
            train_images,
            image_size: 96,
            train_clips: train_images / 4,
            frames: 8,
            places: DEFAULT_PLACES,
        }
    }

    /// Images in each of the val, test and held-out splits.
    pub fn eval_images(&self) -> usize {
        (self.train_images / 10).max(MIN_EVAL_IMAGES)
    }

    /// Clips in the test split (0 when there are no train clips).
    pub fn test_clips(&self) -> usize {
        if self.train_clips == 0 {
            0
        } else {
            (self.train_clips / 5).max(MIN_TEST_CLIPS)
        }
    }

    /// Checks the settings, naming the one out of range.
    pub fn validate(&self) -> Result<()> {
        if self.train_images == 0 {
            return Err(Error::Config(
                "the world needs at least one train image (size 0 given)".into(),
            ));
        }
        if !(MIN_IMAGE_SIZE..=MAX_IMAGE_SIZE).contains(&self.image_size) {
            return Err(Error::Config(format!(
                "image size {} is out of range ({MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px)",
                self.image_size
            )));
        }
        if !(MIN_FRAMES..=MAX_FRAMES).contains(&self.frames) {
            return Err(Error::Config(format!(
                "{} frames per clip is out of range ({MIN_FRAMES} to {MAX_FRAMES})",
                self.frames
            )));
        }
        if self.places > MAX_PLACES {
            return Err(Error::Config(format!(
                "{} places per side is out of range (0 to {MAX_PLACES})",
                self.places
            )));
        }
        Ok(())
    }
}

/// What one image split holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitSummary {
    /// `train`, `val`, `test` or `heldout`.
    pub name: String,
    /// Images.
    pub images: usize,
    /// Captions (five per image).
    pub captions: usize,
    /// VQA questions.
    pub questions: usize,
    /// Referring expressions.
    pub expressions: usize,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The image splits, in the order train, val, test, heldout.
    pub splits: Vec<SplitSummary>,
    /// Train clips.
    pub train_clips: usize,
    /// Test clips.
    pub test_clips: usize,
    /// Video questions over both clip splits.
    pub video_questions: usize,
    /// Lines of `vocab.txt`.
    pub vocab_size: usize,
    /// Files written (annotation files and `world.json`; images and clips not listed),
    /// relative to the output folder.
    pub files: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .splits
            .iter()
            .map(|s| {
                format!(
                    "{} {} images ({} captions, {} questions, {} expressions)",
                    s.name, s.images, s.captions, s.questions, s.expressions
                )
            })
            .collect();
        write!(
            f,
            "{}; clips: train {}, test {} ({} questions); vocabulary {} tokens",
            parts.join(", "),
            self.train_clips,
            self.test_clips,
            self.video_questions,
            self.vocab_size
        )
    }
}

/// One image split: its name, whether it holds the held-out pairs, and its seed stream.
struct SplitSpec {
    name: &'static str,
    images: usize,
    heldout: bool,
    stream: u64,
}

/// One generated image with its annotations.
struct ImageItem {
    /// Path relative to the output folder.
    image: String,
    scene: Scene,
    boxes: Vec<[u32; 4]>,
    text: Annotations,
}

/// One generated clip with its text.
struct ClipItem {
    video: String,
    clip: Clip,
    text: clips::ClipText,
}

/// SplitMix64's finalizer: spreads seeds so that neighbouring items get unrelated streams.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random generator of item `index` of seed stream `stream`.
fn item_rng(seed: u64, stream: u64, index: usize) -> StdRng {
    StdRng::seed_from_u64(mix(mix(mix(seed) ^ stream) ^ index as u64))
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| io_error(path, e))
}

fn create_dir(path: &Path) -> Result<()> {
    if path.exists() && !path.is_dir() {
        return Err(io_error(
            path,
            std::io::Error::new(ErrorKind::AlreadyExists, "exists and is not a folder"),
        ));
    }
    std::fs::create_dir_all(path).map_err(|e| io_error(path, e))
}

/// Runs `f` on `0..n` over `threads` threads; results in index order, the first error (by
/// index) if any fails.
fn par_map<T: Send>(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Result<T>>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                let failed = r.is_err();
                if let Ok(mut v) = slots.lock() {
                    v[i] = Some(r);
                }
                if failed {
                    // Later items are not needed once one fails.
                    next.store(n, Ordering::Relaxed);
                }
            });
        }
    });
    let slots = slots
        .into_inner()
        .map_err(|_| Error::Unsupported("a world worker thread panicked".into()))?;
    let mut out = Vec::with_capacity(n);
    for (i, slot) in slots.into_iter().enumerate() {
        match slot {
            Some(r) => out.push(r?),
            None => {
                return Err(Error::Unsupported(format!(
                    "world item {i} was not generated"
                )))
            }
        }
    }
    Ok(out)
}

fn png_bytes(image: &image::RgbImage, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| io_error(path, std::io::Error::other(e)))?;
    Ok(bytes)
}

fn image_split(
    out: &Path,
    cfg: &WorldConfig,
    spec: &SplitSpec,
    threads: usize,
) -> Result<Vec<ImageItem>> {
    let dir = out.join("images").join(spec.name);
    create_dir(&dir)?;
    par_map(spec.images, threads, |i| {
        let mut rng = item_rng(cfg.seed, spec.stream, i);
        let (scene, rasters, focus) =
            scene::sample_scene(&mut rng, cfg.image_size, spec.heldout, cfg.places);
        let rendered = render::compose(&scene, cfg.image_size, &rasters);
        let name = format!("{}_{i}.png", spec.name);
        let path = dir.join(&name);
        write_file(&path, &png_bytes(&rendered.image, &path)?)?;
        let text = annotate(&mut rng, &scene, focus, spec.heldout);
        Ok(ImageItem {
            image: format!("images/{}/{name}", spec.name),
            scene,
            boxes: rendered.boxes,
            text,
        })
    })
}

fn clip_split(
    out: &Path,
    cfg: &WorldConfig,
    split: &str,
    count: usize,
    stream: u64,
    threads: usize,
) -> Result<Vec<ClipItem>> {
    let dir = out.join("clips").join(split);
    create_dir(&dir)?;
    par_map(count, threads, |i| {
        let mut rng = item_rng(cfg.seed, stream, i);
        let clip = clips::sample_clip(&mut rng, cfg.frames, cfg.places);
        let text = clips::describe(&mut rng, &clip);
        let name = format!("{split}_{i}.gif");
        let path = dir.join(&name);
        let bytes = clips::encode_gif(&clip.render(cfg.image_size))
            .map_err(|e| io_error(&path, std::io::Error::other(e)))?;
        write_file(&path, &bytes)?;
        Ok(ClipItem {
            video: format!("clips/{split}/{name}"),
            clip,
            text,
        })
    })
}

// Entries of the annotation files, fields in the order the files show them.

#[derive(Serialize)]
struct PretrainEntry<'a> {
    image: &'a str,
    caption: &'a str,
}

#[derive(Serialize)]
struct CaptionPair<'a> {
    image: &'a str,
    caption: &'a str,
    image_id: usize,
}

#[derive(Serialize)]
struct CaptionSet<'a> {
    image: &'a str,
    caption: &'a [String],
    image_id: usize,
}

#[derive(Serialize)]
struct RetrievalSet<'a> {
    image: &'a str,
    caption: &'a [String],
}

#[derive(Serialize)]
struct VqaEntry<'a> {
    question_id: u64,
    image: &'a str,
    question: &'a str,
    answer: &'a [String],
    question_type: &'a str,
    answer_type: &'a str,
}

#[derive(Serialize)]
struct GroundingEntry<'a> {
    id: u64,
    image: &'a str,
    text: &'a str,
    bbox: [u32; 4],
}

#[derive(Serialize)]
struct LabelsEntry<'a> {
    image: &'a str,
    labels: Vec<String>,
}

#[derive(Serialize)]
struct VideoQaEntry<'a> {
    question_id: u64,
    video_id: &'a str,
    question: &'a str,
    answer: &'a str,
    question_type: &'a str,
}

#[derive(Serialize)]
struct VideoRetrievalEntry<'a> {
    clip_name: &'a str,
    caption: &'a str,
}

#[derive(Serialize)]
struct SceneObjectEntry {
    shape: Shape,
    color: Color,
    size: Size,
    texture: Texture,
    x: f32,
    y: f32,
    radius: f32,
    rotation: f32,
    bbox: [u32; 4],
}

#[derive(Serialize)]
struct SceneEntry<'a> {
    split: &'a str,
    image: &'a str,
    background: &'a Background,
    objects: Vec<SceneObjectEntry>,
}

#[derive(Serialize)]
struct ClipEntry<'a> {
    split: &'a str,
    video: &'a str,
    caption: &'a str,
    #[serde(flatten)]
    clip: &'a Clip,
}

#[derive(Serialize)]
struct WorldFile<'a> {
    generator: &'static str,
    config: &'a WorldConfig,
    splits: &'a [SplitSummary],
    train_clips: usize,
    test_clips: usize,
    video_questions: usize,
    frame_delay_ms: u32,
    heldout_pairs: Vec<String>,
    shapes: Vec<&'static str>,
    colors: Vec<&'static str>,
    vocab_size: usize,
    files: &'a [String],
}

/// The labels of a scene in `labels_{split}.json`: each object's shape, its colour and the two
/// together ("red circle", which ties a colour to its shape), sorted, each once.
pub fn scene_labels(objects: &[Object]) -> Vec<String> {
    let labels: BTreeSet<String> = objects
        .iter()
        .flat_map(|o| {
            [
                o.shape.name().to_string(),
                o.color.name().to_string(),
                format!("{} {}", o.color.name(), o.shape.name()),
            ]
        })
        .collect();
    labels.into_iter().collect()
}

/// Collects the annotation files as they are written.
struct Writer<'a> {
    out: &'a Path,
    files: Vec<String>,
}

impl Writer<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    fn text(&mut self, name: &str, text: &str) -> Result<()> {
        write_file(&self.path(name), text.as_bytes())?;
        self.files.push(name.to_string());
        Ok(())
    }

    /// A JSON array, one entry per line.
    fn array<T: Serialize>(&mut self, name: &str, items: &[T]) -> Result<()> {
        let path = self.path(name);
        let mut text = String::from("[\n");
        for (i, item) in items.iter().enumerate() {
            let line = serde_json::to_string(item)
                .map_err(|e| io_error(&path, std::io::Error::other(e)))?;
            text.push_str(&line);
            text.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
        }
        text.push_str("]\n");
        self.text(name, &text)
    }

    /// JSON Lines.
    fn lines<T: Serialize>(&mut self, name: &str, items: &[T]) -> Result<()> {
        let path = self.path(name);
        let mut text = String::new();
        for item in items {
            let line = serde_json::to_string(item)
                .map_err(|e| io_error(&path, std::io::Error::other(e)))?;
            text.push_str(&line);
            text.push('\n');
        }
        self.text(name, &text)
    }
}

/// Fails when a text holds a word outside the vocabulary or stray spaces (a generator bug).
fn check_text(text: &str, known: &BTreeSet<&str>) -> Result<()> {
    if text.is_empty() || text.starts_with(' ') || text.ends_with(' ') || text.contains("  ") {
        return Err(Error::Unsupported(format!(
            "world generator: malformed text {text:?}"
        )));
    }
    let unknown = vocab::unknown_words(text, known);
    if !unknown.is_empty() {
        return Err(Error::Unsupported(format!(
            "world generator: {unknown:?} in {text:?} are not in the world vocabulary"
        )));
    }
    Ok(())
}

/// The number of worker threads: `RAYON_NUM_THREADS` when set, else the available cores.
fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Writes the world described by `cfg` under `out` (created if missing; files of an earlier run
/// are overwritten). See [`generate_with_threads`].
pub fn generate(out: &Path, cfg: &WorldConfig) -> Result<Summary> {
    generate_with_threads(out, cfg, default_threads())
}

/// Writes the world described by `cfg` under `out` using `threads` worker threads (the files
/// do not depend on it). Paths inside the files are relative to `out`:
///
/// - `vocab.txt` ([`vocabulary`]);
/// - `images/<split>/<split>_<i>.png` for splits train, val, test and heldout;
/// - `pretrain.json` (`[{image, caption}]`, train);
/// - `caption_train.json` (`[{image, caption, image_id}]`), `caption_{val,test,heldout}.json`
///   (`[{image, caption: [5], image_id}]`);
/// - `vqa_{train,val,test,heldout}.json` (`[{question_id, image, question, answer: [10],
///   question_type, answer_type}]`) and `answer_list.json` (every majority answer);
/// - `retrieval_train.json` (`[{image, caption, image_id}]`),
///   `retrieval_{val,test,heldout}.json` (`[{image, caption: [5]}]`);
/// - `grounding_{train,val,test,heldout}.json` (`[{id, image, text, bbox: [x, y, w, h]}]`);
/// - `scenes.json`: every image's background and objects with their boxes;
/// - with clips: `clips/<split>/<split>_<i>.gif` (train, test), `videoqa_{train,test}.jsonl`
///   (`{question_id, video_id, question, answer, question_type}`, the type one of
///   [`ClipQuestionKind`]'s names: `static`, `change`, `order`), `videoqa_answers.json`,
///   `videoretrieval_{train,test}.jsonl` (`{clip_name, caption}`), `videocaption_test.json`
///   (`[{image, caption: [1], image_id}]`) and `clips.json` (every clip's events);
/// - `world.json`: the configuration, counts, held-out pairs and the files above.
pub fn generate_with_threads(out: &Path, cfg: &WorldConfig, threads: usize) -> Result<Summary> {
    cfg.validate()?;
    create_dir(out)?;
    let vocab_lines = vocabulary();
    let known: BTreeSet<&str> = vocab_lines[vocab::SPECIAL_LINES..]
        .iter()
        .map(String::as_str)
        .collect();
    let eval = cfg.eval_images();
    let specs = [
        SplitSpec {
            name: "train",
            images: cfg.train_images,
            heldout: false,
            stream: 1,
        },
        SplitSpec {
            name: "val",
            images: eval,
            heldout: false,
            stream: 2,
        },
        SplitSpec {
            name: "test",
            images: eval,
            heldout: false,
            stream: 3,
        },
        SplitSpec {
            name: "heldout",
            images: eval,
            heldout: true,
            stream: 4,
        },
    ];
    let mut splits: Vec<(&SplitSpec, Vec<ImageItem>)> = Vec::new();
    for spec in &specs {
        splits.push((spec, image_split(out, cfg, spec, threads)?));
    }
    let clip_splits: Vec<(&str, Vec<ClipItem>)> = if cfg.train_clips > 0 {
        vec![
            (
                "train",
                clip_split(out, cfg, "train", cfg.train_clips, 5, threads)?,
            ),
            (
                "test",
                clip_split(out, cfg, "test", cfg.test_clips(), 6, threads)?,
            ),
        ]
    } else {
        Vec::new()
    };
    for (_, items) in &splits {
        for it in items {
            let t = &it.text;
            for s in t.captions.iter().chain(t.expressions.iter().map(|e| &e.0)) {
                check_text(s, &known)?;
            }
            for q in &t.questions {
                check_text(&q.question, &known)?;
                for a in &q.answers {
                    check_text(a, &known)?;
                }
            }
        }
    }
    for (_, items) in &clip_splits {
        for it in items {
            check_text(&it.text.caption, &known)?;
            for q in &it.text.questions {
                check_text(&q.question, &known)?;
                check_text(&q.answer, &known)?;
            }
        }
    }

    let mut w = Writer {
        out,
        files: Vec::new(),
    };
    let mut vocab_text = vocab_lines.join("\n");
    vocab_text.push('\n');
    w.text("vocab.txt", &vocab_text)?;

    let train = &splits[0].1;
    let pretrain: Vec<PretrainEntry> = train
        .iter()
        .flat_map(|it| {
            it.text.captions.iter().map(|c| PretrainEntry {
                image: &it.image,
                caption: c,
            })
        })
        .collect();
    w.array("pretrain.json", &pretrain)?;

    // Captions and retrieval.
    for (spec, items) in &splits {
        if spec.name == "train" {
            let pairs: Vec<CaptionPair> = items
                .iter()
                .enumerate()
                .flat_map(|(i, it)| {
                    it.text.captions.iter().map(move |c| CaptionPair {
                        image: &it.image,
                        caption: c,
                        image_id: i,
                    })
                })
                .collect();
            w.array("caption_train.json", &pairs)?;
            w.array("retrieval_train.json", &pairs)?;
        } else {
            let sets: Vec<CaptionSet> = items
                .iter()
                .enumerate()
                .map(|(i, it)| CaptionSet {
                    image: &it.image,
                    caption: &it.text.captions,
                    image_id: i,
                })
                .collect();
            w.array(&format!("caption_{}.json", spec.name), &sets)?;
            let sets: Vec<RetrievalSet> = items
                .iter()
                .map(|it| RetrievalSet {
                    image: &it.image,
                    caption: &it.text.captions,
                })
                .collect();
            w.array(&format!("retrieval_{}.json", spec.name), &sets)?;
        }
    }

    // VQA: question ids run on over all splits.
    let mut next_qid = 0u64;
    let mut answers: BTreeSet<&str> = BTreeSet::new();
    let mut summaries = Vec::new();
    for (spec, items) in &splits {
        let mut entries = Vec::new();
        for it in items {
            for q in &it.text.questions {
                answers.insert(&q.answer);
                entries.push(VqaEntry {
                    question_id: next_qid,
                    image: &it.image,
                    question: &q.question,
                    answer: &q.answers,
                    question_type: q.question_type,
                    answer_type: q.answer_type,
                });
                next_qid += 1;
            }
        }
        w.array(&format!("vqa_{}.json", spec.name), &entries)?;
        summaries.push(SplitSummary {
            name: spec.name.to_string(),
            images: items.len(),
            captions: items.iter().map(|it| it.text.captions.len()).sum(),
            questions: entries.len(),
            expressions: items.iter().map(|it| it.text.expressions.len()).sum(),
        });
    }
    let answers: Vec<&str> = answers.into_iter().collect();
    w.array("answer_list.json", &answers)?;

    // Grounding: ids run on over all splits.
    let mut next_ref = 0u64;
    for (spec, items) in &splits {
        let mut entries = Vec::new();
        for it in items {
            for (text, k) in &it.text.expressions {
                entries.push(GroundingEntry {
                    id: next_ref,
                    image: &it.image,
                    text,
                    bbox: it.boxes[*k],
                });
                next_ref += 1;
            }
        }
        w.array(&format!("grounding_{}.json", spec.name), &entries)?;
    }

    // Image labels for pre-training the visual tower on its own (`mplug pretrain-tower`, the
    // world's stand-in for CLIP's pre-training): what the scene holds, without where.
    for (spec, items) in &splits {
        let entries: Vec<LabelsEntry> = items
            .iter()
            .map(|it| LabelsEntry {
                image: &it.image,
                labels: scene_labels(&it.scene.objects),
            })
            .collect();
        w.array(&format!("labels_{}.json", spec.name), &entries)?;
    }

    let scenes: Vec<SceneEntry> = splits
        .iter()
        .flat_map(|(spec, items)| {
            items.iter().map(|it| SceneEntry {
                split: spec.name,
                image: &it.image,
                background: &it.scene.background,
                objects: it
                    .scene
                    .objects
                    .iter()
                    .zip(&it.boxes)
                    .map(|(o, b)| SceneObjectEntry {
                        shape: o.shape,
                        color: o.color,
                        size: o.size,
                        texture: o.texture,
                        x: o.x,
                        y: o.y,
                        radius: o.radius,
                        rotation: o.rotation,
                        bbox: *b,
                    })
                    .collect(),
            })
        })
        .collect();
    w.array("scenes.json", &scenes)?;

    // Video.
    let mut video_questions = 0usize;
    if !clip_splits.is_empty() {
        let mut video_answers: BTreeSet<&str> = BTreeSet::new();
        for (split, items) in &clip_splits {
            let mut entries = Vec::new();
            for it in items {
                for q in &it.text.questions {
                    video_answers.insert(&q.answer);
                    entries.push(VideoQaEntry {
                        question_id: next_qid,
                        video_id: &it.video,
                        question: &q.question,
                        answer: &q.answer,
                        question_type: q.kind.name(),
                    });
                    next_qid += 1;
                }
            }
            video_questions += entries.len();
            w.lines(&format!("videoqa_{split}.jsonl"), &entries)?;
        }
        let video_answers: Vec<&str> = video_answers.into_iter().collect();
        w.array("videoqa_answers.json", &video_answers)?;
        for (split, items) in &clip_splits {
            let entries: Vec<VideoRetrievalEntry> = items
                .iter()
                .map(|it| VideoRetrievalEntry {
                    clip_name: &it.video,
                    caption: &it.text.caption,
                })
                .collect();
            w.lines(&format!("videoretrieval_{split}.jsonl"), &entries)?;
        }
        let test = &clip_splits[1].1;
        let captions: Vec<[String; 1]> = test.iter().map(|it| [it.text.caption.clone()]).collect();
        let entries: Vec<CaptionSet> = test
            .iter()
            .zip(&captions)
            .enumerate()
            .map(|(i, (it, c))| CaptionSet {
                image: &it.video,
                caption: c,
                image_id: i,
            })
            .collect();
        w.array("videocaption_test.json", &entries)?;
        let entries: Vec<ClipEntry> = clip_splits
            .iter()
            .flat_map(|(split, items)| {
                items.iter().map(|it| ClipEntry {
                    split,
                    video: &it.video,
                    caption: &it.text.caption,
                    clip: &it.clip,
                })
            })
            .collect();
        w.array("clips.json", &entries)?;
    }

    let clip_count = |k: usize| clip_splits.get(k).map_or(0, |(_, v)| v.len());
    let mut summary = Summary {
        splits: summaries,
        train_clips: clip_count(0),
        test_clips: clip_count(1),
        video_questions,
        vocab_size: vocab_lines.len(),
        files: Vec::new(),
    };
    let mut files = w.files.clone();
    files.push("world.json".to_string());
    let world = WorldFile {
        generator: "mplug world v1",
        config: cfg,
        splits: &summary.splits,
        train_clips: summary.train_clips,
        test_clips: summary.test_clips,
        video_questions,
        frame_delay_ms: FRAME_DELAY_MS,
        heldout_pairs: HELDOUT_PAIRS
            .iter()
            .map(|(c, s)| format!("{} {}", c.name(), s.name()))
            .collect(),
        shapes: Shape::ALL.iter().map(|s| s.name()).collect(),
        colors: Color::ALL.iter().map(|c| c.name()).collect(),
        vocab_size: summary.vocab_size,
        files: &files,
    };
    let path = out.join("world.json");
    let mut text = serde_json::to_string_pretty(&world)
        .map_err(|e| io_error(&path, std::io::Error::other(e)))?;
    text.push('\n');
    write_file(&path, text.as_bytes())?;
    summary.files = files;
    Ok(summary)
}
