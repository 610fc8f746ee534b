//! The `file` source: tails files matching globs, across appends, rotation and truncation.
//!
//! # Delivery
//! The read offset of a file is a checkpoint stored in the queue *in the same transaction*
//! as the records read before it, so after a crash the source resumes exactly after the
//! last committed line. A partial last line (no newline yet) is not consumed until its
//! newline arrives.
//!
//! # Identity
//! A file is known by its device and inode (its path elsewhere), so a rotation by rename
//! keeps its checkpoint. A new file that reuses an inode is told apart by a fingerprint:
//! a CRC of its first bytes (up to 256) stored with the offset.
//!
//! # Rotation and truncation
//! A tracked file that no longer matches the globs (renamed away or deleted) is read to its
//! end and then dropped. A file that shrank below the offset was truncated (copytruncate):
//! it is read again from the start.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{FileSourceConfig, ReadFrom};
use crate::pipeline::Pipeline;
use crate::queue::Checkpoint;
use crate::record::Record;
use crate::source::{codec, lines};

const FINGERPRINT_BYTES: u64 = 256;
/// How long a rotated-away file stays open with no new data before it is dropped: long
/// enough for an application to notice the rotation (logrotate's HUP) and reopen.
const ROTATED_GRACE: Duration = Duration::from_secs(10);

/// The stored position of one file. CBOR; do not reorder fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileCheckpoint {
    path: String,
    offset: u64,
    fp_len: u64,
    fp_crc: u32,
}

struct Tailed {
    path: PathBuf,
    file: File,
    /// Where the next read starts.
    read_pos: u64,
    /// The offset stored in the queue by the last successful append.
    committed: u64,
    /// Bytes after the last newline, not yet consumed.
    partial: Vec<u8>,
    fp_len: u64,
    fp_crc: u32,
    /// No longer matched by the globs: read to the end, then drop.
    rotated: bool,
    /// Since when a rotated file has had no new data.
    idle_since: Option<Instant>,
    /// The last append was refused by failing storage, which may have stored it after all:
    /// re-read the position from the queue before reading on.
    reload: bool,
}

impl Tailed {
    /// Offset of the first byte not yet turned into a record.
    fn consumed(&self) -> u64 {
        self.read_pos - self.partial.len() as u64
    }
}

/// A running file source.
pub struct FileSource {
    cfg: FileSourceConfig,
    pipeline: Arc<Pipeline>,
    source: String,
    topic: String,
    /// Checkpoint keys of this source start with this (`file:<pipeline>/<name>:`).
    key_prefix: String,
    files: HashMap<String, Tailed>,
    first_scan: bool,
    /// Checkpoints of files that no longer exist, to delete.
    stale: Vec<String>,
    /// The queue is refusing appends (logged once per episode).
    refused: bool,
}

impl FileSource {
    /// A file source feeding `pipeline`.
    pub fn new(cfg: FileSourceConfig, pipeline: Arc<Pipeline>) -> Self {
        let name = cfg.name.clone().unwrap_or_else(|| "file".into());
        let source = format!("{}/{}", pipeline.name, name);
        let topic = cfg.topic.clone().unwrap_or_else(|| pipeline.name.clone());
        let key_prefix = format!("file:{source}:");
        FileSource {
            cfg,
            pipeline,
            source,
            topic,
            key_prefix,
            files: HashMap::new(),
            first_scan: true,
            stale: Vec::new(),
            refused: false,
        }
    }

