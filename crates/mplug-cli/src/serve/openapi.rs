//! The OpenAPI 3.0 document of the server, written by hand.

use super::endpoints;
use mplug::Task;
use serde_json::{json, Value};

fn error_responses() -> Value {
    let err = json!({"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let with = |d: &str| {
        let mut e = err.clone();
        e["description"] = json!(d);
        e
    };
    json!({
        "400": with("Malformed body (JSON syntax, multipart framing)"),
        "408": with("The body did not arrive within the server's body timeout"),
        "413": with("Body over the size limit"),
        "422": with("Well-formed request the model cannot take: bad or oversized image, empty or too long text, wrong field, or an endpoint of another task than the loaded model's"),
        "503": with("Too many requests in flight; retry after the `Retry-After` seconds"),
        "500": with("Model failure"),
    })
}

/// A POST operation with a JSON body schema and the same fields as multipart.
fn operation(route: &endpoints::Route, doc: &endpoints::Doc) -> Value {
    let (summary, schema, response) = (doc.summary, doc.request, doc.response);
    let names: Vec<&str> = route.tasks.iter().map(|t| t.name()).collect();
    let task = names.join(" or ");
    let mut responses = error_responses();
    responses["200"] = json!({
        "description": "Result",
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{response}")}}}
    });
    json!({
        "post": {
            "summary": summary,
            "description": format!("Answered by the {task} model. JSON with images as base64 strings (or data: URLs), or multipart/form-data with image files as `image`/`images` parts and the other fields as text parts (`texts`, `answers` repeated)."),
            "requestBody": {
                "required": true,
                "content": {
                    "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}},
                    "multipart/form-data": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}
                }
            },
            "responses": responses
        }
    })
}

