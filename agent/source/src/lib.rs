//! Sources: where records come from (file, stdin, tcp, udp, http, host_metrics, mqtt). Each
//! runs as a task that hands batches to its [`Pipeline`] and waits for the queue commit before
//! it treats the input as consumed. What comes after the sources (transforms, the queue)
//! plugs in behind [`Downstream`]: this crate imports neither.

#![warn(missing_docs, unreachable_pub)]

pub mod codec;
mod config;
pub mod file;
pub mod host_metrics;
pub mod http;
pub mod lines;
pub mod mqtt;
pub mod net;
pub mod pipeline;
pub mod stdin;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::{
    Codec, FileSourceConfig, HostMetricsConfig, HttpSourceConfig, LongLines, MqttSourceConfig,
    MqttTls, MqttTopic, NetSourceConfig, ReadFrom, SourceConfig, StdinSourceConfig,
};
pub use pipeline::{BoxFuture, Downstream, EmitError, Pipeline};

/// Runs one configured source until `shutdown`.
pub async fn run(cfg: SourceConfig, pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    match cfg {
        SourceConfig::File(f) => file::FileSource::new(f, pipeline).run(shutdown).await,
        SourceConfig::Tcp(n) => net::run_tcp(n, pipeline, shutdown).await,
        SourceConfig::Udp(n) => net::run_udp(n, pipeline, shutdown).await,
        SourceConfig::Stdin(c) => stdin::run(c, pipeline, shutdown).await,
        SourceConfig::Http(h) => http::run(h, pipeline, shutdown).await,
        SourceConfig::HostMetrics(h) => host_metrics::run(h, pipeline, shutdown).await,
        SourceConfig::Mqtt(m) => mqtt::run(m, pipeline, shutdown).await,
    }
}
