//! An HTTP ingest body as the `http` source takes it (line splitting, then the codec's
//! check), and the same bytes read by a line source in two reads (a partial line carried
//! over). The first byte picks the line limit and the codec, so short limits are reached.
#![no_main]

use dataweaver::Record;
use dataweaver::config::Codec;
use dataweaver::source::{codec, lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let max_line = 1 + (pick & 0x3f) as usize;
    let codec = match pick >> 6 {
        0 => Codec::Raw,
        1 => Codec::Binary,
        _ => Codec::Json,
    };
    // The http source: the body plus a final newline, split at once.
    let mut buf = body.to_vec();
    buf.push(b'\n');
    let found = lines::split_lines(&mut buf, max_line);
    check_lines(&found, body.len() + 1);
    let records = Record::from_lines("p/http", "p", Some(("peer", "127.0.0.1:1")), found);
    for r in &records {
        let _ = codec::check(codec, r);
    }
    let (ok, bad) = codec::decode_all(codec, records.clone());
    assert_eq!(ok.len() + bad.len(), records.len());
    // A line source: two reads, the rest of the first carried into the second.
    let cut = body.len() / 2;
    let mut carry = body[..cut].to_vec();
    let mut all = lines::split_lines(&mut carry, max_line);
    carry.extend_from_slice(&body[cut..]);
    all.extend(lines::split_lines(&mut carry, max_line));
    check_lines(&all, body.len());
    // Whole JSON values of any size and depth must fail cleanly, not overflow the stack.
    let _ = codec::check(Codec::Json, &Record::new("p/http", "p", body.to_vec()));
});

/// Lines never hold a newline and never add bytes to what was read.
fn check_lines(found: &[Vec<u8>], read: usize) {
    assert!(found.iter().all(|l| !l.contains(&b'\n')));
    assert!(found.iter().map(Vec::len).sum::<usize>() <= read);
}
