//! The sink's journal: received batches, durable before they are acknowledged, drained to
//! the outputs only once the agent has confirmed this sink owns them.
//!
//! # Design constraints
//! - One writer thread, group commit (as in the agent's queue).
//! - De-duplication by high-water mark per (agent id, queue id): a record whose seq is at or
//!   below the mark is dropped; the mark is updated in the same transaction as the records,
//!   and in memory only after that transaction committed.
//! - **Ownership before output.** An ack can be lost when a sink dies; the agent then sends
//!   the batch to another sink. So an entry is drained only after the agent *confirmed* it
//!   (`Confirm` frame, or `Hello.confirm_upto`): the agent confirms only seqs it recorded
//!   durably as acknowledged by this sink. At `Hello`, unconfirmed entries whose seqs the
//!   agent reports as delivered elsewhere (`delivered_upto`) are discarded. Together: a
//!   record reaches exactly one sink's outputs, even across failover.
//! - The drainer deletes drained entries in the transaction that records its output
//!   positions; unconfirmed entries stay until confirmed or discarded.
//!
//! # On-disk layout (format version 1)
//! - `journal`: `u64` entry number → protobuf `JournalEntry` (see `wire/dataweaver.proto`)
//! - `hwm`: `"<agent>/<queue>"` → `u64` highest durable seq
//! - `confirmed`: `"<agent>/<queue>"` → `u64` highest seq the agent confirmed as ours
//! - `cursor`: output name → output-defined bytes
//! - `meta`: `format_version`

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use crate::wire::{Batch, JournalEntry, JournalHeader, Record};

/// On-disk format version.
pub const FORMAT_VERSION: u64 = 1;
pub(crate) const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const HWM: TableDefinition<&str, u64> = TableDefinition::new("hwm");
pub(crate) const CONFIRMED: TableDefinition<&str, u64> = TableDefinition::new("confirmed");
/// Output positions; shared with the drainer.
pub(crate) const CURSOR: TableDefinition<&str, &[u8]> = TableDefinition::new("cursor");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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

/// The (agent, queue) key of marks.
pub(crate) fn mark_key(agent: &str, queue: &str) -> String {
    format!("{agent}/{queue}")
}

struct Submit {
    key: String,
    agent_id: String,
    queue_id: String,
    /// The encoded `Batch`.
    batch: bytes::Bytes,
    first: u64,
    /// Last seq of the batch as sent (what the ack names).
    last: u64,
    done: oneshot::Sender<Result<u64, String>>,
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

enum Command {
    Submit(Submit),
    /// The agent confirms seqs up to `upto` as ours.
    Confirm {
        key: String,
        upto: u64,
    },
    /// A stream starts: confirm up to `confirm_upto`, discard unconfirmed entries up to
    /// `delivered_upto`, answer the high-water mark.
    Resolve {
        key: String,
        confirm_upto: u64,
        delivered_upto: u64,
        done: oneshot::Sender<Result<u64, String>>,
    },
    /// Storage failed elsewhere (the drainer): close and reopen the file.
    Reopen,
}

/// The journal file, closed and reopened by the writer after a storage failure (redb
/// latches an I/O error until the database is reopened).
struct Store {
    path: PathBuf,
    /// `None` only while being reopened; readers hold the read guard for their transaction.
    db: RwLock<Option<Database>>,
    /// A commit failed and the file is not yet reopened: batches are refused meanwhile.
    failing: std::sync::atomic::AtomicBool,
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

fn open_database(path: &Path) -> Result<Database, JournalError> {
    crate::fsmode::private_file(path).map_err(|e| JournalError::Io(path.into(), e))?;
    // Entries are read once, right after they were written (still in the OS page cache), so
    // redb's own cache can stay small; its 1 GiB default would show as RSS.
    Database::builder()
        .set_cache_size(4 << 20)
        .create(path)
        .map_err(db)
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
    /// Opens (or creates) `journal.redb` in `dir` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        crate::fsmode::data_dir(dir).map_err(|e| JournalError::Io(dir.into(), e))?;
        let path = dir.join("journal.redb");
        let database = open_database(&path)?;
        let (next, hwm, confirmed, id) = init(&database)?;
        let store = Arc::new(Store {
            path,
            db: RwLock::new(Some(database)),
            failing: Default::default(),
        });
        let (changed_tx, changed) = watch::channel(0);
        let (tx, rx) = mpsc::channel(256);
        let writer = Writer {
            store: store.clone(),
            rx,
            next,
            hwm,
            confirmed,
            changed: changed_tx,
            generation: 0,
        };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::Io(dir.into(), e))?;
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
    /// delivered-elsewhere mark, and returns the high-water mark to put in `Resolved`.
    pub async fn resolve(
        &self,
        agent_id: &str,
        queue_id: &str,
        confirm_upto: u64,
        delivered_upto: u64,
    ) -> Result<u64, String> {
        let (done, rx) = oneshot::channel();
        let key = mark_key(agent_id, queue_id);
        self.tx
            .send(Command::Resolve {
                key,
                confirm_upto,
                delivered_upto,
                done,
            })
            .await
            .map_err(|_| "journal closed".to_string())?;
        rx.await.map_err(|_| "journal closed".to_string())?
    }

