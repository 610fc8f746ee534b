//! Pipeline benchmark: `cargo bench --bench pipeline` (add `-- --records N` to change size).
//!
//! Prints, for 256-byte records:
//! 1. queue append throughput with fsync (group commit), in-process;
//! 2. end-to-end throughput file → agent queue → QUIC → sink journal → JSONL, with the real
//!    `dataweaver` binary as two processes on loopback;
//! 3. latency from the write to the file to the line's appearance in the JSONL output, at a
//!    steady rate, as p50/p99/max;
//! 4. peak RSS (VmHWM) of the agent and the sink;
//! 5. (`--only wasm`) the host<->guest crossing per record of a pass-through transform in
//!    every language built, at batch sizes 1, 64, 256 and 1024;
//! 6. (`--only wasm-e2e`) the end-to-end run of 2. with a pass-through transform and with
//!    the example transform (JSON in, JSON out) in the pipeline.
//!
//! 7. (`--only mqtt`) messages/s from a real Mosquitto (started by the bench) through the
//!    agent to the sink's JSONL for QoS 0, 1 and 2, 256-byte payloads, with the agent's CPU
//!    per 10k messages (needs `mosquitto` and `mosquitto_pub`).
//!
//! 8. (`--only swap`) remote hot-swap: time from `transform push` to the first record
//!    transformed by the new version at the sink, under a steady stream of 5,000
//!    records/s, for 10 pushes alternating two pass-through modules.
//!
//! Guests come from `$DATAWEAVER_GUESTS`, `transforms/prebuilt` or `target/wasm` (build
//! them all with `transforms/build.sh`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dataweaver::config::QueueConfig;
use dataweaver::queue::Queue;
use dataweaver::record::{Record, now_ns};

const RECORD: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records = arg(&args, "--records").unwrap_or(1_000_000);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    println!(
        "dataweaver pipeline bench: {records} records of {RECORD} bytes, {} cores",
        cores()
    );
    if only.as_deref().is_none_or(|o| o == "queue") {
        queue_append(records, 256, 4);
        queue_append(records / 10, 1, 64);
    }
    if only.as_deref().is_none_or(|o| o == "e2e") {
        end_to_end(records, None);
    }
    if only.as_deref().is_none_or(|o| o == "wasm") {
        crossing();
    }
    if only.as_deref().is_none_or(|o| o == "mqtt") {
        for qos in [0u8, 1, 2] {
            mqtt(records / 10, qos);
        }
    }
    if only.as_deref().is_none_or(|o| o == "swap") {
        swap_latency();
    }
    if only.as_deref().is_none_or(|o| o == "wasm-e2e") {
        for name in ["passthrough_rust", "example_rust"] {
            match guest(name) {
                Some(m) => end_to_end(records, Some(&m)),
                None => println!("{name}: not built, skipped"),
            }
        }
    }
}

/// A guest component by name (see the module docs for where it is looked up).
fn guest(name: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dirs = match std::env::var_os("DATAWEAVER_GUESTS") {
        Some(d) => vec![root.join(d)],
        None => vec![root.join("transforms/prebuilt"), root.join("target/wasm")],
    };
    dirs.iter()
        .map(|d| d.join(format!("{name}.wasm")))
        .find(|p| p.is_file())
}

/// ns per record of one guest call over batches of each size, for every language built.
fn crossing() {
    use dataweaver::transform::{Instance, Module, Settings};
    let cache = tempfile::tempdir().expect("tempdir");
    for lang in ["rust", "c", "python", "js"] {
        let Some(path) = guest(&format!("passthrough_{lang}")) else {
            println!("wasm crossing {lang}: passthrough_{lang} not built, skipped");
            continue;
        };
        let settings = Settings {
            name: format!("passthrough_{lang}"),
            config_json: "{}".into(),
            memory_max_bytes: 512 << 20,
            deadline: Duration::from_secs(10),
            max_stack_bytes: 512 << 10,
            batch_max_records: 1024,
            output_max_bytes: 1 << 30,
            version_header: None,
            wasi: None,
        };
        let t = Instant::now();
        let module = Module::load(&path, settings, Some(cache.path())).expect("load");
        let compile = t.elapsed();
        let t = Instant::now();
        let mut inst = Instance::new(module.clone()).expect("instantiate");
        let instantiate = t.elapsed();
        let mut line = format!(
            "wasm crossing {lang} (compile {:.0} ms, instantiate {:.1} ms):",
            compile.as_secs_f64() * 1e3,
            instantiate.as_secs_f64() * 1e3
        );
        let fast = matches!(lang, "rust" | "c");
        for batch in [1usize, 64, 256, 1024] {
            let total = if fast { 200_000 } else { 40_000 };
            let mut batches: Vec<Vec<Record>> = (0..total / batch)
                .map(|b| {
                    (0..batch)
                        .map(|i| {
                            let mut r = record(b * batch + i);
                            r.headers =
                                std::sync::Arc::new([("file".into(), "/var/log/app.log".into())]);
                            r
                        })
                        .collect()
                })
                .collect();
            // One warm-up call, then the timed ones.
            let _ = inst.process(batches.pop().expect("batch"));
            let n: usize = batches.iter().map(Vec::len).sum();
            let start = Instant::now();
            for b in batches {
                let out = inst.process(b).map_err(|e| e.1).expect("process");
                assert_eq!(out.records.len(), batch);
            }
            let ns = start.elapsed().as_nanos() as f64 / n as f64;
            line.push_str(&format!(" batch {batch}: {:.0} ns/record;", ns));
        }
        println!("{line}");
    }
}

