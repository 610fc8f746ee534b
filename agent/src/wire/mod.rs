//! The wire protocol between agent and sink: protobuf messages and length-prefixed framing.
//!
//! `dataweaver.proto` beside this file is the documented protocol; the structs below are its
//! prost mirror, written out by hand so the build needs no `protoc` (keep them in step:
//! the `proto_matches_rust` test compares field numbers and names).

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

use crate::record::Record as QueueRecord;

/// Version carried in `Hello`/`Welcome`; bumped with any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
/// The ALPN protocol id both ends insist on.
pub const ALPN: &[u8] = b"dataweaver/1";
/// Largest frame either side accepts on a data stream.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest frame on control and admin streams (a module: interpreters compiled to
/// components reach 20 MB).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024 * 1024;

/// Agent → sink frame.
#[derive(Clone, PartialEq, Message)]
pub struct AgentFrame {
    /// The message carried.
    #[prost(oneof = "agent_frame::Kind", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub kind: Option<agent_frame::Kind>,
}

/// The variants of [`AgentFrame`].
pub mod agent_frame {
    /// What an agent frame carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// First frame of a data stream.
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        /// Records to store.
        #[prost(message, tag = "2")]
        Batch(super::Batch),
        /// Seqs the agent has durably recorded as delivered by this sink.
        #[prost(message, tag = "3")]
        Confirm(super::Confirm),
        /// Second frame of a data stream.
        #[prost(message, tag = "4")]
        Resolve(super::Resolve),
        /// First frame of an agent's control stream.
        #[prost(message, tag = "5")]
        ControlHello(super::ControlHello),
        /// What the agent did with a module offer (or a rollback it made).
        #[prost(message, tag = "6")]
        Outcome(super::ModuleOutcome),
        /// First and only frame of an admin stream.
        #[prost(message, tag = "7")]
        Admin(super::AdminRequest),
    }
}

/// Sink → agent frame.
#[derive(Clone, PartialEq, Message)]
pub struct SinkFrame {
    /// The message carried.
    #[prost(oneof = "sink_frame::Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<sink_frame::Kind>,
}

/// The variants of [`SinkFrame`].
pub mod sink_frame {
    /// What a sink frame carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Answer to Hello.
        #[prost(message, tag = "1")]
        Welcome(super::Welcome),
        /// A batch is durable.
        #[prost(message, tag = "2")]
        Ack(super::Ack),
        /// The sink will not serve this stream.
        #[prost(message, tag = "3")]
        Refusal(super::Refusal),
        /// Answer to Resolve.
        #[prost(message, tag = "4")]
        Resolved(super::Resolved),
        /// A signed module for one of the agent's pipelines.
        #[prost(message, tag = "5")]
        Offer(super::ModuleOffer),
        /// Answer to an admin request.
        #[prost(message, tag = "6")]
        AdminReply(super::AdminReply),
    }
}

/// First frame of a control stream: the transforms the agent runs.
#[derive(Clone, PartialEq, Message)]
pub struct ControlHello {
    /// One entry per transform stage.
    #[prost(message, repeated, tag = "1")]
    pub transforms: Vec<TransformState>,
}

/// A transform stage as the agent runs it.
#[derive(Clone, PartialEq, Message)]
pub struct TransformState {
    /// Pipeline name.
    #[prost(string, tag = "1")]
    pub pipeline: String,
    /// Transform name within the pipeline.
    #[prost(string, tag = "2")]
    pub transform: String,
    /// Active version.
    #[prost(string, tag = "3")]
    pub version: String,
    /// SHA-256 of the active module, hex.
    #[prost(string, tag = "4")]
    pub sha256: String,
    /// Whether it was pushed (not the configured module).
    #[prost(bool, tag = "5")]
    pub pushed: bool,
}

/// A signed module for a pipeline (sink → agent; also inside an admin push).
#[derive(Clone, PartialEq, Message)]
pub struct ModuleOffer {
    /// Pipeline the module is for (part of what is signed).
    #[prost(string, tag = "1")]
    pub pipeline: String,
    /// Version (part of what is signed).
    #[prost(string, tag = "2")]
    pub version: String,
    /// The component's bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub module: Vec<u8>,
    /// ed25519 signature over [`crate::control::signed_message`].
    #[prost(bytes = "vec", tag = "4")]
    pub signature: Vec<u8>,
    /// The signing public key, `ed25519:<base64>`.
    #[prost(string, tag = "5")]
    pub key: String,
    /// NDJSON test records for the self-check (empty: the agent's recent records).
    #[prost(bytes = "vec", tag = "6")]
    pub vectors: Vec<u8>,
    /// Monotonic per pipeline (part of what is signed): agents refuse a seq not above
    /// every one they took, so an old offer cannot be replayed.
    #[prost(uint64, tag = "7")]
    pub seq: u64,
    /// An operator's signed rollback order: to this module, or with an empty module to
    /// the agent's configured one.
    #[prost(bool, tag = "8")]
    pub rollback: bool,
}

