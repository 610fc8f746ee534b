//! Rotating JSONL files, exactly once: on start the output truncates its current file to
//! the committed offset and removes files past the committed index.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Output, format_lines};
use crate::journal::Entry;

/// Rotating `out-NNNNNNNN.jsonl` files in a directory.
pub struct JsonlOutput {
    dir: PathBuf,
    max_file_bytes: u64,
    index: u64,
    offset: u64,
    /// Last committed (index, offset).
    committed: (u64, u64),
    file: File,
    buf: Vec<u8>,
    mode: u32,
    /// Bytes of the current file before this offset are out of the page cache.
    uncached: u64,
    /// A write or a rollback failed and no rollback has succeeded since: the file or its
    /// cursor may be anywhere, so nothing is written (the drainer rolls back after every
    /// failed round, and retries).
    unsettled: bool,
}

/// How far behind the end a synced output stays in the page cache, for readers following
/// it. Older pages are dropped so that the kernel reuses a few warm pages instead of taking
/// fresh ones for every write (see [`JsonlOutput::drop_behind`]).
const CACHED_TAIL: u64 = 16 << 20;

impl JsonlOutput {
    /// Opens the output at a committed position (`None` for a fresh start), discarding
    /// anything written after that position; files get `mode`.
    pub fn open(
        dir: &Path,
        max_file_bytes: u64,
        mode: u32,
        position_of: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> std::io::Result<Self> {
        dataweaver_store::fsmode::output_dir(dir, mode)?;
        // The canonical path names the position, however the config spelled it.
        let dir = dir.canonicalize()?;
        let existing: Vec<u64> = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| file_index(&e.path()))
            .collect();
        let (mut index, mut offset) = match position_of(&output_name(&dir))
            .as_deref()
            .and_then(parse_position)
        {
            Some(p) => p,
            // No position (a new journal, or files from elsewhere): never touch existing
            // files, start after them.
            _ => (existing.iter().max().map_or(1, |m| m + 1), 0),
        };
        // Files past the committed one were started after the last commit.
        for i in existing.iter().filter(|&&i| i > index) {
            std::fs::remove_file(jsonl_path(&dir, *i))?;
        }
        let mut path = jsonl_path(&dir, index);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Someone moved or cut our file: never pad it; continue in a new one.
            tracing::warn!(path = %path.display(), len, offset, "output file is shorter than committed; starting a new file");
            index += 1;
            offset = 0;
            path = jsonl_path(&dir, index);
        }
        let file = dataweaver_store::fsmode::create_file(&path, mode, false)?;
        if file.metadata()?.len() > offset {
            tracing::info!(path = %path.display(), offset, "truncating output to its last committed position");
            file.set_len(offset)?;
            file.sync_all()?;
        }
        let mut out = JsonlOutput {
            dir,
            max_file_bytes,
            index,
            offset,
            committed: (index, offset),
            file,
            buf: Vec::new(),
            mode,
            uncached: 0,
            unsettled: false,
        };
        out.seek_end()?;
        Ok(out)
    }

    fn seek_end(&mut self) -> std::io::Result<()> {
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::Start(self.offset))?;
        Ok(())
    }

    /// Drops the synced pages more than [`CACHED_TAIL`] behind the end from the page cache
    /// (all of them with `all`, for a finished file). An output is written once and read, if
    /// at all, by a follower close behind; keeping every page cached makes each write take
    /// pages the kernel has never used or has handed back to a VM's host, and on such a
    /// host (virtio-balloon free-page reporting) touching one costs microseconds: a quarter
    /// of the sink's CPU in the e2e bench. Advice only: an error changes nothing.
    fn drop_behind(&mut self, all: bool) {
        let keep = if all { 0 } else { CACHED_TAIL };
        let until = self.offset.saturating_sub(keep);
        if until <= self.uncached {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // The kernel drops only whole folios inside the range, and a folio (2 MiB on
            // x86, larger with arm64's bigger pages) may straddle the previous end: start
            // a tail's length before it (advice over absent pages costs little).
            let start = self.uncached.saturating_sub(CACHED_TAIL);
            let (Ok(from), Ok(len)) = (
                libc::off_t::try_from(start),
                libc::off_t::try_from(until - start),
            ) else {
                return;
            };
            // SAFETY: plain syscall on an open descriptor; only advice for the cache.
            unsafe {
                libc::posix_fadvise(self.file.as_raw_fd(), from, len, libc::POSIX_FADV_DONTNEED)
            };
        }
        self.uncached = until;
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // The next file first: if it cannot be made, this one stays current, as it was.
        let next = self.create(self.index + 1)?;
        self.drop_behind(true);
        self.file = next;
        self.index += 1;
        self.offset = 0;
        self.uncached = 0;
        Ok(())
    }

    /// Creates (or empties) file number `index`, with its directory entry durable.
    fn create(&self, index: u64) -> std::io::Result<File> {
        let f =
            dataweaver_store::fsmode::create_file(&jsonl_path(&self.dir, index), self.mode, true)?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(f)
    }
}

