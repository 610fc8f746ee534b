//! Returns every record unchanged: measures the host/guest crossing.

use dataweaver_guest::{export_transform, Event, Transform};

struct Pass;

impl Transform for Pass {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Pass)
    }

    fn record(&mut self, ev: Event, out: &mut Vec<Event>) -> Result<(), String> {
        out.push(ev);
        Ok(())
    }
}

export_transform!(Pass);
