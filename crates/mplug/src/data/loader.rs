//! Deterministic batches: batch `i` is a function of the seed and `i`. Sample position
//! `p = i * batch_size + k` lies in epoch `p / n` (n samples); each epoch visits the samples in
//! a permutation drawn from `(seed, epoch)`, and each visit's augmentation (and, for
//! pre-training, its caption) from `(seed, p)`. Images are decoded and augmented in worker
//! threads.
//!
//! Video datasets ([`Dataset::is_video`]) load each sample's clip with the inference pipeline
//! ([`VideoPreprocessor`]: the dataset's number of frames sampled uniformly, each resized to the
//! loader's resolution and normalized as an image at inference) into `(B, F, 3, R, R)` batches.
//! Of the augmentations only the flip applies to clips: the whole clip is mirrored (every frame
//! alike) with probability 0.5, and `left`/`right` are swapped in its text (and VQA answers) as
//! [`swap_left_right`] does; clips are never cropped or RandAugmented.
//!
//! Grounding samples are letterboxed onto the square canvas with their box: with
//! [`AugmentConfig::grounding`] set, through the reference's grounding training transform
//! ([`super::grounding_augment`]), drawn from the same per-visit generator; otherwise centred,
//! as at evaluation, and only flipped.

use super::annotations::resolve_video;
use super::augment::{rand_augment, random_resized_crop, AugmentConfig};
use super::flip::{hflip, swap_left_right};
use super::grounding_augment::{augment_grounding, flip_box};
use super::{DataError, DataTask, Dataset, Result};
use crate::input::{
    DecodeOptions, EncodeOptions, GroundingPreprocessor, ImageConfig, ImagePreprocessor,
    InputError, LetterboxConfig, RgbImage, Tokenizer, VideoConfig, VideoPreprocessor,
};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

/// Options of a [`Loader`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Seed of the sample order and the augmentations.
    pub seed: u64,
    /// Image side in pixels (the model's `image_res`).
    pub resolution: u32,
    /// Most text tokens, `[CLS]` and `[SEP]` included.
    pub max_text_len: usize,
    /// Train-time augmentations (`None`: the test transform, a bicubic resize).
    pub augment: Option<AugmentConfig>,
    /// Threads decoding images (at least 1).
    pub workers: usize,
    /// Text put before each caption (caption fine-tuning; the reference's `prompt`).
    pub prompt: String,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 8,
            seed: 42,
            resolution: 384,
            max_text_len: 30,
            augment: Some(AugmentConfig::finetune()),
            workers: 4,
            prompt: String::new(),
        }
    }
}

/// One batch, ready for the task's loss.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The batch index.
    pub index: u64,
    /// Dataset indices of its samples.
    pub samples: Vec<usize>,
    /// Normalized images `(B, 3, R, R)`, or for video datasets normalized clips
    /// `(B, F, 3, R, R)` (F frames per clip, in clip order).
    pub images: Tensor,
    /// The texts after augmentation (caption with prompt, question or expression).
    pub texts: Vec<String>,
    /// Text ids `(B, L)` with `[CLS]`/`[SEP]`.
    pub ids: Tensor,
    /// Text padding mask `(B, L)`.
    pub mask: Tensor,
    /// VQA and video QA: answer ids `(sum k, La)`, each answer followed by `[SEP]`.
    pub answer_ids: Option<Tensor>,
    /// VQA and video QA: answer padding mask.
    pub answer_mask: Option<Tensor>,
    /// VQA and video QA: answers per question.
    pub answer_counts: Vec<usize>,
    /// VQA and video QA: answer weights `(sum k,)`.
    pub answer_weights: Option<Tensor>,
    /// Grounding: target boxes `(B, 4)` as `(cx, cy, w, h)` fractions of the letterboxed canvas.
    pub targets: Option<Tensor>,
    /// Image ids of the samples (retrieval positives).
    pub image_ids: Vec<u64>,
}

