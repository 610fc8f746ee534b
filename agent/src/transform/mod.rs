//! The transform stage: where a pipeline's records are rewritten before they are queued.
//!
//! Today the chain is empty and records pass through unchanged. The WASM host (a later
//! issue) plugs in here: [`Chain::apply`] is called once per source batch, before the queue
//! append, so a batch boundary is also the only place a module swap can happen.

use crate::record::Record;

/// What a transform chain made of one input batch.
#[derive(Debug, Default)]
pub struct Output {
    /// Records to queue.
    pub records: Vec<Record>,
    /// Records that could not be processed, with the reason (for the dead-letter table).
    pub failed: Vec<(Record, String)>,
}

/// A pipeline's ordered transforms.
#[derive(Debug, Default)]
pub struct Chain {
    // Modules go here.
}

impl Chain {
    /// The pass-through chain.
    pub fn empty() -> Self {
        Chain {}
    }

    /// Runs one batch through every transform in order.
    pub fn apply(&mut self, records: Vec<Record>) -> Output {
        Output {
            records,
            failed: Vec::new(),
        }
    }
}
