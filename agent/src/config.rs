//! Configuration: TOML files read in two stages.
//!
//! Stage one is serde with `deny_unknown_fields`, so a typo is an error, not a silently
//! ignored key. Stage two ([`AgentConfig::validate`], [`SinkConfig::validate`]) checks what
//! serde cannot (non-empty lists, readable files, sane limits). Every error names the file,
//! the line where it can tell, and the dotted key path, e.g.
//! `agent.toml:7:10: forward.window: invalid type: string "x", expected usize`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration error that names the file, the line (when known) and the key.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {key}: {message}", file.display(), line.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column, when the parser could tell.
    pub line: Option<(usize, usize)>,
    /// Dotted path of the offending key (`forward.sinks[0]`), or `(file)`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Paths to the PEM files of one side of a mutual-TLS connection.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Default, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable text.
    #[default]
    Human,
    /// JSON objects, one per line.
    Json,
}

/// When a log file rotates.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTopic {
    /// Filter, e.g. `sensors/+/temp` or `plant/#`.
    pub filter: String,
    /// 0, 1 or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
}

/// TLS to an MQTT broker.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// Read the whole file (the default: nothing already written is missed).
    #[default]
    Beginning,
    /// Only lines appended after the agent first saw the file.
    End,
}

/// File tail settings.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConfig {
    /// Rotating JSON-lines files.
    Jsonl(JsonlOutputConfig),
    /// JSON lines on standard output (at-least-once: stdout cannot be synced).
    Stdout(StdoutOutputConfig),
}

/// Rotating JSONL files.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

/// Which kind of config a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `dataweaver agent`.
    Agent,
    /// `dataweaver sink`.
    Sink,
}

/// Guesses the kind from the top-level keys: a sink has `listen`, an agent `forward`.
pub fn detect_kind(path: &Path) -> Result<Kind, ConfigError> {
    let raw = read(path)?;
    // A file that does not parse is reported by the loader, with its position.
    let top: toml::Table = toml::from_str(&raw).unwrap_or_default();
    Ok(
        if top.contains_key("listen") && !top.contains_key("forward") {
            Kind::Sink
        } else {
            Kind::Agent
        },
    )
}

/// Reads, parses and validates an agent config; relative paths become relative to the file.
pub fn load_agent(path: &Path) -> Result<AgentConfig, ConfigError> {
    let raw = read(path)?;
    let mut cfg: AgentConfig = parse(path, &raw)?;
    let base = base_dir(path);
    cfg.data_dir = base.join(&cfg.data_dir);
    cfg.log.file = cfg.log.file.as_ref().map(|f| base.join(f));
    resolve_tls(&mut cfg.forward.tls, &base);
    for p in &mut cfg.pipelines {
        for t in &mut p.transforms {
            t.module = base.join(&t.module);
            for d in t.wasi.iter_mut().flat_map(|w| w.dirs.iter_mut()) {
                d.host = base.join(&d.host);
            }
        }
        for s in &mut p.sources {
            if let SourceConfig::Mqtt(m) = s
                && let Some(t) = &mut m.tls
            {
                t.ca = base.join(&t.ca);
                t.cert = t.cert.as_ref().map(|c| base.join(c));
                t.key = t.key.as_ref().map(|k| base.join(k));
            }
            let SourceConfig::File(f) = s else { continue };
            for g in f.include.iter_mut().chain(f.exclude.iter_mut()) {
                if Path::new(g.as_str()).is_relative() {
                    *g = base.join(&*g).to_string_lossy().into_owned();
                }
            }
        }
    }
    cfg.validate()
        .map_err(|(key, message)| located(path, &raw, key, message))?;
    Ok(cfg)
}

