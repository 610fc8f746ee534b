//! What an agent (and the operator's `transform` client) decodes from a sink: one frame
//! body as a `SinkFrame` (`Welcome`, `Ack`, `Refusal`, `Resolved`, `Offer`, `AdminReply`).
//! An offer goes on through the agent's checks that run before any module is compiled:
//! the signature (`control::verify_offer`) and the self-check vectors (NDJSON).
#![no_main]

use bytes::Bytes;
use dataweaver::control;
use dataweaver::transform::tryout;
use dataweaver::wire::{SinkFrame, sink_frame};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = SinkFrame::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = SinkFrame::decode(frame.encode_to_vec().as_slice()).expect("re-decode");
    assert_eq!(again, frame);
    if let Some(sink_frame::Kind::Offer(o)) = frame.kind {
        let _ = control::verify_offer(&o);
        for line in String::from_utf8_lossy(&o.vectors).lines() {
            if !line.trim().is_empty() {
                let _ = tryout::parse_line(line);
            }
        }
    }
});
