//! `mplug serve`: one task's model behind an HTTP API.
//!
//! Endpoints (JSON bodies with base64 images, or `multipart/form-data` uploads):
//! `POST /v1/caption`, `/v1/vqa` (free answer, or rank `"answers"`), `/v1/ground`,
//! `/v1/retrieve`, `/v1/embed` (ITC features); `GET /healthz`, `/metrics` (Prometheus text),
//! `/v1/info`, `/openapi.json` and a web page at `/`. A server runs the task its model was made
//! for; the other task endpoints answer 422 naming it. Limits: body size (413), pixels, text
//! length and counts (422), requests in flight (503, with `Retry-After`), the time a body may
//! take to arrive (408). Every error is a JSON object; `/metrics` counts requests whose client
//! went away as status 499.
//! The model is shared by all requests; model calls run on blocking threads and requests that
//! wait together are batched ([`engine`]).

mod engine;
mod metrics;
mod openapi;
mod request;

use crate::model_args::{load_model, ConfigArgs};
use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use candle_core::Tensor;
use engine::{Engine, Output, Work};
use mplug::{BeamConfig, Task};
use request::{parse, ApiError, Parsed};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Options of `mplug serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A model folder or a checkpoint file (default: the embedded default model, serving
    /// `--task`, caption when not given).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model as a bare argument (the older form of `--model`).
    #[arg(conflicts_with = "model", hide = true, value_name = "MODEL")]
    pub model_path: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The task to serve (default: the model folder's, or what the checkpoint's keys show).
    #[arg(long, value_parser = ["caption", "vqa", "retrieval", "grounding"])]
    pub task: Option<String>,
    /// Address to listen on (port 0: any free port; the bound address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Largest request body in bytes (over it: 413).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most pixels (width x height) of an image (over it: 422).
    #[arg(long, default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// Longest question, expression, text or answer in characters (over it: 422).
    #[arg(long, default_value_t = 1000)]
    pub max_text_chars: usize,
    /// Most texts in a retrieve or embed request.
    #[arg(long, default_value_t = 64)]
    pub max_texts: usize,
    /// Most images in a retrieve or embed request.
    #[arg(long, default_value_t = 16)]
    pub max_images: usize,
    /// Most candidate answers in a VQA ranking request.
    #[arg(long, default_value_t = 1024)]
    pub max_answers: usize,
    /// Seconds a client may take to send its request body; a slower one gets 408 and frees its
    /// place among the requests in flight.
    #[arg(long, default_value_t = 30.0)]
    pub body_timeout: f64,
    /// Model requests accepted at once, queued or running (over it: 503).
    #[arg(long, default_value_t = 32)]
    pub max_in_flight: usize,
    /// Most requests answered by one batched model call.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
}

/// The limits a request is checked against.
#[derive(Debug, Clone, serde::Serialize)]
struct Limits {
    max_body_bytes: usize,
    body_timeout_s: f64,
    max_pixels: u64,
    max_text_chars: usize,
    max_texts: usize,
    max_images: usize,
    max_answers: usize,
    max_in_flight: usize,
    max_batch: usize,
    max_beam: usize,
    max_len: usize,
}

/// What every handler shares.
struct App {
    engine: Arc<Engine>,
    task: Task,
    limits: Limits,
    in_flight: Arc<Semaphore>,
    metrics: metrics::Metrics,
    info: Value,
}

type Shared = Arc<App>;

/// The task an endpoint needs.
fn endpoint_task(path: &str) -> Task {
    match path {
        "/v1/caption" => Task::Caption,
        "/v1/vqa" => Task::Vqa,
        "/v1/ground" => Task::Grounding,
        _ => Task::Retrieval,
    }
}

impl Limits {
    /// The time a request body may take to arrive.
    fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.body_timeout_s)
    }
}

impl App {
    /// Refuses an endpoint of another task with 422 naming the loaded one.
    fn require(&self, path: &str) -> Result<(), ApiError> {
        let needed = endpoint_task(path);
        if needed == self.task {
            return Ok(());
        }
        Err(ApiError::unprocessable(format!(
            "this server runs a {} model; {path} needs a {needed} model (start `mplug serve` with \
             one)",
            self.task
        )))
    }

    /// A place among the requests in flight, or 503.
    fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::busy(self.limits.max_in_flight))
    }

    /// Checks a text's length and that it tokenizes.
    fn text(&self, text: &str, what: &str) -> Result<(), ApiError> {
        let n = text.chars().count();
        if n > self.limits.max_text_chars {
            return Err(ApiError::unprocessable(format!(
                "{what} has {n} characters, over the limit of {}",
                self.limits.max_text_chars
            )));
        }
        self.engine.check_text(text, what)
    }

    /// Checks a list of texts: count and each text.
    fn texts(&self, texts: &[String], what: &str, max: usize) -> Result<(), ApiError> {
        if texts.len() > max {
            return Err(ApiError::unprocessable(format!(
                "{} {what}, over the limit of {max}",
                texts.len()
            )));
        }
        for (i, t) in texts.iter().enumerate() {
            self.text(t, &format!("{what}[{i}]"))?;
        }
        Ok(())
    }

    /// Decoding settings from a request's options, within the server's limits.
    fn beam(
        &self,
        o: &DecodeOptions,
        defaults: (usize, usize, usize),
    ) -> Result<BeamConfig, ApiError> {
        let beam = o.beam.unwrap_or(defaults.0);
        let min_len = o.min_len.unwrap_or(defaults.1);
        let max_len = o.max_len.unwrap_or(defaults.2);
        let n_best = o.n_best.unwrap_or(1);
        let l = &self.limits;
        if beam == 0 || beam > l.max_beam {
            return Err(ApiError::unprocessable(format!(
                "beam must be 1..={}, not {beam}",
                l.max_beam
            )));
        }
        if max_len == 0 || max_len > l.max_len || min_len > max_len {
            return Err(ApiError::unprocessable(format!(
                "lengths must satisfy min_len <= max_len <= {} and max_len >= 1 (got {min_len}, \
                 {max_len})",
                l.max_len
            )));
        }
        if n_best == 0 || n_best > beam {
            return Err(ApiError::unprocessable(format!(
                "n_best must be 1..=beam ({beam}), not {n_best}"
            )));
        }
        Ok(BeamConfig {
            beam_size: beam,
            min_length: min_len,
            max_length: max_len,
            n_best,
            ..BeamConfig::default()
        })
    }

    /// Decodes one image on a blocking thread.
    async fn image(
        self: &Arc<Self>,
        bytes: axum::body::Bytes,
        name: String,
    ) -> Result<Tensor, ApiError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.image(&bytes, &name))
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(format!("image decoding failed: {e}"))))
    }

    /// Decodes images on a blocking thread into `(N, 3, R, R)`.
    async fn images(self: &Arc<Self>, images: Vec<axum::body::Bytes>) -> Result<Tensor, ApiError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let tensors = images
                .iter()
                .enumerate()
                .map(|(i, b)| engine.image(b, &format!("images[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::stack(&tensors, 0).map_err(|e| ApiError::internal(e.to_string()))
        })
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("image decoding failed: {e}"))))
    }
}

/// Exactly one image, or 422.
fn one_image(images: Vec<axum::body::Bytes>) -> Result<axum::body::Bytes, ApiError> {
    let n = images.len();
    let mut it = images.into_iter();
    match (it.next(), n) {
        (Some(b), 1) => Ok(b),
        (None, _) => Err(ApiError::unprocessable(
            "no image: send `image` (base64 in JSON, or a file part)",
        )),
        _ => Err(ApiError::unprocessable(format!(
            "{n} images; this endpoint takes one"
        ))),
    }
}

/// Decoding options a request may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecodeOptions {
    beam: Option<usize>,
    min_len: Option<usize>,
    max_len: Option<usize>,
    n_best: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VqaBody {
    question: String,
    #[serde(default)]
    answers: Option<Vec<String>>,
    #[serde(default)]
    k: Option<usize>,
    beam: Option<usize>,
    min_len: Option<usize>,
    max_len: Option<usize>,
    n_best: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroundBody {
    expression: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrieveBody {
    texts: Vec<String>,
    #[serde(default)]
    k: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    #[serde(default)]
    texts: Vec<String>,
}

fn reply(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn unexpected() -> ApiError {
    ApiError::internal("the model returned an unexpected result")
}

/// `POST /v1/caption`: captions of one image.
async fn caption(State(app): State<Shared>, req: Request) -> Response {
    reply(caption_inner(app, req).await)
}

async fn caption_inner(app: Shared, req: Request) -> Result<Value, ApiError> {
    app.require("/v1/caption")?;
    let permit = app.permit()?;
    let Parsed { body, images } =
        parse::<DecodeOptions>(req, app.limits.max_body_bytes, app.limits.body_timeout()).await?;
    let beam = app.beam(&body, (5, 5, 20))?;
    let image = app.image(one_image(images)?, "image".into()).await?;
    match app
        .engine
        .submit(Work::Caption { image, beam }, permit)
        .await?
    {
        Output::Generated(hyps) => {
            let caps: Vec<Value> = hyps
                .iter()
                .map(|h| json!({"caption": h.text, "score": h.score}))
                .collect();
            Ok(json!({"captions": caps}))
        }
        _ => Err(unexpected()),
    }
}

/// `POST /v1/vqa`: a free answer, or the best of `answers`.
async fn vqa(State(app): State<Shared>, req: Request) -> Response {
    reply(vqa_inner(app, req).await)
}

async fn vqa_inner(app: Shared, req: Request) -> Result<Value, ApiError> {
    app.require("/v1/vqa")?;
    let permit = app.permit()?;
    let Parsed { body, images } =
        parse::<VqaBody>(req, app.limits.max_body_bytes, app.limits.body_timeout()).await?;
    app.text(&body.question, "question")?;
    // Every field is checked before the image is decoded.
    let rank = match &body.answers {
        Some(answers) => {
            if answers.is_empty() {
                return Err(ApiError::unprocessable("`answers` is empty"));
            }
            app.texts(answers, "answers", app.limits.max_answers)?;
            app.engine.check_answers(answers)?;
            let k = body.k.unwrap_or(5);
            if k == 0 {
                return Err(ApiError::unprocessable("k must be at least 1"));
            }
            Some((answers.clone(), k))
        }
        None => None,
    };
    let options = DecodeOptions {
        beam: body.beam,
        min_len: body.min_len,
        max_len: body.max_len,
        n_best: body.n_best,
    };
    let beam = app.beam(&options, (5, 1, 10))?;
    let image = app.image(one_image(images)?, "image".into()).await?;
    let question = body.question.clone();
    let work = match rank {
        Some((answers, k)) => Work::Rank {
            image,
            question,
            answers,
            k,
        },
        None => Work::Answer {
            image,
            question,
            beam,
        },
    };
    let out = app.engine.submit(work, permit).await?;
    match out {
        Output::Generated(hyps) => {
            let a: Vec<Value> = hyps
                .iter()
                .map(|h| json!({"answer": h.text, "score": h.score}))
                .collect();
            Ok(json!({"question": body.question, "ranked": false, "answers": a}))
        }
        Output::Ranked(ranked) => {
            let a: Vec<Value> = ranked
                .iter()
                .map(|r| json!({"answer": r.text, "index": r.index, "prob": r.prob}))
                .collect();
            Ok(json!({"question": body.question, "ranked": true, "answers": a}))
        }
        _ => Err(unexpected()),
    }
}

/// `POST /v1/ground`: the box an expression refers to, in pixels.
async fn ground(State(app): State<Shared>, req: Request) -> Response {
    reply(ground_inner(app, req).await)
}

async fn ground_inner(app: Shared, req: Request) -> Result<Value, ApiError> {
    app.require("/v1/ground")?;
    let permit = app.permit()?;
    let Parsed { body, images } =
        parse::<GroundBody>(req, app.limits.max_body_bytes, app.limits.body_timeout()).await?;
    app.text(&body.expression, "expression")?;
    let bytes = one_image(images)?;
    let engine = app.engine.clone();
    let (image, info) = tokio::task::spawn_blocking(move || engine.letterboxed(&bytes, "image"))
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("image decoding failed: {e}"))))?;
    let work = Work::Ground {
        image,
        info,
        expression: body.expression.clone(),
    };
    match app.engine.submit(work, permit).await? {
        Output::Box(b) => Ok(json!({
            "expression": body.expression,
            "box_xyxy": b.xyxy,
            "box_cxcywh_fraction": b.cxcywh,
            "image_width": info.original_width,
            "image_height": info.original_height,
        })),
        _ => Err(unexpected()),
    }
}

/// `POST /v1/retrieve`: texts ranked for images and images for texts.
async fn retrieve(State(app): State<Shared>, req: Request) -> Response {
    reply(retrieve_inner(app, req).await)
}

/// Checks the number of images of a multi-image request.
fn image_count(app: &App, n: usize, least: usize) -> Result<(), ApiError> {
    if n < least || n > app.limits.max_images {
        return Err(ApiError::unprocessable(format!(
            "{n} images; send {least} to {} (`images`: base64 strings, or file parts)",
            app.limits.max_images
        )));
    }
    Ok(())
}

async fn retrieve_inner(app: Shared, req: Request) -> Result<Value, ApiError> {
    app.require("/v1/retrieve")?;
    let permit = app.permit()?;
    let Parsed { body, images } =
        parse::<RetrieveBody>(req, app.limits.max_body_bytes, app.limits.body_timeout()).await?;
    if body.texts.is_empty() {
        return Err(ApiError::unprocessable("`texts` is empty"));
    }
    app.texts(&body.texts, "texts", app.limits.max_texts)?;
    image_count(&app, images.len(), 1)?;
    let k = body.k.unwrap_or(16);
    if k == 0 {
        return Err(ApiError::unprocessable("k must be at least 1"));
    }
    let n_images = images.len();
    let images = app.images(images).await?;
    let work = Work::Retrieve {
        images,
        texts: body.texts.clone(),
        k,
    };
    match app.engine.submit(work, permit).await? {
        Output::Scores(i2t, t2i) => {
            let by_image: Vec<Value> = i2t
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let mut order: Vec<usize> = (0..row.len()).collect();
                    order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
                    let texts: Vec<Value> = order
                        .iter()
                        .map(|&j| json!({"index": j, "text": body.texts[j], "score": row[j]}))
                        .collect();
                    json!({"image": i, "texts": texts})
                })
                .collect();
            let by_text: Vec<Value> = t2i
                .iter()
                .enumerate()
                .map(|(j, row)| {
                    let mut order: Vec<usize> = (0..row.len()).collect();
                    order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
                    let imgs: Vec<Value> = order
                        .iter()
                        .map(|&i| json!({"image": i, "score": row[i]}))
                        .collect();
                    json!({"text": j, "images": imgs})
                })
                .collect();
            Ok(json!({
                "images": n_images,
                "image_to_text": by_image,
                "text_to_image": by_text,
                "note": "scores are ITM logits (the match class's logit, not a probability) for each row's ITC top k, at most the row's candidates; -100 outside it",
            }))
        }
        _ => Err(unexpected()),
    }
}

/// `POST /v1/embed`: ITC features of images and texts.
async fn embed(State(app): State<Shared>, req: Request) -> Response {
    reply(embed_inner(app, req).await)
}

async fn embed_inner(app: Shared, req: Request) -> Result<Value, ApiError> {
    app.require("/v1/embed")?;
    let permit = app.permit()?;
    let Parsed { body, images } =
        parse::<EmbedBody>(req, app.limits.max_body_bytes, app.limits.body_timeout()).await?;
    if body.texts.is_empty() && images.is_empty() {
        return Err(ApiError::unprocessable(
            "nothing to embed: send `images` and/or `texts`",
        ));
    }
    app.texts(&body.texts, "texts", app.limits.max_texts)?;
    image_count(&app, images.len(), 0)?;
    let images = if images.is_empty() {
        None
    } else {
        Some(app.images(images).await?)
    };
    let work = Work::Embed {
        images,
        texts: body.texts,
    };
    match app.engine.submit(work, permit).await? {
        Output::Embeddings(img, txt) => Ok(json!({
            "dim": app.engine.pipeline().model().config.embed_dim,
            "image_embeddings": img,
            "text_embeddings": txt,
        })),
        _ => Err(unexpected()),
    }
}

/// `GET /healthz`.
async fn healthz(State(app): State<Shared>) -> Json<Value> {
    Json(json!({"status": "ok", "task": app.task.name()}))
}

/// `GET /v1/info`: task, configuration and limits.
async fn info(State(app): State<Shared>) -> Json<Value> {
    Json(app.info.clone())
}

/// `GET /metrics`: Prometheus text.
async fn metrics_text(State(app): State<Shared>) -> Response {
    let in_flight = app.limits.max_in_flight - app.in_flight.available_permits();
    let body = app.metrics.render(
        app.task.name(),
        in_flight,
        app.limits.max_in_flight,
        &app.engine.stats,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /openapi.json`.
