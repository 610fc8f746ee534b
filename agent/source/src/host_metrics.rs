//! The `host_metrics` source: CPU, memory, disks and network of this machine every
//! `interval_secs`, as one JSON record, so a fresh install has something useful to send.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sysinfo::{Disks, Networks, System};
use tokio_util::sync::CancellationToken;

use crate::HostMetricsConfig;
use crate::pipeline::Pipeline;
use dataweaver_core::Record;

/// Samples until `shutdown`.
pub async fn run(cfg: HostMetricsConfig, pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    let source = format!(
        "{}/{}",
        pipeline.name,
        cfg.name.as_deref().unwrap_or("host_metrics")
    );
    let topic = cfg.topic.clone().unwrap_or_else(|| pipeline.name.clone());
    let mut sampler = match Sampler::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%source, error = %e, "cannot read host metrics; source disabled");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_secs));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let payload = tokio::task::block_in_place(|| sampler.sample());
        let record = Record::new(
            source.clone(),
            topic.clone(),
            payload.to_string().into_bytes(),
        );
        if let Err(e) = pipeline
            .emit_until_accepted(vec![record], Vec::new(), &shutdown)
            .await
        {
            tracing::debug!(%source, error = %e, "sample not queued");
        }
    }
}

struct Sampler {
    system: System,
    disks: Disks,
    networks: Networks,
    host: String,
}

impl Sampler {
    fn new() -> Result<Sampler, String> {
        let mut system = System::new().map_err(|e| e.to_string())?;
        system.refresh_cpu_usage();
        Ok(Sampler {
            system,
            disks: Disks::new_with_refreshed_list().map_err(|e| e.to_string())?,
            networks: Networks::new_with_refreshed_list().map_err(|e| e.to_string())?,
            host: System::host_name().unwrap_or_default(),
        })
    }

    fn sample(&mut self) -> serde_json::Value {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        let load = System::load_average().ok();
        json!({
            "host": self.host,
            "cpu_percent": self.system.global_cpu_usage(),
            "load": load.map(|l| [l.one, l.five, l.fifteen]),
            "memory": { "total_bytes": self.system.total_memory(), "used_bytes": self.system.used_memory() },
            "disks": self.disks.iter().map(|d| json!({
                "mount": d.mount_point().to_string_lossy(),
                "total_bytes": d.total_space(),
                "available_bytes": d.available_space(),
            })).collect::<Vec<_>>(),
            "network": self.networks.iter().map(|(name, n)| json!({
                "interface": name,
                "rx_bytes_total": n.total_received(),
                "tx_bytes_total": n.total_transmitted(),
            })).collect::<Vec<_>>(),
        })
    }
}
