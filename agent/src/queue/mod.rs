//! The durable queue: every record is committed to redb (with fsync) before any source is
//! told "done", and deleted only after the sink acknowledged it.
//!
//! # Design constraints
//! - **One writer.** redb allows one write transaction at a time, so a single writer thread
//!   owns all writes. Appends from every source queue up while a commit is syncing and go
//!   into the next one together (group commit), bounded by `commit_max_records` and
//!   `commit_max_bytes`; durability costs one fsync per commit, not per record.
//! - **Checkpoints ride with their records.** An append may carry a source checkpoint (e.g.
//!   a file offset); it is written in the same transaction as the records, so after a crash
//!   the source resumes exactly after what was committed: nothing lost, nothing repeated.
//! - **Seqs.** The writer assigns seqs, per agent, starting at 1, never reused within a
//!   queue file. A new queue file gets a new random `queue_id`, which the sink uses with the
//!   agent id as its de-duplication key, so a fresh queue never collides with old seqs.
//! - **Chunks.** Records are stored in chunks of consecutive seqs (key = first seq) so a
//!   commit is a handful of B-tree inserts, not one per record. A chunk is deleted once its
//!   last seq is acknowledged; a partly acknowledged chunk stays until then, and the
//!   forwarder skips the seqs it no longer needs.
//! - **Acks are cheap.** Deletions ride along with the next commit; an ack-only commit is
//!   not synced (losing it only means resending records the sink will de-duplicate).
//!
//! # On-disk layout (format version 1; do not change without bumping [`FORMAT_VERSION`])
//! - table `chunks`: `u64` first seq → `[version: u8 = 1][count: u32 LE][CBOR array of Record]`
//! - table `meta`: `format_version` (u64 LE), `queue_id` (UTF-8), `next_seq` (u64 LE)
//! - table `checkpoints`: source key → source-defined bytes

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::QueueConfig;
use crate::record::Record;

/// On-disk format version written to the `meta` table.
pub const FORMAT_VERSION: u64 = 1;
const CHUNK_VERSION: u8 = 1;
/// Most records in one chunk: about one forward batch, so the forwarder rarely decodes a
/// chunk only to use part of it.
const CHUNK_MAX_RECORDS: usize = 1024;
const CHUNK_MAX_BYTES: usize = 1 << 20;

const CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("chunks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

/// File name of the queue inside the agent's data directory.
pub const FILE_NAME: &str = "queue.redb";

/// Queue errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// redb failed (I/O, full disk, corruption).
    #[error("queue storage: {0}")]
    Storage(#[from] redb::Error),
    /// The file was written by an incompatible version.
    #[error("queue format version {found} is not supported (expected {FORMAT_VERSION})")]
    Format {
        /// The version found in the file.
        found: u64,
    },
    /// A stored chunk could not be decoded.
    #[error("corrupt chunk at seq {seq}: {message}")]
    Corrupt {
        /// First seq of the chunk.
        seq: u64,
        /// Decoder message.
        message: String,
    },
    /// The writer has stopped (agent shutting down).
    #[error("queue is closed")]
    Closed,
    /// The data directory could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn db<E: Into<redb::Error>>(e: E) -> QueueError {
    QueueError::Storage(e.into())
}

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
    /// Seq of the first record (the next free seq if the append had no records).
    pub first_seq: u64,
    /// How many records were stored.
    pub count: usize,
}

enum Command {
    Append {
        records: Vec<Record>,
        checkpoint: Option<Checkpoint>,
        done: oneshot::Sender<Result<Appended, QueueError>>,
    },
    /// Acks are published through `Shared::acked`; this only wakes an idle writer.
    Wake,
    Shutdown,
}

struct Shared {
    db: Database,
    queue_id: String,
    /// Highest seq the sink has acknowledged (everything at or below may be deleted).
    acked: AtomicU64,
    /// Last committed seq, for readers waiting for data.
    committed: watch::Sender<u64>,
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Counters for `status` and the bench.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Records stored and not yet acknowledged.
    pub depth: u64,
    /// Chunks in the table.
    pub chunks: u64,
    /// Next seq to assign.
    pub next_seq: u64,
}

