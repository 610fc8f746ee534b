//! The `file` source: tails files matching globs, across appends, rotation and truncation.
//!
//! (About 1,100 lines: most of it is one state machine, `impl FileSource`, whose steps
//! (discover, open, read, rotate, close, checkpoint) share the tail table, the open-file
//! budget and the pending events; the filesystem helpers are in `file/files.rs`.)
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
//! # Discovery
//! With `watch` (the default) the directories of the globs are watched (the `notify` crate:
//! inotify, FSEvents/kqueue, ReadDirectoryChangesW): a file is opened as soon as it is
//! created, a renamed file is followed to its new name, and an append is read at once. A
//! full scan still runs every `rescan_interval_ms` (events can be missed: an overflowing
//! queue, network filesystems); without events (a directory that cannot be watched, or
//! `watch = false`) it runs every `poll_interval_ms`. Only files with news are read.
//!
//! Under `**` directory symlinks are followed, but each directory is entered once per scan,
//! known by (device, inode): a loop or a diamond of links is walked once, not forever.
//!
//! # Rotation and truncation
//! A tracked file that no longer matches the globs (renamed away or deleted) is read to its
//! end by its open descriptor and then dropped. A file renamed away before it was ever
//! opened is found by its rename event and read too; one that is gone before it could be
//! opened is counted (`files_missed`) and logged. A file that shrank below the offset was
//! truncated (copytruncate): it is read again from the start.
//!
//! # Many files
//! At most `max_open_files` (and half the fd limit) are open; the least recently used are
//! closed and reopened by path when they change, checked by identity and fingerprint (a
//! closed file renamed away is looked for by identity in its directory). A problem that
//! repeats (a file it may not read, EMFILE) is logged once and counted (`open_failed`).

mod files;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::Watcher;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::codec;
use crate::lines::{Framing, LineSplitter, Split};
use crate::pipeline::{EmitError, Pipeline};
use crate::{Codec, FileSourceConfig, LongLines, ReadFrom};
use dataweaver_core::{Checkpoint, Record};
use files::*;

const FINGERPRINT_BYTES: u64 = 256;
/// How long a rotated-away file stays open with no new data before it is dropped: long
/// enough for an application to notice the rotation (logrotate's HUP) and reopen.
const ROTATED_GRACE: Duration = Duration::from_secs(10);
/// How often rotated files (which may live where no event reaches) are looked at.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Most files read into one round of appends (committed together by the queue).
const BATCH_FILES: usize = 64;
/// Paths remembered between two looks at the events; beyond this a full scan is cheaper.
const MAX_PENDING_PATHS: usize = 65_536;

/// The stored position of one file. CBOR; do not reorder fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileCheckpoint {
    path: String,
    offset: u64,
    fp_len: u64,
    fp_crc: u32,
    /// The offset is inside a line over `max_line_bytes` whose first part was handled.
    #[serde(default)]
    in_long: bool,
}

struct Tailed {
    path: PathBuf,
    /// `None` while closed to save descriptors (reopened by path and checked by identity).
    file: Option<File>,
    /// Not opened yet: its checkpoint is looked up on the first open.
    fresh: bool,
    /// Found by the first scan (so `read_from = "end"` applies to it).
    initial: bool,
    /// Where the next read starts.
    read_pos: u64,
    /// The offset stored in the queue by the last successful append.
    committed: u64,
    /// The splitter's state at `committed`.
    committed_in_long: bool,
    /// Bytes after the last newline, not yet consumed.
    partial: Vec<u8>,
    splitter: LineSplitter,
    fp_len: u64,
    fp_crc: u32,
    /// No longer matched by the globs: read to the end, then drop.
    rotated: bool,
    /// Since when a rotated file has had no new data.
    idle_since: Option<Instant>,
    /// The last append was refused by failing storage, which may have stored it after all:
    /// re-read the position from the queue before reading on.
    reload: bool,
    /// Position in the least-recently-used order of open files.
    lru: u64,
}

impl Tailed {
    /// Offset of the first byte not yet turned into a record.
    fn consumed(&self) -> u64 {
        self.read_pos - self.partial.len() as u64
    }
}

/// What the watcher reported since the source last looked.
#[derive(Default)]
struct Pending {
    paths: HashSet<PathBuf>,
    renames: Vec<(PathBuf, PathBuf)>,
    rescan: bool,
    error: Option<String>,
}

