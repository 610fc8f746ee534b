//! The queue's single writer thread: group commit, admission under `max_bytes`, deletion
//! after ack, taking bad chunks out, the checkpoints' side copy, and recovery from storage
//! failures.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{Database, ReadableTable, WriteTransaction};

use dataweaver_store::{Apply, Grouping, Kind, Medium, Slot};
use tokio::sync::{mpsc, oneshot};

use super::{
    Append, Appended, CHECKPOINTS, CHUNKS, Command, DEAD, DeadLetter, LOW_WATER_PERCENT, Loaded,
    META, QueueError, Refused, Shared, WhenFull, chunk, chunk_header, db, meta_u64, open_file,
    salvage, verified,
};
use crate::QueueConfig;
use dataweaver_core::Record;

/// Most records in one chunk: about one forward batch, so the forwarder rarely decodes a
/// chunk only to use part of it.
const CHUNK_MAX_RECORDS: usize = 1024;
/// Largest chunk of more than one record. redb keeps a large value on a page of its own
/// whose size is the next power of two, and reads, writes and checksums that page whole: a
/// chunk just over 256 KiB took a 512 KiB page, half of it padding that the writer wrote and
/// the forwarder and the deletion read back. Chunks stop short of the power of two (with
/// room for the leaf's own header), and two fit the forwarder's default batch
/// (`forward.batch_max_bytes`, 504 KiB).
const CHUNK_MAX_BYTES: usize = 252 << 10;
/// The checkpoints' side copy is rewritten at most this often: its lag is what a corrupt
/// queue file can make a source read twice.
const MIRROR_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Writer {
    shared: Arc<Shared>,
    next_seq: u64,
    deleted_upto: u64,
    /// Bytes of stored chunks.
    bytes: u64,
    next_dead: u64,
    dropped_newest: u64,
    dropped_oldest: u64,
    max_queue_bytes: u64,
    /// Set after a failed write: admit nothing above it until the queue has drained.
    soft_limit: Option<u64>,
    /// A commit that reported failure, answered only once the file is reopened: its
    /// records may have landed (a failed final sync), and then they are stored, not
    /// refused (a source retrying them would store them twice).
    failed: Option<Failed>,
    disk_reserve: u64,
    max_records: usize,
    max_bytes: usize,
    linger: Duration,
    /// `drop_newest` drops every append until the queue is below its low-water mark.
    dropping: bool,
    /// The checkpoints' side copy.
    mirror: salvage::Mirror,
    /// The admission decided for the group being written, for its answers.
    plan: Option<Plan>,
    /// A reopen happened: the deletions of acks that came meanwhile are owed a commit.
    owed: bool,
}

/// What the admission step decided for a group, and the state it was decided on.
struct Plan {
    verdicts: Vec<Verdict>,
    acked: u64,
    limit: u64,
    short: bool,
    start_seq: u64,
}

/// A failed commit's appends, waiting for the reopened file to tell whether it landed.
struct Failed {
    batch: Vec<Append>,
    verdicts: Vec<Verdict>,
    /// `next_seq` before the commit, and what it is if the commit landed.
    start_seq: u64,
    landed_next_seq: u64,
    reason: String,
}

