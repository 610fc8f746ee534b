//! The sink's journal: received batches, durable before they are acknowledged, drained to
//! the outputs only once the agent has confirmed this sink owns them.
//!
//! # Design constraints
//! - One writer thread, group commit (as in the agent's queue).
//! - De-duplication by high-water mark per (agent id, queue id): a record whose seq is at or
//!   below the mark is dropped; the mark is updated in the same transaction as the records.
//!   The writer's in-memory marks are updated in place while it builds a transaction; if the
//!   commit fails, the file is reopened and the marks reloaded from it (no per-commit copy).
//! - **No gaps.** A batch is journaled only if it follows on from what the journal holds for
//!   its queue (`from_seq <= hwm + 1`); `Resolve` raises the mark to the agent's
//!   `delivered_upto` (what went elsewhere never comes here). A failed commit refuses every
//!   batch of its group, and the sink ends their streams: a later batch can never commit
//!   past a missing one, so an ack never covers seqs this journal does not hold.
//! - **Validated before stored.** The sink checks every record of a batch before it gets
//!   here ([`crate::wire::scan_batch`]); an invalid batch is not stored but noted in the
//!   `quarantine` table, the mark moves over its seqs, and the agent is told to
//!   dead-letter it.
//! - **One bad entry stops nothing.** An entry that does not decode (a flipped bit, an entry
//!   from before validation) is moved to `quarantine` with the reason, by the drainer or by
//!   `Resolve`, and counted; everything else goes on. Only storage errors reopen the file.
//! - **Bounded per agent.** Queue ids are checked (length, charset) before they get here,
//!   and an agent may hold at most `max_queues_per_agent` of them; at the cap a settled one
//!   (everything confirmed and drained) is forgotten, else the new one is refused.
//! - **One process per queue.** A `Resolve` from a new agent process is accepted only if
//!   that process inherited every seq held here (`inherited_upto >= hwm`: a restart);
//!   otherwise another copy of the data directory sent them and the newcomer is refused as
//!   forked (it takes a new queue id). Batches from a process another one took over from
//!   are refused. So two copies of a queue never have each other's records dropped as
//!   duplicates.
//! - **Ownership before output.** An ack can be lost when a sink dies; the agent then sends
//!   the batch to another sink. So an entry is drained only after the agent *confirmed* it
//!   (`Confirm` frame, or `Resolve.confirm_upto`): the agent confirms only seqs it recorded
//!   durably as acknowledged by this sink. At `Resolve`, unconfirmed entries whose seqs the
//!   agent reports as delivered elsewhere (`delivered_upto`) are discarded. Together: a
//!   record reaches exactly one sink's outputs, even across failover.
//! - The drainer deletes drained entries in the transaction that records its output
//!   positions; unconfirmed entries stay until confirmed or discarded.
//! - **Never a crash loop.** The file is opened with redb's integrity check (every page's
//!   checksum), under `catch_unwind`. A file that fails or panics is renamed
//!   `journal.redb.corrupt-<unix seconds>`, logged loudly, and what still decodes from it
//!   (marks, entries, output positions, the journal id) is salvaged into a new file.
//!
//! # On-disk layout (format version 2; do not change without bumping [`FORMAT_VERSION`])
//! - `journal`: `u64` entry number → protobuf `JournalEntry` (see `agent/wire/dataweaver.proto`)
//! - `marks`: `(agent id, queue id)` → `(highest durable seq, highest seq the agent
//!   confirmed as ours)`
//! - `quarantine`: `u64` id → `(unix ms, reason, bytes)`: an undecodable entry (its bytes
//!   as stored) or a rejected batch (its first 64 KiB); the newest
//!   [`QUARANTINE_MAX_ROWS`] are kept
//! - `instances`: `(agent id, queue id)` → the agent process (`Resolve.instance`) whose
//!   batches are accepted for that queue
//! - `cursor`: output name → output-defined bytes
//! - `meta`: `format_version`, `journal_id`
//!
//! Version 1 kept the marks in `hwm` and `confirmed` under `"<agent>/<queue>"` string keys
//! (ambiguous once a name contains `/`); opening a version-1 file moves them to `marks`
//! (split at the last `/`: queue ids never contain one) and drops those tables.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use crate::store::{Medium, StoreError};
use crate::wire::{Batch, BatchInfo, JournalEntry, JournalHeader, Record};

mod salvage;

/// On-disk format version.
pub const FORMAT_VERSION: u64 = 2;
/// File name of the journal inside the sink's data directory.
pub const FILE_NAME: &str = "journal.redb";
pub(crate) const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// `(agent, queue)` → `(hwm, confirmed)`.
pub(crate) const MARKS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("marks");
/// Entries that could not be drained and batches that were rejected.
pub(crate) const QUARANTINE: TableDefinition<u64, (u64, &str, &[u8])> =
    TableDefinition::new("quarantine");
/// `(agent, queue)` → the agent process (`Resolve.instance`) the queue's batches come from.
const INSTANCES: TableDefinition<(&str, &str), u64> = TableDefinition::new("instances");
/// Output positions; shared with the drainer.
pub(crate) const CURSOR: TableDefinition<&str, &[u8]> = TableDefinition::new("cursor");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Version-1 tables, read only to migrate them.
const V1_HWM: TableDefinition<&str, u64> = TableDefinition::new("hwm");
const V1_CONFIRMED: TableDefinition<&str, u64> = TableDefinition::new("confirmed");
/// How much of a rejected batch the quarantine keeps (the agent keeps all of it).
const REJECTED_KEEP: usize = 64 * 1024;
/// Rows the quarantine keeps (at most 64 MiB of rejected batches); older ones are removed.
pub const QUARANTINE_MAX_ROWS: u64 = 1000;

/// Journal errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// redb failed.
    #[error("journal storage: {0}")]
    Storage(#[from] redb::Error),
    /// Incompatible file.
    #[error("journal format version {0} is not supported (expected {FORMAT_VERSION})")]
    Format(u64),
    /// A stored entry does not decode.
    #[error("corrupt journal entry {0}: {1}")]
    Corrupt(u64, String),
    /// redb panicked while opening or reading the file (a corrupt page).
    #[error("journal file panicked the storage engine: {0}")]
    Panicked(String),
    /// The writer stopped.
    #[error("journal closed")]
    Closed,
    /// Directory creation failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

pub(crate) fn db<E: Into<redb::Error>>(e: E) -> JournalError {
    JournalError::Storage(e.into())
}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Storage(e) => JournalError::Storage(e),
            StoreError::Io { path, source } => JournalError::Io(path, source),
            other => JournalError::Io(FILE_NAME.into(), std::io::Error::other(other.to_string())),
        }
    }
}

/// Limits the journal enforces.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// Queue ids one agent may hold marks for.
    pub max_queues_per_agent: usize,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            max_queues_per_agent: 64,
        }
    }
}

/// What became of a submitted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every record up to this seq is durable (or was already): send `Ack`.
    Stored(u64),
    /// The batch is invalid and will never be stored (the mark moved over it): send
    /// `Rejected` with this reason.
    Rejected(String),
}

struct Submit {
    agent_id: String,
    queue_id: String,
    /// The encoded `Batch`.
    batch: bytes::Bytes,
    from: u64,
    first: u64,
    /// Last seq of the batch as sent (what the ack names).
    last: u64,
    /// Why the batch must be rejected, if it must.
    invalid: Option<String>,
    /// The agent process that sent it (`Resolve.instance` of its stream).
    instance: u64,
    done: oneshot::Sender<Result<Outcome, String>>,
}