/// Reads, parses and validates a sink config; relative paths become relative to the file.
pub fn load_sink(path: &Path) -> Result<SinkConfig, ConfigError> {
    let raw = read(path)?;
    let mut cfg: SinkConfig = parse(path, &raw)?;
    let base = base_dir(path);
    cfg.data_dir = base.join(&cfg.data_dir);
    cfg.log.file = cfg.log.file.as_ref().map(|f| base.join(f));
    resolve_tls(&mut cfg.tls, &base);
    for out in &mut cfg.outputs {
        if let OutputConfig::Jsonl(j) = out {
            j.dir = base.join(&j.dir);
        }
    }
    cfg.validate()
        .map_err(|(key, message)| located(path, &raw, key, message))?;
    Ok(cfg)
}

type Invalid = (String, String);

/// Largest record or batch a config may ask for: half a wire frame, leaving room for the
/// per-record envelope.
pub const MAX_RECORD_BYTES: usize = crate::wire::MAX_FRAME / 2;

impl AgentConfig {
    /// Checks what serde cannot; the error is `(key path, message)`.
    pub fn validate(&self) -> Result<(), Invalid> {
        let f = &self.forward;
        if f.sinks.is_empty() {
            return Err((
                "forward.sinks".into(),
                "at least one sink address is needed".into(),
            ));
        }
        for (i, s) in f.sinks.iter().enumerate() {
            if !s.contains(':') {
                return Err((
                    format!("forward.sinks[{i}]"),
                    format!("`{s}` is not host:port"),
                ));
            }
        }
        nonzero("forward.window", f.window)?;
        nonzero("forward.batch_max_records", f.batch_max_records)?;
        nonzero("forward.batch_max_bytes", f.batch_max_bytes)?;
        nonzero("forward.ack_timeout_ms", f.ack_timeout_ms as usize)?;
        nonzero("forward.connect_timeout_ms", f.connect_timeout_ms as usize)?;
        nonzero("forward.failover_after", f.failover_after as usize)?;
        nonzero("forward.failback_after_ms", f.failback_after_ms as usize)?;
        // A batch (and so a single record) must fit in one wire frame.
        if f.batch_max_bytes > MAX_RECORD_BYTES {
            return Err((
                "forward.batch_max_bytes".into(),
                format!("at most {MAX_RECORD_BYTES}"),
            ));
        }
        if f.reconnect_min_ms == 0 || f.reconnect_min_ms > f.reconnect_max_ms {
            return Err((
                "forward.reconnect_min_ms".into(),
                "must be > 0 and <= reconnect_max_ms".into(),
            ));
        }
        check_tls("forward.tls", &f.tls)?;
        nonzero("queue.max_bytes", self.queue.max_bytes as usize)?;
        nonzero("queue.commit_max_records", self.queue.commit_max_records)?;
        nonzero("queue.commit_max_bytes", self.queue.commit_max_bytes)?;
        if self.pipelines.is_empty() {
            return Err(("pipelines".into(), "at least one pipeline is needed".into()));
        }
        for (i, k) in self.control.trusted_keys.iter().enumerate() {
            crate::control::parse_public_key(k)
                .map_err(|e| (format!("control.trusted_keys[{i}]"), e))?;
        }
        let c = &self.control;
        if c.rollback_window_batches == 0 || !(0.0..1.0).contains(&c.rollback_failed_share) {
            return Err((
                "control.rollback_failed_share".into(),
                "needs rollback_window_batches > 0 and a share in [0, 1)".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            if !names.insert(&p.name) {
                return Err((
                    format!("pipelines[{i}].name"),
                    format!("duplicate pipeline `{}`", p.name),
                ));
            }
            if p.sources.is_empty() {
                return Err((
                    format!("pipelines[{i}].sources"),
                    "at least one source is needed".into(),
                ));
            }
            let mut transform_names = std::collections::HashSet::new();
            for (j, t) in p.transforms.iter().enumerate() {
                let key = format!("pipelines[{i}].transforms[{j}]");
                if !transform_names.insert(t.name()) {
                    return Err((
                        format!("{key}.name"),
                        format!("duplicate transform name `{}`", t.name()),
                    ));
                }
                if !t.module.is_file() {
                    return Err((
                        format!("{key}.module"),
                        format!("no such file: {}", t.module.display()),
                    ));
                }
                nonzero(&format!("{key}.deadline_ms"), t.deadline_ms as usize)?;
                nonzero(&format!("{key}.batch_max_records"), t.batch_max_records)?;
                if t.memory_max_bytes < (1 << 20) {
                    return Err((format!("{key}.memory_max_bytes"), "at least 1 MiB".into()));
                }
                if !(1..=(1 << 30)).contains(&t.output_max_bytes) {
                    return Err((
                        format!("{key}.output_max_bytes"),
                        "between 1 byte and 1 GiB".into(),
                    ));
                }
                // Guest code runs on the agent's own threads (2 MiB stacks): a WebAssembly
                // stack limit near that would overrun the native stack instead of trapping.
                if t.max_stack_bytes < (64 << 10) || t.max_stack_bytes > (1 << 20) {
                    return Err((
                        format!("{key}.max_stack_bytes"),
                        "between 64 KiB and 1 MiB".into(),
                    ));
                }
                for (k, d) in t.wasi.iter().flat_map(|w| w.dirs.iter()).enumerate() {
                    if !d.host.is_dir() {
                        return Err((
                            format!("{key}.wasi.dirs[{k}].host"),
                            format!("no such directory: {}", d.host.display()),
                        ));
                    }
                }
            }
            let mut source_names = std::collections::HashSet::new();
            for (j, s) in p.sources.iter().enumerate() {
                if !source_names.insert(s.name()) {
                    return Err((
                        format!("pipelines[{i}].sources[{j}].name"),
                        format!(
                            "duplicate source name `{}` in pipeline `{}` (checkpoints are kept per source name)",
                            s.name(),
                            p.name
                        ),
                    ));
                }
                let key = format!("pipelines[{i}].sources[{j}]");
                let fc = match s {
                    SourceConfig::File(fc) => fc,
                    SourceConfig::Tcp(n) | SourceConfig::Udp(n) => {
                        nonzero(&format!("{key}.max_line_bytes"), n.max_line_bytes)?;
                        if n.max_line_bytes > MAX_RECORD_BYTES {
                            return Err((
                                format!("{key}.max_line_bytes"),
                                format!("at most {MAX_RECORD_BYTES}"),
                            ));
                        }
                        nonzero(&format!("{key}.buffer_records"), n.buffer_records)?;
                        continue;
                    }
                    SourceConfig::Stdin(n) => {
                        nonzero(&format!("{key}.max_line_bytes"), n.max_line_bytes)?;
                        continue;
                    }
                    SourceConfig::HostMetrics(h) => {
                        nonzero(&format!("{key}.interval_secs"), h.interval_secs as usize)?;
                        continue;
                    }
                    SourceConfig::Mqtt(m) => {
                        check_mqtt(&key, m)?;
                        continue;
                    }
                    SourceConfig::Http(h) => {
                        nonzero(&format!("{key}.max_body_bytes"), h.max_body_bytes)?;
                        if !h.path.starts_with('/') {
                            return Err((format!("{key}.path"), "must start with /".into()));
                        }
                        if h.auth_token.as_deref() == Some("") {
                            return Err((format!("{key}.auth_token"), "must not be empty".into()));
                        }
                        continue;
                    }
                };
                if fc.include.is_empty() {
                    return Err((
                        format!("{key}.include"),
                        "at least one glob is needed".into(),
                    ));
                }
                for (k, g) in fc.include.iter().chain(&fc.exclude).enumerate() {
                    glob::Pattern::new(g).map_err(|e| {
                        (
                            format!("{key}.include[{k}]"),
                            format!("bad glob `{g}`: {e}"),
                        )
                    })?;
                }
                nonzero(
                    &format!("{key}.poll_interval_ms"),
                    fc.poll_interval_ms as usize,
                )?;
                nonzero(&format!("{key}.max_line_bytes"), fc.max_line_bytes)?;
                if fc.max_line_bytes > MAX_RECORD_BYTES {
                    return Err((
                        format!("{key}.max_line_bytes"),
                        format!("at most {MAX_RECORD_BYTES}"),
                    ));
                }
                nonzero(&format!("{key}.read_chunk_bytes"), fc.read_chunk_bytes)?;
                nonzero(&format!("{key}.max_open_files"), fc.max_open_files)?;
                if !(1..=86_400_000).contains(&fc.rescan_interval_ms) {
                    return Err((format!("{key}.rescan_interval_ms"), "1 ms to 1 day".into()));
                }
            }
        }
        in_ranges(self.bounds())
    }
}

impl SinkConfig {
    /// Checks what serde cannot; the error is `(key path, message)`.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_tls("tls", &self.tls)?;
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_connections_per_agent",
                l.max_connections_per_agent,
            ),
            ("limits.max_streams_per_agent", l.max_streams_per_agent),
            ("limits.max_streams", l.max_streams),
            ("limits.max_queues_per_agent", l.max_queues_per_agent),
        ] {
            if v == 0 || v > 1_000_000 {
                return Err((key.into(), "must be between 1 and 1000000".into()));
            }
        }
        if self.outputs.is_empty() {
            return Err(("outputs".into(), "at least one output is needed".into()));
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if let OutputConfig::Jsonl(j) = o
                && j.max_file_bytes < 4096
            {
                return Err((
                    format!("outputs[{i}].max_file_bytes"),
                    "must be at least 4096".into(),
                ));
            }
            if let OutputConfig::Jsonl(j) = o {
                crate::fsmode::parse_mode(&j.file_mode)
                    .map_err(|e| (format!("outputs[{i}].file_mode"), e))?;
            }
        }
        in_ranges(self.bounds())
    }
}

