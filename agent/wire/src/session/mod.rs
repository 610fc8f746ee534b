//! The two sides of a data stream (and of the control stream, in [`control`]) as state machines, without I/O (as `quinn-proto` is to
//! `quinn`): each takes frames, answers from its storage and time, and returns the frames
//! to write and the effects to apply. The forwarder and the sink's stream handler are thin
//! drivers around them over QUIC; the simulation test drives them over a simulated network.
//!
//! The rules they keep (`docs/design`: delivery semantics):
//! - the agent records a batch as the sink's only on its `Ack`, which the sink sends only
//!   after the batch is durable in its journal;
//! - the agent confirms a seq to the sink only once its own record of the ack is durable;
//!   only confirmed seqs reach the sink's outputs;
//! - at `Resolve` the sink keeps what it holds beyond the agent's ack mark as its own, and
//!   the agent adopts it; what the agent delivered elsewhere the sink discards.

pub mod agent;
pub mod control;
pub mod sink;
