//! What the agent decodes from its queue file: a stored chunk (`[version][count][crc][body]`:
//! version 3 records in the wire encoding, versions 1 and 2 a CBOR array; walked by the
//! forwarder as stored and decoded by `queue export`), a dead letter (CBOR), and a
//! pushed-module state checkpoint (CBOR). The bytes come from disk, so any may be damaged.
#![no_main]

use dataweaver::fuzzing;
use dataweaver::queue::DeadLetter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = fuzzing::queue_chunk(1, data) {
        for r in records {
            let _ = r.approx_size();
        }
    }
    let _ = fuzzing::queue_chunk_encoded(1, data);
    let _ = ciborium::from_reader::<DeadLetter, _>(data);
    let _ = fuzzing::control_state(data);
});