impl Queue {
    /// Opens (or creates) the queue in `dir` and starts its writer thread.
    pub fn open(dir: &Path, cfg: &QueueConfig) -> Result<Queue, QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Io {
            path: dir.into(),
            source,
        })?;
        let db = Database::builder()
            // redb's default cache is 1 GiB; the queue is written once and read once, so a
            // small cache keeps the agent's RSS low without costing throughput.
            .set_cache_size(2 << 20)
            .create(dir.join(FILE_NAME))
            .map_err(db)?;
        let (queue_id, next_seq, first_chunk) = init_meta(&db)?;
        let acked = first_chunk.unwrap_or(next_seq).saturating_sub(1);
        let (committed, _) = watch::channel(next_seq - 1);
        let shared = Arc::new(Shared {
            db,
            queue_id,
            acked: AtomicU64::new(acked),
            committed,
        });
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer {
            shared: shared.clone(),
            rx,
            next_seq,
            deleted_upto: acked,
            max_records: cfg.commit_max_records,
            max_bytes: cfg.commit_max_bytes,
            linger: Duration::from_millis(cfg.commit_linger_ms),
        };
        let handle = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| QueueError::Io {
                path: dir.into(),
                source,
            })?;
        Ok(Queue {
            shared,
            tx,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// The random id of this queue file.
    pub fn queue_id(&self) -> &str {
        &self.shared.queue_id
    }

    /// Stores `records` (and `checkpoint`, in the same transaction); returns once durable.
    pub async fn append(
        &self,
        records: Vec<Record>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Appended, QueueError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                records,
                checkpoint,
                done,
            })
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Marks everything up to `seq` as delivered; it is deleted with the next commit.
    pub fn ack(&self, seq: u64) {
        if self.shared.acked.fetch_max(seq, Ordering::AcqRel) < seq {
            // A full channel means the writer is busy and will see the new ack anyway.
            let _ = self.tx.try_send(Command::Wake);
        }
    }

    /// Highest acknowledged seq.
    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::Acquire)
    }

    /// Watches the last committed seq.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    /// Reads records with seq ≥ `from`, up to the limits (at least one record if any).
    /// Blocking: call from `spawn_blocking`.
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Record)>, QueueError> {
        let txn = self.shared.db.begin_read().map_err(db)?;
        let table = txn.open_table(CHUNKS).map_err(db)?;
        // The chunk holding `from` may start before it.
        let start = match table.range(..=from).map_err(db)?.next_back() {
            Some(entry) => entry.map_err(db)?.0.value(),
            None => from,
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in table.range(start..).map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            let first = k.value();
            let (count, body) = chunk_header(first, v.value())?;
            if first + count as u64 <= from {
                continue;
            }
            let records: Vec<Record> =
                ciborium::from_reader(body).map_err(|e| QueueError::Corrupt {
                    seq: first,
                    message: e.to_string(),
                })?;
            for (i, r) in records.into_iter().enumerate() {
                let seq = first + i as u64;
                if seq < from {
                    continue;
                }
                bytes += r.approx_size();
                out.push((seq, r));
                if out.len() >= max_records || bytes >= max_bytes {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// A stored source checkpoint. Blocking (a read transaction).
    pub fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let txn = self.shared.db.begin_read().map_err(db)?;
        let table = txn.open_table(CHECKPOINTS).map_err(db)?;
        Ok(table.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// All stored checkpoints whose key starts with `prefix`. Blocking.
    pub fn checkpoints(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
        let txn = self.shared.db.begin_read().map_err(db)?;
        let table = txn.open_table(CHECKPOINTS).map_err(db)?;
        let mut out = Vec::new();
        for e in table.range(prefix..).map_err(db)? {
            let (k, v) = e.map_err(db)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Depth and counters. Blocking.
    pub fn stats(&self) -> Result<Stats, QueueError> {
        let txn = self.shared.db.begin_read().map_err(db)?;
        let chunks = txn.open_table(CHUNKS).map_err(db)?;
        let next_seq = *self.shared.committed.borrow() + 1;
        let first = match chunks.first().map_err(db)? {
            Some((k, _)) => k.value(),
            None => next_seq,
        };
        let first = first.max(self.acked() + 1);
        Ok(Stats {
            depth: next_seq.saturating_sub(first),
            chunks: chunks.len().map_err(db)?,
            next_seq,
        })
    }

    /// Stops the writer after it has committed everything already appended.
    pub async fn close(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

fn chunk_header(first: u64, v: &[u8]) -> Result<(u32, &[u8]), QueueError> {
    if v.len() < 5 || v[0] != CHUNK_VERSION {
        return Err(QueueError::Corrupt {
            seq: first,
            message: "bad chunk header".into(),
        });
    }
    let count = u32::from_le_bytes([v[1], v[2], v[3], v[4]]);
    Ok((count, &v[5..]))
}

/// Creates the tables on a new file; returns (queue_id, next_seq, first chunk key).
fn init_meta(db: &Database) -> Result<(String, u64, Option<u64>), QueueError> {
    let txn = db.begin_write().map_err(db_err)?;
    let out;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let version = meta
            .get("format_version")
            .map_err(db_err)?
            .map(|v| le_u64(v.value()));
        match version {
            None => {
                meta.insert("format_version", &FORMAT_VERSION.to_le_bytes()[..])
                    .map_err(db_err)?;
            }
            Some(v) if v == FORMAT_VERSION => {}
            Some(found) => return Err(QueueError::Format { found }),
        }
        let stored = meta
            .get("queue_id")
            .map_err(db_err)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        let queue_id = match stored {
            Some(id) => id,
            None => {
                let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
                meta.insert("queue_id", id.as_bytes()).map_err(db_err)?;
                id
            }
        };
        let next_seq = meta
            .get("next_seq")
            .map_err(db_err)?
            .map_or(1, |v| le_u64(v.value()));
        let chunks = txn.open_table(CHUNKS).map_err(db_err)?;
        let first = chunks.first().map_err(db_err)?.map(|(k, _)| k.value());
        txn.open_table(CHECKPOINTS).map_err(db_err)?;
        out = (queue_id, next_seq, first);
    }
    txn.commit().map_err(db_err)?;
    Ok(out)
}

fn db_err<E: Into<redb::Error>>(e: E) -> QueueError {
    db(e)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

struct Pending {
    records: Vec<Record>,
    checkpoint: Option<Checkpoint>,
    done: oneshot::Sender<Result<Appended, QueueError>>,
}

struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    next_seq: u64,
    deleted_upto: u64,
    max_records: usize,
    max_bytes: usize,
    linger: Duration,
}

impl Writer {
    fn run(mut self) {
        let mut stop = false;
        while !stop {
            let Some(first) = self.rx.blocking_recv() else {
                break;
            };
            let mut batch = Vec::new();
            let (mut n, mut bytes) = (0usize, 0usize);
            stop |= self.take(first, &mut batch, &mut n, &mut bytes);
            // Gather what queued up while the previous commit was syncing.
            let mut lingered = self.linger.is_zero();
            while !stop && n < self.max_records && bytes < self.max_bytes {
                match self.rx.try_recv() {
                    Ok(cmd) => stop |= self.take(cmd, &mut batch, &mut n, &mut bytes),
                    Err(_) if !lingered => {
                        std::thread::sleep(self.linger);
                        lingered = true;
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        tracing::debug!("queue writer stopped");
    }

    /// Adds a command to the batch; true on shutdown.
    fn take(
        &self,
        cmd: Command,
        batch: &mut Vec<Pending>,
        n: &mut usize,
        bytes: &mut usize,
    ) -> bool {
        match cmd {
            Command::Append {
                records,
                checkpoint,
                done,
            } => {
                *n += records.len();
                *bytes += records.iter().map(Record::approx_size).sum::<usize>();
                batch.push(Pending {
                    records,
                    checkpoint,
                    done,
                });
                false
            }
            Command::Wake => false,
            Command::Shutdown => true,
        }
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        let acked = self.shared.acked.load(Ordering::Acquire);
        if batch.is_empty() && acked <= self.deleted_upto {
            return;
        }
        let start_seq = self.next_seq;
        match self.write(&batch, acked) {
            Ok(()) => {
                self.deleted_upto = self.deleted_upto.max(acked);
                let total: usize = batch.iter().map(|p| p.records.len()).sum();
                self.next_seq = start_seq + total as u64;
                if total > 0 {
                    self.shared.committed.send_replace(self.next_seq - 1);
                }
                let mut seq = start_seq;
                for p in batch {
                    let count = p.records.len();
                    let _ = p.done.send(Ok(Appended {
                        first_seq: seq,
                        count,
                    }));
                    seq += count as u64;
                }
            }
            Err(e) => {
                // After a failed commit the data may or may not be durable (redb's
                // contract); the sources did not get an ok, so they retry, and the seqs
                // are never reused: the worst case is a duplicate, never a loss.
                tracing::error!(error = %e, "queue commit failed");
                let msg = e.to_string();
                let total: usize = batch.iter().map(|p| p.records.len()).sum();
                self.next_seq += total as u64;
                for p in batch {
                    let _ = p.done.send(Err(QueueError::Corrupt {
                        seq: 0,
                        message: format!("commit failed: {msg}"),
                    }));
                }
            }
        }
    }

    fn write(&self, batch: &[Pending], acked: u64) -> Result<(), QueueError> {
        let mut txn = self.shared.db.begin_write().map_err(db)?;
        let has_records = batch
            .iter()
            .any(|p| !p.records.is_empty() || p.checkpoint.is_some());
        if !has_records {
            // Only deletions: not worth an fsync (a lost delete means a resend the sink drops).
            txn.set_durability(redb::Durability::None)
                .map_err(|e| QueueError::Corrupt {
                    seq: 0,
                    message: e.to_string(),
                })?;
        }
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(db)?;
            let mut seq = self.next_seq;
            let mut chunk: Vec<&Record> = Vec::new();
            let mut chunk_bytes = 0;
            let mut buf = Vec::new();
            for r in batch.iter().flat_map(|p| &p.records) {
                chunk_bytes += r.approx_size();
                chunk.push(r);
                if chunk.len() >= CHUNK_MAX_RECORDS || chunk_bytes >= CHUNK_MAX_BYTES {
                    put_chunk(&mut chunks, seq, &chunk, &mut buf)?;
                    seq += chunk.len() as u64;
                    chunk.clear();
                    chunk_bytes = 0;
                }
            }
            if !chunk.is_empty() {
                put_chunk(&mut chunks, seq, &chunk, &mut buf)?;
                seq += chunk.len() as u64;
            }
            if acked > self.deleted_upto {
                chunks
                    .retain_in(..=acked, |first, v| {
                        let count = if v.len() >= 5 {
                            u32::from_le_bytes([v[1], v[2], v[3], v[4]])
                        } else {
                            0
                        };
                        first + count as u64 - 1 > acked && count > 0
                    })
                    .map_err(db)?;
            }
            let mut meta = txn.open_table(META).map_err(db)?;
            if seq != self.next_seq {
                meta.insert("next_seq", &seq.to_le_bytes()[..])
                    .map_err(db)?;
            }
            let mut cps = txn.open_table(CHECKPOINTS).map_err(db)?;
            for cp in batch.iter().filter_map(|p| p.checkpoint.as_ref()) {
                if cp.value.is_empty() {
                    cps.remove(cp.key.as_str()).map_err(db)?;
                } else {
                    cps.insert(cp.key.as_str(), cp.value.as_slice())
                        .map_err(db)?;
                }
            }
        }
        txn.commit().map_err(db)?;
        Ok(())
    }
}

fn put_chunk(
    table: &mut redb::Table<u64, &[u8]>,
    first: u64,
    records: &[&Record],
    buf: &mut Vec<u8>,
) -> Result<(), QueueError> {
    buf.clear();
    buf.push(CHUNK_VERSION);
    buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
    ciborium::into_writer(&records, &mut *buf).map_err(|e| QueueError::Corrupt {
        seq: first,
        message: e.to_string(),
    })?;
    table.insert(first, buf.as_slice()).map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Record {
        Record::new("t/s", "t", format!("line {i}").into_bytes())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_read_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = QueueConfig::default();
        let q = Queue::open(dir.path(), &cfg).unwrap();
        let id = q.queue_id().to_string();
        let a = q
            .append(
                (0..3000).map(rec).collect(),
                Some(Checkpoint {
                    key: "k".into(),
                    value: vec![7],
                }),
            )
            .await
            .unwrap();
        assert_eq!(
            a,
            Appended {
                first_seq: 1,
                count: 3000
            }
        );
        let got = q.read(1500, 10_000, usize::MAX).unwrap();
        assert_eq!(got.len(), 1501);
        assert_eq!(got[0].0, 1500);
        assert_eq!(got[0].1.payload, b"line 1499");
        q.ack(2048);
        // The ack is applied with the next commit.
        q.append(vec![rec(3000)], None).await.unwrap();
        let st = q.stats().unwrap();
        assert_eq!(st.depth, 3001 - 2048);
        q.close().await;
        drop(q);
        let q = Queue::open(dir.path(), &cfg).unwrap();
        assert_eq!(q.queue_id(), id, "queue id survives reopen");
        assert_eq!(q.checkpoint("k").unwrap(), Some(vec![7]));
        let first = q.read(0, 1, usize::MAX).unwrap();
        // Chunk [1..=1024] and [1025..=2048] were fully acked and deleted; 2049.. remain.
        assert_eq!(first[0].0, 2049);
        let b = q.append(vec![rec(1)], None).await.unwrap();
        assert_eq!(b.first_seq, 3002, "seqs continue after reopen");
        q.close().await;
    }
}