/// What an agent did with an offer, or a rollback it made on its own.
#[derive(Clone, PartialEq, Message)]
pub struct ModuleOutcome {
    /// Pipeline.
    #[prost(string, tag = "1")]
    pub pipeline: String,
    /// The version concerned.
    #[prost(string, tag = "2")]
    pub version: String,
    /// Its SHA-256, hex.
    #[prost(string, tag = "3")]
    pub sha256: String,
    /// `accepted`, `refused`, `active` or `rolled_back`.
    #[prost(string, tag = "4")]
    pub outcome: String,
    /// Why (refusals and rollbacks).
    #[prost(string, tag = "5")]
    pub reason: String,
    /// The version active after this outcome.
    #[prost(string, tag = "6")]
    pub active_version: String,
}

/// An operator's request to the sink (from a client certificate listed in `admins`).
#[derive(Clone, PartialEq, Message)]
pub struct AdminRequest {
    /// `push`, `rollback` or `status`.
    #[prost(string, tag = "1")]
    pub action: String,
    /// Pipeline (push, rollback).
    #[prost(string, tag = "2")]
    pub pipeline: String,
    /// The module (push).
    #[prost(message, optional, tag = "3")]
    pub offer: Option<ModuleOffer>,
    /// Only these agents (push); empty: every agent running the pipeline.
    #[prost(string, repeated, tag = "4")]
    pub agents: Vec<String>,
    /// Status: the page after this row key ([`AdminReply::next`]).
    #[prost(string, tag = "5")]
    pub after: String,
}

/// The sink's answer to an admin request.
#[derive(Clone, PartialEq, Message)]
pub struct AdminReply {
    /// Whether the request was carried out.
    #[prost(bool, tag = "1")]
    pub ok: bool,
    /// What happened, for the operator.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Per agent and pipeline (status).
    #[prost(message, repeated, tag = "3")]
    pub agents: Vec<AgentStatus>,
    /// Status: more rows follow; ask again with `after` set to this.
    #[prost(string, tag = "4")]
    pub next: String,
    /// Rollback plan: what a rollback order must sign (a module hash or `configured`).
    #[prost(string, tag = "5")]
    pub target: String,
    /// Rollback plan: the version a rollback returns to.
    #[prost(string, tag = "6")]
    pub target_version: String,
}

/// One agent's pipeline as the sink last heard of it.
#[derive(Clone, PartialEq, Message)]
pub struct AgentStatus {
    /// Agent id (its certificate's CN).
    #[prost(string, tag = "1")]
    pub agent: String,
    /// Pipeline.
    #[prost(string, tag = "2")]
    pub pipeline: String,
    /// Version the agent runs.
    #[prost(string, tag = "3")]
    pub active_version: String,
    /// Last outcome reported (`accepted`, `refused`, ...).
    #[prost(string, tag = "4")]
    pub last_outcome: String,
    /// Its reason.
    #[prost(string, tag = "5")]
    pub reason: String,
    /// When it was reported (ms since the epoch).
    #[prost(uint64, tag = "6")]
    pub at_ms: u64,
    /// Whether the agent's control stream is open now.
    #[prost(bool, tag = "7")]
    pub connected: bool,
    /// The version pushed for this pipeline.
    #[prost(string, tag = "8")]
    pub desired_version: String,
}

/// First frame on a data stream.
#[derive(Clone, PartialEq, Message)]
pub struct Hello {
    /// Protocol version the agent speaks.
    #[prost(uint32, tag = "1")]
    pub protocol_version: u32,
    /// Random id of the agent's queue file.
    #[prost(string, tag = "2")]
    pub queue_id: String,
    /// Agent software version.
    #[prost(string, tag = "3")]
    pub agent_version: String,
}

/// The agent's view of this sink's journal, sent after `Welcome`.
#[derive(Clone, PartialEq, Message)]
pub struct Resolve {
    /// Highest seq this journal acknowledged, as the agent durably recorded it.
    #[prost(uint64, tag = "1")]
    pub confirm_upto: u64,
    /// Every seq up to this one was delivered (through this sink or another).
    #[prost(uint64, tag = "2")]
    pub delivered_upto: u64,
}

