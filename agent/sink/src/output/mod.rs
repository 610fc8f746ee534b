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

/// Appends the JSON lines of `entries` to `buf`: one object per record with the keys
/// `agent`, `queue`, `seq`, `ts_ns`, `source`, `topic`, `key` (base64, if any), `headers`,
/// and `payload` (UTF-8) or `payload_base64`.
///
/// Written around a SIMD string escaper (json-escape-simd, taken from sonic-rs) instead of
/// serde_json: serde_json escapes a byte at a time, and that was 43 % of the drainer's CPU
/// (`perf` over `cargo bench --bench pipeline -- --only e2e`). The test
/// `lines_are_byte_for_byte_what_serde_json_writes` keeps the output identical.
pub fn format_lines(entries: &[(u64, Entry)], buf: &mut Vec<u8>) {
    use json_escape_simd::escape_into as string;
    let mut num = itoa::Buffer::new();
    let mut head = Vec::new();
    for (_, e) in entries {
        // The same for every record of the entry: escaped once.
        head.clear();
        head.extend_from_slice(b"{\"agent\":");
        string(&e.agent_id, &mut head);
        head.extend_from_slice(b",\"queue\":");
        string(&e.queue_id, &mut head);
        head.extend_from_slice(b",\"seq\":");
        for r in e.records() {
            buf.extend_from_slice(&head);
            buf.extend_from_slice(num.format(r.seq).as_bytes());
            buf.extend_from_slice(b",\"ts_ns\":");
            buf.extend_from_slice(num.format(r.ts_ns).as_bytes());
            buf.extend_from_slice(b",\"source\":");
            string(r.source, buf);
            buf.extend_from_slice(b",\"topic\":");
            string(r.topic, buf);
            if let Some(k) = r.key {
                buf.extend_from_slice(b",\"key\":\"");
                base64_into(k, buf);
                buf.push(b'"');
            }
            buf.extend_from_slice(b",\"headers\":{");
            for (i, (name, value)) in r.headers().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                string(name, buf);
                buf.push(b':');
                string(value, buf);
            }
            buf.push(b'}');
            match std::str::from_utf8(r.payload) {
                Ok(text) => {
                    buf.extend_from_slice(b",\"payload\":");
                    string(text, buf);
                }
                Err(_) => {
                    buf.extend_from_slice(b",\"payload_base64\":\"");
                    base64_into(r.payload, buf);
                    buf.push(b'"');
                }
            }
            buf.extend_from_slice(b"}\n");
        }
    }
}

/// Appends `bytes` in standard base64 (padded) to `buf`.
fn base64_into(bytes: &[u8], buf: &mut Vec<u8>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let start = buf.len();
    buf.resize(start + bytes.len().div_ceil(3) * 4, 0);
    // Cannot fail: the room is exactly the padded encoded length.
    let n = b64.encode_slice(bytes, &mut buf[start..]).unwrap_or(0);
    buf.truncate(start + n);
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

#[cfg(test)]
mod tests {
    use super::*;
    use dataweaver_wire::{Header, Record};
    use serde::Serialize;

    /// The line as serde_json wrote it before `format_lines` was written by hand.
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

    /// Headers as a JSON object, in order, repeated names kept.
    struct Headers<'a>(&'a [Header]);

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

    fn serde_lines(entries: &[(u64, Entry)]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::new();
        for (_, e) in entries {
            for r in e.records() {
                let headers: Vec<Header> = r
                    .headers()
                    .map(|(name, value)| Header {
                        name: name.into(),
                        value: value.into(),
                    })
                    .collect();
                let text = std::str::from_utf8(r.payload).ok();
                let line = Line {
                    agent: &e.agent_id,
                    queue: &e.queue_id,
                    seq: r.seq,
                    ts_ns: r.ts_ns,
                    source: r.source,
                    topic: r.topic,
                    key: r.key.map(|k| b64.encode(k)),
                    headers: Headers(&headers),
                    payload: text,
                    payload_base64: text.is_none().then(|| b64.encode(r.payload)),
                };
                serde_json::to_writer(&mut out, &line).unwrap();
                out.push(b'\n');
            }
        }
        out
    }

    /// Every character class JSON escapes (quotes, backslashes, each control character,
    /// DEL, non-ASCII, U+2028), at every offset of a SIMD register, in every field.
    #[test]
    fn lines_are_byte_for_byte_what_serde_json_writes() {
        let mut rng = fastrand::Rng::with_seed(13);
        let alphabet: Vec<char> = (0u8..0x80)
            .map(char::from)
            .chain(['é', '€', '\u{2028}', '\u{10348}', '\u{7f}'])
            .collect();
        let text = |rng: &mut fastrand::Rng| -> String {
            let n = rng.usize(0..80);
            (0..n)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect()
        };
        let mut entries = Vec::new();
        for i in 0..200u64 {
            let records = (0..rng.usize(1..5))
                .map(|j| Record {
                    seq: i * 10 + j as u64,
                    ts_ns: rng.u64(..),
                    source: text(&mut rng),
                    topic: text(&mut rng),
                    key: rng.bool().then(|| text(&mut rng).into_bytes()),
                    headers: (0..rng.usize(0..3))
                        .map(|_| Header {
                            name: text(&mut rng),
                            value: text(&mut rng),
                        })
                        .collect(),
                    payload: if rng.u8(..10) == 0 {
                        vec![0xff, 0xfe, rng.u8(..)].into()
                    } else {
                        text(&mut rng).into_bytes().into()
                    },
                })
                .collect();
            let entry = Entry::of_records(&text(&mut rng), &text(&mut rng), records);
            entries.push((i, entry));
        }
        let mut mine = Vec::new();
        format_lines(&entries, &mut mine);
        let theirs = serde_lines(&entries);
        for (a, b) in mine
            .split(|c| *c == b'\n')
            .zip(theirs.split(|c| *c == b'\n'))
        {
            assert_eq!(String::from_utf8_lossy(a), String::from_utf8_lossy(b));
        }
        assert_eq!(mine, theirs);
    }
}
