//! The durable-store core under the queue, the sink journal and the control store: where a
//! redb database lives ([`Medium`]: a file, or a simulated disk for tests), how it is
//! opened (small cache, owner-only file), the free space the writer admits against, and
//! the writer thread ([`writer`]: group commit, reopen with back-off after a storage
//! failure, typed errors) each of them runs its writes through.
//!
//! # Why a medium and not a path
//! redb opens a database on any [`redb::StorageBackend`]. With [`SimDisk`] the same queue
//! and journal code runs on a disk that keeps written-but-unsynced pages in memory, loses or
//! tears them at a crash point a test picks, and fails chosen writes with ENOSPC or EIO: the
//! crash-consistency and full-disk tests run in-process, thousands of times a second, and
//! without root (a tmpfs needs it).

#![warn(missing_docs, unreachable_pub)]

pub mod fsmode;
pub mod seeds;
mod sim;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::Database;

pub use sim::{Fault, SimDisk};
pub use writer::{Apply, Grouping, Kind, Slot};

/// Where a store's database lives.
#[derive(Debug, Clone)]
pub enum Medium {
    /// A file on the local filesystem (made owner-only before redb opens it).
    File(PathBuf),
    /// A simulated disk (tests): see [`SimDisk`].
    Sim(SimDisk),
}

/// Store errors that are not redb's own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed (I/O, full disk, corruption).
    #[error(transparent)]
    Storage(#[from] redb::Error),
    /// The file's permissions could not be set.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The writer is reopening the database after a storage failure; retry later.
    #[error("the store is being reopened after a storage failure")]
    Reopening,
    /// redb panicked (a corrupt page); the writer recovers as from a storage error.
    #[error("the storage engine panicked: {0}")]
    Panicked(String),
}

impl Medium {
    /// The file, for a file medium.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Medium::File(p) => Some(p),
            Medium::Sim(_) => None,
        }
    }

    /// Opens (or creates) the database with a cache of `cache_bytes` (redb's default,
    /// 1 GiB, would show as RSS), checking every page's checksum first if `check`.
    pub fn open(&self, cache_bytes: usize, check: bool) -> Result<Database, StoreError> {
        let mut b = Database::builder();
        b.set_cache_size(cache_bytes)
            .set_check_integrity_on_open(check);
        match self {
            Medium::File(path) => {
                crate::fsmode::private_file(path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                Ok(b.create(path).map_err(redb::Error::from)?)
            }
            Medium::Sim(disk) => Ok(b
                .create_with_backend(disk.backend())
                .map_err(redb::Error::from)?),
        }
    }

    /// Bytes the medium itself takes (the file's length).
    pub fn size(&self) -> Option<u64> {
        match self {
            Medium::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            Medium::Sim(d) => Some(d.len()),
        }
    }

    /// Bytes still free where the medium lives (`None`: not measured here).
    pub fn free_bytes(&self) -> Option<u64> {
        match self {
            Medium::File(p) => free_disk_bytes(p),
            Medium::Sim(d) => d.free_bytes(),
        }
    }
}

/// Bytes available to us on the filesystem holding `path` (Unix; `None` elsewhere).
#[cfg(unix)]
fn free_disk_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Bytes available on the filesystem (not measured on this platform: ENOSPC handling only).
#[cfg(not(unix))]
fn free_disk_bytes(_path: &Path) -> Option<u64> {
    None
}

/// The delays of a writer reopening its database after a storage failure: 100 ms,
/// doubling, at most 5 s (a full disk usually clears in seconds, once deletions ran; a
/// tighter loop would only fill the log).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// The back-off for a store on `medium`: a simulated disk is retried after 1 ms (so
    /// thousands of seeded faults run in a test), a file after 100 ms.
    pub fn on(medium: &Medium) -> Backoff {
        match medium {
            Medium::File(_) => Backoff::default(),
            Medium::Sim(_) => Backoff {
                next: Duration::from_millis(1),
            },
        }
    }

    /// The delay before the next attempt; each call doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        d
    }
}