/// Shared between the watcher's thread and the source.
#[derive(Default)]
struct Events {
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

impl Events {
    fn push(&self, ev: notify::Result<notify::Event>) {
        use notify::EventKind;
        use notify::event::{ModifyKind, RenameMode};
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            // Opens and closes (our own reads among them) change nothing.
            Ok(ev) if matches!(ev.kind, EventKind::Access(_)) && !ev.need_rescan() => return,
            Ok(ev) => {
                p.rescan |= ev.need_rescan();
                if let (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), [from, to]) =
                    (&ev.kind, &ev.paths[..])
                {
                    p.renames.push((from.clone(), to.clone()));
                }
                p.paths.extend(ev.paths);
                if p.paths.len() + p.renames.len() > MAX_PENDING_PATHS {
                    p.paths.clear();
                    p.renames.clear();
                    p.rescan = true;
                }
            }
            Err(e) => {
                p.rescan = true;
                p.error = Some(e.to_string());
            }
        }
        drop(p);
        self.wake.notify_one();
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A directory watched for one glob: where it is, how, and what it was when watched.
struct Base {
    dir: PathBuf,
    recursive: bool,
    /// (device, inode) when the watch was set; `None`: not watched (yet).
    watched: Option<(u64, u64)>,
    /// The directory's canonical path, when events may report that one (FSEvents does).
    canonical: Option<PathBuf>,
}

/// Counters of one file source.
struct Stats {
    missed: Arc<AtomicU64>,
    open_failed: Arc<AtomicU64>,
    long_lines: Arc<AtomicU64>,
}

/// A running file source.
pub struct FileSource {
    cfg: FileSourceConfig,
    pipeline: Arc<Pipeline>,
    source: String,
    topic: String,
    /// Checkpoint keys of this source start with this (`file:<pipeline>/<name>:`).
    key_prefix: String,
    framing: Framing,
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
    files: HashMap<String, Tailed>,
    /// Files that may have news, in the order they got it.
    active: VecDeque<String>,
    active_set: HashSet<String>,
    /// Open files, oldest use first (entries whose stamp no longer matches are stale).
    lru: VecDeque<(u64, String)>,
    lru_clock: u64,
    open_count: usize,
    max_open: usize,
    bases: Vec<Base>,
    first_scan: bool,
    /// Checkpoints of files that no longer exist, to delete.
    stale: Vec<String>,
    /// The queue is refusing appends (logged once per episode).
    refused: bool,
    /// The last problem logged per path (logged again only when it changes).
    problems: HashMap<PathBuf, String>,
    /// EMFILE was logged and no open has succeeded since.
    out_of_fds: bool,
    stats: Stats,
}

impl FileSource {
    /// A file source feeding `pipeline`.
    pub fn new(cfg: FileSourceConfig, pipeline: Arc<Pipeline>) -> Self {
        let name = cfg.name.clone().unwrap_or_else(|| "file".into());
        let source = format!("{}/{}", pipeline.name, name);
        let topic = cfg.topic.clone().unwrap_or_else(|| pipeline.name.clone());
        let key_prefix = format!("file:{source}:");
        let framing = Framing {
            max_line: cfg.max_line_bytes,
            long_lines: cfg.long_lines.unwrap_or(match cfg.codec {
                Codec::Json => LongLines::DeadLetter,
                Codec::Raw | Codec::Binary => LongLines::Split,
            }),
            exact: cfg.codec == Codec::Binary,
        };
        // `validate` compiled the same globs; one that still fails here matches nothing.
        let crate::config::Globs { include, exclude } = cfg.globs().unwrap_or_else(|bad| {
            for (key, error) in bad {
                tracing::error!(%source, %key, %error, "file source: a bad glob, so it matches nothing");
            }
            Default::default()
        });
        let bases = cfg.include.iter().map(|g| base_of(g)).collect();
        let c = &pipeline.counters;
        let stats = Stats {
            missed: c.counter(&format!("{source}.files_missed")),
            open_failed: c.counter(&format!("{source}.open_failed")),
            long_lines: c.counter(&format!("{source}.long_lines")),
        };
        let max_open = fd_budget(cfg.max_open_files);
        FileSource {
            cfg,
            pipeline,
            source,
            topic,
            key_prefix,
            framing,
            include,
            exclude,
            files: HashMap::new(),
            active: VecDeque::new(),
            active_set: HashSet::new(),
            lru: VecDeque::new(),
            lru_clock: 0,
            open_count: 0,
            max_open,
            bases,
            first_scan: true,
            stale: Vec::new(),
            refused: false,
            problems: HashMap::new(),
            out_of_fds: false,
            stats,
        }
    }