fn arg(args: &[String], name: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn record(i: usize) -> Record {
    let mut payload = format!("{i:012} ").into_bytes();
    payload.resize(RECORD, b'x');
    Record::new("bench/file", "bench", payload)
}

/// `producers` tasks append `total` records in appends of `per_append`.
fn queue_append(total: usize, per_append: usize, producers: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let elapsed = rt.block_on(async {
        let q = Queue::open(dir.path(), &QueueConfig::default()).expect("queue");
        let start = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..producers {
            let q = q.clone();
            let share = total / producers;
            tasks.push(tokio::spawn(async move {
                let mut i = p * share;
                let end = i + share;
                while i < end {
                    let n = per_append.min(end - i);
                    let batch: Vec<Record> = (i..i + n).map(record).collect();
                    q.append(batch, None).await.expect("append");
                    i += n;
                }
            }));
        }
        for t in tasks {
            t.await.expect("producer");
        }
        let e = start.elapsed();
        q.close().await;
        e
    });
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "queue append (fsync per commit, {producers} producers x {per_append} records/append): {total} records in {:.2} s = {:.0} records/s, {:.1} MiB/s",
        elapsed.as_secs_f64(),
        rate,
        rate * RECORD as f64 / (1 << 20) as f64
    );
}

/// A 256-byte input line (newline included): a JSON object the example transform keeps,
/// with `id` first so the latency probe finds the write time.
fn json_line(id: &str, pad: u8) -> Vec<u8> {
    let head = format!("{{\"id\":\"{id}\",\"service\":\"bench\",\"level\":\"info\",\"pad\":\"");
    let mut line = head.into_bytes();
    line.resize(RECORD - 3, pad);
    line.extend_from_slice(b"\"}\n");
    line
}

/// Certificates, `sink.toml` (JSONL into `out/`) and `agent.toml` with one pipeline
/// `bench` whose body (transforms, sources) is `pipeline`, all in `d`.
fn sink_and_agent_configs(d: &Path, pipeline: &str) {
    let certs = d.join("certs");
    let c = certs.to_str().expect("utf-8");
    dw(&["certs", "init", "--dir", c]);
    dw(&["certs", "issue", "--dir", c, "--name", "sink", "--sink"]);
    dw(&["certs", "issue", "--dir", c, "--name", "bench-agent"]);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    std::fs::write(
        d.join("sink.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"sink\"\ntls = {{ ca = \"certs/ca.pem\", cert = \"certs/sink.pem\", key = \"certs/sink.key\" }}\nadmins = [\"admin\"]\n[[outputs]]\ntype = \"jsonl\"\ndir = \"out\"\n"
        ),
    )
    .expect("write");
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "data_dir = \"agent\"\n[forward]\nsinks = [\"127.0.0.1:{port}\"]\ntls = {{ ca = \"certs/ca.pem\", cert = \"certs/bench-agent.pem\", key = \"certs/bench-agent.key\" }}\n[[pipelines]]\nname = \"bench\"\n{pipeline}"
        ),
    )
    .expect("write");
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dw(args: &[&str]) {
    let st = Command::new(env!("CARGO_BIN_EXE_dataweaver"))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run");
    assert!(st.success(), "dataweaver {args:?}");
}

fn spawn(cmd: &str, config: &Path, log: &Path) -> Killed {
    let log = std::fs::File::create(log).expect("log");
    Killed(
        Command::new(env!("CARGO_BIN_EXE_dataweaver"))
            .args([cmd, "--config", config.to_str().expect("utf-8 path")])
            .env("DATAWEAVER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn"),
    )
}