/// The document; `tasks` are those the server answers, `max_beam` and `max_len` the limits it
/// enforces. Only the endpoints the server answers are listed (the route table's model
/// endpoints of its tasks; the others answer 422).
pub fn document(tasks: &[Task], max_beam: usize, max_len: usize) -> Value {
    let names: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
    let names = names.join(", ");
    let decode = json!({
        "beam": {"type": "integer", "minimum": 1, "maximum": max_beam, "description": "Beam size (1: greedy)"},
        "min_len": {"type": "integer", "minimum": 0, "maximum": max_len},
        "max_len": {"type": "integer", "minimum": 1, "maximum": max_len},
        "n_best": {"type": "integer", "minimum": 1, "description": "Hypotheses returned (at most beam)"}
    });
    let image = json!({"type": "string", "format": "byte", "description": "Encoded image (png, jpeg, webp, gif, bmp, tiff), base64"});
    let mut caption_props = decode.clone();
    caption_props["image"] = image.clone();
    let mut vqa_props = decode;
    vqa_props["image"] = image.clone();
    vqa_props["question"] = json!({"type": "string"});
    vqa_props["answers"] = json!({"type": "array", "items": {"type": "string"}, "description": "Rank these candidates instead of generating"});
    vqa_props["k"] = json!({"type": "integer", "minimum": 1, "default": 5, "description": "Ranked answers returned"});
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "mplug serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("mPLUG vision-language model over HTTP. This server answers: {names}.")
        },
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Up", "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}, "task": {"type": "string"}}}}}}}}},
            "/v1/info": {"get": {"summary": "The loaded models: tasks, configurations, weight type (dtype), limits", "responses": {"200": {"description": "Model information", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics: requests by endpoint and status, latency histograms, in-flight requests, batching", "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/v1/models": {"get": {"summary": "OpenAI-compatible list of models: mplug-<task> per task served", "responses": {"200": {"description": "Models", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/": {"get": {"summary": "A web page to try the model", "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}}
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status"], "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "CaptionRequest": {"type": "object", "required": ["image"], "additionalProperties": false, "properties": caption_props},
                "CaptionResponse": {"type": "object", "properties": {"captions": {"type": "array", "items": {"type": "object", "properties": {"caption": {"type": "string"}, "score": {"type": "number", "description": "Length-penalized log-probability (what beam search ranks by)"}, "prob": {"type": "number", "description": "The probability of the caption's tokens (their probabilities multiplied)"}}}}}},
                "VqaRequest": {"type": "object", "required": ["image", "question"], "additionalProperties": false, "properties": vqa_props},
                "VqaResponse": {"type": "object", "properties": {
                    "question": {"type": "string"},
                    "ranked": {"type": "boolean"},
                    "answers": {"type": "array", "items": {"type": "object", "properties": {
                        "answer": {"type": "string"},
                        "score": {"type": "number", "description": "Generated: length-penalized log-probability"},
                        "prob": {"type": "number", "description": "Ranked: probability among the re-ranked candidates; generated: the probability of the answer's tokens (their probabilities multiplied)"},
                        "index": {"type": "integer", "description": "Ranked: position in `answers`"}}}}}},
                "GroundRequest": {"type": "object", "required": ["image", "expression"], "additionalProperties": false, "properties": {"image": image, "expression": {"type": "string"}}},
                "GroundResponse": {"type": "object", "properties": {
                    "expression": {"type": "string"},
                    "box_xyxy": {"type": "array", "items": {"type": "number"}, "description": "x0, y0, x1, y1 in pixels of the original image"},
                    "box_cxcywh_fraction": {"type": "array", "items": {"type": "number"}, "description": "Centre and size as fractions of the padded square the model saw"},
                    "image_width": {"type": "integer"}, "image_height": {"type": "integer"}}},
                "RetrieveRequest": {"type": "object", "required": ["images", "texts"], "additionalProperties": false, "properties": {
                    "images": {"type": "array", "items": image.clone()},
                    "image": image.clone(),
                    "texts": {"type": "array", "items": {"type": "string"}},
                    "k": {"type": "integer", "minimum": 1, "default": 16, "description": "ITC candidates re-scored by ITM"}}},
                "RetrieveResponse": {"type": "object", "properties": {
                    "images": {"type": "integer"},
                    "image_to_text": {"type": "array", "items": {"type": "object", "properties": {"image": {"type": "integer"}, "texts": {"type": "array", "items": {"type": "object", "properties": {"index": {"type": "integer"}, "text": {"type": "string"}, "score": {"type": "number"}}}}}}},
                    "text_to_image": {"type": "array", "items": {"type": "object", "properties": {"text": {"type": "integer"}, "images": {"type": "array", "items": {"type": "object", "properties": {"image": {"type": "integer"}, "score": {"type": "number"}}}}}}}}},
                "EmbedRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "images": {"type": "array", "items": image.clone()},
                    "image": image.clone(),
                    "texts": {"type": "array", "items": {"type": "string"}}}},
                "ClassifyRequest": {"type": "object", "additionalProperties": false, "description": "The image as `image` (or Hugging Face's `inputs`), base64; the labels as `candidate_labels` (or under `parameters`)", "properties": {
                    "image": image.clone(),
                    "inputs": image.clone(),
                    "candidate_labels": {"type": "array", "items": {"type": "string"}},
                    "hypothesis_template": {"type": "string", "default": "a photo of {}"},
                    "parameters": {"type": "object", "properties": {"candidate_labels": {"type": "array", "items": {"type": "string"}}, "hypothesis_template": {"type": "string"}}}}},
                "ClassifyResponse": {"type": "array", "items": {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "number", "description": "Probability among the labels"}}}},
                "ChatRequest": {"type": "object", "required": ["model", "messages"], "description": "OpenAI's chat completion request: the last user message holds one `image_url` part (a data URL or bare base64) and optionally `text` parts (a question). `n`, `max_tokens`, `temperature`, `top_p`, `seed` and `stream` are read; other fields are ignored.", "properties": {
                    "model": {"type": "string", "description": "mplug, mplug-caption or mplug-vqa (GET /v1/models)"},
                    "messages": {"type": "array", "items": {"type": "object"}},
                    "n": {"type": "integer", "minimum": 1, "maximum": max_beam},
                    "max_tokens": {"type": "integer", "minimum": 1},
                    "temperature": {"type": "number", "minimum": 0},
                    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "seed": {"type": "integer"},
                    "stream": {"type": "boolean"}}},
                "ChatResponse": {"type": "object", "description": "OpenAI's chat.completion object (or, with stream, chat.completion.chunk server-sent events)"},
                "EmbeddingsRequest": {"type": "object", "required": ["model", "input"], "properties": {
                    "model": {"type": "string", "description": "mplug or mplug-retrieval"},
                    "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}], "description": "Texts, and images as data URLs"},
                    "encoding_format": {"type": "string", "enum": ["float", "base64"]}}},
                "EmbeddingsResponse": {"type": "object", "description": "OpenAI's list of embedding objects"},
                "SearchRequest": {"type": "object", "additionalProperties": false, "description": "A text `query` or an `image` (base64, or a file part); the options of `mplug search`", "properties": {
                    "query": {"type": "string"},
                    "image": image.clone(),
                    "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 16, "description": "Candidates by ITC similarity re-ranked by ITM"},
                    "limit": {"type": "integer", "minimum": 1, "default": 10},
                    "offset": {"type": "integer", "minimum": 0, "default": 0},
                    "min_score": {"type": "number", "description": "Leave out hits scoring below this (the ITM logit; the ITC similarity for an image or with itc_only)"},
                    "under": {"type": "string", "description": "Only images under this folder (a path on the server)"},
                    "itc_only": {"type": "boolean", "default": false}}},
                "SearchResponse": {"type": "object", "properties": {"hits": {"type": "array", "items": {"type": "object", "properties": {
                    "rank": {"type": "integer"},
                    "path": {"type": "string"},
                    "score": {"type": "number"},
                    "itm": {"type": ["number", "null"]},
                    "itc": {"type": "number"},
                    "caption": {"type": ["string", "null"]}}}}}},
                "EmbedResponse": {"type": "object", "properties": {
                    "dim": {"type": "integer"},
                    "image_embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                    "text_embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}}
            }
        }
    });
    for route in endpoints::served(tasks) {
        if let Some(d) = &route.doc {
            doc["paths"][route.path] = operation(route, d);
        }
    }
    doc
}
