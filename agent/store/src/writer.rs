//! The writer thread under every store (the queue, the sink journal, the control store):
//! the one owner of its write transactions.
//!
//! - **Group commit.** The first command waits; whatever queued up while the last commit
//!   synced (after an optional linger) joins it, up to a bound, and the group is written in
//!   one transaction and answered only once that committed. One sync serves them all.
//! - **Reopen after a storage failure.** redb latches an I/O error until the database is
//!   closed: after a failed commit the writer closes it and reopens it with [`Backoff`],
//!   while the store refuses (or holds) what arrives meanwhile.
//! - **A panic is a failed commit.** A corrupt page can make redb panic; the writer thread
//!   survives it and recovers as from any storage error.
//!
//! What a store writes, and how it answers, is its [`Apply`]; the loop is [`run`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, WriteTransaction};
use tokio::sync::mpsc;

use crate::{Backoff, Medium, StoreError};

/// A store's database as its readers and its writer share it.
#[derive(Debug)]
pub struct Slot {
    medium: Medium,
    /// `None` only while the writer reopens it; readers hold the read guard for the length
    /// of their transaction.
    db: RwLock<Option<Database>>,
    recovering: AtomicBool,
    failing: AtomicBool,
    reopens: AtomicU64,
}

impl Slot {
    /// `db`, opened on `medium`.
    pub fn new(medium: Medium, db: Database) -> Slot {
        Slot {
            medium,
            db: RwLock::new(Some(db)),
            recovering: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            reopens: AtomicU64::new(0),
        }
    }

    /// Where the database lives.
    pub fn medium(&self) -> &Medium {
        &self.medium
    }

    /// Runs `f` on the open database; [`StoreError::Reopening`] while the writer reopens it.
    pub fn read<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, E>,
    ) -> Result<R, E> {
        // A reader that panicked left the `Option` as it was: nothing to repair.
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(d) => f(d),
            None => Err(StoreError::Reopening.into()),
        }
    }

    /// Whether a commit failed and the database has not been reopened since.
    pub fn recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    /// Whether the last commit failed (cleared by the next one that succeeds: reopening
    /// works on a full disk too).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Times the database was reopened after a storage failure.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Acquire)
    }

    /// Closes the database (redb latches an I/O error until then) and opens it again.
    fn reopen<E>(&self, open: impl FnOnce(&Medium) -> Result<Database, E>) -> Result<(), E> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(guard.take());
        *guard = Some(open(&self.medium)?);
        self.recovering.store(false, Ordering::Release);
        self.reopens.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// What a command asks of the writer loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Joins a commit group, adding `records` and `bytes` to the group's size.
    Group {
        /// Records it adds.
        records: usize,
        /// Bytes it adds.
        bytes: usize,
    },
    /// Handled on its own, before the group it came with ([`Apply::apart`]).
    Apart,
    /// Only wakes the writer: a commit may be due without a command (deletions after acks).
    Wake,
    /// Storage failed elsewhere (another writer of the same file): reopen the database. The
    /// group it came with is refused.
    Reopen,
    /// Stop once the group it came with is done.
    Shutdown,
}

/// One store's side of the writer loop: what a group writes and how it is answered.
pub trait Apply {
    /// A request to the writer.
    type Command: Send;
    /// The store's error.
    type Error: std::fmt::Display + From<StoreError>;
    /// What a group's write produced, applied by [`committed`](Apply::committed).
    type Written;

    /// What `cmd` asks of the loop.
    fn kind(&self, cmd: &Self::Command) -> Kind;

    /// Whether `group` needs a transaction (an empty one may, for deletions that are due).
    fn needs_commit(&mut self, group: &[Self::Command]) -> bool {
        !group.is_empty()
    }

    /// Writes `group` into `txn`; the loop commits it. An error aborts the transaction.
    fn write(
        &mut self,
        txn: &WriteTransaction,
        group: &mut [Self::Command],
    ) -> Result<Self::Written, Self::Error>;

    /// The group's transaction committed: update what memory holds and answer the group.
    fn committed(&mut self, group: Vec<Self::Command>, written: Self::Written);

