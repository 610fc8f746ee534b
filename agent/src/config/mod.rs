//! Configuration: TOML files read in two stages.
//!
//! Stage one ([`load`]) is serde with `deny_unknown_fields`, so a typo is an error, not a
//! silently ignored key. Stage two ([`AgentConfig::validate`], [`SinkConfig::validate`])
//! checks what serde cannot (non-empty lists, readable files, sane limits). Every problem
//! in the file is reported, each with the file, line, column and dotted key path, e.g.
//! `agent.toml:7:10: forward.window: invalid type: string "x", expected usize`.
//! The types here are also the source of the reference, `docs/config.md` ([`reference`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

mod check;
mod load;
mod reference;

pub use check::{Invalid, MAX_RECORD_BYTES};
pub use load::{ConfigError, Kind, Problem, detect_kind, load_agent, load_sink, parse};
pub use reference::reference;

/// Paths to the PEM files of one side of a mutual-TLS connection.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signs the peers this side accepts.
    pub ca: PathBuf,
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

/// The agent's configuration file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the queue and checkpoints live.
    pub data_dir: PathBuf,
    /// How to reach the sink.
    pub forward: ForwardConfig,
    /// Queue tuning.
    #[serde(default)]
    pub queue: QueueConfig,
    /// The pipelines this agent runs.
    pub pipelines: Vec<PipelineConfig>,
    /// Remote transform updates (pushed through the sink).
    #[serde(default)]
    pub control: ControlConfig,
    /// The local admin HTTP endpoint (`/metrics`, `/health`, `/ready`, `/status`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// The admin HTTP endpoint.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether to serve it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address (default loopback: 127.0.0.1:7410 for an agent, :7411 for a sink). It
    /// serves no secrets but lets anyone who reaches it reload the config: keep it local.
    pub listen: Option<std::net::SocketAddr>,
    /// `/ready` turns unready when no sink has been reachable for this long (agent).
    #[serde(default = "default_ready_down")]
    pub ready_sink_down_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: None,
            ready_sink_down_secs: default_ready_down(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_ready_down() -> u64 {
    60
}

/// Log output.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Filter (`info`, `dataweaver=debug,warn`); `RUST_LOG` and `--log` override it.
    pub level: Option<String>,
    /// `human` (default) or `json` (one object per line: timestamp, level, target,
    /// fields, spans; for Elasticsearch / Loki).
    #[serde(default)]
    pub format: LogFormat,
    /// Write to this file (rotated) instead of stderr.
    pub file: Option<PathBuf>,
    /// Rotation of `file`: `daily` (default), `hourly` or `never`.
    #[serde(default)]
    pub rotate: LogRotation,
    /// Rotated files kept (the oldest are deleted).
    #[serde(default = "default_log_keep")]
    pub keep: usize,
}

fn default_log_keep() -> usize {
    7
}

/// Log line format.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable text.
    #[default]
    Human,
    /// JSON objects, one per line.
    Json,
}

/// When a log file rotates.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LogRotation {
    /// Once a day.
    #[default]
    Daily,
    /// Once an hour.
    Hourly,
    /// Never.
    Never,
}

/// Which pushed modules the agent accepts and how it watches them.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Public keys (`ed25519:<base64>`, as `transform keygen` writes them) whose
    /// signatures the agent accepts. Empty: every pushed module is refused.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Batches watched after a pushed version starts.
    #[serde(default = "default_rollback_window")]
    pub rollback_window_batches: u32,
    /// Share of those batches that may fail (trap, limit, or every record in error)
    /// before the previous version is swapped back in.
    #[serde(default = "default_rollback_share")]
    pub rollback_failed_share: f64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            trusted_keys: Vec::new(),
            rollback_window_batches: default_rollback_window(),
            rollback_failed_share: default_rollback_share(),
        }
    }
}

fn default_rollback_window() -> u32 {
    10
}
fn default_rollback_share() -> f64 {
    0.5
}

