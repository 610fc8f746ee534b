//! Records read in place from an encoded [`Batch`](crate::Batch).
//!
//! The sink's drain reads every journaled record once, to write it to its outputs; decoding
//! each into a [`Record`](crate::Record) (a `String` per field, a vector of headers, all
//! freed again after the write) was a sixth of the sink's CPU. A [`RecordView`] points into
//! the batch instead. It is read as strictly as prost decodes: a view exists only where
//! [`Batch`](crate::Batch)'s decoder would succeed, with the same values (the test
//! `views_read_exactly_what_prost_decodes` compares them over many damaged batches).

use super::{MalformedBatch, Scan, WT_LEN, WT_VARINT};

/// An encoded `Batch` whose records were all checked, with where each record's fields
/// lie, so that reading its records again takes no parsing.
#[derive(Debug, Clone, Default)]
pub struct CheckedBatch {
    bytes: bytes::Bytes,
    records: Vec<At>,
    headers: Vec<HeaderAt>,
}

/// Where a record's fields lie in the batch.
#[derive(Debug, Clone, Copy)]
struct At {
    seq: u64,
    ts_ns: u64,
    source: Span,
    topic: Span,
    key: Option<Span>,
    payload: Span,
    /// Its headers' range in `CheckedBatch::headers`.
    headers: (u32, u32),
}

/// A range of the batch's bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Span(u32, u32);

/// A header's name and value.
#[derive(Debug, Clone, Copy)]
struct HeaderAt(Span, Span);

impl CheckedBatch {
    /// Checks every record of `bytes` (an encoded `Batch`) as strictly as prost decodes
    /// it, and keeps those above `skip_upto` (the rest were duplicates).
    pub fn new(bytes: bytes::Bytes, skip_upto: u64) -> Result<CheckedBatch, MalformedBatch> {
        // Offsets are u32: a batch is at most a frame (16 MiB).
        if u32::try_from(bytes.len()).is_err() {
            return Err(MalformedBatch("batch over 4 GiB"));
        }
        let mut records = Vec::new();
        let mut headers = Vec::new();
        let mut s = Scan { b: &bytes, pos: 0 };
        while !s.done() {
            let Some((tag, wt)) = s.key() else {
                return Err(MalformedBatch("bad field key"));
            };
            let ok = match (tag, wt) {
                (2, WT_LEN) => {
                    let at = s
                        .len_delimited_span()
                        .and_then(|(from, to)| parse_record(&bytes, from, to, &mut headers));
                    match at {
                        Some(at) if at.seq > skip_upto => records.push(at),
                        Some(at) => headers.truncate(at.headers.0 as usize),
                        None => return Err(MalformedBatch("record does not decode")),
                    }
                    true
                }
                (1 | 3, WT_VARINT) => s.varint().is_some(),
                (1..=3, _) => false,
                (_, wt) => s.skip(wt).is_some(),
            };
            if !ok {
                return Err(MalformedBatch("batch field does not decode"));
            }
        }
        Ok(CheckedBatch {
            bytes,
            records,
            headers,
        })
    }

    /// The records kept, in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordView<'_>> + '_ {
        self.records.iter().map(|at| RecordView {
            seq: at.seq,
            ts_ns: at.ts_ns,
            source: self.text(at.source),
            topic: self.text(at.topic),
            key: at.key.map(|k| self.slice(k)),
            payload: self.slice(at.payload),
            headers: HeaderViews {
                batch: self,
                at: self
                    .headers
                    .get(at.headers.0 as usize..at.headers.1 as usize)
                    .unwrap_or_default()
                    .iter(),
            },
        })
    }

    /// How many records `records` yields.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn slice(&self, s: Span) -> &[u8] {
        self.bytes
            .get(s.0 as usize..s.1 as usize)
            .unwrap_or_default()
    }

    /// Checked to be UTF-8 by `new`: the fallback to "" is never taken.
    fn text(&self, s: Span) -> &str {
        std::str::from_utf8(self.slice(s)).unwrap_or_default()
    }
}

/// A record of a [`CheckedBatch`], its strings and bytes borrowed from the batch.
#[derive(Debug, Clone)]
pub struct RecordView<'a> {
    /// Queue sequence number.
    pub seq: u64,
    /// Source timestamp, ns since the epoch.
    pub ts_ns: u64,
    /// Producing source.
    pub source: &'a str,
    /// Routing topic.
    pub topic: &'a str,
    /// Optional key.
    pub key: Option<&'a [u8]>,
    /// The payload.
    pub payload: &'a [u8],
    headers: HeaderViews<'a>,
}

impl<'a> RecordView<'a> {
    /// The headers, in order, repeated names kept: `(name, value)`.
    pub fn headers(&self) -> HeaderViews<'a> {
        self.headers.clone()
    }
}

/// The headers of a [`RecordView`], in order.
#[derive(Debug, Clone)]
pub struct HeaderViews<'a> {
    batch: &'a CheckedBatch,
    at: std::slice::Iter<'a, HeaderAt>,
}

impl<'a> Iterator for HeaderViews<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let h = self.at.next()?;
        Some((self.batch.text(h.0), self.batch.text(h.1)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.at.size_hint()
    }
}

impl ExactSizeIterator for HeaderViews<'_> {}