/// Journal entries decoded for the outputs.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Agent id from the client certificate.
    pub agent_id: String,
    /// The agent's queue id.
    pub queue_id: String,
    /// The records, duplicates removed.
    pub records: Vec<Record>,
}

/// One round for the outputs: entries to write, and entries to quarantine.
#[derive(Debug, Default)]
pub struct Drainable {
    /// Confirmed entries, oldest first.
    pub entries: Vec<(u64, Entry)>,
    /// Entries that do not decode, with the reason: move them with [`quarantine_entries`].
    pub bad: Vec<(u64, String)>,
}

enum Command {
    Submit(Submit),
    /// The agent confirms seqs up to `upto` as ours.
    Confirm {
        agent_id: String,
        queue_id: String,
        upto: u64,
        /// Told once the confirmation is committed.
        done: Option<oneshot::Sender<()>>,
    },
    /// A stream starts: confirm up to `confirm_upto`, discard unconfirmed entries up to
    /// `delivered_upto`, answer the high-water mark.
    Resolve {
        agent_id: String,
        queue_id: String,
        confirm_upto: u64,
        delivered_upto: u64,
        incarnation: (u64, u64),
        done: oneshot::Sender<Result<u64, crate::wire::Refusal>>,
    },
    /// Storage failed elsewhere (the drainer): close and reopen the file.
    Reopen,
}

/// The journal file, closed and reopened by the writer after a storage failure (redb
/// latches an I/O error until the database is reopened).
struct Store {
    medium: Medium,
    /// `None` only while being reopened; readers hold the read guard for their transaction.
    db: RwLock<Option<Database>>,
    /// A commit failed and the file is not yet reopened: batches are refused meanwhile.
    failing: std::sync::atomic::AtomicBool,
    /// Times the file was reopened after a storage failure.
    reopens: std::sync::atomic::AtomicU64,
    /// Test hook: the next commit fails as a full disk would.
    #[cfg(test)]
    fail_next_commit: std::sync::atomic::AtomicBool,
}

impl Store {
    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, JournalError>,
    ) -> Result<R, JournalError> {
        let guard = self.db.read().map_err(|_| JournalError::Closed)?;
        match guard.as_ref() {
            Some(d) => f(d),
            None => Err(JournalError::Closed),
        }
    }
}

/// Opens the database and reads its state, turning a panic of redb into an error.
fn open_file(medium: &Medium, check: bool) -> Result<(Database, Loaded), JournalError> {
    catch(move || {
        // Entries are read once, right after they were written (still in the OS page
        // cache), so redb's own cache can stay small; its 1 GiB default would show as RSS.
        let d = medium.open(4 << 20, check)?;
        let loaded = init(&d)?;
        Ok((d, loaded))
    })
}