/// Peak resident set of a process, in MiB (Linux).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User + system CPU seconds a process has used so far (Linux).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Follows the JSONL output directory, counting complete lines and handing each to `seen`.
struct Tail {
    dir: PathBuf,
    index: u64,
    offset: u64,
    carry: Vec<u8>,
    lines: usize,
}

impl Tail {
    fn new(dir: PathBuf) -> Tail {
        Tail {
            dir,
            index: 1,
            offset: 0,
            carry: Vec::new(),
            lines: 0,
        }
    }

    /// New bytes of the output, following rotation to the next file; empty when none.
    fn read_new(&mut self) -> Vec<u8> {
        loop {
            let path = self.dir.join(format!("out-{:08}.jsonl", self.index));
            let Ok(mut f) = std::fs::File::open(&path) else {
                return Vec::new();
            };
            let _ = f.seek(SeekFrom::Start(self.offset));
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            self.offset += buf.len() as u64;
            if buf.is_empty()
                && self
                    .dir
                    .join(format!("out-{:08}.jsonl", self.index + 1))
                    .exists()
            {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            return buf;
        }
    }

    /// Counts new complete lines only (cheap: the bench must not steal the pipeline's CPU).
    fn count(&mut self) {
        let buf = self.read_new();
        let newlines = buf.iter().filter(|&&b| b == b'\n').count();
        self.lines += newlines;
        // Keep the bytes after the last newline for a later `poll`.
        if newlines > 0 {
            self.carry.clear();
        }
        let tail = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.carry.extend_from_slice(&buf[tail..]);
    }

    /// Hands each new complete line to `seen`.
    fn poll(&mut self, mut seen: impl FnMut(&[u8])) {
        let buf = self.read_new();
        self.carry.extend_from_slice(&buf);
        let mut start = 0;
        while let Some(i) = self.carry[start..].iter().position(|&b| b == b'\n') {
            seen(&self.carry[start..start + i]);
            self.lines += 1;
            start += i + 1;
        }
        self.carry.drain(..start);
    }
}

fn end_to_end(total: usize, transform: Option<&Path>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let transforms = transform.map_or(String::new(), |m| {
        format!(
            "[[pipelines.transforms]]\nmodule = \"{}\"\nconfig = {{ host = \"bench-host\" }}\n",
            m.display()
        )
    });
    sink_and_agent_configs(
        d,
        &format!(
            "{transforms}[[pipelines.sources]]\ntype = \"file\"\ninclude = [\"input/*.log\"]\npoll_interval_ms = 20\n"
        ),
    );
    std::fs::create_dir_all(d.join("input")).expect("mkdir");

    // Throughput: the input is written first, then agent and sink race through it.
    let input = d.join("input/bench.log");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).expect("input"));
        for i in 0..total {
            f.write_all(&json_line(&format!("{i:012}"), b'x'))
                .expect("write input");
        }
        f.flush().expect("flush");
    }
    let sink = spawn("sink", &d.join("sink.toml"), &d.join("sink.log"));
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let agent = spawn("agent", &d.join("agent.toml"), &d.join("agent.log"));
    let mut tail = Tail::new(d.join("out"));
    while tail.lines < total {
        tail.count();
        if start.elapsed() > Duration::from_secs(600) {
            panic!(
                "only {} of {total} records arrived in 10 minutes",
                tail.lines
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = total as f64 / secs;
    if let Some(m) = transform {
        println!("with transform {}:", m.display());
    }
    let (agent_cpu, sink_cpu) = (cpu_secs(agent.0.id()), cpu_secs(sink.0.id()));
    println!(
        "end to end (file -> queue -> QUIC -> sink journal -> JSONL): {total} records in {secs:.2} s = {rate:.0} records/s, {:.1} MiB/s of payload",
        rate * RECORD as f64 / (1 << 20) as f64
    );
    println!(
        "  CPU used: agent {agent_cpu:.2} s ({:.2} us/record), sink {sink_cpu:.2} s ({:.2} us/record)",
        agent_cpu * 1e6 / total as f64,
        sink_cpu * 1e6 / total as f64
    );

    // Latency: a steady stream, each line carrying its write time. It starts once the
    // pipeline has settled: right after the burst, the queue and the journal still delete
    // what was delivered, and the first lines measured that (in 10 of 14 runs the worst
    // sample was among the lines of the first 21 ms).
    std::thread::sleep(Duration::from_secs(1));
    let rate_per_s = 20_000usize;
    let seconds = 5usize;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .expect("append");
    let mut lat = Vec::with_capacity(rate_per_s * seconds);
    let begin = Instant::now();
    let step = Duration::from_millis(10);
    let per_step = rate_per_s / 100;
    let target = total + rate_per_s * seconds;
    let mut written = 0;
    let mut record_latency = |l: &[u8]| {
        let s = String::from_utf8_lossy(l);
        if let Some(ts) = s
            .split("\\\"id\\\":\\\"T")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|t| t.parse::<u64>().ok())
        {
            lat.push(now_ns().saturating_sub(ts));
        }
    };
    while tail.lines < target {
        if written < rate_per_s * seconds && begin.elapsed() >= step * (written / per_step) as u32 {
            let mut buf = Vec::new();
            let ts = now_ns();
            for _ in 0..per_step {
                buf.extend_from_slice(&json_line(&format!("T{ts} "), b'y'));
            }
            f.write_all(&buf).expect("append");
            written += per_step;
        }
        tail.poll(&mut record_latency);
        std::thread::sleep(Duration::from_millis(1));
        if begin.elapsed() > Duration::from_secs(120) {
            panic!("latency phase stalled at {} of {target}", tail.lines);
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    println!(
        "latency write -> JSONL at {rate_per_s} records/s for {seconds} s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        pct(0.50),
        pct(0.99),
        pct(1.0),
        lat.len()
    );
    println!(
        "peak RSS: agent {:.1} MiB, sink {:.1} MiB",
        peak_rss_mib(agent.0.id()),
        peak_rss_mib(sink.0.id())
    );
}

/// Push → first record of the new version at the sink, under a steady stream.
fn swap_latency() {
    let (Some(a), Some(b)) = (guest("passthrough_rust"), guest("passthrough_c")) else {
        println!("swap: pass-through guests not built, skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let keys = d.join("keys");
    let out = Command::new(env!("CARGO_BIN_EXE_dataweaver"))
        .args([
            "transform",
            "keygen",
            "--dir",
            keys.to_str().expect("utf-8"),
            "--name",
            "ops",
        ])
        .output()
        .expect("keygen");
    let public = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    sink_and_agent_configs(
        d,
        &format!(
            "[[pipelines.sources]]\ntype = \"file\"\ninclude = [\"input/*.log\"]\npoll_interval_ms = 20\n[[pipelines.transforms]]\nname = \"t\"\nmodule = \"{}\"\nversion_header = \"x-version\"\n[control]\ntrusted_keys = [\"{public}\"]\n",
            a.display()
        ),
    );
    dw(&[
        "certs",
        "issue",
        "--dir",
        d.join("certs").to_str().expect("utf-8"),
        "--name",
        "admin",
    ]);
    let sink_addr = std::fs::read_to_string(d.join("sink.toml"))
        .expect("sink.toml")
        .lines()
        .find_map(|l| {
            l.strip_prefix("listen = \"")
                .map(|r| r.trim_end_matches('"').to_string())
        })
        .expect("listen");
    std::fs::create_dir_all(d.join("input")).expect("mkdir");
    let input = d.join("input/swap.log");
    let _sink = spawn("sink", &d.join("sink.toml"), &d.join("sink.log"));
    std::thread::sleep(Duration::from_millis(300));
    let _agent = spawn("agent", &d.join("agent.toml"), &d.join("agent.log"));
    // A steady stream of 5,000 records/s, in 10 ms steps, while pushes happen.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, input) = (stop.clone(), input.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(&input).expect("input");
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut buf = Vec::new();
                for _ in 0..50 {
                    buf.extend_from_slice(&json_line(&format!("{i:012}"), b's'));
                    i += 1;
                }
                f.write_all(&buf).expect("append");
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let mut tail = Tail::new(d.join("out"));
    tail.poll(|_| {});
    let mut times = Vec::new();
    for n in 2..12 {
        let (module, version) = (if n % 2 == 0 { &b } else { &a }, format!("v{n}"));
        let tag = format!("t@{version}\"");
        let start = Instant::now();
        let st = Command::new(env!("CARGO_BIN_EXE_dataweaver"))
            .args(["transform", "push", "--sink", &sink_addr, "--certs"])
            .arg(d.join("certs"))
            .args(["--pipeline", "bench", "--module"])
            .arg(module)
            .args(["--version", &version, "--key"])
            .arg(keys.join("ops.key"))
            .stdout(Stdio::null())
            .status()
            .expect("push");
        assert!(st.success(), "push {version}");
        let pushed = start.elapsed();
        let mut seen = false;
        while !seen {
            tail.poll(|l| seen |= l.windows(tag.len()).any(|w| w == tag.as_bytes()));
            std::thread::sleep(Duration::from_millis(1));
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{version} never appeared"
            );
        }
        let t = start.elapsed();
        println!(
            "  push {version}: command done after {:.1} ms, first {version} record at the sink after {:.1} ms",
            pushed.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e3
        );
        times.push(t);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.join();
    let first = times[0];
    let mut rest = times[2..].to_vec();
    rest.sort_unstable();
    println!(
        "remote swap (push -> first record of the new version in the sink's JSONL, 5,000 records/s): first push of each module (compiles) {:.0} / {:.0} ms; later pushes p50 {:.0} ms, max {:.0} ms",
        first.as_secs_f64() * 1e3,
        times[1].as_secs_f64() * 1e3,
        rest[rest.len() / 2].as_secs_f64() * 1e3,
        rest[rest.len() - 1].as_secs_f64() * 1e3
    );
}

/// Mosquitto → agent (mqtt source) → sink → JSONL for `n` messages at `qos`.
fn mqtt(n: usize, qos: u8) {
    let Some(mosquitto) = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("mqtt: mosquitto not installed, skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port()
    };
    let broker = free();
    std::fs::write(
        d.join("mosquitto.conf"),
        format!("listener {broker} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nuser root\n"),
    )
    .expect("write");
    let _broker = Killed(
        Command::new(mosquitto)
            .args(["-c", d.join("mosquitto.conf").to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    sink_and_agent_configs(
        d,
        &format!(
            "[[pipelines.sources]]\ntype = \"mqtt\"\nbroker = \"127.0.0.1:{broker}\"\nclient_id = \"bench-agent\"\ntopics = [{{ filter = \"bench/#\", qos = {qos} }}]\n"
        ),
    );
    // Mosquitto 2.0.11 disconnects a `mosquitto_pub -l` that sends ~35k messages of 256
    // bytes at once ("out of memory"): publish in files of 10k, one publisher after another.
    let chunk = 10_000;
    let mut files = Vec::new();
    for (k, from) in (0..n).step_by(chunk).enumerate() {
        let path = d.join(format!("messages-{k}.txt"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("input"));
        for i in from..(from + chunk).min(n) {
            let mut line = format!("{i:012} ").into_bytes();
            line.resize(RECORD, b'm');
            line.push(b'\n');
            f.write_all(&line).expect("write");
        }
        f.flush().expect("flush");
        files.push(path);
    }
    std::thread::sleep(Duration::from_millis(300));
    let sink = spawn("sink", &d.join("sink.toml"), &d.join("sink.log"));
    let agent = spawn("agent", &d.join("agent.toml"), &d.join("agent.log"));
    std::thread::sleep(Duration::from_millis(700));
    let start = Instant::now();
    if Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_err()
    {
        println!("mqtt: mosquitto_pub not installed, skipped");
        return;
    }
    let publisher = std::thread::spawn(move || {
        for f in files {
            let _ = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &broker.to_string(),
                    "-t",
                    "bench/m",
                    "-q",
                ])
                .arg(qos.to_string())
                .arg("-l")
                .stdin(std::fs::File::open(&f).expect("input"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    });
    let mut tail = Tail::new(d.join("out"));
    // QoS 0 may lose messages by design: stop when the output stops growing.
    let (mut last, mut since) = (0, Instant::now());
    while tail.lines < n {
        tail.count();
        if tail.lines != last {
            (last, since) = (tail.lines, Instant::now());
        }
        if since.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = (start.elapsed()
        - if tail.lines < n {
            since.elapsed()
        } else {
            Duration::ZERO
        })
    .as_secs_f64();
    let _ = publisher.join();
    let agent_cpu = cpu_secs(agent.0.id());
    println!(
        "mqtt QoS {qos} (Mosquitto -> agent -> sink -> JSONL, mosquitto_pub -l as publisher): {} of {n} messages in {secs:.2} s = {:.0} messages/s; agent CPU {:.2} s = {:.0} ms per 10k messages; peak RSS agent {:.1} MiB",
        tail.lines,
        tail.lines as f64 / secs,
        agent_cpu,
        agent_cpu * 1e3 * 10_000.0 / tail.lines.max(1) as f64,
        peak_rss_mib(agent.0.id())
    );
    drop(sink);
}
