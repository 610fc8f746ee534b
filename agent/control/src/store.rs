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

/// A write and who waits for its commit.
pub(crate) struct Write {
    f: Option<WriteFn>,
    done: oneshot::Sender<Result<(), ControlError>>,
}

/// The store: the file as readers share it, and the writer thread's queue.
pub(crate) struct Store {
    pub(crate) slot: Arc<Slot>,
    tx: mpsc::Sender<Write>,
}

/// Modules are read once per agent that needs one: a small cache, not redb's 1 GiB.
const CACHE_BYTES: usize = 1 << 20;

/// Opens the file and makes sure both tables exist (a read of a missing one would fail).
fn open_db(medium: &Medium) -> Result<Database, ControlError> {
    let d = medium.open(CACHE_BYTES, false)?;
    let txn = d.begin_write().map_err(db_err)?;
    txn.open_table(MODULES).map_err(db_err)?;
    txn.open_table(STATUS).map_err(db_err)?;
    txn.commit().map_err(db_err)?;
    Ok(d)
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
            .send(Write { f: Some(f), done })
            .await
            .map_err(|_| ControlError::Task("control writer stopped".into()))?;
        rx.await
            .map_err(|_| ControlError::Task("control writer stopped".into()))?
    }

    /// Runs `f` on the open file, on a blocking thread.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, ControlError> {
        let slot = self.slot.clone();
        tokio::task::spawn_blocking(move || slot.read(f))
            .await
            .map_err(|e| ControlError::Task(e.to_string()))?
    }
}

/// The writer thread's side: the writes of a group in one transaction.
struct Writer;

impl Apply for Writer {
    type Command = Write;
    type Error = ControlError;
    type Written = Vec<Result<(), ControlError>>;

    fn kind(&self, _: &Write) -> Kind {
        Kind::Group {
            records: 1,
            bytes: 0,
        }
    }

    fn write(
        &mut self,
        txn: &WriteTransaction,
        group: &mut [Write],
    ) -> Result<Self::Written, ControlError> {
        let mut answers = Vec::with_capacity(group.len());
        for w in group {
            answers.push(match w.f.take() {
                Some(f) => f(txn)?,
                None => Ok(()),
            });
        }
        Ok(answers)
    }

    fn committed(&mut self, group: Vec<Write>, answers: Self::Written) {
        for (w, a) in group.into_iter().zip(answers) {
            let _ = w.done.send(a);
        }
    }

    fn failed(&mut self, group: Vec<Write>, e: ControlError) {
        tracing::error!(error = %e, "control store write failed; reopening it");
        for w in group {
            let _ = w.done.send(Err(ControlError::Failed(e.to_string())));
        }
    }

    fn refuse(&mut self, w: Write) {
        let _ = w.done.send(Err(ControlError::Open(StoreError::Reopening)));
    }

    fn reopen(&mut self, medium: &Medium) -> Result<Database, ControlError> {
        open_db(medium)
    }
}
