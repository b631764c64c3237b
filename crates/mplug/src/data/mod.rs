//! Training data: the reference's annotation files as datasets, its train-time augmentations,
//! and a deterministic loader whose batch `i` is a function of the seed and `i` alone, so that
//! a resumed run sees exactly the batches an uninterrupted one would have seen.
//!
//! Annotation files are read with [`annotations`]' readers (the same formats,
//! field aliases and error messages); captions are cleaned with the reference's `pre_caption`.
//!
//! Video datasets ([`Dataset::videoqa`], [`Dataset::video_retrieval`]) name clips instead of
//! images and carry the number of frames sampled per clip; their batches hold `(B, F, 3, R, R)`
//! frame stacks, which [`crate::tasks::video::encode_frames`] and
//! [`crate::tasks::pretrain::losses`] take.

pub mod annotations;
pub mod augment;
pub mod flip;
pub mod grounding_augment;
pub mod loader;

pub use augment::AugmentConfig;
pub use flip::swap_left_right;
pub use loader::{Batch, Loader, LoaderConfig};

use annotations::{pre_caption, AnnotationError, BoxFormat};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Words kept of a caption, as the reference's training datasets (`max_words=30`).
pub const MAX_WORDS: usize = 30;

/// Errors of loading training data; each names the file, the entry or the batch at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An annotation file is unreadable or malformed.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// An annotation file is well-formed but unusable for training.
    #[error("{path}: {msg}")]
    Dataset {
        /// The annotation file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        msg: String,
    },
    /// An image could not be read or decoded.
    #[error("sample {index} ({path}): {msg}")]
    Image {
        /// The sample's index in the dataset.
        index: usize,
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// A video clip could not be found, read or decoded.
    #[error("sample {index} (clip {path}): {msg}")]
    Clip {
        /// The sample's index in the dataset.
        index: usize,
        /// The clip (file or frame folder; the name joined to the root when none was found).
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// The texts of a batch could not be tokenized.
    #[error("batch {batch} (samples {samples:?}): {msg}")]
    Text {
        /// The batch index.
        batch: u64,
        /// Dataset indices of its samples.
        samples: Vec<usize>,
        /// What went wrong.
        msg: String,
    },
    /// The loader's options are inconsistent.
    #[error("{0}")]
    Options(String),
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<DataError> for crate::Error {
    fn from(e: DataError) -> Self {
        crate::Error::InvalidInput(e.to_string())
    }
}

/// The result type of [`crate::data`].
pub type Result<T> = std::result::Result<T, DataError>;

/// What a dataset trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataTask {
    /// Image-text pairs for the pre-training objectives (one caption drawn per visit).
    Pretrain,
    /// Captioning: one sample per (image, caption) pair.
    Caption,
    /// VQA: a question with its weighted answers.
    Vqa,
    /// Retrieval: one sample per (image, caption) pair, with the image's id.
    Retrieval,
    /// Grounding: a referring expression with its box.
    Grounding,
    /// Video QA: a question about a clip with its one answer (weight 1).
    VideoQa,
    /// Video retrieval: one sample per (clip, caption) line, with the clip's id.
    VideoRetrieval,
    /// Image labels (multi-label classification, which pre-trains the visual tower alone).
    Labels,
}

impl DataTask {
    /// Whether the samples name video clips (batches of `(B, F, 3, R, R)` frames) rather than
    /// images.
    pub fn is_video(self) -> bool {
        matches!(self, DataTask::VideoQa | DataTask::VideoRetrieval)
    }
}

/// One training sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Image path relative to the image root; for video datasets, the clip's name relative to
    /// the root (resolved by [`annotations::resolve_video`], so the extension may be missing).
    pub image: String,
    /// The text (caption, question or expression); pre-training samples may hold several
    /// captions, of which each visit draws one.
    pub texts: Vec<String>,
    /// VQA: distinct answers, in order of first appearance.
    pub answers: Vec<String>,
    /// VQA: each answer's weight (see [`answer_weights`]).
    pub weights: Vec<f32>,
    /// Dense id of the image or clip (0, 1, ... in order of first appearance of its path).
    pub image_id: u64,
    /// Grounding: the box `[x0, y0, x1, y1]` in original-image pixels.
    pub bbox: Option<[f64; 4]>,
    /// Image labels: the labels that apply to the image.
    pub labels: Vec<String>,
}

/// The samples of one annotation file.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// What the samples train.
    pub task: DataTask,
    /// The samples, in file order.
    pub samples: Vec<Sample>,
    /// The annotation file.
    pub source: PathBuf,
    /// Frames sampled per clip (uniformly over the clip, as at inference) for video datasets;
    /// 0 for image datasets.
    pub frames: usize,
}