/// Runs `f`, turning a panic into [`JournalError::Panicked`].
fn catch<R>(f: impl FnOnce() -> Result<R, JournalError>) -> Result<R, JournalError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(JournalError::Panicked(panic_text(&p))),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Errors that mean the file's content is bad (as opposed to busy, unreadable, or written
/// by a newer version, which are left alone: the sink then refuses to start and says why).
fn is_corruption(e: &JournalError) -> bool {
    match e {
        JournalError::Corrupt(..) | JournalError::Panicked(_) => true,
        JournalError::Storage(redb::Error::Corrupted(_)) => true,
        // redb reports a file that is not a database at all ("magic number mismatch") so.
        JournalError::Storage(redb::Error::Io(io)) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    id: String,
    store: Arc<Store>,
    tx: mpsc::Sender<Command>,
    changed: watch::Receiver<u64>,
}

impl Journal {
    /// Opens (or creates) `journal.redb` in `dir` with default limits.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        Self::open_with(dir, JournalOptions::default())
    }

    /// Opens (or creates) `journal.redb` in `dir` and starts the writer thread. A corrupt
    /// file is set aside and what decodes of it salvaged into a new one.
    pub fn open_with(dir: &Path, opts: JournalOptions) -> Result<Journal, JournalError> {
        crate::fsmode::data_dir(dir).map_err(|e| JournalError::Io(dir.into(), e))?;
        Journal::open_on(Medium::File(dir.join(FILE_NAME)), opts)
    }

    /// Opens (or creates) the journal on `medium` and starts the writer thread. A corrupt
    /// file is set aside and what decodes of it salvaged into a new one; a corrupt
    /// simulated disk is an error.
    pub fn open_on(medium: Medium, opts: JournalOptions) -> Result<Journal, JournalError> {
        let (database, loaded) = match (open_file(&medium, true), medium.path()) {
            (Ok(x), _) => x,
            (Err(e), Some(path)) if is_corruption(&e) => salvage::recover_corrupt(path, &e)?,
            (Err(e), _) => return Err(e),
        };
        let id = loaded.id;
        let store = Arc::new(Store {
            medium,
            db: RwLock::new(Some(database)),
            failing: Default::default(),
            reopens: Default::default(),
            #[cfg(test)]
            fail_next_commit: Default::default(),
        });
        let (changed_tx, changed) = watch::channel(0);
        let (tx, rx) = mpsc::channel(256);
        let writer = Writer {
            store: store.clone(),
            rx,
            next: loaded.next,
            marks: loaded.marks,
            opts,
            changed: changed_tx,
            generation: 0,
            held: Vec::new(),
        };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::Io("journal-writer thread".into(), e))?;
        Ok(Journal {
            id: format!("{id:016x}"),
            store,
            tx,
            changed,
        })
    }

    /// Whether storage is failing (the last commit failed; cleared by the next one that
    /// succeeds): batches are refused meanwhile (the sink's `/ready` says so).
    pub fn failing(&self) -> bool {
        self.store
            .failing
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Times the file was reopened after a storage failure: a drainer whose commit failed
    /// waits for the next one before it reads back what was committed.
    pub fn reopens(&self) -> u64 {
        self.store
            .reopens
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Random id of this journal file, told to agents in `Welcome`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs `f` on the open database (the drainer commits its positions through this).
    pub fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, JournalError>,
    ) -> Result<R, JournalError> {
        self.store.with_db(f)
    }

    /// After a failed write elsewhere (the drainer's): have the writer reopen the file.
    pub async fn reopen(&self) {
        let _ = self.tx.send(Command::Reopen).await;
    }

    /// Ticks whenever entries were added or confirmed.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// Starts a stream for (agent, queue): applies the agent's confirmation and its
    /// delivered-elsewhere mark, and returns the high-water mark to put in `Resolved`; or
    /// the refusal to send (`REFUSED_FORKED` when another copy of the queue sent seqs this
    /// agent process never inherited).
    pub async fn resolve(
        &self,
        agent_id: &str,
        queue_id: &str,
        r: &crate::wire::Resolve,
    ) -> Result<u64, crate::wire::Refusal> {
        let closed = || crate::wire::Refusal {
            reason: "journal closed".into(),
            code: 0,
        };
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Resolve {
                agent_id: agent_id.into(),
                queue_id: queue_id.into(),
                confirm_upto: r.confirm_upto,
                delivered_upto: r.delivered_upto,
                incarnation: (r.instance, r.inherited_upto),
                done,
            })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Records the agent's confirmation that seqs up to `upto` belong to this sink.
    pub async fn confirm(
        &self,
        agent_id: &str,
        queue_id: &str,
        upto: u64,
    ) -> Result<(), JournalError> {
        self.tx
            .send(Command::Confirm {
                agent_id: agent_id.into(),
                queue_id: queue_id.into(),
                upto,
                done: None,
            })
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// [`confirm`](Self::confirm), and waits until the confirmation is committed (through
    /// a reopen, if storage fails meanwhile).
    pub async fn confirm_durable(
        &self,
        agent_id: &str,
        queue_id: &str,
        upto: u64,
    ) -> Result<(), JournalError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Confirm {
                agent_id: agent_id.into(),
                queue_id: queue_id.into(),
                upto,
                done: Some(done),
            })
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    /// Queues an encoded `Batch` (checked by [`crate::wire::scan_batch`], which gave
    /// `info`) for the next commit. The receiver yields what became of it, or the reason
    /// it was not taken (the stream must end then).
    pub async fn submit(
        &self,
        agent_id: &str,
        queue_id: &str,
        batch: bytes::Bytes,
        info: &BatchInfo,
        instance: u64,
    ) -> Result<oneshot::Receiver<Result<Outcome, String>>, JournalError> {
        let (done, rx) = oneshot::channel();
        let s = Submit {
            agent_id: agent_id.into(),
            queue_id: queue_id.into(),
            batch,
            from: info.from_seq,
            first: info.first,
            last: info.last,
            invalid: info.invalid.map(|i| i.to_string()),
            instance,
            done,
        };
        self.tx
            .send(Command::Submit(s))
            .await
            .map_err(|_| JournalError::Closed)?;
        Ok(rx)
    }

    /// Confirmed entries ready for the outputs, oldest first: at least one if any, then
    /// more while their encoded size stays under `max_bytes`; and the entries met on the
    /// way that do not decode. Blocking.
    pub fn read_drainable(&self, max_bytes: usize) -> Result<Drainable, JournalError> {
        self.store.with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let t = txn.open_table(JOURNAL).map_err(db)?;
            let marks = txn.open_table(MARKS).map_err(db)?;
            // Confirmed marks met so far: few distinct queues per round.
            let mut seen: Vec<(String, String, u64)> = Vec::new();
            let mut out = Drainable::default();
            let mut bytes = 0;
            for e in t.iter().map_err(db)? {
                let (k, v) = e.map_err(db)?;
                let h = match JournalHeader::decode(v.value()) {
                    Ok(h) => h,
                    Err(e) => {
                        out.bad.push((k.value(), format!("entry header: {e}")));
                        continue;
                    }
                };
                let mark = match seen
                    .iter()
                    .find(|(a, q, _)| *a == h.agent_id && *q == h.queue_id)
                {
                    Some((_, _, m)) => *m,
                    None => {
                        let m = marks
                            .get((h.agent_id.as_str(), h.queue_id.as_str()))
                            .map_err(db)?
                            .map_or(0, |v| v.value().1);
                        seen.push((h.agent_id, h.queue_id, m));
                        m
                    }
                };
                if h.last_seq > mark {
                    continue; // not ours yet
                }
                bytes += v.value().len();
                if !out.entries.is_empty() && bytes > max_bytes {
                    break;
                }
                match decode_entry(v.value()) {
                    Ok(entry) => out.entries.push((k.value(), entry)),
                    Err(why) => out.bad.push((k.value(), why)),
                }
            }
            Ok(out)
        })
    }

    /// Rows in the quarantine table. Blocking.
    pub fn quarantined(&self) -> Result<u64, JournalError> {
        use redb::ReadableTableMetadata;
        self.store.with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let q = txn.open_table(QUARANTINE).map_err(db)?;
            q.len().map_err(db)
        })
    }

    #[cfg(test)]
    fn fail_next_commit(&self) {
        self.store
            .fail_next_commit
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One stored entry with its records (one copy of the bytes; payloads slice it).
fn decode_entry(v: &[u8]) -> Result<Entry, String> {
    let raw = JournalEntry::decode(bytes::Bytes::copy_from_slice(v)).map_err(|e| e.to_string())?;
    let records = raw.records().map_err(|e| format!("records: {e}"))?;
    Ok(Entry {
        agent_id: raw.agent_id,
        queue_id: raw.queue_id,
        records,
    })
}

/// Deletes drained entries inside the drainer's transaction.
pub(crate) fn delete_entries(txn: &WriteTransaction, keys: &[u64]) -> Result<(), JournalError> {
    let mut t = txn.open_table(JOURNAL).map_err(db)?;
    for k in keys {
        t.remove(*k).map_err(db)?;
    }
    Ok(())
}

/// Moves entries that do not decode from the journal to the quarantine table.
pub(crate) fn quarantine_entries(
    txn: &WriteTransaction,
    bad: &[(u64, String)],
) -> Result<(), JournalError> {
    let mut t = txn.open_table(JOURNAL).map_err(db)?;
    let mut q = txn.open_table(QUARANTINE).map_err(db)?;
    for (k, why) in bad {
        let Some(v) = t.remove(*k).map_err(db)? else {
            continue;
        };
        tracing::error!(entry = k, reason = %why, "journal entry does not decode; moved to quarantine");
        let reason = format!("journal entry {k}: {why}");
        quarantine_put(&mut q, &reason, v.value())?;
    }
    Ok(())
}

fn quarantine_put(
    q: &mut QuarantineTable<'_>,
    reason: &str,
    bytes: &[u8],
) -> Result<(), JournalError> {
    use redb::ReadableTableMetadata;
    let id = q.last().map_err(db)?.map_or(0, |(k, _)| k.value()) + 1;
    q.insert(id, (now_ms(), reason, bytes)).map_err(db)?;
    // An agent that sends bad batches without end must not fill the sink's disk: the
    // oldest notes go (each was logged when it was made, and the agent dead-letters the
    // records themselves).
    while q.len().map_err(db)? > QUARANTINE_MAX_ROWS {
        q.pop_first().map_err(db)?;
    }
    Ok(())
}

/// Marks of one (agent, queue).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Mark {
    /// Highest durable seq.
    hwm: u64,
    /// Highest seq the agent confirmed as ours.
    confirmed: u64,
    /// The agent process whose batches are accepted (0: not known; see `INSTANCES`).
    instance: u64,
}

/// agent → queue → marks: looked up by `&str` without building a key.
type Marks = HashMap<String, HashMap<String, Mark>>;

/// What `init` reads from a file.
struct Loaded {
    next: u64,
    marks: Marks,
    id: u64,
}

fn init(db: &Database) -> Result<Loaded, JournalError> {
    let txn = db.begin_write().map_err(self::db)?;
    let out;
    {
        let mut meta = txn.open_table(META).map_err(self::db)?;
        let v = meta
            .get("format_version")
            .map_err(self::db)?
            .map(|v| v.value());
        match v {
            None | Some(FORMAT_VERSION) => {}
            Some(1) => {}
            Some(other) => return Err(JournalError::Format(other)),
        }
        if v == Some(1) {
            migrate_v1(&txn)?;
        }
        if v != Some(FORMAT_VERSION) {
            meta.insert("format_version", FORMAT_VERSION)
                .map_err(self::db)?;
        }
        let stored = meta.get("journal_id").map_err(self::db)?.map(|v| v.value());
        let id = match stored {
            Some(id) => id,
            None => {
                let id = fastrand::u64(1..);
                meta.insert("journal_id", id).map_err(self::db)?;
                id
            }
        };
        let j = txn.open_table(JOURNAL).map_err(self::db)?;
        // Entry numbers only order entries; one freed by the drainer may be used again.
        let next = j.last().map_err(self::db)?.map_or(0, |(k, _)| k.value()) + 1;
        txn.open_table(CURSOR).map_err(self::db)?;
        txn.open_table(QUARANTINE).map_err(self::db)?;
        let t = txn.open_table(MARKS).map_err(self::db)?;
        let mut marks = Marks::new();
        for e in t.iter().map_err(self::db)? {
            let (k, v) = e.map_err(self::db)?;
            let ((agent, queue), (hwm, confirmed)) = (k.value(), v.value());
            marks.entry(agent.to_string()).or_default().insert(
                queue.to_string(),
                Mark {
                    hwm,
                    confirmed,
                    instance: 0,
                },
            );
        }
        for e in txn
            .open_table(INSTANCES)
            .map_err(self::db)?
            .iter()
            .map_err(self::db)?
        {
            let (k, v) = e.map_err(self::db)?;
            let (agent, queue) = k.value();
            if let Some(m) = marks.get_mut(agent).and_then(|q| q.get_mut(queue)) {
                m.instance = v.value();
            }
        }
        out = Loaded { next, marks, id };
    }
    txn.commit().map_err(self::db)?;
    Ok(out)
}

