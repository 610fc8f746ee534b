//! A module offer as the agent checks it before compiling anything: the offer message
//! (also as the sink receives it inside an admin push), its key, its signature over the
//! module's hash, pipeline, version, sequence and vectors (or a rollback order), and its self-check vectors (NDJSON).
#![no_main]

use dataweaver::control;
use dataweaver::transform::tryout;
use dataweaver::wire::{AdminRequest, ModuleOffer};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = AdminRequest::decode(data)
        && let Some(o) = req.offer
    {
        let _ = control::verify_offer(&o);
    }
    let Ok(o) = ModuleOffer::decode(data) else {
        return;
    };
    let _ = control::parse_public_key(&o.key);
    let _ = control::verify_offer(&o);
    for line in String::from_utf8_lossy(&o.vectors).lines() {
        if !line.trim().is_empty() {
            let r = tryout::parse_line(line);
            let _ = tryout::RecordJson::from_record(&r);
        }
    }
});