/// Forwarder settings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Sink addresses (`host:port`), tried in order.
    pub sinks: Vec<String>,
    /// The name the sink's certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// The agent's certificate, key and the CA that signed the sink.
    pub tls: TlsFiles,
    /// Batches in flight before waiting for acks.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Most records per batch.
    #[serde(default = "default_batch_records")]
    pub batch_max_records: usize,
    /// Most payload bytes per batch.
    #[serde(default = "default_batch_bytes")]
    pub batch_max_bytes: usize,
    /// First reconnect delay; doubles up to `reconnect_max_ms`, with jitter.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// QUIC idle timeout: a silent sink is given up after this long (keep-alives go out
    /// every third of it, so only a dead or cut-off sink times out).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Longest wait for a sink's QUIC/TLS handshake; a dead sink costs this much per attempt.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// A sink that has not acknowledged the oldest batch in flight after this long is
    /// treated as failed (reconnect, or fail over).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// Failed attempts on one sink before moving to the next in `sinks`.
    #[serde(default = "default_failover_after")]
    pub failover_after: u32,
    /// While on a fallback sink, try the first one again after this long.
    #[serde(default = "default_failback")]
    pub failback_after_ms: u64,
}

/// Queue size and writer tuning.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Most bytes of records the queue holds (on disk) before pipelines' `when_full`
    /// policies apply. Default 1 GiB.
    #[serde(default = "default_queue_bytes")]
    pub max_bytes: u64,
    /// Free space the queue leaves on its filesystem: when less is left, the queue counts
    /// as full (pipelines' `when_full` applies) before writes fail. 0 disables the check
    /// (a failed write is still handled: the queue refuses, recovers and shrinks its limit).
    #[serde(default = "default_disk_reserve")]
    pub disk_reserve_bytes: u64,
    /// Most records in one commit.
    #[serde(default = "default_commit_records")]
    pub commit_max_records: usize,
    /// Most bytes in one commit.
    #[serde(default = "default_commit_bytes")]
    pub commit_max_bytes: usize,
    /// Extra wait to gather more records into a commit. 0 (the default) relies on natural
    /// batching: whatever arrives while a commit is being synced goes into the next one.
    #[serde(default)]
    pub commit_linger_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_bytes: default_queue_bytes(),
            disk_reserve_bytes: default_disk_reserve(),
            commit_max_records: default_commit_records(),
            commit_max_bytes: default_commit_bytes(),
            commit_linger_ms: 0,
        }
    }
}

/// What a pipeline does when the queue is at `queue.max_bytes`.
#[derive(
    Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse new records: sources hold them (files stop being read, HTTP answers 503,
    /// MQTT stops acknowledging) until the sink drains the queue. Nothing is lost; the cost
    /// is back-pressure on whoever produces the data. The default.
    #[default]
    Block,
    /// Accept and count, but drop the new records. Keeps sources flowing; loses the newest
    /// data while the queue is full: it keeps what fits, then drops until the queue is
    /// below 90 % of `max_bytes`, so what is kept has no holes.
    DropNewest,
    /// Make room by deleting the oldest unsent records, counted. Keeps the freshest data;
    /// loses the oldest.
    DropOldest,
}

/// One pipeline: sources whose records go through the same transforms into the queue.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique name; also the default topic.
    pub name: String,
    /// Policy when the queue is full.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Where records come from.
    pub sources: Vec<SourceConfig>,
    /// WASM transforms applied in order to every batch, before the queue.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
}

pub use crate::transform::config::{PreopenDir, TransformConfig, WasiGrant};

/// A source, selected by its `type` key.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// Tail files matching globs.
    File(FileSourceConfig),
    /// Newline-delimited lines over TCP (syslog-style), one connection per client.
    Tcp(NetSourceConfig),
    /// Newline-delimited lines in UDP datagrams: best-effort, drops counted.
    Udp(NetSourceConfig),
    /// Lines from the agent's standard input.
    Stdin(StdinSourceConfig),
    /// HTTP ingest: POST NDJSON or raw lines; answered only after the queue commit.
    Http(HttpSourceConfig),
    /// CPU, memory, disk and network of this machine, as JSON, every `interval_secs`.
    HostMetrics(HostMetricsConfig),
    /// MQTT subscriptions; QoS 1/2 messages are acknowledged to the broker only after commit.
    Mqtt(MqttSourceConfig),
}

