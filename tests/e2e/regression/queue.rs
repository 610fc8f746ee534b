//! Queue file: corruption, checksums, checkpoints (issue 12: 6, 10, 11).
