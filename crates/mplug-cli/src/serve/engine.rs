//! The inference engine behind the server: one loaded [`Pipeline`] shared by every request,
//! typed async methods for the handlers, model calls run one batch at a time on tokio's
//! blocking threads, and requests that wait together batched.
//!
//! Everything a request needs from the model goes through [`Pipeline`]: image decoding,
//! letterboxing, text checks, and each task. The engine adds only the queue. A request's inputs
//! are decoded and checked on a blocking thread of its own (in parallel with model work), then
//! queued as a [`Job`] carrying its typed reply channel, and one blocking task per job is
//! started. A task takes the compute lock, then the oldest queued job with every later job it
//! can share a model call with (same kind and decoding settings, up to `max_batch`), runs them
//! as one batch and answers each. While a batch runs, new jobs wait in the queue, so the next
//! task finds them together: under load, batches grow by themselves; when idle, a lone request
//! runs at once. Each task takes at least one job when the queue is not empty and there are as
//! many tasks as jobs, so no job is left behind.

use super::request::ApiError;
use axum::body::Bytes;
use candle_core::Tensor;
use mplug::index::{Hit, IndexStore, Query, SearchOptions};
use mplug::input::Letterboxed;
use mplug::pipeline::{Generated, GroundedBox, Pipeline, RankedText, ScoredLabel, Visual};
use mplug::tasks::retrieval::ScoreMatrix;
use mplug::BeamConfig;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// Where a job's result goes.
type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// One request's inputs with its reply channel and its place among the requests in flight
/// (held until the job is answered, so that the in-flight limit counts queued work even when
/// its client has gone).
struct Item<I, T> {
    input: I,
    reply: Reply<T>,
    permit: OwnedSemaphorePermit,
}

struct CaptionIn {
    image: Tensor,
    beam: BeamConfig,
}

struct AnswerIn {
    image: Tensor,
    question: String,
    beam: BeamConfig,
}

struct RankIn {
    image: Tensor,
    question: String,
    answers: Vec<String>,
    k: usize,
}

struct GroundIn {
    image: Letterboxed,
    expression: String,
}

struct RetrieveIn {
    images: Tensor,
    texts: Vec<String>,
    k: usize,
}

struct ClassifyIn {
    image: Tensor,
    labels: Vec<String>,
    template: String,
    itm: bool,
}

struct EmbedIn {
    images: Option<Tensor>,
    texts: Vec<String>,
}

/// A search's query: a text, or a preprocessed image `(3, R, R)`.
pub enum SearchQuery {
    /// Images matching a text.
    Text(String),
    /// Images like an image.
    Image(Tensor),
}

struct SearchIn {
    query: SearchQuery,
    options: SearchOptions,
}

/// `(image features, text features)`, L2-normalized, one row each.
pub type Embeddings = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// One queued request.
enum Job {
    Caption(Item<CaptionIn, Vec<Generated>>),
    Answer(Item<AnswerIn, Vec<Generated>>),
    Rank(Item<RankIn, Vec<RankedText>>),
    Ground(Item<GroundIn, GroundedBox>),
    Retrieve(Item<RetrieveIn, (ScoreMatrix, ScoreMatrix)>),
    Embed(Item<EmbedIn, Embeddings>),
    Classify(Item<ClassifyIn, Vec<ScoredLabel>>),
    Search(Item<SearchIn, Vec<Hit>>),
}

/// Which jobs may share one model call.
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

