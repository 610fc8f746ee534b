//! MQTT source against real brokers, each test twice: a real **Mosquitto** process (what CI
//! runs; skipped with a note where it is not installed, a failure under `CI=true`) and the
//! in-process **rumqttd** broker (so `cargo test` covers MQTT on a fresh machine). One
//! broker per test on a free port; messages come from a real MQTT client (rumqttc) that
//! waits for the broker's acknowledgements.
//!
//! What rumqttd does differently, and so what its variants assert differently:
//! - It redelivers unacknowledged messages after a reconnect as *new* messages (DUP clear,
//!   fresh packet ids: `rumqttd/src/router/routing.rs` builds them with `dup: false`), where
//!   MQTT 3.1.1 §4.4 requires the same id with DUP set. No client can recognise those as
//!   redeliveries, so its QoS 2 variant asserts no loss and duplicates bounded by its
//!   in-flight window (100, fixed in rumqttd), not exactly once.
//! - It closes the connection on wrong credentials without a CONNACK, so the agent cannot
//!   know it was the credentials; it says the broker closed the connection before accepting
//!   it and names credentials as the likely cause.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Event, Incoming, MqttOptions, Outgoing, QoS, TlsConfiguration, Transport};

use crate::util::*;

/// Which broker a test runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Mosquitto,
    Rumqttd,
}

/// The broker's in-flight window for messages to the agent (QoS 1/2 sent, not yet
/// acknowledged) as configured: Mosquitto's `max_inflight_messages`, rumqttd's fixed 100.
fn window(kind: Kind) -> usize {
    match kind {
        Kind::Mosquitto => 20,
        Kind::Rumqttd => 100,
    }
}

/// Most messages the agent can hold unacknowledged per connection, so most duplicates
/// one SIGKILL can cause (committed, acknowledgement not yet on the wire). rumqttd keeps
/// its window. Mosquitto 2.0.11 does not once messages queue up for a slow subscriber:
/// one PUBACK releases a whole window more (its log showed PUBACK for mid 1 followed by
/// mids 21 to 40, 39 unacknowledged); then the agent's own bound applies: a commit group
/// (1,024) plus the acknowledgements waiting in the client's request channel (1,024).
fn unacked_bound(kind: Kind) -> usize {
    match kind {
        Kind::Mosquitto => 2048,
        Kind::Rumqttd => window(kind),
    }
}

/// A running broker; a Mosquitto process is killed when dropped (an in-process rumqttd
/// cannot be stopped and lives until the test binary exits, on its own port).
struct Broker {
    child: Option<Child>,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a broker's listener asks for.
#[derive(Default)]
struct Listener {
    /// Directory with `broker.pem`/`broker.key` (issued by our CA): TLS.
    tls: Option<PathBuf>,
    /// The one user allowed in (anonymous refused).
    user: Option<(&'static str, &'static str)>,
}

/// Starts a broker of `kind` on a free port; `None` (with a note) where Mosquitto is not
/// installed outside CI.
fn broker(w: &World, kind: Kind, l: &Listener) -> Option<Broker> {
    let port = tcp_port();
    let child = match kind {
        Kind::Mosquitto => Some(mosquitto(w, port, l)?),
        Kind::Rumqttd => {
            rumqttd(port, l);
            None
        }
    };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{kind:?} did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Broker { child, port })
}

fn mosquitto(w: &World, port: u16, l: &Listener) -> Option<Child> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(bin) = bin else {
        assert!(
            std::env::var("CI").is_err(),
            "mosquitto is not installed under CI=true: .ci/run installs it"
        );
        eprintln!("SKIPPING: mosquitto not installed (apt-get install mosquitto)");
        return None;
    };
    let mut listener = String::new();
    if let Some(c) = &l.tls {
        listener += &format!(
            "cafile {0}/ca.pem\ncertfile {0}/broker.pem\nkeyfile {0}/broker.key\n",
            c.display()
        );
    }
    match l.user {
        Some((user, password)) => {
            let pw = w.path("mosquitto.passwd");
            let st = Command::new("mosquitto_passwd")
                .args(["-b", "-c", pw.to_str().unwrap(), user, password])
                .status()
                .expect("mosquitto_passwd (package mosquitto)");
            assert!(st.success());
            listener += &format!("allow_anonymous false\npassword_file {}\n", pw.display());
        }
        None => listener += "allow_anonymous true\n",
    }
    let conf = w.path("mosquitto.conf");
    // A large queue for offline persistent sessions (the default 1000 would drop). Not 0
    // ("unlimited"): with max_queued_messages 0, Mosquitto 2.0 skips its in-flight check
    // and sends subscribers everything unacknowledged at once (seen: 875 in flight).
    std::fs::write(
        &conf,
        format!(
            "max_queued_messages 10000000\nmax_inflight_messages {}\nper_listener_settings true\nlistener {port} 127.0.0.1\n{listener}persistence false\nuser root\nlog_type all\n",
            window(Kind::Mosquitto)
        ),
    )
    .unwrap();
    let log = std::fs::File::create(w.path("mosquitto.log")).unwrap();
    Some(
        Command::new(bin)
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto"),
    )
}

