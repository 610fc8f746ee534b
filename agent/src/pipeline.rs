//! A pipeline ties sources to the transform chain and the queue.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::queue::{Appended, Checkpoint, DeadLetter, Queue, QueueError, WhenFull};
use crate::record::{Record, now_ns};
use crate::transform::Chain;

/// What sources hand their records to.
pub struct Pipeline {
    /// Pipeline name (default topic).
    pub name: String,
    when_full: WhenFull,
    chain: Mutex<Chain>,
    queue: Queue,
}

impl Pipeline {
    /// A pipeline writing into `queue`.
    pub fn new(
        name: impl Into<String>,
        when_full: WhenFull,
        chain: Chain,
        queue: Queue,
    ) -> Arc<Self> {
        Arc::new(Pipeline {
            name: name.into(),
            when_full,
            chain: Mutex::new(chain),
            queue,
        })
    }

    /// Transforms `records` and stores the result, the records that failed (as dead
    /// letters, with `rejected` ones from the source's codec) and `checkpoint` in one
    /// transaction; returns when durable. Only then may the source consider the input done.
    pub async fn emit(
        &self,
        records: Vec<Record>,
        rejected: Vec<(Record, String)>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Appended, QueueError> {
        let out = self.chain.lock().await.apply(records);
        let now = now_ns();
        let dead: Vec<DeadLetter> = rejected
            .into_iter()
            .chain(out.failed)
            .map(|(record, reason)| DeadLetter {
                ts_ns: now,
                pipeline: self.name.clone(),
                reason,
                record,
            })
            .collect();
        if !dead.is_empty() {
            tracing::warn!(pipeline = %self.name, count = dead.len(), first_reason = %dead[0].reason, "records dead-lettered");
        }
        self.queue
            .append_with(out.records, dead, checkpoint, self.when_full)
            .await
    }

    /// The queue, for sources that need to read their checkpoints.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }
}