impl Output for JsonlOutput {
    fn name(&self) -> String {
        output_name(&self.dir)
    }

    fn write(&mut self, entries: &[(u64, Entry)]) -> std::io::Result<()> {
        if self.unsettled {
            return Err(std::io::Error::other(
                "the last rollback failed: nothing is written until one succeeds",
            ));
        }
        if self.offset >= self.max_file_bytes {
            self.rotate()?;
        }
        self.buf.clear();
        format_lines(entries, &mut self.buf);
        if let Err(e) = self
            .file
            .write_all(&self.buf)
            .and_then(|_| self.file.sync_data())
        {
            // Leave the file at the last good offset; the round is retried after a
            // rollback, which also repairs what these could not.
            self.unsettled = true;
            let _ = self.file.set_len(self.offset);
            let _ = self.seek_end();
            return Err(e);
        }
        self.offset += self.buf.len() as u64;
        self.drop_behind(false);
        Ok(())
    }

    fn position(&self) -> Vec<u8> {
        let mut p = self.index.to_le_bytes().to_vec();
        p.extend_from_slice(&self.offset.to_le_bytes());
        p
    }

    fn committed(&mut self) {
        self.committed = (self.index, self.offset);
    }

    fn restore(&mut self, committed: &[u8]) -> std::io::Result<()> {
        if let Some(p) = parse_position(committed) {
            self.committed = p;
        }
        self.rollback()
    }

    fn rollback(&mut self) -> std::io::Result<()> {
        // Cleared only at the end: a rollback cut short leaves nothing to write into.
        self.unsettled = true;
        let (mut index, mut offset) = self.committed;
        let committed = jsonl_path(&self.dir, index);
        // Opened by name even when it is the current file, whose handle may point at a file
        // someone removed; opened before anything is removed, so that a failure here leaves
        // the files and this output's state as they were.
        let file = match std::fs::metadata(&committed) {
            Ok(m) if m.len() >= offset => OpenOptions::new().write(true).open(&committed)?,
            Ok(m) => {
                // As on open: never pad someone's cut; continue in a new file.
                tracing::warn!(path = %committed.display(), len = m.len(), offset, "output file is shorter than committed; starting a new file");
                (index, offset) = (index + 1, 0);
                self.create(index)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %committed.display(), "committed output file is gone; starting a new file");
                (index, offset) = (index + 1, 0);
                self.create(index)?
            }
            Err(e) => return Err(e),
        };
        if self.index > index {
            // Started after the last commit: nothing in it counts.
            let _ = std::fs::remove_file(jsonl_path(&self.dir, self.index));
        }
        if self.index != index {
            self.uncached = 0;
        }
        self.file = file;
        self.index = index;
        self.offset = offset;
        self.uncached = self.uncached.min(offset);
        self.file.set_len(offset)?;
        self.seek_end()?;
        self.unsettled = false;
        Ok(())
    }
}

