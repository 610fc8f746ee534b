//! A corrupt queue file: treating redb's panics as corruption, setting the file aside,
//! salvaging what still reads from it, and the checkpoint side copy that survives it.
//!
//! redb trusts its own pages: a flipped byte in a page header or a B-tree node can make it
//! panic (index out of bounds, failed assertion) rather than return an error. Every open,
//! check and salvage read of a possibly bad file runs under [`guarded`], which turns a panic
//! into [`QueueError::Unreadable`], so an agent never crash-loops on a bad file.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Once;

use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable};

use super::{CHECKPOINTS, QueueError, db};

/// File name of the checkpoints' side copy inside the data directory.
pub const MIRROR_NAME: &str = "queue-checkpoints.cbor";
/// Version byte at the start of the side copy.
const MIRROR_VERSION: u8 = 1;

thread_local! {
    /// Set while this thread runs guarded code: its panics are recorded, not printed.
    static QUIET: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that keeps the default output for every panic except those
/// of a thread inside [`guarded`], whose message is kept for the error instead.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = QUIET.with(|q| {
                let mut q = q.borrow_mut();
                match q.as_mut() {
                    Some(slot) => {
                        *slot = info.to_string();
                        true
                    }
                    None => false,
                }
            });
            if !quiet {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic in it into [`QueueError::Unreadable`] (`what` says what was being
/// done). Whatever `f` owned is dropped while unwinding: keep the database outside of it.
pub(crate) fn guarded<R>(
    what: &str,
    f: impl FnOnce() -> Result<R, QueueError>,
) -> Result<R, QueueError> {
    install_hook();
    let outer = QUIET.with(|q| q.borrow_mut().replace(String::new()));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    let message = QUIET.with(|q| std::mem::replace(&mut *q.borrow_mut(), outer));
    match result {
        Ok(r) => r,
        Err(_) => Err(QueueError::Unreadable(format!(
            "redb panicked while {what}: {}",
            message.unwrap_or_default().replace('\n', " ")
        ))),
    }
}

/// Renames a bad queue file to `queue.redb.corrupt-<unix seconds>` beside it (with `-N`
/// added if that name is taken), readable by its owner only.
pub fn set_aside(path: &Path) -> Result<PathBuf, QueueError> {
    dataweaver_store::fsmode::set_aside(path).map_err(|source| QueueError::Io {
        path: path.into(),
        source,
    })
}

/// A possibly corrupt queue file opened for reading, never written: read-only if it was
/// closed cleanly, else a repaired temporary copy (removed when this is dropped).
pub(crate) enum Salvage {
    ReadOnly(ReadOnlyDatabase),
    Copy(Database, PathBuf),
    /// A stopped agent's own queue file, repaired in place as the agent would.
    InPlace(Database),
}

impl Salvage {
    /// Opens `path` for salvage; errs (never panics) if redb cannot read it at all.
    pub(crate) fn open(path: &Path) -> Result<Salvage, QueueError> {
        let ro = guarded("opening the file read-only", || {
            Database::builder()
                .set_cache_size(2 << 20)
                .open_read_only(path)
                .map_err(db)
        });
        match ro {
            Ok(d) => return Ok(Salvage::ReadOnly(d)),
            // Not closed cleanly: redb must repair it, which writes. Work on a copy.
            Err(QueueError::Storage(redb::Error::RepairAborted)) => {}
            Err(e) => return Err(e),
        }
        let copy = path.with_extension(format!(
            "{}.salvage-{}",
            path.extension().and_then(|e| e.to_str()).unwrap_or("redb"),
            std::process::id()
        ));
        std::fs::copy(path, &copy).map_err(|source| QueueError::Io {
            path: copy.clone(),
            source,
        })?;
        let opened = guarded("repairing a copy of the file", || {
            Database::builder()
                .set_cache_size(2 << 20)
                .open(&copy)
                .map_err(db)
        });
        match opened {
            Ok(d) => Ok(Salvage::Copy(d, copy)),
            Err(e) => {
                let _ = std::fs::remove_file(&copy);
                Err(e)
            }
        }
    }

    /// Opens a stopped agent's queue file, repairing it in place if it needs it.
    pub(crate) fn open_in_place(path: &Path) -> Result<Salvage, QueueError> {
        guarded("opening the file", || {
            Database::builder()
                .set_cache_size(2 << 20)
                .open(path)
                .map_err(db)
        })
        .map(Salvage::InPlace)
    }

    /// A read transaction on the file.
    pub(crate) fn begin_read(&self) -> Result<ReadTransaction, QueueError> {
        guarded("starting a read", || match self {
            Salvage::ReadOnly(d) => d.begin_read().map_err(db),
            Salvage::Copy(d, _) | Salvage::InPlace(d) => d.begin_read().map_err(db),
        })
    }
}

impl Drop for Salvage {
    fn drop(&mut self) {
        if let Salvage::Copy(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Every checkpoint still readable in `txn`; the flag is false if some could not be read.
pub(crate) fn read_checkpoints(txn: &ReadTransaction) -> (BTreeMap<String, Vec<u8>>, bool) {
    let mut out = BTreeMap::new();
    let complete = guarded("reading checkpoints", || {
        let table = txn.open_table(CHECKPOINTS).map_err(db)?;
        for e in table.iter().map_err(db)? {
            let (k, v) = e.map_err(db)?;
            out.insert(k.value().to_string(), v.value().to_vec());
        }
        Ok(())
    })
    .is_ok();
    (out, complete)
}

/// The checkpoints to carry into a fresh queue after `aside` was set aside: those still
/// readable in it win (they were committed with their records); the side copy fills in
/// what could not be read. Says where they came from.
pub(crate) fn recover_checkpoints(
    aside: &Path,
    mirror: &Path,
) -> (BTreeMap<String, Vec<u8>>, String) {
    let (salvaged, complete, problem) = match Salvage::open(aside).and_then(|s| {
        let txn = s.begin_read()?;
        Ok(read_checkpoints(&txn))
    }) {
        Ok((cps, complete)) => (cps, complete, None),
        Err(e) => (BTreeMap::new(), false, Some(e.to_string())),
    };
    if complete {
        return (salvaged, "the set-aside file".into());
    }
    let mut cps = match read_mirror(mirror) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint side copy unusable");
            BTreeMap::new()
        }
    };
    let from_file = salvaged.len();
    cps.extend(salvaged);
    let why = problem.unwrap_or_else(|| "part of the table was unreadable".into());
    (
        cps,
        format!("the side copy ({from_file} from the set-aside file; it could not be read: {why})"),
    )
}

/// Writes the checkpoints' side copy atomically: a temporary file (0600), fsync, rename,
/// fsync of the directory. `[version][crc32 of the rest, LE][CBOR map]`.
fn write_mirror_bytes(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("cbor.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(&[MIRROR_VERSION])?;
    f.write_all(&crc32fast::hash(body).to_le_bytes())?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory is.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the checkpoints' side copy; a missing file is an empty one.
pub(crate) fn read_mirror(path: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let (head, body) = bytes.split_at_checked(5).ok_or_else(|| bad("too short"))?;
    if head.first() != Some(&MIRROR_VERSION) {
        return Err(bad("unknown version"));
    }
    let crc = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    ciborium::from_reader(body).map_err(|e| bad(&e.to_string()))
}

/// The state the side-copy thread writes from.
#[derive(Default)]
struct MirrorState {
    checkpoints: BTreeMap<String, Vec<u8>>,
    dirty: bool,
    stop: bool,
}

/// Keeps the checkpoints' side copy: the queue writer updates the map in place (no copy,
/// no I/O on its thread); a thread of its own rewrites the file at most once per `every`.
pub(crate) struct Mirror {
    shared: std::sync::Arc<(std::sync::Mutex<MirrorState>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mirror {
    /// Starts the thread, writing `checkpoints` first (the queue's table is the truth); no
    /// thread and no file without a `path`.
    pub(crate) fn start(
        path: Option<PathBuf>,
        checkpoints: BTreeMap<String, Vec<u8>>,
        every: std::time::Duration,
    ) -> Mirror {
        let shared = std::sync::Arc::new((
            std::sync::Mutex::new(MirrorState {
                dirty: !checkpoints.is_empty(),
                checkpoints,
                stop: false,
            }),
            std::sync::Condvar::new(),
        ));
        let s = shared.clone();
        let thread = path.and_then(|path| {
            std::thread::Builder::new()
                .name("queue-mirror".into())
                .spawn(move || mirror_loop(&path, &s, every))
                .map_err(
                    |e| tracing::warn!(error = %e, "no checkpoint side copy: thread not started"),
                )
                .ok()
        });
        Mirror { shared, thread }
    }

    /// Applies committed checkpoint changes (an empty value deletes).
    pub(crate) fn update(&self, changes: impl IntoIterator<Item = (String, Vec<u8>)>) {
        let Ok(mut st) = self.shared.0.lock() else {
            return;
        };
        for (k, v) in changes {
            st.dirty = true;
            if v.is_empty() {
                st.checkpoints.remove(&k);
            } else {
                st.checkpoints.insert(k, v);
            }
        }
        if st.dirty {
            self.shared.1.notify_one();
        }
    }

    /// Replaces the whole map (after the queue file was reopened).
    pub(crate) fn replace(&self, checkpoints: BTreeMap<String, Vec<u8>>) {
        if let Ok(mut st) = self.shared.0.lock() {
            st.checkpoints = checkpoints;
            st.dirty = true;
            self.shared.1.notify_one();
        }
    }
}

impl Drop for Mirror {
    /// Writes what is pending and stops the thread.
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.0.lock() {
            st.stop = true;
            self.shared.1.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mirror_loop(
    path: &Path,
    shared: &(std::sync::Mutex<MirrorState>, std::sync::Condvar),
    every: std::time::Duration,
) {
    let (lock, cv) = shared;
    let mut last: Option<std::time::Instant> = None;
    let mut failing = false;
    loop {
        let Ok(mut st) = lock.lock() else { return };
        while !st.dirty && !st.stop {
            st = match cv.wait(st) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
        // At most once per `every`, unless stopping.
        while let Some(wait) = last
            .map(|t| every.saturating_sub(t.elapsed()))
            .filter(|w| !w.is_zero() && !st.stop)
        {
            st = match cv.wait_timeout(st, wait) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
        if !st.dirty {
            return; // stopping with nothing pending
        }
        let mut body = Vec::new();
        let encoded = ciborium::into_writer(&st.checkpoints, &mut body);
        st.dirty = false;
        let stop = st.stop;
        drop(st);
        last = Some(std::time::Instant::now());
        let written = encoded
            .map_err(std::io::Error::other)
            .and_then(|()| write_mirror_bytes(path, &body));
        match written {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the checkpoints' side copy; retrying");
                }
                failing = true;
                if let Ok(mut st) = lock.lock() {
                    st.dirty = true;
                }
            }
        }
        if stop {
            return;
        }
    }
}