/// The reference's answer weights (`vqa_dataset` for VQA entries): each distinct answer once,
/// in order of first appearance, weighted by its count over the number of answers.
pub fn answer_weights(answers: &[String]) -> (Vec<String>, Vec<f32>) {
    let mut order: Vec<String> = Vec::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for a in answers {
        let c = counts.entry(a.as_str()).or_insert(0);
        if *c == 0 {
            order.push(a.clone());
        }
        *c += 1;
    }
    let n = answers.len().max(1) as f32;
    let weights = order
        .iter()
        .map(|a| counts[a.as_str()] as f32 / n)
        .collect();
    (order, weights)
}

/// Dense image ids by path, in order of first appearance.
fn image_ids<'a>(images: impl Iterator<Item = &'a str>) -> Vec<u64> {
    let mut ids: HashMap<&str, u64> = HashMap::new();
    images
        .map(|p| {
            let next = ids.len() as u64;
            *ids.entry(p).or_insert(next)
        })
        .collect()
}

fn clean(path: &Path, entry: usize, caption: &str) -> Result<String> {
    let c = pre_caption(caption, MAX_WORDS);
    if c.is_empty() {
        return Err(DataError::Dataset {
            path: path.to_path_buf(),
            msg: format!("entry {entry}: caption {caption:?} is empty once cleaned"),
        });
    }
    Ok(c)
}

