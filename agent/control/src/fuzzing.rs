//! Entry points for the fuzz targets (`fuzz/`): the agent's decoder of a stored module
//! state, reached without a queue file. Not part of the supported API.

/// Decodes a pushed-module state checkpoint (`transform:<pipeline>` in the queue file) as
/// the agent's control plane does at start; `false` where it would fall back to the
/// configured module.
pub fn control_state(value: &[u8]) -> bool {
    crate::agent::decode_state(value).is_some()
}
