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
//!   here ([`dataweaver_wire::scan_batch`]); an invalid batch is not stored but noted in the
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
//! - **No round reads what it has no use for.** Where each entry stands (unconfirmed, by
//!   agent and queue; confirmed, by entry number) is kept in memory (`index`): a drain
//!   round reads only the entries it outputs, a `Resolve` only its own queue's.
//! - **Bounded unconfirmed bytes per queue.** A queue holding
//!   `max_unconfirmed_bytes_per_queue` of entries its agent has not confirmed has its next
//!   batch refused ([`Refused::Unconfirmed`]) until the agent confirms them (its next
//!   stream's `Resolve` does): one that never confirms cannot fill the disk other agents
//!   need. Per queue, because a queue id its agent left (a restored data directory takes a
//!   new one) may hold unconfirmed entries for good.
//!   Likewise at `max_journal_bytes_per_agent` of entries waiting for the outputs and
//!   unconfirmed in the queue that sends ([`Refused::Share`]):
//!   while the outputs are behind, one agent that sends without pause cannot take the
//!   whole disk (the agents keep the rest in their own queues).
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use dataweaver_store::{Medium, StoreError};
#[cfg(test)]
use dataweaver_wire::Record;
use dataweaver_wire::{Batch, BatchInfo, CheckedBatch, JournalEntry, JournalHeader, RecordView};

mod index;
mod recent;
mod salvage;
mod writer;

use writer::{QuarantineTable, Writer};

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
/// Batches kept in memory for the drain (`recent`): a few commit groups' worth, the
/// backlog of a drain that keeps up.
const RECENT_BYTES: usize = 16 << 20;
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
            StoreError::Reopening => JournalError::Closed,
            StoreError::Panicked(p) => JournalError::Panicked(p),
            other => JournalError::Io(FILE_NAME.into(), std::io::Error::other(other.to_string())),
        }
    }
}

/// Limits the journal enforces.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// Queue ids one agent may hold marks for.
    pub max_queues_per_agent: usize,
    /// Bytes of entries one queue may hold unconfirmed; one entry is always taken.
    pub max_unconfirmed_bytes_per_queue: u64,
    /// Bytes of entries one agent may hold waiting for the outputs, with the sending
    /// queue's unconfirmed ones; one entry is always taken.
    pub max_journal_bytes_per_agent: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            max_queues_per_agent: 64,
            max_unconfirmed_bytes_per_queue: 64 << 20,
            max_journal_bytes_per_agent: 4 << 30,
        }
    }
}

/// Why the journal did not take a batch: the stream that sent it must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The batch came before its queue's `Resolve` on this stream.
    #[error("batch before Resolve")]
    NotResolved,
    /// Another process of this queue resolved since this stream began (a copy of the
    /// data directory): the stream's next `Resolve` tells which one is the copy.
    #[error("another process of this queue took it over; resolve again")]
    TakenOver,
    /// The batch starts past what the journal holds of its queue.
    #[error(
        "batch starts at seq {from} but this journal holds seqs of the queue only up to {hwm}: \
         refusing to store past a gap"
    )]
    Gap {
        /// The batch's first seq.
        from: u64,
        /// The last seq the journal holds of the queue.
        hwm: u64,
    },
    /// The journal's storage is failing or being reopened: the agent retries later.
    #[error("{0}")]
    Unavailable(String),
    /// A `Resolve` for a new queue id of an agent that holds as many unsettled ones here
    /// as it may (`max_queues_per_agent`).
    #[error("{0}")]
    TooManyQueues(String),
    /// The queue holds as many unconfirmed bytes here as it may
    /// (`max_unconfirmed_bytes_per_queue`): its agent confirms them (a new stream's
    /// `Resolve` does) before more is taken.
    #[error("{0}")]
    Unconfirmed(String),
    /// The agent holds as many bytes here as it may (`max_journal_bytes_per_agent`), most
    /// of them waiting for the outputs: it retries once they have drained.
    #[error("{0}")]
    Share(String),
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
    done: oneshot::Sender<Result<Outcome, Refused>>,
}

/// A journal entry for the outputs: its ids, and its batch as the agent sent it, whose
/// records are read in place ([`RecordView`]) rather than decoded into owned ones.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Agent id from the client certificate.
    pub agent_id: String,
    /// The agent's queue id.
    pub queue_id: String,
    /// The batch, duplicates left out.
    batch: CheckedBatch,
}

