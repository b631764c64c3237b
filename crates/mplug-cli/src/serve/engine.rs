//! The inference engine behind the server: one loaded model shared by every request, model calls
//! run one batch at a time on tokio's blocking threads, and requests that wait together are
//! batched.
//!
//! A request's inputs are decoded and checked on a blocking thread of its own (in parallel with
//! model work), then queued as a [`Work`] item, and one blocking task per item is started. A
//! task takes the compute lock, then the oldest queued item with every later item it can share
//! a model call with (same kind and decoding settings, up to `max_batch`), runs them as one
//! batch and answers each. While a batch runs, new items wait in the queue, so the next task
//! finds them together: under load, batches grow by themselves; when idle, a lone request runs
//! at once. Each task takes at least one item when the queue is not empty and there are as many
//! tasks as items, so no item is left behind.

use super::request::ApiError;
use candle_core::{Device, Tensor};
use mplug::input::{
    DecodeOptions, EncodeOptions, GroundingPreprocessor, ImageConfig, ImagePreprocessor,
    LetterboxConfig, LetterboxInfo,
};
use mplug::model_dir::LoadedModel;
use mplug::pipeline::{Generated, GroundedBox, Pipeline, RankedText, MAX_TEXT_TOKENS};
use mplug::tasks::{grounding, retrieval};
use mplug::BeamConfig;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// One request's model work, its inputs already decoded and checked.
#[derive(Debug)]
pub enum Work {
    /// Caption one image `(3, R, R)`.
    Caption {
        /// The normalized image.
        image: Tensor,
        /// Decoding settings.
        beam: BeamConfig,
    },
    /// Answer a question about one image.
    Answer {
        /// The normalized image.
        image: Tensor,
        /// The question.
        question: String,
        /// Decoding settings.
        beam: BeamConfig,
    },
    /// Rank a closed list of answers.
    Rank {
        /// The normalized image.
        image: Tensor,
        /// The question.
        question: String,
        /// The candidates.
        answers: Vec<String>,
        /// Answers kept.
        k: usize,
    },
    /// Ground an expression in one letterboxed image.
    Ground {
        /// The letterboxed image `(3, S, S)`.
        image: Tensor,
        /// Where the image sits on the canvas.
        info: LetterboxInfo,
        /// The referring expression.
        expression: String,
    },
    /// Score texts against images.
    Retrieve {
        /// Normalized images `(N, 3, R, R)`.
        images: Tensor,
        /// The texts.
        texts: Vec<String>,
        /// Candidates re-scored by ITM.
        k: usize,
    },
    /// ITC features.
    Embed {
        /// Normalized images `(N, 3, R, R)`, if any.
        images: Option<Tensor>,
        /// Texts, if any.
        texts: Vec<String>,
    },
}

/// What a [`Work`] item produced.
#[derive(Debug)]
pub enum Output {
    /// Generated texts, best first.
    Generated(Vec<Generated>),
    /// Ranked answers, best first.
    Ranked(Vec<RankedText>),
    /// A box.
    Box(GroundedBox),
    /// `(image -> text, text -> image)` score matrices.
    Scores(Vec<Vec<f32>>, Vec<Vec<f32>>),
    /// `(image features, text features)`, L2-normalized.
    Embeddings(Vec<Vec<f32>>, Vec<Vec<f32>>),
}

/// Which items may share one model call.
#[derive(Debug, Clone, PartialEq)]
enum BatchKey {
    Caption(BeamKey),
    Answer(BeamKey),
    Ground,
    Alone,
}

/// The decoding settings that must agree within a batch.
#[derive(Debug, Clone, PartialEq)]
struct BeamKey(usize, usize, usize, usize, bool, u64);

impl BeamKey {
    fn of(b: &BeamConfig) -> Self {
        BeamKey(
            b.beam_size,
            b.min_length,
            b.max_length,
            b.n_best,
            b.use_cache,
            b.length_penalty_alpha.to_bits(),
        )
    }
}

impl Work {
    fn key(&self) -> BatchKey {
        match self {
            Work::Caption { beam, .. } => BatchKey::Caption(BeamKey::of(beam)),
            Work::Answer { beam, .. } => BatchKey::Answer(BeamKey::of(beam)),
            Work::Ground { .. } => BatchKey::Ground,
            _ => BatchKey::Alone,
        }
    }
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Output, ApiError>>,
    /// Held until the job is answered, so that the in-flight limit counts queued work even when
    /// its client has gone.
    permit: OwnedSemaphorePermit,
}

/// Batch counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Model calls made.
    pub batches: AtomicU64,
    /// Items answered by them.
    pub items: AtomicU64,
    /// The largest batch so far.
    pub largest: AtomicU64,
}

