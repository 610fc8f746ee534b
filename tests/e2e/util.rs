//! Helpers: certificates, configs, processes and output readers for the e2e tests.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dataweaver")
}

/// Runs `dataweaver ARGS`, panicking with its output if it fails.
pub fn dw(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run dataweaver");
    assert!(
        out.status.success(),
        "dataweaver {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free UDP port on loopback (bound then released: the sink binds it right after).
pub fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

/// A test's working directory with a CA, a sink certificate and an agent certificate.
pub struct World {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let c = certs.to_str().unwrap();
        dw(&["certs", "init", "--dir", c]);
        dw(&["certs", "issue", "--dir", c, "--name", "sink", "--sink"]);
        dw(&["certs", "issue", "--dir", c, "--name", "edge-1"]);
        World {
            dir,
            port: free_port(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Waits until the log file `log` (e.g. "agent.log") contains `text`, and returns it;
    /// panics with the log after 30 s. A fixed sleep before reading a log flakes on a
    /// loaded 2-core CI machine (the swap test's 600 ms did).
    pub fn wait_log(&self, log: &str, text: &str) -> String {
        let start = Instant::now();
        loop {
            let content = std::fs::read_to_string(self.path(log)).unwrap_or_default();
            if content.contains(text) {
                return content;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no `{text}` in {log}:\n{content}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn certs(&self) -> PathBuf {
        self.path("certs")
    }

    /// Issues certificate `name` in the world's CA, with `extra` flags (`--sink`, `--host`).
    pub fn issue(&self, name: &str, extra: &[&str]) {
        let c = self.certs();
        let mut args = vec![
            "certs",
            "issue",
            "--dir",
            c.to_str().unwrap(),
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        dw(&args);
    }

    pub fn output_dir(&self) -> PathBuf {
        self.path("sink/out")
    }

    /// Writes `sink.toml` (JSONL output under `sink/out`, small files to exercise rotation).
    pub fn sink_config(&self) -> PathBuf {
        self.sink_config_named("sink", self.port)
    }

    /// Writes `NAME.toml` for a sink on `port` with data in `NAME/data`, output in `NAME/out`.
    pub fn sink_config_named(&self, name: &str, port: u16) -> PathBuf {
        let p = self.path(&format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                r#"listen = "127.0.0.1:{port}"
data_dir = "{name}/data"
tls = {{ ca = "certs/ca.pem", cert = "certs/sink.pem", key = "certs/sink.key" }}
idle_timeout_ms = 3000
admins = ["admin"]

[[outputs]]
type = "jsonl"
dir = "{name}/out"
max_file_bytes = 1048576
"#
            ),
        )
        .unwrap();
        p
    }

    /// Writes `agent.toml` tailing `input/*.log`.
    pub fn agent_config(&self) -> PathBuf {
        self.agent_config_with("", "", &[self.port])
    }

    /// `agent.toml` with extra `[queue]` keys, extra keys for the pipeline, and sink ports.
    pub fn agent_config_with(&self, queue: &str, pipeline: &str, ports: &[u16]) -> PathBuf {
        let file = "[[pipelines.sources]]\ntype = \"file\"\ninclude = [\"input/*.log\"]\npoll_interval_ms = 50\n";
        self.agent_config_sources(queue, pipeline, ports, file)
    }

    /// `agent.toml` with the given `[[pipelines.sources]]` blocks.
    pub fn agent_config_sources(
        &self,
        queue: &str,
        pipeline: &str,
        ports: &[u16],
        sources: &str,
    ) -> PathBuf {
        std::fs::create_dir_all(self.path("input")).unwrap();
        self.agent_config_raw(
            ports,
            &format!("[queue]\n{queue}\n\n[[pipelines]]\nname = \"app\"\n{pipeline}\n\n{sources}"),
        )
    }

    /// `agent.toml` with the usual forward block to `ports` and then `rest` (queue and
    /// pipeline tables).
    pub fn agent_config_raw(&self, ports: &[u16], rest: &str) -> PathBuf {
        let p = self.path("agent.toml");
        let sinks = ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &p,
            format!(
                r#"data_dir = "agent/data"

[forward]
sinks = [{sinks}]
tls = {{ ca = "certs/ca.pem", cert = "certs/edge-1.pem", key = "certs/edge-1.key" }}
reconnect_min_ms = 50
reconnect_max_ms = 500
idle_timeout_ms = 3000

{rest}"#
            ),
        )
        .unwrap();
        p
    }

    pub fn sink(&self) -> Proc {
        Proc::start("sink", &self.sink_config(), &self.path("sink.log"))
    }

    pub fn agent(&self) -> Proc {
        Proc::start("agent", &self.agent_config(), &self.path("agent.log"))
    }

    /// Starts an agent from the `agent.toml` last written.
    pub fn agent_as_configured(&self) -> Proc {
        Proc::start("agent", &self.path("agent.toml"), &self.path("agent.log"))
    }

    /// `dataweaver queue stats` of the (stopped) agent, as key → number.
    pub fn queue_stats(&self) -> std::collections::HashMap<String, u64> {
        let out = dw(&[
            "queue",
            "stats",
            "--dir",
            self.path("agent/data").to_str().unwrap(),
        ]);
        out.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                let n = v.split_whitespace().next()?.parse().ok()?;
                Some((k.trim().to_string(), n))
            })
            .collect()
    }
}

/// A running `dataweaver agent|sink`, killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn start(cmd: &str, config: &Path, log: &Path) -> Proc {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(bin())
            .args([cmd, "--config", config.to_str().unwrap()])
            .env("DATAWEAVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dataweaver");
        Proc { child }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A writer of numbered lines into a file, `line-00000042-xxxx…` (about `size` bytes each).
pub struct LineWriter {
    file: std::fs::File,
    pub next: usize,
    pad: String,
}

impl LineWriter {
    pub fn new(path: &Path, size: usize) -> LineWriter {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        LineWriter {
            file,
            next: 0,
            pad: "x".repeat(size.saturating_sub(14)),
        }
    }

    /// Continues the numbering in another file (the application reopened its log).
    pub fn reopen(&mut self, path: &Path) {
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
    }

    pub fn write(&mut self, n: usize) {
        let mut buf = String::with_capacity(n * (self.pad.len() + 16));
        for _ in 0..n {
            buf.push_str(&format!("line-{:08}-{}\n", self.next, self.pad));
            self.next += 1;
        }
        self.file.write_all(buf.as_bytes()).unwrap();
    }
}

/// The number encoded in a `line-N-…` payload.
pub fn line_no(payload: &str) -> usize {
    payload[5..13].parse().expect("numbered line")
}

/// One JSONL record as written by the sink.
#[derive(Debug, serde::Deserialize)]
pub struct OutLine {
    #[serde(default)]
    pub headers: std::collections::HashMap<String, String>,
    pub agent: String,
    pub queue: String,
    pub seq: u64,
    pub topic: String,
    pub payload: String,
}

/// Every complete JSON line in `dir`'s `out-*.jsonl` files, in file order.
pub fn read_output(dir: &Path) -> Vec<OutLine> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.split_inclusive('\n') {
            // A line still being written has no newline yet.
            if !line.ends_with('\n') {
                break;
            }
            out.push(
                serde_json::from_str(line.trim_end())
                    .unwrap_or_else(|e| panic!("bad JSONL in {f:?}: {e}: {line}")),
            );
        }
    }
    out
}

/// Waits until at least `n` lines are in the output (or panics after `timeout`).
pub fn wait_for_output(dir: &Path, n: usize, timeout: Duration) -> Vec<OutLine> {
    let start = Instant::now();
    loop {
        let lines = read_output(dir);
        if lines.len() >= n {
            // Give a duplicate a moment to show up, if there is going to be one.
            std::thread::sleep(Duration::from_millis(500));
            return read_output(dir);
        }
        if start.elapsed() > timeout {
            // The logs of the test's processes say why; print their ends.
            if let Some(world) = dir.parent().and_then(Path::parent) {
                print_log_tails(world, &["agent.log", "sink.log", "sinkb.log"], 15);
            }
            panic!(
                "timed out after {timeout:?}: {} of {n} lines arrived",
                lines.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints the last `n` lines of each of `logs` in `dir` (for a failing test's output).
pub fn print_log_tails(dir: &Path, logs: &[&str], n: usize) {
    for log in logs {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(n).collect();
        eprintln!("--- {log} (last lines) ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// Asserts the output holds lines 0..n exactly once each (in any order across files).
pub fn assert_exactly_once(lines: &[OutLine], n: usize) {
    let mut seen = HashSet::new();
    for l in lines {
        assert!(
            seen.insert(line_no(&l.payload)),
            "duplicate line {}",
            l.payload
        );
    }
    let missing: Vec<usize> = (0..n).filter(|i| !seen.contains(i)).take(10).collect();
    assert!(
        missing.is_empty(),
        "missing lines, first {missing:?} ({} of {n} arrived)",
        seen.len()
    );
    assert_eq!(lines.len(), n, "unexpected extra lines");
    for w in lines.windows(2) {
        assert!(
            w[0].seq < w[1].seq,
            "seqs not rising: {} then {}",
            w[0].seq,
            w[1].seq
        );
    }
}

/// Asserts the output holds lines 0..n exactly once each, in order, with rising seqs.
pub fn assert_exactly_once_in_order(lines: &[OutLine], n: usize) {
    assert_exactly_once(lines, n);
    for w in lines.windows(2) {
        assert!(
            line_no(&w[0].payload) < line_no(&w[1].payload),
            "out of order: {} then {}",
            w[0].payload,
            w[1].payload
        );
        assert!(
            w[0].seq < w[1].seq,
            "seqs not rising: {} then {}",
            w[0].seq,
            w[1].seq
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| l.agent == "edge-1" && l.topic == "app"),
        "agent id from cert, topic from pipeline"
    );
}

/// Stops a process with SIGTERM (a graceful stop) and waits for it.
pub fn sigterm(p: &mut Proc) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    let start = Instant::now();
    while p.child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no exit within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of counter `name` in the agent's last `counters=` log line.
pub fn counter_in_log(log: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("counters="))
        .unwrap_or("");
    line.split_whitespace()
        .find_map(|kv| {
            // The first pair follows the field name: `counters=a=1 b=2`.
            let kv = kv.trim_matches('"');
            let kv = kv.strip_prefix("counters=").unwrap_or(kv).trim_matches('"');
            kv.strip_prefix(&format!("{name}="))
                .map(|v| v.trim_matches('"').parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// A minimal HTTP/1.1 client over a real socket: `(status, headers and body as text)`.
pub fn http_post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut s = connect_tcp(port);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // The server may answer (413) and close before taking the whole body: ignore write errors.
    let _ = s.write_all(req.as_bytes()).and_then(|_| s.write_all(body));
    read_response(&mut s)
}

/// Reads an HTTP response to its end: `(status, headers and body as text)`.
pub fn read_response(s: &mut std::net::TcpStream) -> (u16, String) {
    use std::io::Read;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A free TCP port on loopback.
pub fn tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects to a TCP source, waiting up to 5 s for it to listen.
pub fn connect_tcp(port: u16) -> std::net::TcpStream {
    for _ in 0..100 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on tcp port {port}");
}

/// A guest component by name (`example_rust`, `loop`, ...): from `$DATAWEAVER_GUESTS`
/// (CI builds every guest from source there), else the small prebuilt ones in
/// `transforms/prebuilt`, else `target/wasm` (what `transforms/build.sh` makes locally).
/// Missing: `None` with a note on a developer machine, a failure under `CI=true`.
pub fn guest(name: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<PathBuf> = std::env::var_os("DATAWEAVER_GUESTS")
        .map(|d| root.join(d))
        .into_iter()
        .collect();
    if dirs.is_empty() {
        dirs.push(root.join("transforms/prebuilt"));
        dirs.push(root.join("target/wasm"));
    }
    let found = dirs
        .iter()
        .map(|d| d.join(format!("{name}.wasm")))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "guest {name}.wasm not found in {dirs:?} under CI=true: .ci/run builds it with transforms/build.sh"
        );
        eprintln!("SKIPPING {name}: not built here (run transforms/build.sh to build it)");
    }
    found
}

/// `agent.toml` with the usual forward block and the given `[[pipelines]]` text.
pub fn agent_config_pipelines(world: &World, pipelines: &str) -> PathBuf {
    world.agent_config_raw(&[world.port], pipelines)
}

/// Every line of `dataweaver queue export` of the (stopped) agent that is a dead letter.
pub fn dead_letters(world: &World) -> Vec<serde_json::Value> {
    let out = dw(&[
        "queue",
        "export",
        "--dir",
        world.path("agent/data").to_str().unwrap(),
    ]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["dead_letter_reason"].is_string())
        .collect()
}

/// Appends JSON lines `{"service":"svc","level":"info","i":N}` for `N` in `0..n` to
/// `path` in the background, 50 at a time with a short pause: a continuous stream.
pub fn spawn_json_stream(path: PathBuf, n: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for i in 0..n {
            writeln!(f, r#"{{"service":"svc","level":"info","i":{i}}}"#).unwrap();
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(15));
            }
        }
    })
}

/// `GET path` on a local HTTP port: `(status, body)`.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = connect_tcp(port);
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let (status, text) = read_response(&mut s);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
