//! Sources: where records come from (file, stdin, tcp, udp, http, host_metrics). Each runs as a task that hands batches to its
//! [`Pipeline`](crate::pipeline::Pipeline) and waits for the queue commit before it treats
//! the input as consumed.

pub mod codec;
pub mod file;
pub mod host_metrics;
pub mod http;
pub mod lines;
pub mod mqtt;
pub mod net;
pub mod stdin;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;
use crate::pipeline::Pipeline;

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
