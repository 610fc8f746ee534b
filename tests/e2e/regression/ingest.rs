//! HTTP ingest, codecs, drop policy, config ranges (issue 12: 5, 7, 21, 25).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::validate;
use crate::util::*;

/// `{"msg":"line-…"}` lines numbered `from..from + n`, about 40 bytes each.
fn ndjson(from: usize, n: usize) -> Vec<u8> {
    (from..from + n)
        .map(|i| format!("{{\"msg\":\"line-{i:08}-http\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A `[[pipelines.sources]]` block: HTTP on `port` with `codec = "json"`, then `extra`.
fn http_source(port: u16, extra: &str) -> String {
    format!(
        "[[pipelines.sources]]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\ncodec = \"json\"\n{extra}\n"
    )
}

/// The JSON object at the end of an HTTP answer (`http_post` returns headers and body).
fn answer_json(text: &str) -> serde_json::Value {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"))
}

/// Issue 12, defect 5: under `when_full = "drop_newest"` the HTTP source answered
/// `200 {"accepted":10}` for records the queue had dropped. The answer must count what was
/// queued and what was dropped, and a request of which nothing was kept must not look like
/// a success (503 + `Retry-After`).
#[test]
fn http_drop_newest_answer_counts_dropped_records() {
    let w = World::new();
    let port = tcp_port();
    w.agent_config_sources(
        "max_bytes = 60000",
        "when_full = \"drop_newest\"",
        &[w.port],
        &http_source(port, ""),
    );
    let mut agent = w.agent_as_configured();
    let (mut accepted, mut dropped, mut all_dropped_answers) = (0u64, 0u64, 0);
    let mut sent = 0;
    // No sink: the queue fills, then drops.
    for _ in 0..60 {
        let (status, text) = http_post(port, "/ingest", &[], &ndjson(sent, 50));
        sent += 50;
        let a = answer_json(&text);
        let (ok, gone) = (a["accepted"].as_u64(), a["dropped"].as_u64());
        let (Some(ok), Some(gone)) = (ok, gone) else {
            panic!("answer must carry accepted and dropped counts: {text}");
        };
        assert_eq!(
            ok + gone,
            50,
            "every line is either queued or dropped: {text}"
        );
        if ok == 0 {
            assert_eq!(status, 503, "nothing kept must not be a 2xx: {text}");
            assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
            all_dropped_answers += 1;
        } else {
            assert_eq!(status, 200, "{text}");
        }
        accepted += ok;
        dropped += gone;
    }
    agent.kill9();
    assert!(dropped > 0, "the queue never filled ({accepted} accepted)");
    assert!(all_dropped_answers > 0, "no request was dropped whole");
    let stats = w.queue_stats();
    assert_eq!(
        stats["depth"], accepted,
        "the queue holds exactly what the answers called accepted"
    );
    assert_eq!(stats["dropped_newest"], dropped, "{stats:?}");
}

/// Starts `dataweaver agent` with its open files limited to `nofile` (soft and hard), as
/// a service manager or a small container would.
fn agent_with_nofile(w: &World, nofile: u64) -> Proc {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(w.path("agent.log"))
        .unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["agent", "--config", w.path("agent.toml").to_str().unwrap()])
        .env("DATAWEAVER_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Proc {
        child: cmd.spawn().expect("spawn dataweaver"),
    }
}

/// `GET path` with a read timeout, so a wedged server fails the test instead of hanging it.
fn get_within(port: u16, path: &str, timeout: Duration) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Issue 12, defect 21: HTTP ingest had no header or body read timeout and no connection
/// limit, so slow clients held one fd each until the agent ran out; then the admin endpoint
/// and file discovery stopped too. With 300 slow clients against an agent limited to 256
/// open files: the admin endpoint answers, a normal POST is served, every slow connection
/// is closed by the agent after the timeout, and a new file is still found and read.
#[test]
fn slow_http_clients_do_not_exhaust_the_agents_files() {
    let w = World::new();
    let (port, admin) = (tcp_port(), tcp_port());
    with_admin_and_files(
        &w,
        admin,
        &format!(
            "type = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\
             header_read_timeout_ms = 1500\nbody_read_timeout_ms = 1500\nmax_connections = 64"
        ),
    );
    let _sink = w.sink();
    let _agent = agent_up_with_256_files(&w, admin);
    let mut slow = Vec::new();
    for i in 0..300 {
        let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        s.set_nonblocking(true).unwrap();
        // A third send nothing, a third half a header, a third a header and half a body.
        let start: &[u8] = match i % 3 {
            0 => b"",
            1 => b"POST /ingest HTTP/1.1\r\nHost: x\r\n",
            _ => b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":",
        };
        let mut s = s;
        let _ = s.write(start);
        slow.push(s);
    }
    let opened = Instant::now();
    // Keep dripping one header byte a second into the half-header connections.
    let drip = |slow: &mut Vec<TcpStream>| {
        for (i, s) in slow.iter_mut().enumerate() {
            if i % 3 == 1 {
                let _ = s.write(b"X");
            }
        }
    };
    drip(&mut slow);
    assert_eq!(
        get_within(admin, "/health", Duration::from_secs(5)),
        Some(200),
        "the admin endpoint answers while slow clients are connected"
    );
    let mut lines = LineWriter::new(&w.path("input/app.log"), 60);
    lines.write(20);
    // A well-behaved client is served within a few timeouts (it may be told to retry
    // while the slow ones hold every slot).
    let mut served = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        drip(&mut slow);
        let (status, text) = post_within(port, &ndjson(0, 5), Duration::from_secs(3));
        if status == 200 {
            served = true;
            break;
        }
        assert!(
            status == 503 || status == 0,
            "unexpected answer {status}: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(served, "a normal POST was never served");
    // Every slow connection is closed by the agent (EOF or reset), none lingers.
    let mut open: Vec<usize> = (0..slow.len()).collect();
    while !open.is_empty() && opened.elapsed() < Duration::from_secs(20) {
        drip(&mut slow);
        open.retain(|&i| !closed_by_peer(&mut slow[i]));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        open.is_empty(),
        "{} of {} slow connections still open after {:?}",
        open.len(),
        slow.len(),
        opened.elapsed()
    );
    let out = wait_for_output(&w.output_dir(), 25, Duration::from_secs(20));
    assert_eq!(out.len(), 25, "the file's 20 lines and the 5 posted ones");
}

/// An agent config with its admin endpoint on `admin`, the `source` (TOML keys) and a
/// file source on `input/*.log` in pipeline `app`.
fn with_admin_and_files(w: &World, admin: u16, source: &str) {
    w.agent_config_raw(
        &[w.port],
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[pipelines]]\nname = \"app\"\n\n\
             [[pipelines.sources]]\n{source}\n\n\
             [[pipelines.sources]]\ntype = \"file\"\ninclude = [\"input/*.log\"]\npoll_interval_ms = 50\n"
        ),
    );
    std::fs::create_dir_all(w.path("input")).unwrap();
}

/// An agent limited to 256 open files, once its admin endpoint on `admin` answers.
fn agent_up_with_256_files(w: &World, admin: u16) -> Proc {
    let agent = agent_with_nofile(w, 256);
    let up = Instant::now();
    while get_within(admin, "/health", Duration::from_secs(2)) != Some(200) {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "the agent never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
}

/// Whether the server has closed `s` (EOF or reset); data is read and ignored.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// `POST /ingest` with a read timeout: `(status, answer)`, status 0 when none came.
fn post_within(port: u16, body: &[u8], timeout: Duration) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, "connect failed".into());
    };
    let _ = s.set_read_timeout(Some(timeout));
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    read_response(&mut s)
}

