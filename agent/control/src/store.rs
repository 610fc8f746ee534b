//! `control.redb`, the control plane's store. Writes go through the store core's writer
//! thread ([`dataweaver_store::writer`]): a fleet reporting at once costs one sync per
//! group, not one per agent, and a storage failure closes and reopens the file with
//! back-off (redb latches an I/O error until then). Reads run on the open file.

use std::sync::Arc;

use redb::{Database, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use dataweaver_store::writer::{self, Apply, Grouping, Kind, Slot};
use dataweaver_store::{Medium, StoreError};

use crate::sink::{ControlError, MODULES, STATUS};

/// One write: its own refusal (`Ok(Err(..))`, decided before it writes anything) leaves
/// the group alone; a storage error (`Err`) fails the group.
pub(crate) type WriteFn =
    Box<dyn FnOnce(&WriteTransaction) -> Result<Result<(), ControlError>, ControlError> + Send>;

/// A request to the writer thread.
pub(crate) enum Command {
    /// A write, and who waits for its commit.
    Write {
        f: Option<WriteFn>,
        done: oneshot::Sender<Result<(), ControlError>>,
    },
    /// A read failed for its storage: redb latches that too, so reopen the file.
    Reopen,
}

/// The store: the file as readers share it, and the writer thread's queue.
pub(crate) struct Store {
    pub(crate) slot: Arc<Slot>,
    tx: mpsc::Sender<Command>,
}

/// Modules are read once per agent that needs one: a small cache, not redb's 1 GiB.
const CACHE_BYTES: usize = 1 << 20;

/// Opens the file and makes sure both tables exist (a read of a missing one would fail).
/// A panic of redb (a corrupt page) is an error: the writer keeps trying, with back-off.
fn open_db(medium: &Medium) -> Result<Database, ControlError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let d = medium.open(CACHE_BYTES, false)?;
        let txn = d.begin_write().map_err(db_err)?;
        txn.open_table(MODULES).map_err(db_err)?;
        txn.open_table(STATUS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(d)
    }))
    .unwrap_or_else(|p| {
        Err(ControlError::Open(StoreError::Panicked(
            writer::panic_text(p.as_ref()),
        )))
    })
}

pub(crate) fn db_err<E: Into<redb::Error>>(e: E) -> ControlError {
    ControlError::Storage(e.into())
}

impl Store {
    /// Opens the file on `medium` (now, so a sink that cannot use it says so at start) and
    /// starts the writer thread.
    pub(crate) fn open(medium: Medium) -> Result<Store, ControlError> {
        let d = open_db(&medium)?;
        let slot = Arc::new(Slot::new(medium, d));
        let (tx, mut rx) = mpsc::channel(1024);
        let s = slot.clone();
        std::thread::Builder::new()
            .name("control-writer".into())
            .spawn(move || {
                let grouping = Grouping {
                    max_records: 256,
                    max_bytes: usize::MAX,
                    linger: std::time::Duration::ZERO,
                };
                writer::run("control", &s, &mut rx, &mut Writer, grouping);
            })
            .map_err(|e| ControlError::Task(format!("control-writer thread: {e}")))?;
        Ok(Store { slot, tx })
    }

    /// Runs `f` in the next group's write transaction; returns once that committed.
    pub(crate) async fn write(&self, f: WriteFn) -> Result<(), ControlError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Write { f: Some(f), done })
            .await
            .map_err(|_| ControlError::Task("control writer stopped".into()))?;
        rx.await
            .map_err(|_| ControlError::Task("control writer stopped".into()))?
    }

    /// Runs `f` on the open file, on a blocking thread. A storage error has the writer
    /// reopen the file, as a failed write does.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, ControlError> {
        let slot = self.slot.clone();
        let r = tokio::task::spawn_blocking(move || slot.read(f))
            .await
            .map_err(|e| ControlError::Task(e.to_string()))?;
        if let Err(ControlError::Storage(e)) = &r {
            tracing::error!(error = %e, "control store read failed; reopening it");
            let _ = self.tx.try_send(Command::Reopen);
        }
        r
    }
}

/// The writer thread's side: the writes of a group in one transaction.
struct Writer;

impl Apply for Writer {
    type Command = Command;
    type Error = ControlError;
    type Written = Vec<Result<(), ControlError>>;

    fn kind(&self, cmd: &Command) -> Kind {
        match cmd {
            Command::Write { .. } => Kind::Group {
                records: 1,
                bytes: 0,
            },
            Command::Reopen => Kind::Reopen,
        }
    }

    fn write(
        &mut self,
        txn: &WriteTransaction,
        group: &mut [Command],
    ) -> Result<Self::Written, ControlError> {
        let mut answers = Vec::with_capacity(group.len());
        for cmd in group {
            answers.push(match cmd {
                Command::Write { f, .. } => match f.take() {
                    Some(f) => f(txn)?,
                    None => Ok(()),
                },
                Command::Reopen => Ok(()),
            });
        }
        Ok(answers)
    }

    fn committed(&mut self, group: Vec<Command>, answers: Self::Written) {
        for (cmd, a) in group.into_iter().zip(answers) {
            if let Command::Write { done, .. } = cmd {
                let _ = done.send(a);
            }
        }
    }

    fn failed(&mut self, group: Vec<Command>, e: ControlError) {
        tracing::error!(error = %e, "control store write failed; reopening it");
        for cmd in group {
            if let Command::Write { done, .. } = cmd {
                let _ = done.send(Err(ControlError::Failed(e.to_string())));
            }
        }
    }

    fn refuse(&mut self, cmd: Command) {
        if let Command::Write { done, .. } = cmd {
            let _ = done.send(Err(ControlError::Open(StoreError::Reopening)));
        }
    }

    fn reopen(&mut self, medium: &Medium) -> Result<Database, ControlError> {
        open_db(medium)
    }
}
