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
    mosquitto_with(w, "allow_anonymous true\n")
}

/// Like [`mosquitto`], with `listener_conf` for the listener (TLS, authentication).
fn mosquitto_with(w: &World, listener_conf: &str) -> Option<Broker> {
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
            "per_listener_settings true\nlistener {port} 127.0.0.1\n{listener_conf}persistence false\nmax_queued_messages 0\nmax_inflight_messages 20\nuser root\nlog_type all\n"
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
    publish_with(port, topic, qos, file, &[])
}

/// Like [`publish`], with extra `mosquitto_pub` arguments (TLS, credentials).
fn publish_with(port: u16, topic: &str, qos: u8, file: &Path, extra: &[&str]) -> Child {
    Command::new("mosquitto_pub")
        .args(extra)
        .args([
            "-h",
            "localhost",
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
    agent_config_with(w, broker, qos, "reconnect_max_ms = 500\n");
}

/// The agent's MQTT source with extra keys (`tls`, credentials, back-off).
fn agent_config_with(w: &World, broker: u16, qos: u8, extra: &str) {
    let source = format!(
        "[[pipelines.sources]]\ntype = \"mqtt\"\nbroker = \"localhost:{broker}\"\nclient_id = \"dw-test-agent\"\ntopics = [{{ filter = \"dw/test/#\", qos = {qos} }}]\nreconnect_min_ms = 50\n{extra}"
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
            print_log_tails(w.dir.path(), &["agent.log", "mosquitto.log"], 25);
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
        if dups > 0 {
            let out = read_output(&w.output_dir());
            let mut seen = HashMap::new();
            for l in &out {
                if let Some((q, s)) = seen.insert(line_no(&l.payload), (l.queue.clone(), l.seq)) {
                    eprintln!(
                        "dup line {}: first queue {q} seq {s}, again queue {} seq {}",
                        line_no(&l.payload),
                        l.queue,
                        l.seq
                    );
                    break;
                }
            }
            let log = std::fs::read_to_string(w.path("agent.log")).unwrap_or_default();
            for l in log.lines().filter(|l| {
                l.contains("queue id")
                    || l.contains("counters=")
                    || l.contains("session_present=false")
                    || l.contains("mqtt connected")
            }) {
                eprintln!("{l}");
            }
            let mlog = std::fs::read_to_string(w.path("mosquitto.log")).unwrap_or_default();
            for l in mlog
                .lines()
                .filter(|l| l.contains("dw-test-agent") && !l.contains("PUB"))
            {
                eprintln!("mosquitto: {l}");
            }
        }
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

/// Waits until the agent's log contains `text` (or panics with the log).
fn wait_log(w: &World, text: &str) -> String {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(w.path("agent.log")).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no `{text}` in the agent log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mosquitto_over_tls_with_our_ca_and_a_foreign_ca_refused() {
    let w = World::new();
    let c = w.certs();
    dw(&[
        "certs",
        "issue",
        "--dir",
        c.to_str().unwrap(),
        "--name",
        "broker",
        "--sink",
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
    ]);
    let tls = format!(
        "cafile {0}/ca.pem\ncertfile {0}/broker.pem\nkeyfile {0}/broker.key\nallow_anonymous true\n",
        c.display()
    );
    let Some(broker) = mosquitto_with(&w, &tls) else {
        return;
    };
    let _sink = w.sink();
    // A CA from elsewhere: the broker's certificate is refused, with a clear log line.
    let other = w.path("other-ca");
    dw(&["certs", "init", "--dir", other.to_str().unwrap()]);
    agent_config_with(&w, broker.port, 1, "tls = { ca = \"other-ca/ca.pem\" }\n");
    let mut agent = w.agent_as_configured();
    let log = wait_log(&w, "mqtt connection failed");
    assert!(
        log.contains("UnknownIssuer") || log.contains("certificate"),
        "{log}"
    );
    assert!(!log.contains("mqtt connected"));
    sigterm(&mut agent);
    // Our CA: messages flow over TLS.
    agent_config_with(&w, broker.port, 1, "tls = { ca = \"certs/ca.pem\" }\n");
    let _agent = w.agent_as_configured();
    wait_connected(&w, 1);
    let ca = format!("{}/ca.pem", c.display());
    let file = message_file(&w, 0, 100);
    assert!(
        publish_with(broker.port, "dw/test/tls", 1, &file, &["--cafile", &ca])
            .wait()
            .unwrap()
            .success()
    );
    let out = wait_for_output(&w.output_dir(), 100, Duration::from_secs(30));
    assert_exactly_once(&out, 100);
}

#[test]
fn mosquitto_wrong_credentials_give_a_clear_error_not_a_retry_storm() {
    let w = World::new();
    let pw = w.path("passwords");
    let st = Command::new("mosquitto_passwd")
        .args(["-b", "-c", pw.to_str().unwrap(), "edge", "right-password"])
        .status();
    if st.is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "mosquitto_passwd missing under CI=true"
        );
        eprintln!("SKIPPING: mosquitto_passwd not installed");
        return;
    }
    let auth = format!("allow_anonymous false\npassword_file {}\n", pw.display());
    let Some(broker) = mosquitto_with(&w, &auth) else {
        return;
    };
    let _sink = w.sink();
    agent_config_with(
        &w,
        broker.port,
        1,
        "username = \"edge\"\npassword = \"wrong\"\nreconnect_max_ms = 2000\n",
    );
    let mut agent = w.agent_as_configured();
    wait_log(&w, "mqtt broker refused our credentials");
    std::thread::sleep(Duration::from_secs(4));
    let log = std::fs::read_to_string(w.path("agent.log")).unwrap();
    let attempts = log.matches("refused our credentials").count();
    assert!(
        (1..=4).contains(&attempts),
        "{attempts} attempts in about 4 s:\n{log}"
    );
    sigterm(&mut agent);
    // The right password works (so the refusal above was about the password).
    agent_config_with(
        &w,
        broker.port,
        1,
        "username = \"edge\"\npassword = \"right-password\"\n",
    );
    let _agent = w.agent_as_configured();
    wait_connected(&w, 1);
    let file = message_file(&w, 0, 10);
    assert!(
        publish_with(
            broker.port,
            "dw/test/auth",
            1,
            &file,
            &["-u", "edge", "-P", "right-password"]
        )
        .wait()
        .unwrap()
        .success()
    );
    let out = wait_for_output(&w.output_dir(), 10, Duration::from_secs(30));
    assert_exactly_once(&out, 10);
}