/// Starts rumqttd in this process (it has no builder: its `Config` is deserialized).
fn rumqttd(port: u16, l: &Listener) {
    let mut text = format!(
        r#"id = 0
[router]
max_connections = 100
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1

[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = {}
dynamic_filters = true
"#,
        window(Kind::Rumqttd)
    );
    if let Some((user, password)) = l.user {
        text += &format!("auth = {{ {user} = \"{password}\" }}\n");
    }
    if let Some(c) = &l.tls {
        text += &format!(
            "[v4.1.tls]\ncertpath = \"{0}/broker.pem\"\nkeypath = \"{0}/broker.key\"\n",
            c.display()
        );
    }
    let cfg: ::rumqttd::Config = toml::from_str(&text).expect("rumqttd config");
    std::thread::spawn(move || {
        let mut broker = ::rumqttd::Broker::new(cfg);
        if let Err(e) = broker.start() {
            eprintln!("rumqttd stopped: {e}");
        }
    });
}

/// How a publisher reaches the broker.
#[derive(Default, Clone)]
struct Client {
    /// CA file for TLS.
    ca: Option<PathBuf>,
    credentials: Option<(&'static str, &'static str)>,
}

/// What a publisher sends: messages `line-{i:08}-mqtt` plus `pad` bytes, `i` in `0..n`.
#[derive(Clone, Copy)]
struct Messages {
    topic: &'static str,
    qos: u8,
    n: usize,
    pad: usize,
    /// Messages per second; 0: as fast as the broker takes them.
    per_sec: u64,
}

impl Messages {
    fn new(topic: &'static str, qos: u8, n: usize) -> Messages {
        Messages {
            topic,
            qos,
            n,
            pad: 0,
            per_sec: 0,
        }
    }
}

/// Publishes `m` through a real MQTT client, in the background; the handle returns once
/// the broker acknowledged every message (PUBACK / PUBCOMP; for QoS 0, once sent).
fn publish(port: u16, m: Messages, c: &Client) -> std::thread::JoinHandle<Result<(), String>> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id = format!(
        "publisher-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut o = MqttOptions::new(id, "localhost", port);
    // In flight as libmosquitto clients (mosquitto_pub): Mosquitto takes 20 incoming
    // QoS 1/2 messages at a time from a client.
    o.set_keep_alive(Duration::from_secs(10))
        .set_clean_session(true)
        .set_inflight(20);
    if let Some(ca) = &c.ca {
        let tls = dataweaver::tls::plain_client_config(
            &dataweaver::tls::TlsMaterial::load(ca, None).expect("CA"),
        )
        .expect("client TLS");
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    if let Some((u, p)) = c.credentials {
        o.set_credentials(u, p);
    }
    let (client, mut conn) = rumqttc::Client::new(o, 100);
    let Messages {
        topic,
        qos,
        n,
        pad,
        per_sec,
    } = m;
    let q = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let sender = client.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..n {
            let payload = format!("line-{i:08}-mqtt{}", "x".repeat(pad));
            if sender.publish(topic, q, false, payload).is_err() {
                return;
            }
            if per_sec > 0 && i % 100 == 99 {
                let due = Duration::from_micros(i as u64 * 1_000_000 / per_sec);
                std::thread::sleep(due.saturating_sub(start.elapsed()));
            }
        }
    });
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut done = 0;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Incoming::PubAck(_))) if q == QoS::AtLeastOnce => done += 1,
                Ok(Event::Incoming(Incoming::PubComp(_))) if q == QoS::ExactlyOnce => done += 1,
                Ok(Event::Outgoing(Outgoing::Publish(_))) if q == QoS::AtMostOnce => done += 1,
                Ok(_) => {}
                Err(e) => {
                    // rumqttc reconnects and resends on the next iteration.
                    eprintln!("publisher: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if done == n {
                let _ = client.disconnect();
                return Ok(());
            }
            if Instant::now() > deadline {
                break;
            }
        }
        Err(format!("publisher: {done} of {n} acknowledged"))
    })
}