    /// The group's write or commit failed: answer it, or keep it for after the reopen.
    fn failed(&mut self, group: Vec<Self::Command>, error: Self::Error);

    /// A command that came while the database is being reopened: refuse or hold it.
    fn refuse(&mut self, cmd: Self::Command);

    /// A command of kind [`Kind::Apart`], with its own transactions on `slot`.
    fn apart(&mut self, slot: &Slot, cmd: Self::Command) {
        let _ = slot;
        self.refuse(cmd);
    }

    /// Opens the database on `medium` again and reloads what memory holds of it.
    fn reopen(&mut self, medium: &Medium) -> Result<Database, Self::Error>;

    /// A recovery ended: the database was reopened (`true`), or the writer stops first.
    fn recovered(&mut self, reopened: bool) {
        let _ = reopened;
    }

    /// A group to commit after the one just done (commands held while storage failed,
    /// deletions owed after a reopen); asked until it says `None` or the writer stops.
    fn follow_up(&mut self) -> Option<Vec<Self::Command>> {
        None
    }
}

/// Bounds of a writer's commit groups.
#[derive(Debug, Clone, Copy)]
pub struct Grouping {
    /// A group takes no more commands once it holds this many records.
    pub max_records: usize,
    /// ... or this many bytes.
    pub max_bytes: usize,
    /// How long the writer waits once for more commands when none are queued (zero: not).
    pub linger: Duration,
}

/// Runs the writer loop of store `name` on the calling thread, until `rx` closes or a
/// [`Kind::Shutdown`] command.
pub fn run<A: Apply>(
    name: &'static str,
    slot: &Slot,
    rx: &mut mpsc::Receiver<A::Command>,
    apply: &mut A,
    grouping: Grouping,
) {
    let mut w = Loop {
        name,
        slot,
        rx,
        apply,
        stop: false,
    };
    while !w.stop {
        let Some(first) = w.rx.blocking_recv() else {
            break;
        };
        let mut g = Gathered::default();
        g.take(w.apply.kind(&first), first, &mut w.stop);
        // Gather what queued up while the previous commit was syncing.
        let mut lingered = grouping.linger.is_zero();
        while !w.stop && g.records < grouping.max_records && g.bytes < grouping.max_bytes {
            match w.rx.try_recv() {
                Ok(cmd) => g.take(w.apply.kind(&cmd), cmd, &mut w.stop),
                Err(_) if !lingered => {
                    std::thread::sleep(grouping.linger);
                    lingered = true;
                }
                Err(_) => break,
            }
        }
        let Gathered {
            group,
            apart,
            reopen,
            ..
        } = g;
        for cmd in apart {
            w.apply.apart(w.slot, cmd);
        }
        if reopen {
            // What came with the request is refused now, as what comes during the
            // recovery is: held until the file reopens, it would wait for as long as
            // storage fails (for ever on a dead disk).
            for cmd in group {
                w.apply.refuse(cmd);
            }
            w.slot.failing.store(true, Ordering::Release);
            w.recover();
        } else if !w.commit(group) {
            w.recover();
        }
        while !w.stop {
            let Some(group) = w.apply.follow_up() else {
                break;
            };
            if !w.commit(group) {
                w.recover();
            }
        }
    }
    tracing::debug!(store = name, "writer stopped");
}

/// The commands of one round, sorted by what they ask.
struct Gathered<C> {
    group: Vec<C>,
    apart: Vec<C>,
    reopen: bool,
    records: usize,
    bytes: usize,
}

impl<C> Default for Gathered<C> {
    fn default() -> Self {
        Gathered {
            group: Vec::new(),
            apart: Vec::new(),
            reopen: false,
            records: 0,
            bytes: 0,
        }
    }
}

impl<C> Gathered<C> {
    fn take(&mut self, kind: Kind, cmd: C, stop: &mut bool) {
        match kind {
            Kind::Group { records, bytes } => {
                self.records += records;
                self.bytes += bytes;
                self.group.push(cmd);
            }
            Kind::Apart => self.apart.push(cmd),
            Kind::Wake => {}
            Kind::Reopen => self.reopen = true,
            Kind::Shutdown => *stop = true,
        }
    }
}