/// Why a stored journal value is not an [`Entry`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The entry's own fields do not decode.
    #[error("{0}")]
    Entry(#[from] prost::DecodeError),
    /// Its batch does not.
    #[error("records: {0}")]
    Records(#[from] dataweaver_wire::MalformedBatch),
}

impl Entry {
    /// Reads a stored journal value (`journal` table), checking every record of its batch.
    pub fn decode(v: &[u8]) -> Result<Entry, EntryError> {
        Entry::of_journaled(JournalEntry::decode(bytes::Bytes::copy_from_slice(v))?)
    }

    /// A journal entry as the writer stored it, its records checked.
    fn of_journaled(raw: JournalEntry) -> Result<Entry, EntryError> {
        Entry::of_batch(raw.agent_id, raw.queue_id, raw.batch, raw.skip_upto)
    }

    /// An entry of an encoded `Batch`, without its records up to `skip_upto`.
    pub fn of_batch(
        agent_id: String,
        queue_id: String,
        batch: bytes::Bytes,
        skip_upto: u64,
    ) -> Result<Entry, EntryError> {
        Ok(Entry {
            agent_id,
            queue_id,
            batch: CheckedBatch::new(batch, skip_upto)?,
        })
    }

    /// The records, duplicates removed, in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordView<'_>> + '_ {
        self.batch.records()
    }

    /// How many records `records` yields.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// An entry of `records`, as the journal would hold them.
    #[cfg(test)]
    pub(crate) fn of_records(agent_id: &str, queue_id: &str, records: Vec<Record>) -> Entry {
        let batch = Batch {
            records,
            ..Default::default()
        };
        let bytes = batch.encode_to_vec().into();
        Entry::of_batch(agent_id.into(), queue_id.into(), bytes, 0).expect("encoded by prost")
    }
}

/// One round for the outputs: entries to write, and entries to quarantine.
#[derive(Debug, Default)]
pub struct Drainable {
    /// Confirmed entries, oldest first.
    pub entries: Vec<(u64, Entry)>,
    /// Entries that do not decode, with the reason: move them with `quarantine_entries`.
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
        done: oneshot::Sender<Result<u64, dataweaver_wire::Refusal>>,
    },
    /// Storage failed elsewhere (the drainer): close and reopen the file.
    Reopen,
}

/// The journal file as its readers and its writer share it (closed and reopened by the
/// writer after a storage failure: redb latches an I/O error until then).
struct Store {
    slot: dataweaver_store::Slot,
    /// Confirmed entries waiting for the outputs.
    ready: index::Ready,
    /// Batches journaled by this process that the drain has not read yet.
    recent: recent::Recent,
    /// Test hook: the next commit fails as a full disk would.
    #[cfg(test)]
    fail_next_commit: std::sync::atomic::AtomicBool,
}

impl Store {
    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, JournalError>,
    ) -> Result<R, JournalError> {
        self.slot.read(f)
    }
}

/// Opens the database and reads its state, turning a panic of redb into an error.
fn open_file(medium: &Medium, check: bool) -> Result<(Database, Loaded), JournalError> {
    catch(move || {
        // redb's 1 GiB default would show as RSS. An entry is read twice, by the drainer and
        // by the deletion (redb reads a page to remove it), and rewritten when a deletion
        // merges its neighbour: with the cache smaller than the entries between a write
        // and its deletion, each of those goes to the file. 8 MiB (16 pages of 512 KiB)
        // cut the sink's reads by 40 % and its CPU per record by 12 % for 5 MiB of RSS
        // (`cargo bench --bench pipeline -- --only e2e`, docs/benchmarks.md).
        let d = medium.open(8 << 20, check)?;
        let loaded = init(&d)?;
        Ok((d, loaded))
    })
}

