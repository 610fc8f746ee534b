//! The bytes of a stored chunk, and the records in them.
//!
//! # Layout (do not change without a new chunk version)
//! `[version: u8][count: u32 LE][crc32: u32 LE][body]`; version 1 has no checksum (its header
//! is the first five bytes).
//! - Version 3 (written now): the body is `count` records in the wire encoding, each
//!   length-delimited as a `repeated Record` field's value is: `[varint length][protobuf
//!   wire::Record, seq included]`. The forwarder builds a `Batch` from these bytes as they
//!   are stored (one copy, no decoding and no re-encoding of the records), and the sink
//!   journals that batch undecoded: a record is encoded once between source and output.
//! - Versions 1 and 2 (queues of format 1 and 2): the body is a CBOR array of
//!   [`Record`]; read as they are, re-encoded for the wire when sent.

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::QueueError;
use dataweaver_core::Record;
use dataweaver_wire as wire;

/// A chunk of version 1: no checksum, CBOR body.
pub(crate) const V1: u8 = 1;
/// A chunk of version 2: checksum, CBOR body.
pub(crate) const V2: u8 = 2;
/// A chunk of version 3: checksum, wire-encoded body.
pub(crate) const V3: u8 = 3;
/// Header of a version 1 chunk.
pub(crate) const V1_HEADER: usize = 5;
/// Header of a version 2 or 3 chunk.
pub(crate) const HEADER: usize = 9;

/// A chunk's parts, from its header alone (no checksum checked).
pub(crate) struct Parts<'a> {
    pub version: u8,
    pub count: u32,
    pub body: &'a [u8],
}

/// Splits a stored chunk into its parts.
pub(crate) fn parts(first: u64, v: &[u8]) -> Result<Parts<'_>, QueueError> {
    let (version, header) = match v.first() {
        Some(&V3) => (V3, HEADER),
        Some(&V2) => (V2, HEADER),
        Some(&V1) => (V1, V1_HEADER),
        _ => (0, 0),
    };
    match (v.get(1..5), v.get(header..)) {
        (Some(&[a, b, c, d]), Some(body)) if header > 0 => Ok(Parts {
            version,
            count: u32::from_le_bytes([a, b, c, d]),
            body,
        }),
        _ => Err(corrupt(first, "bad chunk header")),
    }
}

fn corrupt(seq: u64, message: impl Into<String>) -> QueueError {
    QueueError::Corrupt {
        seq,
        message: message.into(),
    }
}

/// The CRC-32 of a version 2 or 3 chunk: every byte but the checksum's own.
pub(crate) fn crc(v: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(v.get(..5).unwrap_or(v));
    h.update(v.get(HEADER..).unwrap_or(&[]));
    h.finalize()
}

/// Starts a version 3 chunk of `count` records in `buf`.
pub(crate) fn begin(buf: &mut Vec<u8>, count: usize) {
    buf.clear();
    buf.push(V3);
    buf.extend_from_slice(&(count as u32).to_le_bytes());
    buf.extend_from_slice(&[0; HEADER - 5]);
}

/// Sets the record count of the chunk in `buf` (begun with [`begin`]).
pub(crate) fn set_count(buf: &mut [u8], count: usize) {
    buf[1..5].copy_from_slice(&(count as u32).to_le_bytes());
}

/// Seals the chunk in `buf`: writes its checksum.
pub(crate) fn seal(buf: &mut [u8]) {
    let c = crc(buf);
    buf[5..HEADER].copy_from_slice(&c.to_le_bytes());
}

/// Appends `r` with `seq` to a version 3 body: `[varint length][wire::Record]`, the bytes
/// prost would write for the same `wire::Record` (field order, defaults left out).
pub(crate) fn put_record(buf: &mut Vec<u8>, seq: u64, r: &Record) {
    use prost::encoding::{bytes, uint64};
    let header_len = |name: &str, value: &str| str_len(1, name) + str_len(2, value);
    let mut len = str_len(3, &r.source) + str_len(4, &r.topic);
    if seq != 0 {
        len += uint64::encoded_len(1, &seq);
    }
    if r.ts_ns != 0 {
        len += uint64::encoded_len(2, &r.ts_ns);
    }
    if let Some(k) = &r.key {
        len += bytes::encoded_len(5, k);
    }
    for (n, v) in r.headers.iter() {
        let h = header_len(n, v);
        len += key_len(6) + encoded_len_varint(h as u64) + h;
    }
    if !r.payload.is_empty() {
        len += bytes::encoded_len(7, &r.payload);
    }
    buf.reserve(len + encoded_len_varint(len as u64));
    encode_varint(len as u64, buf);
    if seq != 0 {
        uint64::encode(1, &seq, buf);
    }
    if r.ts_ns != 0 {
        uint64::encode(2, &r.ts_ns, buf);
    }
    put_str(3, &r.source, buf);
    put_str(4, &r.topic, buf);
    if let Some(k) = &r.key {
        bytes::encode(5, k, buf);
    }
    for (n, v) in r.headers.iter() {
        encode_key(6, WireType::LengthDelimited, buf);
        encode_varint(header_len(n, v) as u64, buf);
        put_str(1, n, buf);
        put_str(2, v, buf);
    }
    if !r.payload.is_empty() {
        bytes::encode(7, &r.payload, buf);
    }
}

/// The encoded length of a proto3 `string` field (nothing when empty, as prost leaves
/// defaults out).
fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// Appends a proto3 `string` field (nothing when empty).
fn put_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.extend_from_slice(s.as_bytes());
    }
}