/// The shared model and its queue.
pub struct Engine {
    pipeline: Pipeline,
    grounding: grounding::GroundingTokens,
    images: ImagePreprocessor,
    letterbox: GroundingPreprocessor,
    queue: Mutex<VecDeque<Job>>,
    compute: Mutex<()>,
    max_batch: usize,
    /// Batch counters.
    pub stats: BatchStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave the queue or the unit in a broken state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// An engine around a loaded model; images with more than `max_pixels` are refused.
    pub fn new(model: LoadedModel, max_pixels: u64, max_batch: usize) -> anyhow::Result<Self> {
        let res = model.pipeline.model().config.image_res as u32;
        let decode = DecodeOptions {
            max_pixels,
            ..DecodeOptions::default()
        };
        let mut image_cfg = ImageConfig::new(res);
        image_cfg.decode = decode;
        let mut letterbox_cfg = LetterboxConfig::new(res);
        letterbox_cfg.decode = decode;
        Ok(Engine {
            images: ImagePreprocessor::new(image_cfg)?,
            letterbox: GroundingPreprocessor::new(letterbox_cfg)?,
            pipeline: model.pipeline,
            grounding: model.grounding,
            queue: Mutex::new(VecDeque::new()),
            compute: Mutex::new(()),
            max_batch: max_batch.max(1),
            stats: BatchStats::default(),
        })
    }

