//! Configuration: TOML files read in two stages.
//!
//! Stage one ([`load_agent`], [`load_sink`]) is serde with `deny_unknown_fields`, so a typo is an error, not a
//! silently ignored key. Stage two ([`Validate::validate`], for [`AgentConfig`] and [`SinkConfig`])
//! checks what serde cannot (non-empty lists, readable files, sane limits). Every problem
//! in the file is reported, each with the file, line, column and dotted key path, e.g.
//! `agent.toml:7:10: forward.window: invalid type: string "x", expected usize`.
//! The types here are also the source of the reference, `docs/config.md` ([`reference()`]).

use std::path::PathBuf;

use serde::Deserialize;

mod check;
mod load;
mod reference;

pub use check::{Invalid, Validate};
pub use dataweaver_wire::MAX_RECORD_BYTES;
pub use load::{ConfigError, Kind, Problem, detect_kind, load_agent, load_sink, parse};
pub use reference::reference;

pub use dataweaver_admin::{AdminConfig, LogConfig, LogFormat, LogRotation};
pub use dataweaver_control::ControlConfig;
pub use dataweaver_forward::ForwardConfig;
pub use dataweaver_queue::{QueueConfig, WhenFull};
pub use dataweaver_sink::{
    JsonlOutputConfig, OutputConfig, SinkConfig, SinkLimits, StdoutOutputConfig,
};
pub use dataweaver_source::{
    Codec, FileSourceConfig, HostMetricsConfig, HttpSourceConfig, LongLines, MqttSourceConfig,
    MqttTls, MqttTopic, NetSourceConfig, ReadFrom, SourceConfig, StdinSourceConfig,
};
pub use dataweaver_tls::TlsFiles;
pub use dataweaver_transform::{PreopenDir, TransformConfig, WasiGrant};

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
