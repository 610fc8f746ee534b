//! The local admin HTTP endpoint of an agent or a sink: `/metrics` (Prometheus text,
//! `prometheus-client`), `/health` (alive), `/ready`, `/status` (JSON, what
//! `dataweaver status` shows) and `POST /reload` (re-read the config file).
//!
//! Metric names come from the in-memory [`Counters`]: `{pipeline}/{source}.{what}` is
//! `dataweaver_source_{what}_total{pipeline,source}`, `{pipeline}.transform.{name}.{what}`
//! is `dataweaver_transform_{what}_total{pipeline,transform}`, `{pipeline}.{what}` is
//! `dataweaver_pipeline_{what}_total{pipeline}`, `sink.{what}` is
//! `dataweaver_sink_{what}_total`. Queue, forwarder and transform-version figures are read
//! at scrape time.

#![warn(missing_docs, unreachable_pub)]

mod config;

pub use config::{AdminConfig, LogConfig, LogFormat, LogRotation};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use dataweaver_core::Counters;
use dataweaver_forward::ForwardStats;
use dataweaver_queue::Queue;
use dataweaver_transform::SwapSlot;

/// Asks the process to re-read its config; `Err` says why the new one is refused.
pub type ReloadFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What an admin endpoint serves.
pub trait View: Send + Sync + 'static {
    /// Prometheus exposition text. May block (reads the queue file).
    fn metrics(&self) -> String;
    /// `Ok` when ready to do its job; otherwise why not. May block.
    fn ready(&self) -> Result<(), String>;
    /// The figures `dataweaver status` shows. May block.
    fn status(&self) -> serde_json::Value;
    /// Re-reads the config.
    fn reload(&self) -> Result<(), String>;
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn metric_word(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The metric and labels a counter name maps to (see the module docs).
fn classify(name: &str) -> (String, Labels) {
    if let Some(what) = name.strip_prefix("sink.") {
        return (format!("sink_{}", metric_word(what)), Vec::new());
    }
    let Some((head, what)) = name.rsplit_once('.') else {
        return ("other".into(), labels(&[("name", name)]));
    };
    let what = metric_word(what);
    if let Some((pipeline, source)) = head.split_once('/') {
        return (
            format!("source_{what}"),
            labels(&[("pipeline", pipeline), ("source", source)]),
        );
    }
    if let Some((pipeline, transform)) = head.split_once(".transform.") {
        return (
            format!("transform_{what}"),
            labels(&[("pipeline", pipeline), ("transform", transform)]),
        );
    }
    (format!("pipeline_{what}"), labels(&[("pipeline", head)]))
}

/// Registers every counter and histogram of `counters` in `reg`.
fn register_counters(reg: &mut Registry, counters: &Counters) {
    let mut families: BTreeMap<String, Family<Labels, Counter>> = BTreeMap::new();
    for (name, value) in counters.snapshot() {
        let (metric, l) = classify(&name);
        families
            .entry(metric)
            .or_default()
            .get_or_create(&l)
            .inc_by(value);
    }
    for (metric, family) in families {
        let help = format!("{} (count)", metric.replace('_', " "));
        reg.register(metric, help, family);
    }
    for (name, family) in counters.histograms() {
        let help = format!("{} (seconds)", name.replace('_', " "));
        reg.register(name, help, family);
    }
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn gauge_f64(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn render(reg: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, reg);
    out
}

/// A registry with the build info and every counter and histogram of `counters`.
fn base_registry(counters: &Counters) -> Registry {
    let mut reg = Registry::with_prefix("dataweaver");
    build_info(&mut reg);
    register_counters(&mut reg, counters);
    reg
}

fn counters_json(counters: &Counters) -> serde_json::Map<String, serde_json::Value> {
    counters
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect()
}

fn call_reload(reload: &Option<ReloadFn>) -> Result<(), String> {
    match reload {
        Some(r) => r(),
        None => Err("this process cannot reload its config".into()),
    }
}

fn build_info(reg: &mut Registry) {
    let f: Family<Labels, Gauge> = Family::default();
    f.get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    reg.register("build_info", "The running DataWeaver version", f);
}

/// The agent's view: counters, queue, forwarder, transform versions.
pub struct AgentView {
    /// The agent's counters and histograms.
    pub counters: Arc<Counters>,
    /// The queue (read for depth, bytes, oldest age).
    pub queue: Queue,
    /// The forwarder's figures.
    pub forward: Arc<ForwardStats>,
    /// `(pipeline, transform, slot)` of every transform stage.
    pub transforms: Vec<(String, String, Arc<SwapSlot>)>,
    /// Unready after this long without a sink.
    pub ready_sink_down: Duration,
    /// Config reload, when the process supports it.
    pub reload: Option<ReloadFn>,
    /// When the agent started.
    pub started: Instant,
}

impl View for AgentView {
    fn metrics(&self) -> String {
        let mut reg = base_registry(&self.counters);
        if let Ok(st) = self.queue.stats() {
            gauge(
                &mut reg,
                "queue_depth_records",
                "Records queued, not yet acknowledged by a sink",
                st.depth as i64,
            );
            gauge(
                &mut reg,
                "queue_bytes",
                "Bytes of queued records",
                st.bytes as i64,
            );
            let age = st
                .oldest_ts_ns
                .map(|t| dataweaver_core::now_ns().saturating_sub(t) as f64 / 1e9)
                .unwrap_or(0.0);
            gauge_f64(
                &mut reg,
                "queue_oldest_age_seconds",
                "Age of the oldest unacknowledged record",
                age,
            );
            gauge(
                &mut reg,
                "queue_dead_letters",
                "Records in the dead-letter table",
                st.dead_letters as i64,
            );
            counter(
                &mut reg,
                "queue_dropped_newest",
                "Records dropped by when_full = drop_newest",
                st.dropped_newest,
            );
            counter(
                &mut reg,
                "queue_dropped_oldest",
                "Records dropped by when_full = drop_oldest",
                st.dropped_oldest,
            );
            counter(
                &mut reg,
                "queue_corrupt_dropped",
                "Records lost in corrupt queue chunks",
                st.corrupt_dropped,
            );
            counter(
                &mut reg,
                "queue_corrupt_dead_lettered",
                "Records of queue chunks that failed their checksum, dead-lettered",
                st.corrupt_dead,
            );
            counter(
                &mut reg,
                "queue_files_set_aside",
                "Corrupt queue files set aside before this queue started",
                st.set_aside,
            );
        }
        let f = &self.forward;
        gauge(
            &mut reg,
            "forward_connected",
            "1 while a data stream to a sink is open",
            i64::from(f.connected.load(Relaxed)),
        );
        gauge_f64(
            &mut reg,
            "forward_sink_down_seconds",
            "How long no sink has been connected (0 while connected)",
            f.down_for().map_or(0.0, |d| d.as_secs_f64()),
        );
        counter(
            &mut reg,
            "forward_bytes_sent",
            "Bytes of batches sent to sinks",
            f.bytes_sent.load(Relaxed),
        );
        counter(
            &mut reg,
            "forward_batches_acked",
            "Batches acknowledged by sinks",
            f.batches_acked.load(Relaxed),
        );
        counter(
            &mut reg,
            "forward_records_acked",
            "Records acknowledged by sinks",
            f.records_acked.load(Relaxed),
        );
        counter(
            &mut reg,
            "forward_sessions",
            "Sessions opened with sinks (reconnects + 1)",
            f.sessions.load(Relaxed),
        );
        reg.register(
            "forward_batch_rtt_seconds",
            "Time from sending a batch to its acknowledgement",
            f.batch_rtt.clone(),
        );
        let info: Family<Labels, Gauge> = Family::default();
        for (p, t, slot) in &self.transforms {
            let (version, _) = slot.active_version();
            info.get_or_create(&labels(&[
                ("pipeline", p),
                ("transform", t),
                ("version", &version),
            ]))
            .set(1);
        }
        reg.register(
            "transform_info",
            "The module version each transform runs",
            info,
        );
        render(&reg)
    }

    fn ready(&self) -> Result<(), String> {
        let st = self
            .queue
            .stats()
            .map_err(|e| format!("queue unreadable: {e}"))?;
        let max = self.queue.max_bytes();
        // Full is full whatever the bytes say: an append larger than the room left is
        // refused (or dropped) well before the file reaches the limit.
        if st.bytes >= max / 10 * 9 || self.queue.is_full() {
            return Err(format!(
                "queue at {} of {max} bytes: buffering beyond its limits",
                st.bytes
            ));
        }
        match self.forward.down_for() {
            Some(d) if d > self.ready_sink_down => Err(format!(
                "no sink reachable for {} s (limit {} s)",
                d.as_secs(),
                self.ready_sink_down.as_secs()
            )),
            _ => Ok(()),
        }
    }

    fn status(&self) -> serde_json::Value {
        let f = &self.forward;
        let sink = f.sink.lock().map(|s| s.clone()).unwrap_or_default();
        let counters = counters_json(&self.counters);
        let transforms: Vec<serde_json::Value> = self
            .transforms
            .iter()
            .map(|(p, t, slot)| {
                serde_json::json!({"pipeline": p, "transform": t, "version": slot.active_version().0})
            })
            .collect();
        serde_json::json!({
            "kind": "agent",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "queue": self.queue.stats().ok(),
            "forward": {
                "connected": f.connected.load(Relaxed),
                "sink": sink,
                "down_secs": f.down_for().map(|d| d.as_secs()),
                "bytes_sent": f.bytes_sent.load(Relaxed),
                "batches_acked": f.batches_acked.load(Relaxed),
                "records_acked": f.records_acked.load(Relaxed),
                "sessions": f.sessions.load(Relaxed),
            },
            "transforms": transforms,
            "counters": counters,
            "ready": self.ready().err().unwrap_or_else(|| "ready".into()),
        })
    }

    fn reload(&self) -> Result<(), String> {
        call_reload(&self.reload)
    }
}

/// The sink's view: its counters and its journal's health.
pub struct SinkView {
    /// The sink's counters.
    pub counters: Arc<Counters>,
    /// Whether the journal's storage is failing (the sink is unready meanwhile).
    pub journal_failing: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Config reload, when supported.
    pub reload: Option<ReloadFn>,
    /// When the sink started.
    pub started: Instant,
}

impl View for SinkView {
    fn metrics(&self) -> String {
        let mut reg = base_registry(&self.counters);
        let snap: BTreeMap<String, u64> = self.counters.snapshot().into_iter().collect();
        let opened = snap.get("sink.connections_opened").copied().unwrap_or(0);
        let closed = snap.get("sink.connections_closed").copied().unwrap_or(0);
        gauge(
            &mut reg,
            "sink_connections",
            "Agent connections open now",
            opened.saturating_sub(closed) as i64,
        );
        gauge(
            &mut reg,
            "sink_journal_failing",
            "1 while the journal's storage fails and batches are refused",
            i64::from((self.journal_failing)()),
        );
        render(&reg)
    }

    fn ready(&self) -> Result<(), String> {
        if (self.journal_failing)() {
            return Err("journal storage is failing (disk full?); batches are refused".into());
        }
        Ok(())
    }

    fn status(&self) -> serde_json::Value {
        let counters = counters_json(&self.counters);
        serde_json::json!({
            "kind": "sink",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "counters": counters,
            "ready": self.ready().err().unwrap_or_else(|| "ready".into()),
        })
    }

    fn reload(&self) -> Result<(), String> {
        call_reload(&self.reload)
    }
}

type Shared = Arc<dyn View>;

async fn blocking<T: Send + 'static>(
    v: Shared,
    f: impl FnOnce(&dyn View) -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(move || f(v.as_ref()))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

/// OpenMetrics text (what `prometheus-client` writes) as the classic Prometheus text
/// format: a counter family `x` has its samples named `x_total`, so its HELP and TYPE lines
/// must say `x_total` there, and there is no `# EOF`.
fn to_classic(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out += &format!("{tag}{name}_total {tail}\n");
                } else {
                    out += line;
                    out.push('\n');
                }
            }
            None => {
                out += line;
                out.push('\n');
            }
        }
    }
    out
}

