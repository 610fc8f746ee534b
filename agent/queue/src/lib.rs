//! The durable queue: every record is committed to redb (with fsync) before any source is
//! told "done", and deleted only after the sink acknowledged it.
//!
//! # Design constraints
//! - **One writer.** redb allows one write transaction at a time, so a single writer thread
//!   (`writer.rs`) owns all writes. Appends from every source queue up while a commit is
//!   syncing and go into the next one together (group commit), bounded by
//!   `commit_max_records` and `commit_max_bytes`; durability costs one fsync per commit.
//! - **Checkpoints ride with their records.** An append may carry a source checkpoint (e.g.
//!   a file offset); it is written in the same transaction as the records, so after a crash
//!   the source resumes exactly after what was committed: nothing lost, nothing repeated.
//! - **Seqs.** The writer assigns seqs, per agent, starting at 1, never reused within a
//!   queue file. A new queue file gets a new random `queue_id`, which the sink uses with the
//!   agent id as its de-duplication key, so a fresh queue never collides with old seqs.
//! - **Chunks.** Records are stored in chunks of consecutive seqs (key = first seq) so a
//!   commit is a handful of B-tree inserts, not one per record. A chunk is deleted once its
//!   last seq is acknowledged; the forwarder skips seqs it no longer needs.
//! - **Bounded.** `max_bytes` caps the stored chunks. A full queue applies the appending
//!   pipeline's [`WhenFull`] policy: refuse (the source keeps the data and retries), drop the
//!   new records, or drop the oldest unsent chunks; drops are counted in the file.
//! - **Storage failures are not fatal.** A failed write (full disk, I/O error) latches redb
//!   into an error state; the writer refuses appends with [`QueueError::Unavailable`], closes
//!   and reopens the file with back-off, and carries on. A commit either happened or not,
//!   so a source that was refused retries and loses nothing.
//! - **Corrupt file at start.** Any failure or panic of redb while opening it (see
//!   `salvage.rs`) sets it aside (`queue.redb.corrupt-<unix time>`, 0600), logged loudly and
//!   counted (`set_aside`); a fresh queue starts: an agent must not crash-loop on a bad file.
//!   Its records stay in the set-aside file for `queue export --file`.
//! - **Checkpoints outlive a corrupt file.** The fresh queue takes the checkpoints still
//!   readable in the set-aside file (committed with their records, so they are exact); what
//!   cannot be read comes from a side copy (`queue-checkpoints.cbor`) that a thread of its
//!   own rewrites atomically at most once a second (the writer only updates a map in memory,
//!   once per commit that moved a checkpoint). The queue's own table always
//!   wins while the file is sound; the side copy is read only after a file was set aside, and
//!   its lag (≤ 1 s) can only repeat lines, never skip them.
//! - **Checksums.** Each chunk carries a CRC-32 of its bytes, verified on every read (one
//!   checksum per chunk, not per record). A chunk that fails it is never sent: its records go
//!   to the dead-letter table with the reason (or, if they no longer decode, are counted as
//!   lost in `corrupt_dropped`).
//! - **`drop_newest` keeps a contiguous prefix.** An append keeps the records that fit and
//!   drops the rest; from then on `drop_newest` appends are dropped whole until the queue is
//!   below [`LOW_WATER_PERCENT`] of its limit, so what is kept has no holes.
//!
//! # On-disk layout (format version 3; do not change without bumping [`FORMAT_VERSION`])
//! - `chunks`: `u64` first seq → `[version: u8 = 3][count: u32 LE][crc32: u32 LE][records in
//!   the wire encoding]`, the CRC-32 (IEEE) over every byte but its own four (see `chunk.rs`:
//!   the forwarder sends these bytes as they are stored). Files of format 1 (chunks
//!   `[1][count][CBOR]`, no checksum) and 2 (chunks `[2][count][crc][CBOR array of Record]`)
//!   are upgraded when opened: their chunks keep being read as they are, new ones are
//!   written in version 3.
//! - `meta`: `format_version`, `next_seq`, `next_dead`, `dropped_newest`, `dropped_oldest`,
//!   `corrupt_dropped`, `corrupt_dead`, `set_aside`, `owner:<sink id>` (u64 LE each),
//!   `queue_id` (UTF-8)
//! - `checkpoints`: source key → source-defined bytes
//! - `dead_letters`: `u64` id → CBOR [`DeadLetter`]