/// An MQTT 3.1.1 subscriber (rumqttc) with manual acknowledgements.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Source name (default: `mqtt`).
    pub name: Option<String>,
    /// Broker `host:port`.
    pub broker: String,
    /// Client id: with `clean_session = false` the broker keeps this client's session
    /// (subscriptions and unacknowledged messages) while the agent is down.
    pub client_id: String,
    /// Topic filters (wildcards allowed) with their QoS.
    pub topics: Vec<MqttTopic>,
    /// Start a new session on every connect (loses what arrived while down). Default false.
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// First reconnect delay; doubles up to `reconnect_max_ms`, with jitter.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Username, if the broker wants one.
    pub username: Option<String>,
    /// Password (with `username`).
    pub password: Option<String>,
    /// TLS to the broker.
    pub tls: Option<MqttTls>,
    /// How payloads are checked (`raw`, `json`, ...).
    #[serde(default)]
    pub codec: Codec,
}

/// One subscription.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttTopic {
    /// Filter, e.g. `sensors/+/temp` or `plant/#`.
    pub filter: String,
    /// 0, 1 or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
}

/// TLS to an MQTT broker.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// Client certificate, if the broker asks for one.
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
    /// Name to check the broker's certificate against (default: the broker's host).
    pub server_name: Option<String>,
}

impl SourceConfig {
    /// The configured or default name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::File(f) => f.name.as_deref().unwrap_or("file"),
            SourceConfig::Tcp(n) => n.name.as_deref().unwrap_or("tcp"),
            SourceConfig::Udp(n) => n.name.as_deref().unwrap_or("udp"),
            SourceConfig::Stdin(n) => n.name.as_deref().unwrap_or("stdin"),
            SourceConfig::Http(h) => h.name.as_deref().unwrap_or("http"),
            SourceConfig::HostMetrics(h) => h.name.as_deref().unwrap_or("host_metrics"),
            SourceConfig::Mqtt(m) => m.name.as_deref().unwrap_or("mqtt"),
        }
    }
}

/// A TCP or UDP line listener.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetSourceConfig {
    /// Source name (default: the type).
    pub name: Option<String>,
    /// Address to listen on, e.g. `127.0.0.1:5140`.
    pub listen: SocketAddr,
    /// Longer lines are split into records of this size.
    #[serde(default = "default_net_line")]
    pub max_line_bytes: usize,
    /// How each line is interpreted.
    #[serde(default)]
    pub codec: Codec,
    /// Record topic (default: the pipeline name).
    pub topic: Option<String>,
    /// UDP: records held in memory between the socket and the queue; beyond this, datagrams
    /// are dropped and counted (`<source>.dropped`). TCP ignores it (it pushes back instead).
    #[serde(default = "default_buffer_records")]
    pub buffer_records: usize,
    /// TCP: open connections at most; more are closed at once and counted
    /// (`<source>.connections_refused`), so idle or slow senders cannot take the file
    /// descriptors the rest of the agent needs. UDP ignores it.
    #[serde(default = "default_net_connections")]
    pub max_connections: usize,
}

/// HTTP ingest.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Source name (default `http`).
    pub name: Option<String>,
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Path that accepts POSTs.
    #[serde(default = "default_http_path")]
    pub path: String,
    /// Larger bodies get 413.
    #[serde(default = "default_http_body")]
    pub max_body_bytes: usize,
    /// `json`: the body is NDJSON and every line must parse (else 400, nothing stored);
    /// `raw`/`binary`: one record per line.
    #[serde(default)]
    pub codec: Codec,
    /// If set, requests need `Authorization: Bearer <token>` (else 401).
    pub auth_token: Option<String>,
    /// Record topic (default: the pipeline name).
    pub topic: Option<String>,
    /// A connection that has not sent a whole request header this long after it opened (or
    /// after its last answer, when kept alive) is closed.
    #[serde(default = "default_http_header_timeout")]
    pub header_read_timeout_ms: u64,
    /// A request whose body has not fully arrived this long after its header gets 408 and
    /// the connection is closed (nothing stored).
    #[serde(default = "default_http_body_timeout")]
    pub body_read_timeout_ms: u64,
    /// Open connections at most; more are answered 503 and closed at once, so slow or idle
    /// clients cannot take the file descriptors the rest of the agent needs.
    #[serde(default = "default_http_connections")]
    pub max_connections: usize,
}

