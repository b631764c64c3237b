//! OpenAI-compatible endpoints, so that clients written for OpenAI's API (its Python and
//! JavaScript libraries and the tools built on them, which also speak to vLLM, llama.cpp's
//! server or Ollama) use mplug unchanged:
//!
//! - `GET /v1/models`: one model per task the server answers, `mplug-<task>`.
//! - `POST /v1/chat/completions`: the last user message's image (an `image_url` part holding a
//!   data URL or bare base64; remote URLs are not fetched) is captioned when the message has
//!   no text, and the text is answered as a question about it otherwise (`mplug-caption`
//!   always captions). `n` returns the `n` best beams, `max_tokens` bounds the length (cut to
//!   the model's positions), `temperature` above 0 or `top_p` below 1 sample instead of
//!   searching (`seed` repeats a draw), beam search otherwise. `stream: true` sends the same
//!   answer as server-sent events: beam search knows the text only when it ends, so the text
//!   comes in one chunk after the role chunk.
//! - `POST /v1/embeddings`: L2-normalized ITC features of each input, a text or an image as a
//!   data URL; `encoding_format` `float` or `base64` (little-endian f32, what OpenAI's Python
//!   library asks for by default).
//!
//! Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

use super::engine::Engine;
use super::request::{parse, ApiError, Parsed};
use super::Shared;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use mplug::generate::Sampling;
use mplug::{BeamConfig, Task};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// An error answered in OpenAI's shape.
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError(e)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let kind = match e.status {
            s if s.is_server_error() => "server_error",
            StatusCode::NOT_FOUND => "not_found_error",
            _ => "invalid_request_error",
        };
        let mut resp = (
            e.status,
            Json(json!({"error": {
                "message": e.message,
                "type": kind,
                "param": null,
                "code": e.status.as_u16(),
            }})),
        )
            .into_response();
        if e.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

type Result<T> = std::result::Result<T, OpenAiError>;

