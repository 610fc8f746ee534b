//! The journal's writer thread: the one owner of write transactions. Submits are group
//! committed, confirmations and drain positions applied, and storage failures answered
//! by refusing until a reopen (with back-off) succeeds.

use super::*;
use dataweaver_store::{Apply, Grouping, Kind};

pub(super) struct Writer {
    pub(super) store: Arc<Store>,
    pub(super) next: u64,
    pub(super) marks: Marks,
    /// Entries waiting for their agent's confirmation (changed while a transaction is
    /// built: a failed commit's reopen reloads them, with the marks).
    pub(super) unconfirmed: index::Unconfirmed,
    pub(super) opts: JournalOptions,
    pub(super) changed: watch::Sender<u64>,
    pub(super) generation: u64,
    /// Confirmations that came while storage failed: applied once it works again (an
    /// agent sends each one once; refused, its records would wait for its next stream).
    pub(super) held: Vec<Command>,
    /// A reopen the drainer asked for happened: one commit is owed, empty or not, so that
    /// `failing` clears as soon as the disk takes writes again (the sink's `/ready` reads it; an unready sink
    /// may get no traffic to clear it otherwise).
    pub(super) owe_commit: bool,
    /// The next group is that owed commit: written even when empty.
    pub(super) commit_empty: bool,
    /// The follow-up of this round was tried: held confirmations are retried once per
    /// round, so a disk that keeps failing does not keep the writer from its channel.
    pub(super) followed: bool,
    /// The recovery under way follows a failed commit (not a reopen the drainer asked
    /// for): no commit is owed after it, the next command's commit clears `failing`.
    pub(super) commit_failed: bool,
}

/// A commit group takes a few tens of MiB of batches at most.
pub(super) const GROUPING: Grouping = Grouping {
    max_records: usize::MAX,
    max_bytes: 32 << 20,
    linger: std::time::Duration::ZERO,
};

/// One answer per command of a group, the next entry number, and the entries it made
/// ready for the outputs, once it committed.
pub(super) struct Written {
    answers: Vec<Option<Result<Outcome, Refused>>>,
    next: u64,
    ready: Vec<(u64, index::ReadyEntry)>,
    /// Batches it journaled, for the drain to take from memory.
    keep: Vec<(u64, JournalEntry)>,
    /// Entries it rewrote or removed, to be forgotten by `recent`.
    forget: Vec<u64>,
}

impl Apply for Writer {
    type Command = Command;
    type Error = JournalError;
    type Written = Written;

    fn kind(&self, cmd: &Command) -> Kind {
        match cmd {
            Command::Submit(s) => Kind::Group {
                records: 0,
                bytes: s.batch.len(),
            },
            Command::Confirm { .. } | Command::Resolve { .. } => Kind::Group {
                records: 0,
                bytes: 0,
            },
            Command::Reopen => Kind::Reopen,
        }
    }

    fn needs_commit(&mut self, group: &[Command]) -> bool {
        std::mem::take(&mut self.commit_empty) || !group.is_empty()
    }

