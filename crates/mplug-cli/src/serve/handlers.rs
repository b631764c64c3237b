//! The model endpoints: each takes a [`ModelRequest`] (the endpoint's model found, a place
//! among the requests in flight taken, the body read and parsed under the server's limits),
//! checks its fields, and asks the engine.

use super::engine::Engine;
use super::request::{base64_image, parse, ApiError, Parsed};
use super::{endpoints, Shared};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::Json;
use mplug::BeamConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// A request to a model endpoint, read in this order: the endpoint's task must be served
/// (else 422 naming what the server runs), a place among the requests in flight must be free
/// (else 503), then the body is read under the size and time limits and parsed.
pub struct ModelRequest<T> {
    /// The engine of the model that answers the endpoint.
    pub engine: Arc<Engine>,
    /// The endpoint's fields.
    pub body: T,
    /// Encoded images the request carried.
    pub images: Vec<Bytes>,
    /// The request's place among those in flight, released when it is answered.
    pub permit: OwnedSemaphorePermit,
}

impl<T: DeserializeOwned + Send> FromRequest<Shared> for ModelRequest<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Shared) -> Result<Self, ApiError> {
        let path = req.uri().path().to_string();
        let task = endpoints::route(&path)
            .and_then(|r| r.tasks.first().copied())
            .ok_or_else(|| ApiError::internal(format!("{path} is not a model endpoint")))?;
        let engine = app.engine(task, &path)?;
        let permit = app.permit()?;
        let Parsed { body, images } =
            parse(req, app.limits.max_body_bytes, app.limits.body_timeout()).await?;
        Ok(ModelRequest {
            engine,
            body,
            images,
            permit,
        })
    }
}

impl<T> ModelRequest<T> {
    /// The request's one image, or 422.
    fn one_image(&mut self) -> Result<Bytes, ApiError> {
        let n = self.images.len();
        match n {
            1 => Ok(self.images.remove(0)),
            0 => Err(ApiError::unprocessable(
                "no image: send `image` (base64 in JSON, or a file part)",
            )),
            _ => Err(ApiError::unprocessable(format!(
                "{n} images; this endpoint takes one"
            ))),
        }
    }

    /// Checks the number of images of a multi-image request.
    fn image_count(&self, app: &Shared, least: usize) -> Result<(), ApiError> {
        let n = self.images.len();
        if n < least || n > app.limits.max_images {
            return Err(ApiError::unprocessable(format!(
                "{n} images; send {least} to {} (`images`: base64 strings, or file parts)",
                app.limits.max_images
            )));
        }
        Ok(())
    }
}

/// Decoding options a request may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeOptions {
    /// Beam size (1: greedy).
    pub beam: Option<usize>,
    /// Fewest tokens generated.
    pub min_len: Option<usize>,
    /// Most tokens generated.
    pub max_len: Option<usize>,
    /// Hypotheses returned.
    pub n_best: Option<usize>,
}

/// Scores and coordinates are written as f64 (the f32 widened), as the command line's JSON
/// writes them, so that both print the same digits.
fn wide(x: f32) -> f64 {
    x as f64
}

/// A generated text with its length-penalized log-probability and the probability of its
/// tokens.
#[derive(Debug, Serialize)]
pub struct Caption {
    caption: String,
    score: f64,
    prob: f64,
}

/// `POST /v1/caption`'s answer.
#[derive(Debug, Serialize)]
pub struct CaptionResponse {
    captions: Vec<Caption>,
}

/// `POST /v1/caption`: captions of one image.
pub async fn caption(
    axum::extract::State(app): axum::extract::State<Shared>,
    mut req: ModelRequest<DecodeOptions>,
) -> Result<Json<CaptionResponse>, ApiError> {
    let beam = app.beam(&req.body, BeamConfig::caption())?;
    let bytes = req.one_image()?;
    let image = req.engine.image(bytes, "image").await?;
    let hyps = req.engine.caption(image, beam, req.permit).await?;
    Ok(Json(CaptionResponse {
        captions: hyps
            .into_iter()
            .map(|h| Caption {
                caption: h.text,
                score: wide(h.score),
                prob: wide(h.prob),
            })
            .collect(),
    }))
}

/// `POST /v1/vqa`'s fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqaBody {
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

impl VqaBody {
    /// The decoding options among the fields (serde cannot flatten them into a struct that
    /// refuses unknown fields).
    fn decode(&self) -> DecodeOptions {
        DecodeOptions {
            beam: self.beam,
            min_len: self.min_len,
            max_len: self.max_len,
            n_best: self.n_best,
        }
    }
}

