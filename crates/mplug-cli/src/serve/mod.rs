//! `mplug serve`: one task's model behind an HTTP API.
//!
//! Endpoints (JSON bodies with base64 images, or `multipart/form-data` uploads):
//! `POST /v1/caption`, `/v1/vqa` (free answer, or rank `"answers"`), `/v1/ground`,
//! `/v1/retrieve`, `/v1/embed` (ITC features), `/v1/classify`, `/v1/search` (an image index,
//! with `--index` or `--store`); `GET /healthz`, `/metrics` (Prometheus text),
//! `/v1/info`, `/openapi.json` and a web page at `/`. A server runs the task its model was made
//! for; the other task endpoints answer 422 naming it. Limits: body size (413), pixels, text
//! length and counts (422), requests in flight (503, with `Retry-After`), the time a body may
//! take to arrive (408). Every error is a JSON object; `/metrics` counts requests whose client
//! went away as status 499.
//! The model is shared by all requests; model calls run on blocking threads and requests that
//! wait together are batched ([`engine`]).

mod endpoints;
mod engine;
mod handlers;
mod metrics;
mod openai;
mod openapi;
mod pages;
mod request;

use crate::model_args::{load_model, ConfigArgs, WeightDtype};
use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use engine::Engine;
use handlers::DecodeOptions;
use mplug::{BeamConfig, Task};
use request::ApiError;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Options of `mplug serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A model to serve: a model folder or a checkpoint file (a multi-task folder serves each
    /// of its tasks), or `TASK=MODEL` to answer one task's endpoints with that model. Repeat
    /// for several models in one server (`--model caption=DIR --model grounding=DIR2`). Default:
    /// the embedded default model, serving caption, vqa, retrieval and grounding.
    #[arg(long, value_name = "[TASK=]MODEL")]
    pub model: Vec<String>,
    /// The model as a bare argument (the older form of `--model`).
    #[arg(conflicts_with = "model", hide = true, value_name = "MODEL")]
    pub model_path: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Serve only this task (default: every task of the models; a checkpoint file's is the
    /// one its folder names or its keys show).
    #[arg(long, value_parser = crate::model_args::task_parser())]
    pub task: Option<Task>,
    /// Address to listen on (port 0: any free port; the bound address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Weights in memory for every model served: `f32`, `bf16` or `int8` (as for the task
    /// commands' `--dtype`).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: WeightDtype,
    /// Largest request body in bytes (over it: 413).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most pixels (width x height) of an image (over it: 422).
    #[arg(long, default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// Most pixels of the images being decoded at once, all requests together: an upload waits
    /// until its pixels fit (a 40-megapixel image takes about 120 MB while it is decoded).
    #[arg(long, default_value_t = 100_000_000)]
    pub max_pixels_in_flight: u64,
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
    /// Answer `POST /v1/search` from this image index folder (made by `mplug index` with the
    /// served retrieval model; re-read when indexing changes it).
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    pub index: Option<PathBuf>,
    /// Answer `POST /v1/search` from this PostgreSQL index (`mplug index --store URL`).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// The limits a request is checked against.
#[derive(Debug, Clone, serde::Serialize)]
struct Limits {
    max_body_bytes: usize,
    body_timeout_s: f64,
    max_pixels: u64,
    max_pixels_in_flight: u64,
    max_text_chars: usize,
    max_texts: usize,
    max_images: usize,
    max_answers: usize,
    max_in_flight: usize,
    max_batch: usize,
    max_beam: usize,
    max_len: usize,
}

impl Limits {
    /// The time a request body may take to arrive.
    fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.body_timeout_s)
    }
}

/// A loaded model and the tasks it answers.
struct Served {
    engine: Arc<Engine>,
    tasks: Vec<Task>,
}

/// What every handler shares.
struct App {
    models: Vec<Served>,
    /// The pixels of images being decoded, shared by every model.
    pixels: engine::PixelBudget,
    /// When the server started, in seconds since the epoch (`/v1/models`' `created`).
    started: u64,
    limits: Limits,
    in_flight: Arc<Semaphore>,
    metrics: metrics::Metrics,
    info: Value,
}

type Shared = Arc<App>;

impl App {
    /// The tasks the server answers.
    fn tasks(&self) -> Vec<Task> {
        self.models.iter().flat_map(|m| m.tasks.clone()).collect()
    }

    /// The tasks' names, comma-separated.
    fn task_names(&self) -> String {
        let names: Vec<&str> = self.tasks().iter().map(|t| t.name()).collect();
        names.join(",")
    }

    /// The engine of the model that answers `task`, or 422 naming what the server runs.
    fn engine(&self, task: Task, path: &str) -> Result<Arc<Engine>, ApiError> {
        if let Some(m) = self.models.iter().find(|m| m.tasks.contains(&task)) {
            return Ok(m.engine.clone());
        }
        Err(ApiError::unprocessable(format!(
            "this server runs a {} model; {path} needs a {task} model (start `mplug serve` with \
             one)",
            self.task_names()
        )))
    }

    /// A place among the requests in flight, or 503.
    fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::busy(self.limits.max_in_flight))
    }

    /// Checks a text's length and that it encodes for `engine`'s model.
    fn text(&self, engine: &Engine, text: &str, what: &str) -> Result<(), ApiError> {
        let n = text.chars().count();
        if n > self.limits.max_text_chars {
            return Err(ApiError::unprocessable(format!(
                "{what} has {n} characters, over the limit of {}",
                self.limits.max_text_chars
            )));
        }
        engine.check_text(text, what)
    }

    /// Checks a list of texts: count and each text.
    fn texts(
        &self,
        engine: &Engine,
        texts: &[String],
        what: &str,
        max: usize,
    ) -> Result<(), ApiError> {
        if texts.len() > max {
            return Err(ApiError::unprocessable(format!(
                "{} {what}, over the limit of {max}",
                texts.len()
            )));
        }
        for (i, t) in texts.iter().enumerate() {
            self.text(engine, t, &format!("{what}[{i}]"))?;
        }
        Ok(())
    }

    /// Decoding settings: the task's `reference` with a request's options, within the
    /// server's limits.
    fn beam(&self, o: &DecodeOptions, reference: BeamConfig) -> Result<BeamConfig, ApiError> {
        let beam = o.beam.unwrap_or(reference.beam_size);
        let max_len = o.max_len.unwrap_or(reference.max_length);
        // A `max_len` below the reference's minimum lowers the minimum with it, as on the
        // command line; an explicit `min_len` above `max_len` is refused.
        let min_len = o.min_len.unwrap_or(reference.min_length.min(max_len));
        let n_best = o.n_best.unwrap_or(reference.n_best);
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
            ..reference
        })
    }
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

/// Counts requests and their latency, abandoned ones included; a path outside the route
/// table is counted as `other`, so that scanning clients cannot grow the label set.
async fn track(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let mut tracked = Tracked {
        endpoint: endpoints::route(req.uri().path()).map_or("other", |r| r.path),
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
    endpoints::ROUTES
        .iter()
        .fold(Router::new(), |r, route| {
            r.route(route.path, (route.handler)())
        })
        .fallback(pages::not_found)
        .method_not_allowed_fallback(pages::method_not_allowed)
        .layer(limit)
        .layer(axum::middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// Inputs that fit a model, for the web page, from its folder's `examples/examples.json` (the
/// default model ships one): a question, a referring expression, texts to match and labels to
/// classify by. `None` when the folder has none.
fn model_examples(model: &std::path::Path) -> Option<Value> {
    let file = model.join("examples").join("examples.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    let first = |key: &str| -> Value {
        v["images"]
            .as_array()
            .and_then(|images| images.iter().find_map(|i| i[key].get(0).cloned()))
            .unwrap_or(Value::Null)
    };
    let texts = v["texts"].clone();
    // Labels: the short texts (`a blue square`), written as they are (the template `{}`: a
    // small model's vocabulary may lack the words of "a photo of ...").
    let labels: Vec<&str> = texts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| t.split_whitespace().count() <= 3)
        .collect();
    Some(json!({
        "question": first("questions"),
        "expression": first("expressions"),
        "texts": texts,
        "labels": labels,
        "template": "{}",
    }))
}

/// A `--model` value: `TASK=MODEL` when the part before the first `=` is a task's name, else
/// the whole value is the model's path.
fn model_spec(value: &str) -> Result<(Option<Task>, PathBuf)> {
    if let Some((name, path)) = value.split_once('=') {
        if let Ok(task) = Task::parse(name) {
            if path.is_empty() {
                anyhow::bail!("--model {value}: no model after `{name}=`");
            }
            return Ok((Some(task), PathBuf::from(path)));
        }
    }
    Ok((None, PathBuf::from(value)))
}

/// The models of a server, one per task it answers, in the order asked: `(task, path,
/// model)`. A model named without a task serves `--task`, else every task of a multi-task
/// folder, else the one task its folder names or its keys show. Two models for one task, a
/// pre-training model, and a `--task` no model serves are errors.
fn load_models(a: &ServeArgs) -> Result<Vec<(Task, PathBuf, mplug::model_dir::LoadedModel)>> {
    let mut specs = a
        .model
        .iter()
        .map(|v| model_spec(v))
        .collect::<Result<Vec<_>>>()?;
    if let Some(p) = &a.model_path {
        specs.push((None, p.clone()));
    }
    let mut wanted: Vec<(Option<Task>, PathBuf)> = Vec::new();
    if specs.is_empty() {
        // The embedded default: its general folder answers caption, VQA and retrieval, its
        // grounding folder grounding.
        let tasks = match a.task {
            Some(t) => vec![t],
            None => vec![Task::Caption, Task::Vqa, Task::Retrieval, Task::Grounding],
        };
        for t in tasks {
            wanted.push((Some(t), crate::default_model::for_task(Some(t))?));
        }
    }
    for (task, path) in specs {
        match task.or(a.task) {
            Some(t) => wanted.push((Some(t), path)),
            None => {
                let source = crate::model_args::locate(&path, &a.config, None)?;
                if source.tasks.is_empty() {
                    wanted.push((None, path));
                } else {
                    wanted.extend(source.tasks.iter().map(|&t| (Some(t), path.clone())));
                }
            }
        }
    }
    let mut loaded: Vec<(Task, PathBuf, mplug::model_dir::LoadedModel)> = Vec::new();
    for (task, path) in wanted {
        let model = load_model(&path, &a.config, task, a.dtype)?;
        let task = model.task;
        if task == Task::Pretrain {
            anyhow::bail!(
                "{} is a pre-training model, which serves no endpoint; serve a fine-tuned \
                 caption, vqa, retrieval or grounding model",
                path.display()
            );
        }
        if let Some((_, other, _)) = loaded.iter().find(|(t, _, _)| *t == task) {
            anyhow::bail!(
                "two models for {task}: {} and {}; name one per task (--model {task}=MODEL)",
                other.display(),
                path.display()
            );
        }
        loaded.push((task, path, model));
    }
    if let Some(t) = a.task {
        loaded.retain(|(task, _, _)| *task == t);
        if loaded.is_empty() {
            anyhow::bail!("no model given serves {t}");
        }
    }
    Ok(loaded)
}

/// The image index of `--index` / `--store`, opened for the served retrieval model (which
/// must be the model that made it).
fn search_index(
    a: &ServeArgs,
    loaded: &[(Task, PathBuf, mplug::model_dir::LoadedModel)],
) -> Result<Option<Box<dyn mplug::index::IndexStore>>> {
    use mplug::index::{ModelIdentity, OpenOptions};
    let Some(location) = crate::index_cmd::location(&a.index, &a.store) else {
        return Ok(None);
    };
    let Some((_, path, _)) = loaded.iter().find(|(t, _, _)| *t == Task::Retrieval) else {
        anyhow::bail!("--index and --store need a retrieval model to search with");
    };
    let source = crate::model_args::locate(path, &a.config, Some(Task::Retrieval))?;
    let identity =
        ModelIdentity::of_checkpoint(&source.config, &source.checkpoint, a.dtype.format())?;
    let options = OpenOptions {
        existing: true,
        ..OpenOptions::default()
    };
    let store = mplug::index::open(&location, &identity, options)
        .with_context(|| format!("opening the index in {}", location.describe()))?;
    Ok(Some(store))
}

/// Runs `mplug serve` until interrupted.
pub fn run(a: &ServeArgs) -> Result<()> {
    if !(a.body_timeout.is_finite() && a.body_timeout > 0.0 && a.body_timeout <= 86_400.0) {
        anyhow::bail!(
            "--body-timeout must be a number of seconds in (0, 86400], not {}",
            a.body_timeout
        );
    }
    let start = Instant::now();
    let loaded = load_models(a)?;
    let max_positions = loaded
        .iter()
        .map(|(_, _, m)| m.pipeline.model().config.bert.max_position_embeddings)
        .min()
        .unwrap_or(1);
    let limits = Limits {
        max_body_bytes: a.max_body_bytes,
        body_timeout_s: a.body_timeout,
        max_pixels: a.max_pixels,
        max_pixels_in_flight: a.max_pixels_in_flight.clamp(1, u64::from(u32::MAX)),
        max_text_chars: a.max_text_chars,
        max_texts: a.max_texts,
        max_images: a.max_images.max(1),
        max_answers: a.max_answers.max(1),
        max_in_flight: a.max_in_flight.max(1),
        max_batch: a.max_batch.max(1),
        max_beam: 16,
        max_len: 64.min(max_positions.saturating_sub(1)).max(1),
    };
    let tasks: Vec<Task> = loaded.iter().map(|(t, _, _)| *t).collect();
    let names: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
    let endpoints: Vec<&str> = endpoints::served(&tasks).map(|r| r.path).collect();
    let models_info: Vec<Value> = loaded
        .iter()
        .map(|(task, path, m)| {
            json!({
                "task": task.name(),
                "model": path,
                "endpoints": endpoints::served(&[*task]).map(|r| r.path).collect::<Vec<_>>(),
                "config": m.pipeline.model().config,
            })
        })
        .collect();
    let examples = loaded
        .iter()
        .find_map(|(_, path, _)| model_examples(path))
        .unwrap_or(Value::Null);
    let (_, first_path, first) = &loaded[0];
    let info = json!({
        "task": names.join(","),
        "tasks": names,
        "endpoints": endpoints,
        "model": first_path,
        "config": first.pipeline.model().config,
        "models": models_info,
        "examples": examples,
        "limits": limits,
        "dtype": a.dtype.name(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let pixels = engine::PixelBudget::new(limits.max_pixels_in_flight);
    let mut index = search_index(a, &loaded)?;
    let mut models = Vec::new();
    for (task, path, model) in loaded {
        eprintln!("mplug serve: {task} from {}", path.display());
        let pipeline = model.pipeline.with_max_pixels(a.max_pixels)?;
        let mut engine = Engine::new(pipeline, limits.max_batch, pixels.clone());
        if task == Task::Retrieval {
            if let Some(store) = index.take() {
                eprintln!("mplug serve: searching the index in {}", store.location());
                engine = engine.with_index(store);
            }
        }
        models.push(Served {
            engine: Arc::new(engine),
            tasks: vec![task],
        });
    }
    let app = Arc::new(App {
        models,
        pixels,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        limits,
        metrics: metrics::Metrics::default(),
        info,
    });
    eprintln!(
        "mplug serve: loaded {} in {:.2} s",
        app.task_names(),
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