fn check_mqtt(key: &str, m: &MqttSourceConfig) -> Result<(), Invalid> {
    match m
        .broker
        .rsplit_once(':')
        .map(|(h, p)| (h, p.parse::<u16>()))
    {
        Some((h, Ok(_))) if !h.is_empty() => {}
        _ => {
            return Err((
                format!("{key}.broker"),
                format!("`{}` is not host:port", m.broker),
            ));
        }
    }
    if m.client_id.is_empty() {
        return Err((format!("{key}.client_id"), "must not be empty".into()));
    }
    if m.topics.is_empty() {
        return Err((format!("{key}.topics"), "at least one topic filter".into()));
    }
    for (i, t) in m.topics.iter().enumerate() {
        if t.qos > 2 {
            return Err((format!("{key}.topics[{i}].qos"), "0, 1 or 2".into()));
        }
        if t.filter.is_empty() {
            return Err((
                format!("{key}.topics[{i}].filter"),
                "must not be empty".into(),
            ));
        }
    }
    nonzero(
        &format!("{key}.keep_alive_secs"),
        m.keep_alive_secs as usize,
    )?;
    if m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms {
        return Err((
            format!("{key}.reconnect_min_ms"),
            "must be > 0 and <= reconnect_max_ms".into(),
        ));
    }
    if m.password.is_some() && m.username.is_none() {
        return Err((format!("{key}.password"), "needs a username".into()));
    }
    if let Some(t) = &m.tls {
        if !t.ca.is_file() {
            return Err((
                format!("{key}.tls.ca"),
                format!("no such file: {}", t.ca.display()),
            ));
        }
        if t.cert.is_some() != t.key.is_some() {
            return Err((format!("{key}.tls.cert"), "cert and key go together".into()));
        }
    }
    Ok(())
}

