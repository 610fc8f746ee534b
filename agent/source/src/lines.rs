//! Newline framing shared by the line-oriented sources (file, stdin, tcp, udp, http).

use crate::LongLines;

/// How a byte stream is cut into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Longest record, bytes.
    pub max_line: usize,
    /// What happens to a line longer than `max_line`.
    pub long_lines: LongLines,
    /// Keep every byte between two newlines (`\r`, empty lines): for binary payloads.
    pub exact: bool,
}

/// What one call of [`LineSplitter::split`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    /// Complete records, in order.
    pub lines: Vec<Vec<u8>>,
    /// Overlong lines to dead-letter (their first `max_line` bytes), with `dead_letter`.
    pub too_long: Vec<Vec<u8>>,
    /// Lines over the limit seen (each counted once, however it was handled).
    pub long_count: u64,
}

/// Cuts a byte stream into lines, across reads: it remembers when it is inside an overlong
/// line, so the line is counted once and its rest is handled as configured.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    framing: Framing,
    /// Inside a line already over the limit (and counted): with `split` its rest goes on as
    /// more pieces, otherwise its rest is discarded up to the next newline.
    in_long: bool,
}

impl LineSplitter {
    /// A splitter at the start of a line (`in_long`: resuming inside an overlong one).
    pub fn new(framing: Framing, in_long: bool) -> Self {
        LineSplitter { framing, in_long }
    }

    /// Whether the next bytes continue an overlong line (stored with a file's checkpoint).
    pub fn in_long(&self) -> bool {
        self.in_long
    }

    /// Back to the start of a line (the file was truncated).
    pub fn reset(&mut self) {
        self.in_long = false;
    }

    /// Takes every complete line off the front of `buf` (which may start with a partial line
    /// carried over from the last read) and leaves the incomplete rest in it, at most
    /// `max_line` bytes: what is known to be longer is handled as configured already.
    pub fn split(&mut self, buf: &mut Vec<u8>) -> Split {
        let max = self.framing.max_line.max(1);
        let mut out = Split::default();
        let mut from = 0;
        while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
            let mut line = &buf[from..from + i];
            from += i + 1;
            if !self.framing.exact && line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let continued = std::mem::take(&mut self.in_long);
            if continued && self.framing.long_lines != LongLines::Split {
                // The rest of a line whose first part was already handled.
                continue;
            }
            // Empty lines are records only in exact framing (and not as a long line's end).
            if line.is_empty() && (continued || !self.framing.exact) {
                continue;
            }
            if line.len() > max {
                self.long(line, continued, &mut out);
                // The whole line is here: nothing of it follows.
                self.in_long = false;
            } else {
                out.lines.push(line.to_vec());
            }
        }
        let mut rest = buf.split_off(from);
        if self.in_long && self.framing.long_lines != LongLines::Split {
            rest.clear();
        } else if rest.len() > max {
            // No newline yet, but already too long: handle what is here, remember the rest.
            let continued = self.in_long;
            let keep = if self.framing.long_lines == LongLines::Split {
                // Whole pieces go now; the tail (up to `max`) may still end the line.
                let cut = (rest.len() - 1) / max * max;
                let tail = rest.split_off(cut);
                self.long(&rest, continued, &mut out);
                tail
            } else {
                self.long(&rest, continued, &mut out);
                Vec::new()
            };
            self.in_long = true;
            rest = keep;
        }
        *buf = rest;
        out
    }

    /// Handles the part of an overlong line at hand (`continued`: already counted).
    fn long(&self, line: &[u8], continued: bool, out: &mut Split) {
        let max = self.framing.max_line.max(1);
        if !continued {
            out.long_count += 1;
        }
        match self.framing.long_lines {
            LongLines::Split => out.lines.extend(line.chunks(max).map(<[u8]>::to_vec)),
            LongLines::Truncate => out.lines.push(line[..max.min(line.len())].to_vec()),
            LongLines::DeadLetter => out.too_long.push(line[..max.min(line.len())].to_vec()),
        }
    }
}

