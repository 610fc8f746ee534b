//! MQTT source against a real Mosquitto broker (started per test on a free port):
//! acknowledge after commit, SIGKILLs of the agent, QoS 1 and QoS 2, persistent sessions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// A Mosquitto process, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mosquitto` on a free port; `None` (with a note) where it is not installed,
/// a failure under `CI=true`.
fn mosquitto(w: &World) -> Option<Broker> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(bin) = bin else {
        assert!(
            std::env::var("CI").is_err(),
            "mosquitto is not installed under CI=true: .ci/run installs it"
        );
        eprintln!(
            "SKIPPING: mosquitto not installed (apt-get install mosquitto mosquitto-clients)"
        );
        return None;
    };
    let port = tcp_port();
    let conf = w.path("mosquitto.conf");
    // Unlimited queue for offline persistent sessions (the default 1000 would drop).
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 20\nuser root\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(w.path("mosquitto.log")).unwrap();
    let child = Command::new(bin)
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start mosquitto");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mosquitto did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Broker { child, port })
}

/// `n` numbered lines for `mosquitto_pub -l` (one message per line).
fn message_file(w: &World, from: usize, n: usize) -> PathBuf {
    let p = w.path(&format!("messages-{from}.txt"));
    let text: String = (from..from + n)
        .map(|i| format!("line-{i:08}-mqtt\n"))
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// Publishes every line of `file` to `topic` with `qos` (a real client, in the background).
fn publish(port: u16, topic: &str, qos: u8, file: &Path) -> Child {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
        ])
        .arg(qos.to_string())
        .args(["-l", "-i", &format!("publisher-{}", std::process::id())])
        .stdin(std::fs::File::open(file).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)")
}

fn agent_config(w: &World, broker: u16, qos: u8) {
    let source = format!(
        "[[pipelines.sources]]\ntype = \"mqtt\"\nbroker = \"127.0.0.1:{broker}\"\nclient_id = \"dw-test-agent\"\ntopics = [{{ filter = \"dw/test/#\", qos = {qos} }}]\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n"
    );
    w.agent_config_sources("", "", &[w.port], &source);
}

/// Waits until the agent's subscription is in place (its first CONNACK logged).
fn wait_connected(w: &World, times: usize) {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(w.path("agent.log")).unwrap_or_default();
        if log.matches("mqtt connected").count() >= times {
            // The SUBSCRIBE follows the CONNACK.
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agent never connected to the broker:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counts of each line number at the sink.
fn counts(lines: &[OutLine]) -> HashMap<usize, usize> {
    let mut m = HashMap::new();
    for l in lines {
        *m.entry(line_no(&l.payload)).or_insert(0) += 1;
    }
    m
}

fn kill_while_publishing(qos: u8) {
    let w = World::new();
    let Some(broker) = mosquitto(&w) else { return };
    let _sink = w.sink();
    agent_config(&w, broker.port, qos);
    let mut agent = w.agent_as_configured();
    wait_connected(&w, 1);
    let n = 50_000;
    let mut publisher = publish(broker.port, "dw/test/a", qos, &message_file(&w, 0, n));
    let mut rng = fastrand::Rng::new();
    for kill in 1..=5 {
        std::thread::sleep(Duration::from_millis(rng.u64(300..900)));
        agent.kill9();
        eprintln!(
            "kill {kill}: {} lines at the sink so far",
            read_output(&w.output_dir()).len()
        );
        agent = w.agent_as_configured();
    }
    assert!(publisher.wait().unwrap().success(), "publisher failed");
    // Everything arrives; then look for duplicates.
    let start = Instant::now();
    let c = loop {
        let c = counts(&read_output(&w.output_dir()));
        if c.len() == n {
            std::thread::sleep(Duration::from_secs(1));
            break counts(&read_output(&w.output_dir()));
        }
        if start.elapsed() > Duration::from_secs(120) {
            let missing: Vec<usize> = (0..n).filter(|i| !c.contains_key(i)).take(10).collect();
            panic!(
                "{} of {n} distinct messages arrived; first missing {missing:?}",
                c.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(c.len(), n, "none lost");
    let dups: usize = c.values().map(|v| v - 1).sum();
    eprintln!("QoS {qos}: {n} messages through 5 SIGKILLs; {dups} duplicates at the sink");
    if qos == 2 {
        assert_eq!(dups, 0, "QoS 2 is exactly once into the queue");
    } else {
        // At most the broker's in-flight window (20) plus our commit group per kill.
        assert!(dups <= 5 * 2048, "{dups} duplicates");
    }
    agent.kill9();
}

#[test]
fn mosquitto_qos1_survives_agent_sigkills_without_loss() {
    kill_while_publishing(1);
}

#[test]
fn mosquitto_qos2_survives_agent_sigkills_exactly_once() {
    kill_while_publishing(2);
}

#[test]
fn mosquitto_messages_published_while_the_agent_is_down_arrive() {
    let w = World::new();
    let Some(broker) = mosquitto(&w) else { return };
    let _sink = w.sink();
    agent_config(&w, broker.port, 1);
    let mut agent = w.agent_as_configured();
    wait_connected(&w, 1);
    sigterm(&mut agent);
    let n = 2000;
    assert!(
        publish(broker.port, "dw/test/offline", 1, &message_file(&w, 0, n))
            .wait()
            .unwrap()
            .success()
    );
    let _agent = w.agent_as_configured();
    let out = wait_for_output(&w.output_dir(), n, Duration::from_secs(60));
    assert_exactly_once(&out, n);
    assert!(
        out.iter().all(|l| l.topic == "dw/test/offline"),
        "topic taken from MQTT"
    );
}