/// Runs `f`, turning a panic into [`JournalError::Panicked`].
fn catch<R>(f: impl FnOnce() -> Result<R, JournalError>) -> Result<R, JournalError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(JournalError::Panicked(
            dataweaver_store::writer::panic_text(&p),
        )),
    }
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
        dataweaver_store::fsmode::data_dir(dir).map_err(|e| JournalError::Io(dir.into(), e))?;
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
        let ready = index::Ready::default();
        ready.replace(loaded.ready);
        let store = Arc::new(Store {
            slot: dataweaver_store::Slot::new(medium, database),
            ready,
            recent: recent::Recent::new(RECENT_BYTES),
            #[cfg(test)]
            fail_next_commit: Default::default(),
        });
        let (changed_tx, changed) = watch::channel(0);
        let (tx, mut rx) = mpsc::channel(256);
        let mut writer = Writer {
            store: store.clone(),
            next: loaded.next,
            marks: loaded.marks,
            unconfirmed: loaded.unconfirmed,
            opts,
            changed: changed_tx,
            generation: 0,
            held: Vec::new(),
            owe_commit: false,
            commit_empty: false,
            followed: false,
            commit_failed: false,
        };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                let store = writer.store.clone();
                dataweaver_store::writer::run(
                    "journal",
                    &store.slot,
                    &mut rx,
                    &mut writer,
                    writer::GROUPING,
                )
            })
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
        self.store.slot.failing()
    }

    /// Times the file was reopened after a storage failure: a drainer whose commit failed
    /// waits for the next one before it reads back what was committed.
    pub fn reopens(&self) -> u64 {
        self.store.slot.reopens()
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
        r: &dataweaver_wire::Resolve,
    ) -> Result<u64, dataweaver_wire::Refusal> {
        let closed = || dataweaver_wire::Refusal {
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

    /// Queues an encoded `Batch` (checked by [`dataweaver_wire::scan_batch`], which gave
    /// `info`) for the next commit. The receiver yields what became of it, or the reason
    /// it was not taken (the stream must end then).
    pub async fn submit(
        &self,
        agent_id: &str,
        queue_id: &str,
        batch: bytes::Bytes,
        info: &BatchInfo,
        instance: u64,
    ) -> Result<oneshot::Receiver<Result<Outcome, Refused>>, JournalError> {
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
    /// way that do not decode. Reads only those entries. Blocking.
    pub fn read_drainable(&self, max_bytes: usize) -> Result<Drainable, JournalError> {
        loop {
            let keys = self.store.ready.oldest(max_bytes);
            if keys.is_empty() {
                return Ok(Drainable::default());
            }
            // Batches kept in memory first; the file only for the others.
            let mut slots: Vec<(u64, Option<Result<Entry, EntryError>>)> = keys
                .into_iter()
                .map(|k| (k, self.store.recent.take(k).map(Entry::of_journaled)))
                .collect();
            let mut gone = Vec::new();
            if slots.iter().any(|(_, e)| e.is_none()) {
                gone = self.store.with_db(|d| {
                    let txn = d.begin_read().map_err(db)?;
                    let t = txn.open_table(JOURNAL).map_err(db)?;
                    let mut gone = Vec::new();
                    for (k, slot) in slots.iter_mut().filter(|(_, e)| e.is_none()) {
                        // Not in the file: never expected (entries leave the index when
                        // they leave the file), but a round of such keys must not end the
                        // drain while others wait.
                        match t.get(*k).map_err(db)? {
                            Some(v) => *slot = Some(Entry::decode(v.value())),
                            None => gone.push(*k),
                        }
                    }
                    Ok(gone)
                })?;
            }
            let mut out = Drainable::default();
            for (k, entry) in slots {
                match entry {
                    Some(Ok(entry)) => out.entries.push((k, entry)),
                    Some(Err(why)) => out.bad.push((k, why.to_string())),
                    None => {} // gone
                }
            }
            let retry = out.entries.is_empty() && out.bad.is_empty() && !gone.is_empty();
            if !gone.is_empty() {
                tracing::warn!(
                    entries = gone.len(),
                    "journal index named entries the file does not hold; forgotten"
                );
                self.store.ready.remove(gone);
            }
            if !retry {
                return Ok(out);
            }
        }
    }

    /// After the drainer's round committed: its entries (drained or quarantined) are no
    /// longer waiting for the outputs.
    pub(crate) fn drained(&self, keys: impl IntoIterator<Item = u64>) {
        self.store.ready.remove(keys);
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
    /// Entries waiting for their agent's confirmation.
    unconfirmed: index::Unconfirmed,
    /// Confirmed entries, and entries whose header does not decode (the drainer
    /// quarantines them).
    ready: std::collections::BTreeMap<u64, index::ReadyEntry>,
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
        let (unconfirmed, ready) = index_entries(&j, &marks)?;
        out = Loaded {
            next,
            marks,
            id,
            unconfirmed,
            ready,
        };
    }
    txn.commit().map_err(self::db)?;
    Ok(out)
}

/// Reads where each entry stands: once per open, so that no later round has to.
fn index_entries(
    j: &impl ReadableTable<u64, &'static [u8]>,
    marks: &Marks,
) -> Result<
    (
        index::Unconfirmed,
        std::collections::BTreeMap<u64, index::ReadyEntry>,
    ),
    JournalError,
> {
    let mut unconfirmed = index::Unconfirmed::default();
    let mut ready = std::collections::BTreeMap::new();
    for e in j.iter().map_err(db)? {
        let (k, v) = e.map_err(db)?;
        let bytes = v.value().len() as u64;
        let Ok(h) = JournalHeader::decode(v.value()) else {
            ready.insert(k.value(), index::ReadyEntry::new(bytes, "", ""));
            continue;
        };
        let confirmed = marks
            .get(&h.agent_id)
            .and_then(|q| q.get(&h.queue_id))
            .map_or(0, |m| m.confirmed);
        if h.last_seq <= confirmed {
            let entry = index::ReadyEntry::new(bytes, &h.agent_id, &h.queue_id);
            ready.insert(k.value(), entry);
        } else {
            let w = index::Waiting {
                key: k.value(),
                last_seq: h.last_seq,
                bytes,
            };
            unconfirmed.push(&h.agent_id, &h.queue_id, w);
        }
    }
    Ok((unconfirmed, ready))
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

#[cfg(test)]
pub(crate) mod tests;
