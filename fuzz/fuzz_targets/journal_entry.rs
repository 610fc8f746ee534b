//! A sink journal value (`journal` table) as the drain and the `Resolve` rewrite read it:
//! the header alone, then the whole entry and its records, then the JSON lines an output
//! writes from them. The bytes come from disk, so any of them may be damaged.
#![no_main]

use bytes::Bytes;
use dataweaver::sink::journal::Entry;
use dataweaver::sink::output;
use dataweaver::wire::{JournalEntry, JournalHeader};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let header = JournalHeader::decode(data);
    let Ok(raw) = JournalEntry::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    // The header is a prefix of the entry's fields: it decodes wherever the entry does.
    let header = header.expect("header of a decodable entry");
    assert_eq!(header.last_seq, raw.last_seq);
    let Ok(records) = raw.records() else { return };
    assert!(records.iter().all(|r| r.seq > raw.skip_upto));
    let n = records.len();
    let entries = [(
        1,
        Entry {
            agent_id: raw.agent_id,
            queue_id: raw.queue_id,
            records,
        },
    )];
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