#![warn(missing_docs, unreachable_pub)]

pub(crate) mod chunk;
mod config;
#[doc(hidden)]
pub mod fuzzing;
mod offline;
mod salvage;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

pub use config::{QueueConfig, WhenFull};
use dataweaver_core::Record;
pub use dataweaver_core::{Appended, Checkpoint};
use dataweaver_store::{Medium, StoreError};

pub use offline::{CheckReport, ExportReport, check, export, offline_stats};
pub use salvage::{MIRROR_NAME, set_aside};

/// On-disk format version written to the `meta` table.
pub const FORMAT_VERSION: u64 = 3;
/// The oldest format version this build reads (and upgrades).
const OLDEST_FORMAT: u64 = 1;

/// Once `drop_newest` has dropped records, it keeps dropping until the queue is below this
/// share of its limit, so the records kept are one run without holes.
pub const LOW_WATER_PERCENT: u64 = 90;

const CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("chunks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");

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
    /// redb panicked on the file's content (see `salvage.rs`): it cannot be used.
    #[error("queue file is unreadable: {0}")]
    Unreadable(String),
    /// The queue is at `max_bytes` and the pipeline's policy is `block`: nothing was
    /// stored, and the append comes back whole so the caller can retry it.
    #[error("queue is full ({} records refused)", .0.records.len())]
    Full(Box<Refused>),
    /// Storage is failing (full disk, I/O error) or being reopened: nothing was stored; the
    /// append (if this was one) comes back whole. Retry later.
    #[error("queue unavailable: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
        /// The refused append; empty for reads.
        refused: Box<Refused>,
    },
    /// The writer has stopped (agent shutting down).
    #[error("queue is closed")]
    Closed,
    /// The data directory could not be used.
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

impl From<StoreError> for QueueError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Storage(e) => QueueError::Storage(e),
            StoreError::Io { path, source } => QueueError::Io { path, source },
            StoreError::Reopening => QueueError::unavailable("queue file is being reopened"),
            other => QueueError::unavailable(other.to_string()),
        }
    }
}

/// A record that could not be processed, kept with the reason. CBOR; do not reorder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was dead-lettered (ns since the epoch).
    pub ts_ns: u64,
    /// The pipeline it came through.
    pub pipeline: String,
    /// Why it could not be processed.
    pub reason: String,
    /// The record as it was.
    pub record: Record,
}

/// An append handed back by a refusing queue.
#[derive(Debug, Default)]
pub struct Refused {
    /// The records.
    pub records: Vec<Record>,
    /// The dead letters.
    pub dead: Vec<DeadLetter>,
    /// The checkpoint.
    pub checkpoint: Option<Checkpoint>,
}

impl QueueError {
    /// An `Unavailable` error that carries no append.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        QueueError::Unavailable {
            reason: reason.into(),
            refused: Box::default(),
        }
    }

    /// The refused append, if the queue handed one back.
    pub fn into_refused(self) -> Option<Refused> {
        match self {
            QueueError::Full(r) | QueueError::Unavailable { refused: r, .. } => Some(*r),
            _ => None,
        }
    }
}

/// One append as the writer sees it.
pub(crate) struct Append {
    pub records: Vec<Record>,
    pub dead: Vec<DeadLetter>,
    pub checkpoint: Option<Checkpoint>,
    pub when_full: WhenFull,
    pub done: oneshot::Sender<Reply>,
}

/// The answer to an append, with the records it stored: the appender drops them on its own
/// thread, usually the one that allocated them. Freed on the writer's thread, they left glibc's heaps
/// holding about 6 MiB more at the agent's peak (e2e bench).
pub(crate) type Reply = (Result<Appended, QueueError>, Vec<Record>);

impl Append {
    /// The data part, to hand back on refusal.
    pub(crate) fn into_refused(self) -> Refused {
        Refused {
            records: self.records,
            dead: self.dead,
            checkpoint: self.checkpoint,
        }
    }
}

