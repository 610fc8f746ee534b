//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz): the decoders of outside
//! bytes that are private to their modules, reached without a file or a socket.
//!
//! Not part of the supported API: it exists so fuzzing does not widen the modules' own
//! interfaces. See `docs/fuzzing.md`.

use crate::queue::QueueError;
use crate::record::Record;

/// Decodes one stored queue chunk (`chunks` table value) whose first seq is `first`, as
/// the forwarder and `queue export` do.
pub fn queue_chunk(first: u64, value: &[u8]) -> Result<Vec<Record>, QueueError> {
    crate::queue::decode_chunk(first, value)
}

/// Walks one stored chunk as the forwarder does when it builds a batch from the stored
/// wire bytes (no decoding); returns how many bytes it would send.
pub fn queue_chunk_encoded(first: u64, value: &[u8]) -> Result<usize, QueueError> {
    crate::queue::encoded_len_of_chunk(first, value)
}

/// Decodes a pushed-module state checkpoint (`transform:<pipeline>` in the queue file) as
/// the agent's control plane does at start; `None` where it would fall back to the
/// configured module.
pub fn control_state(value: &[u8]) -> bool {
    crate::control::agent::decode_state(value).is_some()
}
