//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz): the decoders of outside
//! bytes that are private to their crates, reached without a file or a socket.
//!
//! Not part of the supported API: it exists so fuzzing does not widen the crates' own
//! interfaces. See `docs/fuzzing.md`.

pub use dataweaver_control::fuzzing::control_state;
pub use dataweaver_queue::fuzzing::{queue_chunk, queue_chunk_encoded};
