//! What the agent decodes from its queue file: a stored chunk (`[version][count][CBOR
//! array of Record]`, read by the forwarder and `queue export`), a dead letter (CBOR), and a
//! pushed-module state checkpoint (CBOR). The bytes come from disk, so any may be damaged.
#![no_main]

use dataweaver::fuzzing;
use dataweaver::queue::DeadLetter;
use dataweaver::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = fuzzing::queue_chunk(1, data) {
        // Decoded records go on to the wire as the forwarder sends them.
        for (i, r) in records.into_iter().enumerate() {
            let _ = r.approx_size();
            let _ = wire::Record::from_queue(1 + i as u64, r);
        }
    }
    let _ = ciborium::from_reader::<DeadLetter, _>(data);
    let _ = fuzzing::control_state(data);
});