/// The sink's answer to `Resolve`.
#[derive(Clone, PartialEq, Message)]
pub struct Resolved {
    /// Highest seq durably held for (agent, queue) after the resolution; 0 = none.
    #[prost(uint64, tag = "1")]
    pub high_water_mark: u64,
}

/// The agent confirms this sink owns every seq up to `upto_seq`.
#[derive(Clone, PartialEq, Message)]
pub struct Confirm {
    /// Highest confirmed seq.
    #[prost(uint64, tag = "1")]
    pub upto_seq: u64,
}

/// The sink's answer to Hello.
#[derive(Clone, PartialEq, Message)]
pub struct Welcome {
    /// Protocol version the sink speaks.
    #[prost(uint32, tag = "1")]
    pub protocol_version: u32,
    /// Sink name, for logs.
    #[prost(string, tag = "3")]
    pub sink_id: String,
    /// Random id of the sink's journal: the agent records per journal which seqs it acked.
    #[prost(string, tag = "4")]
    pub journal_id: String,
}

/// Why the sink refuses a stream.
#[derive(Clone, PartialEq, Message)]
pub struct Refusal {
    /// Human-readable reason.
    #[prost(string, tag = "1")]
    pub reason: String,
}

/// Records with consecutive ascending seqs.
#[derive(Clone, PartialEq, Message)]
pub struct Batch {
    /// Agent-chosen id echoed in the Ack.
    #[prost(uint64, tag = "1")]
    pub batch_id: u64,
    /// The records.
    #[prost(message, repeated, tag = "2")]
    pub records: Vec<Record>,
}

/// A batch is durable at the sink.
#[derive(Clone, PartialEq, Message)]
pub struct Ack {
    /// The acknowledged batch.
    #[prost(uint64, tag = "1")]
    pub batch_id: u64,
    /// Every seq up to this one is durable.
    #[prost(uint64, tag = "2")]
    pub last_seq: u64,
}

/// A record on the wire.
#[derive(Clone, PartialEq, Message)]
pub struct Record {
    /// Queue sequence number.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Source timestamp, ns since the epoch.
    #[prost(uint64, tag = "2")]
    pub ts_ns: u64,
    /// Producing source.
    #[prost(string, tag = "3")]
    pub source: String,
    /// Routing topic.
    #[prost(string, tag = "4")]
    pub topic: String,
    /// Optional key.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub key: Option<Vec<u8>>,
    /// Metadata headers.
    #[prost(message, repeated, tag = "6")]
    pub headers: Vec<Header>,
    /// The bytes. `Bytes`, so decoding from a `Bytes` buffer slices instead of copying.
    #[prost(bytes = "bytes", tag = "7")]
    pub payload: bytes::Bytes,
}