    /// Records the agent's confirmation that seqs up to `upto` belong to this sink.
    pub async fn confirm(
        &self,
        agent_id: &str,
        queue_id: &str,
        upto: u64,
    ) -> Result<(), JournalError> {
        let key = mark_key(agent_id, queue_id);
        self.tx
            .send(Command::Confirm { key, upto })
            .await
            .map_err(|_| JournalError::Closed)
    }

    /// Queues an encoded `Batch` with seqs `first..=last` for the next commit. The receiver
    /// yields `last` once every record of it is durable (or was already), or the reason it
    /// is not.
    pub async fn submit(
        &self,
        agent_id: &str,
        queue_id: &str,
        batch: bytes::Bytes,
        first: u64,
        last: u64,
    ) -> Result<oneshot::Receiver<Result<u64, String>>, JournalError> {
        let (done, rx) = oneshot::channel();
        let s = Submit {
            key: mark_key(agent_id, queue_id),
            agent_id: agent_id.into(),
            queue_id: queue_id.into(),
            batch,
            first,
            last,
            done,
        };
        self.tx
            .send(Command::Submit(s))
            .await
            .map_err(|_| JournalError::Closed)?;
        Ok(rx)
    }

    /// Confirmed entries ready for the outputs, oldest first: at least one if any, then
    /// more while their encoded size stays under `max_bytes`. Blocking.
    pub fn read_drainable(&self, max_bytes: usize) -> Result<Vec<(u64, Entry)>, JournalError> {
        self.store.with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let t = txn.open_table(JOURNAL).map_err(db)?;
            let confirmed = txn.open_table(CONFIRMED).map_err(db)?;
            let mut marks: HashMap<String, u64> = HashMap::new();
            let mut out = Vec::new();
            let mut bytes = 0;
            for e in t.iter().map_err(db)? {
                let (k, v) = e.map_err(db)?;
                let h = JournalHeader::decode(v.value())
                    .map_err(|e| JournalError::Corrupt(k.value(), e.to_string()))?;
                let key = mark_key(&h.agent_id, &h.queue_id);
                let mark = match marks.get(&key) {
                    Some(m) => *m,
                    None => {
                        let m = confirmed
                            .get(key.as_str())
                            .map_err(db)?
                            .map_or(0, |v| v.value());
                        marks.insert(key, m);
                        m
                    }
                };
                if h.last_seq > mark {
                    continue; // not ours yet
                }
                bytes += v.value().len();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                // One copy of the entry; record payloads then slice it.
                let raw = JournalEntry::decode(bytes::Bytes::copy_from_slice(v.value()))
                    .map_err(|e| JournalError::Corrupt(k.value(), e.to_string()))?;
                let records = raw
                    .records()
                    .map_err(|e| JournalError::Corrupt(k.value(), e.to_string()))?;
                let entry = Entry {
                    agent_id: raw.agent_id,
                    queue_id: raw.queue_id,
                    records,
                };
                out.push((k.value(), entry));
            }
            Ok(out)
        })
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

type Marks = HashMap<String, u64>;

fn init(db: &Database) -> Result<(u64, Marks, Marks, u64), JournalError> {
    let txn = db.begin_write().map_err(db_)?;
    let out;
    {
        let mut meta = txn.open_table(META).map_err(db_)?;
        let v = meta.get("format_version").map_err(db_)?.map(|v| v.value());
        match v {
            None => {
                meta.insert("format_version", FORMAT_VERSION).map_err(db_)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => return Err(JournalError::Format(other)),
        }
        let stored = meta.get("journal_id").map_err(db_)?.map(|v| v.value());
        let id = match stored {
            Some(id) => id,
            None => {
                let id = fastrand::u64(1..);
                meta.insert("journal_id", id).map_err(db_)?;
                id
            }
        };
        let j = txn.open_table(JOURNAL).map_err(db_)?;
        // Entry numbers only order entries; one freed by the drainer may be used again.
        let next = j.last().map_err(db_)?.map_or(0, |(k, _)| k.value()) + 1;
        txn.open_table(CURSOR).map_err(db_)?;
        let read = |def: TableDefinition<&str, u64>| -> Result<Marks, JournalError> {
            let t = txn.open_table(def).map_err(db_)?;
            let mut m = HashMap::new();
            for e in t.iter().map_err(db_)? {
                let (k, v) = e.map_err(db_)?;
                m.insert(k.value().to_string(), v.value());
            }
            Ok(m)
        };
        out = (next, read(HWM)?, read(CONFIRMED)?, id);
    }
    txn.commit().map_err(db_)?;
    Ok(out)
}

fn db_<E: Into<redb::Error>>(e: E) -> JournalError {
    db(e)
}

struct Writer {
    store: Arc<Store>,
    rx: mpsc::Receiver<Command>,
    next: u64,
    hwm: Marks,
    confirmed: Marks,
    changed: watch::Sender<u64>,
    generation: u64,
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
        }
    }

