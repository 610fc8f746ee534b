//! Queue file: corruption, checksums, checkpoints (issue 12: 6, 10, 11).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const WAIT: Duration = Duration::from_secs(30);

/// The agent's queue file.
fn queue_file(w: &World) -> PathBuf {
    w.path("agent/data/queue.redb")
}

/// XORs the byte at `offset` of `path` with 0xFF.
fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > offset,
        "queue file is only {} bytes",
        bytes.len()
    );
    bytes[offset] ^= 0xFF;
    std::fs::write(path, bytes).unwrap();
}

/// Waits for `n` output lines while checking the agent stays up: a crash loop shows as the
/// agent's exit status instead of a time-out.
fn wait_alive(w: &World, agent: &mut Proc, n: usize) -> Vec<OutLine> {
    let start = Instant::now();
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            print_log_tails(w.dir.path(), &["agent.log"], 20);
            panic!("the agent exited with {status} instead of starting");
        }
        let lines = read_output(&w.output_dir());
        if lines.len() >= n {
            std::thread::sleep(Duration::from_millis(500));
            return read_output(&w.output_dir());
        }
        if start.elapsed() > WAIT {
            print_log_tails(w.dir.path(), &["agent.log", "sink.log"], 20);
            panic!("timed out: {} of {n} lines arrived", lines.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts lines `0..n` arrived exactly once each. Seqs start again at 1 in the fresh
/// queue (with a new queue id), so they rise per queue id only.
fn assert_once_across_queues(out: &[OutLine], n: usize) {
    let mut seen: Vec<usize> = out.iter().map(|l| line_no(&l.payload)).collect();
    seen.sort_unstable();
    let dups: Vec<&[usize]> = seen.windows(2).filter(|w| w[0] == w[1]).take(5).collect();
    assert!(dups.is_empty(), "lines delivered twice: {dups:?}");
    assert_eq!(seen, (0..n).collect::<Vec<_>>(), "every line once");
    let queues: std::collections::HashSet<&str> = out.iter().map(|l| l.queue.as_str()).collect();
    assert_eq!(queues.len(), 2, "the fresh queue has a new id");
    for q in queues {
        let seqs: Vec<u64> = out.iter().filter(|l| l.queue == q).map(|l| l.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs rise per queue");
    }
}

/// The files the agent set aside in its data directory.
fn set_aside_files(w: &World) -> Vec<PathBuf> {
    std::fs::read_dir(w.path("agent/data"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("corrupt"))
        .collect()
}

/// Delivers lines `0..n` through a sink, stops the agent gracefully and flips the byte at
/// offset 4096 of its queue file (the reproduction of defect 10). Returns the line writer.
fn deliver_then_flip_4096(w: &World, n: usize) -> LineWriter {
    w.agent_config();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 100);
    let mut agent = w.agent();
    lines.write(n);
    wait_for_output(&w.output_dir(), n, WAIT);
    sigterm(&mut agent);
    flip_byte(&queue_file(w), 4096);
    lines
}

/// Issue 12, defect 10: one flipped byte at offset 4096 of `queue.redb` made redb panic at
/// open, so the agent exited 101 on every start (a crash loop) and `queue check` /
/// `queue export` panicked too. Now the file is set aside (0600), a fresh queue starts and
/// delivers new lines, and `queue export --file` of the set-aside file exits cleanly.
#[test]
fn flipped_byte_at_4096_does_not_crash_loop_the_agent() {
    let w = World::new();
    let _sink = w.sink();
    let mut lines = deliver_then_flip_4096(&w, 200);
    let data = w.path("agent/data");
    let check = Command::new(bin())
        .args(["queue", "check", "--dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(1),
        "queue check reports a problem without panicking: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut agent = w.agent();
    lines.write(200);
    let out = wait_alive(&w, &mut agent, 400);
    assert!(
        out.iter().any(|l| line_no(&l.payload) == 399),
        "new lines are delivered"
    );
    sigterm(&mut agent);
    let log = std::fs::read_to_string(w.path("agent.log")).unwrap();
    assert!(log.contains("QUEUE FILE IS CORRUPT"), "said loudly");
    let aside = set_aside_files(&w);
    assert_eq!(aside.len(), 1, "{aside:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&aside[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "set-aside file is private");
    }
    assert_eq!(
        w.queue_stats()["set aside"],
        1,
        "counted in the fresh queue"
    );
    let export = Command::new(bin())
        .args(["queue", "export", "--file", aside[0].to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&export.stderr);
    assert!(
        matches!(export.status.code(), Some(0 | 1)) && !stderr.contains("panicked"),
        "export of the set-aside file exits cleanly: {:?} {stderr}",
        export.status
    );
    for l in String::from_utf8_lossy(&export.stdout).lines() {
        serde_json::from_str::<serde_json::Value>(l).expect("NDJSON");
    }
}

/// Issue 12, defect 6: a corrupt queue file took the file sources' checkpoints with it:
/// after it was set aside, files were read again from `read_from` (every line delivered
/// twice). Now the checkpoints are recovered (salvaged from the set-aside file, or from the
/// side copy the queue keeps), so every line arrives exactly once.
#[test]
fn corrupt_queue_file_keeps_the_file_checkpoints() {
    let w = World::new();
    let _sink = w.sink();
    let mut lines = deliver_then_flip_4096(&w, 1000);
    let mut agent = w.agent();
    lines.write(500);
    let out = wait_alive(&w, &mut agent, 1500);
    assert_once_across_queues(&out, 1500);
    assert_eq!(set_aside_files(&w).len(), 1, "the queue was set aside");
    let log = std::fs::read_to_string(w.path("agent.log")).unwrap();
    let line = log.lines().find(|l| l.contains("QUEUE FILE IS CORRUPT"));
    eprintln!("{}", line.unwrap_or("no set-aside line"));
}

/// Issue 12, defect 6 (the side copy): a queue file that redb cannot read at all (its
/// header overwritten) still does not make the file source start over.
#[test]
fn unreadable_queue_file_keeps_the_file_checkpoints() {
    let w = World::new();
    let _sink = w.sink();
    w.agent_config();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 100);
    let mut agent = w.agent();
    lines.write(500);
    wait_for_output(&w.output_dir(), 500, WAIT);
    sigterm(&mut agent);
    let q = queue_file(&w);
    let mut bytes = std::fs::read(&q).unwrap();
    bytes[..4096].fill(0x5A);
    std::fs::write(&q, bytes).unwrap();
    let mut agent = w.agent();
    lines.write(300);
    let out = wait_alive(&w, &mut agent, 800);
    assert_once_across_queues(&out, 800);
    let log = std::fs::read_to_string(w.path("agent.log")).unwrap();
    assert!(
        log.contains("side copy"),
        "the checkpoints came from the side copy"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let side = std::fs::metadata(w.path("agent/data/queue-checkpoints.cbor")).unwrap();
        assert_eq!(
            side.permissions().mode() & 0o777,
            0o600,
            "side copy is private"
        );
    }
}

/// Issue 12, defect 11: a flipped byte inside a queued record's data was delivered as an
/// altered record. Now each stored chunk carries a checksum; a mismatch dead-letters the
/// chunk's records with the reason and the rest are delivered.
#[test]
fn flipped_byte_in_record_data_is_dead_lettered_not_delivered() {
    let w = World::new();
    w.agent_config();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 100);
    lines.write(50);
    // No sink: the lines stay in the queue. Stop once all 50 are queued.
    let start = Instant::now();
    loop {
        let mut agent = w.agent();
        std::thread::sleep(Duration::from_millis(1000));
        agent.kill9();
        if w.queue_stats()["depth"] >= 50 {
            break;
        }
        assert!(start.elapsed() < WAIT, "lines never queued");
    }
    let q = queue_file(&w);
    let mut bytes = std::fs::read(&q).unwrap();
    let needle = b"line-00000020-xxx";
    let mut flipped = 0;
    let mut i = 0;
    while let Some(p) = bytes[i..].windows(needle.len()).position(|s| s == needle) {
        // 'x' -> 'y': still valid UTF-8 and CBOR, so only a checksum can tell.
        bytes[i + p + 16] ^= 0x01;
        flipped += 1;
        i += p + needle.len();
    }
    assert!(flipped > 0, "line 20 not found in the queue file");
    std::fs::write(&q, bytes).unwrap();

    let _sink = w.sink();
    let mut agent = w.agent();
    // The agent logs how many records it dead-lettered; the rest must arrive.
    let start = Instant::now();
    let dead_n = loop {
        let log = std::fs::read_to_string(w.path("agent.log")).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("failed its checksum")) {
            let n = line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("records="))
                .and_then(|v| v.parse::<usize>().ok())
                .expect("records=N in the log line");
            break n;
        }
        assert!(
            read_output(&w.output_dir())
                .iter()
                .all(|l| !l.payload.contains("xxy")),
            "an altered record was delivered"
        );
        if start.elapsed() > WAIT {
            print_log_tails(w.dir.path(), &["agent.log"], 20);
            panic!("no checksum mismatch reported");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(dead_n > 0);
    let out = if dead_n < 50 {
        wait_alive(&w, &mut agent, 50 - dead_n)
    } else {
        Vec::new()
    };
    agent.kill9();
    assert!(
        out.iter().all(|l| !l.payload.contains("xxy")),
        "an altered record was delivered"
    );
    let dead = dead_letters(&w);
    assert!(
        dead.iter().all(|d| d["dead_letter_reason"]
            .as_str()
            .is_some_and(|r| r.contains("checksum"))),
        "dead letters carry the reason: {dead:?}"
    );
    assert_eq!(dead.len(), dead_n);
    let mut seen: Vec<usize> = out.iter().map(|l| line_no(&l.payload)).collect();
    seen.extend(
        dead.iter()
            .filter_map(|d| d["payload"].as_str().map(line_no)),
    );
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..50).collect::<Vec<_>>(),
        "each line delivered or dead-lettered, once"
    );
}