    fn write(
        &mut self,
        txn: &WriteTransaction,
        batch: &mut [Command],
    ) -> Result<Written, JournalError> {
        let mut answers = Vec::with_capacity(batch.len());
        let mut next = self.next;
        let mut ready = Vec::new();
        let (mut keep, mut forget) = (Vec::new(), Vec::new());
        {
            let mut j = txn.open_table(JOURNAL).map_err(db)?;
            let mut m = txn.open_table(MARKS).map_err(db)?;
            let mut q = txn.open_table(QUARANTINE).map_err(db)?;
            let mut inst = txn.open_table(INSTANCES).map_err(db)?;
            let mut buf = Vec::new();
            for cmd in batch.iter_mut() {
                let answer = match cmd {
                    Command::Submit(s) => self.submit(
                        s,
                        (&mut j, &mut m, &mut q),
                        &mut next,
                        (&mut ready, &mut keep),
                        &mut buf,
                    )?,
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
                            self.make_ready(agent_id, queue_id, *upto, &mut ready);
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
                            &mut ready,
                            &mut forget,
                            &mut buf,
                        )? {
                            Ok(h) => Ok(Outcome::Stored(h)),
                            // Carried as `Rejected` to the answer below.
                            Err(r) if r.code == dataweaver_wire::REFUSED_FORKED => {
                                Ok(Outcome::Rejected(r.reason))
                            }
                            Err(r) => Err(Refused::TooManyQueues(r.reason)),
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
            // The loop drops the transaction: aborted, as a failed fsync leaves nothing.
            return Err(JournalError::Io(
                PathBuf::from(FILE_NAME),
                std::io::Error::other("simulated full disk"),
            ));
        }
        Ok(Written {
            answers,
            next,
            ready,
            keep,
            forget,
        })
    }

    fn committed(&mut self, batch: Vec<Command>, w: Written) {
        self.next = w.next;
        // Before the entries become ready: the drain must not take a batch a `Resolve` of
        // this commit rewrote.
        self.store.recent.committed(&w.forget, w.keep);
        self.store.ready.add(w.ready);
        self.generation += 1;
        self.changed.send_replace(self.generation);
        for (cmd, answer) in batch.into_iter().zip(w.answers) {
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
                        Ok(Outcome::Rejected(reason)) => Err(dataweaver_wire::Refusal {
                            reason,
                            code: dataweaver_wire::REFUSED_FORKED,
                        }),
                        Err(reason) => Err(dataweaver_wire::Refusal {
                            reason: reason.to_string(),
                            code: 0,
                        }),
                    });
                }
                _ => {}
            }
        }
    }

    fn failed(&mut self, batch: Vec<Command>, e: JournalError) {
        // Nothing was acked: agents resend (confirmations are kept for after the reopen),
        // and every stream with a batch here ends, so none can commit a later batch over
        // the gap. The reopen also reloads the marks changed in memory by the write.
        tracing::error!(error = %e, "journal commit failed; reopening the journal");
        self.commit_failed = true;
        for cmd in batch {
            self.refuse_or_hold(cmd, &e.to_string());
        }
    }

    fn refuse(&mut self, cmd: Command) {
        self.refuse_or_hold(cmd, "journal storage is failing; retry later");
    }

    fn reopen(&mut self, medium: &Medium) -> Result<Database, JournalError> {
        let (d, loaded) = open_file(medium, false)?;
        // Entry numbers never go back within a process: the drainer may still be about to
        // forget the last ones it took, and must not forget a new entry of the same number.
        self.next = self.next.max(loaded.next);
        (self.marks, self.unconfirmed) = (loaded.marks, loaded.unconfirmed);
        self.store.ready.replace(loaded.ready);
        self.store.recent.clear();
        Ok(d)
    }

    fn recovered(&mut self, reopened: bool) {
        // Still `failing` until a commit goes through: reopening works on a full disk too.
        if reopened {
            self.generation += 1;
            self.changed.send_replace(self.generation);
            self.owe_commit = !std::mem::take(&mut self.commit_failed);
        }
    }

    fn follow_up(&mut self) -> Option<Vec<Command>> {
        if std::mem::take(&mut self.followed) {
            return None;
        }
        if self.held.is_empty() && !self.owe_commit {
            return None;
        }
        self.followed = true;
        self.commit_empty = std::mem::take(&mut self.owe_commit);
        Some(std::mem::take(&mut self.held))
    }
}

impl Writer {
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

