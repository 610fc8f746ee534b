//! The wire protocol between agent and sink: protobuf messages and length-prefixed framing.
//!
//! No sockets or tasks: the framing reads and writes the QUIC streams it is handed.
//!
//! `agent/wire/dataweaver.proto` is the documented protocol; its messages are generated
//! from it at build time. Two partial views are written here by hand, for decoding less
//! than a whole message without copying: [`AgentFrameRaw`] (a batch left encoded) and
//! [`JournalHeader`] (an entry without its records); the `views_match_the_proto` test
//! checks their field numbers against the generated types. [`RecordView`] reads the
//! records of an encoded batch in place, for the sink's outputs.

#![warn(missing_docs, unreachable_pub)]

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

pub mod session;
mod view;

pub use view::{CheckedBatch, HeaderViews, RecordView};

/// Version carried in `Hello`/`Welcome`; bumped with any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
/// The ALPN protocol id both ends insist on.
pub const ALPN: &[u8] = b"dataweaver/1";
/// Largest frame either side accepts on a data stream.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Default QUIC idle timeout of both sides of a session (`forward.idle_timeout_ms`, the
/// sink's `idle_timeout_ms`): a connection is closed after this long without a packet.
pub fn default_idle_timeout_ms() -> u64 {
    3_000
}

/// Largest record or batch a config may ask for: half a wire frame, leaving room for the
/// per-record envelope.
pub const MAX_RECORD_BYTES: usize = MAX_FRAME / 2;
/// Largest frame on control and admin streams (a module: interpreters compiled to
/// components reach 20 MB).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024 * 1024;
/// Largest first frame of a stream (`Hello`, `ControlHello`) before its type is known: a
/// stream that has not said what it is may not make the sink hold more than this.
pub const MAX_FIRST_FRAME: usize = 64 * 1024;
/// Longest queue id the sink accepts (agents send 32 hex digits).
pub const MAX_QUEUE_ID: usize = 64;
/// Longest agent id (certificate name) the sink accepts.
pub const MAX_AGENT_ID: usize = 128;
/// The `AgentFrame` tag of an admin request (whose first frame may carry a module).
pub const ADMIN_FRAME_TAG: u32 = 7;

/// Whether `id` is a usable agent or queue id: 1 to `max` bytes of ASCII letters, digits,
/// `-`, `_` and `.` (ids become journal keys and appear in logs and outputs).
pub fn valid_id(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

// The messages of `dataweaver.proto`, generated at build time (`agent/build.rs`: prost-build
// with protox as the parser, so no `protoc` is needed); their docs are the proto's comments.
include!(concat!(env!("OUT_DIR"), "/dataweaver.wire.v1.rs"));

/// `Refusal.code`: another copy of this queue (a cloned or restored data directory) sent
/// seqs this one never inherited; its records would be dropped as duplicates here.
pub const REFUSED_FORKED: u32 = 1;

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

/// Framing errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame above the limit that applies to it.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
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
    read_frame_by_kind(recv, |_| max).await
}

/// [`read_frame`] that waits for `reserve(len)` (a memory budget) once the frame's length
/// is known and before its body is read; returns the frame with what `reserve` gave.
pub async fn read_frame_reserving<M, P, F, Fut>(
    recv: &mut quinn::RecvStream,
    reserve: F,
) -> Result<Option<(M, P)>, FrameError>
where
    M: Message + Default,
    F: FnOnce(usize) -> Fut,
    Fut: std::future::Future<Output = P>,
{
    let Some(len) = read_len(recv).await? else {
        return Ok(None);
    };
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let held = reserve(len).await;
    // The budget for all of it is held: one allocation instead of doubling (each step
    // copied what had arrived, 2 % of the sink's CPU).
    let mut body = BytesMut::with_capacity(len);
    read_into(recv, &mut body, len).await?;
    Ok(Some((M::decode(body.freeze())?, held)))
}

