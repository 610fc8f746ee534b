//! The `http` source: `POST` a body of NDJSON or raw lines; the answer comes only after the
//! queue commit, so a 2xx means durable.
//!
//! | answer | when |
//! |---|---|
//! | 200 `{"accepted": n}` | every line committed (dead letters none: a bad line fails the request) |
//! | 400 + reason | empty body, or a line that is not JSON under `codec = "json"` (nothing stored) |
//! | 401 | `auth_token` is set and the request lacks `Authorization: Bearer <token>` |
//! | 413 | body over `max_body_bytes` |
//! | 503 + `Retry-After` | the queue refuses (full under `block`, or storage failing) |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio_util::sync::CancellationToken;

use crate::config::{Codec, HttpSourceConfig};
use crate::pipeline::Pipeline;
use crate::queue::QueueError;
use crate::record::Record;
use crate::source::{codec, lines};

struct Ingest {
    source: String,
    topic: String,
    codec: Codec,
    token: Option<String>,
    max_line: usize,
    pipeline: Arc<Pipeline>,
}

/// Serves until `shutdown`; requests in progress complete first.
pub async fn run(cfg: HttpSourceConfig, pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    let source = format!(
        "{}/{}",
        pipeline.name,
        cfg.name.as_deref().unwrap_or("http")
    );
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%source, listen = %cfg.listen, error = %e, "cannot listen; source disabled");
            return;
        }
    };
    tracing::info!(%source, listen = %cfg.listen, path = %cfg.path, "http source listening");
    let state = Arc::new(Ingest {
        topic: cfg.topic.clone().unwrap_or_else(|| pipeline.name.clone()),
        codec: cfg.codec,
        token: cfg.auth_token.clone(),
        max_line: cfg.max_body_bytes.min(crate::config::MAX_RECORD_BYTES),
        source: source.clone(),
        pipeline,
    });
    let app = Router::new()
        .route(&cfg.path, post(ingest))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(state);
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await;
    if let Err(e) = served {
        tracing::error!(%source, error = %e, "http source stopped");
    }
}

async fn ingest(
    State(s): State<Arc<Ingest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = &s.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            let mut r =
                (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let mut buf = body.to_vec();
    buf.push(b'\n');
    let found = lines::split_lines(&mut buf, s.max_line);
    if found.is_empty() {
        return (StatusCode::BAD_REQUEST, "empty body: no lines\n").into_response();
    }
    let records = Record::from_lines(
        &s.source,
        &s.topic,
        Some(("peer", &peer.to_string())),
        found,
    );
    // A bad line fails the whole request: the client resends it fixed, nothing half-stored.
    for (i, r) in records.iter().enumerate() {
        if let Err(reason) = codec::check(s.codec, r) {
            return (
                StatusCode::BAD_REQUEST,
                format!("line {}: {reason}\n", i + 1),
            )
                .into_response();
        }
    }
    let n = records.len();
    match s.pipeline.emit(records, Vec::new(), None).await {
        Ok(_) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"accepted\":{n}}}\n"),
        )
            .into_response(),
        Err(e @ (QueueError::Full(_) | QueueError::Unavailable { .. } | QueueError::Closed)) => {
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; retry later\n"),
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Compares secrets without an early exit, so timing does not reveal a prefix match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
