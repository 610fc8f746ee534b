//! Entry points for the fuzz targets (`fuzz/`): the chunk decoders, reached without a
//! file. Not part of the supported API.

use crate::QueueError;
use dataweaver_core::Record;

/// Decodes one stored chunk (`chunks` table value) whose first seq is `first`, as the
/// forwarder and `queue export` do.
pub fn queue_chunk(first: u64, value: &[u8]) -> Result<Vec<Record>, QueueError> {
    crate::decode_chunk(first, value)
}

/// Walks one stored chunk as the forwarder does when it builds a batch from the stored
/// wire bytes (no decoding); returns how many bytes it would send.
pub fn queue_chunk_encoded(first: u64, value: &[u8]) -> Result<usize, QueueError> {
    crate::encoded_len_of_chunk(first, value)
}