/// `text` with `kv` set in the table that starts at the line `header`: an existing line of
/// that key is replaced, else the key goes right under the header.
fn with_key(text: &str, header: &str, kv: &str) -> String {
    let leaf = kv.split(' ').next().unwrap_or(kv);
    let at = text
        .find(&format!("{header}\n"))
        .expect("table in the fixture")
        + header.len()
        + 1;
    let (head, table) = text.split_at(at);
    let end = table.find("\n[").unwrap_or(table.len());
    let (table, rest) = table.split_at(end);
    let kept: String = table
        .lines()
        .filter(|l| !l.starts_with(&format!("{leaf} =")))
        .map(|l| format!("{l}\n"))
        .collect();
    format!("{head}{kv}\n{kept}{rest}")
}

/// Issue 12, defect 25: `validate` accepted `commit_linger_ms = 9223372036854775807`, and
/// the queue writer then hung. Every duration and size key has a range, and a value outside
/// it is refused with the file, line and key.
#[test]
fn validate_refuses_out_of_range_durations_and_sizes() {
    let w = World::new();
    let port = tcp_port();
    let base = std::fs::read_to_string(w.agent_config_raw(
        &[w.port],
        &format!(
            "[admin]\nenabled = true\n\n[queue]\nmax_bytes = 100000\n\n[[pipelines]]\nname = \"app\"\n\n\
             [[pipelines.sources]]\ntype = \"file\"\ninclude = [\"input/*.log\"]\n\n\
             [[pipelines.sources]]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    ))
    .unwrap();
    let http = "[[pipelines.sources]]\ntype = \"http\"";
    let file = "[[pipelines.sources]]\ntype = \"file\"";
    // (table, key = value, the key path the error must name)
    let cases: &[(&str, &str, &str)] = &[
        (
            "[queue]",
            "commit_linger_ms = 9223372036854775807",
            "queue.commit_linger_ms",
        ),
        ("[queue]", "max_bytes = 10", "queue.max_bytes"),
        (
            "[queue]",
            "commit_max_bytes = 9223372036854775807",
            "queue.commit_max_bytes",
        ),
        (
            "[forward]",
            "idle_timeout_ms = 99999999999999",
            "forward.idle_timeout_ms",
        ),
        (
            "[forward]",
            "ack_timeout_ms = 99999999999999",
            "forward.ack_timeout_ms",
        ),
        (
            "[forward]",
            "reconnect_max_ms = 99999999999999",
            "forward.reconnect_max_ms",
        ),
        (
            "[admin]",
            "ready_sink_down_secs = 0",
            "admin.ready_sink_down_secs",
        ),
        (
            file,
            "poll_interval_ms = 9223372036854775807",
            "pipelines[0].sources[0].poll_interval_ms",
        ),
        (
            file,
            "read_chunk_bytes = 99999999999",
            "pipelines[0].sources[0].read_chunk_bytes",
        ),
        (
            http,
            "max_body_bytes = 99999999999999",
            "pipelines[0].sources[1].max_body_bytes",
        ),
        (
            http,
            "header_read_timeout_ms = 0",
            "pipelines[0].sources[1].header_read_timeout_ms",
        ),
        (
            http,
            "body_read_timeout_ms = 99999999999999",
            "pipelines[0].sources[1].body_read_timeout_ms",
        ),
        (
            http,
            "max_connections = 0",
            "pipelines[0].sources[1].max_connections",
        ),
    ];
    for (i, (table, kv, key)) in cases.iter().enumerate() {
        let named = w.path(&format!("range{i}.toml"));
        let text = with_key(&base, table, kv);
        std::fs::write(&named, &text).unwrap();
        let line = text.lines().position(|l| l == *kv).unwrap() + 1;
        let (ok, err) = validate(&named);
        assert!(!ok, "{kv}: accepted");
        assert!(
            err.contains(&format!("range{i}.toml:{line}:")),
            "{kv}: file and line: {err}"
        );
        assert!(err.contains(&format!("{key}: ")), "{kv}: key named: {err}");
        assert!(err.contains("between"), "{kv}: range given: {err}");
    }
    let (ok, err) = validate(&w.path("agent.toml"));
    assert!(ok, "the fixture itself is valid: {err}");
    let sink = std::fs::read_to_string(w.sink_config()).unwrap();
    for (kv, key) in [
        ("idle_timeout_ms = 99999999999999", "idle_timeout_ms"),
        (
            "max_file_bytes = 99999999999999999",
            "outputs[0].max_file_bytes",
        ),
    ] {
        let leaf = kv.split(' ').next().unwrap();
        let header = if leaf == "max_file_bytes" {
            "[[outputs]]"
        } else {
            ""
        };
        let text = if header.is_empty() {
            let old = sink.lines().find(|l| l.starts_with(leaf)).unwrap();
            sink.replacen(old, kv, 1)
        } else {
            with_key(&sink, header, kv)
        };
        let named = w.path("sinkbad.toml");
        std::fs::write(&named, text).unwrap();
        let (ok, err) = validate(&named);
        assert!(!ok, "{kv}: accepted");
        assert!(
            err.contains(&format!("{key}: ")) && err.contains("between"),
            "{kv}: {err}"
        );
    }
}

/// Issue 12, defect 25: under `codec = "json"` a record with invalid UTF-8 or 100,000
/// levels of nesting was accepted as valid JSON. Over HTTP the request is refused with the
/// reason (and where); through a line source the bad records are dead-lettered and the
/// good ones delivered.
#[test]
fn json_codec_refuses_invalid_utf8_and_deep_nesting() {
    let w = World::new();
    let port = tcp_port();
    w.agent_config_sources(
        "",
        "",
        &[w.port],
        &http_source(
            port,
            "\n[[pipelines.sources]]\ntype = \"file\"\ninclude = [\"input/*.log\"]\npoll_interval_ms = 50\ncodec = \"json\"",
        ),
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut bad_utf8 = b"{\"msg\":\"caf".to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8.extend_from_slice(b"\"}");
    let _sink = w.sink();
    let mut agent = w.agent_as_configured();
    let (status, text) = http_post(
        port,
        "/ingest",
        &[],
        &[b"{\"ok\":1}\n", &bad_utf8[..]].concat(),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("line 2: invalid UTF-8 at byte 11"), "{text}");
    let (status, text) = http_post(port, "/ingest", &[], deep.as_bytes());
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("line 1:") && text.contains("nested deeper than 128"),
        "{text}"
    );
    let ok_deep = format!("{}{}\n", "[".repeat(100), "]".repeat(100));
    let (status, text) = http_post(port, "/ingest", &[], ok_deep.as_bytes());
    assert_eq!(status, 200, "100 levels are fine: {text}");

    let mut file = Vec::new();
    file.extend_from_slice(b"{\"i\":0}\n");
    file.extend_from_slice(&bad_utf8);
    file.extend_from_slice(b"\n{\"i\":1}\n");
    file.extend_from_slice(deep.as_bytes());
    file.extend_from_slice(b"\n{\"i\":2}\n");
    std::fs::write(w.path("input/a.log"), &file).unwrap();
    let out = wait_for_output(&w.output_dir(), 4, Duration::from_secs(20));
    assert_eq!(out.len(), 4, "the good records: 1 posted, 3 from the file");
    agent.kill9();
    let dead = dead_letters(&w);
    let reasons: Vec<&str> = dead
        .iter()
        .filter_map(|d| d["dead_letter_reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("invalid UTF-8 at byte 11")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("nested deeper than 128")),
        "{reasons:?}"
    );
}

/// The tcp source had no connection limit (defect 21 was fixed for HTTP only): an agent
/// limited to 256 open files held all of 300 idle connections, one descriptor each. Now
/// at most `max_connections` are held, the rest are closed at once and counted, and the
/// admin endpoint, file discovery and later senders go on working.
#[test]
fn idle_tcp_clients_do_not_exhaust_the_agents_files() {
    let w = World::new();
    let (port, admin) = (tcp_port(), tcp_port());
    with_admin_and_files(
        &w,
        admin,
        &format!("type = \"tcp\"\nlisten = \"127.0.0.1:{port}\"\nmax_connections = 64"),
    );
    let _sink = w.sink();
    let mut agent = agent_up_with_256_files(&w, admin);
    let mut idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    // The agent closes what is over its limit; the 64 it took stay open.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = idle.len();
    while Instant::now() < deadline {
        open = idle
            .iter_mut()
            .map(closed_by_peer)
            .filter(|&closed| !closed)
            .count();
        if open <= 64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(open <= 64, "{open} of {} idle connections held", idle.len());
    assert_eq!(
        get_within(admin, "/health", Duration::from_secs(5)),
        Some(200),
        "the admin endpoint answers while idle clients are connected"
    );
    let mut lines = LineWriter::new(&w.path("input/app.log"), 60);
    lines.write(20);
    let out = wait_for_output(&w.output_dir(), 20, Duration::from_secs(20));
    assert_eq!(out.len(), 20, "a new file is found and read");
    // Once the idle clients leave, a sender gets in and its lines arrive. A connection the
    // agent refuses is closed at once, so lines go only on one still open after 500 ms
    // (until the agent has seen the idle ones go, it may still refuse).
    idle.clear();
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sent && Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_nonblocking(true).unwrap();
            std::thread::sleep(Duration::from_millis(500));
            if !closed_by_peer(&mut s) {
                s.set_nonblocking(false).unwrap();
                sent = s.write_all(b"tcp one\ntcp two\n").is_ok();
            }
        }
    }
    assert!(sent, "no connection was taken after the idle ones left");
    let out = wait_for_output(&w.output_dir(), 22, Duration::from_secs(20));
    assert_eq!(out.len(), 22, "the file's 20 lines and the 2 sent over TCP");
    sigterm(&mut agent);
    let refused = counter_in_log(&w.path("agent.log"), "app/tcp.connections_refused");
    assert!(refused >= 236, "refused connections are counted: {refused}");
}