impl Job {
    fn key(&self) -> BatchKey {
        match self {
            Job::Caption(i) => BatchKey::Caption(BeamKey::of(&i.input.beam)),
            Job::Answer(i) => BatchKey::Answer(BeamKey::of(&i.input.beam)),
            Job::Ground(_) => BatchKey::Ground,
            _ => BatchKey::Alone,
        }
    }
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

/// Pixels of the images being decoded, server-wide: an upload reserves its width x height
/// (read from its header) before its pixels are decoded and frees them when its tensor is
/// made, so that concurrent large uploads wait instead of taking the server's memory.
#[derive(Debug, Clone)]
pub struct PixelBudget {
    semaphore: Arc<tokio::sync::Semaphore>,
    /// The budget, in pixels.
    pub total: u64,
}

impl PixelBudget {
    /// A budget of `total` pixels (at most `u32::MAX`, the most one reservation can hold).
    pub fn new(total: u64) -> Self {
        let total = total.clamp(1, u64::from(u32::MAX));
        PixelBudget {
            semaphore: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// Pixels reserved now.
    pub fn in_flight(&self) -> u64 {
        self.total
            .saturating_sub(self.semaphore.available_permits() as u64)
    }

    /// Waits until `pixels` are free and reserves them; a request larger than the whole
    /// budget is refused (422) naming it.
    async fn reserve(&self, pixels: u64, name: &str) -> Result<OwnedSemaphorePermit, ApiError> {
        if pixels > self.total {
            return Err(ApiError::unprocessable(format!(
                "{name} has {pixels} pixels, over the {} pixels this server decodes at once \
                 (--max-pixels-in-flight)",
                self.total
            )));
        }
        self.semaphore
            .clone()
            .acquire_many_owned(pixels as u32)
            .await
            .map_err(|_| ApiError::internal("the pixel budget closed"))
    }
}

/// The shared model and its queue.
pub struct Engine {
    pipeline: Pipeline,
    /// The image index `POST /v1/search` ranks (a retrieval model's engine).
    index: Option<Mutex<Box<dyn IndexStore>>>,
    pixels: PixelBudget,
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

/// Runs `f` on a blocking thread (image decoding, tokenizing: work that must not stall the
/// async runtime).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("a worker thread failed: {e}"))))
}

impl Engine {
    /// An engine around a pipeline (its image limits already set); at most `max_batch`
    /// requests share a model call, and images are decoded within `pixels`.
    pub fn new(pipeline: Pipeline, max_batch: usize, pixels: PixelBudget) -> Self {
        Engine {
            pipeline,
            index: None,
            pixels,
            queue: Mutex::new(VecDeque::new()),
            compute: Mutex::new(()),
            max_batch: max_batch.max(1),
            stats: BatchStats::default(),
        }
    }

    /// The engine with an image index for [`search`](Self::search) (made by this engine's
    /// retrieval model).
    pub fn with_index(mut self, index: Box<dyn IndexStore>) -> Self {
        self.index = Some(Mutex::new(index));
        self
    }

    /// Whether the engine has an image index.
    pub fn has_index(&self) -> bool {
        self.index.is_some()
    }

    /// The model with its tokenizer and preprocessing.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Checks that a text encodes for the model; `what` names it in the error.
    pub fn check_text(&self, text: &str, what: &str) -> Result<(), ApiError> {
        self.pipeline
            .check_text(text)
            .map_err(|e| ApiError::unprocessable(format!("{what}: {e}")))
    }

    /// Checks that closed-list answers encode (none empty, each within the positions).
    pub fn check_answers(&self, answers: &[String]) -> Result<(), ApiError> {
        self.pipeline
            .check_answers(answers)
            .map_err(|e| ApiError::unprocessable(format!("answers: {e}")))
    }

    /// Reserves an encoded image's pixels in the budget, read from its header.
    async fn reserve(&self, bytes: &Bytes, name: &str) -> Result<OwnedSemaphorePermit, ApiError> {
        let (w, h) = self
            .pipeline
            .image_dimensions(bytes, name)
            .map_err(ApiError::model)?;
        self.pixels.reserve(u64::from(w) * u64::from(h), name).await
    }

    /// Decodes and normalizes one encoded image to `(3, R, R)` on a blocking thread, within
    /// the pixel budget.
    pub async fn image(self: &Arc<Self>, bytes: Bytes, name: &str) -> Result<Tensor, ApiError> {
        let reserved = self.reserve(&bytes, name).await?;
        let (engine, name) = (self.clone(), name.to_string());
        blocking(move || {
            let t = engine
                .pipeline
                .preprocess_bytes(&bytes, &name)
                .map_err(ApiError::model);
            drop(reserved);
            t
        })
        .await
    }

    /// Decodes encoded images into `(N, 3, R, R)`, one after the other; they are named
    /// `images[i]` in errors.
    pub async fn images(self: &Arc<Self>, images: Vec<Bytes>) -> Result<Tensor, ApiError> {
        let mut tensors = Vec::with_capacity(images.len());
        for (i, b) in images.into_iter().enumerate() {
            tensors.push(self.image(b, &format!("images[{i}]")).await?);
        }
        Tensor::stack(&tensors, 0).map_err(internal)
    }

    /// Decodes one encoded image and letterboxes it for grounding, on a blocking thread,
    /// within the pixel budget.
    pub async fn letterboxed(
        self: &Arc<Self>,
        bytes: Bytes,
        name: &str,
    ) -> Result<Letterboxed, ApiError> {
        let reserved = self.reserve(&bytes, name).await?;
        let (engine, name) = (self.clone(), name.to_string());
        blocking(move || {
            let l = engine
                .pipeline
                .letterbox_bytes(&bytes, &name)
                .map_err(ApiError::model);
            drop(reserved);
            l
        })
        .await
    }

    /// Captions of one image `(3, R, R)`, best first.
    pub async fn caption(
        self: &Arc<Self>,
        image: Tensor,
        beam: BeamConfig,
        permit: OwnedSemaphorePermit,
    ) -> Result<Vec<Generated>, ApiError> {
        self.submit(permit, Job::Caption, CaptionIn { image, beam })
            .await
    }

    /// Free-form answers to a question about one image, best first.
    pub async fn answer(
        self: &Arc<Self>,
        image: Tensor,
        question: String,
        beam: BeamConfig,
        permit: OwnedSemaphorePermit,
    ) -> Result<Vec<Generated>, ApiError> {
        let input = AnswerIn {
            image,
            question,
            beam,
        };
        self.submit(permit, Job::Answer, input).await
    }

    /// The best `k` of a closed list of answers to a question about one image.
    pub async fn rank(
        self: &Arc<Self>,
        image: Tensor,
        question: String,
        answers: Vec<String>,
        k: usize,
        permit: OwnedSemaphorePermit,
    ) -> Result<Vec<RankedText>, ApiError> {
        let input = RankIn {
            image,
            question,
            answers,
            k,
        };
        self.submit(permit, Job::Rank, input).await
    }

    /// The box an expression refers to in a letterboxed image.
    pub async fn ground(
        self: &Arc<Self>,
        image: Letterboxed,
        expression: String,
        permit: OwnedSemaphorePermit,
    ) -> Result<GroundedBox, ApiError> {
        let input = GroundIn { image, expression };
        self.submit(permit, Job::Ground, input).await
    }

    /// `(image -> text, text -> image)` retrieval scores ([`Pipeline::retrieve`]).
    pub async fn retrieve(
        self: &Arc<Self>,
        images: Tensor,
        texts: Vec<String>,
        k: usize,
        permit: OwnedSemaphorePermit,
    ) -> Result<(ScoreMatrix, ScoreMatrix), ApiError> {
        let input = RetrieveIn { images, texts, k };
        self.submit(permit, Job::Retrieve, input).await
    }

    /// ITC features of images and texts (either may be empty).
    pub async fn embed(
        self: &Arc<Self>,
        images: Option<Tensor>,
        texts: Vec<String>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Embeddings, ApiError> {
        let input = EmbedIn { images, texts };
        self.submit(permit, Job::Embed, input).await
    }

    /// Zero-shot labels of one image, best first ([`Pipeline::classify`]).
    pub async fn classify(
        self: &Arc<Self>,
        image: Tensor,
        labels: Vec<String>,
        template: String,
        itm: bool,
        permit: OwnedSemaphorePermit,
    ) -> Result<Vec<ScoredLabel>, ApiError> {
        let input = ClassifyIn {
            image,
            labels,
            template,
            itm,
        };
        self.submit(permit, Job::Classify, input).await
    }

    /// The indexed images that best match a query ([`IndexStore::search`]).
    pub async fn search(
        self: &Arc<Self>,
        query: SearchQuery,
        options: SearchOptions,
        permit: OwnedSemaphorePermit,
    ) -> Result<Vec<Hit>, ApiError> {
        let input = SearchIn { query, options };
        self.submit(permit, Job::Search, input).await
    }

    /// Queues a job and waits for its result.
    async fn submit<I, T>(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        job: impl FnOnce(Item<I, T>) -> Job,
        input: I,
    ) -> Result<T, ApiError> {
        let (reply, rx) = oneshot::channel();
        lock(&self.queue).push_back(job(Item {
            input,
            reply,
            permit,
        }));
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
            let key = first.key();
            let mut batch = vec![first];
            if key != BatchKey::Alone {
                let mut i = 0;
                while i < queue.len() && batch.len() < self.max_batch {
                    if queue[i].key() == key {
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
        let p = &self.pipeline;
        macro_rules! items {
            ($variant:ident) => {
                batch
                    .into_iter()
                    .filter_map(|j| match j {
                        Job::$variant(item) => Some(item),
                        _ => None,
                    })
                    .collect()
            };
        }
        match batch.first() {
            None => {}
            Some(Job::Caption(_)) => run_batched(items!(Caption), |ins: &[&CaptionIn]| {
                let images = stack(ins.iter().map(|i| &i.image))?;
                p.caption(&images, &ins[0].beam).map_err(ApiError::model)
            }),
            Some(Job::Answer(_)) => run_batched(items!(Answer), |ins: &[&AnswerIn]| {
                let images = stack(ins.iter().map(|i| &i.image))?;
                let questions: Vec<&str> = ins.iter().map(|i| i.question.as_str()).collect();
                p.answer(&images, &questions, &ins[0].beam)
                    .map_err(ApiError::model)
            }),
            Some(Job::Ground(_)) => run_batched(items!(Ground), |ins: &[&GroundIn]| {
                let images = stack(ins.iter().map(|i| &i.image.image))?;
                let infos: Vec<_> = ins.iter().map(|i| i.image.info).collect();
                let exprs: Vec<&str> = ins.iter().map(|i| i.expression.as_str()).collect();
                p.ground_letterboxed(&images, &infos, &exprs)
                    .map_err(ApiError::model)
            }),
            Some(Job::Rank(_)) => run_batched(items!(Rank), |ins: &[&RankIn]| {
                let i = ins[0];
                let image = i.image.unsqueeze(0).map_err(internal)?;
                p.rank_answers(&image, &[&i.question], &i.answers, i.k)
                    .map_err(ApiError::model)
            }),
            Some(Job::Retrieve(_)) => run_batched(items!(Retrieve), |ins: &[&RetrieveIn]| {
                let i = ins[0];
                Ok(vec![p
                    .retrieve(&i.images, &i.texts, i.k)
                    .map_err(ApiError::model)?])
            }),
            Some(Job::Classify(_)) => run_batched(items!(Classify), |ins: &[&ClassifyIn]| {
                let i = ins[0];
                let image = i.image.unsqueeze(0).map_err(internal)?;
                p.classify(Visual::Images(&image), &i.labels, &i.template, i.itm)
                    .map_err(ApiError::model)
            }),
            Some(Job::Embed(_)) => run_batched(items!(Embed), |ins: &[&EmbedIn]| {
                let i = ins[0];
                let images = match &i.images {
                    Some(t) => p.embed_images(Visual::Images(t)).map_err(ApiError::model)?,
                    None => Vec::new(),
                };
                let texts = if i.texts.is_empty() {
                    Vec::new()
                } else {
                    p.embed_texts(&i.texts).map_err(ApiError::model)?
                };
                Ok(vec![(images, texts)])
            }),
            Some(Job::Search(_)) => run_batched(items!(Search), |ins: &[&SearchIn]| {
                let i = ins[0];
                let index = self
                    .index
                    .as_ref()
                    .ok_or_else(|| ApiError::unprocessable("this server has no image index"))?;
                let query = match &i.query {
                    SearchQuery::Text(t) => Query::Text(t),
                    SearchQuery::Image(image) => Query::Image(image),
                };
                Ok(vec![lock(index)
                    .search(p, query, &i.options)
                    .map_err(ApiError::model)?])
            }),
        }
    }
}

/// Runs `f` on the inputs of `items` as one model call (one output per input) and answers each;
/// when a batch of several fails, each item runs alone, so that one bad item does not fail the
/// others.
fn run_batched<I, T>(items: Vec<Item<I, T>>, f: impl Fn(&[&I]) -> Result<Vec<T>, ApiError>) {
    let inputs: Vec<&I> = items.iter().map(|i| &i.input).collect();
    let results: Vec<Result<T, ApiError>> = match f(&inputs) {
        Ok(outputs) if outputs.len() == items.len() => outputs.into_iter().map(Ok).collect(),
        Ok(_) => items
            .iter()
            .map(|_| Err(internal("the model returned a wrong number of results")))
            .collect(),
        Err(_) if items.len() > 1 => inputs
            .iter()
            .map(|i| {
                f(std::slice::from_ref(i))
                    .and_then(|mut o| o.pop().ok_or_else(|| internal("no result")))
            })
            .collect(),
        Err(e) => vec![Err(e)],
    };
    drop(inputs);
    for (item, result) in items.into_iter().zip(results) {
        // The place is free before the client hears back, so that a client sending its next
        // request at once is not refused.
        drop(item.permit);
        // The client may have gone; its result is dropped.
        let _ = item.reply.send(result);
    }
}

/// Images `(3, R, R)` stacked into `(N, 3, R, R)`.
fn stack<'a>(images: impl Iterator<Item = &'a Tensor>) -> Result<Tensor, ApiError> {
    let images: Vec<&Tensor> = images.collect();
    Tensor::stack(&images, 0).map_err(internal)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}
