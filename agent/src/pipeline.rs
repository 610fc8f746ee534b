//! A pipeline ties sources to the transform chain and the queue.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::queue::{Appended, Checkpoint, Queue, QueueError};
use crate::record::Record;
use crate::transform::Chain;

/// What sources hand their records to.
pub struct Pipeline {
    /// Pipeline name (default topic).
    pub name: String,
    chain: Mutex<Chain>,
    queue: Queue,
}

impl Pipeline {
    /// A pipeline writing into `queue`.
    pub fn new(name: impl Into<String>, chain: Chain, queue: Queue) -> Arc<Self> {
        Arc::new(Pipeline {
            name: name.into(),
            chain: Mutex::new(chain),
            queue,
        })
    }

    /// Transforms `records` and stores the result together with `checkpoint`; returns when
    /// durable. Only then may the source consider the input done.
    pub async fn emit(
        &self,
        records: Vec<Record>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Appended, QueueError> {
        let out = self.chain.lock().await.apply(records);
        if !out.failed.is_empty() {
            tracing::warn!(pipeline = %self.name, failed = out.failed.len(), "records failed in transforms");
        }
        self.queue.append(out.records, checkpoint).await
    }

    /// The queue, for sources that need to read their checkpoints.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }
}
