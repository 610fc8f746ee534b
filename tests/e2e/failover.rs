//! Issue 3: several sinks; failover when the one in use dies, and back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::util::*;

/// Sink A (preferred) is killed mid-stream: the agent fails over to B; A comes back and the
/// agent returns to it. Every line arrives. Across two sinks delivery is at-least-once: a
/// batch A committed but whose ack was lost in the kill is sent to B too, so the union may
/// hold a few duplicates (at most one window of batches per failover); see the README.
#[test]
fn failover_to_second_sink_and_back_loses_nothing() {
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
    let n = lines.next;
    let start = Instant::now();
    let union = loop {
        let mut all = read_output(&w.path("sink/out"));
        all.extend(read_output(&w.path("sinkb/out")));
        let distinct: std::collections::HashSet<usize> =
            all.iter().map(|l| line_no(&l.payload)).collect();
        if distinct.len() >= n {
            break all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {n} lines arrived",
            distinct.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut count: HashMap<usize, usize> = HashMap::new();
    for l in &union {
        *count.entry(line_no(&l.payload)).or_default() += 1;
    }
    assert!((0..n).all(|i| count.contains_key(&i)), "a line is missing");
    let dups: usize = count.values().map(|c| c - 1).sum();
    eprintln!("failover: {n} lines, {dups} duplicates across the two sinks");
    assert!(dups <= 4 * 2048, "duplicates beyond one window: {dups}");
    let a_after = read_output(&w.path("sink/out")).len();
    assert!(
        a_after > a_before,
        "the agent went back to the preferred sink"
    );
}