    /// Tails until `shutdown`; every append in progress completes first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let events = Arc::new(Events::default());
        let mut watcher = if self.cfg.watch {
            self.start_watcher(&events)
        } else {
            None
        };
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let rescan = Duration::from_millis(self.cfg.rescan_interval_ms);
        let mut next_scan = Instant::now();
        let mut next_house = Instant::now() + HOUSEKEEPING;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let pending = events.take();
            if let Some(e) = &pending.error {
                self.problem(Path::new(""), "watch", e, "file watcher error; rescanning");
            }
            if Instant::now() >= next_scan || pending.rescan {
                if let Some(w) = watcher.as_mut() {
                    tokio::task::block_in_place(|| self.watch_bases(w));
                }
                tokio::task::block_in_place(|| self.scan());
                let all_watched = self.bases.iter().all(|b| b.watched.is_some());
                next_scan = Instant::now()
                    + if watcher.is_some() && all_watched {
                        rescan
                    } else {
                        poll
                    };
                self.forget_stale().await;
            }
            tokio::task::block_in_place(|| self.take_events(pending));
            if Instant::now() >= next_house {
                self.mark_rotated_active();
                next_house = Instant::now() + HOUSEKEEPING;
            }
            let mut round: VecDeque<String> = self.active.drain(..).collect();
            self.active_set.clear();
            while !round.is_empty() && !shutdown.is_cancelled() {
                let batch = tokio::task::block_in_place(|| self.prepare_batch(&mut round));
                self.emit_all(batch).await;
            }
            if self.active.is_empty() {
                let until = next_scan.min(next_house);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = events.wake.notified() => {}
                    _ = tokio::time::sleep(until.saturating_duration_since(Instant::now())) => {}
                }
            }
        }
        drop(watcher);
        tracing::debug!(source = %self.source, "file source stopped");
    }

    /// The platform's watcher feeding `events`, or `None` (then polling alone finds files).
    fn start_watcher(&self, events: &Arc<Events>) -> Option<notify::RecommendedWatcher> {
        let ev = events.clone();
        // Symlinks under a recursive watch are not followed: a loop would be walked forever
        // by some backends. Files behind them are still found by the (cycle-safe) scans.
        let config = notify::Config::default().with_follow_symlinks(false);
        match notify::RecommendedWatcher::new(move |e| ev.push(e), config) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(source = %self.source, error = %e, "cannot watch for file changes; polling every {} ms", self.cfg.poll_interval_ms);
                None
            }
        }
    }

    /// Watches each glob's directory not watched yet, or replaced since it was.
    fn watch_bases(&mut self, w: &mut notify::RecommendedWatcher) {
        for b in &mut self.bases {
            let id = std::fs::metadata(&b.dir).ok().map(|m| dev_ino(&m));
            if id.is_none() || id == b.watched {
                if id.is_none() {
                    b.watched = None;
                }
                continue;
            }
            let mode = if b.recursive {
                notify::RecursiveMode::Recursive
            } else {
                notify::RecursiveMode::NonRecursive
            };
            match w.watch(&b.dir, mode) {
                Ok(()) => {
                    b.watched = id;
                    b.canonical = std::fs::canonicalize(&b.dir).ok().filter(|c| *c != b.dir);
                    tracing::debug!(source = %self.source, dir = %b.dir.display(), "watching");
                }
                Err(e) => {
                    let msg = format!(
                        "cannot watch; polling every {} ms",
                        self.cfg.poll_interval_ms
                    );
                    log_problem(
                        &mut self.problems,
                        &self.source,
                        &b.dir,
                        "watch",
                        &e.to_string(),
                        &msg,
                    );
                }
            }
        }
    }

    fn matches(&self, path: &Path) -> bool {
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        self.include.iter().any(|p| p.matches_path_with(path, opts))
            && !self.exclude.iter().any(|p| p.matches_path(path))
    }

    /// Looks at what the watcher reported: new files, renames, appends.
    fn take_events(&mut self, pending: Pending) {
        for (from, to) in pending.renames {
            let from = self.as_watched(from);
            let to = self.as_watched(to);
            if self.matches(&from) {
                self.found(&to, true);
            }
        }
        for path in pending.paths {
            let path = self.as_watched(path);
            self.found(&path, false);
        }
    }

    /// An event path under the name the glob uses (FSEvents reports canonical paths).
    fn as_watched(&self, path: PathBuf) -> PathBuf {
        for b in &self.bases {
            if let Some(rest) = b.canonical.as_ref().and_then(|c| path.strip_prefix(c).ok()) {
                return b.dir.join(rest);
            }
        }
        path
    }

    /// A file at `path` may be new or have news (`renamed`: it was renamed away from a
    /// matching name, so it must be read even though its name no longer matches).
    fn found(&mut self, path: &Path, renamed: bool) {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(_) if renamed => {
                let key_known = self.files.values().any(|t| t.path == path);
                if !key_known {
                    self.missed(path);
                }
                return;
            }
            Err(_) => return,
        };
        if !meta.is_file() {
            return;
        }
        let matching = self.matches(path);
        let key = file_key(&self.key_prefix, path, &meta);
        if let Some(t) = self.files.get_mut(&key) {
            if t.path != path {
                t.path = path.to_path_buf();
            }
            if !matching && !t.rotated {
                tracing::info!(source = %self.source, path = %path.display(), "file rotated away; reading to its end");
            }
            t.rotated = !matching;
            self.activate(&key);
            return;
        }
        if matching || renamed {
            self.track(key, path, !matching);
        }
    }

    /// A file known to have existed and matched, gone before any of it was read.
    fn missed(&self, path: &Path) {
        self.stats.missed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(source = %self.source, path = %path.display(), "file rotated away and gone before it could be opened; its lines are lost (counted in files_missed)");
    }

    /// Starts following a file (opened on its first read).
    fn track(&mut self, key: String, path: &Path, rotated: bool) {
        if !rotated {
            tracing::info!(source = %self.source, path = %path.display(), "tailing file");
        } else {
            tracing::info!(source = %self.source, path = %path.display(), "reading file rotated away before it was opened");
        }
        let t = self.untouched(path, rotated);
        self.files.insert(key.clone(), t);
        self.activate(&key);
    }

    fn activate(&mut self, key: &str) {
        if self.active_set.insert(key.to_string()) {
            self.active.push_back(key.to_string());
        }
    }

    /// Rotated files may change where no event reaches (another directory): look at them.
    fn mark_rotated_active(&mut self) {
        let keys: Vec<String> = self
            .files
            .iter()
            .filter(|(_, t)| t.rotated)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.activate(&k);
        }
    }

    /// Every file matching the globs, with its metadata (directories under `**` entered
    /// once each, by identity).
    fn matching_files(&self) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut out = Vec::new();
        for (i, pattern) in self.cfg.include.iter().enumerate() {
            if pattern.contains("**") {
                let Some(b) = self.bases.get(i) else { continue };
                walk(&b.dir, &mut |p, m| {
                    if self.matches(p) {
                        out.push((p.to_path_buf(), m));
                    }
                });
                continue;
            }
            let Ok(paths) = glob::glob(pattern) else {
                continue;
            };
            for path in paths.flatten() {
                if self.exclude.iter().any(|x| x.matches_path(&path)) {
                    continue;
                }
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.is_file()
                {
                    out.push((path, meta));
                }
            }
        }
        out
    }

    /// Finds files matching the globs; starts tailing new ones, marks changed ones active
    /// and vanished ones rotated.
    fn scan(&mut self) {
        let mut seen = HashSet::new();
        for (path, meta) in self.matching_files() {
            let key = file_key(&self.key_prefix, &path, &meta);
            if !seen.insert(key.clone()) {
                continue;
            }
            match self.files.get_mut(&key) {
                Some(t) => {
                    t.path = path;
                    t.rotated = false;
                    if meta.len() != t.read_pos {
                        self.activate(&key);
                    }
                }
                None => self.track(key, &path, false),
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
        self.mark_rotated_active();
        self.first_scan = false;
    }

    /// After a restart: files this source was reading that were renamed away while it was
    /// down (logrotate without copytruncate) are found again by identity in the directory
    /// they were in, and read to their end. Checkpoints of files that are gone are dropped.
    fn recover_rotated(&mut self, seen: &HashSet<String>) {
        let saved = match self.pipeline.checkpoints(&self.key_prefix) {
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
            match find_by_identity(&self.key_prefix, Path::new(&cp.path), &key) {
                Some((path, len)) if len > cp.offset => match self.open_new(&key, &path, len) {
                    Ok(mut t) if t.read_pos == cp.offset => {
                        tracing::info!(source = %self.source, path = %path.display(), offset = cp.offset, "resuming rotated file");
                        t.rotated = true;
                        self.files.insert(key.clone(), t);
                        self.opened(&key);
                        self.activate(&key);
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

    /// Deletes the checkpoints of files that are gone.
    async fn forget_stale(&mut self) {
        for key in std::mem::take(&mut self.stale) {
            let forget = Checkpoint {
                key,
                value: Vec::new(),
            };
            if let Err(e) = self.pipeline.store_checkpoint(forget).await {
                tracing::warn!(source = %self.source, error = %e, "cannot drop a stale checkpoint");
            }
        }
    }

    /// A file's state before its first open.
    fn untouched(&self, path: &Path, rotated: bool) -> Tailed {
        Tailed {
            path: path.to_path_buf(),
            file: None,
            fresh: true,
            initial: self.first_scan,
            read_pos: 0,
            committed: 0,
            committed_in_long: false,
            partial: Vec::new(),
            splitter: LineSplitter::new(self.framing, false),
            fp_len: 0,
            fp_crc: 0,
            rotated,
            idle_since: None,
            reload: false,
            lru: 0,
        }
    }

    /// Opens a file not tracked before, positioned by its checkpoint (if it matches).
    fn open_new(&self, key: &str, path: &Path, len: u64) -> std::io::Result<Tailed> {
        let mut t = self.untouched(path, false);
        let file = File::open(path)?;
        self.init(key, &mut t, file, len)?;
        Ok(t)
    }

    /// First open of a file: takes its position from a matching checkpoint.
    fn init(&self, key: &str, t: &mut Tailed, mut file: File, len: u64) -> std::io::Result<()> {
        let saved = self
            .pipeline
            .checkpoint(key)
            .map_err(std::io::Error::other)?
            .and_then(|b| ciborium::from_reader::<FileCheckpoint, _>(&b[..]).ok());
        let matches = match &saved {
            Some(cp) => cp.offset <= len && fingerprint(&mut file, cp.fp_len)? == Some(cp.fp_crc),
            None => false,
        };
        match saved {
            Some(cp) if matches => {
                t.read_pos = cp.offset;
                t.committed = cp.offset;
                t.committed_in_long = cp.in_long;
                t.fp_len = cp.fp_len;
                t.fp_crc = cp.fp_crc;
                t.splitter = LineSplitter::new(self.framing, cp.in_long);
            }
            Some(_) => {
                tracing::info!(path = %t.path.display(), "file changed under its checkpoint (new file or truncated); reading from the start");
            }
            None if t.initial && self.cfg.read_from == ReadFrom::End => {
                t.read_pos = len;
                t.committed = len;
            }
            None => {}
        }
        t.file = Some(file);
        t.fresh = false;
        Ok(())
    }

    /// Makes sure `key`'s file is open, closing the least recently used ones to stay within
    /// the budget. `Ok(false)`: it cannot be opened now (logged; retried later).
    fn ensure_open(&mut self, key: &str) -> std::io::Result<bool> {
        match self.files.get(key) {
            Some(t) if t.file.is_none() => {}
            Some(_) => {
                self.opened(key);
                return Ok(true);
            }
            None => return Ok(false),
        }
        while self.open_count >= self.max_open && self.evict_one(key) {}
        let mut attempt = self.reopen(key);
        if let Err(e) = &attempt
            && is_out_of_fds(e)
            && self.evict_one(key)
        {
            attempt = self.reopen(key);
        }
        let path = self
            .files
            .get(key)
            .map(|t| t.path.clone())
            .unwrap_or_default();
        match attempt {
            Ok(true) => {
                self.problems.remove(&path);
                if std::mem::take(&mut self.out_of_fds) {
                    tracing::info!(source = %self.source, "files open again");
                }
                self.opened(key);
                Ok(true)
            }
            Ok(false) => {
                // Gone, or its path now names another file and it is nowhere near.
                if let Some(t) = self.files.remove(key) {
                    tracing::info!(source = %self.source, path = %t.path.display(), "file gone before it was reopened");
                    if !t.fresh {
                        self.stale.push(key.to_string());
                    }
                }
                Ok(false)
            }
            Err(e) => {
                self.stats.open_failed.fetch_add(1, Ordering::Relaxed);
                if is_out_of_fds(&e) {
                    if !self.out_of_fds {
                        self.out_of_fds = true;
                        tracing::warn!(source = %self.source, path = %path.display(), error = %e, max_open_files = self.max_open, "cannot open file: out of file descriptors (logged once; lower max_open_files or raise the limit)");
                    }
                } else {
                    self.problem(&path, "open", &e.to_string(), "cannot open file");
                }
                Err(e)
            }
        }
    }

    /// Opens a tracked file by path, checking it is still the same file (else looks for it
    /// by identity in its directory). `Ok(false)`: not found.
    fn reopen(&mut self, key: &str) -> std::io::Result<bool> {
        let Some(t) = self.files.get(key) else {
            return Ok(false);
        };
        let mut path = t.path.clone();
        let at_path = match File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let same = at_path.as_ref().is_some_and(|f| {
            f.metadata()
                .is_ok_and(|m| file_key(&self.key_prefix, &path, &m) == key)
        });
        let file = match at_path {
            Some(f) if same => f,
            _ => {
                // Renamed while closed (or never opened and already replaced).
                let Some((p, _)) = find_by_identity(&self.key_prefix, &path, key) else {
                    return Ok(false);
                };
                path = p;
                File::open(&path)?
            }
        };
        let len = file.metadata()?.len();
        let fresh = self.files.get(key).is_some_and(|t| t.fresh);
        let mut t = match self.files.remove(key) {
            Some(t) => t,
            None => return Ok(false),
        };
        t.path = path;
        let r = if fresh {
            self.init(key, &mut t, file, len)
        } else {
            t.file = Some(file);
            Ok(())
        };
        self.files.insert(key.to_string(), t);
        r.map(|()| true)
    }

    /// Counts `key` as open and most recently used.
    fn opened(&mut self, key: &str) {
        self.lru_clock += 1;
        let stamp = self.lru_clock;
        let Some(t) = self.files.get_mut(key) else {
            return;
        };
        if t.lru == 0 {
            self.open_count += 1;
        }
        t.lru = stamp;
        self.lru.push_back((stamp, key.to_string()));
        if self.lru.len() > 4 * self.open_count.max(64) {
            // Drop stale entries so the order stays about as long as the open files.
            let files = &self.files;
            self.lru
                .retain(|(s, k)| files.get(k).is_some_and(|t| t.lru == *s));
        }
    }

    /// Closes the least recently used open file other than `keep`; false if none.
    fn evict_one(&mut self, keep: &str) -> bool {
        while let Some((stamp, key)) = self.lru.pop_front() {
            if key == keep {
                continue;
            }
            if self
                .files
                .get(&key)
                .is_some_and(|t| t.lru == stamp && t.file.is_some())
            {
                self.close(&key, false);
                return true;
            }
        }
        false
    }

    /// Closes a file's descriptor (`forget`: and stops tracking it).
    fn close(&mut self, key: &str, forget: bool) {
        let Some(t) = self.files.get_mut(key) else {
            return;
        };
        if t.lru != 0 {
            self.open_count = self.open_count.saturating_sub(1);
        }
        t.lru = 0;
        t.file = None;
        if forget {
            self.files.remove(key);
        }
    }

    /// Logs a problem with `path` once until it changes.
    fn problem(&mut self, path: &Path, what: &str, error: &str, msg: &str) {
        log_problem(&mut self.problems, &self.source, path, what, error, msg);
    }

    /// Reads the files of `round` (from its front) until a batch is full: at most
    /// [`BATCH_FILES`] files and about four read chunks.
    fn prepare_batch(&mut self, round: &mut VecDeque<String>) -> Vec<Prepared> {
        let chunk = self.chunk();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(key) = round.pop_front() {
            match self.prepare(&key, chunk) {
                Ok(Some(p)) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Ok(None) => {}
                Err(e) => {
                    let path = self.files.get(&key).map(|t| t.path.clone());
                    let path = path.unwrap_or_default();
                    self.problem(&path, "read", &e.to_string(), "file read failed; retrying");
                    // Kept (closed): reopened by identity on its next event or scan.
                    self.close(&key, false);
                }
            }
            if batch.len() >= BATCH_FILES || bytes >= 4 * chunk {
                break;
            }
        }
        batch
    }

    /// Bytes read per step: well below the queue's limit, so a full queue is reached (and
    /// its policy applied) in steps rather than by one oversized append.
    fn chunk(&self) -> usize {
        self.cfg
            .read_chunk_bytes
            .min((self.pipeline.max_bytes() / 8).max(4096) as usize)
    }

    /// Reads what is new in one file; `None` if there is nothing to queue.
    fn prepare(&mut self, key: &str, chunk: usize) -> std::io::Result<Option<Prepared>> {
        match self.ensure_open(key) {
            Ok(true) => {}
            // Gone, or logged and counted: the next event or scan tries again.
            Ok(false) | Err(_) => return Ok(None),
        }
        let pipeline = self.pipeline.clone();
        let Some(t) = self.files.get_mut(key) else {
            return Ok(None);
        };
        if t.reload {
            // Only what the queue holds counts; if it is still unreadable, try later.
            let Ok(saved) = pipeline.checkpoint(key) else {
                return Ok(None);
            };
            let saved = saved.and_then(|b| ciborium::from_reader::<FileCheckpoint, _>(&b[..]).ok());
            let (offset, in_long) = saved.map_or((t.committed, t.committed_in_long), |c| {
                (c.offset, c.in_long)
            });
            t.read_pos = offset;
            t.committed = offset;
            t.committed_in_long = in_long;
            t.partial.clear();
            t.splitter = LineSplitter::new(self.framing, in_long);
            t.reload = false;
        }
        let Some(split) = read_lines(t, chunk)? else {
            // Nothing new at all.
            if t.rotated {
                let since = *t.idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= ROTATED_GRACE {
                    // A last line without newline in a finished file is still a record.
                    if !t.partial.is_empty() {
                        let line = std::mem::take(&mut t.partial);
                        let last = Split {
                            lines: vec![line],
                            ..Split::default()
                        };
                        return self.package(key, last).map(Some);
                    }
                    tracing::info!(path = %t.path.display(), "done with rotated file");
                    self.close(key, true);
                }
            }
            return Ok(None);
        };
        t.idle_since = None;
        if split.lines.is_empty() && split.too_long.is_empty() && split.long_count == 0 {
            // Only part of a line so far: wait for its newline.
            return Ok(None);
        }
        self.package(key, split).map(Some)
    }

    /// Records, dead letters and the checkpoint for what was just read from `key`.
    fn package(&mut self, key: &str, split: Split) -> std::io::Result<Prepared> {
        let Some(t) = self.files.get_mut(key) else {
            return Err(std::io::Error::other("file vanished from the table"));
        };
        let consumed = t.consumed();
        if t.fp_len < FINGERPRINT_BYTES
            && consumed > t.fp_len
            && let Some(file) = t.file.as_mut()
            && let Some(crc) = fingerprint(file, consumed.min(FINGERPRINT_BYTES))?
        {
            t.fp_len = consumed.min(FINGERPRINT_BYTES);
            t.fp_crc = crc;
        }
        let cp = FileCheckpoint {
            path: t.path.to_string_lossy().into_owned(),
            offset: consumed,
            fp_len: t.fp_len,
            fp_crc: t.fp_crc,
            in_long: t.splitter.in_long(),
        };
        let mut value = Vec::new();
        ciborium::into_writer(&cp, &mut value).map_err(std::io::Error::other)?;
        let bytes = split.lines.iter().map(Vec::len).sum::<usize>();
        let file_header = Some(("file", cp.path.as_str()));
        let records = Record::from_lines(&self.source, &self.topic, file_header, split.lines);
        let (records, mut rejected) = codec::decode_all(self.cfg.codec, records);
        if !split.too_long.is_empty() {
            let max = self.cfg.max_line_bytes;
            let reason =
                format!("line longer than max_line_bytes ({max}); its first {max} bytes kept here");
            let long = Record::from_lines(&self.source, &self.topic, file_header, split.too_long);
            rejected.extend(long.into_iter().map(|r| (r, reason.clone())));
        }
        Ok(Prepared {
            key: key.to_string(),
            offset: consumed,
            in_long: cp.in_long,
            long_count: split.long_count,
            bytes,
            records,
            rejected,
            checkpoint: Checkpoint {
                key: key.into(),
                value,
            },
        })
    }

    /// Queues a batch of reads, one append per file, concurrently so the queue commits them
    /// together (its group commit): many files with a line each cost one commit, not many.
    async fn emit_all(&mut self, batch: Vec<Prepared>) {
        let mut results = Vec::with_capacity(batch.len());
        let mut set = tokio::task::JoinSet::new();
        let mut waiting = HashMap::new();
        for p in batch {
            let pipeline = self.pipeline.clone();
            let Prepared {
                key,
                records,
                rejected,
                checkpoint,
                ..
            } = p;
            let done = Done {
                offset: p.offset,
                in_long: p.in_long,
                long_count: p.long_count,
            };
            waiting.insert(key.clone(), done);
            set.spawn(async move {
                let r = pipeline.emit(records, rejected, Some(checkpoint)).await;
                (key, r)
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((key, r)) => {
                    if let Some(done) = waiting.remove(&key) {
                        results.push((key, done, r.map_err(Some)));
                    }
                }
                Err(e) => {
                    tracing::error!(source = %self.source, error = %e, "queue append task failed")
                }
            }
        }
        // An append whose task died may or may not be stored: re-read the checkpoint.
        results.extend(waiting.into_iter().map(|(k, d)| (k, d, Err(None))));
        let mut refusal = None;
        for (key, done, r) in results {
            match r {
                Ok(_) => {
                    self.stats
                        .long_lines
                        .fetch_add(done.long_count, Ordering::Relaxed);
                    if let Some(t) = self.files.get_mut(&key) {
                        t.committed = done.offset;
                        t.committed_in_long = done.in_long;
                    }
                    // More may follow right behind.
                    self.activate(&key);
                }
                Err(e) => {
                    // Not committed: forget the read and re-read from the last committed
                    // offset (kept in memory: the queue may be unreadable right now).
                    if let Some(t) = self.files.get_mut(&key) {
                        t.read_pos = t.committed;
                        t.partial.clear();
                        t.splitter = LineSplitter::new(self.framing, t.committed_in_long);
                        // A full queue stored nothing; failing storage may have stored it.
                        t.reload = e
                            .as_ref()
                            .is_none_or(|e| matches!(e, EmitError::Unavailable(_)));
                    }
                    self.activate(&key);
                    refusal =
                        Some(e.map_or_else(|| "append task failed".into(), |e| e.to_string()));
                }
            }
        }
        match refusal {
            Some(e) => {
                if !self.refused {
                    tracing::warn!(source = %self.source, error = %e, "queue refused records; holding them in the file and retrying");
                    self.refused = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None if self.refused => {
                tracing::info!(source = %self.source, "queue accepts records again; reading resumes");
                self.refused = false;
            }
            None => {}
        }
    }
}

/// One file's read, ready to queue.
struct Prepared {
    key: String,
    /// Where the file's checkpoint moves once this is stored.
    offset: u64,
    in_long: bool,
    long_count: u64,
    bytes: usize,
    records: Vec<Record>,
    rejected: Vec<(Record, String)>,
    checkpoint: Checkpoint,
}

/// What a stored [`Prepared`] changes in its file's state.
struct Done {
    offset: u64,
    in_long: bool,
    long_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_base_is_the_literal_part_of_the_glob() {
        let b = base_of("/var/log/app/*.log");
        assert_eq!((b.dir, b.recursive), ("/var/log/app".into(), false));
        let b = base_of("/var/log/**/*.log");
        assert_eq!((b.dir, b.recursive), ("/var/log".into(), true));
        let b = base_of("/srv/*/logs/app.log");
        assert_eq!((b.dir, b.recursive), ("/srv".into(), true));
        let b = base_of("/var/log/syslog");
        assert_eq!((b.dir, b.recursive), ("/var/log".into(), false));
    }

    /// Issue 12, defect 22: directories reached again through symlinks are entered once.
    #[cfg(unix)]
    #[test]
    fn walk_enters_each_directory_once_through_symlink_loops() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink("../..", d.path().join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("..", d.path().join("a/back")).unwrap();
        std::os::unix::fs::symlink("b", d.path().join("a/again")).unwrap();
        std::fs::write(d.path().join("a/b/x.log"), "x\n").unwrap();
        std::fs::write(d.path().join("top.log"), "t\n").unwrap();
        let mut found = Vec::new();
        walk(d.path(), &mut |p, _| found.push(p.to_path_buf()));
        assert_eq!(found.len(), 2, "{found:?}");
    }
}
