//! The `http` source: `POST` a body of NDJSON or raw lines; the answer comes only after the
//! queue commit, so a 2xx means durable.
//!
//! | answer | when |
//! |---|---|
//! | 200 `{"accepted": n, "dropped": m}` | committed: `n` records queued, `m` dropped by `when_full = "drop_newest"` (a bad line fails the request instead) |
//! | 400 + reason | empty body, or a line that is not JSON under `codec = "json"` (nothing stored) |
//! | 401 | `auth_token` is set and the request lacks `Authorization: Bearer <token>` |
//! | 408 | the body did not arrive within `body_read_timeout_ms` (nothing stored; closed) |
//! | 413 | body over `max_body_bytes` |
//! | 503 + `Retry-After` | the queue refuses (full under `block`, or storage failing), or dropped every record (`{"accepted":0,"dropped":m}`), or `max_connections` are open (closed at once) |
//!
//! Connections are driven by hyper directly rather than `axum::serve`, which sets no timer
//! (so no header read timeout) and accepts without bound: a slow client would hold its
//! file descriptor forever, and enough of them starve the rest of the agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::pipeline::EmitError;
use crate::pipeline::Pipeline;
use crate::{Codec, HttpSourceConfig};
use crate::{codec, lines};
use dataweaver_core::Record;

/// File descriptors left to the rest of the agent (queue, files tailed, admin endpoint,
/// other sources) when the open-files limit caps `max_connections`.
const RESERVED_FDS: u64 = 128;

/// How long a stopping source waits for requests in progress before closing them.
const DRAIN_ON_STOP: Duration = Duration::from_secs(3);

struct Ingest {
    source: String,
    topic: String,
    codec: Codec,
    token: Option<String>,
    max_line: usize,
    body_timeout: Duration,
    pipeline: Arc<Pipeline>,
}

/// Serves until `shutdown`; requests in progress get `DRAIN_ON_STOP` to complete.
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
    let max_connections = connection_budget(&source, cfg.max_connections);
    tracing::info!(%source, listen = %cfg.listen, path = %cfg.path, max_connections, "http source listening");
    let refused = pipeline
        .counters
        .counter(&format!("{source}.connections_refused"));
    let timed_out = pipeline
        .counters
        .counter(&format!("{source}.connections_timed_out"));
    let state = Arc::new(Ingest {
        topic: cfg.topic.clone().unwrap_or_else(|| pipeline.name.clone()),
        codec: cfg.codec,
        token: cfg.auth_token.clone(),
        max_line: cfg.max_body_bytes.min(dataweaver_wire::MAX_RECORD_BYTES),
        body_timeout: Duration::from_millis(cfg.body_read_timeout_ms),
        source: source.clone(),
        pipeline,
    });
    let app = Router::new()
        .route(&cfg.path, post(ingest))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms));
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors (EMFILE) among others: retrying at once spins.
                    tracing::warn!(%source, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(&stream);
            refused.fetch_add(1, Ordering::Relaxed);
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(%source, max_connections, refused = refused.load(Ordering::Relaxed), "http connection limit reached; refusing new connections");
            }
            continue;
        };
        let service = app
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        let (source, timed_out) = (source.clone(), timed_out.clone());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    timed_out.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(%source, %peer, error = %e, "http connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_ON_STOP, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(%source, "http requests still in progress at stop were cut off");
    }
}

/// `wanted`, or less if the open-files limit would leave under [`RESERVED_FDS`] to the rest
/// of the agent.
pub(crate) fn connection_budget(source: &str, wanted: usize) -> usize {
    let Some(limit) = open_files_limit() else {
        return wanted;
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FDS))
        .unwrap_or(usize::MAX)
        .max(1);
    if wanted > room {
        tracing::warn!(%source, max_connections = wanted, open_files_limit = limit, using = room, "max_connections lowered to fit the open-files limit");
        return room;
    }
    wanted
}

#[cfg(unix)]
fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

/// Answers a connection over the limit with a 503 (best effort: never waits on the
/// client) and closes it, so it costs its descriptor only for this moment.
fn refuse(stream: &tokio::net::TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 34\r\nConnection: close\r\n\r\ntoo many connections; retry later\n";
    let _ = stream.try_write(BUSY);
}

async fn ingest(
    State(s): State<Arc<Ingest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    if let Some(r) = unauthorized(&s, req.headers()) {
        return r;
    }
    // The token is checked before the body is read, and the body gets a deadline as a
    // whole: a client trickling bytes cannot hold the connection past it.
    let body = match tokio::time::timeout(s.body_timeout, Bytes::from_request(req, &())).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => return rejection.into_response(),
        Err(_) => {
            return (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                "request body not received in time\n",
            )
                .into_response();
        }
    };
    store(&s, peer, &body).await
}

/// The 401 answer, if `auth_token` is set and the request does not carry it.
fn unauthorized(s: &Ingest, headers: &HeaderMap) -> Option<Response> {
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
            return Some(r);
        }
    }
    None
}

/// Frames, checks and queues the body's lines; the answer says what became of them.
async fn store(s: &Ingest, peer: SocketAddr, body: &[u8]) -> Response {
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
        if let Err(reason) = codec::check_line(s.codec, s.max_line, r) {
            return (
                StatusCode::BAD_REQUEST,
                format!("line {}: {reason}\n", i + 1),
            )
                .into_response();
        }
    }
    match s.pipeline.emit(records, Vec::new(), None).await {
        Ok(a) => {
            let counts = (
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"accepted\":{},\"dropped\":{}}}\n", a.count, a.dropped),
            );
            // Nothing kept is no success: a client that retries later loses nothing, and
            // resending it duplicates nothing. Partly kept is a 200 with the counts (a
            // resend would duplicate what was queued).
            if a.count == 0 && a.dropped > 0 {
                retry_later((StatusCode::SERVICE_UNAVAILABLE, counts).into_response())
            } else {
                (StatusCode::OK, counts).into_response()
            }
        }
        Err(e @ (EmitError::Full(_) | EmitError::Unavailable(_) | EmitError::Closed)) => {
            retry_later(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}; retry later\n"),
                )
                    .into_response(),
            )
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn retry_later(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Compares secrets without an early exit, so timing does not reveal a prefix match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
