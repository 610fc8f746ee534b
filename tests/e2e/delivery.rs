//! Delivery guarantees: exactly once, in order, through kills and outages.

use std::time::Duration;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(240);

/// Acceptance 1: 100,000 lines appended to a watched file arrive exactly once, in order.
#[test]
fn hundred_thousand_lines_arrive_exactly_once_in_order() {
    let w = World::new();
    let _sink = w.sink();
    let _agent = w.agent();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 120);
    for _ in 0..100 {
        lines.write(1000);
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = wait_for_output(&w.output_dir(), 100_000, WAIT);
    assert_exactly_once_in_order(&out, 100_000);
    let files = std::fs::read_dir(w.output_dir()).unwrap().count();
    assert!(files > 1, "1 MiB files must have rotated, found {files}");
}

/// Acceptance 2: the agent is SIGKILLed 5 times while lines are written; nothing is lost
/// or repeated.
#[test]
fn agent_sigkill_five_times_loses_and_repeats_nothing() {
    let w = World::new();
    let _sink = w.sink();
    let mut agent = w.agent();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 100);
    let mut rng = fastrand::Rng::with_seed(seed());
    for kill in 0..5 {
        // Write for a random while, then kill at a random moment mid-stream.
        let rounds = rng.usize(5..30);
        for _ in 0..rounds {
            lines.write(rng.usize(100..800));
            std::thread::sleep(Duration::from_millis(rng.u64(5..40)));
        }
        agent.kill9();
        eprintln!("kill {kill}: agent killed after line {}", lines.next);
        lines.write(500); // written while the agent is dead
        agent = w.agent();
    }
    lines.write(1000);
    let n = lines.next;
    let out = wait_for_output(&w.output_dir(), n, WAIT);
    assert_exactly_once_in_order(&out, n);
}

/// Acceptance 3: the sink is SIGKILLed 5 times while lines flow; nothing is lost or repeated.
#[test]
fn sink_sigkill_five_times_loses_and_repeats_nothing() {
    let w = World::new();
    let mut sink = w.sink();
    let _agent = w.agent();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 100);
    let mut rng = fastrand::Rng::with_seed(seed() ^ 1);
    for kill in 0..5 {
        let rounds = rng.usize(5..30);
        for _ in 0..rounds {
            lines.write(rng.usize(100..800));
            std::thread::sleep(Duration::from_millis(rng.u64(5..40)));
        }
        sink.kill9();
        eprintln!(
            "kill {kill}: sink killed after line {}, {} lines out",
            lines.next,
            read_output(&w.output_dir()).len()
        );
        lines.write(500);
        std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
        let before = read_output(&w.output_dir()).len();
        sink = w.sink();
        // The next kill must hit a sink that is receiving again, not one still starting.
        wait_for_output(&w.output_dir(), before + 1, WAIT);
    }
    lines.write(1000);
    let n = lines.next;
    let out = wait_for_output(&w.output_dir(), n, WAIT);
    assert_exactly_once_in_order(&out, n);
}

/// Acceptance 4: with the sink down, 50,000 lines are kept by the agent (even across an
/// agent SIGKILL) and all arrive exactly once when the sink comes back.
#[test]
fn sink_outage_keeps_fifty_thousand_lines_until_it_returns() {
    let w = World::new();
    let mut agent = w.agent();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 100);
    for _ in 0..50 {
        lines.write(1000);
    }
    // Let the agent queue them, then kill it: the queue must hold them across the crash.
    std::thread::sleep(Duration::from_secs(3));
    agent.kill9();
    assert!(
        read_output(&w.output_dir()).is_empty(),
        "no sink, no output"
    );
    let _agent = w.agent();
    std::thread::sleep(Duration::from_secs(1));
    let _sink = w.sink();
    let out = wait_for_output(&w.output_dir(), 50_000, WAIT);
    assert_exactly_once_in_order(&out, 50_000);
}