async fn openapi_json(State(app): State<Shared>) -> Json<Value> {
    Json(openapi::document(
        app.task,
        app.limits.max_beam,
        app.limits.max_len,
    ))
}

/// The web page.
const PAGE: &str = include_str!("page.html");

/// `GET /`: the web page.
async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// Any other path: 404 as JSON.
async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {}; see /openapi.json", req.uri().path()),
    )
}

/// A known path with another method: 405 as JSON.
async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}; see /openapi.json",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Status recorded for a request whose client went away before the answer (nginx's 499).
const CLIENT_CLOSED: u16 = 499;

/// Records one request when dropped: with its answer's status, or as [`CLIENT_CLOSED`] when
/// the client disconnected first (hyper then drops the handler without an answer).
struct Tracked {
    app: Shared,
    endpoint: &'static str,
    start: Instant,
    status: u16,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.app
            .metrics
            .record(self.endpoint, self.status, self.start.elapsed());
    }
}

/// Counts requests and their latency, abandoned ones included.
async fn track(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let mut tracked = Tracked {
        endpoint: metrics::endpoint(req.uri().path()),
        app,
        start: Instant::now(),
        status: CLIENT_CLOSED,
    };
    let resp = next.run(req).await;
    tracked.status = resp.status().as_u16();
    resp
}

