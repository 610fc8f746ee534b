//! The forwarder's settings (`[forward]` in the agent's file): where the sinks are, batching, timings.

use dataweaver_core::check::{Check, Problems};
use dataweaver_tls::TlsFiles;
use serde::Deserialize;

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
    /// Most bytes of records per batch (a single larger record goes alone).
    #[serde(default = "default_batch_bytes")]
    pub batch_max_bytes: usize,
    /// First reconnect delay; doubles up to `reconnect_max_ms`, with jitter.
    #[serde(default = "dataweaver_core::check::default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    #[serde(default = "dataweaver_core::check::default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// QUIC idle timeout: a silent sink is given up after this long (keep-alives go out
    /// every third of it, so only a dead or cut-off sink times out).
    #[serde(default = "dataweaver_wire::default_idle_timeout_ms")]
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

fn default_server_name() -> String {
    "localhost".into()
}

fn default_window() -> usize {
    4
}

fn default_batch_records() -> usize {
    2048
}

// The sink journals each batch as one redb value, which redb keeps on a page of the next
// power of two and reads and writes whole: a batch of 2,048 records of 256 B (575 KiB)
// took a 1 MiB page. 504 KiB of records, with their framing and the entry's header, fits a
// 512 KiB page, and holds two of the queue's chunks (each at most 252 KiB), so batches
// read whole chunks.
fn default_batch_bytes() -> usize {
    504 << 10
}

// The defaults leave a dead sink for the next one within 5 s: idle timeout (3 s) + one
// more connect attempt (1 s) + back-offs (issue 12, defect 8). Links with a round trip near
// a second (satellite) need a larger connect timeout.
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

impl Check for ForwardConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        use dataweaver_core::check::{MS_HOUR, key};
        use dataweaver_wire::MAX_RECORD_BYTES;
        if self.sinks.is_empty() {
            p.push(key(at, "sinks"), "at least one sink address is needed");
        }
        for (i, s) in self.sinks.iter().enumerate() {
            if !s.contains(':') {
                p.push(
                    key(at, &format!("sinks[{i}]")),
                    format!("`{s}` is not host:port"),
                );
            }
        }
        p.nonzero(key(at, "window"), self.window as u64);
        p.nonzero(key(at, "batch_max_records"), self.batch_max_records as u64);
        p.nonzero(key(at, "batch_max_bytes"), self.batch_max_bytes as u64);
        p.nonzero(key(at, "ack_timeout_ms"), self.ack_timeout_ms);
        p.nonzero(key(at, "connect_timeout_ms"), self.connect_timeout_ms);
        p.nonzero(key(at, "failover_after"), self.failover_after.into());
        p.nonzero(key(at, "failback_after_ms"), self.failback_after_ms);
        // A batch (and so a single record) must fit in one wire frame.
        if self.batch_max_bytes > MAX_RECORD_BYTES {
            p.push(
                key(at, "batch_max_bytes"),
                format!("at most {MAX_RECORD_BYTES}"),
            );
        }
        p.reconnect(at, self.reconnect_min_ms, self.reconnect_max_ms);
        self.tls.check(&key(at, "tls"), p);
        let record = MAX_RECORD_BYTES as u64;
        p.range(key(at, "window"), self.window as u64, 1, 1024);
        p.range(
            key(at, "batch_max_records"),
            self.batch_max_records as u64,
            1,
            1_000_000,
        );
        p.range(
            key(at, "batch_max_bytes"),
            self.batch_max_bytes as u64,
            1,
            record,
        );
        p.range(
            key(at, "idle_timeout_ms"),
            self.idle_timeout_ms,
            100,
            MS_HOUR,
        );
        p.range(key(at, "ack_timeout_ms"), self.ack_timeout_ms, 100, MS_HOUR);
        p.range(
            key(at, "connect_timeout_ms"),
            self.connect_timeout_ms,
            10,
            10 * 60_000,
        );
        p.range(
            key(at, "failover_after"),
            self.failover_after.into(),
            1,
            1000,
        );
        p.range(
            key(at, "failback_after_ms"),
            self.failback_after_ms,
            1,
            24 * MS_HOUR,
        );
    }
}
