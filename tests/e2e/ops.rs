//! Running it for real (issue 7): the admin endpoint (`/metrics`, `/health`, `/ready`,
//! `/status`), `dataweaver status`, config reload on SIGHUP and over HTTP, JSON logs, and
//! SIGTERM under load.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// An agent config tailing `input/*.log` with its admin endpoint on `admin` and `extra`
/// top-level TOML (before the pipelines).
fn agent_with_admin(w: &World, admin: u16, extra: &str) {
    std::fs::create_dir_all(w.path("input")).unwrap();
    agent_config_pipelines(
        w,
        &format!(
            r#"[admin]
listen = "127.0.0.1:{admin}"
ready_sink_down_secs = 2
{extra}

[[pipelines]]
name = "app"

[[pipelines.sources]]
type = "file"
include = ["input/a*.log"]
poll_interval_ms = 20
"#
        ),
    );
}

/// A test world with a sink and an agent whose admin endpoint (and `extra` config, see
/// [`agent_with_admin`]) answers.
struct Running {
    w: World,
    admin: u16,
    _sink: Proc,
    agent: Proc,
}

fn start_with_admin(extra: &str) -> Running {
    let w = World::new();
    let admin = tcp_port();
    agent_with_admin(&w, admin, extra);
    let sink = w.sink();
    let agent = w.agent_as_configured();
    wait_http(admin, "/health", 200);
    Running {
        w,
        admin,
        _sink: sink,
        agent,
    }
}