/// What the admission step decided for one append.
enum Verdict {
    /// Store the first `keep` records, drop the rest (`drop_newest`).
    Store {
        keep: usize,
    },
    Refuse,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cfg: &QueueConfig,
        l: Loaded,
        acked: u64,
        mirror: Option<PathBuf>,
    ) -> Self {
        Writer {
            // Whatever the side copy holds, the queue's table is the truth: rewrite it.
            mirror: salvage::Mirror::start(mirror, l.checkpoints, MIRROR_EVERY),
            dropping: false,
            shared,
            plan: None,
            owed: false,
            next_seq: l.next_seq,
            deleted_upto: acked,
            bytes: l.bytes,
            next_dead: l.next_dead,
            dropped_newest: l.dropped_newest,
            dropped_oldest: l.dropped_oldest,
            max_queue_bytes: cfg.max_bytes,
            soft_limit: None,
            failed: None,
            disk_reserve: cfg.disk_reserve_bytes,
            max_records: cfg.commit_max_records,
            max_bytes: cfg.commit_max_bytes,
            linger: Duration::from_millis(cfg.commit_linger_ms),
        }
    }

    /// Runs the writer loop on this thread until shutdown.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let shared = self.shared.clone();
        let grouping = Grouping {
            max_records: self.max_records,
            max_bytes: self.max_bytes,
            linger: self.linger,
        };
        dataweaver_store::writer::run("queue", &shared.slot, &mut rx, &mut self, grouping);
        // Dropping the writer writes the side copy's last changes.
    }

    /// Takes the chunk at `first` out of the queue: its unsent records go to the
    /// dead-letter table with the reason if they still decode, else they are counted as
    /// lost. Returns the lost count.
    fn quarantine(&mut self, first: u64) -> Result<u64, QueueError> {
        let shared = self.shared.clone();
        shared.with_db(|d| self.quarantine_in(d, first))
    }

    fn quarantine_in(&mut self, d: &redb::Database, first: u64) -> Result<u64, QueueError> {
        let acked = self.shared.acked.load(Ordering::Acquire);
        let txn = d.begin_write().map_err(db)?;
        let (len, lost, dead, reason);
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(db)?;
            let Some(v) = chunks
                .remove(first)
                .map_err(db)?
                .map(|v| v.value().to_vec())
            else {
                return Ok(0);
            };
            len = v.len() as u64;
            let unsent = |n: u64| (first + n).saturating_sub(first.max(acked + 1));
            reason = match verified(first, &v) {
                Err(e) => format!("queue chunk at seq {first}: {e}"),
                Ok(_) => format!("queue chunk at seq {first} does not decode"),
            };
            let records = chunk::parts(first, &v)
                .ok()
                .and_then(|p| chunk::decode(first, &p).ok());
            let ts_ns = dataweaver_core::now_ns();
            let mut table = txn.open_table(DEAD).map_err(db)?;
            let mut id = self.next_dead;
            match records {
                Some(recs) => {
                    let skip = recs.len() as u64 - unsent(recs.len() as u64);
                    let mut buf = Vec::new();
                    for record in recs.into_iter().skip(skip as usize) {
                        let dl = DeadLetter {
                            ts_ns,
                            pipeline: String::new(),
                            reason: reason.clone(),
                            record,
                        };
                        buf.clear();
                        ciborium::into_writer(&dl, &mut buf).map_err(|e| QueueError::Corrupt {
                            seq: first,
                            message: e.to_string(),
                        })?;
                        table.insert(id, buf.as_slice()).map_err(db)?;
                        id += 1;
                    }
                    lost = 0;
                }
                None => lost = unsent(chunk_header(first, &v).map_or(0, |(n, _)| n as u64)),
            }
            dead = id - self.next_dead;
            let mut meta = txn.open_table(META).map_err(db)?;
            for (key, add) in [("corrupt_dropped", lost), ("corrupt_dead", dead)] {
                if add > 0 {
                    let total = meta_u64(&meta, key)?.unwrap_or(0) + add;
                    meta.insert(key, &total.to_le_bytes()[..]).map_err(db)?;
                }
            }
            meta.insert("next_dead", &id.to_le_bytes()[..])
                .map_err(db)?;
        }
        txn.commit().map_err(db)?;
        self.next_dead += dead;
        self.bytes = self.bytes.saturating_sub(len);
        self.shared.bytes.store(self.bytes, Ordering::Relaxed);
        if dead > 0 {
            tracing::error!(first_seq = first, records = dead, %reason, "a queue chunk failed its checksum or decoding: its records were dead-lettered, not sent");
        }
        if lost > 0 {
            tracing::error!(first_seq = first, lost, %reason, "a queue chunk does not decode: its records are lost");
        }
        Ok(lost)
    }

    /// Admits and writes one group into `txn`: decides per append, in order, against the
    /// projected size (kept in `plan` for the answers), then writes what is stored and the
    /// deletions of acknowledged records.
    fn write_group(
        &mut self,
        txn: &WriteTransaction,
        batch: &[&Append],
    ) -> Result<Written, QueueError> {
        // Owners before the ack mark: `ack_from` writes them in the opposite order, so the
        // snapshot covers every seq up to `acked`.
        let owners: Vec<(String, u64)> = self
            .shared
            .owners
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let acked = self.shared.acked.load(Ordering::Acquire);
        // Admission: decide per append, in order, against the projected size.
        let mut projected = self.bytes;
        let mut make_room = false;
        let mut disk_short = 0u64;
        // A nearly full disk counts as a full queue: refusing before ENOSPC keeps room for
        // the deletions that will free space (redb copies pages on every commit).
        // Free pages inside the queue file count too (it never shrinks): after the queue
        // drained on a full disk, a file grown earlier holds room the filesystem does not
        // show, and without it an empty queue could refuse a large append forever. Taken
        // conservatively (live data four times over plus 4 MiB stay off limits), so the
        // commits that delete acknowledged records always find pages to write.
        let reusable = self
            .shared
            .slot
            .medium()
            .size()
            .map(|len| len.saturating_sub(4 * self.bytes + (4 << 20)))
            .unwrap_or(0);
        let mut disk_room = (self.disk_reserve > 0)
            .then(|| self.shared.slot.medium().free_bytes())
            .flatten()
            .map(|f| (f + reusable).saturating_sub(self.disk_reserve));
        // After a failed write, a lower limit holds until the queue has drained well below it.
        if self.soft_limit.is_some_and(|l| self.bytes <= l / 2) {
            tracing::info!(
                "queue drained after a storage failure; back to its configured max_bytes"
            );
            self.soft_limit = None;
        }
        let limit = self
            .max_queue_bytes
            .min(self.soft_limit.unwrap_or(u64::MAX));
        if self.dropping && self.bytes < limit / 100 * LOW_WATER_PERCENT {
            tracing::info!(
                dropped_total = self.dropped_newest,
                "queue below its low-water mark: drop_newest keeps records again"
            );
            self.dropping = false;
        }
        let mut verdicts = Vec::with_capacity(batch.len());
        for a in batch {
            let size: u64 = a.records.iter().map(|r| r.approx_size() as u64).sum();
            let disk_ok = disk_room.is_none_or(|room| room >= 2 * size);
            let fits =
                a.records.is_empty() || (disk_ok && (projected + size <= limit || projected == 0));
            let all = a.records.len();
            let v = match (fits, a.when_full) {
                // Once dropping, a pipeline drops whole appends until the queue has drained
                // below the low-water mark: what is kept has no holes.
                (_, WhenFull::DropNewest) if self.dropping && all > 0 => Verdict::Store { keep: 0 },
                (true, _) => {
                    projected += size;
                    if let Some(room) = disk_room.as_mut() {
                        *room = room.saturating_sub(2 * size);
                    }
                    Verdict::Store { keep: all }
                }
                (false, WhenFull::DropOldest) => {
                    projected += size;
                    make_room = true;
                    if !disk_ok {
                        disk_short += 2 * size;
                    }
                    Verdict::Store { keep: all }
                }
                (false, WhenFull::DropNewest) => {
                    // Keep the part that fits, so the kept records end where the room did.
                    let (mut keep, mut kept) = (0, 0u64);
                    for r in &a.records {
                        let next = kept + r.approx_size() as u64;
                        let room_ok = disk_room.is_none_or(|room| room >= 2 * next);
                        if !room_ok || projected + next > limit {
                            break;
                        }
                        kept = next;
                        keep += 1;
                    }
                    projected += kept;
                    if let Some(room) = disk_room.as_mut() {
                        *room = room.saturating_sub(2 * kept);
                    }
                    tracing::warn!(
                        dropped_total = self.dropped_newest + (all - keep) as u64,
                        "queue full: dropping new records (drop_newest) until it is below {LOW_WATER_PERCENT} % of its limit"
                    );
                    self.dropping = true;
                    Verdict::Store { keep }
                }
                (false, WhenFull::Block) => Verdict::Refuse,
            };
            verdicts.push(v);
        }
        // Only a `drop_oldest` append that did not fit may delete anything.
        let free_target = if make_room {
            projected
                .saturating_sub(self.max_queue_bytes)
                .max(disk_short)
        } else {
            0
        };
        // Whether this commit turns records away for room: what `Queue::is_full` says once
        // it has gone through.
        let short = make_room
            || self.dropping
            || batch.iter().zip(&verdicts).any(|(a, v)| match v {
                Verdict::Refuse => true,
                Verdict::Store { keep } => *keep < a.records.len(),
            });
        let start_seq = self.next_seq;
        let w = self.write_txn(txn, batch, &verdicts, acked, free_target, &owners);
        self.plan = Some(Plan {
            verdicts,
            acked,
            limit,
            short,
            start_seq,
        });
        w
    }

    /// The group's commit went through: memory follows, and every append is answered.
    fn answer_committed(&mut self, batch: Vec<Append>, w: Written) {
        let Some(Plan {
            verdicts,
            acked,
            limit,
            short,
            start_seq,
        }) = self.plan.take()
        else {
            return;
        };
        let newly_acked = acked > self.deleted_upto;
        self.deleted_upto = self.deleted_upto.max(acked);
        self.bytes = w.bytes;
        self.shared.bytes.store(self.bytes, Ordering::Relaxed);
        // Appends say it afresh; acks alone clear it once the queue has drained
        // below its low-water mark (an idle agent must not stay unready).
        let full = if batch.is_empty() {
            self.shared.full.load(Ordering::Relaxed)
                && self.bytes >= limit / 100 * LOW_WATER_PERCENT
        } else {
            short
        };
        self.shared.full.store(full, Ordering::Relaxed);
        if newly_acked {
            self.shared.durable_acked.send_replace(acked);
        }
        self.next_dead = w.next_dead;
        self.dropped_newest = w.dropped_newest;
        self.dropped_oldest = w.dropped_oldest;
        self.next_seq = w.next_seq;
        if w.next_seq != start_seq {
            self.shared.committed.send_replace(w.next_seq - 1);
        }
        let mut seq = start_seq;
        let mut changes = Vec::new();
        for (a, v) in batch.into_iter().zip(verdicts) {
            let Append {
                records,
                dead,
                checkpoint,
                done,
                ..
            } = a;
            let reply = match v {
                Verdict::Store { keep } => {
                    if let Some(cp) = checkpoint {
                        changes.push((cp.key, cp.value));
                    }
                    seq += keep as u64;
                    let stored = Appended {
                        first_seq: seq - keep as u64,
                        count: keep,
                        dropped: records.len() - keep,
                    };
                    (Ok(stored), records)
                }
                Verdict::Refuse => (
                    Err(QueueError::Full(Box::new(Refused {
                        records,
                        dead,
                        checkpoint,
                    }))),
                    Vec::new(),
                ),
            };
            let _ = done.send(reply);
        }
        if !changes.is_empty() {
            self.mirror.update(changes);
        }
    }

    /// The group's commit failed: its answers wait for the reopen (`settle_failed`).
    fn answer_failed(&mut self, batch: Vec<Append>, e: QueueError) {
        let Some(Plan {
            verdicts,
            start_seq,
            ..
        }) = self.plan.take()
        else {
            // Failed before the admission ran (the file was closed): nothing was written.
            for a in batch {
                refuse_unavailable(a, e.to_string());
            }
            return;
        };
        // A failed commit stored nothing (redb's transactions are atomic); refuse
        // the batch so the sources keep their data and retry.
        tracing::error!(error = %e, "queue commit failed; refusing appends until storage recovers");
        // Most likely a full disk: what is stored now is what fits. Keep well below
        // it, so the deletions that free space can always be written.
        self.soft_limit = Some(self.bytes * 3 / 4);
        // Answered after the reopen (`settle_failed`): a commit whose final sync
        // failed may have landed.
        let landed_next_seq = start_seq
            + batch
                .iter()
                .zip(&verdicts)
                .map(|(_, v)| match v {
                    Verdict::Store { keep } => *keep as u64,
                    Verdict::Refuse => 0,
                })
                .sum::<u64>();
        self.failed = Some(Failed {
            batch,
            verdicts,
            start_seq,
            landed_next_seq,
            reason: e.to_string(),
        });
    }

    fn write_txn(
        &self,
        txn: &WriteTransaction,
        batch: &[&Append],
        verdicts: &[Verdict],
        acked: u64,
        free_target: u64,
        owners: &[(String, u64)],
    ) -> Result<Written, QueueError> {
        // Every commit is synced, deletions too: a deletion persists the sink's ownership of
        // what it acked (`owner:<sink>`), and the agent confirms to the sink only what is
        // durable here (see `sink::journal`).
        let w = self.write_tables(txn, batch, verdicts, acked, free_target)?;
        if acked > self.deleted_upto {
            let mut meta = txn.open_table(META).map_err(db)?;
            // A chunk is deleted only once all of it is acked: the mark itself is kept, or a
            // restart would resend the acked part of a chunk, maybe to another sink than
            // the owner recorded below, and both would output it.
            meta.insert("acked", &acked.to_le_bytes()[..]).map_err(db)?;
            for (sink, seq) in owners {
                meta.insert(format!("owner:{sink}").as_str(), &seq.to_le_bytes()[..])
                    .map_err(db)?;
            }
        }
        Ok(w)
    }

    fn write_tables(
        &self,
        txn: &WriteTransaction,
        batch: &[&Append],
        verdicts: &[Verdict],
        acked: u64,
        free_target: u64,
    ) -> Result<Written, QueueError> {
        let mut w = Written {
            next_seq: self.next_seq,
            bytes: self.bytes,
            next_dead: self.next_dead,
            dropped_newest: self.dropped_newest,
            dropped_oldest: self.dropped_oldest,
        };
        let mut chunks = txn.open_table(CHUNKS).map_err(db)?;
        // Make room first (drop_oldest), so the new chunks are never the ones removed.
        let mut freed = 0u64;
        while freed < free_target {
            let Some((first, len, count)) = chunks.first().map_err(db)?.map(|(k, v)| {
                (
                    k.value(),
                    v.value().len() as u64,
                    chunk_header(k.value(), v.value()).map(|h| h.0),
                )
            }) else {
                break;
            };
            chunks.remove(first).map_err(db)?;
            let count = count.unwrap_or(0) as u64;
            let unsent = (first + count).saturating_sub(first.max(acked + 1));
            w.dropped_oldest += unsent;
            freed += len;
            w.bytes = w.bytes.saturating_sub(len);
        }
        if freed > 0 {
            tracing::warn!(
                freed_bytes = freed,
                dropped_total = w.dropped_oldest,
                "queue full: dropped the oldest records (drop_oldest)"
            );
        }
        let mut open = ChunkBuf::default();
        for (a, v) in batch.iter().zip(verdicts) {
            match v {
                Verdict::Store { keep } => {
                    w.dropped_newest += (a.records.len() - keep) as u64;
                    for r in a.records.iter().take(*keep) {
                        open.push(&mut chunks, &mut w, r)?;
                    }
                }
                Verdict::Refuse => {}
            }
        }
        open.finish(&mut chunks, &mut w)?;
        let mut buf = open.buf;
        if acked > self.deleted_upto {
            let mut removed = 0u64;
            chunks
                .retain_in(..=acked, |first, v| {
                    let count = if v.len() >= 5 {
                        u32::from_le_bytes([v[1], v[2], v[3], v[4]])
                    } else {
                        0
                    };
                    let keep = count > 0 && first + count as u64 - 1 > acked;
                    if !keep {
                        removed += v.len() as u64;
                    }
                    keep
                })
                .map_err(db)?;
            w.bytes = w.bytes.saturating_sub(removed);
        }
        let mut dead = txn.open_table(DEAD).map_err(db)?;
        for (a, v) in batch.iter().zip(verdicts) {
            if matches!(v, Verdict::Refuse) {
                continue;
            }
            for dl in &a.dead {
                buf.clear();
                ciborium::into_writer(dl, &mut buf).map_err(|e| QueueError::Corrupt {
                    seq: 0,
                    message: e.to_string(),
                })?;
                dead.insert(w.next_dead, buf.as_slice()).map_err(db)?;
                w.next_dead += 1;
            }
        }
        let mut meta = txn.open_table(META).map_err(db)?;
        for (key, now, before) in [
            ("next_seq", w.next_seq, self.next_seq),
            ("next_dead", w.next_dead, self.next_dead),
            ("dropped_newest", w.dropped_newest, self.dropped_newest),
            ("dropped_oldest", w.dropped_oldest, self.dropped_oldest),
        ] {
            if now != before {
                meta.insert(key, &now.to_le_bytes()[..]).map_err(db)?;
            }
        }
        let mut cps = txn.open_table(CHECKPOINTS).map_err(db)?;
        for (a, v) in batch.iter().zip(verdicts) {
            let Some(cp) = a
                .checkpoint
                .as_ref()
                .filter(|_| !matches!(v, Verdict::Refuse))
            else {
                continue;
            };
            if cp.value.is_empty() {
                cps.remove(cp.key.as_str()).map_err(db)?;
            } else {
                cps.insert(cp.key.as_str(), cp.value.as_slice())
                    .map_err(db)?;
            }
        }
        Ok(w)
    }

    /// Answers the appends of the commit that failed: stored if the reopened file
    /// (`reopened`) shows that it landed (its `next_seq`), else refused, to be retried. A
    /// commit without records is refused either way (retrying it stores nothing twice).
    fn settle_failed(&mut self, reopened: bool) {
        let Some(f) = self.failed.take() else {
            return;
        };
        let landed =
            reopened && f.landed_next_seq > f.start_seq && self.next_seq == f.landed_next_seq;
        if landed {
            tracing::warn!(
                first_seq = f.start_seq,
                next_seq = f.landed_next_seq,
                "queue commit reported failure but landed; its records are stored"
            );
            self.shared.committed.send_replace(self.next_seq - 1);
        }
        let mut seq = f.start_seq;
        for (mut a, v) in f.batch.into_iter().zip(f.verdicts) {
            let done = std::mem::replace(&mut a.done, oneshot::channel().0);
            let reply = match v {
                Verdict::Store { keep } if landed => {
                    seq += keep as u64;
                    let stored = Appended {
                        first_seq: seq - keep as u64,
                        count: keep,
                        dropped: a.records.len() - keep,
                    };
                    (Ok(stored), std::mem::take(&mut a.records))
                }
                Verdict::Refuse if landed => (
                    Err(QueueError::Full(Box::new(a.into_refused()))),
                    Vec::new(),
                ),
                _ => (
                    Err(QueueError::Unavailable {
                        reason: f.reason.clone(),
                        refused: Box::new(a.into_refused()),
                    }),
                    Vec::new(),
                ),
            };
            let _ = done.send(reply);
        }
    }

    /// Opens the file again and reloads what memory holds of it.
    fn reload(&mut self, medium: &Medium) -> Result<Database, QueueError> {
        let (d, l) = open_file(medium)?;
        self.mirror.replace(l.checkpoints);
        self.next_seq = l.next_seq;
        self.bytes = l.bytes;
        self.shared.bytes.store(self.bytes, Ordering::Relaxed);
        self.next_dead = l.next_dead;
        self.dropped_newest = l.dropped_newest;
        self.dropped_oldest = l.dropped_oldest;
        self.deleted_upto = l
            .first_chunk
            .unwrap_or(l.next_seq)
            .saturating_sub(1)
            .min(self.deleted_upto);
        Ok(d)
    }
}