    /// Tails until `shutdown`; every append in progress completes first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let mut next_scan = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if Instant::now() >= next_scan {
                tokio::task::block_in_place(|| self.scan());
                next_scan = Instant::now() + poll;
                for key in std::mem::take(&mut self.stale) {
                    let forget = Checkpoint {
                        key,
                        value: Vec::new(),
                    };
                    if let Err(e) = self.pipeline.queue().append(Vec::new(), Some(forget)).await {
                        tracing::warn!(source = %self.source, error = %e, "cannot drop a stale checkpoint");
                    }
                }
            }
            let mut progressed = false;
            let keys: Vec<String> = self.files.keys().cloned().collect();
            for key in keys {
                if shutdown.is_cancelled() {
                    break;
                }
                match self.step(&key).await {
                    Ok(true) => progressed = true,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(source = %self.source, file = %key, error = %e, "file read failed; retrying");
                        self.files.remove(&key);
                    }
                }
            }
            if !progressed {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(poll.min(next_scan.saturating_duration_since(Instant::now()).max(Duration::from_millis(10)))) => {}
                }
            }
        }
        tracing::debug!(source = %self.source, "file source stopped");
    }

    /// Finds files matching the globs; starts tailing new ones, marks vanished ones rotated.
    fn scan(&mut self) {
        let mut seen = Vec::new();
        for pattern in &self.cfg.include {
            let Ok(paths) = glob::glob(pattern) else {
                continue;
            };
            for path in paths.flatten() {
                if self
                    .cfg
                    .exclude
                    .iter()
                    .any(|x| glob::Pattern::new(x).is_ok_and(|p| p.matches_path(&path)))
                {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                let key = file_key(&self.key_prefix, &path, &meta);
                seen.push(key.clone());
                if self.files.contains_key(&key) {
                    continue;
                }
                match self.open(&key, &path, meta.len()) {
                    Ok(t) => {
                        tracing::info!(source = %self.source, path = %path.display(), offset = t.read_pos, "tailing file");
                        self.files.insert(key, t);
                    }
                    Err(e) => {
                        tracing::warn!(source = %self.source, path = %path.display(), error = %e, "cannot open file")
                    }
                }
            }
        }
        if self.first_scan {
            self.recover_rotated(&seen);
        }
        for (key, t) in self.files.iter_mut() {
            if !seen.contains(key) && !t.rotated {
                tracing::info!(source = %self.source, path = %t.path.display(), "file rotated away; reading to its end");
                t.rotated = true;
            }
        }
        self.first_scan = false;
    }

    /// After a restart: files this source was reading that were renamed away while it was
    /// down (logrotate without copytruncate) are found again by identity in the directory
    /// they were in, and read to their end. Checkpoints of files that are gone are dropped.
    fn recover_rotated(&mut self, seen: &[String]) {
        let saved = match self.pipeline.queue().checkpoints(&self.key_prefix) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(source = %self.source, error = %e, "cannot list checkpoints");
                return;
            }
        };
        for (key, value) in saved {
            if seen.contains(&key) {
                continue;
            }
            let Ok(cp) = ciborium::from_reader::<FileCheckpoint, _>(&value[..]) else {
                continue;
            };
            let Some(dir) = Path::new(&cp.path).parent() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let found = entries.flatten().map(|e| e.path()).find_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                (m.is_file() && file_key(&self.key_prefix, &p, &m) == key).then_some((p, m.len()))
            });
            match found {
                Some((path, len)) if len > cp.offset => match self.open(&key, &path, len) {
                    Ok(mut t) if t.read_pos == cp.offset => {
                        tracing::info!(source = %self.source, path = %path.display(), offset = cp.offset, "resuming rotated file");
                        t.rotated = true;
                        self.files.insert(key, t);
                    }
                    // Same inode, other content: not the file we were reading.
                    Ok(_) => self.stale.push(key),
                    Err(e) => {
                        tracing::warn!(source = %self.source, path = %path.display(), error = %e, "cannot open rotated file")
                    }
                },
                Some(_) => {}
                None => self.stale.push(key),
            }
        }
    }

    fn open(&self, key: &str, path: &Path, len: u64) -> std::io::Result<Tailed> {
        let mut file = File::open(path)?;
        let saved = self
            .pipeline
            .queue()
            .checkpoint(key)
            .map_err(std::io::Error::other)?
            .and_then(|b| ciborium::from_reader::<FileCheckpoint, _>(&b[..]).ok());
        let matches = match &saved {
            Some(cp) => cp.offset <= len && fingerprint(&mut file, cp.fp_len)? == Some(cp.fp_crc),
            None => false,
        };
        let mut t = Tailed {
            path: path.into(),
            file,
            read_pos: 0,
            committed: 0,
            partial: Vec::new(),
            fp_len: 0,
            fp_crc: 0,
            rotated: false,
            idle_since: None,
            reload: false,
        };
        match saved {
            Some(cp) if matches => {
                t.read_pos = cp.offset;
                t.committed = cp.offset;
                t.fp_len = cp.fp_len;
                t.fp_crc = cp.fp_crc;
            }
            Some(_) => {
                tracing::info!(path = %path.display(), "file changed under its checkpoint (new file or truncated); reading from the start");
            }
            None if self.first_scan && self.cfg.read_from == ReadFrom::End => {
                t.read_pos = len;
                t.committed = len;
            }
            None => {}
        }
        Ok(t)
    }

    /// Reads what is new in one file and queues it; true if anything was consumed.
    async fn step(&mut self, key: &str) -> std::io::Result<bool> {
        let max_line = self.cfg.max_line_bytes;
        // Appends well below the queue's limit, so a full queue is reached (and its policy
        // applied) in steps rather than by one oversized append.
        let chunk = self
            .cfg
            .read_chunk_bytes
            .min((self.pipeline.queue().max_bytes() / 8).max(4096) as usize);
        let queue = self.pipeline.queue().clone();
        let Some(t) = self.files.get_mut(key) else {
            return Ok(false);
        };
        if t.reload {
            // Only what the queue holds counts; if it is still unreadable, try later.
            let Ok(saved) = tokio::task::block_in_place(|| queue.checkpoint(key)) else {
                return Ok(false);
            };
            let offset = saved
                .and_then(|b| ciborium::from_reader::<FileCheckpoint, _>(&b[..]).ok())
                .map_or(t.committed, |c| c.offset);
            t.read_pos = offset;
            t.committed = offset;
            t.partial.clear();
            t.reload = false;
        }
        let lines = tokio::task::block_in_place(|| read_lines(t, chunk, max_line))?;
        let Some(lines) = lines else {
            // Nothing new at all.
            if t.rotated {
                let since = *t.idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= ROTATED_GRACE {
                    // A last line without newline in a finished file is still a record.
                    if !t.partial.is_empty() {
                        let line = std::mem::take(&mut t.partial);
                        return self.emit(key, vec![line]).await.map(|_| true);
                    }
                    tracing::info!(path = %t.path.display(), "done with rotated file");
                    self.files.remove(key);
                }
            }
            return Ok(false);
        };
        t.idle_since = None;
        if lines.is_empty() {
            // Only part of a line so far: wait for its newline.
            return Ok(false);
        }
        self.emit(key, lines).await?;
        Ok(true)
    }

    async fn emit(&mut self, key: &str, lines: Vec<Vec<u8>>) -> std::io::Result<()> {
        let Some(t) = self.files.get_mut(key) else {
            return Ok(());
        };
        if t.fp_len < FINGERPRINT_BYTES && t.consumed() > t.fp_len {
            let want = t.consumed().min(FINGERPRINT_BYTES);
            if let Some(crc) = tokio::task::block_in_place(|| fingerprint(&mut t.file, want))? {
                t.fp_len = want;
                t.fp_crc = crc;
            }
        }
        let offset = t.consumed();
        let cp = FileCheckpoint {
            path: t.path.to_string_lossy().into_owned(),
            offset: t.consumed(),
            fp_len: t.fp_len,
            fp_crc: t.fp_crc,
        };
        let mut value = Vec::new();
        ciborium::into_writer(&cp, &mut value).map_err(std::io::Error::other)?;
        let records =
            Record::from_lines(&self.source, &self.topic, Some(("file", &cp.path)), lines);
        let checkpoint = Some(Checkpoint {
            key: key.into(),
            value,
        });
        let (records, rejected) = codec::decode_all(self.cfg.codec, records);
        match self.pipeline.emit(records, rejected, checkpoint).await {
            Ok(_) => {
                if let Some(t) = self.files.get_mut(key) {
                    t.committed = offset;
                }
                if self.refused {
                    tracing::info!(source = %self.source, "queue accepts records again; reading resumes");
                    self.refused = false;
                }
            }
            Err(e) => {
                // Not committed: forget the read and re-read from the last committed offset
                // (kept in memory: the queue may be unreadable right now).
                if !self.refused {
                    tracing::warn!(source = %self.source, error = %e, "queue refused records; holding them in the file and retrying");
                    self.refused = true;
                }
                if let Some(t) = self.files.get_mut(key) {
                    t.read_pos = t.committed;
                    t.partial.clear();
                    // A full queue stored nothing; failing storage may have stored it.
                    t.reload = matches!(e, crate::queue::QueueError::Unavailable { .. });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

/// Reads up to `chunk` new bytes and splits off complete lines; `None` if nothing new.
fn read_lines(
    t: &mut Tailed,
    chunk: usize,
    max_line: usize,
) -> std::io::Result<Option<Vec<Vec<u8>>>> {
    let len = t.file.metadata()?.len();
    // Truncated (copytruncate) — possibly already grown past our offset again, which only
    // the fingerprint of the first bytes reveals.
    let replaced = t.fp_len > 0 && fingerprint(&mut t.file, t.fp_len)? != Some(t.fp_crc);
    if len < t.read_pos || replaced {
        tracing::info!(path = %t.path.display(), "file truncated; reading from the start");
        t.read_pos = 0;
        t.committed = 0;
        t.partial.clear();
        t.fp_len = 0;
    }
    if len == t.read_pos {
        return Ok(None);
    }
    let want = ((len - t.read_pos) as usize).min(chunk);
    let mut buf = std::mem::take(&mut t.partial);
    let start = buf.len();
    buf.resize(start + want, 0);
    t.file.seek(SeekFrom::Start(t.read_pos))?;
    let n = read_full(&mut t.file, &mut buf[start..])?;
    buf.truncate(start + n);
    t.read_pos += n as u64;
    let lines = lines::split_lines(&mut buf, max_line);
    t.partial = buf;
    Ok((n > 0 || !lines.is_empty()).then_some(lines))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
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
fn fingerprint(f: &mut File, len: u64) -> std::io::Result<Option<u32>> {
    // The length comes from a stored checkpoint: never trust it beyond what we write.
    let mut buf = vec![0u8; len.min(FINGERPRINT_BYTES) as usize];
    f.seek(SeekFrom::Start(0))?;
    let n = read_full(f, &mut buf)?;
    Ok((n == buf.len()).then(|| crc32fast::hash(&buf)))
}

/// Checkpoint key of a file: the source's prefix plus the file's identity.
#[cfg(unix)]
fn file_key(prefix: &str, _path: &Path, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{prefix}{}:{}", meta.dev(), meta.ino())
}

/// Checkpoint key of a file: the source's prefix plus the file's path (no inodes here).
#[cfg(not(unix))]
fn file_key(prefix: &str, path: &Path, _meta: &std::fs::Metadata) -> String {
    format!("{prefix}{}", path.display())
}
