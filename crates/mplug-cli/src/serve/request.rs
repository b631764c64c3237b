//! Request bodies and errors: JSON with base64 images, or `multipart/form-data` uploads, read
//! under the server's limits; every failure is a JSON error with its HTTP status.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

/// An error answered as `{"error": message, "status": code}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with a status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the body is not what the endpoint reads (malformed JSON, broken multipart).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: a well-formed request the model cannot take (bad image, empty text, limits).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 413: the body is over the size limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the limit of {limit} bytes"),
        )
    }

    /// 503: too many requests in flight.
    pub fn busy(limit: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the server is busy ({limit} requests in flight); retry later"),
        )
    }

    /// 408: the body did not arrive in time.
    pub fn timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {:.1} s",
                limit.as_secs_f64()
            ),
        )
    }

    /// 500: something that should not happen.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// A library error from a model call: invalid input is the client's (422), the rest ours.
    pub fn model(e: mplug::Error) -> Self {
        match e {
            mplug::Error::Input(_) | mplug::Error::InvalidInput(_) => {
                Self::unprocessable(e.to_string())
            }
            other => Self::internal(other.to_string()),
        }
    }
}

/// Seconds a busy server asks clients to wait before retrying (503's `Retry-After`).
const RETRY_AFTER_S: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": self.message, "status": self.status.as_u16()})),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_S),
            );
        }
        resp
    }
}

/// A parsed request: the endpoint's fields and the encoded images it carried.
#[derive(Debug)]
pub struct Parsed<T> {
    /// The fields.
    pub body: T,
    /// Encoded images (`image` / `images` in JSON as base64, file parts in multipart).
    pub images: Vec<Bytes>,
}

/// Multipart text fields read as numbers.
const NUMBER_FIELDS: &[&str] = &["beam", "min_len", "max_len", "n_best", "k"];
/// Multipart text fields that may repeat, gathered into a list.
const LIST_FIELDS: &[&str] = &["texts", "answers"];

/// Reads a request body under `max_body` bytes: JSON (`image` / `images` as base64 strings, or
/// data URLs) or `multipart/form-data` (image files as `image` / `images` parts, other fields as
/// text parts, `texts` / `answers` repeated). Malformed bodies are 400, well-formed ones with
/// wrong fields 422, oversized ones 413, bodies that take longer than `timeout` to arrive 408
/// (a stalled client must not hold its place among the requests in flight).
pub async fn parse<T: DeserializeOwned>(
    req: Request,
    max_body: usize,
    timeout: std::time::Duration,
) -> Result<Parsed<T>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(ApiError::too_large(max_body));
    }
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"));
    let (parts, body) = req.into_parts();
    let bytes = tokio::time::timeout(timeout, axum::body::to_bytes(body, max_body))
        .await
        .map_err(|_| ApiError::timeout(timeout))?
        .map_err(|e| body_error(e, max_body))?;
    if is_multipart {
        let req = Request::from_parts(parts, Body::from(bytes));
        parse_multipart(req).await
    } else {
        parse_json(&bytes)
    }
}

fn body_error(e: axum::Error, max_body: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.to_string().contains("length limit exceeded") {
            return ApiError::too_large(max_body);
        }
        source = s.source();
    }
    ApiError::bad_request(format!("cannot read the request body: {e}"))
}

/// Parses a JSON body (see [`parse`]).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<Parsed<T>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request has no body; send a JSON object",
        ));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::unprocessable("the body must be a JSON object"));
    };
    let mut images = Vec::new();
    if let Some(v) = map.remove("image") {
        images.push(base64_image(&v, "image")?);
    }
    if let Some(v) = map.remove("images") {
        let Value::Array(items) = v else {
            return Err(ApiError::unprocessable(
                "`images` must be a list of base64 strings",
            ));
        };
        for (i, item) in items.iter().enumerate() {
            images.push(base64_image(item, &format!("images[{i}]"))?);
        }
    }
    Ok(Parsed {
        body: fields(map)?,
        images,
    })
}

fn fields<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(map))
        .map_err(|e| ApiError::unprocessable(format!("invalid request: {e}")))
}

/// Decodes a base64 string (or a `data:` URL) into bytes.
pub fn base64_image(v: &Value, what: &str) -> Result<Bytes, ApiError> {
    let Value::String(s) = v else {
        return Err(ApiError::unprocessable(format!(
            "`{what}` must be a base64 string"
        )));
    };
    let data = match s.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, d)| d).unwrap_or(""),
        None => s.as_str(),
    };
    let clean: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map(Bytes::from)
        .map_err(|e| ApiError::unprocessable(format!("`{what}` is not valid base64: {e}")))
}

async fn parse_multipart<T: DeserializeOwned>(req: Request) -> Result<Parsed<T>, ApiError> {
    let mut mp = Multipart::from_request(req, &()).await.map_err(|e| {
        ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
    })?;
    let mut map = Map::new();
    let mut images = Vec::new();
    let broken = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(
            e.status(),
            format!("malformed multipart body: {}", e.body_text()),
        )
    };
    while let Some(field) = mp.next_field().await.map_err(broken)? {
        let name = field.name().unwrap_or("").to_string();
        if name == "image" || name == "images" || field.file_name().is_some() {
            images.push(field.bytes().await.map_err(broken)?);
            continue;
        }
        let text = field.text().await.map_err(broken)?;
        let value = if NUMBER_FIELDS.contains(&name.as_str()) {
            let n: f64 = text.trim().parse().map_err(|_| {
                ApiError::unprocessable(format!("`{name}` must be a number, not {text:?}"))
            })?;
            if n.fract() == 0.0 && n >= 0.0 {
                json!(n as u64)
            } else {
                json!(n)
            }
        } else {
            Value::String(text)
        };
        if LIST_FIELDS.contains(&name.as_str()) {
            if let Some(Value::Array(items)) = map.get_mut(&name) {
                items.push(value);
            } else {
                map.insert(name, Value::Array(vec![value]));
            }
        } else {
            map.insert(name, value);
        }
    }
    Ok(Parsed {
        body: fields(map)?,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        question: String,
    }

    #[test]
    fn json_images_are_base64_or_data_urls() {
        let p: Parsed<Body> = parse_json(
            br#"{"question": "q", "image": "aGVs\nbG8=", "images": ["data:image/png;base64,aGk="]}"#,
        )
        .unwrap();
        assert_eq!(p.body.question, "q");
        assert_eq!(p.images, vec![Bytes::from("hello"), Bytes::from("hi")]);
    }

    #[test]
    fn errors_have_the_right_status() {
        let status = |body: &[u8]| parse_json::<Body>(body).unwrap_err().status;
        assert_eq!(status(b"{\"question\": "), StatusCode::BAD_REQUEST);
        assert_eq!(status(b"  "), StatusCode::BAD_REQUEST);
        assert_eq!(status(b"\"q\""), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(b"{}"), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            status(br#"{"question": "q", "extra": 1}"#),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(br#"{"question": "q", "image": "***"}"#),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(br#"{"question": "q", "images": "aGk="}"#),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