/// Answers an append that was not stored: storage is failing, its records are handed back.
fn refuse_unavailable(mut a: Append, reason: String) {
    let done = std::mem::replace(&mut a.done, oneshot::channel().0);
    let refused = QueueError::Unavailable {
        reason,
        refused: Box::new(a.into_refused()),
    };
    let _ = done.send((Err(refused), Vec::new()));
}

/// The appends of a group (its only commands).
fn appends(group: &[Command]) -> Vec<&Append> {
    group
        .iter()
        .filter_map(|c| match c {
            Command::Append(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn into_appends(group: Vec<Command>) -> Vec<Append> {
    group
        .into_iter()
        .filter_map(|c| match c {
            Command::Append(a) => Some(a),
            _ => None,
        })
        .collect()
}

impl Apply for Writer {
    type Command = Command;
    type Error = QueueError;
    type Written = Written;

    fn kind(&self, cmd: &Command) -> Kind {
        match cmd {
            Command::Append(a) => Kind::Group {
                records: a.records.len(),
                bytes: a.records.iter().map(Record::approx_size).sum(),
            },
            Command::Quarantine { .. } => Kind::Apart,
            Command::Wake => Kind::Wake,
            Command::Shutdown => Kind::Shutdown,
        }
    }

    fn needs_commit(&mut self, group: &[Command]) -> bool {
        !group.is_empty() || self.shared.acked.load(Ordering::Acquire) > self.deleted_upto
    }

    fn write(
        &mut self,
        txn: &WriteTransaction,
        group: &mut [Command],
    ) -> Result<Written, QueueError> {
        self.write_group(txn, &appends(group))
    }

    fn committed(&mut self, group: Vec<Command>, w: Written) {
        self.answer_committed(into_appends(group), w);
    }

    fn failed(&mut self, group: Vec<Command>, e: QueueError) {
        self.answer_failed(into_appends(group), e);
    }

    fn refuse(&mut self, cmd: Command) {
        match cmd {
            Command::Append(a) => refuse_unavailable(a, "storage is failing; retry later".into()),
            Command::Quarantine { done, .. } => {
                let _ = done.send(Err(QueueError::unavailable(
                    "storage is failing; retry later",
                )));
            }
            Command::Wake | Command::Shutdown => {}
        }
    }

    fn apart(&mut self, _slot: &Slot, cmd: Command) {
        if let Command::Quarantine { first, done } = cmd {
            let _ = done.send(self.quarantine(first));
        }
    }

    fn reopen(&mut self, medium: &Medium) -> Result<Database, QueueError> {
        let r = self.reload(medium);
        if r.is_err() {
            // Storage still failing: whether the failed commit landed is not known yet, and
            // its sources must not wait on it (they retry, and may stop).
            self.settle_failed(false);
        }
        r
    }

    fn recovered(&mut self, reopened: bool) {
        // A failed commit not settled by the reopen (shutdown came first): refused, as
        // before the reopen nothing is known.
        self.settle_failed(reopened);
        // Acks that arrived meanwhile woke nobody (their wake-ups were consumed by the
        // failing commit and the recovery): apply them now, or the last records' deletion,
        // and so their confirmation to the sink, would wait forever. If that commit fails
        // too, the writer recovers again: idling on a handle redb has latched failed would
        // fail every read until some command happened to come.
        self.owed = reopened;
    }

    fn follow_up(&mut self) -> Option<Vec<Command>> {
        std::mem::take(&mut self.owed).then(Vec::new)
    }
}

pub(crate) struct Written {
    next_seq: u64,
    bytes: u64,
    next_dead: u64,
    dropped_newest: u64,
    dropped_oldest: u64,
}

/// The chunk being filled in a commit: records are encoded into it as they come, and it is
/// stored once it is full (by count, or because the next record would take it past
/// [`CHUNK_MAX_BYTES`]).
#[derive(Default)]
struct ChunkBuf {
    buf: Vec<u8>,
    count: usize,
}

impl ChunkBuf {
    /// Adds `r` with the next seq of `w`, storing the chunk first if `r` does not fit.
    fn push(
        &mut self,
        table: &mut redb::Table<u64, &[u8]>,
        w: &mut Written,
        r: &Record,
    ) -> Result<(), QueueError> {
        if self.count == 0 {
            if self.buf.capacity() == 0 {
                // Room for a full chunk at once: growing by doubling copied it over again.
                self.buf.reserve(CHUNK_MAX_BYTES + 4096);
            }
            chunk::begin(&mut self.buf, 0);
        }
        let mark = self.buf.len();
        chunk::put_record(&mut self.buf, w.next_seq + self.count as u64, r);
        if self.count > 0 && self.buf.len() > CHUNK_MAX_BYTES {
            // Encoded again in the next chunk, where its seq is the first: once per chunk.
            self.buf.truncate(mark);
            self.finish(table, w)?;
            chunk::begin(&mut self.buf, 0);
            chunk::put_record(&mut self.buf, w.next_seq, r);
        }
        self.count += 1;
        if self.count >= CHUNK_MAX_RECORDS {
            self.finish(table, w)?;
        }
        Ok(())
    }

    /// Stores the chunk, if it has records, under its first seq.
    fn finish(
        &mut self,
        table: &mut redb::Table<u64, &[u8]>,
        w: &mut Written,
    ) -> Result<(), QueueError> {
        if self.count == 0 {
            return Ok(());
        }
        chunk::set_count(&mut self.buf, self.count);
        // One checksum per chunk (not per record): read back before anything is sent.
        chunk::seal(&mut self.buf);
        table.insert(w.next_seq, self.buf.as_slice()).map_err(db)?;
        w.bytes += self.buf.len() as u64;
        w.next_seq += self.count as u64;
        self.count = 0;
        Ok(())
    }
}
