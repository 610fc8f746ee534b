//! What sources hand their records to. The stages after them (transforms, then the queue)
//! plug in behind [`Downstream`], so this crate imports neither.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use dataweaver_core::{Appended, Checkpoint, Counters, Record};

/// A boxed, sendable future: what a [`Downstream`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why records were not stored.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The queue is full under `block`: nothing was stored; retry later.
    #[error("{0}")]
    Full(String),
    /// Storage is failing or being reopened: the append may or may not be stored (a source
    /// re-reads its checkpoint before it resumes).
    #[error("{0}")]
    Unavailable(String),
    /// The agent is shutting down.
    #[error("queue is closed")]
    Closed,
    /// Anything else (a corrupt or unreadable queue).
    #[error("{0}")]
    Failed(String),
}

/// The stages after the sources: transform a batch, store it with its dead letters and
/// checkpoint in one transaction, and read checkpoints back.
pub trait Downstream: Send + Sync {
    /// Transforms `records` and stores the result, the records that failed and `rejected`
    /// ones (as dead letters) and `checkpoint` in one transaction; resolves when durable.
    /// With `hold`, transforms once and retries the store while the queue refuses, until
    /// `hold` is cancelled.
    fn emit<'a>(
        &'a self,
        records: Vec<Record>,
        rejected: Vec<(Record, String)>,
        checkpoint: Option<Checkpoint>,
        hold: Option<&'a CancellationToken>,
    ) -> BoxFuture<'a, Result<Appended, EmitError>>;
    /// Stores a checkpoint alone (an empty value deletes it).
    fn store_checkpoint(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), EmitError>>;
    /// The stored checkpoint `key`.
    fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>, EmitError>;
    /// Every stored checkpoint whose key starts with `prefix`.
    fn checkpoints(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EmitError>;
    /// The queue's size limit, in bytes (sources size their reads by it).
    fn max_bytes(&self) -> u64;
}

/// What sources hand their records to.
pub struct Pipeline {
    /// Pipeline name (default topic).
    pub name: String,
    /// The agent's counters.
    pub counters: Arc<Counters>,
    downstream: Box<dyn Downstream>,
}

impl Pipeline {
    /// A pipeline feeding `downstream`.
    pub fn new(
        name: impl Into<String>,
        counters: Arc<Counters>,
        downstream: impl Downstream + 'static,
    ) -> Arc<Self> {
        Arc::new(Pipeline {
            name: name.into(),
            counters,
            downstream: Box::new(downstream),
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
    ) -> Result<Appended, EmitError> {
        self.downstream
            .emit(records, rejected, checkpoint, None)
            .await
    }

    /// Like [`emit`](Self::emit), for sources that cannot hand a refusal back to their
    /// producer (tcp, udp, stdin): transforms once, then retries the append with back-off
    /// while the queue refuses (full under `block`, or storage failing), holding the records
    /// and so pausing the source. Gives up only at `shutdown`: the held records are then
    /// lost, as such a source's producer had no acknowledgement to wait for.
    pub async fn emit_until_accepted(
        &self,
        records: Vec<Record>,
        rejected: Vec<(Record, String)>,
        shutdown: &CancellationToken,
    ) -> Result<Appended, EmitError> {
        self.emit_held(records, rejected, None, shutdown).await
    }

    /// [`emit_until_accepted`](Self::emit_until_accepted) with a checkpoint stored in the
    /// same transaction (the MQTT source's QoS 2 state): transforms once, holds and retries.
    pub async fn emit_held(
        &self,
        records: Vec<Record>,
        rejected: Vec<(Record, String)>,
        checkpoint: Option<Checkpoint>,
        shutdown: &CancellationToken,
    ) -> Result<Appended, EmitError> {
        self.downstream
            .emit(records, rejected, checkpoint, Some(shutdown))
            .await
    }

    /// Stores a checkpoint alone (an empty value deletes it).
    pub async fn store_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), EmitError> {
        self.downstream.store_checkpoint(checkpoint).await
    }

    /// The stored checkpoint `key`.
    pub fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>, EmitError> {
        self.downstream.checkpoint(key)
    }

    /// Every stored checkpoint whose key starts with `prefix`.
    pub fn checkpoints(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EmitError> {
        self.downstream.checkpoints(prefix)
    }

    /// The queue's size limit, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.downstream.max_bytes()
    }
}
