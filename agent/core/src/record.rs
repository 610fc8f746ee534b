//! The record: the unit that flows from a source through transforms and the queue to a sink.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Text that many records share (a source's name, a topic, a header): a clone counts a
/// reference instead of allocating a copy. A source's records share their source, topic and
/// headers, and allocating them for each record was most of the agent's malloc time.
pub type Shared = Arc<str>;

/// A record's headers, shared the same way (most records of a source have the same ones).
pub type Headers = Arc<[(Shared, Shared)]>;

/// One event as it travels through the agent.
///
/// Stored in the queue as CBOR: **do not reorder or rename fields** without bumping
/// the queue's `FORMAT_VERSION`, old queues must stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the source saw the record, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Name of the source that produced it (`pipeline/source`).
    pub source: Shared,
    /// Routing topic; sources default it to the pipeline name.
    pub topic: Shared,
    /// Optional partitioning key.
    #[serde(default, with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    /// Free-form metadata such as the file path or the peer address.
    #[serde(default)]
    pub headers: Headers,
    /// The record's bytes, uninterpreted.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Record {
    /// A record stamped with the current time.
    pub fn new(source: impl Into<Shared>, topic: impl Into<Shared>, payload: Vec<u8>) -> Self {
        Record {
            ts_ns: now_ns(),
            source: source.into(),
            topic: topic.into(),
            key: None,
            headers: Headers::default(),
            payload,
        }
    }

    /// Records for lines seen now, each with the optional header (the file path, the peer).
    pub fn from_lines(
        source: &str,
        topic: &str,
        header: Option<(&str, &str)>,
        lines: Vec<Vec<u8>>,
    ) -> Vec<Record> {
        let ts_ns = now_ns();
        let (source, topic): (Shared, Shared) = (source.into(), topic.into());
        let headers: Headers = match header {
            Some((k, v)) => Arc::new([(k.into(), v.into())]),
            None => Headers::default(),
        };
        lines
            .into_iter()
            .map(|payload| Record {
                ts_ns,
                source: source.clone(),
                topic: topic.clone(),
                key: None,
                headers: headers.clone(),
                payload,
            })
            .collect()
    }

    /// Approximate in-memory and on-disk size, used for batching limits.
    pub fn approx_size(&self) -> usize {
        32 + self.source.len()
            + self.topic.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
            + self.payload.len()
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
