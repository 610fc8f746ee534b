//! JSON lines on standard output.

use std::io::Write;

use super::{Output, format_lines};
use crate::journal::Entry;

/// JSON lines on standard output: at-least-once (a crash may repeat the last round).
pub struct StdoutOutput {
    buf: Vec<u8>,
}

impl StdoutOutput {
    /// The stdout output.
    pub fn new() -> Self {
        StdoutOutput { buf: Vec::new() }
    }
}

impl Default for StdoutOutput {
    fn default() -> Self {
        Self::new()
    }
}

impl Output for StdoutOutput {
    fn name(&self) -> String {
        "stdout".into()
    }

    fn write(&mut self, entries: &[(u64, Entry)]) -> std::io::Result<()> {
        self.buf.clear();
        format_lines(entries, &mut self.buf);
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf)?;
        out.flush()
    }

    fn position(&self) -> Vec<u8> {
        Vec::new()
    }
}