/// An answer: generated (with `score` and `prob`, its tokens' probability) or ranked (with
/// `index` and `prob`, its probability among the candidates).
#[derive(Debug, Serialize)]
pub struct Answer {
    answer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prob: Option<f64>,
}

/// `POST /v1/vqa`'s answer.
#[derive(Debug, Serialize)]
pub struct VqaResponse {
    question: String,
    ranked: bool,
    answers: Vec<Answer>,
}

/// `POST /v1/vqa`: a free answer, or the best of `answers`.
pub async fn vqa(
    axum::extract::State(app): axum::extract::State<Shared>,
    mut req: ModelRequest<VqaBody>,
) -> Result<Json<VqaResponse>, ApiError> {
    app.text(&req.engine, &req.body.question, "question")?;
    // Every field is checked before the image is decoded.
    let rank = match &req.body.answers {
        Some(answers) => {
            if answers.is_empty() {
                return Err(ApiError::unprocessable("`answers` is empty"));
            }
            app.texts(&req.engine, answers, "answers", app.limits.max_answers)?;
            req.engine.check_answers(answers)?;
            let k = req.body.k.unwrap_or(5);
            if k == 0 {
                return Err(ApiError::unprocessable("k must be at least 1"));
            }
            Some(k)
        }
        None => None,
    };
    let beam = app.beam(&req.body.decode(), BeamConfig::answer())?;
    let bytes = req.one_image()?;
    let image = req.engine.image(bytes, "image").await?;
    let question = req.body.question.clone();
    let (ranked, answers) = match (rank, req.body.answers) {
        (Some(k), Some(answers)) => {
            let ranked = req
                .engine
                .rank(image, question.clone(), answers, k, req.permit)
                .await?;
            let answers = ranked
                .into_iter()
                .map(|r| Answer {
                    answer: r.text,
                    score: None,
                    index: Some(r.index),
                    prob: Some(wide(r.prob)),
                })
                .collect();
            (true, answers)
        }
        _ => {
            let hyps = req
                .engine
                .answer(image, question.clone(), beam, req.permit)
                .await?;
            let answers = hyps
                .into_iter()
                .map(|h| Answer {
                    answer: h.text,
                    score: Some(wide(h.score)),
                    index: None,
                    prob: Some(wide(h.prob)),
                })
                .collect();
            (false, answers)
        }
    };
    Ok(Json(VqaResponse {
        question,
        ranked,
        answers,
    }))
}

/// `POST /v1/ground`'s fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroundBody {
    expression: String,
}

/// `POST /v1/ground`'s answer.
#[derive(Debug, Serialize)]
pub struct GroundResponse {
    expression: String,
    box_xyxy: [f64; 4],
    box_cxcywh_fraction: [f64; 4],
    image_width: u32,
    image_height: u32,
}

/// `POST /v1/ground`: the box an expression refers to, in pixels.
pub async fn ground(
    axum::extract::State(app): axum::extract::State<Shared>,
    mut req: ModelRequest<GroundBody>,
) -> Result<Json<GroundResponse>, ApiError> {
    app.text(&req.engine, &req.body.expression, "expression")?;
    let bytes = req.one_image()?;
    let image = req.engine.letterboxed(bytes, "image").await?;
    let info = image.info;
    let expression = req.body.expression;
    let b = req
        .engine
        .ground(image, expression.clone(), req.permit)
        .await?;
    Ok(Json(GroundResponse {
        expression,
        box_xyxy: b.xyxy.map(wide),
        box_cxcywh_fraction: b.cxcywh.map(wide),
        image_width: info.original_width,
        image_height: info.original_height,
    }))
}

/// `POST /v1/retrieve`'s fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieveBody {
    texts: Vec<String>,
    #[serde(default)]
    k: Option<usize>,
}

/// A text's score for an image.
#[derive(Debug, Serialize)]
pub struct ScoredText {
    index: usize,
    text: String,
    score: f64,
}

/// An image's texts, best first.
#[derive(Debug, Serialize)]
pub struct ImageRow {
    image: usize,
    texts: Vec<ScoredText>,
}

/// An image's score for a text.
#[derive(Debug, Serialize)]
pub struct ScoredImage {
    image: usize,
    score: f64,
}

/// A text's images, best first.
#[derive(Debug, Serialize)]
pub struct TextRow {
    text: usize,
    images: Vec<ScoredImage>,
}

/// `POST /v1/retrieve`'s answer.
#[derive(Debug, Serialize)]
pub struct RetrieveResponse {
    images: usize,
    image_to_text: Vec<ImageRow>,
    text_to_image: Vec<TextRow>,
    note: &'static str,
}