/// Publishes and waits for the broker to acknowledge everything.
fn publish_all(port: u16, m: Messages, c: &Client) {
    publish(port, m, c)
        .join()
        .expect("publisher thread")
        .expect("publisher");
}

/// The agent's MQTT source with extra keys (`tls`, credentials, back-off) and extra
/// `[queue]` keys.
fn agent_config(w: &World, broker: u16, qos: u8, extra: &str, queue: &str) {
    let max = if extra.contains("reconnect_max_ms") {
        ""
    } else {
        "reconnect_max_ms = 500\n"
    };
    let source = format!(
        "[[pipelines.sources]]\ntype = \"mqtt\"\nbroker = \"localhost:{broker}\"\nclient_id = \"dw-test-agent\"\ntopics = [{{ filter = \"dw/test/#\", qos = {qos} }}]\nreconnect_min_ms = 50\n{max}{extra}"
    );
    w.agent_config_sources(queue, "", &[w.port], &source);
}

/// Waits until the agent's subscription is in place (its first CONNACK logged).
fn wait_connected(w: &World) {
    w.wait_log("agent.log", "mqtt connected");
    // The SUBSCRIBE follows the CONNACK.
    std::thread::sleep(Duration::from_millis(300));
}

/// Counts of each line number at the sink.
fn counts(lines: &[OutLine]) -> HashMap<usize, usize> {
    let mut m = HashMap::new();
    for l in lines {
        *m.entry(line_no(&l.payload)).or_insert(0) += 1;
    }
    m
}

/// 50,000 messages published while the agent is killed with SIGKILL 5 times: all arrive;
/// duplicates (none for QoS 2 on a broker that follows the spec) are counted and bounded.
fn kill_while_publishing(kind: Kind, qos: u8) {
    let w = World::new();
    let Some(broker) = broker(&w, kind, &Listener::default()) else {
        return;
    };
    let _sink = w.sink();
    agent_config(&w, broker.port, qos, "", "");
    let mut agent = w.agent_as_configured();
    wait_connected(&w);
    let n = 50_000;
    // Paced so that every kill hits a running stream (asserted below).
    let m = Messages {
        per_sec: 8000,
        ..Messages::new("dw/test/a", qos, n)
    };
    let publisher = publish(broker.port, m, &Client::default());
    let mut rng = fastrand::Rng::new();
    for kill in 1..=5 {
        std::thread::sleep(Duration::from_millis(rng.u64(300..900)));
        agent.kill9();
        eprintln!(
            "kill {kill}: {} lines at the sink so far",
            read_output(&w.output_dir()).len()
        );
        assert!(
            !publisher.is_finished(),
            "kill {kill} came after the stream"
        );
        agent = w.agent_as_configured();
    }
    publisher
        .join()
        .expect("publisher thread")
        .expect("publisher");
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
    eprintln!("{kind:?} QoS {qos}: {n} messages through 5 SIGKILLs; {dups} duplicates at the sink");
    if qos == 2 && kind == Kind::Mosquitto {
        if dups > 0 {
            print_log_tails(w.dir.path(), &["agent.log"], 40);
            // Same seq twice: the sink did not de-duplicate a resend; different seqs (or
            // queue ids): the agent queued the message twice.
            let all = read_output(&w.output_dir());
            for (no, k) in &c {
                if *k > 1 {
                    for l in all.iter().filter(|l| line_no(&l.payload) == *no) {
                        eprintln!("duplicate line {no}: seq {} queue {}", l.seq, l.queue);
                    }
                }
            }
            mosquitto_qos2_summary(&w.dir.path().join("mosquitto.log"), "dw-test-agent", n);
            // For a post-mortem: DATAWEAVER_KEEP_FAILED=DIR keeps the run's logs and data.
            if let Some(keep) = std::env::var_os("DATAWEAVER_KEEP_FAILED") {
                let _ = std::process::Command::new("cp")
                    .arg("-r")
                    .arg(w.dir.path())
                    .arg(&keep)
                    .status();
            }
        }
        assert_eq!(dups, 0, "QoS 2 is exactly once into the queue");
    } else {
        // What was committed but not yet acknowledged when the agent died comes again.
        let bound = 5 * unacked_bound(kind);
        assert!(dups <= bound, "{dups} duplicates, more than {bound}");
    }
    agent.kill9();
}