/// One metadata header.
#[derive(Clone, PartialEq, Message)]
pub struct Header {
    /// Header name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Header value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A sink journal value: a batch as received, kept as its wire bytes.
#[derive(Clone, PartialEq, Message)]
pub struct JournalEntry {
    /// Agent id from the client certificate.
    #[prost(string, tag = "1")]
    pub agent_id: String,
    /// The agent's queue id.
    #[prost(string, tag = "2")]
    pub queue_id: String,
    /// Highest seq in the batch.
    #[prost(uint64, tag = "4")]
    pub last_seq: u64,
    /// The encoded `Batch`, as it came off the wire (not decoded and re-encoded).
    #[prost(bytes = "bytes", tag = "5")]
    pub batch: bytes::Bytes,
    /// Records with seqs up to this one are duplicates: skip them when draining.
    #[prost(uint64, tag = "6")]
    pub skip_upto: u64,
}

impl JournalEntry {
    /// The entry's records, without the ones marked as duplicates.
    pub fn records(&self) -> Result<Vec<Record>, prost::DecodeError> {
        let mut batch = Batch::decode(self.batch.clone())?;
        batch.records.retain(|r| r.seq > self.skip_upto);
        Ok(batch.records)
    }
}

/// An agent frame whose batch is left encoded: the sink journals batches as received.
#[derive(Clone, PartialEq, Message)]
pub struct AgentFrameRaw {
    /// `Hello`, if that is what the frame carries.
    #[prost(message, optional, tag = "1")]
    pub hello: Option<Hello>,
    /// The `Batch` bytes.
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub batch: Option<bytes::Bytes>,
    /// `Confirm`.
    #[prost(message, optional, tag = "3")]
    pub confirm: Option<Confirm>,
    /// `Resolve`.
    #[prost(message, optional, tag = "4")]
    pub resolve: Option<Resolve>,
}

/// A `Batch` decoded for its seqs only (protobuf skips the other record fields).
#[derive(Clone, PartialEq, Message)]
pub struct BatchSeqs {
    /// Agent-chosen id.
    #[prost(uint64, tag = "1")]
    pub batch_id: u64,
    /// One per record.
    #[prost(message, repeated, tag = "2")]
    pub records: Vec<RecordSeq>,
}

/// A record's seq alone.
#[derive(Clone, PartialEq, Message)]
pub struct RecordSeq {
    /// Queue sequence number.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
}

/// The first fields of a [`JournalEntry`], decoded without its records (protobuf skips
/// the length-delimited records field cheaply).
#[derive(Clone, PartialEq, Message)]
pub struct JournalHeader {
    /// Agent id.
    #[prost(string, tag = "1")]
    pub agent_id: String,
    /// Queue id.
    #[prost(string, tag = "2")]
    pub queue_id: String,
    /// Highest seq in the entry.
    #[prost(uint64, tag = "4")]
    pub last_seq: u64,
}

impl Record {
    /// The wire form of a queued record.
    pub fn from_queue(seq: u64, r: QueueRecord) -> Self {
        Record {
            seq,
            ts_ns: r.ts_ns,
            source: r.source,
            topic: r.topic,
            key: r.key,
            headers: r
                .headers
                .into_iter()
                .map(|(name, value)| Header { name, value })
                .collect(),
            payload: r.payload.into(),
        }
    }
}

/// Framing errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame above [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The stream failed or ended mid-frame.
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The stream failed while writing.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Appends `msg` as one length-prefixed frame to `buf`.
pub fn encode_frame(msg: &impl Message, buf: &mut BytesMut) {
    let len = msg.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    // Cannot fail: the buffer was reserved to the exact length above.
    msg.encode(buf).expect("reserved capacity");
}

/// Writes one frame to a QUIC stream.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    msg: &impl Message,
) -> Result<(), FrameError> {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf);
    send.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame from a QUIC stream; `Ok(None)` at a clean end of stream.
pub async fn read_frame<M: Message + Default>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<M>, FrameError> {
    read_frame_max(recv, MAX_FRAME).await
}

/// [`read_frame`] with a size limit of `max` bytes.
pub async fn read_frame_max<M: Message + Default>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<M>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = (&len[..]).get_u32() as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = BytesMut::zeroed(len);
    recv.read_exact(&mut body).await?;
    // Decoding from `Bytes` lets payloads point into this one buffer.
    Ok(Some(M::decode(body.freeze())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `type name = N;` line of the .proto must match a prost field of the same tag.
    #[test]
    fn proto_matches_rust() {
        let proto = include_str!("dataweaver.proto");
        let mut fields = Vec::new();
        for line in proto.lines() {
            let code = line.split("//").next().unwrap_or("").trim();
            if let Some((lhs, rhs)) = code.split_once('=') {
                let name = lhs.split_whitespace().last().unwrap_or("");
                let tag: u32 = rhs.trim().trim_end_matches(';').trim().parse().unwrap_or(0);
                if tag > 0 {
                    fields.push((name.to_string(), tag));
                }
            }
        }
        // A record with every field set, encoded by prost, must carry each proto tag.
        let rec = Record {
            seq: 1,
            ts_ns: 2,
            source: "s".into(),
            topic: "t".into(),
            key: Some(vec![1]),
            headers: vec![Header {
                name: "n".into(),
                value: "v".into(),
            }],
            payload: vec![9].into(),
        };
        let bytes = rec.encode_to_vec();
        let want = [
            ("seq", 1),
            ("ts_ns", 2),
            ("source", 3),
            ("topic", 4),
            ("key", 5),
            ("headers", 6),
            ("payload", 7),
        ];
        for (name, tag) in want {
            assert!(
                fields.contains(&(name.to_string(), tag)),
                "{name} = {tag} missing from the .proto"
            );
        }
        assert_eq!(Record::decode(&bytes[..]).unwrap(), rec);
        for f in [
            ("protocol_version", 1),
            ("queue_id", 2),
            ("high_water_mark", 1),
            ("journal_id", 4),
            ("confirm_upto", 1),
            ("delivered_upto", 2),
            ("batch_id", 1),
            ("last_seq", 2),
            ("agent_id", 1),
        ] {
            assert!(fields.contains(&(f.0.to_string(), f.1)), "{f:?} missing");
        }
    }
}