/// What `/v1/retrieve`'s scores are.
const RETRIEVE_NOTE: &str = "scores are ITM logits (the match class's logit, not a \
     probability) for each row's ITC top k, at most the row's candidates; -100 outside it";

/// Indices of `row`, highest score first.
fn best_first(row: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
    order
}

/// `POST /v1/retrieve`: texts ranked for images and images for texts.
pub async fn retrieve(
    axum::extract::State(app): axum::extract::State<Shared>,
    req: ModelRequest<RetrieveBody>,
) -> Result<Json<RetrieveResponse>, ApiError> {
    if req.body.texts.is_empty() {
        return Err(ApiError::unprocessable("`texts` is empty"));
    }
    app.texts(&req.engine, &req.body.texts, "texts", app.limits.max_texts)?;
    req.image_count(&app, 1)?;
    let k = req.body.k.unwrap_or(16);
    if k == 0 {
        return Err(ApiError::unprocessable("k must be at least 1"));
    }
    let n_images = req.images.len();
    let images = req.engine.images(req.images).await?;
    let texts = req.body.texts;
    let (i2t, t2i) = req
        .engine
        .retrieve(images, texts.clone(), k, req.permit)
        .await?;
    let image_to_text = i2t
        .iter()
        .enumerate()
        .map(|(i, row)| ImageRow {
            image: i,
            texts: best_first(row)
                .into_iter()
                .map(|j| ScoredText {
                    index: j,
                    text: texts[j].clone(),
                    score: wide(row[j]),
                })
                .collect(),
        })
        .collect();
    let text_to_image = t2i
        .iter()
        .enumerate()
        .map(|(j, row)| TextRow {
            text: j,
            images: best_first(row)
                .into_iter()
                .map(|i| ScoredImage {
                    image: i,
                    score: wide(row[i]),
                })
                .collect(),
        })
        .collect();
    Ok(Json(RetrieveResponse {
        images: n_images,
        image_to_text,
        text_to_image,
        note: RETRIEVE_NOTE,
    }))
}

/// `POST /v1/embed`'s fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedBody {
    #[serde(default)]
    texts: Vec<String>,
}

/// `POST /v1/embed`'s answer.
#[derive(Debug, Serialize)]
pub struct EmbedResponse {
    dim: usize,
    image_embeddings: Vec<Vec<f64>>,
    text_embeddings: Vec<Vec<f64>>,
}

/// `POST /v1/embed`: ITC features of images and texts.
pub async fn embed(
    axum::extract::State(app): axum::extract::State<Shared>,
    req: ModelRequest<EmbedBody>,
) -> Result<Json<EmbedResponse>, ApiError> {
    if req.body.texts.is_empty() && req.images.is_empty() {
        return Err(ApiError::unprocessable(
            "nothing to embed: send `images` and/or `texts`",
        ));
    }
    app.texts(&req.engine, &req.body.texts, "texts", app.limits.max_texts)?;
    req.image_count(&app, 0)?;
    let images = if req.images.is_empty() {
        None
    } else {
        Some(req.engine.images(req.images).await?)
    };
    let dim = req.engine.pipeline().model().config.embed_dim;
    let (image_embeddings, text_embeddings) =
        req.engine.embed(images, req.body.texts, req.permit).await?;
    let rows = |m: Vec<Vec<f32>>| -> Vec<Vec<f64>> {
        m.into_iter()
            .map(|r| r.into_iter().map(wide).collect())
            .collect()
    };
    Ok(Json(EmbedResponse {
        dim,
        image_embeddings: rows(image_embeddings),
        text_embeddings: rows(text_embeddings),
    }))
}

/// `POST /v1/classify`'s fields: `image`, `candidate_labels` and `hypothesis_template`, or Hugging
/// Face's zero-shot image classification request (`inputs`: the image as base64, the others
/// under `parameters`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyBody {
    #[serde(default)]
    candidate_labels: Option<Vec<String>>,
    #[serde(default)]
    hypothesis_template: Option<String>,
    #[serde(default)]
    parameters: Option<ClassifyParameters>,
    #[serde(default)]
    inputs: Option<serde_json::Value>,
    /// Also score by the ITM head's match probability and order by it.
    #[serde(default)]
    itm: bool,
}

/// Hugging Face's `parameters` of zero-shot image classification.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyParameters {
    #[serde(default)]
    candidate_labels: Option<Vec<String>>,
    #[serde(default)]
    hypothesis_template: Option<String>,
}

/// A label with its probability, as Hugging Face's pipeline answers; with `itm`, also the
/// ITM match probability.
#[derive(Debug, Serialize)]
pub struct LabelScore {
    label: String,
    score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    match_prob: Option<f64>,
}

