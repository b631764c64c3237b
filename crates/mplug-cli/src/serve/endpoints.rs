//! The server's routes in one table: the router registers them, requests to a model endpoint
//! are checked against its task, and the OpenAPI document, `/v1/info` and the metrics' labels
//! are read from it.

use super::{handlers, openai, pages, Shared};
use axum::routing::{get, post, MethodRouter};
use mplug::Task;

/// A model endpoint's entry in the OpenAPI document.
pub struct Doc {
    /// One line on what it does.
    pub summary: &'static str,
    /// Schema name of its request body.
    pub request: &'static str,
    /// Schema name of its answer.
    pub response: &'static str,
}

/// One route.
pub struct Route {
    /// The path.
    pub path: &'static str,
    /// The tasks whose models answer it (served when any is; empty: the server itself
    /// answers). A model endpoint has one.
    pub tasks: &'static [Task],
    /// Its method and handler.
    pub handler: fn() -> MethodRouter<Shared>,
    /// A model endpoint's documentation.
    pub doc: Option<Doc>,
}

/// Every route of the server.
pub const ROUTES: &[Route] = &[
    Route {
        path: "/",
        tasks: &[],
        handler: || get(pages::page),
        doc: None,
    },
    Route {
        path: "/healthz",
        tasks: &[],
        handler: || get(pages::healthz),
        doc: None,
    },
    Route {
        path: "/metrics",
        tasks: &[],
        handler: || get(pages::metrics),
        doc: None,
    },
    Route {
        path: "/openapi.json",
        tasks: &[],
        handler: || get(pages::openapi),
        doc: None,
    },
    Route {
        path: "/v1/info",
        tasks: &[],
        handler: || get(pages::info),
        doc: None,
    },
    Route {
        path: "/v1/caption",
        tasks: &[Task::Caption],
        handler: || post(handlers::caption),
        doc: Some(Doc {
            summary: "Caption an image",
            request: "CaptionRequest",
            response: "CaptionResponse",
        }),
    },
    Route {
        path: "/v1/vqa",
        tasks: &[Task::Vqa],
        handler: || post(handlers::vqa),
        doc: Some(Doc {
            summary: "Answer a question about an image, free-form or from a list",
            request: "VqaRequest",
            response: "VqaResponse",
        }),
    },
    Route {
        path: "/v1/ground",
        tasks: &[Task::Grounding],
        handler: || post(handlers::ground),
        doc: Some(Doc {
            summary: "Find the box an expression refers to",
            request: "GroundRequest",
            response: "GroundResponse",
        }),
    },
    Route {
        path: "/v1/retrieve",
        tasks: &[Task::Retrieval],
        handler: || post(handlers::retrieve),
        doc: Some(Doc {
            summary: "Rank texts for images and images for texts (ITC top k re-scored by ITM)",
            request: "RetrieveRequest",
            response: "RetrieveResponse",
        }),
    },
    Route {
        path: "/v1/embed",
        tasks: &[Task::Retrieval],
        handler: || post(handlers::embed),
        doc: Some(Doc {
            summary: "L2-normalized ITC features of images and texts",
            request: "EmbedRequest",
            response: "EmbedResponse",
        }),
    },
    Route {
        path: "/v1/classify",
        tasks: &[Task::Retrieval],
        handler: || post(handlers::classify),
        doc: Some(Doc {
            summary: "Zero-shot labels of an image with their probabilities (Hugging Face's shape)",
            request: "ClassifyRequest",
            response: "ClassifyResponse",
        }),
    },
    Route {
        path: "/v1/search",
        tasks: &[Task::Retrieval],
        handler: || post(handlers::search),
        doc: Some(Doc {
            summary: "Search the server's image index by text or by image (--index or --store)",
            request: "SearchRequest",
            response: "SearchResponse",
        }),
    },
    Route {
        path: "/v1/models",
        tasks: &[],
        handler: || get(openai::models),
        doc: None,
    },
    Route {
        path: "/v1/chat/completions",
        tasks: &[Task::Caption, Task::Vqa],
        handler: || post(openai::chat),
        doc: Some(Doc {
            summary:
                "OpenAI-compatible chat: an image alone is captioned, an image with text answered",
            request: "ChatRequest",
            response: "ChatResponse",
        }),
    },
    Route {
        path: "/v1/embeddings",
        tasks: &[Task::Retrieval],
        handler: || post(openai::embeddings),
        doc: Some(Doc {
            summary: "OpenAI-compatible embeddings: ITC features of texts and images (data URLs)",
            request: "EmbeddingsRequest",
            response: "EmbeddingsResponse",
        }),
    },
];

/// The route of `path`, if the server has one.
pub fn route(path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.path == path)
}

/// The model endpoints a server running `tasks` answers.
pub fn served(tasks: &[Task]) -> impl Iterator<Item = &'static Route> + '_ {
    ROUTES
        .iter()
        .filter(move |r| r.tasks.iter().any(|t| tasks.contains(t)))
}