/// Host metrics sampling.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostMetricsConfig {
    /// Source name (default `host_metrics`).
    pub name: Option<String>,
    /// Seconds between samples.
    #[serde(default = "default_metrics_interval")]
    pub interval_secs: u64,
    /// Record topic (default: the pipeline name).
    pub topic: Option<String>,
}

/// Standard input.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {
    /// Source name (default `stdin`).
    pub name: Option<String>,
    /// Longer lines are split into records of this size.
    #[serde(default = "default_net_line")]
    pub max_line_bytes: usize,
    /// How each line is interpreted.
    #[serde(default)]
    pub codec: Codec,
    /// Record topic (default: the pipeline name).
    pub topic: Option<String>,
}

/// Where a file the source has never seen starts being read.
#[derive(
    Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// Read the whole file (the default: nothing already written is missed).
    #[default]
    Beginning,
    /// Only lines appended after the agent first saw the file.
    End,
}

/// File tail settings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Source name (default `file`).
    pub name: Option<String>,
    /// Glob patterns of files to tail.
    pub include: Vec<String>,
    /// Glob patterns to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where a new file starts.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// How often to look for new files and appended data when change events are not
    /// available (`watch = false`, or a directory that cannot be watched).
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Watch the globs' directories for changes (inotify, FSEvents, ReadDirectoryChangesW):
    /// new files and lines are seen at once. Default true; polling is the fallback.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// While watching works, a full rescan this often catches what events missed.
    #[serde(default = "default_rescan_ms")]
    pub rescan_interval_ms: u64,
    /// Most files open at once (and at most half the fd limit); idle ones are closed and
    /// reopened by identity when they change.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Longest record; what happens to a longer line is `long_lines`.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// A line over `max_line_bytes`: `split` into records of that size, `truncate` to it, or
    /// `dead_letter` it (default `split`, under `codec = "json"` `dead_letter`). Counted as
    /// `long_lines`.
    pub long_lines: Option<LongLines>,
    /// Bytes read per step (and so per queue append).
    #[serde(default = "default_read_bytes")]
    pub read_chunk_bytes: usize,
    /// Record topic (default: the pipeline name).
    pub topic: Option<String>,
    /// How each line is interpreted.
    #[serde(default)]
    pub codec: Codec,
}

/// What the file source does with a line longer than `max_line_bytes`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LongLines {
    /// Cut it into records of `max_line_bytes`.
    Split,
    /// Keep its first `max_line_bytes` as the record; drop the rest of the line.
    Truncate,
    /// Dead-letter its first `max_line_bytes` with the reason; no record.
    DeadLetter,
}

/// How a source interprets each record's bytes.
#[derive(
    Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// Text lines, kept as they are (the default).
    #[default]
    Raw,
    /// Each record must be one JSON value in UTF-8, nested at most
    /// [`JSON_MAX_DEPTH`](crate::source::codec::JSON_MAX_DEPTH) deep; anything else goes to
    /// the dead-letter table with the reason (and the byte offset where it applies).
    Json,
    /// Bytes passed through untouched (no UTF-8 or any other expectation).
    Binary,
}

