//! Payload codecs: how a source interprets the bytes of each record.
//!
//! Decoding happens in the source, before transforms, so a malformed record is caught where
//! it entered and dead-lettered with the reason instead of failing later stages.

use crate::Codec;
use dataweaver_core::Record;

/// Deepest nesting of arrays and objects the `json` codec accepts: serde_json's own
/// recursion limit, so whatever a transform or consumer parses with its defaults fits.
pub const JSON_MAX_DEPTH: usize = 128;

/// Checks one record against the codec; `Err` is the reason it does not fit.
pub fn check(codec: Codec, record: &Record) -> Result<(), String> {
    match codec {
        Codec::Raw | Codec::Binary => Ok(()),
        Codec::Json => check_json(&record.payload, JSON_MAX_DEPTH),
    }
}

/// UTF-8 first (JSON text is UTF-8, and serde_json skips over the bytes of strings it is
/// told to ignore), then the depth (serde_json's `IgnoredAny` walks nesting iteratively,
/// without a limit), then the syntax.
fn check_json(payload: &[u8], max_depth: usize) -> Result<(), String> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    if let Some(at) = too_deep(payload, max_depth) {
        return Err(format!(
            "invalid JSON: nested deeper than {max_depth} levels at byte {at}"
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| format!("invalid JSON: {e}"))
}

/// The offset of the first `[` or `{` (outside strings) that opens level `max_depth + 1`.
fn too_deep(json: &[u8], max_depth: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in json.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// [`check`] for one line framed at `max_line` bytes: a failing line of exactly that
/// length was cut from a longer one, and the reason says so.
pub fn check_line(codec: Codec, max_line: usize, record: &Record) -> Result<(), String> {
    check(codec, record).map_err(|reason| {
        if record.payload.len() == max_line {
            cut_line(max_line, &reason)
        } else {
            reason
        }
    })
}

fn cut_line(max_line: usize, reason: &str) -> String {
    format!(
        "line longer than max_line_bytes ({max_line}): cut into pieces that are not JSON on their own ({reason})"
    )
}

/// Splits records into the ones the codec accepts and the rejected ones with reasons.
pub fn decode_all(codec: Codec, records: Vec<Record>) -> (Vec<Record>, Vec<(Record, String)>) {
    decode_lines(codec, usize::MAX, records)
}

/// [`decode_all`] for records framed as lines of at most `max_line` bytes: a record that
/// fails and is exactly `max_line` long (or follows one) is a piece of a longer line, and
/// the reason says so instead of only quoting the parser.
pub fn decode_lines(
    codec: Codec,
    max_line: usize,
    records: Vec<Record>,
) -> (Vec<Record>, Vec<(Record, String)>) {
    if matches!(codec, Codec::Raw | Codec::Binary) {
        return (records, Vec::new());
    }
    let mut ok = Vec::with_capacity(records.len());
    let mut bad = Vec::new();
    let mut after_cut = false;
    for r in records {
        let cut = r.payload.len() == max_line;
        match check(codec, &r) {
            Ok(()) => ok.push(r),
            Err(reason) if cut || after_cut => bad.push((r, cut_line(max_line, &reason))),
            Err(reason) => bad.push((r, reason)),
        }
        after_cut = cut;
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_codec_rejects_with_reason_and_keeps_the_record() {
        let good = Record::new("s", "t", br#"{"a":1}"#.to_vec());
        let bad = Record::new("s", "t", b"{not json".to_vec());
        let (ok, rejected) = decode_all(Codec::Json, vec![good.clone(), bad.clone()]);
        assert_eq!(ok, vec![good]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, bad);
        assert!(
            rejected[0].1.starts_with("invalid JSON"),
            "{}",
            rejected[0].1
        );
        let (ok, rejected) = decode_all(Codec::Binary, vec![bad.clone()]);
        assert_eq!((ok.len(), rejected.len()), (1, 0));
    }

    #[test]
    fn json_codec_refuses_invalid_utf8_with_its_offset() {
        let mut payload = b"{\"a\":\"caf".to_vec();
        payload.extend_from_slice(&[0xe9, b'"', b'}']);
        let reason = check(Codec::Json, &Record::new("s", "t", payload)).unwrap_err();
        assert_eq!(reason, "invalid UTF-8 at byte 9");
        assert!(
            check(
                Codec::Json,
                &Record::new("s", "t", "{\"a\":\"café\"}".into())
            )
            .is_ok()
        );
    }

    #[test]
    fn json_codec_bounds_nesting_depth() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        assert!(check(Codec::Json, &Record::new("s", "t", nest(JSON_MAX_DEPTH))).is_ok());
        let reason = check(Codec::Json, &Record::new("s", "t", nest(100_000))).unwrap_err();
        assert_eq!(
            reason,
            "invalid JSON: nested deeper than 128 levels at byte 128"
        );
        // Brackets inside strings (escaped quotes too) are not nesting.
        let quoted = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert!(check(Codec::Json, &Record::new("s", "t", quoted.into_bytes())).is_ok());
    }

    #[test]
    fn json_codec_names_a_cut_line() {
        let long = br#"{"msg":"0123456789"}"#.to_vec();
        let pieces: Vec<Record> = long
            .chunks(8)
            .map(|c| Record::new("s", "t", c.to_vec()))
            .collect();
        let (ok, bad) = decode_lines(Codec::Json, 8, pieces);
        assert!(ok.is_empty());
        assert_eq!(bad.len(), 3);
        assert!(
            bad.iter()
                .all(|(_, r)| r.starts_with("line longer than max_line_bytes (8)")),
            "{bad:?}"
        );
    }
}