/// A seed per run, printed so a failure can be replayed with `DATAWEAVER_TEST_SEED`.
fn seed() -> u64 {
    let s = std::env::var("DATAWEAVER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("DATAWEAVER_TEST_SEED={s}");
    s
}

/// Rotation by rename while the agent is down: the application keeps writing to the renamed
/// file, the agent is SIGKILLed and restarted, then the application reopens the watched
/// name. Every line arrives exactly once.
#[test]
fn rotation_by_rename_loses_and_repeats_nothing() {
    let w = World::new();
    let _sink = w.sink();
    let mut agent = w.agent();
    let live = w.path("input/app.log");
    let mut lines = LineWriter::new(&live, 100);
    lines.write(5000);
    std::thread::sleep(Duration::from_millis(300));
    // logrotate: rename away (no longer matches input/*.log)...
    std::fs::rename(&live, w.path("input/app.log.1")).unwrap();
    // ...the application still writes to its open file...
    lines.write(3000);
    // ...the agent dies and comes back meanwhile...
    agent.kill9();
    agent = w.agent();
    std::thread::sleep(Duration::from_millis(200));
    // ...then the application reopens the watched name.
    lines.reopen(&live);
    lines.write(5000);
    let out = wait_for_output(&w.output_dir(), 13_000, WAIT);
    // The renamed file no longer matches the glob; the restarted agent finds it again by
    // inode next to its old path and reads the lines written after the rename.
    assert_exactly_once(&out, 13_000);
    drop(agent);
}

/// Rotation by rename without a restart: the renamed file is read to its end, so every
/// line written to it after the rename arrives too.
#[test]
fn rotated_file_is_read_to_its_end() {
    let w = World::new();
    let _sink = w.sink();
    let _agent = w.agent();
    let live = w.path("input/app.log");
    let mut lines = LineWriter::new(&live, 100);
    lines.write(5000);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::rename(&live, w.path("input/app.log.1")).unwrap();
    lines.write(3000);
    std::thread::sleep(Duration::from_millis(100));
    lines.reopen(&live);
    lines.write(5000);
    let out = wait_for_output(&w.output_dir(), 13_000, WAIT);
    assert_exactly_once(&out, 13_000);
}

/// copytruncate: the file is cut to zero and written again; the new lines are read from the
/// start, the old ones are not repeated.
#[test]
fn truncation_restarts_from_the_beginning() {
    let w = World::new();
    let _sink = w.sink();
    let _agent = w.agent();
    let live = w.path("input/app.log");
    let mut lines = LineWriter::new(&live, 100);
    lines.write(4000);
    wait_for_output(&w.output_dir(), 4000, WAIT);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    lines.write(1000);
    let out = wait_for_output(&w.output_dir(), 5000, WAIT);
    assert_exactly_once_in_order(&out, 5000);
}

/// A line without its newline is not sent until the newline arrives, and then whole, once.
#[test]
fn partial_line_waits_for_its_newline() {
    use std::io::Write;
    let w = World::new();
    let _sink = w.sink();
    let _agent = w.agent();
    let live = w.path("input/app.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&live)
        .unwrap();
    f.write_all(b"line-00000000-first\nline-00000001-sec")
        .unwrap();
    let out = wait_for_output(&w.output_dir(), 1, WAIT);
    assert_eq!(out.len(), 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        read_output(&w.output_dir()).len(),
        1,
        "half a line was sent"
    );
    f.write_all(b"ond\n").unwrap();
    let out = wait_for_output(&w.output_dir(), 2, WAIT);
    assert_eq!(out[1].payload, "line-00000001-second");
    assert_eq!(out.len(), 2);
}

/// Regression: a queue file restored from an older snapshot (or cloned) reuses seqs the
/// sink has already seen. The agent notices the sink's high-water mark is above its own
/// last commit and takes a new queue id; new lines are delivered instead of being dropped
/// as "duplicates".
#[test]
fn restored_queue_snapshot_does_not_lose_new_lines() {
    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    let w = World::new();
    let _sink = w.sink();
    let mut agent = w.agent();
    let log = w.path("input/app.log");
    let mut lines = LineWriter::new(&log, 100);
    lines.write(100);
    wait_for_output(&w.output_dir(), 100, WAIT);
    agent.kill9();
    copy_dir(&w.path("agent/data"), &w.path("snapshot/data"));
    std::fs::copy(&log, w.path("snapshot/app.log")).unwrap();
    agent = w.agent();
    lines.write(900);
    wait_for_output(&w.output_dir(), 1000, WAIT);
    agent.kill9();
    // Restore the machine to the snapshot, then new, different lines are written.
    std::fs::remove_dir_all(w.path("agent/data")).unwrap();
    copy_dir(&w.path("snapshot/data"), &w.path("agent/data"));
    std::fs::copy(w.path("snapshot/app.log"), &log).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for i in 0..50 {
        use std::io::Write;
        writeln!(f, "after-restore-{i}").unwrap();
    }
    let _agent = w.agent();
    let start = std::time::Instant::now();
    loop {
        let out = read_output(&w.output_dir());
        let restored = out
            .iter()
            .filter(|l| l.payload.starts_with("after-restore-"))
            .count();
        if restored == 50 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {restored} of 50 new lines arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent_log = std::fs::read_to_string(w.path("agent.log")).unwrap();
    assert!(
        agent_log.contains("switched to a new queue id"),
        "the agent says why"
    );
}
