//! The queue's settings (`[queue]` in the agent's file) and what a pipeline does when it is full.

use dataweaver_core::check::{Check, Problems};
use serde::Deserialize;

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

impl Check for QueueConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        use dataweaver_core::check::{GIB, TIB, key};
        p.nonzero(key(at, "max_bytes"), self.max_bytes);
        p.nonzero(
            key(at, "commit_max_records"),
            self.commit_max_records as u64,
        );
        p.nonzero(key(at, "commit_max_bytes"), self.commit_max_bytes as u64);
        p.range(key(at, "max_bytes"), self.max_bytes, 4096, 16 * TIB);
        p.range(
            key(at, "disk_reserve_bytes"),
            self.disk_reserve_bytes,
            0,
            TIB,
        );
        p.range(
            key(at, "commit_max_records"),
            self.commit_max_records as u64,
            1,
            1_000_000,
        );
        p.range(
            key(at, "commit_max_bytes"),
            self.commit_max_bytes as u64,
            1,
            GIB,
        );
        p.range(
            key(at, "commit_linger_ms"),
            self.commit_linger_ms,
            0,
            10_000,
        );
    }
}
