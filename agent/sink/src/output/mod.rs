//! Outputs: where the sink's journal drains to, one module per output, each behind a Cargo
//! feature of its own (`output-<name>`, all on by default) so that a binary can leave out
//! the client libraries of outputs it does not use.
//!
//! The drainer writes a round of entries to every output, syncs them, then commits in one
//! redb transaction: the last drained entry, each output's position and the deletion of the
//! drained entries. An output that can hold a position (a file offset, a transaction id)
//! returns to the committed one on start, so a round written after the last commit (a crash
//! in between) is written again exactly once instead of twice.

use base64::Engine;
use serde::Serialize;

use crate::journal::Entry;
use crate::{OutputConfig, SinkError};

/// A destination for journal entries.
pub trait Output: Send {
    /// Stable name, the key of this output's position in the cursor table.
    fn name(&self) -> String;
    /// Writes entries and makes them as durable as this output can.
    fn write(&mut self, entries: &[(u64, Entry)]) -> std::io::Result<()>;
    /// The position to commit after a successful `write`.
    fn position(&self) -> Vec<u8>;
    /// The position was committed: a later rollback returns here.
    fn committed(&mut self) {}
    /// The round failed before its commit: undo what was written since the last commit,
    /// so the retry does not write it twice.
    fn rollback(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// The journal's commit failed, and the journal was reopened: return to `committed`,
    /// the position it holds now. A commit that reported failure may still have landed
    /// (its writes reached the file, its sync did not answer), so only the position read
    /// back is the truth: rolling back to the one before would lose the round.
    fn restore(&mut self, committed: &[u8]) -> std::io::Result<()> {
        let _ = committed;
        self.rollback()
    }
}

/// One JSON line per record.
#[derive(Serialize)]
struct Line<'a> {
    agent: &'a str,
    queue: &'a str,
    seq: u64,
    ts_ns: u64,
    source: &'a str,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    headers: Headers<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

/// Headers as a JSON object, written straight from the record (no map per line).
struct Headers<'a>(&'a [dataweaver_wire::Header]);

impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for h in self.0 {
            m.serialize_entry(&h.name, &h.value)?;
        }
        m.end()
    }
}

/// Appends the JSON lines of `entries` to `buf`.
pub fn format_lines(entries: &[(u64, Entry)], buf: &mut Vec<u8>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    for (_, e) in entries {
        for r in &e.records {
            let text = std::str::from_utf8(&r.payload).ok();
            let line = Line {
                agent: &e.agent_id,
                queue: &e.queue_id,
                seq: r.seq,
                ts_ns: r.ts_ns,
                source: &r.source,
                topic: &r.topic,
                key: r.key.as_ref().map(|k| b64.encode(k)),
                headers: Headers(&r.headers),
                payload: text,
                payload_base64: text.is_none().then(|| b64.encode(&r.payload)),
            };
            // Cannot fail: every field serialises to JSON and the writer is a Vec.
            serde_json::to_writer(&mut *buf, &line).expect("json to vec");
            buf.push(b'\n');
        }
    }
}

#[cfg(feature = "output-jsonl")]
mod jsonl;
#[cfg(feature = "output-stdout")]
mod stdout;

#[cfg(feature = "output-jsonl")]
pub use jsonl::{JsonlOutput, jsonl_path};
#[cfg(feature = "output-stdout")]
pub use stdout::StdoutOutput;

/// Opens the output `cfg` describes at its committed position (from `positions`, by name).
pub(crate) fn open(
    cfg: &OutputConfig,
    positions: &[(String, Vec<u8>)],
) -> Result<Box<dyn Output>, SinkError> {
    #[cfg(not(feature = "output-jsonl"))]
    let _ = positions;
    match cfg {
        #[cfg(feature = "output-jsonl")]
        OutputConfig::Jsonl(j) => {
            let position_of = |name: &str| {
                positions
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| p.clone())
            };
            Ok(Box::new(JsonlOutput::open(
                &j.dir,
                j.max_file_bytes,
                dataweaver_store::fsmode::parse_mode(&j.file_mode)
                    .unwrap_or(dataweaver_store::fsmode::PRIVATE_FILE),
                position_of,
            )?))
        }
        #[cfg(feature = "output-stdout")]
        OutputConfig::Stdout(_) => Ok(Box::new(StdoutOutput::new())),
        #[allow(unreachable_patterns)]
        other => Err(SinkError::NotBuilt {
            output: other.kind(),
        }),
    }
}
