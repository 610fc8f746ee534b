//! The settings of each source type (`[[pipelines.sources]]` in the agent's file).

use dataweaver_core::check::{Check, GIB, MIB, MS_HOUR, Problems, key};
use dataweaver_wire::MAX_RECORD_BYTES;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

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

impl SourceConfig {
    /// The configured or default name.
    pub fn name(&self) -> &str {
        let name = match self {
            SourceConfig::File(f) => &f.name,
            SourceConfig::Tcp(n) | SourceConfig::Udp(n) => &n.name,
            SourceConfig::Stdin(n) => &n.name,
            SourceConfig::Http(h) => &h.name,
            SourceConfig::HostMetrics(h) => &h.name,
            SourceConfig::Mqtt(m) => &m.name,
        };
        name.as_deref().unwrap_or(self.kind())
    }

    /// The source's `type` in the config file.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::File(_) => "file",
            SourceConfig::Tcp(_) => "tcp",
            SourceConfig::Udp(_) => "udp",
            SourceConfig::Stdin(_) => "stdin",
            SourceConfig::Http(_) => "http",
            SourceConfig::HostMetrics(_) => "host_metrics",
            SourceConfig::Mqtt(_) => "mqtt",
        }
    }
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
    #[serde(default = "dataweaver_core::check::default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[serde(default = "dataweaver_core::check::default_reconnect_max_ms")]
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

impl MqttSourceConfig {
    /// The broker's host and port, read from `broker` (`host:port`).
    pub(crate) fn broker_addr(&self) -> Result<(String, u16), String> {
        match self.broker.rsplit_once(':') {
            Some((h, port)) if !h.is_empty() => match port.parse::<u16>() {
                Ok(port) => Ok((h.to_string(), port)),
                Err(_) => Err(format!("`{}` is not host:port", self.broker)),
            },
            _ => Err(format!("`{}` is not host:port", self.broker)),
        }
    }
}

impl MqttTls {
    /// Reads and checks the CA and, if given, the client certificate and key.
    pub(crate) fn load(&self) -> Result<dataweaver_tls::TlsMaterial, dataweaver_tls::TlsError> {
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        dataweaver_tls::TlsMaterial::load(&self.ca, identity)
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
    /// [`JSON_MAX_DEPTH`](crate::codec::JSON_MAX_DEPTH) deep; anything else goes to
    /// the dead-letter table with the reason (and the byte offset where it applies).
    Json,
    /// Bytes passed through untouched (no UTF-8 or any other expectation).
    Binary,
}

fn default_keep_alive() -> u64 {
    30
}

fn default_qos() -> u8 {
    1
}

fn default_net_line() -> usize {
    64 << 10
}

fn default_buffer_records() -> usize {
    65_536
}

fn default_net_connections() -> usize {
    256
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

fn default_metrics_interval() -> u64 {
    10
}

fn default_poll_ms() -> u64 {
    250
}

fn default_true() -> bool {
    true
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

impl Check for SourceConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        match self {
            SourceConfig::File(c) => c.check(at, p),
            SourceConfig::Tcp(c) | SourceConfig::Udp(c) => c.check(at, p),
            SourceConfig::Stdin(c) => c.check(at, p),
            SourceConfig::Http(c) => c.check(at, p),
            SourceConfig::HostMetrics(c) => c.check(at, p),
            SourceConfig::Mqtt(c) => c.check(at, p),
        }
    }
}

/// `key` must be a line size: more than 0, at most one record.
fn line_size(p: &mut Problems, key: String, v: usize) {
    p.nonzero(key.clone(), v as u64);
    if v > MAX_RECORD_BYTES {
        p.push(key.clone(), format!("at most {MAX_RECORD_BYTES}"));
    }
    p.range(key, v as u64, 1, MAX_RECORD_BYTES as u64);
}

/// A file source's globs, compiled: what it matches paths against.
#[derive(Debug, Default)]
pub(crate) struct Globs {
    pub(crate) include: Vec<glob::Pattern>,
    pub(crate) exclude: Vec<glob::Pattern>,
}

impl FileSourceConfig {
    /// Compiles `include` and `exclude`, or names every bad glob by its key
    /// (`include[1]`). `validate` and the running source both build them here, so a glob
    /// `validate` accepts is exactly the one that runs.
    pub(crate) fn globs(&self) -> Result<Globs, Vec<(String, String)>> {
        let mut bad = Vec::new();
        let mut compile = |list: &str, globs: &[String]| {
            let mut out = Vec::with_capacity(globs.len());
            for (k, g) in globs.iter().enumerate() {
                match glob::Pattern::new(g) {
                    Ok(p) => out.push(p),
                    Err(e) => bad.push((format!("{list}[{k}]"), format!("bad glob `{g}`: {e}"))),
                }
            }
            out
        };
        let include = compile("include", &self.include);
        let exclude = compile("exclude", &self.exclude);
        if bad.is_empty() {
            Ok(Globs { include, exclude })
        } else {
            Err(bad)
        }
    }
}

impl Check for FileSourceConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        if self.include.is_empty() {
            p.push(key(at, "include"), "at least one glob is needed");
        }
        if let Err(bad) = self.globs() {
            for (k, message) in bad {
                p.push(key(at, &k), message);
            }
        }
        p.nonzero(key(at, "poll_interval_ms"), self.poll_interval_ms);
        line_size(p, key(at, "max_line_bytes"), self.max_line_bytes);
        p.nonzero(key(at, "read_chunk_bytes"), self.read_chunk_bytes as u64);
        p.range(
            key(at, "poll_interval_ms"),
            self.poll_interval_ms,
            1,
            MS_HOUR,
        );
        p.range(
            key(at, "read_chunk_bytes"),
            self.read_chunk_bytes as u64,
            1,
            64 * MIB,
        );
        p.range(
            key(at, "rescan_interval_ms"),
            self.rescan_interval_ms,
            1,
            24 * MS_HOUR,
        );
        p.range(
            key(at, "max_open_files"),
            self.max_open_files as u64,
            1,
            1 << 20,
        );
    }
}

