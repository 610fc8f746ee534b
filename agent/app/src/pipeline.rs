//! The stages after a pipeline's sources: its transform chain, then the queue. Sources see
//! them as their [`Downstream`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use dataweaver_core::Counters;
use dataweaver_core::{Record, now_ns};
use dataweaver_queue::{Appended, Checkpoint, DeadLetter, Queue, QueueError, WhenFull};
use dataweaver_source::{BoxFuture, Downstream, EmitError};
use dataweaver_transform::Chain;

/// A pipeline's transform chain and the queue it stores into.
pub struct Stages {
    name: String,
    counters: Arc<Counters>,
    when_full: WhenFull,
    chain: Mutex<Chain>,
    queue: Queue,
}

/// A queue error as a source sees it.
fn emit_error(e: QueueError) -> EmitError {
    match e {
        QueueError::Full(_) => EmitError::Full(e.to_string()),
        QueueError::Unavailable { .. } => EmitError::Unavailable(e.to_string()),
        QueueError::Closed => EmitError::Closed,
        e => EmitError::Failed(e.to_string()),
    }
}

impl Downstream for Stages {
    fn emit<'a>(
        &'a self,
        records: Vec<Record>,
        rejected: Vec<(Record, String)>,
        checkpoint: Option<Checkpoint>,
        hold: Option<&'a CancellationToken>,
    ) -> BoxFuture<'a, Result<Appended, EmitError>> {
        Box::pin(async move {
            match hold {
                None => self.store(records, rejected, checkpoint).await,
                Some(shutdown) => {
                    self.store_held(records, rejected, checkpoint, shutdown)
                        .await
                }
            }
            .map_err(emit_error)
        })
    }

    fn store_checkpoint(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), EmitError>> {
        Box::pin(async move {
            self.queue
                .append(Vec::new(), Some(checkpoint))
                .await
                .map(|_| ())
                .map_err(emit_error)
        })
    }

    fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>, EmitError> {
        self.queue.checkpoint(key).map_err(emit_error)
    }

    fn checkpoints(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EmitError> {
        self.queue.checkpoints(prefix).map_err(emit_error)
    }

    fn max_bytes(&self) -> u64 {
        self.queue.max_bytes()
    }
}

impl Stages {
    /// The chain of pipeline `name`, storing into `queue`.
    pub fn new(
        name: impl Into<String>,
        when_full: WhenFull,
        chain: Chain,
        queue: Queue,
        counters: Arc<Counters>,
    ) -> Self {
        Stages {
            name: name.into(),
            counters,
            when_full,
            chain: Mutex::new(chain),
            queue,
        }
    }

    /// Transforms `records` and stores the result, the records that failed (as dead
    /// letters, with `rejected` ones from the source's codec) and `checkpoint` in one
    /// transaction; returns when durable.
    async fn store(
        &self,
        records: Vec<Record>,
        rejected: Vec<(Record, String)>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Appended, QueueError> {
        let out = self.transform(records).await;
        let dead = self.dead_letters(rejected, out.failed);
        let n_dead = dead.len();
        let r = self
            .queue
            .append_with(out.records, dead, checkpoint, self.when_full)
            .await;
        if let Ok(a) = &r {
            self.count_appended(a, n_dead);
        }
        r
    }

    fn count_appended(&self, a: &Appended, dead: usize) {
        let c = &self.counters;
        let name = &self.name;
        c.counter(&format!("{name}.queued"))
            .fetch_add(a.count as u64, Ordering::Relaxed);
        c.counter(&format!("{name}.dropped"))
            .fetch_add(a.dropped as u64, Ordering::Relaxed);
        c.counter(&format!("{name}.dead_lettered"))
            .fetch_add(dead as u64, Ordering::Relaxed);
    }

    /// [`store`](Self::store) for a source that holds its records while the queue refuses
    /// (see `Pipeline::emit_held`): transforms once, then retries the append with back-off
    /// until it is accepted or `shutdown`.
    async fn store_held(
        &self,
        records: Vec<Record>,
        rejected: Vec<(Record, String)>,
        mut checkpoint: Option<Checkpoint>,
        shutdown: &CancellationToken,
    ) -> Result<Appended, QueueError> {
        let out = self.transform(records).await;
        let mut dead = self.dead_letters(rejected, out.failed);
        let n_dead = dead.len();
        let mut records = out.records;
        let mut delay = Duration::from_millis(20);
        let mut warned = false;
        loop {
            match self
                .queue
                .append_with(records, dead, checkpoint.clone(), self.when_full)
                .await
            {
                Ok(a) => {
                    if warned {
                        tracing::info!(pipeline = %self.name, "queue accepts records again");
                    }
                    self.count_appended(&a, n_dead);
                    return Ok(a);
                }
                Err(e) => {
                    let reason = e.to_string();
                    let Some(back) = e.into_refused() else {
                        return Err(QueueError::unavailable(reason));
                    };
                    if !warned {
                        tracing::warn!(pipeline = %self.name, %reason, "queue refuses records; holding them and pausing the source");
                        warned = true;
                    }
                    (records, dead, checkpoint) = (back.records, back.dead, back.checkpoint);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(QueueError::Closed),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs the chain; WASM runs on this worker thread, flagged as blocking so the
    /// runtime moves other tasks away meanwhile.
    async fn transform(&self, records: Vec<Record>) -> dataweaver_transform::Output {
        self.count_in(&records);
        let mut chain = self.chain.lock().await;
        if chain.is_empty() {
            return chain.apply(records);
        }
        let multi = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        if multi {
            tokio::task::block_in_place(|| chain.apply(records))
        } else {
            chain.apply(records)
        }
    }

    /// Records in, per pipeline and per source (`{pipeline}/{source}` is a record's
    /// `source`); a batch normally comes from one source, so counted by runs.
    fn count_in(&self, records: &[Record]) {
        let c = &self.counters;
        c.counter(&format!("{}.records_in", self.name))
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut rest = records;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .position(|r| r.source != first.source)
                .unwrap_or(rest.len());
            c.counter(&format!("{}.records_in", first.source))
                .fetch_add(run as u64, Ordering::Relaxed);
            rest = &rest[run..];
        }
    }

    fn dead_letters(
        &self,
        rejected: Vec<(Record, String)>,
        failed: Vec<(Record, String)>,
    ) -> Vec<DeadLetter> {
        let now = now_ns();
        let dead: Vec<DeadLetter> = rejected
            .into_iter()
            .chain(failed)
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
        dead
    }
}