/// OpenMetrics when the scraper asks for it, else the classic text format.
async fn metrics(State(v): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let open_metrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match blocking(v, |v| v.metrics()).await {
        Ok(text) if open_metrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            to_classic(&text),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(v): State<Shared>) -> Response {
    match blocking(v, |v| v.ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn status(State(v): State<Shared>) -> Response {
    match blocking(v, |v| v.status()).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(r) => r,
    }
}

async fn reload(State(v): State<Shared>) -> Response {
    match blocking(v, |v| v.reload()).await {
        Ok(Ok(())) => (StatusCode::OK, "reloading\n").into_response(),
        Ok(Err(why)) => {
            (StatusCode::BAD_REQUEST, format!("config refused: {why}\n")).into_response()
        }
        Err(r) => r,
    }
}

/// Serves `view` on `listen` until `shutdown`. A port already in use is logged and
/// skipped: the data path matters more than its dashboard.
pub async fn serve(listen: SocketAddr, view: Shared, shutdown: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "admin endpoint not started");
            return;
        }
    };
    tracing::info!(%listen, "admin endpoint: /metrics /health /ready /status, POST /reload");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/reload", post(reload))
        .with_state(view);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "admin endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_map_to_labelled_metrics() {
        assert_eq!(
            classify("app/file.records_in"),
            (
                "source_records_in".into(),
                labels(&[("pipeline", "app"), ("source", "file")])
            )
        );
        assert_eq!(
            classify("app.transform.enrich.v2.trap"),
            (
                "transform_trap".into(),
                labels(&[("pipeline", "app"), ("transform", "enrich.v2")])
            )
        );
        assert_eq!(
            classify("app.dead_lettered"),
            (
                "pipeline_dead_lettered".into(),
                labels(&[("pipeline", "app")])
            )
        );
        assert_eq!(classify("sink.records"), ("sink_records".into(), vec![]));
    }

    #[test]
    fn classic_text_names_counter_families_with_total() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