impl Check for NetSourceConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        line_size(p, key(at, "max_line_bytes"), self.max_line_bytes);
        p.nonzero(key(at, "buffer_records"), self.buffer_records as u64);
        p.range(
            key(at, "buffer_records"),
            self.buffer_records as u64,
            1,
            1 << 24,
        );
        p.range(
            key(at, "max_connections"),
            self.max_connections as u64,
            1,
            65_536,
        );
    }
}

impl Check for StdinSourceConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        let max_line = key(at, "max_line_bytes");
        p.nonzero(max_line.clone(), self.max_line_bytes as u64);
        p.range(
            max_line,
            self.max_line_bytes as u64,
            1,
            MAX_RECORD_BYTES as u64,
        );
    }
}

impl Check for HttpSourceConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        p.nonzero(key(at, "max_body_bytes"), self.max_body_bytes as u64);
        if !self.path.starts_with('/') {
            p.push(key(at, "path"), "must start with /");
        }
        if self.auth_token.as_deref() == Some("") {
            p.push(key(at, "auth_token"), "must not be empty");
        }
        p.range(
            key(at, "max_body_bytes"),
            self.max_body_bytes as u64,
            1,
            GIB,
        );
        p.range(
            key(at, "header_read_timeout_ms"),
            self.header_read_timeout_ms,
            100,
            MS_HOUR,
        );
        p.range(
            key(at, "body_read_timeout_ms"),
            self.body_read_timeout_ms,
            100,
            MS_HOUR,
        );
        p.range(
            key(at, "max_connections"),
            self.max_connections as u64,
            1,
            65_536,
        );
    }
}

impl Check for HostMetricsConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        p.nonzero(key(at, "interval_secs"), self.interval_secs);
        p.range(key(at, "interval_secs"), self.interval_secs, 1, 86_400);
    }
}

impl Check for MqttSourceConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        if let Err(e) = self.broker_addr() {
            p.push(key(at, "broker"), e);
        }
        if self.client_id.is_empty() {
            p.push(key(at, "client_id"), "must not be empty");
        }
        if self.topics.is_empty() {
            p.push(key(at, "topics"), "at least one topic filter");
        }
        for (i, t) in self.topics.iter().enumerate() {
            if t.filter.is_empty() {
                p.push(key(at, &format!("topics[{i}].filter")), "must not be empty");
            }
        }
        p.nonzero(key(at, "keep_alive_secs"), self.keep_alive_secs);
        p.reconnect(at, self.reconnect_min_ms, self.reconnect_max_ms);
        if self.password.is_some() && self.username.is_none() {
            p.push(key(at, "password"), "needs a username");
        }
        if let Some(t) = &self.tls {
            if t.cert.is_some() != t.key.is_some() {
                p.push(key(at, "tls.cert"), "cert and key go together");
            } else {
                let files = [
                    ("ca", Some(&t.ca)),
                    ("cert", t.cert.as_ref()),
                    ("key", t.key.as_ref()),
                ];
                let files = files.into_iter().filter_map(|(k, f)| Some((k, f?)));
                dataweaver_tls::check_material(&key(at, "tls"), files, || t.load(), p);
            }
        }
        // MQTT carries keep-alive as 16-bit seconds.
        p.range(
            key(at, "keep_alive_secs"),
            self.keep_alive_secs,
            1,
            u16::MAX.into(),
        );
        for (t, topic) in self.topics.iter().enumerate() {
            p.range(key(at, &format!("topics[{t}].qos")), topic.qos.into(), 0, 2);
        }
    }
}