/// A JSONL position: file index and byte offset, u64 LE each.
fn parse_position(p: &[u8]) -> Option<(u64, u64)> {
    let index = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let offset = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    (p.len() == 16).then_some((index, offset))
}

fn output_name(dir: &Path) -> String {
    format!("jsonl:{}", dir.display())
}

/// Path of the JSONL file number `index`.
pub fn jsonl_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("out-{index:08}.jsonl"))
}

fn file_index(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("out-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataweaver_wire::Record;

    fn entry(payload_bytes: usize, records: usize) -> (u64, Entry) {
        // Seqs start at 1, as a queue's do (the journal never holds seq 0).
        let records = (1..=records as u64)
            .map(|seq| Record {
                seq,
                payload: vec![b'x'; payload_bytes].into(),
                ..Default::default()
            })
            .collect();
        (1, Entry::of_records("a", "q", records))
    }

    /// Whether `dir` is on tmpfs or ramfs, whose pages are the files (no advice drops them).
    #[cfg(target_os = "linux")]
    fn in_memory(dir: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: statfs fills the zeroed struct for a NUL-terminated path.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return false;
        }
        // The magic numbers are 32 bits; f_type is signed on some targets.
        const TMPFS: u32 = 0x0102_1994;
        const RAMFS: u32 = 0x8584_58f6;
        matches!(st.f_type as u32, TMPFS | RAMFS)
    }

    /// The fractions of the first 4 MiB and of the last 4 MiB of `len` bytes of `path` that
    /// are in the page cache.
    #[cfg(target_os = "linux")]
    fn resident(path: &Path, len: u64) -> (f64, f64) {
        use std::os::fd::AsRawFd;
        let f = File::open(path).expect("open");
        let len = usize::try_from(len).expect("len");
        // SAFETY: sysconf reads a constant of the system.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page");
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of an open file, unmapped before return;
        // mincore writes one byte per page into `vec`, which holds `pages` bytes.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(at, libc::MAP_FAILED, "mmap");
            assert_eq!(libc::mincore(at, len, vec.as_mut_ptr()), 0, "mincore");
            libc::munmap(at, len);
        }
        let share = |v: &[u8]| v.iter().filter(|&&b| b & 1 == 1).count() as f64 / v.len() as f64;
        let n = (4 << 20) / page;
        (share(&vec[..n]), share(&vec[pages - n..]))
    }

    #[test]
    fn a_long_output_keeps_only_its_tail_cached_and_loses_no_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = JsonlOutput::open(dir.path(), 1 << 40, 0o600, |_| None).expect("open");
        let round = entry(1000, 1024);
        for _ in 0..24 {
            out.write(std::slice::from_ref(&round)).expect("write");
            out.committed();
        }
        assert!(out.offset > CACHED_TAIL + (4 << 20), "wrote {}", out.offset);
        assert_eq!(out.uncached, out.offset - CACHED_TAIL);
        #[cfg(target_os = "linux")]
        if in_memory(&out.dir) {
            eprintln!("SKIPPING the page-cache check: the temporary directory is in memory");
        } else {
            let path = jsonl_path(&out.dir, out.index);
            let (head, tail) = resident(&path, out.offset);
            if tail < 0.9 {
                // ZFS, 9p or FUSE without the page cache, or a tight memory limit.
                eprintln!(
                    "SKIPPING the page-cache check: only {:.0} % of the tail is cached here",
                    tail * 100.0
                );
            } else {
                assert!(
                    head < 0.1,
                    "{:.0} % of the old pages still cached",
                    head * 100.0
                );
            }
        }
        // A rollback below what was dropped keeps the mark inside the file.
        let position = out.position();
        out.write(std::slice::from_ref(&round)).expect("write");
        out.restore(&position).expect("restore");
        assert!(out.uncached <= out.offset);
        let on_disk = std::fs::read(jsonl_path(&out.dir, out.index)).expect("read");
        assert_eq!(on_disk.len() as u64, out.offset);
        assert_eq!(on_disk.iter().filter(|&&b| b == b'\n').count(), 24 * 1024);
    }

    /// Writes and commits `round`, checks that the committed file holds exactly the
    /// committed offset's bytes on disk under its name, and returns (index, offset).
    fn commit_on_disk(out: &mut JsonlOutput, round: &(u64, Entry)) -> (u64, u64) {
        out.write(std::slice::from_ref(round)).expect("write");
        out.committed();
        let (index, offset) = parse_position(&out.position()).expect("position");
        let len = std::fs::metadata(jsonl_path(&out.dir, index)).map(|m| m.len());
        assert_eq!(
            len.ok(),
            Some(offset),
            "the committed round is not in file {index} on disk"
        );
        (index, offset)
    }

    /// An output in `dir` whose first file is full and committed and whose second holds an
    /// uncommitted round of one record, and that round.
    fn a_second_file_begun(dir: &Path) -> (JsonlOutput, (u64, Entry)) {
        let big = entry(100, 20);
        let small = entry(100, 1);
        let mut max = Vec::new();
        format_lines(std::slice::from_ref(&big), &mut max);
        let mut out = JsonlOutput::open(dir, max.len() as u64, 0o600, |_| None).expect("open");
        out.write(std::slice::from_ref(&big)).expect("write");
        out.committed();
        out.write(std::slice::from_ref(&small)).expect("write");
        assert_eq!(out.index, 2, "the second round starts a new file");
        (out, small)
    }

    /// Regression: a rollback removed the file written since the last commit, then failed
    /// to open the committed one (deleted here by someone else), and the next round was
    /// written into the removed file and committed: acknowledged and lost.
    #[test]
    fn rollback_with_the_committed_file_deleted_writes_no_round_into_a_removed_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut out, small) = a_second_file_begun(dir.path());
        // The round fails before its commit; meanwhile the committed file is deleted.
        std::fs::remove_file(jsonl_path(&out.dir, 1)).expect("remove");
        let _ = out.rollback(); // the drainer logs a failed rollback and goes on
        let (index, _) = commit_on_disk(&mut out, &small);
        let text = std::fs::read_to_string(jsonl_path(&out.dir, index)).expect("read");
        assert_eq!(text.lines().count(), 1, "only the retried round, once");
    }

    /// Regression: with the committed file gone, a rollback continued in the current file
    /// through its open handle, and when that file had been removed too (`rm out-*`), the
    /// retried round went into the removed file and was committed.
    #[test]
    fn rollback_with_every_file_deleted_writes_no_round_into_a_removed_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut out, small) = a_second_file_begun(dir.path());
        for i in [1, 2] {
            std::fs::remove_file(jsonl_path(&out.dir, i)).expect("remove");
        }
        out.rollback().expect("rollback");
        commit_on_disk(&mut out, &small);
    }

    /// A rollback that cannot reach the committed file refuses every write until one
    /// succeeds, and loses nothing once it does.
    #[cfg(unix)]
    #[test]
    fn a_failed_rollback_refuses_writes_until_a_rollback_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut out, small) = a_second_file_begun(dir.path());
        // The committed file becomes unreadable (a symlink to itself: ELOOP, even as root).
        let first = jsonl_path(&out.dir, 1);
        std::fs::remove_file(&first).expect("remove");
        std::os::unix::fs::symlink(&first, &first).expect("symlink");
        assert!(out.rollback().is_err());
        assert!(out.write(std::slice::from_ref(&small)).is_err());
        assert!(
            out.write(std::slice::from_ref(&small)).is_err(),
            "still refused"
        );
        std::fs::remove_file(&first).expect("remove the link");
        out.rollback().expect("rollback");
        let (_, offset) = commit_on_disk(&mut out, &small);
        let mut one = Vec::new();
        format_lines(std::slice::from_ref(&small), &mut one);
        assert_eq!(offset, one.len() as u64, "one small round, once");
    }
}
