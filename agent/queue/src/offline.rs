//! A queue file read without an agent: `queue check`, `queue stats` and `queue export`
//! (also of a file that was set aside as corrupt).

use super::*;

/// Result of [`check`].
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Chunks read and decoded.
    pub chunks: u64,
    /// Records in them.
    pub records: u64,
    /// Problems found; empty means the file is sound.
    pub problems: Vec<String>,
}

/// The queue file of a data directory, which must exist.
fn existing(dir: &Path) -> Result<PathBuf, QueueError> {
    let path = dir.join(FILE_NAME);
    if !path.exists() {
        return Err(QueueError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no queue file"),
        });
    }
    Ok(path)
}

/// Verifies a queue file offline: redb's integrity check, then every chunk decoded.
pub fn check(dir: &Path) -> Result<CheckReport, QueueError> {
    let path = existing(dir)?;
    let mut report = CheckReport::default();
    let opened = salvage::guarded("opening the file", || {
        Database::builder()
            .set_cache_size(2 << 20)
            .open(&path)
            .map_err(db)
    });
    let mut d = match opened {
        Ok(d) => d,
        Err(e @ QueueError::Storage(redb::Error::DatabaseAlreadyOpen)) => return Err(e),
        Err(e) => {
            report.problems.push(format!("cannot open: {e}"));
            return Ok(report);
        }
    };
    let checked = salvage::guarded("checking integrity", || d.check_integrity().map_err(db));
    match checked {
        Ok(true) => {}
        Ok(false) => report
            .problems
            .push("redb integrity check repaired the file".into()),
        Err(e) => {
            report.problems.push(format!("integrity check failed: {e}"));
            if matches!(e, QueueError::Unreadable(_)) {
                // redb panicked: its state is unknown, do not let it close (write) the file.
                std::mem::forget(d);
            }
            return Ok(report);
        }
    }
    let read = salvage::guarded("reading the file", || check_tables(&d, &mut report));
    if let Err(e) = read {
        report.problems.push(e.to_string());
    }
    Ok(report)
}

fn check_tables(d: &Database, report: &mut CheckReport) -> Result<(), QueueError> {
    let txn = d.begin_read().map_err(db)?;
    match txn.open_table(CHUNKS) {
        Ok(chunks) => {
            let mut expected_next: Option<u64> = None;
            for e in chunks.iter().map_err(db)? {
                let (k, v) = e.map_err(db)?;
                match decode_chunk(k.value(), v.value()) {
                    Ok(recs) => {
                        report.chunks += 1;
                        report.records += recs.len() as u64;
                        if expected_next.is_some_and(|n| k.value() < n) {
                            report
                                .problems
                                .push(format!("chunk {} overlaps the previous one", k.value()));
                        }
                        expected_next = Some(k.value() + recs.len() as u64);
                    }
                    Err(e) => report.problems.push(e.to_string()),
                }
            }
        }
        Err(e) => report.problems.push(format!("no chunks table: {e}")),
    }
    if let Ok(meta) = txn.open_table(META) {
        match meta_u64(&meta, "format_version")? {
            Some(OLDEST_FORMAT..=FORMAT_VERSION) => {}
            other => report.problems.push(format!(
                "format_version is {other:?}, expected {OLDEST_FORMAT} to {FORMAT_VERSION}"
            )),
        }
    } else {
        report.problems.push("no meta table".into());
    }
    Ok(())
}

/// Stats of a queue file that no agent has open. Blocking.
pub fn offline_stats(dir: &Path) -> Result<Stats, QueueError> {
    let path = existing(dir)?;
    let d = salvage::guarded("opening the file", || {
        Database::builder()
            .set_cache_size(2 << 20)
            .open(&path)
            .map_err(db)
    })?;
    salvage::guarded("reading the file", || stats_of(&d, 0, None))
}

/// What [`export`] wrote and what it could not read.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Records and dead letters written.
    pub records: u64,
    /// What could not be read or decoded; empty when everything was exported.
    pub problems: Vec<String>,
}

