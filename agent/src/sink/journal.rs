//! The sink's journal: received batches, durable before they are acknowledged.
//!
//! # Design constraints
//! - One writer thread, group commit (as in the agent's queue).
//! - De-duplication by high-water mark per (agent id, queue id): a record whose seq is at or
//!   below the mark is dropped; the mark is updated in the same transaction as the records,
//!   and in memory only after that transaction committed.
//! - The drainer (outputs) reads committed entries in key order and deletes them in the
//!   transaction that advances its cursor.
//!
//! # On-disk layout (format version 1)
//! - `journal`: `u64` entry number → protobuf `JournalEntry` (see `wire/dataweaver.proto`)
//! - `hwm`: `"<agent>/<queue>"` → `u64` highest durable seq
//! - `cursor`: output name → output-defined bytes; `"drained"` → last drained entry (u64 LE)
//! - `meta`: `format_version`

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

use crate::wire::{JournalEntry, Record};

/// On-disk format version.
pub const FORMAT_VERSION: u64 = 1;
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const HWM: TableDefinition<&str, u64> = TableDefinition::new("hwm");
/// Output cursors; shared with the drainer.
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

struct Submit {
    key: String,
    agent_id: String,
    queue_id: String,
    records: Vec<Record>,
    /// Last seq of the batch as sent (what the ack names).
    last: u64,
    done: oneshot::Sender<Result<u64, String>>,
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    db: Arc<Database>,
    tx: mpsc::Sender<Submit>,
    appended: watch::Receiver<u64>,
}

impl Journal {
    /// Opens (or creates) `journal.redb` in `dir` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| JournalError::Io(dir.into(), e))?;
        let db = Database::builder()
            .set_cache_size(4 << 20)
            .create(dir.join("journal.redb"))
            .map_err(db)?;
        let (next, hwm) = init(&db)?;
        let db = Arc::new(db);
        let (appended_tx, appended) = watch::channel(next - 1);
        let (tx, rx) = mpsc::channel(256);
        let writer = Writer {
            db: db.clone(),
            rx,
            next,
            hwm,
            appended: appended_tx,
        };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::Io(dir.into(), e))?;
        Ok(Journal { db, tx, appended })
    }

    /// The redb database (the drainer commits its cursor here).
    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    /// Watches the number of the last committed entry.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.clone()
    }

    /// The durable high-water mark for (agent, queue). Blocking.
    pub fn high_water_mark(&self, agent_id: &str, queue_id: &str) -> Result<u64, JournalError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(HWM).map_err(db)?;
        Ok(t.get(hwm_key(agent_id, queue_id).as_str())
            .map_err(db)?
            .map_or(0, |v| v.value()))
    }

    /// Queues a batch for the next commit. The receiver yields the batch's last seq once
    /// every record of it is durable (or was already), or the reason it is not.
    pub async fn submit(
        &self,
        agent_id: &str,
        queue_id: &str,
        records: Vec<Record>,
    ) -> Result<oneshot::Receiver<Result<u64, String>>, JournalError> {
        let (done, rx) = oneshot::channel();
        let s = Submit {
            key: hwm_key(agent_id, queue_id),
            agent_id: agent_id.into(),
            queue_id: queue_id.into(),
            last: records.last().map_or(0, |r| r.seq),
            records,
            done,
        };
        self.tx.send(s).await.map_err(|_| JournalError::Closed)?;
        Ok(rx)
    }

    /// Reads committed entries after `after`: at least one if any, then more while their
    /// encoded size stays under `max_bytes`. Blocking.
    pub fn read(
        &self,
        after: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, JournalEntry)>, JournalError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(JOURNAL).map_err(db)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in t.range(after + 1..).map_err(db)? {
            let (k, v) = e.map_err(db)?;
            bytes += v.value().len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            // One copy of the entry; record payloads then slice it.
            let entry = JournalEntry::decode(bytes::Bytes::copy_from_slice(v.value()))
                .map_err(|e| JournalError::Corrupt(k.value(), e.to_string()))?;
            out.push((k.value(), entry));
        }
        Ok(out)
    }
}