/// Adds a version-1 mark (`"<agent>/<queue>"` → `v`) to `merged`, split at the last `/`
/// (queue ids never hold one); false if the key has no `/`.
fn merge_v1_mark(
    merged: &mut HashMap<(String, String), Mark>,
    key: &str,
    v: u64,
    confirmed: bool,
) -> bool {
    let Some((agent, queue)) = key.rsplit_once('/') else {
        return false;
    };
    let m = merged.entry((agent.into(), queue.into())).or_default();
    if confirmed {
        m.confirmed = v;
    } else {
        m.hwm = v;
    }
    true
}

/// Moves version-1 string-keyed marks into `marks`.
fn migrate_v1(txn: &WriteTransaction) -> Result<(), JournalError> {
    let mut merged: HashMap<(String, String), Mark> = HashMap::new();
    for (def, confirmed) in [(V1_HWM, false), (V1_CONFIRMED, true)] {
        let t = txn.open_table(def).map_err(db)?;
        for e in t.iter().map_err(db)? {
            let (k, v) = e.map_err(db)?;
            if !merge_v1_mark(&mut merged, k.value(), v.value(), confirmed) {
                tracing::warn!(
                    key = k.value(),
                    "journal migration: mark without a queue id; dropped"
                );
            }
        }
    }
    {
        let mut t = txn.open_table(MARKS).map_err(db)?;
        for ((agent, queue), m) in &merged {
            t.insert((agent.as_str(), queue.as_str()), (m.hwm, m.confirmed))
                .map_err(db)?;
        }
    }
    txn.delete_table(V1_HWM).map_err(db)?;
    txn.delete_table(V1_CONFIRMED).map_err(db)?;
    tracing::info!(
        queues = merged.len(),
        "migrated the journal from format version 1 to {FORMAT_VERSION}"
    );
    Ok(())
}

