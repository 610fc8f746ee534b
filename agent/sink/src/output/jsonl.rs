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
}

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
        };
        out.seek_end()?;
        Ok(out)
    }

    fn seek_end(&mut self) -> std::io::Result<()> {
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::Start(self.offset))?;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.index += 1;
        self.offset = 0;
        self.file = dataweaver_store::fsmode::create_file(
            &jsonl_path(&self.dir, self.index),
            self.mode,
            true,
        )?;
        // Make the new directory entry durable too.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Output for JsonlOutput {
    fn name(&self) -> String {
        output_name(&self.dir)
    }

    fn write(&mut self, entries: &[(u64, Entry)]) -> std::io::Result<()> {
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
            // Leave the file at the last good offset; the round is retried.
            let _ = self.file.set_len(self.offset);
            let _ = self.seek_end();
            return Err(e);
        }
        self.offset += self.buf.len() as u64;
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
        let (index, offset) = self.committed;
        if index != self.index {
            let _ = std::fs::remove_file(jsonl_path(&self.dir, self.index));
            self.file = OpenOptions::new()
                .write(true)
                .open(jsonl_path(&self.dir, index))?;
        }
        self.index = index;
        self.offset = offset;
        self.file.set_len(offset)?;
        self.seek_end()
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