pub(crate) enum Command {
    Append(Append),
    /// Take a bad chunk out of the queue (see [`Queue::drop_corrupt_chunk`]).
    Quarantine {
        first: u64,
        done: oneshot::Sender<Result<u64, QueueError>>,
    },
    /// Acks are published through `Shared::acked`; this only wakes an idle writer.
    Wake,
    Shutdown,
}

pub(crate) struct Shared {
    /// The queue file, reopened by the writer after a storage failure.
    slot: dataweaver_store::Slot,
    queue_id: RwLock<String>,
    max_bytes: u64,
    /// Highest seq the sink has acknowledged (everything at or below may be deleted).
    acked: AtomicU64,
    /// Last committed seq, for readers waiting for data.
    committed: watch::Sender<u64>,
    /// Per sink id, the highest seq it acknowledged (persisted with the deletions).
    owners: Mutex<HashMap<String, u64>>,
    /// The ack mark as of the last durable commit: seqs up to it are durably recorded as
    /// delivered, with their owners.
    durable_acked: watch::Sender<u64>,
    /// The last commit refused or dropped records for lack of room.
    full: std::sync::atomic::AtomicBool,
    /// Bytes of stored chunks as of the last commit, kept by the writer: what `stats`
    /// reports without reading every chunk.
    bytes: AtomicU64,
}

impl Shared {
    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, QueueError>,
    ) -> Result<R, QueueError> {
        self.slot.read(f)
    }
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// What `queue stats` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Records stored and not yet acknowledged.
    pub depth: u64,
    /// Bytes of stored chunks.
    pub bytes: u64,
    /// Chunks in the table.
    pub chunks: u64,
    /// Next seq to assign.
    pub next_seq: u64,
    /// Timestamp of the oldest queued record.
    pub oldest_ts_ns: Option<u64>,
    /// Records in the dead-letter table.
    pub dead_letters: u64,
    /// Records dropped by `drop_newest` since the queue was created.
    pub dropped_newest: u64,
    /// Records dropped by `drop_oldest` since the queue was created.
    pub dropped_oldest: u64,
    /// Records lost in chunks that no longer decoded (dropped so delivery could go on).
    pub corrupt_dropped: u64,
    /// Records of chunks that failed their checksum, moved to the dead-letter table.
    pub corrupt_dead: u64,
    /// Corrupt queue files set aside before this one started (0 or 1: counted in the
    /// fresh file).
    pub set_aside: u64,
    /// The queue's id.
    pub queue_id: String,
}

/// State read from the file when it is opened.
pub(crate) struct Loaded {
    pub queue_id: String,
    pub next_seq: u64,
    pub first_chunk: Option<u64>,
    /// The ack mark of the last deletion (acked records of a chunk not yet wholly acked
    /// are still stored).
    pub acked: u64,
    pub bytes: u64,
    pub next_dead: u64,
    pub dropped_newest: u64,
    pub dropped_oldest: u64,
    /// The stored source checkpoints, for the side copy.
    pub checkpoints: BTreeMap<String, Vec<u8>>,
}

impl Queue {
    /// Opens (or creates) the queue in `dir` and starts its writer thread. A file that is
    /// corrupt is moved aside and replaced by a fresh queue.
    pub fn open(dir: &Path, cfg: &QueueConfig) -> Result<Queue, QueueError> {
        dataweaver_store::fsmode::data_dir(dir).map_err(|source| QueueError::Io {
            path: dir.into(),
            source,
        })?;
        Queue::open_on(
            Medium::File(dir.join(FILE_NAME)),
            Some(&dir.join(MIRROR_NAME)),
            cfg,
        )
    }

