//! The record that flows from a source through transforms, the queue and the forwarder to
//! a sink, what a source appends with it, and the in-memory counters every stage of the data
//! path updates.

#![warn(missing_docs, unreachable_pub)]

pub mod append;
pub mod check;
pub mod counters;
pub mod record;

pub use append::{Appended, Checkpoint};
pub use counters::{Counters, Histogram, HistogramFamily, latency_histogram};
pub use record::{Headers, Record, Shared, now_ns};

/// `s` cut to at most `max` bytes (on a character boundary), with a mark that it was cut.
pub fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