struct Writer {
    store: Arc<Store>,
    rx: mpsc::Receiver<Command>,
    next: u64,
    marks: Marks,
    opts: JournalOptions,
    changed: watch::Sender<u64>,
    generation: u64,
    /// Confirmations that came while storage failed: applied once it works again (an
    /// agent sends each one once; refused, its records would wait for its next stream).
    held: Vec<Command>,
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            let mut n = 0;
            // Bound a commit group to a few tens of MiB of batches.
            while n < (32 << 20) {
                match self.rx.try_recv() {
                    Ok(c) => {
                        if let Command::Submit(s) = &c {
                            n += s.batch.len();
                        }
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
            // Once per round, so a disk that keeps failing does not spin here.
            if !self.held.is_empty() {
                let held = std::mem::take(&mut self.held);
                self.commit(held);
            }
        }
    }

    fn mark(&self, agent: &str, queue: &str) -> Option<Mark> {
        self.marks.get(agent).and_then(|q| q.get(queue)).copied()
    }

    /// Sets the marks of an existing (agent, queue), in the transaction and in memory.
    fn set_mark(
        &mut self,
        t: &mut MarksTable<'_>,
        agent: &str,
        queue: &str,
        m: Mark,
    ) -> Result<(), JournalError> {
        t.insert((agent, queue), (m.hwm, m.confirmed)).map_err(db)?;
        if let Some(slot) = self.marks.get_mut(agent).and_then(|q| q.get_mut(queue)) {
            *slot = m;
        }
        Ok(())
    }

    fn commit(&mut self, mut batch: Vec<Command>) {
        if batch.iter().any(|c| matches!(c, Command::Reopen)) {
            // Storage failed: what came with the request is refused now, as what comes
            // during the recovery is. Held until the file reopens, a batch's stream would
            // wait for as long as storage fails (for ever on a dead disk). Confirmations
            // wait: they only need a commit, and refusing one would lose it.
            for c in batch {
                self.refuse_or_hold(c, "journal storage is failing; retry later");
            }
            self.recover();
            batch = std::mem::take(&mut self.held);
        }
        let store = self.store.clone();
        let guard = match store.db.read() {
            Ok(g) => g,
            Err(_) => return,
        };
        // One answer per command, sent only once the transaction committed.
        let mut answers: Vec<Option<Result<Outcome, String>>> = Vec::with_capacity(batch.len());
        let mut next = self.next;
        let result = catch(|| {
            let d = guard.as_ref().ok_or(JournalError::Closed)?;
            let txn = d.begin_write().map_err(db)?;
            {
                let mut j = txn.open_table(JOURNAL).map_err(db)?;
                let mut m = txn.open_table(MARKS).map_err(db)?;
                let mut q = txn.open_table(QUARANTINE).map_err(db)?;
                let mut inst = txn.open_table(INSTANCES).map_err(db)?;
                let mut buf = Vec::new();
                for cmd in &mut batch {
                    let answer = match cmd {
                        Command::Submit(s) => {
                            self.submit(s, &mut j, &mut m, &mut q, &mut next, &mut buf)?
                        }
                        Command::Reopen => None,
                        Command::Confirm {
                            agent_id,
                            queue_id,
                            upto,
                            ..
                        } => {
                            if let Some(mut mark) = self.mark(agent_id, queue_id)
                                && *upto > mark.confirmed
                            {
                                mark.confirmed = *upto;
                                self.set_mark(&mut m, agent_id, queue_id, mark)?;
                            }
                            None
                        }
                        Command::Resolve {
                            agent_id,
                            queue_id,
                            confirm_upto,
                            delivered_upto,
                            incarnation,
                            ..
                        } => Some(
                            match self.resolve(
                                agent_id,
                                queue_id,
                                *confirm_upto,
                                *delivered_upto,
                                *incarnation,
                                (&mut j, &mut m, &mut q),
                                &mut inst,
                                &mut buf,
                            )? {
                                Ok(h) => Ok(Outcome::Stored(h)),
                                // Carried as `Rejected` to the answer below.
                                Err(r) if r.code == crate::wire::REFUSED_FORKED => {
                                    Ok(Outcome::Rejected(r.reason))
                                }
                                Err(r) => Err(r.reason),
                            },
                        ),
                    };
                    answers.push(answer);
                }
            }
            #[cfg(test)]
            if self
                .store
                .fail_next_commit
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                // Dropping the transaction aborts it, as a failed fsync leaves nothing.
                drop(txn);
                return Err(JournalError::Io(
                    PathBuf::from(FILE_NAME),
                    std::io::Error::other("simulated full disk"),
                ));
            }
            txn.commit().map_err(db)?;
            Ok(())
        });
        match result {
            Ok(()) => {
                self.store
                    .failing
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                self.next = next;
                self.generation += 1;
                self.changed.send_replace(self.generation);
                for (cmd, answer) in batch.into_iter().zip(answers) {
                    match (cmd, answer) {
                        (Command::Submit(s), Some(a)) => {
                            let _ = s.done.send(a);
                        }
                        (
                            Command::Confirm {
                                done: Some(done), ..
                            },
                            _,
                        ) => {
                            let _ = done.send(());
                        }
                        (Command::Resolve { done, .. }, Some(a)) => {
                            let _ = done.send(match a {
                                Ok(Outcome::Stored(h)) => Ok(h),
                                Ok(Outcome::Rejected(reason)) => Err(crate::wire::Refusal {
                                    reason,
                                    code: crate::wire::REFUSED_FORKED,
                                }),
                                Err(reason) => Err(crate::wire::Refusal { reason, code: 0 }),
                            });
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // Nothing was acked: agents resend (confirmations are kept for after the
                // reopen), and every stream with a batch here ends, so none can commit a
                // later batch over the gap. A failed write latches redb until the file is
                // reopened, which also reloads the marks changed in memory above.
                tracing::error!(error = %e, "journal commit failed; reopening the journal");
                for cmd in batch {
                    self.refuse_or_hold(cmd, &e.to_string());
                }
                drop(guard);
                self.recover();
            }
        }
    }

    /// One batch inside the transaction: `None` never (a submit always gets an answer).
    fn submit(
        &mut self,
        s: &mut Submit,
        j: &mut JournalTable<'_>,
        m: &mut MarksTable<'_>,
        q: &mut QuarantineTable<'_>,
        next: &mut u64,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Result<Outcome, String>>, JournalError> {
        let Some(mut mark) = self.mark(&s.agent_id, &s.queue_id) else {
            return Ok(Some(Err("batch before Resolve".into())));
        };
        if s.instance != 0 && mark.instance != 0 && s.instance != mark.instance {
            // Another process of this queue resolved since this stream began (a copy of
            // the data directory): its seqs and ours overlap. The stream ends; its next
            // `Resolve` tells whether this process is the copy.
            return Ok(Some(Err(
                "another process of this queue took it over; resolve again".into(),
            )));
        }
        if s.from > mark.hwm.saturating_add(1) {
            return Ok(Some(Err(format!(
                "batch starts at seq {} but this journal holds seqs of the queue only up to {}: \
                 refusing to store past a gap",
                s.from, mark.hwm
            ))));
        }
        if let Some(reason) = &s.invalid {
            if s.last > mark.hwm {
                let note = format!(
                    "rejected batch from agent {} queue {} seqs {}..={}: {reason}",
                    s.agent_id, s.queue_id, s.first, s.last
                );
                let keep = s.batch.len().min(REJECTED_KEEP);
                quarantine_put(q, &note, &s.batch[..keep])?;
                mark.hwm = s.last;
                self.set_mark(m, &s.agent_id, &s.queue_id, mark)?;
            }
            return Ok(Some(Ok(Outcome::Rejected(reason.clone()))));
        }
        if s.last <= mark.hwm {
            return Ok(Some(Ok(Outcome::Stored(s.last)))); // all duplicates
        }
        // Kept as received; duplicates at its start are only marked.
        let entry = JournalEntry {
            agent_id: std::mem::take(&mut s.agent_id),
            queue_id: std::mem::take(&mut s.queue_id),
            last_seq: s.last,
            batch: std::mem::take(&mut s.batch),
            skip_upto: if s.first <= mark.hwm { mark.hwm } else { 0 },
        };
        buf.clear();
        entry
            .encode(buf)
            .map_err(|e| JournalError::Corrupt(*next, e.to_string()))?;
        j.insert(*next, buf.as_slice()).map_err(db)?;
        *next += 1;
        mark.hwm = s.last;
        self.set_mark(m, &entry.agent_id, &entry.queue_id, mark)?;
        Ok(Some(Ok(Outcome::Stored(s.last))))
    }

    /// Applies a `Resolve` inside the transaction; the high-water mark, or why the stream
    /// is refused (a `Rejected` outcome: this process is a copy of the queue's).
    #[allow(clippy::too_many_arguments)]
    fn resolve(
        &mut self,
        agent: &str,
        queue: &str,
        confirm_upto: u64,
        delivered_upto: u64,
        (instance, inherited_upto): (u64, u64),
        (j, m, q): Tables<'_, '_>,
        inst: &mut InstancesTable<'_>,
        buf: &mut Vec<u8>,
    ) -> Result<Result<u64, crate::wire::Refusal>, JournalError> {
        if self.mark(agent, queue).is_none() {
            let held = self.marks.get(agent).map_or(0, |q| q.len());
            if held >= self.opts.max_queues_per_agent && !self.evict_settled(agent, j, m)? {
                return Ok(Err(crate::wire::Refusal {
                    reason: format!(
                        "agent {agent} already holds {held} queue ids at this sink \
                         (max_queues_per_agent), none of them settled"
                    ),
                    code: 0,
                }));
            }
            self.marks
                .entry(agent.to_string())
                .or_default()
                .insert(queue.to_string(), Mark::default());
        }
        let mut mark = self.mark(agent, queue).unwrap_or_default();
        if instance != 0 && mark.instance != instance {
            // A new process of this queue. A restart inherited everything its predecessors
            // committed, so everything they sent here; holding more means the seqs came
            // from another copy of the data directory, and this one's records with the
            // same seqs would be dropped as duplicates.
            if mark.instance != 0 && mark.hwm > inherited_upto {
                tracing::error!(
                    %agent, %queue, held = mark.hwm, inherited_upto,
                    "two copies of one agent queue (a cloned or restored data directory?): \
                     the newcomer is told to take a new queue id"
                );
                return Ok(Err(crate::wire::Refusal {
                    reason: format!(
                        "this sink holds seqs of queue {queue} up to {} but this agent process \
                         inherited only up to {inherited_upto}: another copy of its data \
                         directory sent them; take a new queue id",
                        mark.hwm
                    ),
                    code: crate::wire::REFUSED_FORKED,
                }));
            }
            inst.insert((agent, queue), instance).map_err(db)?;
            mark.instance = instance;
        }
        let ours = mark.confirmed.max(confirm_upto);
        // Unconfirmed records up to what the agent delivered elsewhere are not ours: drop
        // them, keep the rest. Nothing below `delivered_upto` is ever sent here again.
        let mut top = ours.max(delivered_upto);
        let mut rewrite = Vec::new();
        let mut bad = Vec::new();
        for e in j.iter().map_err(db)? {
            let (k, v) = e.map_err(db)?;
            let Ok(hd) = JournalHeader::decode(v.value()) else {
                continue; // the drainer quarantines it
            };
            if hd.agent_id != agent || hd.queue_id != queue || hd.last_seq <= ours {
                continue;
            }
            let decoded = JournalEntry::decode(v.value())
                .map_err(|e| e.to_string())
                .and_then(|en| en.records().map(|r| (en, r)).map_err(|e| e.to_string()));
            let (mut entry, mut records) = match decoded {
                Ok(x) => x,
                Err(why) => {
                    bad.push((k.value(), why));
                    continue;
                }
            };
            let before = records.len();
            records.retain(|r| r.seq <= ours || r.seq > delivered_upto);
            if records.len() != before {
                tracing::info!(
                    entry = k.value(),
                    dropped = before - records.len(),
                    "discarding records the agent delivered through another sink"
                );
                // Rare: re-encode the batch without them.
                entry.last_seq = records.iter().map(|r| r.seq).max().unwrap_or(0);
                entry.skip_upto = 0;
                entry.batch = Batch {
                    batch_id: 0,
                    records,
                    from_seq: 0,
                }
                .encode_to_vec()
                .into();
                rewrite.push((k.value(), entry));
            } else {
                top = top.max(hd.last_seq);
            }
        }
        for (k, why) in bad {
            if let Some(v) = j.remove(k).map_err(db)? {
                tracing::error!(entry = k, reason = %why, "journal entry does not decode; moved to quarantine");
                quarantine_put(q, &format!("journal entry {k}: {why}"), v.value())?;
            }
        }
        for (k, entry) in rewrite {
            if entry.last_seq == 0 {
                j.remove(k).map_err(db)?;
            } else {
                top = top.max(entry.last_seq);
                buf.clear();
                entry
                    .encode(buf)
                    .map_err(|e| JournalError::Corrupt(k, e.to_string()))?;
                j.insert(k, buf.as_slice()).map_err(db)?;
            }
        }
        mark.confirmed = ours;
        mark.hwm = top;
        self.set_mark(m, agent, queue, mark)?;
        Ok(Ok(top))
    }

    /// Forgets one settled queue of `agent` (everything confirmed, no entry left) to make
    /// room for a new one; whether there was one.
    fn evict_settled(
        &mut self,
        agent: &str,
        j: &mut JournalTable<'_>,
        m: &mut MarksTable<'_>,
    ) -> Result<bool, JournalError> {
        let mut busy: HashSet<String> = HashSet::new();
        for e in j.iter().map_err(db)? {
            let (_, v) = e.map_err(db)?;
            if let Ok(h) = JournalHeader::decode(v.value())
                && h.agent_id == agent
            {
                busy.insert(h.queue_id);
            }
        }
        let Some(queues) = self.marks.get_mut(agent) else {
            return Ok(false);
        };
        let victim = queues
            .iter()
            .filter(|(q, mk)| mk.confirmed >= mk.hwm && !busy.contains(q.as_str()))
            .min_by_key(|(_, mk)| mk.hwm)
            .map(|(q, _)| q.clone());
        let Some(victim) = victim else {
            return Ok(false);
        };
        m.remove((agent, victim.as_str())).map_err(db)?;
        // Its instance row stays until the queue id comes back (rare): bounded by the queue
        // ids the agent ever had, and read only for queues with marks.
        queues.remove(&victim);
        tracing::info!(%agent, queue = %victim, "forgot a settled queue id to make room for a new one");
        Ok(true)
    }

    /// Answers a command that cannot be carried out now; a confirmation is kept for later.
    fn refuse_or_hold(&mut self, cmd: Command, reason: &str) {
        match cmd {
            Command::Confirm { .. } => self.held.push(cmd),
            Command::Reopen => {}
            other => refuse(other, reason),
        }
    }

    /// Closes and reopens the file until that works, refusing what arrives meanwhile.
    fn recover(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.store.failing.store(true, Relaxed);
        let mut backoff = crate::store::Backoff::on(&self.store.medium);
        loop {
            let delay = backoff.next_delay();
            let deadline = std::time::Instant::now() + delay;
            while std::time::Instant::now() < deadline {
                match self.rx.try_recv() {
                    Ok(cmd) => self.refuse_or_hold(cmd, "journal storage is failing; retry later"),
                    Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(
                        deadline
                            .saturating_duration_since(std::time::Instant::now())
                            .min(std::time::Duration::from_millis(10)),
                    ),
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            match self.reopen() {
                Ok(()) => {
                    // Still `failing` until a commit goes through: reopening works on a
                    // full disk too.
                    tracing::warn!("journal storage recovered");
                    self.generation += 1;
                    self.changed.send_replace(self.generation);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal storage still failing");
                }
            }
        }
    }

    fn reopen(&mut self) -> Result<(), JournalError> {
        let mut guard = self.store.db.write().map_err(|_| JournalError::Closed)?;
        drop(guard.take());
        let (d, loaded) = open_file(&self.store.medium, false)?;
        *guard = Some(d);
        (self.next, self.marks) = (loaded.next, loaded.marks);
        self.store
            .reopens
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }
}

type JournalTable<'t> = redb::Table<'t, u64, &'static [u8]>;
type MarksTable<'t> = redb::Table<'t, (&'static str, &'static str), (u64, u64)>;
type InstancesTable<'t> = redb::Table<'t, (&'static str, &'static str), u64>;
type QuarantineTable<'t> = redb::Table<'t, u64, (u64, &'static str, &'static [u8])>;
/// The journal, marks and quarantine tables of one write transaction.
type Tables<'a, 't> = (
    &'a mut JournalTable<'t>,
    &'a mut MarksTable<'t>,
    &'a mut QuarantineTable<'t>,
);

/// Answers a command that will not be carried out.
fn refuse(cmd: Command, reason: &str) {
    match cmd {
        Command::Submit(s) => {
            let _ = s.done.send(Err(reason.to_string()));
        }
        Command::Resolve { done, .. } => {
            let _ = done.send(Err(crate::wire::Refusal {
                reason: reason.to_string(),
                code: 0,
            }));
        }
        Command::Confirm { .. } | Command::Reopen => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `Journal::resolve` for an agent that does not tell its process (no fork check).
    async fn resolve_t(
        j: &Journal,
        agent: &str,
        queue: &str,
        c: u64,
        d: u64,
    ) -> Result<u64, String> {
        let r = crate::wire::Resolve {
            confirm_upto: c,
            delivered_upto: d,
            ..Default::default()
        };
        j.resolve(agent, queue, &r).await.map_err(|r| r.reason)
    }
    use crate::wire::{Header, scan_batch};

    /// An encoded batch of seqs `from..=to`, payloads `r<seq>`.
    pub(crate) fn encode(from: u64, to: u64) -> bytes::Bytes {
        let records: Vec<Record> = (from..=to)
            .map(|seq| Record {
                seq,
                payload: format!("r{seq}").into_bytes().into(),
                ..Default::default()
            })
            .collect();
        Batch {
            batch_id: 1,
            records,
            from_seq: from,
        }
        .encode_to_vec()
        .into()
    }

    async fn try_put(j: &Journal, agent: &str, from: u64, to: u64) -> Result<Outcome, String> {
        let batch = encode(from, to);
        let info = scan_batch(&batch).unwrap();
        j.submit(agent, "q", batch, &info, 0)
            .await
            .unwrap()
            .await
            .unwrap()
    }

    /// Issue 12, defect 3 (the journal's part): a restarted agent process (it inherited
    /// every seq the sink holds) is accepted; a copy of the data directory that did not
    /// inherit them is refused as forked, and batches from a process that another one
    /// took over from are refused. A process that does not tell its instance is not checked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_of_a_queue_is_refused_as_forked_and_a_restart_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let resolve = |instance: u64, inherited_upto: u64| crate::wire::Resolve {
            instance,
            inherited_upto,
            ..Default::default()
        };
        let submit = |from: u64, to: u64, instance: u64| {
            let j = j.clone();
            async move {
                let batch = encode(from, to);
                let info = scan_batch(&batch).unwrap();
                j.submit("a", "q", batch, &info, instance)
                    .await
                    .unwrap()
                    .await
                    .unwrap()
            }
        };
        assert_eq!(j.resolve("a", "q", &resolve(1, 0)).await, Ok(0));
        assert_eq!(submit(1, 10, 1).await, Ok(Outcome::Stored(10)));
        // Process 2 restarted from the file that held seq 10: a successor.
        assert_eq!(j.resolve("a", "q", &resolve(2, 10)).await, Ok(10));
        assert!(
            submit(11, 12, 1).await.is_err(),
            "the old process's stream is taken over"
        );
        assert_eq!(submit(11, 20, 2).await, Ok(Outcome::Stored(20)));
        // Process 3 runs from a copy taken at seq 10: the sink holds 20 it never had.
        let refused = j.resolve("a", "q", &resolve(3, 10)).await.unwrap_err();
        assert_eq!(
            refused.code,
            crate::wire::REFUSED_FORKED,
            "{}",
            refused.reason
        );
        // Process 2 goes on; the instance survives a reopen of the file.
        drop(j);
        // The writer thread lets go of the file once it sees the last handle gone.
        let mut reopened = Journal::open(dir.path());
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            reopened = Journal::open(dir.path());
        }
        let j = reopened.unwrap();
        assert_eq!(j.resolve("a", "q", &resolve(2, 10)).await, Ok(20));
        let refused = j.resolve("a", "q", &resolve(3, 10)).await.unwrap_err();
        assert_eq!(refused.code, crate::wire::REFUSED_FORKED);
        assert_eq!(
            resolve_t(&j, "a", "q", 0, 0).await,
            Ok(20),
            "unchecked: instance 0"
        );
    }

    async fn put(j: &Journal, agent: &str, from: u64, to: u64) {
        try_put(j, agent, from, to).await.unwrap();
    }

    fn drainable_seqs(j: &Journal) -> Vec<u64> {
        j.read_drainable(usize::MAX)
            .unwrap()
            .entries
            .into_iter()
            .flat_map(|(_, e)| e.records.into_iter().map(|r| r.seq))
            .collect()
    }

    /// Acks lost in a failover: the journal holds 1..=10, the agent recorded only 1..=4 as
    /// acked here and delivered 5..=8 through another sink. Resolve keeps 1..=4 (ours,
    /// drainable), discards 5..=8, keeps 9..=10 unconfirmed (the agent still has them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resolve_discards_what_went_elsewhere_and_outputs_only_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        resolve_t(&j, "a", "q", 0, 0).await.unwrap();
        resolve_t(&j, "b", "q", 0, 0).await.unwrap();
        put(&j, "a", 1, 6).await;
        put(&j, "a", 7, 10).await;
        assert!(
            drainable_seqs(&j).is_empty(),
            "nothing is output before the agent confirms"
        );
        let hwm = resolve_t(&j, "a", "q", 4, 8).await.unwrap();
        assert_eq!(hwm, 10, "9 and 10 are still held here");
        assert_eq!(drainable_seqs(&j), vec![1, 2, 3, 4]);
        // Seqs 5..=8 are gone for good: a confirm up to 10 outputs only 9 and 10 more.
        j.confirm("a", "q", 10).await.unwrap();
        put(&j, "b", 1, 1).await; // flush the writer
        assert_eq!(drainable_seqs(&j), vec![1, 2, 3, 4, 9, 10]);
    }

    /// A resent batch that overlaps what is held is journaled as received, its duplicate
    /// head only marked; the outputs see every seq once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_resend_outputs_each_seq_once() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        resolve_t(&j, "a", "q", 0, 0).await.unwrap();
        resolve_t(&j, "b", "q", 0, 0).await.unwrap();
        put(&j, "a", 1, 6).await;
        put(&j, "a", 4, 8).await;
        put(&j, "a", 2, 5).await; // entirely old: not journaled at all
        j.confirm("a", "q", 8).await.unwrap();
        put(&j, "b", 1, 1).await; // flush the writer
        assert_eq!(drainable_seqs(&j), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    }

    /// Issue 12, defect 2: after a failed commit (a full disk) the next batch of the same
    /// stream committed, the high-water mark jumped over the missing seqs, and the resend
    /// was acked as a duplicate: the agent deleted records the sink never had. Now a batch
    /// that does not follow on from what the journal holds is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_commit_leaves_no_gap_in_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        resolve_t(&j, "a", "q", 0, 0).await.unwrap();
        j.fail_next_commit();
        assert!(try_put(&j, "a", 1, 3).await.is_err(), "the commit failed");
        // Wait out the writer's reopen (it refuses everything meanwhile).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let later = loop {
            match try_put(&j, "a", 4, 6).await {
                Err(e) if e.contains("failing") && std::time::Instant::now() < until => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                other => break other,
            }
        };
        let refused = later.expect_err("4..=6 would leave 1..=3 missing");
        assert!(refused.contains("gap"), "{refused}");
        // The resend from the agent's ack mark is stored, not taken for a duplicate.
        assert_eq!(try_put(&j, "a", 1, 3).await, Ok(Outcome::Stored(3)));
        assert_eq!(try_put(&j, "a", 4, 6).await, Ok(Outcome::Stored(6)));
        j.confirm("a", "q", 6).await.unwrap();
        assert_eq!(resolve_t(&j, "a", "q", 6, 6).await, Ok(6));
        assert_eq!(drainable_seqs(&j), vec![1, 2, 3, 4, 5, 6]);
    }

    /// Issue 12, defect 1: an entry that does not decode (stored before batches were
    /// checked, or a flipped bit) stopped the drain for every agent and made every
    /// `Resolve` naming it fail. Now it is quarantined and the rest goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undecodable_journal_entry_is_quarantined_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        resolve_t(&j, "a", "q", 0, 0).await.unwrap();
        resolve_t(&j, "bad", "q", 0, 0).await.unwrap();
        // A record whose `source` is not UTF-8, as a v1 sink journaled it unchecked.
        let mut rec = Vec::new();
        prost::encoding::uint64::encode(1, &1u64, &mut rec);
        prost::encoding::bytes::encode(3, &vec![0xffu8, 0xfe], &mut rec);
        let mut batch = Vec::new();
        prost::encoding::bytes::encode(2, &rec, &mut batch);
        let entry = JournalEntry {
            agent_id: "bad".into(),
            queue_id: "q".into(),
            last_seq: 1,
            batch: batch.into(),
            skip_upto: 0,
        }
        .encode_to_vec();
        j.with_db(|d| {
            let txn = d.begin_write().map_err(db)?;
            {
                let mut t = txn.open_table(JOURNAL).map_err(db)?;
                t.insert(1000, entry.as_slice()).map_err(db)?;
                t.insert(1001, &[0xff, 0xff, 0xff][..]).map_err(db)?;
            }
            txn.commit().map_err(db)
        })
        .unwrap();
        put(&j, "a", 1, 2).await;
        j.confirm("a", "q", 2).await.unwrap();
        // Resolve scans the entries of (bad, q) and must not fail on them.
        assert_eq!(resolve_t(&j, "bad", "q", 1, 0).await, Ok(1));
        let round = j.read_drainable(usize::MAX).unwrap();
        let seqs: Vec<u64> = round
            .entries
            .iter()
            .flat_map(|(_, e)| e.records.iter().map(|r| r.seq))
            .collect();
        assert_eq!(seqs, vec![1, 2], "the good agent's records drain");
        j.with_db(|d| {
            let txn = d.begin_write().map_err(db)?;
            quarantine_entries(&txn, &round.bad)?;
            txn.commit().map_err(db)
        })
        .unwrap();
        assert_eq!(j.quarantined().unwrap(), 2);
        assert!(j.read_drainable(usize::MAX).unwrap().bad.is_empty());
    }