/// Writes every queued record (and then every dead letter) of an offline queue as NDJSON:
/// the data directory's queue file, or `file` (a file that was set aside), which is only
/// read (a file that needs repair is repaired in a temporary copy). Best effort: what still
/// decodes is written, and the report says what could not be.
pub fn export(
    dir: Option<&Path>,
    file: Option<&Path>,
    out: &mut dyn std::io::Write,
) -> Result<ExportReport, QueueError> {
    let (path, opened) = match (file, dir) {
        (Some(f), _) => (f.to_path_buf(), salvage::Salvage::open(f)),
        (None, Some(d)) => {
            let path = existing(d)?;
            let opened = salvage::Salvage::open_in_place(&path);
            (path, opened)
        }
        (None, None) => return Err(QueueError::unavailable("no queue file given")),
    };
    let mut report = ExportReport::default();
    let source = match opened {
        Ok(s) => s,
        Err(e @ QueueError::Storage(redb::Error::DatabaseAlreadyOpen)) => return Err(e),
        Err(e) => {
            report.problems.push(format!("cannot open: {e}"));
            return Ok(report);
        }
    };
    let txn = match source.begin_read() {
        Ok(t) => t,
        Err(e) => {
            report.problems.push(format!("cannot read: {e}"));
            return Ok(report);
        }
    };
    // Each table on its own: one unreadable table must not hide the others.
    let mut sink = ExportSink {
        out,
        report,
        write_err: None,
    };
    if let Err(e) = salvage::guarded("reading the queued records", || {
        export_chunks(&txn, &mut sink)
    }) {
        sink.report.problems.push(format!("queued records: {e}"));
    }
    if let Err(e) = salvage::guarded("reading the dead letters", || export_dead(&txn, &mut sink)) {
        sink.report.problems.push(format!("dead letters: {e}"));
    }
    match sink.write_err {
        Some(source) => Err(QueueError::Io { path, source }),
        None => Ok(sink.report),
    }
}

/// Where `queue export` writes, and what it has written so far.
struct ExportSink<'a> {
    out: &'a mut dyn std::io::Write,
    report: ExportReport,
    /// Set when writing failed: export stops there.
    write_err: Option<std::io::Error>,
}

impl ExportSink<'_> {
    /// Writes one line; false once writing has failed.
    fn line(&mut self, seq: Option<u64>, r: &Record, reason: Option<&str>) -> bool {
        if self.write_err.is_some() {
            return false;
        }
        match writeln!(self.out, "{}", export_line(seq, r, reason)) {
            Ok(()) => {
                self.report.records += 1;
                true
            }
            Err(e) => {
                self.write_err = Some(e);
                false
            }
        }
    }
}

/// One NDJSON line of `queue export`.
fn export_line(seq: Option<u64>, r: &Record, reason: Option<&str>) -> serde_json::Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = std::str::from_utf8(&r.payload).ok();
    serde_json::json!({
        "seq": seq,
        "ts_ns": r.ts_ns,
        "source": r.source,
        "topic": r.topic,
        "key": r.key.as_ref().map(|k| b64.encode(k)),
        "headers": r.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
        "payload": text,
        "payload_base64": text.is_none().then(|| b64.encode(&r.payload)),
        "dead_letter_reason": reason,
    })
}

fn export_chunks(txn: &redb::ReadTransaction, sink: &mut ExportSink) -> Result<(), QueueError> {
    let chunks = txn.open_table(CHUNKS).map_err(db)?;
    for e in chunks.iter().map_err(db)? {
        let (k, v) = e.map_err(db)?;
        let first = k.value();
        match decode_chunk(first, v.value()) {
            Ok(records) => {
                for (i, r) in records.iter().enumerate() {
                    if !sink.line(Some(first + i as u64), r, None) {
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                let n = chunk_header(first, v.value()).map_or(0, |(n, _)| n);
                sink.report
                    .problems
                    .push(format!("{e} ({n} records not exported)"));
            }
        }
    }
    Ok(())
}

fn export_dead(txn: &redb::ReadTransaction, sink: &mut ExportSink) -> Result<(), QueueError> {
    let dead = txn.open_table(DEAD).map_err(db)?;
    for e in dead.iter().map_err(db)? {
        let (k, v) = e.map_err(db)?;
        match ciborium::from_reader::<DeadLetter, _>(v.value()) {
            Ok(dl) => {
                if !sink.line(None, &dl.record, Some(&dl.reason)) {
                    return Ok(());
                }
            }
            Err(e) => sink
                .report
                .problems
                .push(format!("dead letter {}: {e}", k.value())),
        }
    }
    Ok(())
}
