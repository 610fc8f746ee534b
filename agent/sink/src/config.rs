//! The sink's settings (its own file): where it listens, its journal, its outputs, what
//! each agent may hold.

use dataweaver_core::check::{Check, MS_HOUR, Problems, TIB, key};
use std::net::SocketAddr;
use std::path::PathBuf;

use dataweaver_admin::{AdminConfig, LogConfig};
use dataweaver_tls::TlsFiles;
use serde::Deserialize;

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
    #[serde(default = "dataweaver_wire::default_idle_timeout_ms")]
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
    /// Bytes of journaled batches one agent queue may hold that it has not confirmed (an
    /// agent confirms what it recorded as acknowledged, a few batches behind: keep this
    /// above the agents' `window` × `batch_max_bytes`). Beyond it the queue's batches are
    /// refused until it confirms, so one that never does cannot fill the sink's disk.
    pub max_unconfirmed_bytes_per_queue: u64,
    /// Bytes of journaled batches one agent may hold waiting for the outputs (with the
    /// sending queue's unconfirmed ones): while the outputs are behind (a broker outage),
    /// an agent past it has its batches refused and keeps them in its own queue, so one
    /// agent cannot take the whole disk. What one agent can hold at most is this plus
    /// `max_queues_per_agent` × `max_unconfirmed_bytes_per_queue`.
    pub max_journal_bytes_per_agent: u64,
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
            max_unconfirmed_bytes_per_queue: 64 << 20,
            max_journal_bytes_per_agent: 4 << 30,
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

fn default_jsonl_max() -> u64 {
    128 << 20
}

fn default_jsonl_mode() -> String {
    "0600".into()
}

impl Check for SinkConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        self.tls.check(&key(at, "tls"), p);
        let l = &self.limits;
        if self.outputs.is_empty() {
            p.push(key(at, "outputs"), "at least one output is needed");
        }
        for (i, o) in self.outputs.iter().enumerate() {
            o.check(&key(at, &format!("outputs[{i}]")), p);
        }
        p.range(
            key(at, "idle_timeout_ms"),
            self.idle_timeout_ms,
            100,
            MS_HOUR,
        );
        self.admin.check(&key(at, "admin"), p);
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
            p.range(key(at, &format!("limits.{k}")), v as u64, 1, max);
        }
        // At least one frame of the largest size must fit, else a stream could wait forever.
        for (k, v) in [
            ("max_frame_bytes_per_agent", l.max_frame_bytes_per_agent),
            ("max_frame_bytes", l.max_frame_bytes),
            (
                "max_unconfirmed_bytes_per_queue",
                l.max_unconfirmed_bytes_per_queue,
            ),
            ("max_journal_bytes_per_agent", l.max_journal_bytes_per_agent),
        ] {
            p.range(
                key(at, &format!("limits.{k}")),
                v,
                dataweaver_wire::MAX_FRAME as u64,
                1 << 40,
            );
        }
    }
}

impl OutputConfig {
    /// The output's `type`, which is also the name of its Cargo feature (`output-<type>`).
    pub fn kind(&self) -> &'static str {
        match self {
            OutputConfig::Jsonl(_) => "jsonl",
            OutputConfig::Stdout(_) => "stdout",
        }
    }

    /// Whether this binary was built with the output.
    pub fn is_built(&self) -> bool {
        match self {
            OutputConfig::Jsonl(_) => cfg!(feature = "output-jsonl"),
            OutputConfig::Stdout(_) => cfg!(feature = "output-stdout"),
        }
    }
}

impl Check for OutputConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        // The config types stay in every build (one reference, one parser), so a file
        // written for a full build is refused here with the reason, not as unknown keys.
        if !self.is_built() {
            let why = crate::SinkError::NotBuilt {
                output: self.kind(),
            };
            p.push(key(at, "type"), why.to_string());
        }
        match self {
            OutputConfig::Jsonl(j) => j.check(at, p),
            OutputConfig::Stdout(_) => {}
        }
    }
}

impl Check for JsonlOutputConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        if self.max_file_bytes < 4096 {
            p.push(key(at, "max_file_bytes"), "must be at least 4096");
        }
        if let Err(e) = dataweaver_store::fsmode::parse_mode(&self.file_mode) {
            p.push(key(at, "file_mode"), e);
        }
        p.range(key(at, "max_file_bytes"), self.max_file_bytes, 4096, TIB);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a build without an output (`--no-default-features`, run by CI), a config that
    /// names it is refused at `type` with the feature to build it with; with it, accepted.
    #[test]
    fn an_output_left_out_of_the_build_is_refused_with_its_feature() {
        let jsonl = OutputConfig::Jsonl(JsonlOutputConfig {
            dir: "out".into(),
            max_file_bytes: 1 << 20,
            file_mode: "0600".into(),
        });
        for (o, built) in [
            (jsonl, cfg!(feature = "output-jsonl")),
            (
                OutputConfig::Stdout(StdoutOutputConfig {}),
                cfg!(feature = "output-stdout"),
            ),
        ] {
            let mut p = Problems::default();
            o.check("outputs[0]", &mut p);
            let found = p.finish().err().unwrap_or_default();
            let refused = found.iter().find(|(k, _)| k == "outputs[0].type");
            assert_eq!(refused.is_none(), built, "{found:?}");
            if let Some((_, why)) = refused {
                assert!(
                    why.contains(&format!("cargo feature `output-{}`", o.kind())),
                    "{why}"
                );
            }
        }
    }
}
