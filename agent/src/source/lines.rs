//! Newline framing shared by the line-oriented sources (file, stdin, tcp, udp, http).

/// Takes every complete line off the front of `buf` (which may start with a partial line
/// carried over from the last read) and leaves the incomplete rest in it.
///
/// A trailing `\r` is removed; empty lines are skipped; a line longer than `max_line` is
/// cut into pieces of that size, and an unterminated remainder that reaches `max_line` is
/// emitted too rather than held forever.
pub fn split_lines(buf: &mut Vec<u8>, max_line: usize) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let mut line = &buf[from..from + i];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        for piece in line.chunks(max_line) {
            lines.push(piece.to_vec());
        }
        from += i + 1;
    }
    let mut rest = buf.split_off(from);
    while rest.len() >= max_line {
        let tail = rest.split_off(max_line);
        lines.push(rest);
        rest = tail;
    }
    *buf = rest;
    lines
}

#[cfg(test)]
mod tests {
    use super::split_lines;

    #[test]
    fn splits_keeps_partial_and_cuts_long_lines() {
        let mut buf = b"a\r\n\nbb\nccc".to_vec();
        assert_eq!(
            split_lines(&mut buf, 100),
            vec![b"a".to_vec(), b"bb".to_vec()]
        );
        assert_eq!(buf, b"ccc");
        buf.extend_from_slice(b"dddddd\n");
        assert_eq!(
            split_lines(&mut buf, 4),
            vec![b"cccd".to_vec(), b"dddd".to_vec(), b"d".to_vec()]
        );
        let mut long = b"xxxxxxxxxx".to_vec();
        assert_eq!(split_lines(&mut long, 4).len(), 2);
        assert_eq!(long, b"xx");
    }
}