/// What Mosquitto's log (`log_type all`) says about QoS 2 deliveries to `client`: more
/// first sends (d0) than the `n` messages means the broker sent copies; resends (d1) of an
/// id after a PUBREL for it are its reconnect reset turning a pending PUBREL back into a
/// publish (the agent must recognise those). Ids are not reused within the test's 50,000
/// messages.
fn mosquitto_qos2_summary(log: &std::path::Path, client: &str, n: usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let to = format!("Sending PUBLISH to {client} (");
    let mid = |l: &str| -> Option<u32> {
        let i = l.find(", m")? + 3;
        l[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let (mut d0, mut d1, mut d1_after_pubrel) = (0usize, 0usize, 0usize);
    let mut pubrel_sent = std::collections::HashSet::new();
    for l in text.lines() {
        if let Some(rest) = l.split(&to).nth(1) {
            if rest.starts_with("d0") {
                d0 += 1;
            } else {
                d1 += 1;
                if mid(l).is_some_and(|m| pubrel_sent.contains(&m)) {
                    d1_after_pubrel += 1;
                }
            }
        } else if l.contains(&format!("Sending PUBREL to {client}")) {
            // "(m12)" in 2.0, "(Mid: 12)" before.
            let digits = |r: &str| -> Option<u32> {
                r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            };
            if let Some(m) = l
                .rsplit_once("(m")
                .or_else(|| l.rsplit_once("Mid: "))
                .and_then(|(_, r)| digits(r))
            {
                pubrel_sent.insert(m);
            }
        }
    }
    let connects = text.matches(&format!("as {client} (")).count();
    let unknown = text.matches("unknown packet identifier").count();
    eprintln!(
        "mosquitto: {d0} first sends (d0) for {n} messages, {d1} resends (d1), \
         {d1_after_pubrel} resends of an id after a PUBREL for it, {connects} connects of \
         {client}, {unknown} 'unknown packet identifier' warnings"
    );
}

/// Messages published while the agent is down (persistent session) arrive after restart.
fn offline(kind: Kind) {
    let w = World::new();
    let Some(broker) = broker(&w, kind, &Listener::default()) else {
        return;
    };
    let _sink = w.sink();
    agent_config(&w, broker.port, 1, "", "");
    let mut agent = w.agent_as_configured();
    wait_connected(&w);
    sigterm(&mut agent);
    let n = 2000;
    publish_all(
        broker.port,
        Messages::new("dw/test/offline", 1, n),
        &Client::default(),
    );
    let _agent = w.agent_as_configured();
    let out = wait_for_output(&w.output_dir(), n, Duration::from_secs(60));
    assert_exactly_once(&out, n);
    assert!(
        out.iter().all(|l| l.topic == "dw/test/offline"),
        "topic taken from MQTT"
    );
}

/// TLS to the broker with our CA; a broker certificate from another CA is refused.
fn tls(kind: Kind) {
    let w = World::new();
    let c = w.certs();
    w.issue(
        "broker",
        &["--sink", "--host", "localhost", "--host", "127.0.0.1"],
    );
    let l = Listener {
        tls: Some(c.clone()),
        user: None,
    };
    let Some(broker) = broker(&w, kind, &l) else {
        return;
    };
    let _sink = w.sink();
    // A CA from elsewhere: the broker's certificate is refused, with a clear log line.
    let other = w.path("other-ca");
    dw(&["certs", "init", "--dir", other.to_str().unwrap()]);
    let foreign = "tls = { ca = \"other-ca/ca.pem\" }\n";
    agent_config(&w, broker.port, 1, foreign, "");
    let mut agent = w.agent_as_configured();
    let log = w.wait_log("agent.log", "mqtt connection failed");
    assert!(
        log.contains("UnknownIssuer") || log.contains("certificate"),
        "{log}"
    );
    assert!(!log.contains("mqtt connected"));
    sigterm(&mut agent);
    // Our CA: messages flow over TLS.
    agent_config(&w, broker.port, 1, "tls = { ca = \"certs/ca.pem\" }\n", "");
    let _agent = w.agent_as_configured();
    wait_connected(&w);
    let client = Client {
        ca: Some(c.join("ca.pem")),
        credentials: None,
    };
    publish_all(broker.port, Messages::new("dw/test/tls", 1, 100), &client);
    let out = wait_for_output(&w.output_dir(), 100, Duration::from_secs(30));
    assert_exactly_once(&out, 100);
}

/// Wrong credentials: a clear error and a slow retry; the right ones work.
fn wrong_credentials(kind: Kind) {
    let w = World::new();
    let l = Listener {
        tls: None,
        user: Some(("edge", "right-password")),
    };
    let Some(broker) = broker(&w, kind, &l) else {
        return;
    };
    let _sink = w.sink();
    let wrong = "username = \"edge\"\npassword = \"wrong\"\nreconnect_max_ms = 2000\n";
    agent_config(&w, broker.port, 1, wrong, "");
    let mut agent = w.agent_as_configured();
    // Mosquitto answers CONNACK "bad user name or password"; rumqttd just closes.
    let clear = match kind {
        Kind::Mosquitto => "mqtt broker refused our credentials",
        Kind::Rumqttd => "mqtt broker closed the connection before accepting it",
    };
    w.wait_log("agent.log", clear);
    std::thread::sleep(Duration::from_secs(4));
    let log = std::fs::read_to_string(w.path("agent.log")).unwrap();
    let attempts = log.matches(clear).count();
    assert!(
        (1..=4).contains(&attempts),
        "{attempts} attempts in about 4 s:\n{log}"
    );
    assert!(log.contains("username"), "names what to check:\n{log}");
    sigterm(&mut agent);
    // The right password works (so the refusal above was about the password).
    let right = "username = \"edge\"\npassword = \"right-password\"\n";
    agent_config(&w, broker.port, 1, right, "");
    let _agent = w.agent_as_configured();
    wait_connected(&w);
    let client = Client {
        ca: None,
        credentials: Some(("edge", "right-password")),
    };
    publish_all(broker.port, Messages::new("dw/test/auth", 1, 10), &client);
    let out = wait_for_output(&w.output_dir(), 10, Duration::from_secs(30));
    assert_exactly_once(&out, 10);
}

/// `block` with the sink down: once the queue is full the agent stops acknowledging, so
/// the broker holds the rest (what the agent holds unacknowledged is at most the broker's
/// in-flight window); once the sink is back, everything arrives exactly once.
fn back_pressure(kind: Kind) {
    let w = World::new();
    let Some(broker) = broker(&w, kind, &Listener::default()) else {
        return;
    };
    // No sink yet: the queue (200 kB) fills with the first ~1,000 messages of 5,000.
    agent_config(&w, broker.port, 1, "", "max_bytes = 200000");
    let mut agent = w.agent_as_configured();
    wait_connected(&w);
    let n = 5000;
    let m = Messages {
        pad: 150,
        ..Messages::new("dw/test/bp", 1, n)
    };
    publish_all(broker.port, m, &Client::default());
    // Let the agent take what it can, then read its counters as it stops.
    std::thread::sleep(Duration::from_secs(3));
    sigterm(&mut agent);
    let log = w.path("agent.log");
    let received = counter_in_log(&log, "app/mqtt.received");
    let acked = counter_in_log(&log, "app/mqtt.acked");
    eprintln!("{kind:?}: queue full after {acked} acknowledged, {received} received");
    assert!(
        acked > 0 && acked < n as u64 / 2,
        "acknowledging must stop at the queue limit: {acked} of {n} acknowledged"
    );
    let held = received - acked;
    assert!(
        held <= unacked_bound(kind) as u64 && received < n as u64,
        "{held} messages held unacknowledged (bound {}), {received} of {n} received",
        unacked_bound(kind)
    );
    // Queued = acknowledged, plus at most a commit whose acks the stop cut off.
    let depth = w.queue_stats()["depth"];
    assert!(
        (acked..=received).contains(&depth),
        "queue depth {depth}, acknowledged {acked}, received {received}"
    );
    let _sink = w.sink();
    let _agent = w.agent_as_configured();
    let out = wait_for_output(&w.output_dir(), n, Duration::from_secs(120));
    assert_exactly_once(&out, n);
}

/// One `#[test]` per broker for each scenario: `mqtt::mosquitto::NAME`, `mqtt::rumqttd::NAME`.
macro_rules! on_each_broker {
    ($($name:ident => $body:expr;)*) => {
        mod mosquitto {
            $(#[test] fn $name() { let f: fn(super::Kind) = $body; f(super::Kind::Mosquitto) })*
        }
        mod rumqttd {
            $(#[test] fn $name() { let f: fn(super::Kind) = $body; f(super::Kind::Rumqttd) })*
        }
    };
}

on_each_broker! {
    qos1_survives_agent_sigkills_without_loss => |k| super::kill_while_publishing(k, 1);
    qos2_survives_agent_sigkills => |k| super::kill_while_publishing(k, 2);
    messages_published_while_the_agent_is_down_arrive => super::offline;
    tls_with_our_ca_and_a_foreign_ca_refused => super::tls;
    wrong_credentials_give_a_clear_error_not_a_retry_storm => super::wrong_credentials;
    queue_full_stops_acknowledging_and_the_broker_holds_the_rest => super::back_pressure;
}
