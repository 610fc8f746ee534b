//! The operator's settings of a running process: the admin HTTP endpoint (`[admin]`) and
//! logging (`[log]`), the same in the agent's and the sink's file.

use dataweaver_core::check::{Check, Problems};
use std::path::PathBuf;

use serde::Deserialize;

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

fn yes() -> bool {
    true
}

fn default_ready_down() -> u64 {
    60
}

fn default_log_keep() -> usize {
    7
}

impl Check for AdminConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        p.range(
            dataweaver_core::check::key(at, "ready_sink_down_secs"),
            self.ready_sink_down_secs,
            1,
            7 * 86_400,
        );
    }
}
