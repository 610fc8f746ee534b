//! DataWeaver: an edge data agent and its central sink.
//!
//! # Layout
//! The data path reads top to bottom:
//! - [`source`]: where records come from (files, syslog lines, HTTP, MQTT, stdin, host metrics).
//! - [`transform`]: the per-pipeline transform chain (the WASM host plugs in here).
//! - [`queue`]: the crash-safe redb queue; a record is acknowledged to its source only
//!   after its commit.
//! - [`forward`]: batches over QUIC/TLS 1.3 to a sink, deleting only what it acknowledged.
//! - [`sink`]: the receiving end: journal, de-duplication, outputs.
//!
//! Around it: [`record`] (the unit of data), [`wire`] (the protocol), [`tls`] (certificates
//! and mutual TLS), [`config`] (TOML), [`pipeline`] (sources → transforms → queue),
//! [`agent`] (starting and stopping it all in order), [`control`] (signed transform
//! modules pushed through the sink), [`admin`] (metrics, health, readiness, status) and
//! [`fsmode`] (owner-only data files), and [`store`] (the durable-store core under the
//! queue and the journal: where a database lives, and the simulated disk of the crash tests).

pub mod admin;
pub mod agent;
pub mod config;
pub mod control;
pub mod counters;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod pipeline;
pub mod queue;
pub mod record;
#[cfg(test)]
mod sim;
pub mod sink;
pub mod source;
pub mod tls;
pub mod transform;

pub use record::Record;

/// The durable-store core (crate `dataweaver-store`).
pub use dataweaver_store as store;
/// Owner-only data files and directories.
pub use dataweaver_store::fsmode;
/// The wire protocol (crate `dataweaver-wire`).
pub use dataweaver_wire as wire;