fn router(app: Shared) -> Router {
    // Bodies are read by `request::parse` under the server's limit; the multipart reader
    // gets the same limit.
    let limit = axum::extract::DefaultBodyLimit::max(app.limits.max_body_bytes);
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/info", get(info))
        .route("/v1/caption", post(caption))
        .route("/v1/vqa", post(vqa))
        .route("/v1/ground", post(ground))
        .route("/v1/retrieve", post(retrieve))
        .route("/v1/embed", post(embed))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(limit)
        .layer(axum::middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// Runs `mplug serve` until interrupted.
pub fn run(a: &ServeArgs) -> Result<()> {
    if !(a.body_timeout.is_finite() && a.body_timeout > 0.0 && a.body_timeout <= 86_400.0) {
        anyhow::bail!(
            "--body-timeout must be a number of seconds in (0, 86400], not {}",
            a.body_timeout
        );
    }
    let mut task = a.task.as_deref().map(Task::parse).transpose()?;
    let start = Instant::now();
    let path = match a.model.as_ref().or(a.model_path.as_ref()) {
        Some(p) => p.clone(),
        None => {
            // The embedded default serves every task from one folder; one server runs one
            // task, caption unless named.
            let t = *task.get_or_insert(Task::Caption);
            crate::default_model::for_task(Some(t))?
        }
    };
    let model = load_model(&path, &a.config, task)?;
    let task = model.task;
    let cfg = model.pipeline.model().config.clone();
    let limits = Limits {
        max_body_bytes: a.max_body_bytes,
        body_timeout_s: a.body_timeout,
        max_pixels: a.max_pixels,
        max_text_chars: a.max_text_chars,
        max_texts: a.max_texts,
        max_images: a.max_images.max(1),
        max_answers: a.max_answers.max(1),
        max_in_flight: a.max_in_flight.max(1),
        max_batch: a.max_batch.max(1),
        max_beam: 16,
        max_len: 64
            .min(cfg.bert.max_position_embeddings.saturating_sub(1))
            .max(1),
    };
    let engine = Engine::new(model, a.max_pixels, limits.max_batch)?;
    let endpoint = match task {
        Task::Caption => vec!["/v1/caption"],
        Task::Vqa => vec!["/v1/vqa"],
        Task::Grounding => vec!["/v1/ground"],
        Task::Retrieval => vec!["/v1/retrieve", "/v1/embed"],
        Task::Pretrain => anyhow::bail!(
            "{} is a pre-training model, which serves no endpoint; serve a fine-tuned \
             caption, vqa, retrieval or grounding model",
            path.display()
        ),
    };
    let info = json!({
        "task": task.name(),
        "endpoints": endpoint,
        "model": path,
        "config": cfg,
        "limits": limits,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let app = Arc::new(App {
        engine: Arc::new(engine),
        task,
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        limits,
        metrics: metrics::Metrics::default(),
        info,
    });
    eprintln!(
        "mplug serve: loaded a {task} model from {} in {:.2} s",
        path.display(),
        start.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.addr)
            .await
            .with_context(|| format!("cannot listen on {}", a.addr))?;
        let local = listener.local_addr()?;
        eprintln!("mplug serve: listening on http://{local}");
        axum::serve(listener, router(app))
            .with_graceful_shutdown(async {
                // Without a signal handler the server runs until killed.
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
                eprintln!("mplug serve: shutting down");
            })
            .await
            .context("the server stopped")
    })
}