/// Calls `f` with the seq and the length-delimited wire bytes of every record of the chunk
/// (body of version `version`, `count` records from `first`) at or above `from`, until `f`
/// returns false. Versions 1 and 2 are decoded and encoded for the wire on the way.
pub(crate) fn for_each_encoded(
    first: u64,
    p: &Parts<'_>,
    from: u64,
    mut f: impl FnMut(u64, &[u8]) -> bool,
) -> Result<(), QueueError> {
    if p.version != V3 {
        let mut buf = Vec::new();
        for (i, r) in decode(first, p)?.iter().enumerate() {
            let seq = seq_at(first, i as u64)?;
            if seq < from {
                continue;
            }
            buf.clear();
            put_record(&mut buf, seq, r);
            if !f(seq, &buf) {
                break;
            }
        }
        return Ok(());
    }
    let mut rest = p.body;
    for i in 0..u64::from(p.count) {
        let seq = seq_at(first, i)?;
        let (record, tail) = split_delimited(rest)
            .ok_or_else(|| corrupt(first, format!("record {i} of {}: truncated", p.count)))?;
        rest = tail;
        if seq >= from && !f(seq, record) {
            return Ok(());
        }
    }
    if !rest.is_empty() {
        return Err(corrupt(first, "bytes after the last record"));
    }
    Ok(())
}

/// The seq of record `i` of the chunk at `first` (a damaged key near `u64::MAX` would
/// overflow).
fn seq_at(first: u64, i: u64) -> Result<u64, QueueError> {
    first
        .checked_add(i)
        .ok_or_else(|| corrupt(first, "seqs past the largest u64"))
}

/// The first length-delimited value of `b` (with its length prefix) and what follows it.
fn split_delimited(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut cursor = b;
    let len = prost::encoding::decode_varint(&mut cursor).ok()?;
    let prefix = b.len() - cursor.len();
    let end = prefix.checked_add(usize::try_from(len).ok()?)?;
    (end <= b.len()).then(|| b.split_at(end))
}

/// The records of a chunk body, checking the count against its header (and, for version
/// 3, that each record carries its seq).
pub(crate) fn decode(first: u64, p: &Parts<'_>) -> Result<Vec<Record>, QueueError> {
    let records: Vec<Record> = if p.version == V3 {
        let mut out = Vec::with_capacity(p.count.min(1 << 16) as usize);
        let mut err = None;
        for_each_encoded(first, p, first, |seq, bytes| {
            match wire::Record::decode_length_delimited(bytes) {
                Ok(w) if w.seq == seq => out.push(from_wire(w)),
                Ok(w) => err = Some(format!("record {} carries seq {}", seq, w.seq)),
                Err(e) => err = Some(format!("record {seq}: {e}")),
            }
            err.is_none()
        })?;
        if let Some(e) = err {
            return Err(corrupt(first, e));
        }
        out
    } else {
        ciborium::from_reader(p.body).map_err(|e| corrupt(first, e.to_string()))?
    };
    if records.len() != p.count as usize {
        return Err(corrupt(
            first,
            format!(
                "header says {} records, body has {}",
                p.count,
                records.len()
            ),
        ));
    }
    Ok(records)
}

/// A stored record back in the agent's form.
fn from_wire(w: wire::Record) -> Record {
    Record {
        ts_ns: w.ts_ns,
        source: w.source.into(),
        topic: w.topic.into(),
        key: w.key,
        headers: w
            .headers
            .into_iter()
            .map(|h| (h.name.into(), h.value.into()))
            .collect(),
        payload: w.payload.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_of(seq: u64, r: &Record) -> wire::Record {
        wire::Record {
            seq,
            ts_ns: r.ts_ns,
            source: r.source.to_string(),
            topic: r.topic.to_string(),
            key: r.key.clone(),
            headers: r
                .headers
                .iter()
                .map(|(name, value)| wire::Header {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            payload: r.payload.clone().into(),
        }
    }

    /// The hand-assembled encoding is byte for byte what prost writes for the generated
    /// type, defaults and all.
    #[test]
    fn stored_records_are_what_prost_encodes() {
        let mut rng = fastrand::Rng::with_seed(3);
        let s = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(0..4)).map(|_| rng.alphanumeric()).collect()
        };
        for _ in 0..2000 {
            let r = Record {
                ts_ns: if rng.bool() { 0 } else { rng.u64(..) },
                source: s(&mut rng).into(),
                topic: s(&mut rng).into(),
                key: rng
                    .bool()
                    .then(|| (0..rng.usize(0..3)).map(|_| rng.u8(..)).collect()),
                headers: (0..rng.usize(0..3))
                    .map(|_| (s(&mut rng).into(), s(&mut rng).into()))
                    .collect(),
                payload: (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect(),
            };
            let seq = rng.u64(0..1 << 40);
            let mut mine = Vec::new();
            put_record(&mut mine, seq, &r);
            assert_eq!(mine, wire_of(seq, &r).encode_length_delimited_to_vec());
        }
    }

    #[test]
    fn a_chunk_reads_back_and_refuses_truncation() {
        let recs: Vec<Record> = (0..5)
            .map(|i| Record::new("s", "t", format!("p{i}").into_bytes()))
            .collect();
        let mut buf = Vec::new();
        begin(&mut buf, recs.len());
        for (i, r) in recs.iter().enumerate() {
            put_record(&mut buf, 10 + i as u64, r);
        }
        seal(&mut buf);
        let p = parts(10, &buf).unwrap();
        assert_eq!(decode(10, &p).unwrap(), recs);
        let mut seen = Vec::new();
        for_each_encoded(10, &p, 12, |seq, _| {
            seen.push(seq);
            true
        })
        .unwrap();
        assert_eq!(seen, [12, 13, 14]);
        let cut = parts(10, &buf[..buf.len() - 1]).unwrap();
        assert!(decode(10, &cut).is_err());
        // A chunk stored at the wrong key names seqs it does not hold.
        assert!(decode(11, &p).is_err());
    }
}