/// Reads one frame whose size limit depends on its kind: `limit` gets the tag of the
/// frame's first field (the oneof variant of `AgentFrame`/`SinkFrame`; 0 if unknown) and
/// answers the limit. Used for the first frame of a stream, before its type is known.
pub async fn read_frame_by_kind<M: Message + Default>(
    recv: &mut quinn::RecvStream,
    limit: impl FnOnce(u32) -> usize,
) -> Result<Option<M>, FrameError> {
    let Some(len) = read_len(recv).await? else {
        return Ok(None);
    };
    let mut body = BytesMut::new();
    // The first field's key (a varint of at most 5 bytes for a u32 tag) names the kind.
    read_into(recv, &mut body, len.min(5)).await?;
    let tag = first_tag(&body);
    let max = limit(tag);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    read_into(recv, &mut body, len).await?;
    // Decoding from `Bytes` lets payloads point into this one buffer.
    Ok(Some(M::decode(body.freeze())?))
}

/// A frame's 4-byte length prefix; `None` if the stream ended cleanly before it.
async fn read_len(recv: &mut quinn::RecvStream) -> Result<Option<usize>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => Ok(Some((&len[..]).get_u32() as usize)),
        Err(quinn::ReadExactError::FinishedEarly(0)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads until `body` holds `upto` bytes, growing it only as bytes arrive (at most doubling
/// what is already there): a peer that claims a large frame and sends nothing holds no
/// memory for it.
async fn read_into(
    recv: &mut quinn::RecvStream,
    body: &mut BytesMut,
    upto: usize,
) -> Result<(), FrameError> {
    const STEP: usize = 64 * 1024;
    while body.len() < upto {
        let missing = upto - body.len();
        if body.capacity() == body.len() {
            body.reserve(missing.min(body.len().max(STEP)));
        }
        let room = (body.capacity() - body.len()).min(missing);
        match recv
            .read_chunk(room, true)
            .await
            .map_err(quinn::ReadExactError::ReadError)?
        {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(quinn::ReadExactError::FinishedEarly(body.len()).into()),
        }
    }
    Ok(())
}

/// The tag of the first field in protobuf bytes (0 if it cannot be read).
fn first_tag(b: &[u8]) -> u32 {
    let mut s = Scan { b, pos: 0 };
    match s.varint() {
        Some(key) if key <= u64::from(u32::MAX) => (key >> 3) as u32,
        _ => 0,
    }
}

/// What the sink needs from a batch, found by [`scan_batch`] without decoding records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Agent-chosen id.
    pub batch_id: u64,
    /// First seq the batch covers (its `from_seq`, or else its first record's seq).
    pub from_seq: u64,
    /// Whether the agent said where the batch starts (`from_seq`; older agents do not).
    pub from_declared: bool,
    /// Seq of the first record.
    pub first: u64,
    /// Seq of the last record.
    pub last: u64,
    /// Number of records.
    pub records: usize,
    /// The first reason a record is invalid, if any (the batch must be rejected whole).
    pub invalid: Option<InvalidRecord>,
}

/// Why a record of a batch cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record {index} (seq {seq}): {reason}")]
pub struct InvalidRecord {
    /// Position of the record in the batch.
    pub index: usize,
    /// Its seq (0 if not yet read).
    pub seq: u64,
    /// What is wrong.
    pub reason: &'static str,
}

/// A batch whose structure cannot be read at all (no seqs to refuse it by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch: {0}")]
pub struct MalformedBatch(pub &'static str);

/// Checks an encoded [`Batch`] in one pass, without allocating: the seqs (present,
/// ascending), and in every record each known field's wire type, the UTF-8 of its strings,
/// and that unknown fields can be skipped. A batch that passes decodes with [`Batch`]'s
/// prost decoder (what the drain does); one with an invalid record comes back with
/// [`BatchInfo::invalid`] set and its seqs, so it can be refused by them.
pub fn scan_batch(b: &[u8]) -> Result<BatchInfo, MalformedBatch> {
    let mut s = Scan { b, pos: 0 };
    let mut info = BatchInfo {
        batch_id: 0,
        from_seq: 0,
        from_declared: false,
        first: 0,
        last: 0,
        records: 0,
        invalid: None,
    };
    while !s.done() {
        let (tag, wt) = s.key().ok_or(MalformedBatch("bad field key"))?;
        match (tag, wt) {
            (1, WT_VARINT) => info.batch_id = s.varint().ok_or(MalformedBatch("bad batch_id"))?,
            (3, WT_VARINT) => {
                info.from_seq = s.varint().ok_or(MalformedBatch("bad from_seq"))?;
                info.from_declared = info.from_seq > 0;
            }
            (2, WT_LEN) => {
                let rec = s
                    .len_delimited()
                    .ok_or(MalformedBatch("record overruns the batch"))?;
                let index = info.records;
                let (seq, invalid) = scan_record(rec, index);
                let seq = seq.ok_or(MalformedBatch("record without a readable seq"))?;
                if seq == 0 {
                    return Err(MalformedBatch("record seq 0"));
                }
                if index > 0 && seq <= info.last {
                    return Err(MalformedBatch("batch seqs not ascending"));
                }
                if index == 0 {
                    info.first = seq;
                }
                info.last = seq;
                info.records += 1;
                if info.invalid.is_none() {
                    info.invalid = invalid;
                }
            }
            (1..=3, _) => return Err(MalformedBatch("wrong wire type")),
            _ => s
                .skip(wt)
                .ok_or(MalformedBatch("unknown field cannot be skipped"))?,
        }
    }
    if info.records == 0 {
        return Err(MalformedBatch("empty batch"));
    }
    if !info.from_declared {
        info.from_seq = info.first;
    } else if info.from_seq > info.first {
        return Err(MalformedBatch("from_seq beyond the first record"));
    }
    Ok(info)
}

/// One record: its seq (the last `seq` field, as prost keeps it) and the first problem.
fn scan_record(b: &[u8], index: usize) -> (Option<u64>, Option<InvalidRecord>) {
    let mut s = Scan { b, pos: 0 };
    let mut seq = None;
    let mut invalid: Option<&'static str> = None;
    while !s.done() {
        let Some((tag, wt)) = s.key() else {
            invalid = invalid.or(Some("bad field key"));
            break;
        };
        let ok = match (tag, wt) {
            (1, WT_VARINT) => match s.varint() {
                Some(v) => {
                    seq = Some(v);
                    true
                }
                None => false,
            },
            (2, WT_VARINT) => s.varint().is_some(),
            (3 | 4, WT_LEN) => match s.len_delimited() {
                Some(v) if std::str::from_utf8(v).is_ok() => true,
                Some(_) => {
                    invalid = invalid.or(Some(if tag == 3 {
                        "source is not UTF-8"
                    } else {
                        "topic is not UTF-8"
                    }));
                    continue;
                }
                None => false,
            },
            (5 | 7, WT_LEN) => s.len_delimited().is_some(),
            (6, WT_LEN) => match s.len_delimited() {
                Some(h) => {
                    if let Some(why) = scan_header(h) {
                        invalid = invalid.or(Some(why));
                    }
                    true
                }
                None => false,
            },
            (1..=7, _) => {
                invalid = invalid.or(Some("field with the wrong wire type"));
                // Still skippable by its own wire type: keep looking for the seq.
                if s.skip(wt).is_some() {
                    continue;
                }
                break;
            }
            _ => s.skip(wt).is_some(),
        };
        if !ok {
            invalid = invalid.or(Some("field cannot be read"));
            break;
        }
    }
    let seq_read = seq.unwrap_or(0);
    (
        seq,
        invalid.map(|reason| InvalidRecord {
            index,
            seq: seq_read,
            reason,
        }),
    )
}

/// A header: both fields strings. Returns what is wrong, if anything.
fn scan_header(b: &[u8]) -> Option<&'static str> {
    let mut s = Scan { b, pos: 0 };
    while !s.done() {
        let Some((tag, wt)) = s.key() else {
            return Some("header cannot be read");
        };
        match (tag, wt) {
            (1 | 2, WT_LEN) => match s.len_delimited() {
                Some(v) if std::str::from_utf8(v).is_ok() => {}
                Some(_) => return Some("header is not UTF-8"),
                None => return Some("header cannot be read"),
            },
            (1 | 2, _) => return Some("header field with the wrong wire type"),
            _ => {
                if s.skip(wt).is_none() {
                    return Some("header cannot be read");
                }
            }
        }
    }
    None
}

const WT_VARINT: u8 = 0;
const WT_64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_32: u8 = 5;

/// A cursor over protobuf bytes; every read is bounds-checked and answers `None` past the
/// end or on a malformed value (as prost's decoder would refuse it).
#[derive(Debug, Clone)]
struct Scan<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }

    #[inline]
    fn varint(&mut self) -> Option<u64> {
        // Most varints here (keys, lengths under 128) are one byte.
        if let Some(&byte) = self.b.get(self.pos)
            && byte < 0x80
        {
            self.pos += 1;
            return Some(u64::from(byte));
        }
        let mut v = 0u64;
        for i in 0..10 {
            let byte = *self.b.get(self.pos)?;
            self.pos += 1;
            // prost refuses a tenth byte above 1 (it would overflow 64 bits).
            if i == 9 && byte > 1 {
                return None;
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// A field key: (tag, wire type); tag 0 and keys over 32 bits are invalid.
    fn key(&mut self) -> Option<(u32, u8)> {
        let k = self.varint()?;
        if k > u64::from(u32::MAX) || k >> 3 == 0 {
            return None;
        }
        Some(((k >> 3) as u32, (k & 7) as u8))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let v = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(v)
    }

    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    /// [`Scan::len_delimited`] as the value's range in the bytes.
    fn len_delimited_span(&mut self) -> Option<(usize, usize)> {
        let n = usize::try_from(self.varint()?).ok()?;
        let from = self.pos;
        self.take(n)?;
        Some((from, self.pos))
    }

    /// Skips a value of wire type `wt`; groups (deprecated, never sent) are refused.
    fn skip(&mut self, wt: u8) -> Option<()> {
        match wt {
            WT_VARINT => self.varint().map(|_| ()),
            WT_64 => self.take(8).map(|_| ()),
            WT_LEN => self.len_delimited().map(|_| ()),
            WT_32 => self.take(4).map(|_| ()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written partial views decode what the generated messages encode.
    #[test]
    fn views_match_the_proto() {
        let hello = Hello {
            protocol_version: 1,
            queue_id: "q".into(),
            agent_version: "v".into(),
        };
        let batch = Batch {
            batch_id: 7,
            records: vec![Record {
                seq: 1,
                payload: vec![9].into(),
                ..Default::default()
            }],
            from_seq: 1,
        };
        let frame = |kind| AgentFrame { kind: Some(kind) }.encode_to_vec();
        let raw = |b: Vec<u8>| AgentFrameRaw::decode(&b[..]).unwrap();
        assert_eq!(
            raw(frame(agent_frame::Kind::Hello(hello.clone()))).hello,
            Some(hello)
        );
        let b = raw(frame(agent_frame::Kind::Batch(batch.clone())))
            .batch
            .unwrap();
        assert_eq!(Batch::decode(b).unwrap(), batch);
        let confirm = Confirm { upto_seq: 5 };
        assert_eq!(
            raw(frame(agent_frame::Kind::Confirm(confirm))).confirm,
            Some(confirm)
        );
        let resolve = Resolve {
            confirm_upto: 1,
            delivered_upto: 2,
            instance: 3,
            inherited_upto: 4,
        };
        assert_eq!(
            raw(frame(agent_frame::Kind::Resolve(resolve))).resolve,
            Some(resolve)
        );
        let entry = JournalEntry {
            agent_id: "a".into(),
            queue_id: "q".into(),
            last_seq: 9,
            batch: batch.encode_to_vec().into(),
            skip_upto: 0,
        };
        let h = JournalHeader::decode(&entry.encode_to_vec()[..]).unwrap();
        assert_eq!(
            (h.agent_id.as_str(), h.queue_id.as_str(), h.last_seq),
            ("a", "q", 9)
        );
    }

    /// `good` with one to three bytes replaced or bits flipped, or cut short.
    pub(crate) fn damaged(good: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut b = good.to_vec();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..b.len());
            match rng.u8(..3) {
                0 => b[at] = rng.u8(..),
                1 => b[at] ^= 1 << rng.u8(..8),
                _ => b.truncate(at.max(1)),
            }
        }
        b
    }

    /// A batch of records 5 to 8, with and without a key and with 0 to 2 headers.
    pub(crate) fn sample_batch() -> Vec<u8> {
        Batch {
            batch_id: 7,
            from_seq: 3,
            records: (5..9)
                .map(|seq| Record {
                    seq,
                    ts_ns: 11 + seq,
                    source: "src".into(),
                    topic: "t".into(),
                    key: (seq % 2 == 0).then(|| vec![1, 2]),
                    headers: (0..seq % 3)
                        .map(|i| Header {
                            name: "n".into(),
                            value: format!("v{i}"),
                        })
                        .collect(),
                    payload: vec![b'x'; seq as usize].into(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Issue 12, defect 1: the sink decoded only seqs, so a record prost cannot decode was
    /// acknowledged and later stopped the drain. Whatever `scan_batch` lets through must
    /// decode; checked on a valid batch and thousands of mutations of it.
    #[test]
    fn scan_batch_passes_only_what_prost_decodes() {
        let good = sample_batch();
        let info = scan_batch(&good).unwrap();
        assert_eq!(
            (
                info.batch_id,
                info.from_seq,
                info.first,
                info.last,
                info.records
            ),
            (7, 3, 5, 8, 4)
        );
        assert!(info.invalid.is_none());
        let mut rng = fastrand::Rng::with_seed(12);
        let mut passed = 0;
        for _ in 0..100_000 {
            let b = damaged(&good, &mut rng);
            if let Ok(info) = scan_batch(&b)
                && info.invalid.is_none()
            {
                passed += 1;
                let decoded = Batch::decode(&b[..]);
                assert!(decoded.is_ok(), "scan passed but prost fails: {b:?}");
            }
        }
        assert!(
            passed > 100,
            "the mutations should often stay valid ({passed})"
        );
    }

    /// Issue 12, defect 1: a non-UTF-8 string or a field of the wrong wire type makes the
    /// batch invalid (to be rejected), with its seqs still known.
    #[test]
    fn scan_batch_flags_invalid_records_by_seq() {
        let mut rec = Vec::new();
        prost::encoding::uint64::encode(1, &9u64, &mut rec);
        prost::encoding::bytes::encode(3, &vec![0xc3u8, 0x28], &mut rec);
        let mut batch = Vec::new();
        prost::encoding::bytes::encode(2, &rec, &mut batch);
        let info = scan_batch(&batch).unwrap();
        assert_eq!((info.first, info.last), (9, 9));
        assert_eq!(info.invalid.unwrap().reason, "source is not UTF-8");
        assert!(Batch::decode(&batch[..]).is_err());

        let mut rec = Vec::new();
        prost::encoding::uint64::encode(1, &10u64, &mut rec);
        prost::encoding::uint64::encode(4, &5u64, &mut rec); // topic as a varint
        let mut batch = Vec::new();
        prost::encoding::bytes::encode(2, &rec, &mut batch);
        let info = scan_batch(&batch).unwrap();
        assert_eq!(
            info.invalid.unwrap().reason,
            "field with the wrong wire type"
        );
        assert!(Batch::decode(&batch[..]).is_err());
    }

    /// Issue 12, defect 25: the frame-size error named the 16 MiB data limit whatever
    /// limit refused the frame (64 MiB on control streams).
    #[test]
    fn frame_size_error_names_the_limit_in_force() {
        let e = FrameError::TooLarge {
            len: 70_000,
            max: MAX_FIRST_FRAME,
        };
        assert_eq!(
            e.to_string(),
            "frame of 70000 bytes exceeds the 65536-byte limit"
        );
    }

    /// Issue 12, defects 16 and 17: ids are short and of a safe character set.
    #[test]
    fn ids_outside_the_safe_set_are_refused() {
        assert!(valid_id("0123456789abcdef0123456789abcdef", MAX_QUEUE_ID));
        assert!(valid_id("edge-1.site_a", MAX_AGENT_ID));
        for bad in ["", "edge-1/x", "a b", "é", "x\n"] {
            assert!(!valid_id(bad, MAX_AGENT_ID), "{bad:?}");
        }
        assert!(!valid_id(&"a".repeat(65), MAX_QUEUE_ID));
    }
}
