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
//! and mutual TLS), [`config`] (TOML), [`pipeline`] (what follows a pipeline's sources: transforms, then the queue),
//! [`agent`] (starting and stopping it all in order), [`control`] (signed transform
//! modules pushed through the sink), [`admin`] (metrics, health, readiness, status) and
//! [`fsmode`] (owner-only data files), and [`store`] (the durable-store core under the
//! queue and the journal: where a database lives, and the simulated disk of the crash tests).
//!
//! This crate holds [`config`], [`pipeline`] and [`agent`]; every other module is a crate of its own
//! (`agent/<name>/`), re-exported here so that the binary, the tests and the fuzz targets
//! see one `dataweaver` library.

#![warn(missing_docs, unreachable_pub)]

pub mod agent;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod pipeline;

pub use dataweaver_core::Record;

/// Metrics, health, readiness and status over HTTP (crate `dataweaver-admin`).
pub use dataweaver_admin as admin;
/// Signed transform modules pushed through the sink (crate `dataweaver-control`).
pub use dataweaver_control as control;
/// In-memory counters and histograms (crate `dataweaver-core`).
pub use dataweaver_core::counters;
/// The record (crate `dataweaver-core`).
pub use dataweaver_core::record;
/// The forwarder (crate `dataweaver-forward`).
pub use dataweaver_forward as forward;
/// The crash-safe queue (crate `dataweaver-queue`).
pub use dataweaver_queue as queue;
/// The receiving end: journal, de-duplication, outputs (crate `dataweaver-sink`).
pub use dataweaver_sink as sink;
/// Sources and the port they hand records to (crate `dataweaver-source`).
pub use dataweaver_source as source;
/// The durable-store core (crate `dataweaver-store`).
pub use dataweaver_store as store;
/// Owner-only data files and directories.
pub use dataweaver_store::fsmode;
/// Mutual TLS (crate `dataweaver-tls`).
pub use dataweaver_tls as tls;
/// The WASM transform host (crate `dataweaver-transform`).
pub use dataweaver_transform as transform;
/// The wire protocol (crate `dataweaver-wire`).
pub use dataweaver_wire as wire;