/// The record in `b[from..to]`, its headers appended to `headers`; `None` where prost's
/// decoder would fail. As prost does, a repeated scalar field keeps its last value.
fn parse_record(b: &[u8], from: usize, to: usize, headers: &mut Vec<HeaderAt>) -> Option<At> {
    let first = headers.len() as u32;
    let mut at = At {
        seq: 0,
        ts_ns: 0,
        source: Span::default(),
        topic: Span::default(),
        key: None,
        payload: Span::default(),
        headers: (first, first),
    };
    let mut s = Scan {
        b: b.get(..to)?,
        pos: from,
    };
    while !s.done() {
        match s.key()? {
            (1, WT_VARINT) => at.seq = s.varint()?,
            (2, WT_VARINT) => at.ts_ns = s.varint()?,
            (3, WT_LEN) => at.source = text(&mut s)?,
            (4, WT_LEN) => at.topic = text(&mut s)?,
            (5, WT_LEN) => at.key = Some(span(&mut s)?),
            (6, WT_LEN) => {
                let Span(hf, ht) = span(&mut s)?;
                headers.push(parse_header(b, hf as usize, ht as usize)?);
            }
            (7, WT_LEN) => at.payload = span(&mut s)?,
            (1..=7, _) => return None,
            (_, wt) => s.skip(wt)?,
        }
    }
    at.headers.1 = headers.len() as u32;
    Some(at)
}

/// A `Header` message in `b[from..to]`: the last name and value, as prost keeps them.
fn parse_header(b: &[u8], from: usize, to: usize) -> Option<HeaderAt> {
    let mut h = HeaderAt(Span::default(), Span::default());
    let mut s = Scan {
        b: b.get(..to)?,
        pos: from,
    };
    while !s.done() {
        match s.key()? {
            (1, WT_LEN) => h.0 = text(&mut s)?,
            (2, WT_LEN) => h.1 = text(&mut s)?,
            (1 | 2, _) => return None,
            (_, wt) => s.skip(wt)?,
        }
    }
    Some(h)
}

/// The next length-delimited value's span.
fn span(s: &mut Scan<'_>) -> Option<Span> {
    let (from, to) = s.len_delimited_span()?;
    Some(Span(from as u32, to as u32))
}

/// [`span`] of a value that must be UTF-8.
fn text(s: &mut Scan<'_>) -> Option<Span> {
    let sp = span(s)?;
    std::str::from_utf8(s.b.get(sp.0 as usize..sp.1 as usize)?).ok()?;
    Some(sp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{damaged, sample_batch};
    use crate::{Batch, Header, Record};
    use prost::Message;

    /// The view's fields as an owned record, to compare with prost's.
    fn owned(v: &RecordView<'_>) -> Record {
        Record {
            seq: v.seq,
            ts_ns: v.ts_ns,
            source: v.source.into(),
            topic: v.topic.into(),
            key: v.key.map(<[u8]>::to_vec),
            headers: v
                .headers()
                .map(|(name, value)| Header {
                    name: name.into(),
                    value: value.into(),
                })
                .collect(),
            payload: v.payload.to_vec().into(),
        }
    }

    fn views(b: &[u8]) -> Result<Vec<Record>, MalformedBatch> {
        let batch = CheckedBatch::new(b.to_vec().into(), 0)?;
        Ok(batch.records().map(|v| owned(&v)).collect())
    }

    /// The drain writes what views read: over a valid batch and 200,000 damaged ones
    /// (bytes replaced, bits flipped, cut short), a view exists exactly where prost
    /// decodes, and holds the same records, headers in order with repeats kept.
    #[test]
    fn views_read_exactly_what_prost_decodes() {
        let good = sample_batch();
        let want = Batch::decode(&good[..]).unwrap().records;
        assert_eq!(views(&good).unwrap(), want);
        assert_eq!(want[3].headers.len(), 2, "the sample repeats a header name");
        let mut rng = fastrand::Rng::with_seed(14);
        let (mut both, mut neither) = (0, 0);
        for _ in 0..200_000 {
            let b = damaged(&good, &mut rng);
            match (Batch::decode(&b[..]), views(&b)) {
                (Ok(p), Ok(v)) => {
                    // Seq 0 is at or below any `skip_upto` (and refused on entry).
                    let p: Vec<_> = p.records.into_iter().filter(|r| r.seq > 0).collect();
                    assert_eq!(v, p, "{b:?}");
                    both += 1;
                }
                (Err(_), Err(_)) => neither += 1,
                // Groups (deprecated, never sent) are the one thing prost skips and the
                // views refuse, as `scan_batch` refuses them on entry: a start key
                // (wire type 3) closed by its end key (the same tag, wire type 4).
                (Ok(_), Err(_)) if has_group(&b) => neither += 1,
                (p, v) => panic!("prost {p:?}, views {v:?}, bytes {b:?}"),
            }
        }
        assert!(both > 1_000 && neither > 1_000, "{both} / {neither}");
    }

    fn has_group(b: &[u8]) -> bool {
        (0..b.len()).any(|i| b[i] & 7 == 3 && b[i + 1..].contains(&(b[i] + 1)))
    }

    /// Records at or below `skip_upto` are left out, with their headers.
    #[test]
    fn records_up_to_skip_upto_are_left_out() {
        let b = CheckedBatch::new(sample_batch().into(), 6).unwrap();
        let got: Vec<_> = b.records().map(|v| owned(&v)).collect();
        let all = Batch::decode(&sample_batch()[..]).unwrap().records;
        assert_eq!(got, all[2..]);
        assert_eq!(b.len(), 2);
    }
}