/// Deletes drained entries up to `upto` inside the drainer's transaction.
pub(crate) fn delete_upto(txn: &redb::WriteTransaction, upto: u64) -> Result<(), JournalError> {
    let mut t = txn.open_table(JOURNAL).map_err(db)?;
    t.retain_in(..=upto, |_, _| false).map_err(db)?;
    Ok(())
}

fn hwm_key(agent: &str, queue: &str) -> String {
    format!("{agent}/{queue}")
}

fn init(db: &Database) -> Result<(u64, HashMap<String, u64>), JournalError> {
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
        let j = txn.open_table(JOURNAL).map_err(db_)?;
        let last_entry = j.last().map_err(db_)?.map(|(k, _)| k.value());
        let cursor = txn.open_table(CURSOR).map_err(db_)?;
        let drained = cursor.get("drained").map_err(db_)?.map_or(0, |v| {
            let b = v.value();
            let mut a = [0u8; 8];
            let n = b.len().min(8);
            a[..n].copy_from_slice(&b[..n]);
            u64::from_le_bytes(a)
        });
        let next = last_entry.unwrap_or(0).max(drained) + 1;
        let h = txn.open_table(HWM).map_err(db_)?;
        let mut hwm = HashMap::new();
        for e in h.iter().map_err(db_)? {
            let (k, v) = e.map_err(db_)?;
            hwm.insert(k.value().to_string(), v.value());
        }
        out = (next, hwm);
    }
    txn.commit().map_err(db_)?;
    Ok(out)
}

fn db_<E: Into<redb::Error>>(e: E) -> JournalError {
    db(e)
}

struct Writer {
    db: Arc<Database>,
    rx: mpsc::Receiver<Submit>,
    next: u64,
    hwm: HashMap<String, u64>,
    appended: watch::Sender<u64>,
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            let mut n = batch[0].records.len();
            while n < 65_536 {
                match self.rx.try_recv() {
                    Ok(s) => {
                        n += s.records.len();
                        batch.push(s);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&mut self, mut batch: Vec<Submit>) {
        let mut marks: HashMap<String, u64> = HashMap::new();
        let mut next = self.next;
        let result = (|| -> Result<(), JournalError> {
            let txn = self.db.begin_write().map_err(db)?;
            {
                let mut j = txn.open_table(JOURNAL).map_err(db)?;
                let mut h = txn.open_table(HWM).map_err(db)?;
                let mut buf = Vec::new();
                for s in &mut batch {
                    let mark = marks
                        .get(&s.key)
                        .or_else(|| self.hwm.get(&s.key))
                        .copied()
                        .unwrap_or(0);
                    let fresh: Vec<Record> = std::mem::take(&mut s.records)
                        .into_iter()
                        .filter(|r| r.seq > mark)
                        .collect();
                    let Some(top) = fresh.iter().map(|r| r.seq).max() else {
                        continue;
                    };
                    let entry = JournalEntry {
                        agent_id: s.agent_id.clone(),
                        queue_id: s.queue_id.clone(),
                        records: fresh,
                    };
                    buf.clear();
                    entry
                        .encode(&mut buf)
                        .map_err(|e| JournalError::Corrupt(next, e.to_string()))?;
                    j.insert(next, buf.as_slice()).map_err(db)?;
                    next += 1;
                    h.insert(s.key.as_str(), top).map_err(db)?;
                    marks.insert(s.key.clone(), top);
                }
            }
            txn.commit().map_err(db)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.hwm.extend(marks);
                if next != self.next {
                    self.next = next;
                    self.appended.send_replace(next - 1);
                }
                for s in batch {
                    let _ = s.done.send(Ok(s.last));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "journal commit failed");
                for s in batch {
                    let _ = s.done.send(Err(e.to_string()));
                }
            }
        }
    }
}