/// Takes every complete line off the front of `buf` and leaves the incomplete rest in it.
///
/// A trailing `\r` is removed; empty lines are skipped; a line longer than `max_line` is
/// cut into pieces of that size, and an unterminated remainder over `max_line` is emitted
/// too rather than held forever.
pub fn split_lines(buf: &mut Vec<u8>, max_line: usize) -> Vec<Vec<u8>> {
    let framing = Framing {
        max_line,
        long_lines: LongLines::Split,
        exact: false,
    };
    LineSplitter::new(framing, false).split(buf).lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splitter(max_line: usize, long_lines: LongLines, exact: bool) -> LineSplitter {
        LineSplitter::new(
            Framing {
                max_line,
                long_lines,
                exact,
            },
            false,
        )
    }

    fn v(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn splits_keeps_partial_and_cuts_long_lines() {
        let mut buf = b"a\r\n\nbb\nccc".to_vec();
        assert_eq!(split_lines(&mut buf, 100), v(&["a", "bb"]));
        assert_eq!(buf, b"ccc");
        buf.extend_from_slice(b"dddddd\n");
        assert_eq!(split_lines(&mut buf, 4), v(&["cccd", "dddd", "d"]));
        let mut long = b"xxxxxxxxxx".to_vec();
        assert_eq!(split_lines(&mut long, 4).len(), 2);
        assert_eq!(long, b"xx");
    }

    /// Issue 12, defect 25: the file source's binary codec lost `\r` and empty lines.
    #[test]
    fn exact_framing_keeps_carriage_returns_and_empty_lines() {
        let mut s = splitter(100, LongLines::Split, true);
        let mut buf = b"a\r\n\n\r\nb\nc\r".to_vec();
        assert_eq!(s.split(&mut buf).lines, v(&["a\r", "", "\r", "b"]));
        assert_eq!(buf, b"c\r");
    }

    /// Issue 12, defect 25: an overlong line was cut silently; now it is counted once,
    /// across reads, and split, truncated or dead-lettered as configured.
    #[test]
    fn long_lines_are_counted_once_and_handled_as_configured() {
        // Split, with the line arriving in three reads.
        let mut s = splitter(4, LongLines::Split, false);
        let mut buf = b"abcdef".to_vec();
        let a = s.split(&mut buf);
        assert_eq!((a.lines, a.long_count), (v(&["abcd"]), 1));
        buf.extend_from_slice(b"ghijk");
        let b = s.split(&mut buf);
        assert_eq!((b.lines, b.long_count), (v(&["efgh"]), 0));
        buf.extend_from_slice(b"\nok\n");
        let c = s.split(&mut buf);
        assert_eq!((c.lines, c.long_count), (v(&["ijk", "ok"]), 0));
        assert!(!s.in_long());

        // Truncate: the first piece is kept, the rest up to the newline dropped.
        let mut s = splitter(4, LongLines::Truncate, false);
        let mut buf = b"abcdef".to_vec();
        let a = s.split(&mut buf);
        assert_eq!((a.lines, a.long_count, buf.len()), (v(&["abcd"]), 1, 0));
        assert!(s.in_long());
        buf.extend_from_slice(b"gh\nxy\nlonger-one\n");
        let b = s.split(&mut buf);
        assert_eq!((b.lines, b.long_count), (v(&["xy", "long"]), 1));

        // Dead letter: nothing of the line is a record.
        let mut s = splitter(4, LongLines::DeadLetter, false);
        let mut buf = b"{\"a\":1}\n{}\n".to_vec();
        let a = s.split(&mut buf);
        assert_eq!(
            (a.lines, a.too_long, a.long_count),
            (v(&["{}"]), v(&["{\"a\""]), 1)
        );
        // A line of exactly the limit is not long, even before its newline arrives.
        let mut buf = b"abcd".to_vec();
        assert_eq!(s.split(&mut buf), Split::default());
        assert_eq!(buf, b"abcd");
    }
}