/// The sink's configuration file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Where the journal lives.
    pub data_dir: PathBuf,
    /// The sink's certificate, key and the CA whose agents it accepts.
    pub tls: TlsFiles,
    /// Name reported to agents (default: the host name part of the certificate).
    pub sink_id: Option<String>,
    /// QUIC idle timeout.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Where journaled records go.
    pub outputs: Vec<OutputConfig>,
    /// Client certificate names (CN) allowed to push, roll back and query transforms.
    #[serde(default)]
    pub admins: Vec<String>,
    /// The local admin HTTP endpoint (`/metrics`, `/health`, `/ready`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// What one agent, and all of them together, may hold at this sink.
    #[serde(default)]
    pub limits: SinkLimits,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// The sink's `[limits]`: bounds on what agents may hold, so one cannot exhaust the sink.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SinkLimits {
    /// Open connections, all agents together.
    pub max_connections: usize,
    /// Open connections of one agent (certificate name).
    pub max_connections_per_agent: usize,
    /// Open streams of one agent, over all its connections.
    pub max_streams_per_agent: usize,
    /// Open streams, all agents together.
    pub max_streams: usize,
    /// Queue ids one agent may hold marks for in the journal.
    pub max_queues_per_agent: usize,
    /// Bytes of frames one agent's streams may hold at once, read and waiting for the
    /// journal; beyond it the sink stops reading that agent (QUIC flow control pushes back).
    pub max_frame_bytes_per_agent: u64,
    /// The same for all agents together.
    pub max_frame_bytes: u64,
}

impl Default for SinkLimits {
    fn default() -> Self {
        SinkLimits {
            max_connections: 1024,
            max_connections_per_agent: 16,
            max_streams_per_agent: 32,
            max_streams: 4096,
            max_queues_per_agent: 64,
            max_frame_bytes_per_agent: 256 << 20,
            max_frame_bytes: 1 << 30,
        }
    }
}

/// An output, selected by its `type` key.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConfig {
    /// Rotating JSON-lines files.
    Jsonl(JsonlOutputConfig),
    /// JSON lines on standard output (at-least-once: stdout cannot be synced).
    Stdout(StdoutOutputConfig),
}

/// Rotating JSONL files.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlOutputConfig {
    /// Directory of `out-NNNNNNNN.jsonl` files.
    pub dir: PathBuf,
    /// Rotate after a file reaches this size.
    #[serde(default = "default_jsonl_max")]
    pub max_file_bytes: u64,
    /// Mode of the output files, octal (`"0640"` lets a log shipper's group read them);
    /// the directory gets the matching search bits. Default owner-only.
    #[serde(default = "default_jsonl_mode")]
    pub file_mode: String,
}

/// Standard output.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutOutputConfig {}

fn default_keep_alive() -> u64 {
    30
}
fn default_qos() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_server_name() -> String {
    "localhost".into()
}
fn default_window() -> usize {
    4
}
fn default_batch_records() -> usize {
    2048
}
fn default_batch_bytes() -> usize {
    1 << 20
}
fn default_reconnect_min() -> u64 {
    100
}
fn default_reconnect_max() -> u64 {
    5_000
}
// The defaults leave a dead sink for the next one within 5 s: idle timeout (3 s) + one
// more connect attempt (1 s) + back-offs (issue 12, defect 8). Links with a round trip near
// a second (satellite) need a larger connect timeout.
fn default_idle_timeout() -> u64 {
    3_000
}
fn default_connect_timeout() -> u64 {
    1_000
}
fn default_failover_after() -> u32 {
    2
}
fn default_failback() -> u64 {
    300_000
}
fn default_ack_timeout() -> u64 {
    30_000
}
fn default_metrics_interval() -> u64 {
    10
}
fn default_http_path() -> String {
    "/ingest".into()
}
fn default_http_body() -> usize {
    10 << 20
}
fn default_http_header_timeout() -> u64 {
    10_000
}
fn default_http_body_timeout() -> u64 {
    30_000
}
fn default_http_connections() -> usize {
    256
}
fn default_net_connections() -> usize {
    256
}
fn default_net_line() -> usize {
    64 << 10
}
fn default_buffer_records() -> usize {
    65_536
}
fn default_disk_reserve() -> u64 {
    1 << 20
}
fn default_queue_bytes() -> u64 {
    1 << 30
}
fn default_commit_records() -> usize {
    16_384
}
fn default_commit_bytes() -> usize {
    8 << 20
}
fn default_poll_ms() -> u64 {
    250
}
fn default_rescan_ms() -> u64 {
    10_000
}
fn default_max_open_files() -> usize {
    512
}
fn default_max_line() -> usize {
    1 << 20
}
fn default_read_bytes() -> usize {
    1 << 20
}
fn default_jsonl_max() -> u64 {
    128 << 20
}
fn default_jsonl_mode() -> String {
    "0600".into()
}
