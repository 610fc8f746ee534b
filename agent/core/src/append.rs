//! What a source hands over with its records, and what it gets back: the contract between
//! sources and the queue, here so that neither crate imports the other.

/// A source's position, stored atomically with the records it produced.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Unique key of the position (e.g. `file:<source>:<dev>:<inode>`).
    pub key: String,
    /// The encoded position; empty deletes the checkpoint.
    pub value: Vec<u8>,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Seq of the first record (the next free seq if the append stored no records).
    pub first_seq: u64,
    /// How many records were stored.
    pub count: usize,
    /// How many were dropped under `drop_newest`.
    pub dropped: usize,
}