    fn commit(&mut self, mut batch: Vec<Command>) {
        let mut hwm = self.hwm.clone();
        let mut confirmed = self.confirmed.clone();
        let mut next = self.next;
        let mut resolved: Vec<u64> = Vec::new();
        if batch.iter().any(|c| matches!(c, Command::Reopen)) {
            batch.retain(|c| !matches!(c, Command::Reopen));
            self.recover();
        }
        let store = self.store.clone();
        let guard = match store.db.read() {
            Ok(g) => g,
            Err(_) => return,
        };
        let result = (|| -> Result<(), JournalError> {
            let d = guard.as_ref().ok_or(JournalError::Closed)?;
            let txn = d.begin_write().map_err(db)?;
            {
                let mut j = txn.open_table(JOURNAL).map_err(db)?;
                let mut h = txn.open_table(HWM).map_err(db)?;
                let mut c = txn.open_table(CONFIRMED).map_err(db)?;
                let mut buf = Vec::new();
                for cmd in &mut batch {
                    match cmd {
                        Command::Submit(s) => {
                            let mark = hwm.get(&s.key).copied().unwrap_or(0);
                            if s.last <= mark {
                                continue; // all duplicates
                            }
                            // Kept as received; duplicates at its start are only marked.
                            let entry = JournalEntry {
                                agent_id: s.agent_id.clone(),
                                queue_id: s.queue_id.clone(),
                                last_seq: s.last,
                                batch: std::mem::take(&mut s.batch),
                                skip_upto: if s.first <= mark { mark } else { 0 },
                            };
                            buf.clear();
                            entry
                                .encode(&mut buf)
                                .map_err(|e| JournalError::Corrupt(next, e.to_string()))?;
                            j.insert(next, buf.as_slice()).map_err(db)?;
                            next += 1;
                            h.insert(s.key.as_str(), s.last).map_err(db)?;
                            hwm.insert(s.key.clone(), s.last);
                        }
                        Command::Reopen => {}
                        Command::Confirm { key, upto } => {
                            if confirmed.get(key).is_none_or(|m| *upto > *m) {
                                c.insert(key.as_str(), *upto).map_err(db)?;
                                confirmed.insert(key.clone(), *upto);
                            }
                        }
                        Command::Resolve {
                            key,
                            confirm_upto,
                            delivered_upto,
                            ..
                        } => {
                            let ours = confirmed.get(key).copied().unwrap_or(0).max(*confirm_upto);
                            c.insert(key.as_str(), ours).map_err(db)?;
                            confirmed.insert(key.clone(), ours);
                            // Unconfirmed records up to what the agent delivered elsewhere
                            // are not ours: drop them, keep the rest.
                            let mut top = ours;
                            let mut rewrite = Vec::new();
                            for e in j.iter().map_err(db)? {
                                let (k, v) = e.map_err(db)?;
                                let hd = JournalHeader::decode(v.value())
                                    .map_err(|e| JournalError::Corrupt(k.value(), e.to_string()))?;
                                if mark_key(&hd.agent_id, &hd.queue_id) != *key
                                    || hd.last_seq <= ours
                                {
                                    continue;
                                }
                                let mut entry = JournalEntry::decode(v.value())
                                    .map_err(|e| JournalError::Corrupt(k.value(), e.to_string()))?;
                                let mut records = entry
                                    .records()
                                    .map_err(|e| JournalError::Corrupt(k.value(), e.to_string()))?;
                                let before = records.len();
                                records.retain(|r| r.seq <= ours || r.seq > *delivered_upto);
                                if records.len() != before {
                                    tracing::info!(
                                        entry = k.value(),
                                        dropped = before - records.len(),
                                        "discarding records the agent delivered through another sink"
                                    );
                                    // Rare: re-encode the batch without them.
                                    entry.last_seq =
                                        records.iter().map(|r| r.seq).max().unwrap_or(0);
                                    entry.skip_upto = 0;
                                    entry.batch = Batch {
                                        batch_id: 0,
                                        records,
                                    }
                                    .encode_to_vec()
                                    .into();
                                    rewrite.push((k.value(), entry));
                                } else {
                                    top = top.max(hd.last_seq);
                                }
                            }
                            for (k, entry) in rewrite {
                                if entry.last_seq == 0 {
                                    j.remove(k).map_err(db)?;
                                } else {
                                    top = top.max(entry.last_seq);
                                    buf.clear();
                                    entry
                                        .encode(&mut buf)
                                        .map_err(|e| JournalError::Corrupt(k, e.to_string()))?;
                                    j.insert(k, buf.as_slice()).map_err(db)?;
                                }
                            }
                            h.insert(key.as_str(), top).map_err(db)?;
                            hwm.insert(key.clone(), top);
                            resolved.push(top);
                        }
                    }
                }
            }
            txn.commit().map_err(db)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.store
                    .failing
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                self.hwm = hwm;
                self.confirmed = confirmed;
                self.next = next;
                self.generation += 1;
                self.changed.send_replace(self.generation);
                let mut resolved = resolved.into_iter();
                for cmd in batch {
                    match cmd {
                        Command::Submit(s) => {
                            let _ = s.done.send(Ok(s.last));
                        }
                        Command::Resolve { done, .. } => {
                            let _ = done.send(Ok(resolved.next().unwrap_or(0)));
                        }
                        Command::Confirm { .. } | Command::Reopen => {}
                    }
                }
            }
            Err(e) => {
                // Nothing was acked: agents resend (confirms come again with the next
                // Resolve). A failed write latches redb until the file is reopened.
                tracing::error!(error = %e, "journal commit failed; reopening the journal");
                for cmd in batch {
                    refuse(cmd, &e.to_string());
                }
                drop(guard);
                self.recover();
            }
        }
    }