fn nonzero(key: &str, v: usize) -> Result<(), Invalid> {
    if v == 0 {
        Err((key.into(), "must be greater than 0".into()))
    } else {
        Ok(())
    }
}

fn check_tls(key: &str, tls: &TlsFiles) -> Result<(), Invalid> {
    for (name, p) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        if !p.is_file() {
            return Err((
                format!("{key}.{name}"),
                format!("no such file: {}", p.display()),
            ));
        }
    }
    Ok(())
}

/// One bounded key of a config: `(key path, value, min, max)`.
type Bound = (String, u64, u64, u64);

const MS_HOUR: u64 = 3_600_000;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Every value within its range, or the first that is not. The ranges are wide: they only
/// keep out what breaks the agent (a linger of 292 million years that hangs the writer,
/// a timeout of 0, a size no machine has), not unusual tuning.
fn in_ranges(bounds: Vec<Bound>) -> Result<(), Invalid> {
    for (key, v, min, max) in bounds {
        if !(min..=max).contains(&v) {
            return Err((
                key,
                format!("{v} is out of range: must be between {min} and {max}"),
            ));
        }
    }
    Ok(())
}

impl AgentConfig {
    /// The range of every duration, size and count key.
    fn bounds(&self) -> Vec<Bound> {
        let record = MAX_RECORD_BYTES as u64;
        let (f, q) = (&self.forward, &self.queue);
        let mut b: Vec<Bound> = vec![
            ("forward.window".into(), f.window as u64, 1, 1024),
            (
                "forward.batch_max_records".into(),
                f.batch_max_records as u64,
                1,
                1_000_000,
            ),
            (
                "forward.batch_max_bytes".into(),
                f.batch_max_bytes as u64,
                1,
                record,
            ),
            (
                "forward.reconnect_min_ms".into(),
                f.reconnect_min_ms,
                1,
                MS_HOUR,
            ),
            (
                "forward.reconnect_max_ms".into(),
                f.reconnect_max_ms,
                1,
                MS_HOUR,
            ),
            (
                "forward.idle_timeout_ms".into(),
                f.idle_timeout_ms,
                100,
                MS_HOUR,
            ),
            (
                "forward.ack_timeout_ms".into(),
                f.ack_timeout_ms,
                100,
                MS_HOUR,
            ),
            (
                "forward.connect_timeout_ms".into(),
                f.connect_timeout_ms,
                10,
                10 * 60_000,
            ),
            (
                "forward.failover_after".into(),
                f.failover_after.into(),
                1,
                1000,
            ),
            (
                "forward.failback_after_ms".into(),
                f.failback_after_ms,
                1,
                24 * MS_HOUR,
            ),
            ("queue.max_bytes".into(), q.max_bytes, 4096, 16 * TIB),
            (
                "queue.disk_reserve_bytes".into(),
                q.disk_reserve_bytes,
                0,
                TIB,
            ),
            (
                "queue.commit_max_records".into(),
                q.commit_max_records as u64,
                1,
                1_000_000,
            ),
            (
                "queue.commit_max_bytes".into(),
                q.commit_max_bytes as u64,
                1,
                GIB,
            ),
            (
                "queue.commit_linger_ms".into(),
                q.commit_linger_ms,
                0,
                10_000,
            ),
            (
                "admin.ready_sink_down_secs".into(),
                self.admin.ready_sink_down_secs,
                1,
                7 * 86_400,
            ),
            (
                "control.rollback_window_batches".into(),
                self.control.rollback_window_batches.into(),
                1,
                100_000,
            ),
        ];
        for (i, p) in self.pipelines.iter().enumerate() {
            for (j, t) in p.transforms.iter().enumerate() {
                let key = |k: &str| format!("pipelines[{i}].transforms[{j}].{k}");
                b.extend([
                    (key("memory_max_bytes"), t.memory_max_bytes, MIB, 4 * GIB),
                    (key("deadline_ms"), t.deadline_ms, 1, 600_000),
                    (
                        key("max_stack_bytes"),
                        t.max_stack_bytes as u64,
                        64 << 10,
                        MIB,
                    ),
                    (
                        key("batch_max_records"),
                        t.batch_max_records as u64,
                        1,
                        65_536,
                    ),
                ]);
            }
            for (j, s) in p.sources.iter().enumerate() {
                let key = |k: &str| format!("pipelines[{i}].sources[{j}].{k}");
                match s {
                    SourceConfig::File(c) => b.extend([
                        (key("poll_interval_ms"), c.poll_interval_ms, 1, MS_HOUR),
                        (key("max_line_bytes"), c.max_line_bytes as u64, 1, record),
                        (
                            key("read_chunk_bytes"),
                            c.read_chunk_bytes as u64,
                            1,
                            64 * MIB,
                        ),
                    ]),
                    SourceConfig::Tcp(c) | SourceConfig::Udp(c) => b.extend([
                        (key("max_line_bytes"), c.max_line_bytes as u64, 1, record),
                        (key("buffer_records"), c.buffer_records as u64, 1, 1 << 24),
                        (key("max_connections"), c.max_connections as u64, 1, 65_536),
                    ]),
                    SourceConfig::Stdin(c) => {
                        b.push((key("max_line_bytes"), c.max_line_bytes as u64, 1, record))
                    }
                    SourceConfig::Http(c) => b.extend([
                        (key("max_body_bytes"), c.max_body_bytes as u64, 1, GIB),
                        (
                            key("header_read_timeout_ms"),
                            c.header_read_timeout_ms,
                            100,
                            MS_HOUR,
                        ),
                        (
                            key("body_read_timeout_ms"),
                            c.body_read_timeout_ms,
                            100,
                            MS_HOUR,
                        ),
                        (key("max_connections"), c.max_connections as u64, 1, 65_536),
                    ]),
                    SourceConfig::HostMetrics(c) => {
                        b.push((key("interval_secs"), c.interval_secs, 1, 86_400))
                    }
                    // MQTT carries keep-alive as 16-bit seconds.
                    SourceConfig::Mqtt(c) => b.extend([
                        (
                            key("keep_alive_secs"),
                            c.keep_alive_secs,
                            1,
                            u16::MAX.into(),
                        ),
                        (key("reconnect_min_ms"), c.reconnect_min_ms, 1, MS_HOUR),
                        (key("reconnect_max_ms"), c.reconnect_max_ms, 1, MS_HOUR),
                    ]),
                }
            }
        }
        b
    }
}

