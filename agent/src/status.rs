//! `dataweaver status`: a running agent's (or sink's) figures from its admin endpoint,
//! refreshed every second with rates, or one snapshot with `--once`.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

/// `GET /status` over plain HTTP/1.1 on loopback (one request, `Connection: close`).
fn fetch(admin: &str) -> anyhow::Result<Value> {
    let mut s = std::net::TcpStream::connect(admin).with_context(|| {
        format!("no admin endpoint at {admin} (is the agent running? see `admin.listen`)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{}",
        head.lines().next().unwrap_or("")
    );
    serde_json::from_str(body).context("status is not JSON")
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// `+N/s` since the previous snapshot.
fn rate(now: u64, before: Option<u64>, secs: f64) -> String {
    match before {
        Some(b) if secs > 0.0 => format!(" (+{:.0}/s)", now.saturating_sub(b) as f64 / secs),
        _ => String::new(),
    }
}

/// The snapshot as text; rates against `prev` taken `secs` earlier.
fn render(s: &Value, prev: Option<&Value>, secs: f64) -> String {
    let mut out = String::new();
    let before = |path: &[&str]| {
        let mut v = prev?;
        for p in path {
            v = v.get(p)?;
        }
        v.as_u64()
    };
    out += &format!(
        "DataWeaver {} {}, up {} s, {}\n",
        s["kind"].as_str().unwrap_or("?"),
        s["version"].as_str().unwrap_or("?"),
        num(&s["uptime_secs"]),
        s["ready"].as_str().unwrap_or("?")
    );
    if let Some(f) = s.get("forward") {
        let connected = f["connected"].as_bool().unwrap_or(false);
        out += &format!(
            "sink       {} {}{}\n",
            f["sink"].as_str().unwrap_or("-"),
            if connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
            f["down_secs"]
                .as_u64()
                .map(|d| format!(" for {d} s"))
                .unwrap_or_default()
        );
        out += &format!(
            "forward    {} records acked{}, {} sent, {} sessions\n",
            num(&f["records_acked"]),
            rate(
                num(&f["records_acked"]),
                before(&["forward", "records_acked"]),
                secs
            ),
            mib(num(&f["bytes_sent"])),
            num(&f["sessions"])
        );
    }
    if let Some(q) = s.get("queue").filter(|q| !q.is_null()) {
        let age = q["oldest_ts_ns"]
            .as_u64()
            .map(|t| {
                let now = dataweaver::record::now_ns();
                format!(", oldest {:.1} s", now.saturating_sub(t) as f64 / 1e9)
            })
            .unwrap_or_default();
        out += &format!(
            "queue      {} records, {}{age}, {} dead letters\n",
            num(&q["depth"]),
            mib(num(&q["bytes"])),
            num(&q["dead_letters"])
        );
    }
    if let Some(ts) = s["transforms"].as_array().filter(|t| !t.is_empty()) {
        let list: Vec<String> = ts
            .iter()
            .map(|t| {
                format!(
                    "{}/{}@{}",
                    t["pipeline"].as_str().unwrap_or(""),
                    t["transform"].as_str().unwrap_or(""),
                    t["version"].as_str().unwrap_or("")
                )
            })
            .collect();
        out += &format!("transforms {}\n", list.join(", "));
    }
    if let Some(c) = s["counters"].as_object() {
        out += "counters\n";
        for (k, v) in c {
            out += &format!(
                "  {k:<44} {}{}\n",
                num(v),
                rate(num(v), before(&["counters", k]), secs)
            );
        }
    }
    out
}

/// Runs `dataweaver status`.
pub fn run(admin: &str, once: bool) -> anyhow::Result<ExitCode> {
    let mut prev: Option<(Value, Instant)> = None;
    loop {
        let s = fetch(admin)?;
        let now = Instant::now();
        let text = match &prev {
            Some((p, t)) => render(&s, Some(p), now.duration_since(*t).as_secs_f64()),
            None => render(&s, None, 0.0),
        };
        if once {
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        // Clear the screen and draw again: a live view in any terminal.
        print!("\x1b[2J\x1b[H{text}");
        std::io::stdout().flush()?;
        prev = Some((s, now));
        std::thread::sleep(Duration::from_secs(1));
    }
}