    /// The model with its tokenizer.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    fn device(&self) -> &Device {
        self.pipeline.model().device()
    }

    /// Decodes and normalizes encoded image bytes to `(3, R, R)` (a blocking call).
    pub fn image(&self, bytes: &[u8], name: &str) -> Result<Tensor, ApiError> {
        self.images
            .preprocess_bytes(bytes, name, self.device())
            .map_err(ApiError::input)
    }

    /// Decodes and letterboxes encoded image bytes (a blocking call).
    pub fn letterboxed(
        &self,
        bytes: &[u8],
        name: &str,
    ) -> Result<(Tensor, LetterboxInfo), ApiError> {
        let l = self
            .letterbox
            .preprocess_bytes(bytes, name, self.device())
            .map_err(ApiError::input)?;
        Ok((l.image, l.info))
    }

    /// The longest text passed to the model, in tokens.
    fn text_limit(&self) -> usize {
        MAX_TEXT_TOKENS.min(self.pipeline.model().config.bert.max_position_embeddings)
    }

    /// Checks that a text tokenizes (not empty); `what` names it in the error.
    pub fn check_text(&self, text: &str, what: &str) -> Result<(), ApiError> {
        self.pipeline
            .tokenizer()
            .encode(text, Some(self.text_limit()))
            .map(|_| ())
            .map_err(|e| ApiError::unprocessable(format!("{what}: {e}")))
    }

    /// Checks that VQA candidates encode (not empty, within the position limit).
    pub fn check_answers(&self, answers: &[String]) -> Result<(), ApiError> {
        self.pipeline
            .tokenizer()
            .encode_answers(answers)
            .map(|_| ())
            .map_err(|e| ApiError::unprocessable(format!("answers: {e}")))
    }

    /// Queues `work` and waits for its result. `permit` is released when the work is done.
    pub async fn submit(
        self: &Arc<Self>,
        work: Work,
        permit: OwnedSemaphorePermit,
    ) -> Result<Output, ApiError> {
        let (reply, rx) = oneshot::channel();
        lock(&self.queue).push_back(Job {
            work,
            reply,
            permit,
        });
        let engine = self.clone();
        // The task's handle is not awaited: the reply channel carries the result, and a
        // dropped sender (a panic) reads as an internal error below.
        drop(tokio::task::spawn_blocking(move || engine.run_pending()));
        rx.await
            .unwrap_or_else(|_| Err(ApiError::internal("the model call failed unexpectedly")))
    }

    /// Takes the next batch from the queue and runs it (a blocking call).
    fn run_pending(&self) {
        let _compute = lock(&self.compute);
        let batch: Vec<Job> = {
            let mut queue = lock(&self.queue);
            let Some(first) = queue.pop_front() else {
                return;
            };
            let key = first.work.key();
            let mut batch = vec![first];
            if key != BatchKey::Alone {
                let mut i = 0;
                while i < queue.len() && batch.len() < self.max_batch {
                    if queue[i].work.key() == key {
                        if let Some(job) = queue.remove(i) {
                            batch.push(job);
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            batch
        };
        let n = batch.len() as u64;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.items.fetch_add(n, Ordering::Relaxed);
        self.stats.largest.fetch_max(n, Ordering::Relaxed);
        let (works, replies): (Vec<Work>, Vec<_>) = batch
            .into_iter()
            .map(|j| (j.work, (j.reply, j.permit)))
            .unzip();
        let results = match self.run_batch(&works) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            // One failing item must not fail the others: run each alone.
            Err(_) if works.len() > 1 => works
                .iter()
                .map(|w| {
                    self.run_batch(std::slice::from_ref(w))
                        .and_then(|mut o| o.pop().ok_or_else(|| internal("no result")))
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        for ((reply, permit), result) in replies.into_iter().zip(results) {
            // The place is free before the client hears back, so that a client sending its
            // next request at once is not refused.
            drop(permit);
            // The client may have gone; its result is dropped.
            let _ = reply.send(result);
        }
    }

    /// Runs items that share a [`BatchKey`] as one model call; one output per item.
    fn run_batch(&self, works: &[Work]) -> Result<Vec<Output>, ApiError> {
        let p = &self.pipeline;
        let stack = |images: Vec<&Tensor>| Tensor::stack(&images, 0).map_err(internal);
        match &works[0] {
            Work::Caption { beam, .. } => {
                let images = stack(
                    works
                        .iter()
                        .filter_map(|w| match w {
                            Work::Caption { image, .. } => Some(image),
                            _ => None,
                        })
                        .collect(),
                )?;
                let out = p.caption(&images, beam).map_err(ApiError::model)?;
                Ok(out.into_iter().map(Output::Generated).collect())
            }
            Work::Answer { beam, .. } => {
                let (images, questions): (Vec<&Tensor>, Vec<&str>) = works
                    .iter()
                    .filter_map(|w| match w {
                        Work::Answer {
                            image, question, ..
                        } => Some((image, question.as_str())),
                        _ => None,
                    })
                    .unzip();
                let out = p
                    .answer(&stack(images)?, &questions, beam)
                    .map_err(ApiError::model)?;
                Ok(out.into_iter().map(Output::Generated).collect())
            }
            Work::Ground { .. } => {
                let mut images = Vec::new();
                let mut infos = Vec::new();
                let mut exprs = Vec::new();
                for w in works {
                    if let Work::Ground {
                        image,
                        info,
                        expression,
                    } = w
                    {
                        images.push(image);
                        infos.push(*info);
                        exprs.push(expression.as_str());
                    }
                }
                let boxes = self.ground(&stack(images)?, &exprs)?;
                Ok(boxes
                    .into_iter()
                    .zip(infos)
                    .map(|(cxcywh, info)| {
                        Output::Box(GroundedBox {
                            xyxy: info.box_to_original(cxcywh),
                            cxcywh,
                        })
                    })
                    .collect())
            }
            Work::Rank {
                image,
                question,
                answers,
                k,
            } => {
                let mut out = p
                    .rank_answers(
                        &image.unsqueeze(0).map_err(internal)?,
                        &[question],
                        answers,
                        *k,
                    )
                    .map_err(ApiError::model)?;
                Ok(vec![Output::Ranked(out.pop().unwrap_or_default())])
            }
            Work::Retrieve { images, texts, k } => {
                let (i2t, t2i) = p.retrieve(images, texts, *k).map_err(ApiError::model)?;
                Ok(vec![Output::Scores(i2t, t2i)])
            }
            Work::Embed { images, texts } => {
                let model = p.model();
                let image_feats = match images {
                    Some(images) => retrieval::encode_images(model, images)
                        .and_then(|s| Ok(s.feat.to_vec2::<f32>()?))
                        .map_err(ApiError::model)?,
                    None => Vec::new(),
                };
                let text_feats = if texts.is_empty() {
                    Vec::new()
                } else {
                    let (ids, mask) = self.encode(texts)?;
                    retrieval::encode_texts(model, &ids, &mask)
                        .and_then(|s| Ok(s.feat.to_vec2::<f32>()?))
                        .map_err(ApiError::model)?
                };
                Ok(vec![Output::Embeddings(image_feats, text_feats)])
            }
        }
    }

    fn encode(&self, texts: &[impl AsRef<str>]) -> Result<(Tensor, Tensor), ApiError> {
        let batch = self
            .pipeline
            .tokenizer()
            .encode_batch(texts, &EncodeOptions::longest().truncate(self.text_limit()))
            .map_err(ApiError::input)?;
        batch.to_tensors(self.device()).map_err(ApiError::input)
    }

    /// Boxes `(cx, cy, w, h)` for letterboxed images `(N, 3, S, S)` and their expressions,
    /// as [`Pipeline::ground`] computes them from files.
    fn ground(&self, images: &Tensor, exprs: &[&str]) -> Result<Vec<[f32; 4]>, ApiError> {
        let model = self.pipeline.model();
        let (ids, mask) = self.encode(exprs)?;
        let embeds = model.encode_image(images).map_err(ApiError::model)?;
        grounding::predict(model, &embeds, &ids, &mask, &self.grounding).map_err(ApiError::model)
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}
