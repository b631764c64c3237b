//! What the server answers itself: the web page, health, information, metrics, the OpenAPI
//! document, and JSON errors for unknown paths and methods.

use super::request::ApiError;
use super::{openapi, Shared};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The web page.
const PAGE: &str = include_str!("page.html");

/// `GET /`: the web page.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// `GET /healthz`.
pub async fn healthz(State(app): State<Shared>) -> Json<Value> {
    Json(json!({"status": "ok", "task": app.task_names()}))
}

/// `GET /v1/info`: tasks, models, configuration and limits.
pub async fn info(State(app): State<Shared>) -> Json<Value> {
    Json(app.info.clone())
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(app): State<Shared>) -> Response {
    let in_flight = app.limits.max_in_flight - app.in_flight.available_permits();
    let stats: Vec<_> = app.models.iter().map(|m| &m.engine.stats).collect();
    let body = app.metrics.render(
        &app.task_names(),
        in_flight,
        app.limits.max_in_flight,
        &stats,
        app.pixels.in_flight(),
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
pub async fn openapi(State(app): State<Shared>) -> Json<Value> {
    Json(openapi::document(
        &app.tasks(),
        app.limits.max_beam,
        app.limits.max_len,
    ))
}

/// Any other path: 404 as JSON.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {}; see /openapi.json", req.uri().path()),
    )
}

/// A known path with another method: 405 as JSON.
pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}; see /openapi.json",
            req.method(),
            req.uri().path()
        ),
    )
}