/// The loop's state.
struct Loop<'a, A: Apply> {
    name: &'static str,
    slot: &'a Slot,
    rx: &'a mut mpsc::Receiver<A::Command>,
    apply: &'a mut A,
    /// A shutdown was asked for (or the channel closed).
    stop: bool,
}

impl<A: Apply> Loop<'_, A> {
    /// Commits one group; false if storage failed (the group was answered by `failed`).
    fn commit(&mut self, mut group: Vec<A::Command>) -> bool {
        if !self.apply.needs_commit(&group) {
            return true;
        }
        let result = {
            let guard = self.slot.db.read().unwrap_or_else(|p| p.into_inner());
            let apply = &mut *self.apply;
            let group = &mut group;
            catch_unwind(AssertUnwindSafe(|| -> Result<A::Written, A::Error> {
                let d = guard.as_ref().ok_or(StoreError::Reopening)?;
                let txn = d.begin_write().map_err(|e| StoreError::Storage(e.into()))?;
                let written = apply.write(&txn, group)?;
                txn.commit().map_err(|e| StoreError::Storage(e.into()))?;
                Ok(written)
            }))
            .unwrap_or_else(|p| Err(StoreError::Panicked(panic_text(p.as_ref())).into()))
        };
        match result {
            Ok(written) => {
                self.slot.failing.store(false, Ordering::Release);
                self.apply.committed(group, written);
                true
            }
            Err(e) => {
                self.slot.recovering.store(true, Ordering::Release);
                self.slot.failing.store(true, Ordering::Release);
                self.apply.failed(group, e);
                false
            }
        }
    }

    /// Closes and reopens the database with back-off until that works, refusing what
    /// arrives meanwhile; then tells the store how it ended.
    fn recover(&mut self) {
        let reopened = !self.stop && self.reopen_until_it_works();
        self.apply.recovered(reopened);
    }

    /// False if a shutdown came first.
    fn reopen_until_it_works(&mut self) -> bool {
        let mut backoff = Backoff::on(&self.slot.medium);
        loop {
            let delay = backoff.next_delay();
            let deadline = Instant::now() + delay;
            while Instant::now() < deadline {
                match self.rx.try_recv() {
                    Ok(cmd) => match self.apply.kind(&cmd) {
                        Kind::Shutdown => {
                            self.stop = true;
                            return false;
                        }
                        Kind::Wake | Kind::Reopen => {}
                        Kind::Group { .. } | Kind::Apart => self.apply.refuse(cmd),
                    },
                    Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(10)),
                    ),
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.stop = true;
                        return false;
                    }
                }
            }
            let apply = &mut *self.apply;
            match self.slot.reopen(|m| apply.reopen(m)) {
                Ok(()) => {
                    tracing::warn!(store = self.name, "{} storage recovered", self.name);
                    return true;
                }
                Err(e) => {
                    tracing::error!(store = self.name, error = %e, retry_in_ms = delay.as_millis() as u64, "{} storage still failing", self.name);
                }
            }
        }
    }
}