    /// Opens (or creates) the queue on `medium`, with its checkpoints' side copy at
    /// `mirror` (none without), and starts its writer thread. A corrupt file is moved aside
    /// and replaced by a fresh queue; a corrupt simulated disk is an error.
    pub fn open_on(
        medium: Medium,
        mirror: Option<&Path>,
        cfg: &QueueConfig,
    ) -> Result<Queue, QueueError> {
        let mirror = mirror.map(Path::to_path_buf);
        let (database, loaded) = match (open_file(&medium), medium.path()) {
            (Ok(ok), _) => ok,
            (Err(e), Some(path)) if is_corruption(&e) => {
                let aside = set_aside(path)?;
                let side = mirror
                    .clone()
                    .unwrap_or_else(|| path.with_file_name(MIRROR_NAME));
                let (cps, from) = salvage::recover_checkpoints(&aside, &side);
                tracing::error!(
                    error = %e,
                    moved_to = %aside.display(),
                    checkpoints = cps.len(),
                    checkpoints_from = %from,
                    "QUEUE FILE IS CORRUPT: moved it aside and starting with an empty queue; \
                     its undelivered records were not sent (salvage them with \
                     `dataweaver queue export --file {}`)",
                    aside.display()
                );
                let (d, mut loaded) = open_file(&medium)?;
                seed_fresh(&d, &cps)?;
                loaded.checkpoints = cps;
                (d, loaded)
            }
            (Err(e), _) => return Err(e),
        };
        let acked = loaded
            .first_chunk
            .unwrap_or(loaded.next_seq)
            .saturating_sub(1)
            .max(loaded.acked)
            .min(loaded.next_seq.saturating_sub(1));
        let (committed, _) = watch::channel(loaded.next_seq.saturating_sub(1));
        let shared = Arc::new(Shared {
            slot: dataweaver_store::Slot::new(medium, database),
            queue_id: RwLock::new(loaded.queue_id.clone()),
            max_bytes: cfg.max_bytes,
            acked: AtomicU64::new(acked),
            committed,
            owners: Mutex::new(HashMap::new()),
            durable_acked: watch::channel(acked).0,
            full: Default::default(),
            bytes: AtomicU64::new(loaded.bytes),
        });
        let (tx, rx) = mpsc::channel(1024);
        let w = writer::Writer::new(shared.clone(), cfg, loaded, acked, mirror);
        let handle = std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|source| QueueError::Io {
                path: PathBuf::from("queue-writer thread"),
                source,
            })?;
        Ok(Queue {
            shared,
            tx,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// The random id of this queue file.
    pub fn queue_id(&self) -> String {
        self.shared
            .queue_id
            .read()
            .map(|id| id.clone())
            .unwrap_or_default()
    }

    /// Gives the queue a new random id, so a sink treats every seq as new. For when a sink
    /// knows this id with a high-water mark above anything committed here (the file was
    /// cloned to another machine, or restored from a snapshot): without a new id, the
    /// records from here up to that mark would be taken for duplicates and lost. Blocking.
    pub fn new_identity(&self) -> Result<String, QueueError> {
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        self.shared.with_db(|d| {
            let txn = d.begin_write().map_err(db)?;
            txn.open_table(META)
                .map_err(db)?
                .insert("queue_id", id.as_bytes())
                .map_err(db)?;
            txn.commit().map_err(db)
        })?;
        if let Ok(mut g) = self.shared.queue_id.write() {
            g.clone_from(&id);
        }
        Ok(id)
    }

    /// Last committed seq (0 if none).
    pub fn last_committed(&self) -> u64 {
        *self.shared.committed.borrow()
    }

    /// Stores `records` (and `checkpoint`, in the same transaction) under the `block`
    /// policy; returns once durable.
    pub async fn append(
        &self,
        records: Vec<Record>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Appended, QueueError> {
        self.append_with(records, Vec::new(), checkpoint, WhenFull::Block)
            .await
    }

    /// Stores records, dead letters and a checkpoint in one transaction, applying
    /// `when_full` if the queue is at its limit; returns once durable.
    pub async fn append_with(
        &self,
        records: Vec<Record>,
        dead: Vec<DeadLetter>,
        checkpoint: Option<Checkpoint>,
        when_full: WhenFull,
    ) -> Result<Appended, QueueError> {
        let (done, rx) = oneshot::channel();
        let cmd = Command::Append(Append {
            records,
            dead,
            checkpoint,
            when_full,
            done,
        });
        self.tx.send(cmd).await.map_err(|_| QueueError::Closed)?;
        let (reply, stored) = rx.await.map_err(|_| QueueError::Closed)?;
        drop(stored);
        reply
    }

    /// Marks everything up to `seq` as delivered by sink `sink_id`; it is deleted, and the
    /// sink recorded as its owner, in the next commit (see [`Queue::durable_acked`]).
    pub fn ack_from(&self, sink_id: &str, seq: u64) {
        if let Ok(mut m) = self.shared.owners.lock() {
            let e = m.entry(sink_id.to_string()).or_default();
            *e = (*e).max(seq);
        }
        self.ack(seq);
    }

    /// The marks for a `Resolve` with journal `sink_id`: `(confirm_upto, delivered_upto)`,
    /// both as durably recorded. Blocking; errs if acks stay uncommitted for 5 s.
    ///
    /// First waits until every ack received is durable: an ack whose commit failed (a full
    /// disk) belongs to no journal yet, and a sink told it went elsewhere would discard its
    /// copy while the forwarder skips it as acked, and it would be lost.
    pub fn resolve_marks(&self, sink_id: &str) -> Result<(u64, u64), QueueError> {
        let acked = self.acked();
        let start = std::time::Instant::now();
        let mut waited = 0u32;
        while *self.shared.durable_acked.borrow() < acked {
            if waited.is_multiple_of(50) {
                // After a failed commit nothing else may wake the writer to retry.
                let _ = self.tx.try_send(Command::Wake);
            }
            waited += 1;
            if start.elapsed() > std::time::Duration::from_secs(5) {
                return Err(QueueError::unavailable(
                    "acknowledgements not yet durable (storage failing?)".to_string(),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok((self.owner_mark(sink_id)?, acked))
    }

    /// The highest seq `sink_id` acknowledged, as durably recorded. Blocking.
    pub fn owner_mark(&self, sink_id: &str) -> Result<u64, QueueError> {
        self.shared.with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let meta = txn.open_table(META).map_err(db)?;
            Ok(meta_u64(&meta, &format!("owner:{sink_id}"))?.unwrap_or(0))
        })
    }

    /// Watches the ack mark of the last durable commit.
    pub fn durable_acked(&self) -> watch::Receiver<u64> {
        self.shared.durable_acked.subscribe()
    }

    /// Marks everything up to `seq` as delivered; it is deleted with the next commit.
    pub fn ack(&self, seq: u64) {
        if self.shared.acked.fetch_max(seq, Ordering::AcqRel) < seq {
            // A full channel means the writer is busy and will see the new ack anyway.
            let _ = self.tx.try_send(Command::Wake);
        }
    }

    /// Whether a commit failed for its storage and the writer has not reopened the file
    /// since (it refuses appends meanwhile, and reads may fail).
    pub fn is_recovering(&self) -> bool {
        self.shared.slot.recovering()
    }

    /// Whether the queue is refusing or dropping records for lack of room (as of its last
    /// commit that had appends).
    pub fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::Relaxed)
    }

    /// The configured size limit.
    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
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
    /// Blocking.
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Record)>, QueueError> {
        self.shared
            .with_db(|d| read_records(d, from, max_records, max_bytes))
    }

    /// Calls `f` with the seq and the wire bytes (length-delimited `wire::Record`) of every
    /// record with seq ≥ `from`, up to the limits (at least one record if any; more bytes
    /// than `max_bytes` only if that one record is larger; chunks after the first only
    /// whole), as stored:
    /// what the forwarder puts in a `Batch` without decoding it. Returns the last seq
    /// given. Blocking.
    pub fn read_encoded(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        mut f: impl FnMut(u64, &[u8]),
    ) -> Result<Option<u64>, QueueError> {
        self.shared.with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let table = txn.open_table(CHUNKS).map_err(db)?;
            let start = match table.range(..=from).map_err(db)?.next_back() {
                Some(entry) => entry.map_err(db)?.0.value(),
                None => from,
            };
            let (mut n, mut bytes, mut last) = (0usize, 0usize, None);
            for entry in table.range(start..).map_err(db)? {
                let (k, v) = entry.map_err(db)?;
                let first = k.value();
                let p = chunk::parts(first, v.value())?;
                if first.saturating_add(u64::from(p.count)) <= from {
                    continue;
                }
                // A later chunk goes in whole or waits for the next read: a batch that
                // ended inside a chunk made the next one read and check all of it again.
                if n > 0
                    && p.version == chunk::V3
                    && (bytes + p.body.len() > max_bytes || n + p.count as usize > max_records)
                {
                    break;
                }
                let p = verified(first, v.value())?;
                let mut full = false;
                chunk::for_each_encoded(first, &p, from, |seq, rec| {
                    // `max_bytes` is a bound, not a target: what a batch is stored in (the
                    // sink's journal page) is sized by it.
                    if n > 0 && bytes + rec.len() > max_bytes {
                        full = true;
                        return false;
                    }
                    f(seq, rec);
                    last = Some(seq);
                    n += 1;
                    bytes += rec.len();
                    full = n >= max_records || bytes >= max_bytes;
                    !full
                })?;
                if full {
                    break;
                }
            }
            Ok(last)
        })
    }