impl SinkConfig {
    /// The range of every duration and size key.
    fn bounds(&self) -> Vec<Bound> {
        let mut b: Vec<Bound> = vec![
            ("idle_timeout_ms".into(), self.idle_timeout_ms, 100, MS_HOUR),
            (
                "admin.ready_sink_down_secs".into(),
                self.admin.ready_sink_down_secs,
                1,
                7 * 86_400,
            ),
        ];
        let l = &self.limits;
        for (k, v, max) in [
            ("max_connections", l.max_connections, 1 << 20),
            (
                "max_connections_per_agent",
                l.max_connections_per_agent,
                1 << 16,
            ),
            ("max_streams_per_agent", l.max_streams_per_agent, 1 << 16),
            ("max_streams", l.max_streams, 1 << 20),
            ("max_queues_per_agent", l.max_queues_per_agent, 1 << 16),
        ] {
            b.push((format!("limits.{k}"), v as u64, 1, max));
        }
        // At least one frame of the largest size must fit, else a stream could wait forever.
        for (k, v) in [
            ("max_frame_bytes_per_agent", l.max_frame_bytes_per_agent),
            ("max_frame_bytes", l.max_frame_bytes),
        ] {
            b.push((
                format!("limits.{k}"),
                v,
                crate::wire::MAX_FRAME as u64,
                1 << 40,
            ));
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if let OutputConfig::Jsonl(j) = o {
                b.push((
                    format!("outputs[{i}].max_file_bytes"),
                    j.max_file_bytes,
                    4096,
                    TIB,
                ));
            }
        }
        b
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.into(),
        line: None,
        key: "(file)".into(),
        message: e.to_string(),
    })
}

