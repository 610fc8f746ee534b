//! Issue 3: tcp, udp and stdin sources with real client sockets and pipes.

use std::io::Write;
use std::time::Duration;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(120);

fn net_sources(tcp: u16, udp: u16, udp_buffer: usize) -> String {
    format!(
        "[[pipelines.sources]]\ntype = \"tcp\"\nlisten = \"127.0.0.1:{tcp}\"\n\n\
         [[pipelines.sources]]\ntype = \"udp\"\nlisten = \"127.0.0.1:{udp}\"\nbuffer_records = {udp_buffer}\n"
    )
}

/// Two TCP clients at once: every line arrives once, each connection's lines in order, with
/// the peer address as a header.
#[test]
fn tcp_lines_from_real_clients_arrive_once() {
    let w = World::new();
    let (tcp, udp) = (tcp_port(), free_port());
    w.agent_config_sources("", "", &[w.port], &net_sources(tcp, udp, 1024));
    let _sink = w.sink();
    let _agent = w.agent_as_configured();
    let mut a = connect_tcp(tcp);
    let mut b = connect_tcp(tcp);
    let mut expected = 0;
    for i in 0..5000 {
        let (client, name) = if i % 2 == 0 {
            (&mut a, "a")
        } else {
            (&mut b, "b")
        };
        writeln!(client, "line-{i:08}-{name}").unwrap();
        expected += 1;
    }
    // The last line without newline still counts when the client closes.
    write!(a, "line-{:08}-a", 5000).unwrap();
    expected += 1;
    drop(a);
    drop(b);
    let out = wait_for_output(&w.output_dir(), expected, WAIT);
    let mut seen = std::collections::HashSet::new();
    for l in &out {
        assert!(seen.insert(line_no(&l.payload)), "duplicate {}", l.payload);
        assert!(
            l.headers
                .get("peer")
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{:?}",
            l.headers
        );
    }
    assert_eq!(seen.len(), expected);
    for name in ["-a", "-b"] {
        let nums: Vec<usize> = out
            .iter()
            .filter(|l| l.payload.ends_with(name))
            .map(|l| line_no(&l.payload))
            .collect();
        assert!(nums.windows(2).all(|p| p[0] < p[1]), "per-connection order");
    }
}

/// UDP datagrams from a real socket arrive; at a sustainable pace nothing is dropped.
#[test]
fn udp_lines_arrive() {
    let w = World::new();
    let (tcp, udp) = (tcp_port(), free_port());
    w.agent_config_sources("", "", &[w.port], &net_sources(tcp, udp, 65536));
    let _sink = w.sink();
    let mut agent = w.agent_as_configured();
    connect_tcp(tcp); // the agent is up once its sources listen
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // In rounds that fit the kernel's default receive buffer (~208 KiB), each waited for
    // at the output: UDP has no flow control, and on a loaded machine an agent that falls
    // a few hundred datagrams behind loses them in the kernel, before it could count them
    // (it happened here with the simulation running beside the tests: 1,956 of 2,000).
    for round in 0..20 {
        for i in round * 100..(round + 1) * 100 {
            sock.send_to(format!("line-{i:08}-udp").as_bytes(), ("127.0.0.1", udp))
                .unwrap();
        }
        wait_for_output(&w.output_dir(), (round + 1) * 100, WAIT);
    }
    let out = wait_for_output(&w.output_dir(), 2000, WAIT);
    assert_exactly_once(&out, 2000);
    sigterm(&mut agent);
    assert_eq!(counter_in_log(&w.path("agent.log"), "app/udp.dropped"), 0);
    assert_eq!(
        counter_in_log(&w.path("agent.log"), "app/udp.received"),
        2000
    );
}

/// UDP overload (the queue refuses: sink down, tiny queue, `block`): what cannot be taken is
/// counted; queued + counted as dropped = sent.
#[test]
fn udp_overload_drops_are_counted() {
    let w = World::new();
    let (tcp, udp) = (tcp_port(), free_port());
    w.agent_config_sources(
        "max_bytes = 100000",
        "when_full = \"block\"",
        &[w.port],
        &net_sources(tcp, udp, 200),
    );
    let mut agent = w.agent_as_configured();
    connect_tcp(tcp);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent = 5000;
    for i in 0..sent {
        sock.send_to(
            format!("line-{i:08}-{}", "u".repeat(100)).as_bytes(),
            ("127.0.0.1", udp),
        )
        .unwrap();
        if i % 50 == 49 {
            // Slow enough that the kernel's socket buffer never overflows: every drop is ours.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    sigterm(&mut agent);
    let log = w.path("agent.log");
    let dropped = counter_in_log(&log, "app/udp.dropped");
    let stats = w.queue_stats();
    assert!(dropped > 0, "overload must drop");
    // Records still held in the source's buffer at shutdown were neither queued nor dropped:
    // count them from the difference and make sure they are at most the buffer size.
    let held = sent as u64 - dropped - stats["depth"];
    assert!(
        held <= 200 + 4096,
        "queued {} + dropped {dropped} + held {held} != sent {sent}",
        stats["depth"]
    );
}

/// Lines on standard input arrive; the last one needs no newline.
#[test]
fn stdin_lines_arrive() {
    use std::process::{Command, Stdio};
    let w = World::new();
    let cfg = w.agent_config_sources(
        "",
        "",
        &[w.port],
        "[[pipelines.sources]]\ntype = \"stdin\"\n",
    );
    let _sink = w.sink();
    let log = std::fs::File::create(w.path("agent.log")).unwrap();
    let mut child = Proc {
        child: Command::new(bin())
            .args(["agent", "--config", cfg.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    };
    let mut stdin = child.child.stdin.take().unwrap();
    for i in 0..999 {
        writeln!(stdin, "line-{i:08}-stdin").unwrap();
    }
    write!(stdin, "line-{:08}-stdin", 999).unwrap();
    drop(stdin);
    let out = wait_for_output(&w.output_dir(), 1000, WAIT);
    assert_exactly_once_in_order(&out, 1000);
}

/// `host_metrics` sends a JSON sample of this machine every interval.
#[test]
fn host_metrics_sends_json_samples() {
    let w = World::new();
    w.agent_config_sources(
        "",
        "",
        &[w.port],
        "[[pipelines.sources]]\ntype = \"host_metrics\"\ninterval_secs = 1\n",
    );
    let _sink = w.sink();
    let _agent = w.agent_as_configured();
    let out = wait_for_output(&w.output_dir(), 2, WAIT);
    let sample: serde_json::Value = serde_json::from_str(&out[0].payload).expect("a JSON sample");
    assert!(
        sample["memory"]["total_bytes"].as_u64().unwrap_or(0) > 0,
        "{sample}"
    );
    assert!(sample["cpu_percent"].is_number(), "{sample}");
    assert!(
        sample["disks"].as_array().is_some_and(|d| !d.is_empty()),
        "{sample}"
    );
    assert!(sample["network"].is_array(), "{sample}");
}