    /// A stored source checkpoint. Blocking.
    pub fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>, QueueError> {
        self.shared.with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let table = txn.open_table(CHECKPOINTS).map_err(db)?;
            Ok(table.get(key).map_err(db)?.map(|v| v.value().to_vec()))
        })
    }

    /// All stored checkpoints whose key starts with `prefix`. Blocking.
    pub fn checkpoints(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
        self.shared.with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
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
        })
    }

    /// Removes a chunk that does not decode or fails its checksum, so delivery goes on past
    /// it: its unsent records that still decode go to the dead-letter table with the
    /// reason, the others are counted as lost (`corrupt_dropped`). Returns how many were
    /// lost. Blocking (from a runtime thread, inside `block_in_place`).
    pub fn drop_corrupt_chunk(&self, first: u64) -> Result<u64, QueueError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .blocking_send(Command::Quarantine { first, done })
            .map_err(|_| QueueError::Closed)?;
        rx.blocking_recv().map_err(|_| QueueError::Closed)?
    }

    /// Depth, bytes and counters. Blocking.
    pub fn stats(&self) -> Result<Stats, QueueError> {
        let acked = self.acked();
        let bytes = self.shared.bytes.load(Ordering::Relaxed);
        self.shared.with_db(|d| stats_of(d, acked, Some(bytes)))
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

/// Opens the file and reads (or creates) its metadata. A panic of redb on a bad file comes
/// back as [`QueueError::Unreadable`].
pub(crate) fn open_file(medium: &Medium) -> Result<(Database, Loaded), QueueError> {
    // redb's default cache is 1 GiB; the queue is written once and read once, so a small
    // cache keeps the agent's RSS low without costing throughput.
    let d = salvage::guarded(
        "opening the queue file",
        || Ok(medium.open(2 << 20, false)?),
    )?;
    match salvage::guarded("reading the queue file", || init_meta(&d)) {
        Ok(loaded) => Ok((d, loaded)),
        // After a panic redb's state is unknown and closing could panic again, or write to
        // the bad file: leak the handle (once, for a file about to be set aside).
        Err(e @ QueueError::Unreadable(_)) => {
            std::mem::forget(d);
            Err(e)
        }
        Err(e) => {
            let _ = salvage::guarded("closing the queue file", || {
                drop(d);
                Ok(())
            });
            Err(e)
        }
    }
}

/// Writes what a fresh queue carries over from a file that was set aside: the recovered
/// checkpoints and the `set_aside` count.
fn seed_fresh(d: &Database, cps: &BTreeMap<String, Vec<u8>>) -> Result<(), QueueError> {
    let txn = d.begin_write().map_err(db)?;
    {
        let mut table = txn.open_table(CHECKPOINTS).map_err(db)?;
        for (k, v) in cps {
            table.insert(k.as_str(), v.as_slice()).map_err(db)?;
        }
        let mut meta = txn.open_table(META).map_err(db)?;
        let n = meta_u64(&meta, "set_aside")?.unwrap_or(0) + 1;
        meta.insert("set_aside", &n.to_le_bytes()[..]).map_err(db)?;
    }
    txn.commit().map_err(db)
}

/// Errors that mean the file's content is bad, as opposed to the file being busy, missing
/// permissions or written by a newer version.
fn is_corruption(e: &QueueError) -> bool {
    use std::io::ErrorKind as K;
    // Everything redb or the decoder says about the file's bytes is corruption, panics
    // included; what is about the machine (a lock held by another agent, permissions, a
    // full disk) or a newer format is not: the agent refuses to start and says why rather
    // than abandon a sound file with its records.
    let env_io = |io: &std::io::Error| {
        matches!(
            io.kind(),
            K::PermissionDenied
                | K::ReadOnlyFilesystem
                | K::StorageFull
                | K::QuotaExceeded
                | K::WouldBlock
                | K::Interrupted
                | K::OutOfMemory
                | K::NotFound
        )
    };
    match e {
        QueueError::Storage(
            redb::Error::DatabaseAlreadyOpen
            | redb::Error::LockProtocolMismatch
            | redb::Error::PreviousIo,
        ) => false,
        QueueError::Storage(redb::Error::Io(io)) => !env_io(io),
        QueueError::Storage(_) | QueueError::Corrupt { .. } | QueueError::Unreadable(_) => true,
        _ => false,
    }
}

/// The records count and the body of a chunk, from its header alone (no checksum).
pub(crate) fn chunk_header(first: u64, v: &[u8]) -> Result<(u32, &[u8]), QueueError> {
    chunk::parts(first, v).map(|p| (p.count, p.body))
}

/// Prefix of the message of a checksum failure (the forwarder and `check` show it).
const CHECKSUM_MISMATCH: &str = "checksum mismatch";

/// Verifies a chunk's checksum (versions 2 and 3) and returns its parts.
fn verified(first: u64, v: &[u8]) -> Result<chunk::Parts<'_>, QueueError> {
    let p = chunk::parts(first, v)?;
    if let (true, Some(&[a, b, c, d])) = (p.version >= chunk::V2, v.get(5..9))
        && chunk::crc(v) != u32::from_le_bytes([a, b, c, d])
    {
        return Err(QueueError::Corrupt {
            seq: first,
            message: format!("{CHECKSUM_MISMATCH}: the stored bytes were altered"),
        });
    }
    Ok(p)
}

