//! Hostile test module: panics (a trap, with panic=abort) on any record whose payload
//! contains `boom`; passes the others through.

use dataweaver_guest::{export_transform, Event, Transform};

struct Boom;

impl Transform for Boom {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Boom)
    }

    fn record(&mut self, ev: Event, out: &mut Vec<Event>) -> Result<(), String> {
        if ev.payload.windows(4).any(|w| w == b"boom") {
            panic!("boom in record");
        }
        out.push(ev);
        Ok(())
    }
}

export_transform!(Boom);
