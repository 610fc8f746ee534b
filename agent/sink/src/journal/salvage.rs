//! Salvage of a corrupt journal file: set it aside, read what still decodes (on a copy,
//! table by table, each read under `catch_unwind`), write it into a new file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable};

use super::{
    CURSOR, Entry, JOURNAL, JournalError, JournalHeader, Loaded, MARKS, META, Mark, QUARANTINE,
    V1_CONFIRMED, V1_HWM, catch, db, merge_v1_mark, open_file, quarantine_put,
};

/// Renames a bad journal file to `journal.redb.corrupt-<unix seconds>`, owner-only.
fn set_aside(path: &Path) -> Result<PathBuf, JournalError> {
    dataweaver_store::fsmode::set_aside(path).map_err(|e| JournalError::Io(path.into(), e))
}

/// What could still be read from a corrupt file.
#[derive(Default)]
struct Salvaged {
    id: Option<u64>,
    marks: Vec<(String, String, Mark)>,
    entries: Vec<Vec<u8>>,
    cursors: Vec<(String, Vec<u8>)>,
    quarantine: Vec<(u64, String, Vec<u8>)>,
}

/// Sets a corrupt file aside, salvages what decodes of it into a new file and opens that.
pub(super) fn recover_corrupt(
    path: &Path,
    why: &JournalError,
) -> Result<(Database, Loaded), JournalError> {
    let aside = set_aside(path)?;
    tracing::error!(
        file = %path.display(), set_aside = %aside.display(), error = %why,
        "THE SINK JOURNAL IS CORRUPT: it was set aside; salvaging what still decodes into a new journal"
    );
    let old = salvage(&aside);
    let (d, _) = open_file(&dataweaver_store::Medium::File(path.to_path_buf()), false)?;
    let entries = old.entries.len();
    let (mut kept, mut bad) = (0usize, 0usize);
    catch(|| {
        let txn = d.begin_write().map_err(db)?;
        {
            let mut meta = txn.open_table(META).map_err(db)?;
            if let Some(id) = old.id {
                meta.insert("journal_id", id).map_err(db)?;
            }
            let mut j = txn.open_table(JOURNAL).map_err(db)?;
            let mut q = txn.open_table(QUARANTINE).map_err(db)?;
            // Highest seq still held per queue: lost unconfirmed entries may be resent.
            let mut held: HashMap<(String, String), u64> = HashMap::new();
            for (n, raw) in old.entries.iter().enumerate() {
                match Entry::decode(raw) {
                    Ok(_) => {
                        if let Ok(h) = JournalHeader::decode(raw.as_slice()) {
                            let top = held.entry((h.agent_id, h.queue_id)).or_default();
                            *top = (*top).max(h.last_seq);
                        }
                        j.insert(n as u64 + 1, raw.as_slice()).map_err(db)?;
                        kept += 1;
                    }
                    Err(e) => {
                        quarantine_put(&mut q, &format!("salvaged entry: {e}"), raw)?;
                        bad += 1;
                    }
                }
            }
            for (_, reason, bytes) in &old.quarantine {
                quarantine_put(&mut q, reason, bytes)?;
            }
            let mut m = txn.open_table(MARKS).map_err(db)?;
            for (agent, queue, mark) in &old.marks {
                let top = held
                    .get(&(agent.clone(), queue.clone()))
                    .copied()
                    .unwrap_or(0);
                let hwm = mark.confirmed.max(top.min(mark.hwm));
                m.insert((agent.as_str(), queue.as_str()), (hwm, mark.confirmed))
                    .map_err(db)?;
            }
            let mut c = txn.open_table(CURSOR).map_err(db)?;
            for (name, p) in &old.cursors {
                c.insert(name.as_str(), p.as_slice()).map_err(db)?;
            }
        }
        txn.commit().map_err(db)
    })?;
    tracing::error!(
        entries_salvaged = kept, entries_quarantined = bad, entries_read = entries,
        queues = old.marks.len(), outputs = old.cursors.len(), journal_id_kept = old.id.is_some(),
        set_aside = %aside.display(),
        "salvaged the corrupt journal; records it held that could not be read are lost"
    );
    drop(d);
    open_file(&dataweaver_store::Medium::File(path.to_path_buf()), false)
}

/// Reads what it can of a corrupt file, on a copy (redb may repair what it opens), table by
/// table, keeping what was read before a table failed.
fn salvage(aside: &Path) -> Salvaged {
    let mut out = Salvaged::default();
    let copy = aside.with_extension("salvage-tmp");
    if let Err(e) = std::fs::copy(aside, &copy) {
        tracing::error!(error = %e, "cannot copy the corrupt journal to salvage it");
        return out;
    }
    let opened = catch(|| {
        Database::builder()
            .set_cache_size(4 << 20)
            .open(&copy)
            .map_err(db)
    });
    match opened {
        Ok(d) => {
            let r = catch(|| salvage_tables(&d, &mut out));
            if let Err(e) = r {
                tracing::error!(error = %e, "salvage stopped early");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "the corrupt journal cannot be opened at all; nothing salvaged")
        }
    }
    let _ = std::fs::remove_file(&copy);
    out
}

fn salvage_tables(d: &Database, out: &mut Salvaged) -> Result<(), JournalError> {
    let txn = d.begin_read().map_err(db)?;
    // Each table in its own catch: a bad page in one loses only the rest of that table.
    let _ = catch(|| {
        let meta = txn.open_table(META).map_err(db)?;
        out.id = meta.get("journal_id").map_err(db)?.map(|v| v.value());
        let version = meta.get("format_version").map_err(db)?.map(|v| v.value());
        if version == Some(1) {
            let mut merged: HashMap<(String, String), Mark> = HashMap::new();
            for (def, confirmed) in [(V1_HWM, false), (V1_CONFIRMED, true)] {
                let t = txn.open_table(def).map_err(db)?;
                for e in t.iter().map_err(db)? {
                    let (k, v) = e.map_err(db)?;
                    merge_v1_mark(&mut merged, k.value(), v.value(), confirmed);
                }
            }
            out.marks = merged.into_iter().map(|((a, q), m)| (a, q, m)).collect();
        } else {
            let t = txn.open_table(MARKS).map_err(db)?;
            for e in t.iter().map_err(db)? {
                let (k, v) = e.map_err(db)?;
                let ((a, q), (hwm, confirmed)) = (k.value(), v.value());
                out.marks.push((
                    a.to_string(),
                    q.to_string(),
                    Mark {
                        hwm,
                        confirmed,
                        instance: 0,
                    },
                ));
            }
        }
        Ok(())
    });
    let _ = catch(|| {
        let t = txn.open_table(JOURNAL).map_err(db)?;
        for e in t.iter().map_err(db)? {
            let (_, v) = e.map_err(db)?;
            out.entries.push(v.value().to_vec());
        }
        Ok(())
    });
    let _ = catch(|| {
        let t = txn.open_table(CURSOR).map_err(db)?;
        for e in t.iter().map_err(db)? {
            let (k, v) = e.map_err(db)?;
            out.cursors
                .push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(())
    });
    let _ = catch(|| {
        let t = txn.open_table(QUARANTINE).map_err(db)?;
        for e in t.iter().map_err(db)? {
            let (k, v) = e.map_err(db)?;
            let (_at, reason, bytes) = v.value();
            out.quarantine
                .push((k.value(), reason.to_string(), bytes.to_vec()));
        }
        Ok(())
    });
    Ok(())
}