    /// Issue 12, defect 1: an invalid batch is not stored; the mark moves over it (so the
    /// agent's next batch follows on), it is noted in the quarantine, and a resend of it is
    /// rejected again rather than acked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_batch_is_rejected_and_the_queue_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        resolve_t(&j, "a", "q", 0, 0).await.unwrap();
        let mut bad = Batch {
            batch_id: 1,
            records: vec![Record {
                seq: 1,
                headers: vec![Header {
                    name: "h".into(),
                    value: "v".into(),
                }],
                ..Default::default()
            }],
            from_seq: 1,
        }
        .encode_to_vec();
        // Turn the header value's `v` into a byte that is not UTF-8.
        let at = bad.iter().rposition(|b| *b == b'v').unwrap();
        bad[at] = 0xff;
        let bad = bytes::Bytes::from(bad);
        let info = scan_batch(&bad).unwrap();
        assert!(info.invalid.is_some());
        for _ in 0..2 {
            let out = j
                .submit("a", "q", bad.clone(), &info, 0)
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(matches!(out, Ok(Outcome::Rejected(_))), "{out:?}");
        }
        put(&j, "a", 2, 3).await;
        j.confirm("a", "q", 3).await.unwrap();
        assert_eq!(resolve_t(&j, "a", "q", 3, 3).await, Ok(3));
        assert_eq!(drainable_seqs(&j), vec![2, 3]);
        assert_eq!(j.quarantined().unwrap(), 1);
    }

    /// The quarantine grew by a row (up to 64 KiB) per rejected batch without bound, so
    /// one agent sending invalid batches could fill the sink's disk for everyone. It keeps
    /// the newest [`QUARANTINE_MAX_ROWS`]; ids go on rising.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quarantine_of_rejected_batches_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        resolve_t(&j, "a", "q", 0, 0).await.unwrap();
        let n = QUARANTINE_MAX_ROWS + 10;
        for seq in 1..=n {
            let mut bad = Batch {
                batch_id: seq,
                records: vec![Record {
                    seq,
                    source: "mark!".into(),
                    ..Default::default()
                }],
                from_seq: seq,
            }
            .encode_to_vec();
            // The source's first byte becomes one that is not UTF-8.
            let at = bad.windows(5).position(|w| w == b"mark!").unwrap();
            bad[at] = 0xff;
            let bad = bytes::Bytes::from(bad);
            let info = scan_batch(&bad).unwrap();
            assert!(info.invalid.is_some());
            let out = j
                .submit("a", "q", bad, &info, 0)
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(matches!(out, Ok(Outcome::Rejected(_))), "{out:?}");
        }
        assert_eq!(j.quarantined().unwrap(), QUARANTINE_MAX_ROWS);
        let newest = j
            .store
            .with_db(|d| {
                let txn = d.begin_read().map_err(db)?;
                let q = txn.open_table(QUARANTINE).map_err(db)?;
                let first = q.first().map_err(db)?.map(|(k, _)| k.value());
                let last = q.last().map_err(db)?.map(|(k, _)| k.value());
                Ok((first, last))
            })
            .unwrap();
        assert_eq!(newest, (Some(11), Some(n)), "the oldest rows went");
    }

    /// Issue 12, defect 17: marks were keyed `"{agent}/{queue}"`, so agent `edge-1/x` with
    /// queue `q` and agent `edge-1` with queue `x/q` shared one mark. Keys are tuples now.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slash_in_agent_name_does_not_share_marks() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        resolve_t(&j, "edge-1/x", "q", 0, 0).await.unwrap();
        let batch = encode(1, 50);
        let info = scan_batch(&batch).unwrap();
        j.submit("edge-1/x", "q", batch, &info, 0)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resolve_t(&j, "edge-1", "x/q", 0, 0).await, Ok(0));
        assert_eq!(resolve_t(&j, "edge-1/x", "q", 0, 0).await, Ok(50));
    }

    /// Issue 12, defect 17: a version-1 journal (string keys) is migrated on open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_1_journal_is_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let d = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = d.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("format_version", 1).unwrap();
                meta.insert("journal_id", 0xabcd).unwrap();
                let mut h = txn.open_table(V1_HWM).unwrap();
                h.insert("edge-1/0123abcd", 40).unwrap();
                h.insert("edge-2/ffff", 7).unwrap();
                let mut c = txn.open_table(V1_CONFIRMED).unwrap();
                c.insert("edge-1/0123abcd", 30).unwrap();
            }
            txn.commit().unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.id(), format!("{:016x}", 0xabcd));
        j.with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let m = txn.open_table(MARKS).map_err(db)?;
            assert_eq!(
                m.get(("edge-1", "0123abcd")).unwrap().unwrap().value(),
                (40, 30)
            );
            assert_eq!(m.get(("edge-2", "ffff")).unwrap().unwrap().value(), (7, 0));
            let meta = txn.open_table(META).map_err(db)?;
            assert_eq!(meta.get("format_version").unwrap().unwrap().value(), 2);
            assert!(txn.open_table(V1_HWM).is_err(), "the v1 tables are gone");
            Ok(())
        })
        .unwrap();
        // The confirmed mark carried over: nothing up to 30 is taken again.
        assert_eq!(resolve_t(&j, "edge-1", "0123abcd", 0, 0).await, Ok(30));
    }

    /// Issue 12, defect 16: queue ids per agent are capped; a settled one makes room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queue_ids_per_agent_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open_with(
            dir.path(),
            JournalOptions {
                max_queues_per_agent: 3,
            },
        )
        .unwrap();
        resolve_t(&j, "a", "q", 0, 0).await.unwrap();
        put(&j, "a", 1, 5).await; // unconfirmed: q is not settled
        for q in ["q1", "q2"] {
            resolve_t(&j, "a", q, 0, 0).await.unwrap();
        }
        // q1 and q2 hold nothing: settled, so a fourth id evicts one of them.
        resolve_t(&j, "a", "q3", 0, 0).await.unwrap();
        resolve_t(&j, "a", "q4", 0, 0).await.unwrap();
        // Now give every held id something unconfirmed: nothing can make room.
        let held: Vec<String> = j
            .with_db(|d| {
                let txn = d.begin_read().map_err(db)?;
                let m = txn.open_table(MARKS).map_err(db)?;
                let mut v = Vec::new();
                for e in m.iter().map_err(db)? {
                    let (k, _) = e.map_err(db)?;
                    v.push(k.value().1.to_string());
                }
                Ok(v)
            })
            .unwrap();
        assert_eq!(held.len(), 3, "{held:?}");
        for q in held.iter().filter(|q| *q != "q") {
            let batch = encode(1, 1);
            let info = scan_batch(&batch).unwrap();
            j.submit("a", q, batch, &info, 0)
                .await
                .unwrap()
                .await
                .unwrap()
                .unwrap();
        }
        let refused = resolve_t(&j, "a", "q5", 0, 0).await.unwrap_err();
        assert!(refused.contains("max_queues_per_agent"), "{refused}");
        // Another agent is not affected.
        assert_eq!(resolve_t(&j, "b", "q5", 0, 0).await, Ok(0));
    }

    /// Issue 12, defect 12: a journal whose bytes were altered failed (or panicked) at
    /// open, and the sink refused to start forever. Now it is set aside, what decodes is
    /// salvaged, and the sink starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_journal_is_set_aside_and_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            resolve_t(&j, "a", "q", 0, 0).await.unwrap();
            for n in 0..50 {
                put(&j, "a", n * 10 + 1, n * 10 + 10).await;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        for off in [4096usize, len / 2, len - 4096] {
            if let Some(b) = bytes.get_mut(off..off + 64) {
                b.iter_mut().for_each(|x| *x ^= 0x5a);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let j = Journal::open(dir.path()).expect("a corrupt journal must not stop the sink");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "the bad file is kept aside");
        // It serves: a resolve and a batch go through.
        let hwm = resolve_t(&j, "a", "q", 0, 0).await.unwrap();
        let out = try_put(&j, "a", hwm + 1, hwm + 5).await;
        assert_eq!(out, Ok(Outcome::Stored(hwm + 5)));
    }
}
