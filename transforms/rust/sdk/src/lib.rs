//! DataWeaver guest SDK for Rust: write a transform as one trait impl plus
//! `export_transform!(MyType)`.
//!
//! It implements the component model's canonical ABI for the `dataweaver:transform`
//! world (`wit/transform.wit`) by hand, so it needs no dependencies and builds with any
//! rustc that has a `wasm32-unknown-unknown` target (Debian's 1.63 included). With a
//! current toolchain you can use `wit-bindgen` against the same WIT instead: see the
//! README next to this crate.


extern crate alloc;

pub mod abi;
pub mod json;

use alloc::string::String;
use alloc::vec::Vec;

/// One header of a record (names may repeat; order is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// A record, as the agent's queue stores it (see the WIT file for every field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Nanoseconds since the Unix epoch when the source read it.
    pub ts_ns: u64,
    /// Name of the source that produced it.
    pub source: String,
    /// Routing topic: set it to route the record.
    pub topic: String,
    /// Optional key.
    pub key: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// The body.
    pub payload: Vec<u8>,
}

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed.
    Trace = 0,
    /// Diagnostics.
    Debug = 1,
    /// Normal.
    Info = 2,
    /// Handled surprise.
    Warn = 3,
    /// Unhandled problem.
    Error = 4,
}

/// Writes a line to the agent's log.
pub fn log(level: Level, message: &str) {
    abi::log(level as i32, message)
}

/// A transform. The SDK calls `init` once per instance and `record` for every record of
/// every batch, in order.
pub trait Transform: Sized + 'static {
    /// Builds the transform from its config (a JSON object as text); `Err` refuses it.
    fn init(config: &str) -> Result<Self, String>;

    /// Transforms one record: push zero (drop), one or several (split) records to `out`;
    /// `Err(reason)` sends the input to the dead-letter table with that reason.
    fn record(&mut self, event: Event, out: &mut Vec<Event>) -> Result<(), String>;
}