fn sample(image: String, texts: Vec<String>, image_id: u64) -> Sample {
    Sample {
        image,
        texts,
        answers: Vec::new(),
        weights: Vec::new(),
        image_id,
        bbox: None,
        labels: Vec::new(),
    }
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn new(task: DataTask, samples: Vec<Sample>, path: &Path) -> Result<Self> {
        if samples.is_empty() {
            return Err(DataError::Dataset {
                path: path.to_path_buf(),
                msg: "holds no training samples".into(),
            });
        }
        Ok(Dataset {
            task,
            samples,
            source: path.to_path_buf(),
            frames: 0,
        })
    }

    /// A video dataset of `frames` frames per clip.
    fn video(task: DataTask, samples: Vec<Sample>, path: &Path, frames: usize) -> Result<Self> {
        if frames == 0 {
            return Err(DataError::Dataset {
                path: path.to_path_buf(),
                msg: "a video dataset needs at least 1 frame per clip".into(),
            });
        }
        let mut d = Self::new(task, samples, path)?;
        d.frames = frames;
        Ok(d)
    }

    /// Whether the samples are video clips (see [`DataTask::is_video`]).
    pub fn is_video(&self) -> bool {
        self.task.is_video()
    }

    /// Pre-training pairs `[{image, caption}]`, `caption` one string or a list (one is drawn
    /// per visit, as the reference's `pretrain_dataset_4m`).
    pub fn pretrain(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let entries = annotations::read_retrieval(path)?;
        let ids = image_ids(entries.iter().map(|e| e.image.as_str()));
        let mut samples = Vec::with_capacity(entries.len());
        for (i, (e, id)) in entries.into_iter().zip(ids).enumerate() {
            let texts = e
                .captions
                .iter()
                .map(|c| clean(path, i, c))
                .collect::<Result<Vec<_>>>()?;
            if texts.is_empty() {
                return Err(DataError::Dataset {
                    path: path.to_path_buf(),
                    msg: format!("entry {i}: no caption"),
                });
            }
            samples.push(sample(e.image, texts, id));
        }
        Self::new(DataTask::Pretrain, samples, path)
    }

    /// Caption training pairs: `[{image, caption}]` (mPLUG's `coco_karpathy_train.json`;
    /// `caption` may be a list), one sample per caption; or, with `split`, Karpathy's
    /// `dataset_coco.json` entries of that split, one sample per sentence.
    pub fn caption(path: impl AsRef<Path>, split: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        let pairs: Vec<(String, Vec<String>)> = match split {
            Some(s) => annotations::read_caption(path, Some(s))?
                .into_iter()
                .map(|c| (c.image, c.references))
                .collect(),
            None => annotations::read_retrieval(path)?
                .into_iter()
                .map(|r| (r.image, r.captions))
                .collect(),
        };
        let ids = image_ids(pairs.iter().map(|p| p.0.as_str()));
        let mut samples = Vec::new();
        for (i, ((image, captions), id)) in pairs.into_iter().zip(ids).enumerate() {
            for c in captions {
                samples.push(sample(image.clone(), vec![clean(path, i, &c)?], id));
            }
        }
        Self::new(DataTask::Caption, samples, path)
    }

    /// VQA training questions `[{question_id?, image, question, answer: [...]}]`, each with
    /// its distinct answers weighted as [`answer_weights`]. A question without answers is an
    /// error naming it.
    pub fn vqa(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let entries = annotations::read_vqa(path)?;
        let ids = image_ids(entries.iter().map(|e| e.image.as_str()));
        let mut samples = Vec::with_capacity(entries.len());
        for (e, id) in entries.into_iter().zip(ids) {
            if e.answers.is_empty() || e.answers.iter().any(|a| a.trim().is_empty()) {
                return Err(DataError::Dataset {
                    path: path.to_path_buf(),
                    msg: format!(
                        "question {}: a training question needs non-empty answers, found {:?}",
                        e.question_id, e.answers
                    ),
                });
            }
            let (answers, weights) = match e.dataset.as_deref() {
                // Visual Genome and GQA entries carry one answer, weighted 0.5 as the
                // reference's VQA training set does.
                Some("vg" | "gqa") => {
                    let (answers, _) = answer_weights(&e.answers);
                    let n = answers.len();
                    (answers, vec![0.5; n])
                }
                _ => answer_weights(&e.answers),
            };
            let mut s = sample(e.image, vec![e.question], id);
            s.answers = answers;
            s.weights = weights;
            samples.push(s);
        }
        Self::new(DataTask::Vqa, samples, path)
    }

    /// Retrieval training pairs `[{image, caption: [...]}]`: one sample per caption, with a
    /// dense id per image so that captions of one image are all positives.
    pub fn retrieval(path: impl AsRef<Path>) -> Result<Self> {
        let mut d = Self::caption(path, None)?;
        d.task = DataTask::Retrieval;
        Ok(d)
    }

    /// Video questions as MSRVTT-QA's JSON Lines (or a JSON array) `{question_id?, video_id,
    /// question, answer}` (see [`annotations::read_videoqa`]), `frames` frames sampled per clip.
    /// Each sample holds the question and its one answer with weight 1, as [`Dataset::vqa`]'s;
    /// `video_id` is the clip's path under the loader's root (the extension may be missing).
    /// A question without an answer is an error naming it.
    pub fn videoqa(path: impl AsRef<Path>, frames: usize) -> Result<Self> {
        let path = path.as_ref();
        let entries = annotations::read_videoqa(path)?;
        let ids = image_ids(entries.iter().map(|e| e.video.as_str()));
        let mut samples = Vec::with_capacity(entries.len());
        for (e, id) in entries.into_iter().zip(ids) {
            let answer = match e.answer {
                Some(a) if !a.trim().is_empty() => a,
                other => {
                    return Err(DataError::Dataset {
                        path: path.to_path_buf(),
                        msg: format!(
                            "question {}: a training question needs a non-empty answer, found {:?}",
                            e.question_id, other
                        ),
                    })
                }
            };
            let mut s = sample(e.video, vec![e.question], id);
            s.answers = vec![answer];
            s.weights = vec![1.0];
            samples.push(s);
        }
        Self::video(DataTask::VideoQa, samples, path, frames)
    }

    /// Video-text pairs as MSRVTT's JSON Lines (or a JSON array) `{clip_name, caption}` (see
    /// [`annotations::read_video_retrieval`]), `frames` frames sampled per clip: one sample per
    /// line, its caption cleaned as [`Dataset::retrieval`]'s, with a dense id per distinct clip
    /// so that the captions of one clip are all positives.
    pub fn video_retrieval(path: impl AsRef<Path>, frames: usize) -> Result<Self> {
        let path = path.as_ref();
        let entries = annotations::read_video_retrieval(path)?;
        let ids = image_ids(entries.iter().map(|e| e.video.as_str()));
        let mut samples = Vec::with_capacity(entries.len());
        for (i, (e, id)) in entries.into_iter().zip(ids).enumerate() {
            let text = clean(path, i, &e.caption)?;
            samples.push(sample(e.video, vec![text], id));
        }
        Self::video(DataTask::VideoRetrieval, samples, path, frames)
    }

    /// Labelled images `[{image, labels: [...]}]` (see [`annotations::read_labels`]): one
    /// sample per entry, with no text.
    pub fn labels(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let entries = annotations::read_labels(path)?;
        let ids = image_ids(entries.iter().map(|e| e.image.as_str()));
        let samples = entries
            .into_iter()
            .zip(ids)
            .map(|(e, id)| {
                let mut s = sample(e.image, Vec::new(), id);
                s.labels = e.labels;
                s
            })
            .collect();
        Self::new(DataTask::Labels, samples, path)
    }

    /// The distinct labels of the samples, sorted: the classes of a head trained on them.
    pub fn label_names(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&str> = self
            .samples
            .iter()
            .flat_map(|s| s.labels.iter().map(String::as_str))
            .collect();
        set.into_iter().map(str::to_string).collect()
    }

    /// Grounding expressions with their boxes (see [`annotations::read_grounding`]).
    pub fn grounding(path: impl AsRef<Path>, format: BoxFormat) -> Result<Self> {
        let path = path.as_ref();
        let entries = annotations::read_grounding(path, format)?;
        let ids = image_ids(entries.iter().map(|e| e.image.as_str()));
        let samples = entries
            .into_iter()
            .zip(ids)
            .map(|(e, id)| {
                let mut s = sample(e.image, vec![e.text], id);
                s.bbox = Some(e.bbox);
                s
            })
            .collect();
        Self::new(DataTask::Grounding, samples, path)
    }
}
