//! What a sink decodes from an agent: one frame body (the 4-byte length prefix is
//! `wire::read_frame_max`'s, over QUIC), as every message the sink reads.
//!
//! - `AgentFrame`: the first frame of every stream (data `Hello`, `ControlHello`, `Admin`),
//!   the data stream's `Resolve`, and every frame of a control stream (`Outcome`).
//! - `AgentFrameRaw` then `BatchSeqs`: each later frame of a data stream, decoded for its
//!   seqs only; the batch bytes are journaled as they came and decoded in full by the
//!   drain (`JournalEntry::records`), so that decode runs here too.
#![no_main]

use bytes::Bytes;
use dataweaver::wire::{AgentFrame, AgentFrameRaw, Batch, BatchSeqs, JournalEntry};
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
    let Ok(seqs) = BatchSeqs::decode(batch.clone()) else {
        return;
    };
    let entry = JournalEntry {
        agent_id: "edge-1".into(),
        queue_id: "q".into(),
        last_seq: seqs.records.last().map_or(0, |r| r.seq),
        batch: batch.clone(),
        skip_upto: seqs.records.first().map_or(0, |r| r.seq.saturating_sub(1)),
    };
    let stored = JournalEntry::decode(entry.encode_to_vec().as_slice()).expect("own entry");
    if let (Ok(records), Ok(full)) = (stored.records(), Batch::decode(batch)) {
        // The drain keeps exactly the records the seqs-only decode saw past `skip_upto`.
        assert_eq!(full.records.len(), seqs.records.len());
        assert!(records.len() <= full.records.len());
    }
});