/// The message of a caught panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fault, SimDisk};
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
    use std::sync::Arc;
    use tokio::sync::oneshot;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    /// A counter store: each command adds its key; a command with key 0 panics in `write`.
    struct Counter {
        commits: usize,
    }

    struct Put(u64, oneshot::Sender<Result<(), String>>);

    impl Apply for Counter {
        type Command = Put;
        type Error = StoreError;
        type Written = ();

        fn kind(&self, _: &Put) -> Kind {
            Kind::Group {
                records: 1,
                bytes: 0,
            }
        }

        fn write(&mut self, txn: &WriteTransaction, group: &mut [Put]) -> Result<(), StoreError> {
            let mut t = txn
                .open_table(T)
                .map_err(|e| StoreError::Storage(e.into()))?;
            for Put(k, _) in group.iter() {
                assert!(*k != 0, "a corrupt page");
                t.insert(k, k).map_err(|e| StoreError::Storage(e.into()))?;
            }
            Ok(())
        }

        fn committed(&mut self, group: Vec<Put>, _: ()) {
            self.commits += 1;
            for Put(_, done) in group {
                let _ = done.send(Ok(()));
            }
        }

        fn failed(&mut self, group: Vec<Put>, e: StoreError) {
            for Put(_, done) in group {
                let _ = done.send(Err(e.to_string()));
            }
        }

        fn refuse(&mut self, Put(_, done): Put) {
            let _ = done.send(Err("reopening".into()));
        }

        fn reopen(&mut self, medium: &Medium) -> Result<Database, StoreError> {
            medium.open(1 << 20, false)
        }
    }

    /// Starts a counter store on a simulated disk; its writer thread returns the commit count.
    fn start(disk: &SimDisk) -> (Arc<Slot>, mpsc::Sender<Put>, std::thread::JoinHandle<usize>) {
        let medium = Medium::Sim(disk.clone());
        let slot = Arc::new(Slot::new(
            medium.clone(),
            medium.open(1 << 20, false).unwrap(),
        ));
        let (tx, mut rx) = mpsc::channel(1024);
        let s = slot.clone();
        let h = std::thread::spawn(move || {
            let mut c = Counter { commits: 0 };
            let g = Grouping {
                max_records: 64,
                max_bytes: usize::MAX,
                linger: Duration::ZERO,
            };
            run("test", &s, &mut rx, &mut c, g);
            c.commits
        });
        (slot, tx, h)
    }

    fn put(tx: &mpsc::Sender<Put>, k: u64) -> oneshot::Receiver<Result<(), String>> {
        let (done, rx) = oneshot::channel();
        tx.blocking_send(Put(k, done)).unwrap();
        rx
    }

    fn stored(slot: &Slot) -> u64 {
        slot.read(|d| {
            let txn = d.begin_read().map_err(|e| StoreError::Storage(e.into()))?;
            let t = txn
                .open_table(T)
                .map_err(|e| StoreError::Storage(e.into()))?;
            t.len().map_err(|e| StoreError::Storage(e.into()))
        })
        .unwrap()
    }

    /// Commands queued while a commit syncs share the next one: 500 writes, answered
    /// each, in far fewer transactions.
    #[test]
    fn queued_commands_share_one_commit() {
        let disk = SimDisk::new();
        let (slot, tx, h) = start(&disk);
        let waits: Vec<_> = (1..=500).map(|k| put(&tx, k)).collect();
        for w in waits {
            w.blocking_recv().unwrap().unwrap();
        }
        drop(tx);
        let commits = h.join().unwrap();
        assert_eq!(stored(&slot), 500);
        assert!(commits < 100, "{commits} commits for 500 writes");
    }

    /// A storage error fails the group it hit, then the writer reopens the database and
    /// the next writes go through.
    #[test]
    fn a_failed_commit_reopens_and_later_writes_land() {
        let disk = SimDisk::new();
        let (slot, tx, h) = start(&disk);
        put(&tx, 1).blocking_recv().unwrap().unwrap();
        disk.fail_next(1, Fault::Io);
        assert!(put(&tx, 2).blocking_recv().unwrap().is_err());
        assert!(slot.failing());
        let start = Instant::now();
        while slot.reopens() == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never reopened");
            std::thread::sleep(Duration::from_millis(1));
        }
        put(&tx, 3).blocking_recv().unwrap().unwrap();
        assert!(!slot.failing() && !slot.recovering());
        assert_eq!(stored(&slot), 2);
        drop(tx);
        h.join().unwrap();
    }

    /// A panic inside a write (redb on a corrupt page) ended the queue's writer thread, and
    /// every append after it failed with "closed". It is a failed commit now: answered,
    /// followed by a reopen, and the writer goes on.
    #[test]
    fn a_panic_in_a_write_does_not_end_the_writer() {
        let disk = SimDisk::new();
        let (slot, tx, h) = start(&disk);
        let err = put(&tx, 0).blocking_recv().unwrap().unwrap_err();
        assert!(err.contains("panicked"), "{err}");
        let start = Instant::now();
        loop {
            match put(&tx, 7).blocking_recv().unwrap() {
                Ok(()) => break,
                Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "{e}"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(stored(&slot), 1);
        drop(tx);
        h.join().expect("the writer thread ended normally");
    }
}
