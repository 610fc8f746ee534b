//! What a sink decodes from an agent: one frame body (the 4-byte length prefix is
//! `wire::read_frame_max`'s, over QUIC), as every message the sink reads.
//!
//! - `AgentFrame`: the first frame of every stream (data `Hello`, `ControlHello`, `Admin`),
//!   the data stream's `Resolve`, and every frame of a control stream (`Outcome`).
//! - `AgentFrameRaw` then `wire::scan_batch`: each later frame of a data stream, checked in
//!   one pass; a batch that passes is journaled as it came and decoded in full by the drain
//!   (`JournalEntry::records`), so that decode runs here too, and must succeed.
#![no_main]

use bytes::Bytes;
use dataweaver::wire::{self, AgentFrame, AgentFrameRaw, Batch, JournalEntry};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(frame) = AgentFrame::decode(body.clone()) {
        // prost must read back exactly what it writes.
        let again = AgentFrame::decode(frame.encode_to_vec().as_slice()).expect("re-decode");
        assert_eq!(again, frame);
    }
    let Ok(raw) = AgentFrameRaw::decode(body) else {
        return;
    };
    let Some(batch) = raw.batch else { return };
    let Ok(info) = wire::scan_batch(&batch) else {
        return;
    };
    if info.invalid.is_some() {
        return; // rejected, never journaled
    }
    let entry = JournalEntry {
        agent_id: "edge-1".into(),
        queue_id: "q".into(),
        last_seq: info.last,
        batch: batch.clone(),
        skip_upto: info.first.saturating_sub(1),
    };
    let stored = JournalEntry::decode(entry.encode_to_vec().as_slice()).expect("own entry");
    // What the scan passed, the drain must be able to decode: else one agent's batch
    // would be acked and then stop the output.
    let full = Batch::decode(batch).expect("a batch scan_batch passed decodes");
    assert_eq!(full.records.len(), info.records);
    let records = stored.records().expect("a stored entry of a passed batch decodes");
    assert!(records.len() <= full.records.len());
});