fn base_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn resolve_tls(tls: &mut TlsFiles, base: &Path) {
    tls.ca = base.join(&tls.ca);
    tls.cert = base.join(&tls.cert);
    tls.key = base.join(&tls.key);
}

/// Parses TOML into `T`, keeping the key path and the position of the first error.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path, raw: &str) -> Result<T, ConfigError> {
    let de =
        toml::Deserializer::parse(raw).map_err(|e| toml_error(path, raw, String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        toml_error(path, raw, key, e.inner())
    })
}

fn toml_error(path: &Path, raw: &str, key: String, e: &toml::de::Error) -> ConfigError {
    let mut line = e.span().map(|s| line_col(raw, s.start));
    let mut message = e.message().trim().to_string();
    // For an unknown key toml points at the table header; point at the key itself.
    if let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        let from = line.map_or(0, |(l, _)| l - 1);
        if let Some(found) = find_key_line(raw, name, from) {
            line = Some(found);
        }
    }
    // serde reports an unknown or missing key in the message only; lift it into the path.
    let mut key = if key == "." || key.is_empty() {
        String::new()
    } else {
        key
    };
    for marker in ["unknown field `", "missing field `", "unknown variant `"] {
        if let Some(rest) = message.strip_prefix(marker)
            && let Some(name) = rest.split('`').next()
        {
            let already = key == name || key.ends_with(&format!(".{name}"));
            if marker != "unknown variant `" && !already {
                key = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                };
            }
        }
    }
    if key.is_empty() {
        key = "(document)".into();
    }
    message = message.replace('\n', " ");
    ConfigError {
        file: path.into(),
        line,
        key,
        message,
    }
}

