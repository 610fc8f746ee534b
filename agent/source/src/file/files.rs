//! What the file source asks of the filesystem: reading lines and fingerprints, walking
//! a glob's base, a file's and a directory's identity (inode on Unix, path elsewhere), and
//! the open-files budget.

use super::*;

/// Reads up to `chunk` new bytes and splits off complete lines; `None` if nothing new.
pub(super) fn read_lines(t: &mut Tailed, chunk: usize) -> std::io::Result<Option<Split>> {
    let Some(file) = t.file.as_mut() else {
        return Ok(None);
    };
    let len = file.metadata()?.len();
    // Truncated (copytruncate) — possibly already grown past our offset again, which only
    // the fingerprint of the first bytes reveals.
    let replaced = t.fp_len > 0 && fingerprint(file, t.fp_len)? != Some(t.fp_crc);
    if len < t.read_pos || replaced {
        tracing::info!(path = %t.path.display(), "file truncated; reading from the start");
        t.read_pos = 0;
        t.committed = 0;
        t.committed_in_long = false;
        t.partial.clear();
        t.splitter.reset();
        t.fp_len = 0;
    }
    if len == t.read_pos {
        return Ok(None);
    }
    let want = ((len - t.read_pos) as usize).min(chunk);
    let mut buf = std::mem::take(&mut t.partial);
    let start = buf.len();
    buf.resize(start + want, 0);
    file.seek(SeekFrom::Start(t.read_pos))?;
    let n = read_full(file, &mut buf[start..])?;
    buf.truncate(start + n);
    t.read_pos += n as u64;
    let split = t.splitter.split(&mut buf);
    t.partial = buf;
    Ok((n > 0 || !split.lines.is_empty()).then_some(split))
}

pub(super) fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// CRC of the first `len` bytes, or `None` if the file is shorter.
pub(super) fn fingerprint(f: &mut File, len: u64) -> std::io::Result<Option<u32>> {
    // The length comes from a stored checkpoint: never trust it beyond what we write.
    let mut buf = vec![0u8; len.min(FINGERPRINT_BYTES) as usize];
    f.seek(SeekFrom::Start(0))?;
    let n = read_full(f, &mut buf)?;
    Ok((n == buf.len()).then(|| crc32fast::hash(&buf)))
}

/// The directory to watch for a glob: its literal leading part, watched recursively when a
/// wildcard is not only in the last component (`**`, `a/*/b.log`).
pub(super) fn base_of(pattern: &str) -> Base {
    let mut dir = PathBuf::new();
    let mut wild_parts = 0;
    for c in Path::new(pattern).components() {
        let s = c.as_os_str().to_string_lossy();
        if wild_parts > 0 || s.contains(['*', '?', '[']) {
            wild_parts += if s.contains("**") { 2 } else { 1 };
        } else {
            dir.push(c);
        }
    }
    if wild_parts == 0 {
        // One file by name: its directory sees it created and renamed.
        dir.pop();
        wild_parts = 1;
    }
    if dir.as_os_str().is_empty() {
        dir.push(".");
    }
    Base {
        dir,
        recursive: wild_parts > 1,
        watched: None,
        canonical: None,
    }
}

/// Calls `f` for every file under `root`, following directory symlinks but entering each
/// directory once (by identity), so link loops and diamonds end.
pub(super) fn walk(root: &Path, f: &mut dyn FnMut(&Path, std::fs::Metadata)) {
    let mut visited = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if !visited.insert(dir_id(&dir, &meta)) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(m) = std::fs::metadata(&path) else {
                continue;
            };
            if m.is_dir() {
                stack.push(path);
            } else if m.is_file() {
                f(&path, m);
            }
        }
    }
}

/// Where a file known by `key` is now: the entry of `near`'s directory with that identity.
pub(super) fn find_by_identity(prefix: &str, near: &Path, key: &str) -> Option<(PathBuf, u64)> {
    let entries = std::fs::read_dir(near.parent()?).ok()?;
    entries.flatten().map(|e| e.path()).find_map(|p| {
        let m = std::fs::metadata(&p).ok()?;
        (m.is_file() && file_key(prefix, &p, &m) == key).then_some((p, m.len()))
    })
}

/// Logs a problem with `path` once until it changes (`problems` remembers what was logged).
pub(super) fn log_problem(
    problems: &mut HashMap<PathBuf, String>,
    source: &str,
    path: &Path,
    what: &str,
    error: &str,
    msg: &str,
) {
    let seen = format!("{what}: {error}");
    if problems.get(path) == Some(&seen) {
        return;
    }
    tracing::warn!(source = %source, path = %path.display(), error = %error, "{msg} (logged once while it lasts)");
    problems.insert(path.to_path_buf(), seen);
}

/// How many files may be open: `max_open_files`, and at most half the process's fd limit
/// (the queue, sockets and the rest of the agent need theirs).
#[cfg(unix)]
pub(super) fn fd_budget(max_open_files: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let half = if ok && lim.rlim_cur != libc::RLIM_INFINITY {
        usize::try_from(lim.rlim_cur / 2).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    max_open_files.min(half).max(1)
}

/// How many files may be open: `max_open_files`.
#[cfg(not(unix))]
pub(super) fn fd_budget(max_open_files: usize) -> usize {
    max_open_files.max(1)
}

/// EMFILE / ENFILE: the process or the system is out of descriptors.
pub(super) fn is_out_of_fds(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }
    #[cfg(not(unix))]
    {
        // ERROR_TOO_MANY_OPEN_FILES
        e.raw_os_error() == Some(4)
    }
}

/// (device, inode) of a file.
#[cfg(unix)]
pub(super) fn dev_ino(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// No inodes here: the modification time and length stand in to notice a replaced directory.
#[cfg(not(unix))]
pub(super) fn dev_ino(meta: &std::fs::Metadata) -> (u64, u64) {
    let t = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    (t, 0)
}

/// Identity of a directory for cycle detection: (device, inode).
#[cfg(unix)]
pub(super) fn dir_id(_path: &Path, meta: &std::fs::Metadata) -> String {
    let (d, i) = dev_ino(meta);
    format!("{d}:{i}")
}

/// Identity of a directory for cycle detection: its canonical path.
#[cfg(not(unix))]
pub(super) fn dir_id(path: &Path, _meta: &std::fs::Metadata) -> String {
    std::fs::canonicalize(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string_lossy().into_owned())
}

/// Checkpoint key of a file: the source's prefix plus the file's identity.
#[cfg(unix)]
pub(super) fn file_key(prefix: &str, _path: &Path, meta: &std::fs::Metadata) -> String {
    let (d, i) = dev_ino(meta);
    format!("{prefix}{d}:{i}")
}

/// Checkpoint key of a file: the source's prefix plus the file's path (no inodes here).
#[cfg(not(unix))]
pub(super) fn file_key(prefix: &str, path: &Path, _meta: &std::fs::Metadata) -> String {
    format!("{prefix}{}", path.display())
}
