//! A sink journal value (`journal` table) as the drain and the `Resolve` rewrite read it:
//! the header alone, then the whole entry, its records read in place (the drain) and
//! decoded by prost (the rewrite), then the JSON lines an output writes from them. The
//! bytes come from disk, so any of them may be damaged.
#![no_main]

use bytes::Bytes;
use dataweaver::sink::journal::Entry;
use dataweaver::sink::output;
use dataweaver::wire::{JournalEntry, JournalHeader};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let header = JournalHeader::decode(data);
    let view = Entry::decode(data);
    let Ok(raw) = JournalEntry::decode(Bytes::copy_from_slice(data)) else {
        assert!(view.is_err(), "a view of an entry prost refuses");
        return;
    };
    // The header is a prefix of the entry's fields: it decodes wherever the entry does.
    let header = header.expect("header of a decodable entry");
    assert_eq!(header.last_seq, raw.last_seq);
    let decoded = raw.records();
    let Ok(entry) = view else {
        // Groups are the one encoding prost skips and the views (like the sink's intake)
        // refuse; anything else prost reads, the drain must read too.
        return;
    };
    let records = decoded.expect("prost decodes what the views read");
    assert!(records.iter().all(|r| r.seq > raw.skip_upto));
    assert_eq!(entry.len(), records.len());
    for (v, r) in entry.records().zip(&records) {
        assert_eq!(
            (v.seq, v.ts_ns, v.source, v.topic, v.key, v.payload),
            (r.seq, r.ts_ns, &r.source[..], &r.topic[..], r.key.as_deref(), &r.payload[..])
        );
        assert!(v.headers().eq(r.headers.iter().map(|h| (&h.name[..], &h.value[..]))));
    }
    let n = records.len();
    let entries = [(1, entry)];
    let mut buf = Vec::new();
    output::format_lines(&entries, &mut buf);
    // One JSON object per record, each on its own line.
    let lines: Vec<&[u8]> = buf
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), n);
    for l in lines {
        serde_json::from_slice::<serde_json::Value>(l).expect("output line is JSON");
    }
});