/// Attaches the line of the key's last path segment, if it can be found in the text.
fn located(path: &Path, raw: &str, key: String, message: String) -> ConfigError {
    let leaf = key.rsplit('.').next().unwrap_or(&key);
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    let line = find_key_line(raw, leaf, 0);
    ConfigError {
        file: path.into(),
        line,
        key,
        message,
    }
}

/// The first line at or after line index `from` that assigns `name = ...`.
fn find_key_line(raw: &str, name: &str, from: usize) -> Option<(usize, usize)> {
    raw.lines().enumerate().skip(from).find_map(|(i, l)| {
        let t = l.trim_start();
        let rest = t.strip_prefix(name)?;
        rest.trim_start()
            .starts_with('=')
            .then_some((i + 1, l.len() - t.len() + 1))
    })
}

fn line_col(raw: &str, offset: usize) -> (usize, usize) {
    let before = &raw[..offset.min(raw.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, str::len) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse::<AgentConfig>(Path::new("a.toml"), text).unwrap_err()
    }

    const OK: &str = r#"
data_dir = "d"
[forward]
sinks = ["127.0.0.1:7400"]
tls = { ca = "ca.pem", cert = "a.pem", key = "a.key" }
[[pipelines]]
name = "p"
[[pipelines.sources]]
type = "file"
include = ["*.log"]
"#;

    #[test]
    fn good_config_parses() {
        let c: AgentConfig = parse(Path::new("a.toml"), OK).unwrap();
        assert_eq!(c.forward.window, 4);
        assert_eq!(c.pipelines[0].sources[0].name(), "file");
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let e = err(&OK.replace("name = \"p\"", "name = \"p\"\ncolour = 1"));
        assert_eq!(e.key, "pipelines[0].colour", "{e}");
        assert_eq!(e.line.map(|l| l.0), Some(8), "{e}");
    }

    #[test]
    fn unknown_key_in_tagged_source_is_named() {
        let e = err(&OK.replace(
            "include = [\"*.log\"]",
            "include = [\"*.log\"]\nfollow = true",
        ));
        assert!(e.key.contains("follow"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e = err(&OK.replace("[forward]", "[forward]\nwindow = \"x\""));
        assert_eq!(e.key, "forward.window", "{e}");
        assert_eq!(e.line.map(|l| l.0), Some(4), "{e}");
    }

    #[test]
    fn missing_field_names_key() {
        let e = err(&OK.replace("sinks = [\"127.0.0.1:7400\"]\n", ""));
        assert_eq!(e.key, "forward.sinks", "{e}");
    }
}