/// Batches of a dataset.
#[derive(Debug)]
pub struct Loader {
    dataset: Dataset,
    image_root: PathBuf,
    tokenizer: Tokenizer,
    config: LoaderConfig,
    images: ImagePreprocessor,
    letterbox: GroundingPreprocessor,
    /// The clip pipeline of a video dataset.
    video: Option<VideoPreprocessor>,
    device: Device,
}

/// SplitMix64: a well-mixed 64-bit value of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed derived from `seed`, a stream tag and a counter.
pub fn derive_seed(seed: u64, stream: u64, n: u64) -> u64 {
    mix(mix(mix(seed) ^ stream) ^ n)
}

const ORDER: u64 = 1;
const AUGMENT: u64 = 2;

/// What one worker produced for one sample.
struct Item {
    pixels: Vec<f32>,
    text: String,
    target: Option<[f32; 4]>,
    /// Whether a clip was mirrored (its answers then have `left`/`right` swapped too).
    flipped: bool,
}

/// Mirrors `(planes, r, r)` row-major pixels left to right, plane by plane.
fn flip_rows(pixels: &mut [f32], r: usize) {
    for row in pixels.chunks_exact_mut(r) {
        row.reverse();
    }
}

impl Loader {
    /// A loader over `dataset`, images under `image_root`, texts tokenized by `tokenizer`.
    pub fn new(
        dataset: Dataset,
        image_root: impl Into<PathBuf>,
        tokenizer: Tokenizer,
        config: LoaderConfig,
        device: &Device,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::Options(
                "the batch size must be at least 1".into(),
            ));
        }
        if config.max_text_len < 3 {
            return Err(DataError::Options(format!(
                "a text length of {} leaves no room for a token between [CLS] and [SEP]",
                config.max_text_len
            )));
        }
        let bad = |e: crate::input::InputError| DataError::Options(e.to_string());
        let images = ImagePreprocessor::new(ImageConfig::new(config.resolution)).map_err(bad)?;
        let letterbox =
            GroundingPreprocessor::new(LetterboxConfig::new(config.resolution)).map_err(bad)?;
        let video = if dataset.is_video() {
            if dataset.frames == 0 {
                return Err(DataError::Options(
                    "a video dataset needs at least 1 frame per clip".into(),
                ));
            }
            Some(
                VideoPreprocessor::new(VideoConfig::new(dataset.frames, config.resolution))
                    .map_err(bad)?,
            )
        } else {
            None
        };
        Ok(Loader {
            dataset,
            image_root: image_root.into(),
            tokenizer,
            config,
            images,
            letterbox,
            video,
            device: device.clone(),
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The options.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches per pass over the data (the last one may run into the next epoch).
    pub fn batches_per_epoch(&self) -> u64 {
        (self.dataset.len() as u64).div_ceil(self.config.batch_size as u64)
    }

    /// The permutation of epoch `epoch`.
    fn order(&self, epoch: u64) -> Vec<usize> {
        let n = self.dataset.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = StdRng::seed_from_u64(derive_seed(self.config.seed, ORDER, epoch));
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        order
    }

    /// Dataset indices of batch `index`, each with its global sample position.
    pub fn sample_positions(&self, index: u64) -> Vec<(usize, u64)> {
        let n = self.dataset.len() as u64;
        let b = self.config.batch_size as u64;
        let mut out = Vec::with_capacity(b as usize);
        let mut cached: Option<(u64, Vec<usize>)> = None;
        for k in 0..b {
            let p = index * b + k;
            let epoch = p / n;
            if cached.as_ref().map(|c| c.0) != Some(epoch) {
                cached = Some((epoch, self.order(epoch)));
            }
            let order = &cached.as_ref().expect("set above").1;
            out.push((order[(p % n) as usize], p));
        }
        out
    }

    /// One clip visit: find, decode, sample frames, normalize, maybe mirror.
    fn clip_item(&self, video: &VideoPreprocessor, index: usize, position: u64) -> Result<Item> {
        let s = &self.dataset.samples[index];
        let clip_err = |path: PathBuf, msg: String| DataError::Clip { index, path, msg };
        let path = resolve_video(&self.image_root, &s.image).ok_or_else(|| {
            clip_err(
                self.image_root.join(&s.image),
                "no such clip (looked for the name itself, with .mp4, .avi, .webm, .mkv, .mov \
                 or .gif, and a folder of frames)"
                    .into(),
            )
        })?;
        let mut rng = StdRng::seed_from_u64(derive_seed(self.config.seed, AUGMENT, position));
        let mut text = s.texts.first().cloned().unwrap_or_default();
        let frames = video
            .load(&path, &Device::Cpu)
            .map_err(|e| clip_err(path.clone(), e.to_string()))?
            .frames;
        let mut pixels = frames
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| clip_err(path.clone(), e.to_string()))?;
        let flipped =
            self.config.augment.as_ref().is_some_and(|a| a.flip) && rng.random::<f64>() < 0.5;
        if flipped {
            flip_rows(&mut pixels, self.config.resolution as usize);
            text = swap_left_right(&text);
        }
        Ok(Item {
            pixels,
            text,
            target: None,
            flipped,
        })
    }

    /// One grounding visit: with [`AugmentConfig::grounding`] set, the reference's training
    /// transform ([`augment_grounding`]) and its (possibly off-centre) padding; otherwise the
    /// centred evaluation letterbox, which keeps the whole image (and box), flipped when
    /// [`AugmentConfig::flip`] is set.
    fn grounding_item(
        &self,
        img: RgbImage,
        bbox: [f64; 4],
        text: String,
        rng: &mut StdRng,
    ) -> std::result::Result<Item, InputError> {
        let augment = self.config.augment.as_ref();
        if let Some((a, g)) = augment.and_then(|a| a.grounding.as_ref().map(|g| (a, g))) {
            let res = self.config.resolution;
            let out = augment_grounding(&img, bbox, &text, g, a.flip, res, rng)?;
            let (pixels, info) = self.letterbox.place(&out.image, out.left, out.top)?;
            return Ok(Item {
                pixels,
                text: out.text,
                target: Some(info.box_from_original(out.bbox.map(|v| v as f32))),
                flipped: false,
            });
        }
        let (mut img, mut bbox, mut text) = (img, bbox, text);
        if augment.is_some_and(|a| a.flip) && rng.random::<f64>() < 0.5 {
            img = hflip(&img);
            text = swap_left_right(&text);
            bbox = flip_box(bbox, img.width());
        }
        let (pixels, info) = self.letterbox.pixels(&img)?;
        Ok(Item {
            pixels,
            text,
            target: Some(info.box_from_original(bbox.map(|v| v as f32))),
            flipped: false,
        })
    }

    /// One sample visit: decode, augment, normalize.
    fn item(&self, index: usize, position: u64) -> Result<Item> {
        if let Some(video) = &self.video {
            return self.clip_item(video, index, position);
        }
        let s = &self.dataset.samples[index];
        let path = self.image_root.join(&s.image);
        let img_err = |msg: String| DataError::Image {
            index,
            path: path.clone(),
            msg,
        };
        let mut rng = StdRng::seed_from_u64(derive_seed(self.config.seed, AUGMENT, position));
        let mut text = if s.texts.len() > 1 {
            s.texts[rng.random_range(0..s.texts.len())].clone()
        } else {
            s.texts.first().cloned().unwrap_or_default()
        };
        let img = DecodeOptions::default()
            .load(&path)
            .map_err(|e| img_err(e.to_string()))?;
        let res = self.config.resolution;
        if self.dataset.task == DataTask::Grounding {
            let bbox = s.bbox.unwrap_or([0.0; 4]);
            return self
                .grounding_item(img, bbox, text, &mut rng)
                .map_err(|e| img_err(e.to_string()));
        }
        let img = match &self.config.augment {
            Some(a) => {
                let mut img = random_resized_crop(&img, res, a.scale, a.ratio, &mut rng)
                    .map_err(|e| img_err(e.to_string()))?;
                if a.flip && rng.random::<f64>() < 0.5 {
                    img = hflip(&img);
                }
                rand_augment(img, a.ops, a.magnitude, &mut rng)
            }
            None => img,
        };
        let pixels = self
            .images
            .pixels(&img)
            .map_err(|e| img_err(e.to_string()))?;
        if self.dataset.task == DataTask::Caption && !self.config.prompt.is_empty() {
            text = format!("{}{text}", self.config.prompt);
        }
        Ok(Item {
            pixels,
            text,
            target: None,
            flipped: false,
        })
    }

    /// Batch `index`: the same index gives the same batch, bit for bit. A sample whose image or
    /// clip cannot be read is an error naming it.
    pub fn batch(&self, index: u64) -> Result<Batch> {
        let positions = self.sample_positions(index);
        let workers = self.config.workers.clamp(1, positions.len());
        let chunk = positions.len().div_ceil(workers);
        let items: Vec<Result<Item>> = std::thread::scope(|scope| {
            let handles: Vec<_> = positions
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|&(i, p)| self.item(i, p))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(DataError::Options(
                            "an image worker thread panicked".into(),
                        ))]
                    })
                })
                .collect()
        });
        let items = items.into_iter().collect::<Result<Vec<Item>>>()?;
        let samples: Vec<usize> = positions.iter().map(|&(i, _)| i).collect();
        let b = items.len();
        let r = self.config.resolution as usize;
        let f = self.dataset.frames.max(1);
        let mut pixels = Vec::with_capacity(b * f * 3 * r * r);
        for it in &items {
            pixels.extend_from_slice(&it.pixels);
        }
        let images = if self.video.is_some() {
            Tensor::from_vec(pixels, (b, f, 3, r, r), &self.device)?
        } else {
            Tensor::from_vec(pixels, (b, 3, r, r), &self.device)?
        };
        let texts: Vec<String> = items.iter().map(|it| it.text.clone()).collect();
        let text_err = |msg: String| DataError::Text {
            batch: index,
            samples: samples.clone(),
            msg,
        };
        let (ids, mask) = if self.dataset.task == DataTask::Labels {
            // Labelled images carry no text: ids and mask of length 0.
            let none = Tensor::zeros((b, 0), DType::U32, &self.device)?;
            (none.clone(), none)
        } else {
            let enc = self
                .tokenizer
                .encode_batch(
                    &texts,
                    &EncodeOptions::longest().truncate(self.config.max_text_len),
                )
                .map_err(|e| text_err(e.to_string()))?;
            enc.to_tensors(&self.device)
                .map_err(|e| text_err(e.to_string()))?
        };
        let mut batch = Batch {
            index,
            image_ids: samples
                .iter()
                .map(|&i| self.dataset.samples[i].image_id)
                .collect(),
            samples: samples.clone(),
            images,
            texts,
            ids,
            mask,
            answer_ids: None,
            answer_mask: None,
            answer_counts: Vec::new(),
            answer_weights: None,
            targets: None,
        };
        match self.dataset.task {
            DataTask::Vqa | DataTask::VideoQa => {
                let mut answers = Vec::new();
                let mut weights = Vec::new();
                for (&i, it) in batch.samples.iter().zip(&items) {
                    let s = &self.dataset.samples[i];
                    if it.flipped {
                        answers.extend(s.answers.iter().map(|a| swap_left_right(a)));
                    } else {
                        answers.extend(s.answers.iter().cloned());
                    }
                    weights.extend(s.weights.iter().copied());
                    batch.answer_counts.push(s.answers.len());
                }
                let enc = self
                    .tokenizer
                    .encode_answers(&answers)
                    .map_err(|e| text_err(e.to_string()))?;
                let (a_ids, a_mask) = enc
                    .to_tensors(&self.device)
                    .map_err(|e| text_err(e.to_string()))?;
                let n = weights.len();
                batch.answer_ids = Some(a_ids);
                batch.answer_mask = Some(a_mask);
                batch.answer_weights = Some(Tensor::from_vec(weights, n, &self.device)?);
            }
            DataTask::Grounding => {
                let t: Vec<f32> = items
                    .iter()
                    .flat_map(|it| it.target.unwrap_or([0.0; 4]))
                    .collect();
                batch.targets = Some(Tensor::from_vec(t, (b, 4), &self.device)?);
            }
            _ => {}
        }
        Ok(batch)
    }
}