/// Decodes a stored chunk after checking its checksum (versions 2 and 3) or header
/// (version 1).
pub(crate) fn decode_chunk(first: u64, v: &[u8]) -> Result<Vec<Record>, QueueError> {
    chunk::decode(first, &verified(first, v)?)
}

/// The bytes of the records of a stored chunk as [`Queue::read_encoded`] gives them (the
/// fuzz target's way in).
pub(crate) fn encoded_len_of_chunk(first: u64, v: &[u8]) -> Result<usize, QueueError> {
    let mut n = 0;
    chunk::for_each_encoded(first, &verified(first, v)?, first, |_, rec| {
        n += rec.len();
        true
    })?;
    Ok(n)
}

fn read_records(
    d: &Database,
    from: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Vec<(u64, Record)>, QueueError> {
    let txn = d.begin_read().map_err(db)?;
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
        let (count, _) = chunk_header(first, v.value())?;
        if first.saturating_add(u64::from(count)) <= from {
            continue;
        }
        for (i, r) in decode_chunk(first, v.value())?.into_iter().enumerate() {
            let seq = first.saturating_add(i as u64);
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

fn meta_u64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<u64>, QueueError> {
    Ok(meta.get(key).map_err(db)?.map(|v| le_u64(v.value())))
}

/// The queue's stats; `bytes` is the size of the stored chunks when the caller knows it, or
/// `None` to add them up (every chunk is read: only for a file no agent has open).
fn stats_of(d: &Database, acked: u64, bytes: Option<u64>) -> Result<Stats, QueueError> {
    let txn = d.begin_read().map_err(db)?;
    let chunks = txn.open_table(CHUNKS).map_err(db)?;
    let meta = txn.open_table(META).map_err(db)?;
    let dead = txn.open_table(DEAD).map_err(db)?;
    let next_seq = meta_u64(&meta, "next_seq")?.unwrap_or(1);
    let bytes = match bytes {
        Some(b) => b,
        None => {
            let mut sum = 0;
            for e in chunks.iter().map_err(db)? {
                sum += e.map_err(db)?.1.value().len() as u64;
            }
            sum
        }
    };
    let (first, oldest_ts_ns) = match chunks.first().map_err(db)? {
        Some((k, v)) => {
            let first_rec = decode_chunk(k.value(), v.value())
                .ok()
                .and_then(|r| r.into_iter().next())
                .map(|r| r.ts_ns);
            (k.value(), first_rec)
        }
        None => (next_seq, None),
    };
    let first = first.max(acked + 1);
    Ok(Stats {
        depth: next_seq.saturating_sub(first),
        bytes,
        chunks: chunks.len().map_err(db)?,
        next_seq,
        oldest_ts_ns,
        dead_letters: dead.len().map_err(db)?,
        dropped_newest: meta_u64(&meta, "dropped_newest")?.unwrap_or(0),
        dropped_oldest: meta_u64(&meta, "dropped_oldest")?.unwrap_or(0),
        corrupt_dropped: meta_u64(&meta, "corrupt_dropped")?.unwrap_or(0),
        corrupt_dead: meta_u64(&meta, "corrupt_dead")?.unwrap_or(0),
        set_aside: meta_u64(&meta, "set_aside")?.unwrap_or(0),
        queue_id: meta
            .get("queue_id")
            .map_err(db)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned())
            .unwrap_or_default(),
    })
}

/// Creates the tables on a new file and reads the metadata.
fn init_meta(d: &Database) -> Result<Loaded, QueueError> {
    let txn = d.begin_write().map_err(db)?;
    let loaded;
    {
        let mut meta = txn.open_table(META).map_err(db)?;
        match meta_u64(&meta, "format_version")? {
            Some(FORMAT_VERSION) => {}
            // A new file, or an older format: its chunks stay readable as they are (version
            // 1 without a checksum, 1 and 2 in CBOR); from now on chunks are written in
            // version 3.
            None | Some(OLDEST_FORMAT..FORMAT_VERSION) => {
                meta.insert("format_version", &FORMAT_VERSION.to_le_bytes()[..])
                    .map_err(db)?;
            }
            Some(found) => return Err(QueueError::Format { found }),
        }
        let stored = meta
            .get("queue_id")
            .map_err(db)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        let queue_id = match stored {
            Some(id) => id,
            None => {
                let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
                meta.insert("queue_id", id.as_bytes()).map_err(db)?;
                id
            }
        };
        let chunks = txn.open_table(CHUNKS).map_err(db)?;
        let mut bytes = 0;
        // Sizes only: a bad chunk is dropped when the forwarder reaches it, not a reason to
        // abandon the whole file.
        for e in chunks.iter().map_err(db)? {
            bytes += e.map_err(db)?.1.value().len() as u64;
        }
        let mut checkpoints = BTreeMap::new();
        for e in txn
            .open_table(CHECKPOINTS)
            .map_err(db)?
            .iter()
            .map_err(db)?
        {
            let (k, v) = e.map_err(db)?;
            checkpoints.insert(k.value().to_string(), v.value().to_vec());
        }
        loaded = Loaded {
            checkpoints,
            queue_id,
            next_seq: meta_u64(&meta, "next_seq")?.unwrap_or(1).max(1),
            first_chunk: chunks.first().map_err(db)?.map(|(k, _)| k.value()),
            acked: meta_u64(&meta, "acked")?.unwrap_or(0),
            bytes,
            next_dead: meta_u64(&meta, "next_dead")?.unwrap_or(1),
            dropped_newest: meta_u64(&meta, "dropped_newest")?.unwrap_or(0),
            dropped_oldest: meta_u64(&meta, "dropped_oldest")?.unwrap_or(0),
        };
        txn.open_table(DEAD).map_err(db)?;
    }
    txn.commit().map_err(db)?;
    Ok(loaded)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
pub(crate) mod crash_tests;
#[cfg(test)]
mod tests;