/// Waits until `GET path` answers `status`; returns the body.
fn wait_http(port: u16, path: &str, status: u16) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            drop(s);
            let (code, body) = http_get(port, path);
            if code == status {
                return body;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{path} stayed {code}: {body}"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the sample `line_start` (metric name with labels) in exposition text.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs the checker `tool` (promtool, systemd-analyze, python3) with `args`, `stdin` fed in, in `dir`,
/// and asserts it succeeds (for systemd-analyze also: says nothing). Returns false, with a
/// note, where the tool is not installed; under `CI=true` that is a failure.
fn check_with(
    tool: &str,
    args: &[&str],
    stdin: Option<&str>,
    dir: Option<&std::path::Path>,
) -> bool {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let Ok(mut child) = cmd.spawn() else {
        assert!(
            std::env::var("CI").is_err(),
            "{tool} missing under CI=true (.ci/run installs it)"
        );
        eprintln!("SKIPPING {tool}: not installed");
        return false;
    };
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let quiet = tool != "systemd-analyze" || out.stderr.is_empty();
    assert!(
        out.status.success() && quiet,
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// 1. and 6. `/metrics` counts what the test sent and passes `promtool check metrics`;
///    `status --once` prints the same figures.
#[test]
fn metrics_match_what_was_sent_and_pass_promtool() {
    let r = start_with_admin("");
    let (w, admin) = (&r.w, r.admin);
    let mut lines = LineWriter::new(&w.path("input/a.log"), 60);
    lines.write(1000);
    wait_for_output(&w.output_dir(), 1000, Duration::from_secs(60));
    // The forwarder counts the ack right after the sink's output shows the records.
    let start = Instant::now();
    let text = loop {
        let (code, text) = http_get(admin, "/metrics");
        assert_eq!(code, 200);
        if sample(&text, "dataweaver_forward_records_acked_total") == Some(1000.0) {
            break text;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for (metric, want) in [
        (
            "dataweaver_source_records_in_total{pipeline=\"app\",source=\"file\"}",
            1000.0,
        ),
        (
            "dataweaver_pipeline_records_in_total{pipeline=\"app\"}",
            1000.0,
        ),
        ("dataweaver_pipeline_queued_total{pipeline=\"app\"}", 1000.0),
        (
            "dataweaver_pipeline_dead_lettered_total{pipeline=\"app\"}",
            0.0,
        ),
        ("dataweaver_forward_connected", 1.0),
        ("dataweaver_queue_dead_letters", 0.0),
    ] {
        assert_eq!(sample(&text, metric), Some(want), "{metric} in\n{text}");
    }
    assert!(
        text.contains("dataweaver_forward_batch_rtt_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("dataweaver_queue_depth_records"), "{text}");
    assert!(text.contains("dataweaver_build_info{version="), "{text}");
    check_with("promtool", &["check", "metrics"], Some(&text), None);
    let out = dw(&["status", "--admin", &format!("127.0.0.1:{admin}"), "--once"]);
    assert!(out.contains("DataWeaver agent"), "{out}");
    assert!(out.contains("connected"), "{out}");
    assert!(out.contains("1000 records acked"), "{out}");
    assert!(out.contains("app/file.records_in"), "{out}");
}

/// 2. `/ready` turns unready when no sink is reachable beyond the threshold, and ready
///    again once it is back.
#[test]
fn ready_follows_the_sink() {
    let w = World::new();
    let admin = tcp_port();
    agent_with_admin(&w, admin, "");
    let _agent = w.agent_as_configured();
    wait_http(admin, "/health", 200);
    let body = wait_http(admin, "/ready", 503);
    assert!(body.contains("no sink reachable"), "{body}");
    let mut sink = w.sink();
    wait_http(admin, "/ready", 200);
    sink.kill9();
    wait_http(admin, "/ready", 503);
    let _sink = w.sink();
    wait_http(admin, "/ready", 200);
}

/// `/ready` also turns unready when the queue is nearly full (buffering beyond its
/// limits), even while the sink-down threshold has not passed.
#[test]
fn ready_turns_unready_when_the_queue_is_nearly_full() {
    let w = World::new();
    let admin = tcp_port();
    std::fs::create_dir_all(w.path("input")).unwrap();
    agent_config_pipelines(
        &w,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\nready_sink_down_secs = 3600\n\n[queue]\nmax_bytes = 200000\n\n[[pipelines]]\nname = \"app\"\n\n[[pipelines.sources]]\ntype = \"file\"\ninclude = [\"input/a*.log\"]\npoll_interval_ms = 20\n"
        ),
    );
    let _agent = w.agent_as_configured();
    wait_http(admin, "/ready", 200);
    LineWriter::new(&w.path("input/a.log"), 200).write(5000);
    let body = wait_http(admin, "/ready", 503);
    assert!(body.contains("buffering beyond its limits"), "{body}");
    let _sink = w.sink();
    wait_http(admin, "/ready", 200);
}

/// Reload: SIGHUP with a new source starts reading it; `POST /reload` with a broken config
/// is refused with the error and the agent keeps going.
#[test]
fn config_reloads_on_sighup_and_refuses_a_broken_one() {
    let r = start_with_admin("");
    let (w, admin) = (&r.w, r.admin);
    let mut a = LineWriter::new(&w.path("input/a.log"), 10);
    a.write(100);
    wait_for_output(&w.output_dir(), 100, Duration::from_secs(30));
    // A broken config is refused over HTTP, with the key named.
    let good = std::fs::read_to_string(w.path("agent.toml")).unwrap();
    std::fs::write(
        w.path("agent.toml"),
        good.replace("poll_interval_ms = 20", "poll_interval = 20"),
    )
    .unwrap();
    let (code, body) = http_post(admin, "/reload", &[], b"");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("poll_interval"), "{body}");
    // A good one with a second source, by SIGHUP.
    std::fs::write(
        w.path("agent.toml"),
        good.replace(
            "include = [\"input/a*.log\"]",
            "include = [\"input/a*.log\", \"input/b*.log\"]",
        ),
    )
    .unwrap();
    // SAFETY: kill(2) with a pid we spawned and still own.
    unsafe {
        libc::kill(r.agent.pid() as i32, libc::SIGHUP);
    }
    a.write(100);
    let mut b = LineWriter::new(&w.path("input/b.log"), 10);
    b.next = 200;
    b.write(100);
    let out = wait_for_output(&w.output_dir(), 300, Duration::from_secs(30));
    assert_exactly_once(&out, 300);
    let log = std::fs::read_to_string(w.path("agent.log")).unwrap();
    assert!(log.contains("config reload: new config valid"), "{log}");
    // And a valid one over HTTP: back to `a` only; `b` lines written now stay unread.
    std::fs::write(w.path("agent.toml"), &good).unwrap();
    wait_http(admin, "/health", 200);
    let (code, body) = http_post(admin, "/reload", &[], b"");
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    wait_http(admin, "/health", 200);
    b.write(10);
    a.next = 300;
    a.write(10);
    wait_for_output(&w.output_dir(), 310, Duration::from_secs(30));
    // Give unread `b` lines time to show up if they were read after all.
    std::thread::sleep(Duration::from_secs(1));
    let out = read_output(&w.output_dir());
    assert_eq!(
        out.len(),
        310,
        "the b lines written after the reload are not read"
    );
}

/// Logs to a rotating file when `[log] file` is set (and not to stderr).
#[test]
fn logs_go_to_a_rotating_file() {
    let w = World::new();
    let admin = tcp_port();
    agent_with_admin(
        &w,
        admin,
        "[log]\nfile = \"logs/agent.log\"\nrotate = \"daily\"\nkeep = 3\n",
    );
    let _sink = w.sink();
    let mut agent = w.agent_as_configured();
    wait_http(admin, "/health", 200);
    sigterm(&mut agent);
    let files: Vec<_> = std::fs::read_dir(w.path("logs"))
        .expect("logs directory")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("agent.log."),
        "dated for daily rotation: {name}"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.contains("queue open") && text.contains("agent stopped"),
        "{text}"
    );
    let stderr = std::fs::read_to_string(w.path("agent.log")).unwrap_or_default();
    assert!(
        !stderr.contains("queue open"),
        "nothing on stderr: {stderr}"
    );
}

/// Logs as JSON lines with the fields Elasticsearch / Loki expect.
#[test]
fn json_logs_are_one_object_per_line() {
    let mut r = start_with_admin("[log]\nformat = \"json\"\n");
    let w = &r.w;
    sigterm(&mut r.agent);
    let log = std::fs::read_to_string(w.path("agent.log")).unwrap();
    let mut n = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "{key} missing: {line}");
        }
        n += 1;
    }
    assert!(n >= 3, "{log}");
    assert!(log.contains("\"message\":\"queue open\""), "{log}");
}

/// 5. SIGTERM while lines pour in: the agent is gone within a few seconds, and a restart
///    neither loses nor repeats a line.
#[test]
fn sigterm_under_load_exits_quickly_and_loses_nothing() {
    let mut r = start_with_admin("");
    let w = &r.w;
    let n = 30_000;
    let writer = {
        let path = w.path("input/a.log");
        std::thread::spawn(move || {
            let mut lines = LineWriter::new(&path, 100);
            for _ in 0..(n / 500) {
                lines.write(500);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    let start = Instant::now();
    sigterm(&mut r.agent);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "agent took {took:?} to stop");
    eprintln!("agent stopped {took:?} after SIGTERM");
    writer.join().unwrap();
    let _agent = w.agent_as_configured();
    let out = wait_for_output(&w.output_dir(), n, Duration::from_secs(120));
    assert_exactly_once_in_order(&out, n);
}

/// 3. The service definitions `service install` writes: the systemd unit passes
///    `systemd-analyze verify`; the launchd plist parses as a property list (Python's
///    plistlib; also `plutil -lint` where it exists). Windows: see the note in README.
#[test]
fn service_definitions_pass_their_checkers() {
    let w = World::new();
    w.agent_config();
    let config = w.path("agent.toml");
    let unit = dw(&[
        "service",
        "install",
        "--print",
        "linux",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(
        unit.contains(&format!(
            "ExecStart={} agent --config",
            std::fs::canonicalize(bin()).unwrap().display()
        )),
        "{unit}"
    );
    assert!(
        unit.contains("Restart=on-failure") && unit.contains("KillSignal=SIGTERM"),
        "{unit}"
    );
    let unit_file = w.path("dataweaver-agent.service");
    std::fs::write(&unit_file, &unit).unwrap();
    check_with(
        "systemd-analyze",
        &["verify", unit_file.to_str().unwrap()],
        None,
        None,
    );
    let plist = dw(&[
        "service",
        "install",
        "--print",
        "macos",
        "--config",
        config.to_str().unwrap(),
    ]);
    let plist_file = w.path("io.dataweaver.agent.plist");
    std::fs::write(&plist_file, &plist).unwrap();
    let check = "import plistlib,sys; p=plistlib.load(open(sys.argv[1],'rb')); \
                 assert p['Label']=='io.dataweaver.agent', p; \
                 assert p['ProgramArguments'][1:3]==['agent','--config'], p; \
                 assert p['KeepAlive']=={'SuccessfulExit': False}, p";
    check_with(
        "python3",
        &["-c", check, plist_file.to_str().unwrap()],
        None,
        None,
    );
    if let Ok(out) = Command::new("plutil")
        .args(["-lint", plist_file.to_str().unwrap()])
        .output()
    {
        assert!(
            out.status.success(),
            "plutil: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // A broken config is refused at install: the service would fail at its first start.
    std::fs::write(w.path("bad.toml"), "data_dir = 1\n").unwrap();
    let out = Command::new(bin())
        .args(["service", "install", "--print", "--config"])
        .arg(w.path("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_dir"));
}

/// The Grafana dashboard and the alert rules in `packaging/` use only metrics an agent
/// exports (checked against a live `/metrics`), the rules pass `promtool check rules`, and
/// their unit tests (`alerts_test.yml`: fire on the series they are about, not before) pass.
#[test]
fn dashboard_and_alerts_use_metrics_the_agent_exports() {
    let Some(module) = guest("passthrough_rust") else {
        return;
    };
    let w = World::new();
    let admin = tcp_port();
    std::fs::create_dir_all(w.path("input")).unwrap();
    agent_config_pipelines(
        &w,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[pipelines]]\nname = \"app\"\n\n[[pipelines.sources]]\ntype = \"file\"\ninclude = [\"input/a*.log\"]\npoll_interval_ms = 20\n\n[[pipelines.transforms]]\nmodule = \"{}\"\n",
            module.display()
        ),
    );
    let _sink = w.sink();
    let _agent = w.agent_as_configured();
    wait_http(admin, "/health", 200);
    LineWriter::new(&w.path("input/a.log"), 10).write(10);
    wait_for_output(&w.output_dir(), 10, Duration::from_secs(30));
    let (_, text) = http_get(admin, "/metrics");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let dashboard = std::fs::read_to_string(root.join("grafana/dataweaver.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let rules = std::fs::read_to_string(root.join("prometheus/alerts.yml")).unwrap();
    exprs.push(rules);
    // Only MQTT sources have reconnects; everything else must be in this agent's output.
    let elsewhere = ["dataweaver_source_reconnects_total"];
    let mut checked = 0;
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("dataweaver_"))
        {
            let base = name.strip_suffix("_bucket").unwrap_or(name);
            if elsewhere.contains(&base) {
                continue;
            }
            assert!(
                text.lines().any(|l| l.starts_with(base)),
                "{name} (used by the dashboard or the alerts) is not exported:\n{text}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked} metric uses checked");
    let dir = root.join("prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        if !check_with("promtool", &args, None, Some(&dir)) {
            return;
        }
    }
}

/// `[log] level` comes from the config when neither `RUST_LOG` nor `--log` is set, and a
/// reload applies a new one at once.
#[test]
fn log_level_follows_the_config_across_a_reload() {
    let w = World::new();
    let admin = tcp_port();
    agent_with_admin(&w, admin, "[log]\nlevel = \"warn\"\n");
    let _sink = w.sink();
    let log = std::fs::File::create(w.path("agent.log")).unwrap();
    let mut agent = Proc {
        child: Command::new(bin())
            .args(["agent", "--config", w.path("agent.toml").to_str().unwrap()])
            .env_remove("DATAWEAVER_LOG")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    };
    wait_http(admin, "/health", 200);
    let text = std::fs::read_to_string(w.path("agent.log")).unwrap();
    assert!(!text.contains("queue open"), "info hidden at warn:\n{text}");
    let cfg = std::fs::read_to_string(w.path("agent.toml")).unwrap();
    std::fs::write(
        w.path("agent.toml"),
        cfg.replace("level = \"warn\"", "level = \"info\""),
    )
    .unwrap();
    let (code, body) = http_post(admin, "/reload", &[], b"");
    assert_eq!(code, 200, "{body}");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(w.path("agent.log")).unwrap();
        if text.contains("queue open") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "info never shown:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(&mut agent);
}

/// Copies the queue fixture of format 2 into `dir` (an agent's data directory); returns
/// the fixture's directory.
fn format_2_fixture_in(dir: &std::path::Path) -> std::path::PathBuf {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e/fixtures/queue-format-2");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["queue.redb", "queue-checkpoints.cbor"] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    fixture
}

/// The committed queue file of format 2 (`tests/e2e/fixtures/queue-format-2`, written by
/// the agent of commit 7431269) reads as it was recorded: the fixture that a new queue
/// format must upgrade (issue 13) is valid, and today's reader agrees with it.
#[test]
fn queue_file_of_format_2_reads_as_recorded() {
    let w = World::new();
    let dir = w.path("old-queue");
    let fixture = format_2_fixture_in(&dir);
    let out = dw(&["queue", "export", "--dir", dir.to_str().unwrap()]);
    let expected = std::fs::read_to_string(fixture.join("expected.ndjson")).unwrap();
    assert_eq!(out.lines().count(), 151, "150 records and a dead letter");
    assert_eq!(out, expected);
}

/// A table of a redb file, read with redb alone (not the queue's code), from a copy.
fn redb_table(file: &std::path::Path, table: &str) -> Vec<(String, Vec<u8>)> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    let copy = file.with_extension("read-copy");
    std::fs::copy(file, &copy).unwrap();
    let db = redb::Database::open(&copy).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn
        .open_table(TableDefinition::<&str, &[u8]>::new(table))
        .unwrap();
    let rows = t
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value().to_string(), v.value().to_vec())
        })
        .collect();
    drop((t, txn, db));
    std::fs::remove_file(copy).unwrap();
    rows
}

/// Issue 13: this agent stores records in the wire encoding (queue format 3). It opens a
/// queue written by the format-2 agent (CBOR chunks, the committed fixture) and upgrades
/// it in place: every record in it reaches the sink exactly once, in order, and the
/// checkpoints it held are kept (its pipeline here has no file source, so nothing but the
/// upgrade could touch them).
#[test]
fn queue_of_format_2_is_upgraded_and_delivered_exactly_once_keeping_its_checkpoints() {
    let w = World::new();
    let data = w.path("agent/data");
    let fixture = format_2_fixture_in(&data);
    let checkpoints = redb_table(&fixture.join("queue.redb"), "checkpoints");
    assert_eq!(
        checkpoints.len(),
        2,
        "the fixture holds two file checkpoints"
    );
    let queue_id = redb_table(&fixture.join("queue.redb"), "meta")
        .into_iter()
        .find(|(k, _)| k == "queue_id")
        .unwrap()
        .1;
    let tcp = tcp_port();
    w.agent_config_raw(
        &[w.port],
        &format!(
            "[[pipelines]]\nname = \"app\"\n\n[[pipelines.sources]]\ntype = \"tcp\"\nlisten = \"127.0.0.1:{tcp}\"\n"
        ),
    );
    let _sink = w.sink();
    let mut agent = w.agent_as_configured();
    let got = wait_for_output(&w.output_dir(), 150, Duration::from_secs(30));
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(fixture.join("expected.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["dead_letter_reason"].is_null())
        .collect();
    assert_eq!(got.len(), 150, "every record once");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(Some(g.seq), e["seq"].as_u64());
        assert_eq!(Some(g.payload.as_str()), e["payload"].as_str());
        assert_eq!(
            g.queue.as_bytes(),
            queue_id.as_slice(),
            "the queue kept its id"
        );
    }
    sigterm(&mut agent);
    let queue = data.join("queue.redb");
    assert_eq!(
        redb_table(&queue, "checkpoints"),
        checkpoints,
        "checkpoints kept"
    );
    let meta = redb_table(&queue, "meta");
    let version = meta.iter().find(|(k, _)| k == "format_version").unwrap();
    assert_eq!(version.1, 3u64.to_le_bytes(), "upgraded to format 3");
}