/// `POST /v1/classify`: the candidate labels of one image with their probabilities, best
/// first (a softmax over the labels of the ITC similarities at the model's temperature).
pub async fn classify(
    axum::extract::State(app): axum::extract::State<Shared>,
    mut req: ModelRequest<ClassifyBody>,
) -> Result<Json<Vec<LabelScore>>, ApiError> {
    let params = req.body.parameters.take().unwrap_or_default();
    let labels = req
        .body
        .candidate_labels
        .take()
        .or(params.candidate_labels)
        .unwrap_or_default();
    let template = req
        .body
        .hypothesis_template
        .take()
        .or(params.hypothesis_template)
        .unwrap_or_else(|| mplug::pipeline::DEFAULT_LABEL_TEMPLATE.to_string());
    if labels.is_empty() {
        return Err(ApiError::unprocessable(
            "`candidate_labels` is missing or empty",
        ));
    }
    app.texts(
        &req.engine,
        &labels,
        "candidate_labels",
        app.limits.max_texts,
    )?;
    if let Some(v) = req.body.inputs.take() {
        req.images.push(base64_image(&v, "inputs")?);
    }
    let bytes = req.one_image()?;
    let image = req.engine.image(bytes, "image").await?;
    let scored = req
        .engine
        .classify(image, labels, template, req.body.itm, req.permit)
        .await?;
    Ok(Json(
        scored
            .into_iter()
            .map(|l| LabelScore {
                label: l.label,
                score: wide(l.score),
                match_prob: l.match_prob.map(wide),
            })
            .collect(),
    ))
}

/// `POST /v1/search`'s fields: a text `query`, or an image (`image`, base64, or a file part);
/// the options of `mplug search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    query: Option<String>,
    k: Option<usize>,
    limit: Option<usize>,
    offset: Option<usize>,
    min_score: Option<f32>,
    under: Option<std::path::PathBuf>,
    #[serde(default)]
    itc_only: bool,
}

/// One search result.
#[derive(Debug, Serialize)]
pub struct SearchHit {
    rank: usize,
    path: std::path::PathBuf,
    /// The ranking score: `itm` when there is one, else `itc`.
    score: f64,
    itm: Option<f64>,
    itc: f64,
    caption: Option<String>,
}

/// `POST /v1/search`'s answer.
#[derive(Debug, Serialize)]
pub struct SearchResponse {
    hits: Vec<SearchHit>,
}

/// The most results one search returns, and the most candidates it re-ranks.
const MAX_SEARCH: usize = 1000;

/// `POST /v1/search`: the indexed images that best match a text or an image.
pub async fn search(
    axum::extract::State(app): axum::extract::State<Shared>,
    mut req: ModelRequest<SearchBody>,
) -> Result<Json<SearchResponse>, ApiError> {
    use super::engine::SearchQuery;
    if !req.engine.has_index() {
        return Err(ApiError::unprocessable(
            "this server has no image index; start `mplug serve` with --index DIR or --store URL",
        ));
    }
    let defaults = mplug::index::SearchOptions::default();
    let b = &req.body;
    let options = mplug::index::SearchOptions {
        k: b.k.unwrap_or(defaults.k),
        limit: b.limit.unwrap_or(defaults.limit),
        offset: b.offset.unwrap_or(0),
        min_score: b.min_score,
        under: b.under.clone(),
        itc_only: b.itc_only,
    };
    if options.k > MAX_SEARCH
        || options.limit == 0
        || options.offset.saturating_add(options.limit) > MAX_SEARCH
    {
        return Err(ApiError::unprocessable(format!(
            "k and offset + limit must be at most {MAX_SEARCH}, and limit at least 1"
        )));
    }
    let query = match (req.body.query.take(), req.images.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::unprocessable(
                "send a text `query` or an `image`, not both",
            ))
        }
        (Some(text), true) => {
            app.text(&req.engine, &text, "query")?;
            SearchQuery::Text(text)
        }
        (None, false) => {
            let bytes = req.one_image()?;
            SearchQuery::Image(req.engine.image(bytes, "image").await?)
        }
        (None, true) => {
            return Err(ApiError::unprocessable(
                "nothing to search by: send a text `query` or an `image`",
            ))
        }
    };
    let offset = options.offset;
    let hits = req.engine.search(query, options, req.permit).await?;
    Ok(Json(SearchResponse {
        hits: hits
            .into_iter()
            .enumerate()
            .map(|(i, h)| SearchHit {
                rank: offset + i + 1,
                score: wide(h.score()),
                itm: (!h.itm.is_nan()).then_some(wide(h.itm)),
                itc: wide(h.itc),
                path: h.path,
                caption: h.caption,
            })
            .collect(),
    }))
}
