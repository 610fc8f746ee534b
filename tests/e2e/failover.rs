//! Issue 3: several sinks; failover when the one in use dies, and back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::util::*;

/// Sink A (preferred) is SIGKILLed mid-stream: the agent fails over to B; A comes back and
/// the agent returns to it. Every line is in the union of A's and B's outputs exactly once:
/// batches A had journaled but whose acks died with it were sent to B, and A discards them
/// when the agent tells it so on return (`Resolve`), because A only outputs records the
/// agent has confirmed as A's.
#[test]
fn failover_and_back_delivers_exactly_once_across_sinks() {
    let w = World::new();
    let port_b = free_port();
    let cfg_a = w.sink_config_named("sink", w.port);
    let cfg_b = w.sink_config_named("sinkb", port_b);
    let agent_cfg = w.agent_config_with("", "", &[w.port, port_b]);
    let text = std::fs::read_to_string(&agent_cfg).unwrap().replace(
        "idle_timeout_ms = 3000",
        "idle_timeout_ms = 3000\nfailover_after = 2\nfailback_after_ms = 4000",
    );
    std::fs::write(&agent_cfg, text).unwrap();

    let mut a = Proc::start("sink", &cfg_a, &w.path("sink.log"));
    let _b = Proc::start("sink", &cfg_b, &w.path("sinkb.log"));
    let _agent = w.agent_as_configured();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 100);
    for _ in 0..20 {
        lines.write(500);
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for_output(&w.path("sink/out"), 1, Duration::from_secs(60));
    a.kill9();
    for _ in 0..20 {
        lines.write(500);
        std::thread::sleep(Duration::from_millis(20));
    }
    // B takes over.
    wait_for_output(&w.path("sinkb/out"), 1, Duration::from_secs(60));
    // A returns; after failback_after the agent prefers it again.
    let a_before = read_output(&w.path("sink/out")).len();
    let _a = Proc::start("sink", &cfg_a, &w.path("sink.log"));
    std::thread::sleep(Duration::from_secs(5));
    lines.write(2000);
    wait_for_union_exactly_once(&w, lines.next);
    let a_after = read_output(&w.path("sink/out")).len();
    assert!(
        a_after > a_before,
        "the agent went back to the preferred sink"
    );
}

/// Both sinks are SIGKILLed in turn, five times, while lines flow and the agent fails over
/// and back between them: the union of their outputs still holds every line exactly once.
#[test]
fn sinks_killed_in_turn_deliver_exactly_once_across_sinks() {
    let w = World::new();
    let port_b = free_port();
    let cfg = [
        w.sink_config_named("sink", w.port),
        w.sink_config_named("sinkb", port_b),
    ];
    let agent_cfg = w.agent_config_with("", "", &[w.port, port_b]);
    let text = std::fs::read_to_string(&agent_cfg).unwrap().replace(
        "idle_timeout_ms = 3000",
        "idle_timeout_ms = 3000\nfailover_after = 1\nfailback_after_ms = 1500",
    );
    std::fs::write(&agent_cfg, text).unwrap();
    let logs = [w.path("sink.log"), w.path("sinkb.log")];
    let mut sinks = [
        Proc::start("sink", &cfg[0], &logs[0]),
        Proc::start("sink", &cfg[1], &logs[1]),
    ];
    let _agent = w.agent_as_configured();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 100);
    let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
    for kill in 0..5 {
        for _ in 0..rng.usize(5..25) {
            lines.write(rng.usize(100..600));
            std::thread::sleep(Duration::from_millis(rng.u64(5..40)));
        }
        let victim = kill % 2;
        sinks[victim].kill9();
        lines.write(300);
        std::thread::sleep(Duration::from_millis(rng.u64(100..800)));
        sinks[victim] = Proc::start("sink", &cfg[victim], &logs[victim]);
    }
    lines.write(1000);
    wait_for_union_exactly_once(&w, lines.next);
}

/// Waits until lines `0..n` are in the union of both sinks' outputs, failing on the first
/// duplicate seen, and checks nothing more arrives.
fn wait_for_union_exactly_once(w: &World, n: usize) {
    let union = || {
        let mut all = read_output(&w.path("sink/out"));
        all.extend(read_output(&w.path("sinkb/out")));
        all
    };
    let start = Instant::now();
    loop {
        let mut count: HashMap<usize, usize> = HashMap::new();
        for l in &union() {
            *count.entry(line_no(&l.payload)).or_default() += 1;
        }
        let dups: Vec<usize> = count
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(l, _)| *l)
            .take(10)
            .collect();
        assert!(
            dups.is_empty(),
            "duplicates across the two sinks, e.g. lines {dups:?}"
        );
        if count.len() >= n {
            assert!((0..n).all(|i| count.contains_key(&i)), "a line is missing");
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(union().len(), n, "exactly once in the union");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{} of {n} lines arrived",
            count.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