    /// Closes and reopens the file until that works, refusing what arrives meanwhile.
    fn recover(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.store.failing.store(true, Relaxed);
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            let deadline = std::time::Instant::now() + delay;
            while std::time::Instant::now() < deadline {
                match self.rx.try_recv() {
                    Ok(cmd) => refuse(cmd, "journal storage is failing; retry later"),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
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
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    fn reopen(&mut self) -> Result<(), JournalError> {
        let mut guard = self.store.db.write().map_err(|_| JournalError::Closed)?;
        drop(guard.take());
        let d = open_database(&self.store.path)?;
        let (next, hwm, confirmed, _) = init(&d)?;
        *guard = Some(d);
        (self.next, self.hwm, self.confirmed) = (next, hwm, confirmed);
        Ok(())
    }
}

/// Answers a command that will not be carried out.
fn refuse(cmd: Command, reason: &str) {
    match cmd {
        Command::Submit(s) => {
            let _ = s.done.send(Err(reason.to_string()));
        }
        Command::Resolve { done, .. } => {
            let _ = done.send(Err(reason.to_string()));
        }
        Command::Confirm { .. } | Command::Reopen => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn put(j: &Journal, agent: &str, from: u64, to: u64) {
        let records: Vec<Record> = (from..=to)
            .map(|seq| Record {
                seq,
                payload: format!("r{seq}").into_bytes().into(),
                ..Default::default()
            })
            .collect();
        let batch = Batch {
            batch_id: 1,
            records,
        }
        .encode_to_vec()
        .into();
        j.submit(agent, "q", batch, from, to)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    }

    fn drainable_seqs(j: &Journal) -> Vec<u64> {
        j.read_drainable(usize::MAX)
            .unwrap()
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
        put(&j, "a", 1, 6).await;
        put(&j, "a", 7, 10).await;
        assert!(
            drainable_seqs(&j).is_empty(),
            "nothing is output before the agent confirms"
        );
        let hwm = j.resolve("a", "q", 4, 8).await.unwrap();
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
        put(&j, "a", 1, 6).await;
        put(&j, "a", 4, 8).await;
        put(&j, "a", 2, 5).await; // entirely old: not journaled at all
        j.confirm("a", "q", 8).await.unwrap();
        put(&j, "b", 1, 1).await; // flush the writer
        assert_eq!(drainable_seqs(&j), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