/// The model id of a task.
fn model_id(task: Task) -> String {
    format!("mplug-{}", task.name())
}

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /v1/models`.
pub async fn models(State(app): State<Shared>) -> Json<Value> {
    let data: Vec<Value> = app
        .tasks()
        .into_iter()
        .map(|t| json!({"id": model_id(t), "object": "model", "created": app.started, "owned_by": "mplug"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// The task a request's `model` names: `mplug-<task>` of a served task, or `mplug` (any).
fn named_task(app: &Shared, model: &str) -> Result<Option<Task>> {
    if model == "mplug" {
        return Ok(None);
    }
    if let Some(t) = app.tasks().into_iter().find(|&t| model_id(t) == model) {
        return Ok(Some(t));
    }
    let ids: Vec<String> = app.tasks().into_iter().map(model_id).collect();
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "the model `{model}` does not exist here; this server has {} (or `mplug`)",
            ids.join(", ")
        ),
    )
    .into())
}

/// The request's `model` and the task it names (`None` for `mplug`).
fn requested_model(app: &Shared, body: &Map<String, Value>) -> Result<(String, Option<Task>)> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| unprocessable("`model` must be a string (see GET /v1/models)"))?
        .to_string();
    let named = named_task(app, &model)?;
    Ok((model, named))
}

fn unprocessable(msg: impl Into<String>) -> OpenAiError {
    ApiError::unprocessable(msg).into()
}

/// Reads the body (under the server's limits) as a JSON object.
async fn body(app: &Shared, req: Request) -> Result<Map<String, Value>> {
    let Parsed { body, images } =
        parse::<Map<String, Value>>(req, app.limits.max_body_bytes, app.limits.body_timeout())
            .await?;
    if !images.is_empty() {
        return Err(unprocessable(
            "images go in the messages (`image_url` parts) or the `input`, not in `image`",
        ));
    }
    Ok(body)
}

/// An image from an `image_url`: a `data:` URL or bare base64.
fn image_bytes(url: &str, what: &str) -> Result<axum::body::Bytes> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(unprocessable(format!(
            "{what}: remote image URLs are not fetched; send the image as a data URL \
             (data:image/png;base64,...)"
        )));
    }
    let data = match url.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or("", |(_, d)| d),
        None => url,
    };
    let clean: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map(axum::body::Bytes::from)
        .map_err(|e| unprocessable(format!("{what} is not valid base64: {e}")))
}

/// The image and the text of the last user message.
fn last_user_message(body: &Map<String, Value>) -> Result<(axum::body::Bytes, String)> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| unprocessable("`messages` must be a list of messages"))?;
    let (at, message) = messages
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| m.get("role").and_then(Value::as_str) == Some("user"))
        .ok_or_else(|| unprocessable("`messages` has no user message"))?;
    let mut images = Vec::new();
    let mut texts = Vec::new();
    match message.get("content") {
        Some(Value::String(s)) => texts.push(s.clone()),
        Some(Value::Array(parts)) => {
            for (i, part) in parts.iter().enumerate() {
                let what = format!("messages[{at}].content[{i}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(
                        part.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| unprocessable(format!("{what}: no `text`")))?
                            .to_string(),
                    ),
                    Some("image_url") => {
                        let url = match part.get("image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(v) => v.get("url").and_then(Value::as_str).ok_or_else(|| {
                                unprocessable(format!("{what}: `image_url` has no `url`"))
                            })?,
                            None => return Err(unprocessable(format!("{what}: no `image_url`"))),
                        };
                        images.push(image_bytes(url, &what)?);
                    }
                    other => {
                        return Err(unprocessable(format!(
                            "{what}: unsupported part type {}; send `text` and `image_url` parts",
                            other.map_or("(none)".to_string(), |t| format!("`{t}`"))
                        )))
                    }
                }
            }
        }
        _ => {
            return Err(unprocessable(format!(
                "messages[{at}].content must be a string or a list of parts"
            )))
        }
    }
    let n = images.len();
    let mut images = images.into_iter();
    match (images.next(), n) {
        (Some(image), 1) => Ok((image, texts.join(" ").trim().to_string())),
        (None, _) => Err(unprocessable(
            "the last user message has no image; add an `image_url` part (a data URL)",
        )),
        _ => Err(unprocessable(format!(
            "the last user message has {n} images; send one"
        ))),
    }
}

/// An optional unsigned integer field.
fn opt_usize(body: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| unprocessable(format!("`{key}` must be a non-negative integer"))),
    }
}

/// An optional number field.
fn opt_f64(body: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| unprocessable(format!("`{key}` must be a number"))),
    }
}

static COMPLETIONS: AtomicU64 = AtomicU64::new(0);

/// `POST /v1/chat/completions`.
pub async fn chat(State(app): State<Shared>, req: Request) -> Response {
    match chat_inner(app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(app: Shared, req: Request) -> Result<Response> {
    let permit = app.permit()?;
    let body = body(&app, req).await?;
    let (model, named) = requested_model(&app, &body)?;
    let (image, text) = last_user_message(&body)?;
    let task = match named {
        Some(Task::Caption) => Task::Caption,
        Some(Task::Vqa) if text.is_empty() => {
            return Err(unprocessable(
                "mplug-vqa answers a question: add a `text` part to the message",
            ))
        }
        Some(Task::Vqa) => Task::Vqa,
        Some(other) => {
            return Err(unprocessable(format!(
                "{} does not chat; use mplug-caption or mplug-vqa",
                model_id(other)
            )))
        }
        None if text.is_empty() => Task::Caption,
        None => Task::Vqa,
    };
    let engine = app.engine(task, "/v1/chat/completions")?;
    if task == Task::Vqa {
        app.text(&engine, &text, "the question")?;
    }
    let n = opt_usize(&body, "n")?.unwrap_or(1);
    let max_tokens = opt_usize(&body, "max_completion_tokens")?
        .or(opt_usize(&body, "max_tokens")?)
        .map(|m| m.min(app.limits.max_len));
    let temperature = opt_f64(&body, "temperature")?;
    let top_p = opt_f64(&body, "top_p")?;
    let seed = match body.get("seed") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|i| i as u64))
            .ok_or_else(|| unprocessable("`seed` must be an integer"))?,
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if n == 0 || n > app.limits.max_beam {
        return Err(unprocessable(format!(
            "n must be 1..={}, not {n}",
            app.limits.max_beam
        )));
    }
    if max_tokens == Some(0) {
        return Err(unprocessable("max_tokens must be at least 1"));
    }
    let reference = match task {
        Task::Vqa => BeamConfig::answer(),
        _ => BeamConfig::caption(),
    };
    let max_length = max_tokens.unwrap_or(reference.max_length);
    let sampling = temperature.is_some_and(|t| t > 0.0) || top_p.is_some_and(|p| p < 1.0);
    if sampling && (temperature.is_some_and(|t| t < 0.0) || top_p.is_some_and(|p| p <= 0.0)) {
        return Err(unprocessable(
            "temperature must be >= 0 and top_p in (0, 1]",
        ));
    }
    let image = engine.image(image, "the image").await?;
    let question_tokens = match task {
        Task::Vqa => engine
            .pipeline()
            .tokenizer()
            .encode(&text, Some(engine.pipeline().text_limit()))
            .map_or(0, |ids| ids.len()),
        _ => 0,
    };
    // Each choice: (text, generated tokens, stopped by the length limit).
    let mut choices: Vec<(String, usize, bool)> = Vec::new();
    let beam = BeamConfig {
        min_length: reference.min_length.min(max_length),
        max_length,
        ..reference
    };
    if sampling {
        // One draw per choice, each from its own seed and each a model call with a place among
        // the requests in flight: all are taken before the first draw, so that a busy server
        // answers 503 before any work rather than after some.
        let mut permits = vec![permit];
        for _ in 1..n {
            permits.push(app.permit()?);
        }
        for i in 0..n {
            let config = BeamConfig {
                beam_size: 1,
                n_best: 1,
                sampling: Some(Sampling {
                    temperature: temperature.unwrap_or(1.0),
                    top_k: 0,
                    top_p: top_p.unwrap_or(1.0),
                    seed: seed.wrapping_add(i as u64),
                }),
                ..beam.clone()
            };
            let permit = permits
                .pop()
                .ok_or_else(|| OpenAiError(ApiError::internal("a place is missing")))?;
            let out = generate(&engine, task, image.clone(), &text, config, permit).await?;
            choices.extend(out.into_iter().take(1).map(|g| choice(&g, max_length)));
        }
    } else {
        let config = BeamConfig {
            beam_size: beam.beam_size.max(n),
            n_best: n,
            ..beam
        };
        let out = generate(&engine, task, image, &text, config, permit).await?;
        choices.extend(out.iter().map(|g| choice(g, max_length)));
    }
    let id = format!(
        "chatcmpl-{}-{}",
        app.started,
        COMPLETIONS.fetch_add(1, Ordering::Relaxed)
    );
    let created = now();
    let completion_tokens: usize = choices.iter().map(|c| c.1).sum();
    let prompt_tokens = visual_tokens(&engine) + question_tokens;
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let finish = |stopped: bool| if stopped { "length" } else { "stop" };
    if !stream {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, (text, _, stopped))| {
                json!({
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": finish(*stopped),
                })
            })
            .collect();
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
        }))
        .into_response());
    }
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        });
        if include_usage {
            c["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        format!("data: {c}\n\n")
    };
    let mut events = String::new();
    for (i, (text, _, stopped)) in choices.iter().enumerate() {
        events += &chunk(
            json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            None,
        );
        events += &chunk(
            json!([{"index": i, "delta": {"content": text}, "finish_reason": null}]),
            None,
        );
        events += &chunk(
            json!([{"index": i, "delta": {}, "finish_reason": finish(*stopped)}]),
            None,
        );
    }
    if include_usage {
        events += &chunk(json!([]), Some(&usage));
    }
    events += "data: [DONE]\n\n";
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        events,
    )
        .into_response())
}

/// A choice: its text, the tokens generated, and whether the length limit stopped it.
fn choice(g: &mplug::pipeline::Generated, max_length: usize) -> (String, usize, bool) {
    // `ids` hold [CLS] first and, when the model ended the text, [SEP] last.
    let generated = g.ids.len().saturating_sub(1);
    let ended = g.ids.last() == Some(&102) && generated > 0;
    (g.text.clone(), generated, !ended && generated >= max_length)
}

/// Visual tokens the model reads per image (the prompt's image part).
fn visual_tokens(engine: &Engine) -> usize {
    let cfg = &engine.pipeline().model().config;
    let side = cfg.image_res / cfg.vision.patch_size.max(1);
    side * side + 1
}

async fn generate(
    engine: &Arc<Engine>,
    task: Task,
    image: candle_core::Tensor,
    question: &str,
    beam: BeamConfig,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> std::result::Result<Vec<mplug::pipeline::Generated>, ApiError> {
    match task {
        Task::Vqa => {
            engine
                .answer(image, question.to_string(), beam, permit)
                .await
        }
        _ => engine.caption(image, beam, permit).await,
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(app): State<Shared>, req: Request) -> Response {
    match embeddings_inner(app, req).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn embeddings_inner(app: Shared, req: Request) -> Result<Value> {
    let permit = app.permit()?;
    let body = body(&app, req).await?;
    let (model, named) = requested_model(&app, &body)?;
    match named {
        None | Some(Task::Retrieval) => {}
        Some(other) => {
            return Err(unprocessable(format!(
                "{} makes no embeddings; use mplug-retrieval",
                model_id(other)
            )))
        }
    }
    let engine = app.engine(Task::Retrieval, "/v1/embeddings")?;
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    unprocessable("`input` items must be strings (texts, or images as data URLs)")
                })
            })
            .collect::<Result<_>>()?,
        _ => {
            return Err(unprocessable(
                "`input` must be a string or a non-empty list of strings",
            ))
        }
    };
    let base64_out = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(unprocessable(format!(
                "encoding_format must be float or base64, not {other}"
            )))
        }
    };
    let dim = engine.pipeline().model().config.embed_dim;
    if let Some(d) = opt_usize(&body, "dimensions")? {
        if d != dim {
            return Err(unprocessable(format!(
                "this model's embeddings have {dim} dimensions, not {d}"
            )));
        }
    }
    let is_image = |s: &str| s.starts_with("data:image/");
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for (i, s) in inputs.iter().enumerate() {
        if is_image(s) {
            images.push(image_bytes(s, &format!("input[{i}]"))?);
        } else {
            app.text(&engine, s, &format!("input[{i}]"))?;
            texts.push(s.clone());
        }
    }
    if texts.len() > app.limits.max_texts || images.len() > app.limits.max_images {
        return Err(unprocessable(format!(
            "{} texts and {} images; the limits are {} and {}",
            texts.len(),
            images.len(),
            app.limits.max_texts,
            app.limits.max_images
        )));
    }
    let tokens: usize = texts
        .iter()
        .map(|t| {
            engine
                .pipeline()
                .tokenizer()
                .encode(t, Some(engine.pipeline().text_limit()))
                .map_or(0, |ids| ids.len())
        })
        .sum::<usize>()
        + images.len() * visual_tokens(&engine);
    let images = if images.is_empty() {
        None
    } else {
        Some(engine.images(images).await?)
    };
    let (image_rows, text_rows) = engine.embed(images, texts, permit).await?;
    let (mut image_rows, mut text_rows) = (image_rows.into_iter(), text_rows.into_iter());
    let mut data = Vec::new();
    for (i, s) in inputs.iter().enumerate() {
        let row = if is_image(s) {
            image_rows.next()
        } else {
            text_rows.next()
        }
        .ok_or_else(|| OpenAiError(ApiError::internal("an embedding is missing")))?;
        let embedding = if base64_out {
            let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(row.iter().map(|&x| x as f64).collect::<Vec<f64>>())
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}