    /// One batch inside the transaction: `None` never (a submit always gets an answer).
    fn submit(
        &mut self,
        s: &mut Submit,
        (j, m, q): Tables<'_, '_>,
        next: &mut u64,
        (ready, keep): Made<'_>,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Result<Outcome, Refused>>, JournalError> {
        let Some(mut mark) = self.mark(&s.agent_id, &s.queue_id) else {
            return Ok(Some(Err(Refused::NotResolved)));
        };
        if s.instance != 0 && mark.instance != 0 && s.instance != mark.instance {
            // Another process of this queue resolved since this stream began (a copy of
            // the data directory): its seqs and ours overlap. The stream ends; its next
            // `Resolve` tells whether this process is the copy.
            return Ok(Some(Err(Refused::TakenOver)));
        }
        if s.from > mark.hwm.saturating_add(1) {
            return Ok(Some(Err(Refused::Gap {
                from: s.from,
                hwm: mark.hwm,
            })));
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
        // Per queue: a queue id its agent left (it took a new one) keeps what it holds
        // unconfirmed, and must not count against the agent's other queues.
        let held = self.unconfirmed.bytes(&s.agent_id, &s.queue_id);
        let max = self.opts.max_unconfirmed_bytes_per_queue;
        if held > 0 && held.saturating_add(s.batch.len() as u64) > max {
            tracing::warn!(
                agent = %s.agent_id, held, max,
                "refusing a batch: the queue holds as many unconfirmed bytes as it may"
            );
            return Ok(Some(Err(Refused::Unconfirmed(format!(
                "queue {} of agent {} holds {held} bytes at this sink that it has not confirmed \
                 (max_unconfirmed_bytes_per_queue = {max}): confirm them before sending more",
                s.queue_id, s.agent_id
            )))));
        }
        let all = held
            + self.store.ready.bytes(&s.agent_id)
            + ready
                .iter()
                .filter(|(_, e)| e.agent == s.agent_id)
                .map(|(_, e)| e.bytes)
                .sum::<u64>();
        let max = self.opts.max_journal_bytes_per_agent;
        if all > 0 && all.saturating_add(s.batch.len() as u64) > max {
            tracing::warn!(
                agent = %s.agent_id, held = all, max,
                "refusing a batch: the agent holds its share of the journal"
            );
            return Ok(Some(Err(Refused::Share(format!(
                "agent {} holds {all} bytes in this sink's journal \
                 (max_journal_bytes_per_agent = {max}): retry once the outputs have drained them",
                s.agent_id
            )))));
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
        let w = index::Waiting {
            key: *next,
            last_seq: s.last,
            bytes: buf.len() as u64,
        };
        // Confirmed ahead of time, it is ready at once (a `Resolve` may name seqs not sent
        // yet).
        self.place(&entry.agent_id, &entry.queue_id, w, mark.confirmed, ready);
        mark.hwm = s.last;
        self.set_mark(m, &entry.agent_id, &entry.queue_id, mark)?;
        keep.push((*next, entry));
        *next += 1;
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
        ready: &mut Vec<(u64, index::ReadyEntry)>,
        forget: &mut Vec<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<Result<u64, dataweaver_wire::Refusal>, JournalError> {
        if self.mark(agent, queue).is_none() {
            let held = self.marks.get(agent).map_or(0, |q| q.len());
            if held >= self.opts.max_queues_per_agent && !self.evict_settled(agent, m, ready)? {
                return Ok(Err(dataweaver_wire::Refusal {
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
                return Ok(Err(dataweaver_wire::Refusal {
                    reason: format!(
                        "this sink holds seqs of queue {queue} up to {} but this agent process \
                         inherited only up to {inherited_upto}: another copy of its data \
                         directory sent them; take a new queue id",
                        mark.hwm
                    ),
                    code: dataweaver_wire::REFUSED_FORKED,
                }));
            }
            inst.insert((agent, queue), instance).map_err(db)?;
            mark.instance = instance;
        }
        let ours = mark.confirmed.max(confirm_upto);
        // Unconfirmed records up to what the agent delivered elsewhere are not ours: drop
        // them, keep the rest. Nothing below `delivered_upto` is ever sent here again.
        let mut top = ours.max(delivered_upto);
        self.make_ready(agent, queue, ours, ready);
        let mut rewrite = Vec::new();
        let mut bad = Vec::new();
        let mut kept = Vec::new();
        // Only this queue's entries, and only those still unconfirmed, are read.
        for w in self.unconfirmed.take_queue(agent, queue) {
            // Read from the file, and maybe rewritten or removed: the copy in memory goes.
            forget.push(w.key);
            let Some(v) = j.get(w.key).map_err(db)? else {
                continue;
            };
            let decoded = JournalEntry::decode(v.value())
                .map_err(|e| e.to_string())
                .and_then(|en| en.records().map(|r| (en, r)).map_err(|e| e.to_string()));
            let (mut entry, mut records) = match decoded {
                Ok(x) => x,
                Err(why) => {
                    bad.push((w.key, why));
                    continue;
                }
            };
            let before = records.len();
            records.retain(|r| r.seq <= ours || r.seq > delivered_upto);
            if records.len() != before {
                tracing::info!(
                    entry = w.key,
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
                rewrite.push((w.key, entry));
            } else {
                top = top.max(w.last_seq);
                kept.push(w);
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
                kept.push(index::Waiting {
                    key: k,
                    last_seq: entry.last_seq,
                    bytes: buf.len() as u64,
                });
            }
        }
        kept.sort_unstable_by_key(|w| w.key);
        for w in kept {
            // A rewritten entry may now hold only records that are ours.
            self.place(agent, queue, w, ours, ready);
        }
        mark.confirmed = ours;
        mark.hwm = top;
        self.set_mark(m, agent, queue, mark)?;
        Ok(Ok(top))
    }

    /// Forgets one settled queue of `agent` (everything confirmed, no entry left) to make
    /// room for a new one; whether there was one. `ready`: entries this transaction made
    /// ready (not in the shared index until it commits).
    fn evict_settled(
        &mut self,
        agent: &str,
        m: &mut MarksTable<'_>,
        ready: &[(u64, index::ReadyEntry)],
    ) -> Result<bool, JournalError> {
        let Some(queues) = self.marks.get(agent) else {
            return Ok(false);
        };
        let busy = |q: &str| {
            self.unconfirmed.holds(agent, q)
                || ready.iter().any(|(_, e)| e.agent == agent && e.queue == q)
                || self.store.ready.holds(agent, q)
        };
        let victim = queues
            .iter()
            .filter(|(q, mk)| mk.confirmed >= mk.hwm && !busy(q))
            .min_by_key(|(_, mk)| mk.hwm)
            .map(|(q, _)| q.clone());
        let Some(victim) = victim else {
            return Ok(false);
        };
        m.remove((agent, victim.as_str())).map_err(db)?;
        // Its instance row stays until the queue id comes back (rare): bounded by the queue
        // ids the agent ever had, and read only for queues with marks.
        if let Some(queues) = self.marks.get_mut(agent) {
            queues.remove(&victim);
        }
        tracing::info!(%agent, queue = %victim, "forgot a settled queue id to make room for a new one");
        Ok(true)
    }

    /// Moves the queue's entries covered by a confirmation up to `upto` to `ready`.
    fn make_ready(
        &mut self,
        agent: &str,
        queue: &str,
        upto: u64,
        ready: &mut Vec<(u64, index::ReadyEntry)>,
    ) {
        for w in self.unconfirmed.take_upto(agent, queue, upto) {
            ready.push((w.key, index::ReadyEntry::new(w.bytes, agent, queue)));
        }
    }

    /// Puts an entry where it stands: ready if the queue's confirmation `confirmed`
    /// covers it, else waiting for one.
    fn place(
        &mut self,
        agent: &str,
        queue: &str,
        w: index::Waiting,
        confirmed: u64,
        ready: &mut Vec<(u64, index::ReadyEntry)>,
    ) {
        if w.last_seq <= confirmed {
            ready.push((w.key, index::ReadyEntry::new(w.bytes, agent, queue)));
        } else {
            self.unconfirmed.push(agent, queue, w);
        }
    }

    /// Answers a command that cannot be carried out now; a confirmation is kept for later.
    fn refuse_or_hold(&mut self, cmd: Command, reason: &str) {
        match cmd {
            Command::Confirm { .. } => self.held.push(cmd),
            Command::Reopen => {}
            other => refuse(other, reason),
        }
    }
}

type JournalTable<'t> = redb::Table<'t, u64, &'static [u8]>;
type MarksTable<'t> = redb::Table<'t, (&'static str, &'static str), (u64, u64)>;
type InstancesTable<'t> = redb::Table<'t, (&'static str, &'static str), u64>;
pub(super) type QuarantineTable<'t> = redb::Table<'t, u64, (u64, &'static str, &'static [u8])>;
/// What submits make in a transaction: entries ready for the outputs, and batches for
/// the drain to take from memory.
type Made<'a> = (
    &'a mut Vec<(u64, index::ReadyEntry)>,
    &'a mut Vec<(u64, JournalEntry)>,
);
/// The journal, marks and quarantine tables of one write transaction.
type Tables<'a, 't> = (
    &'a mut JournalTable<'t>,
    &'a mut MarksTable<'t>,
    &'a mut QuarantineTable<'t>,
);

/// Answers a command that will not be carried out.
pub(super) fn refuse(cmd: Command, reason: &str) {
    match cmd {
        Command::Submit(s) => {
            let _ = s.done.send(Err(Refused::Unavailable(reason.to_string())));
        }
        Command::Resolve { done, .. } => {
            let _ = done.send(Err(dataweaver_wire::Refusal {
                reason: reason.to_string(),
                code: 0,
            }));
        }
        Command::Confirm { .. } | Command::Reopen => {}
    }
}
