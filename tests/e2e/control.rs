//! Remote hot-swap (issue 6): signed modules pushed through the sink, verified,
//! self-checked, persisted, swapped at a batch boundary, rolled back; refusals reported.
//! Real sink and agent processes, real QUIC, the CLI as an operator would use it.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// A world with an admin certificate, two signing keys (`ops` trusted, `rogue` not) and
/// an agent whose pipeline `app` runs the Rust pass-through as v1.
pub(crate) struct Ops {
    pub(crate) w: World,
}

pub(crate) fn setup(extra_control: &str) -> Option<Ops> {
    let (Some(v1), Some(_)) = (guest("passthrough_rust"), guest("passthrough_c")) else {
        return None;
    };
    let w = World::new();
    w.issue("admin", &[]);
    let keys = w.path("keys");
    let trusted = dw(&[
        "transform",
        "keygen",
        "--dir",
        keys.to_str()?,
        "--name",
        "ops",
    ]);
    dw(&[
        "transform",
        "keygen",
        "--dir",
        keys.to_str()?,
        "--name",
        "rogue",
    ]);
    let public = trusted.lines().last()?.trim().to_string();
    assert!(public.starts_with("ed25519:"), "{trusted}");
    let pipelines = format!(
        r#"[control]
trusted_keys = ["{public}"]
{extra_control}

[[pipelines]]
name = "app"

[[pipelines.sources]]
type = "file"
include = ["input/*.log"]
poll_interval_ms = 20

[[pipelines.transforms]]
name = "t"
module = "{}"
version_header = "x-version"
"#,
        v1.display()
    );
    std::fs::create_dir_all(w.path("input")).unwrap();
    agent_config_pipelines(&w, &pipelines);
    Some(Ops { w })
}

impl Ops {
    fn admin_args(&self) -> Vec<String> {
        vec![
            "--sink".into(),
            format!("127.0.0.1:{}", self.w.port),
            "--certs".into(),
            self.w.certs().display().to_string(),
        ]
    }

    /// `transform push` of `module` as `version`, signed with `keys/<key>.key`; the
    /// command's output (it fails the test if the sink refuses the request).
    fn push(&self, module: &Path, version: &str, key: &str, extra: &[&str]) -> String {
        let key = self.w.path(&format!("keys/{key}.key"));
        let mut args: Vec<String> = vec!["transform".into(), "push".into()];
        args.extend(self.admin_args());
        args.extend(
            [
                "--pipeline",
                "app",
                "--module",
                module.to_str().unwrap(),
                "--version",
                version,
            ]
            .map(String::from),
        );
        if !extra.contains(&"--signature") {
            args.extend(["--key".to_string(), key.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        dw(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `transform sign` of `module` for `version` with the trusted key, into `out`.
    pub(crate) fn sign(&self, module: &Path, version: &str, out: &Path) {
        dw(&[
            "transform",
            "sign",
            "--module",
            module.to_str().unwrap(),
            "--pipeline",
            "app",
            "--version",
            version,
            "--key",
            self.w.path("keys/ops.key").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
    }

    pub(crate) fn status(&self) -> String {
        let mut args: Vec<String> = vec!["transform".into(), "status".into()];
        args.extend(self.admin_args());
        dw(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn rollback(&self) -> String {
        let mut args: Vec<String> = vec!["transform".into(), "rollback".into()];
        args.extend(self.admin_args());
        args.extend(["--pipeline".to_string(), "app".to_string()]);
        // Issue 12, defect 13: a rollback is an order signed by a trusted key.
        args.extend([
            "--key".to_string(),
            self.w.path("keys/ops.key").display().to_string(),
        ]);
        dw(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Waits until `transform status` shows `text` for the agent.
    pub(crate) fn wait_status(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.status();
            if s.contains(text) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "status never showed `{text}`:\n{s}\n{}",
                std::fs::read_to_string(self.w.path("agent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Appends JSON lines `{"i": from..to}` to the input file.
    fn write(&self, from: usize, to: usize) {
        self.write_tagged(from, to, "");
    }

    /// Like [`write`](Self::write), each line with `tag` in it (`boom` makes the
    /// hostile `panic_rust` module trap).
    fn write_tagged(&self, from: usize, to: usize, tag: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.w.path("input/app.log"))
            .unwrap();
        for i in from..to {
            writeln!(f, r#"{{"i":{i},"t":"{tag}"}}"#).unwrap();
        }
    }
}

/// The version tag of each output record, by its `i`, after all `n` arrived once.
fn versions(w: &World, n: usize) -> Vec<String> {
    let out = wait_for_output(&w.output_dir(), n, Duration::from_secs(60));
    let mut by_i = vec![String::new(); n];
    for l in &out {
        let v: serde_json::Value = serde_json::from_str(&l.payload).unwrap();
        let i = v["i"].as_u64().unwrap() as usize;
        assert!(by_i[i].is_empty(), "record {i} twice");
        by_i[i] = l.headers.get("x-version").cloned().unwrap_or_default();
    }
    assert_eq!(out.len(), n, "none lost or duplicated");
    by_i
}

/// 1. Under a continuous stream, a pushed v2 takes over at a batch boundary: v1 before,
///    v2 after, every record exactly once.
#[test]
fn pushed_version_takes_over_mid_stream_exactly_once() {
    let Some(ops) = setup("") else { return };
    let w = &ops.w;
    let _sink = w.sink();
    let _agent = w.agent_as_configured();
    ops.wait_status("app");
    let n = 6000;
    let writer = spawn_json_stream(w.path("input/app.log"), n);
    std::thread::sleep(Duration::from_millis(300));
    let v2 = guest("passthrough_c").unwrap();
    let out = ops.push(&v2, "v2", "ops", &[]);
    assert!(out.contains("offered to 1 connected agent"), "{out}");
    writer.join().unwrap();
    let tags = versions(w, n);
    let first_v2 = tags
        .iter()
        .position(|t| t == "t@v2")
        .expect("v2 transformed the later records");
    assert!(first_v2 > 0, "v1 transformed the first records");
    assert!(
        tags[..first_v2]
            .iter()
            .all(|t| t.starts_with("t@") && t != "t@v2"),
        "v1 only before the swap"
    );
    assert!(
        tags[first_v2..].iter().all(|t| t == "t@v2"),
        "v2 only after the swap, never back"
    );
    let s = ops.wait_status("active v2");
    assert!(s.contains("edge-1"), "{s}");
}

/// 2. Bad signature, untrusted key, tampered body, failed self-check: each refused with
///    its reason in `transform status`; v1 keeps transforming.
#[test]
fn bad_pushes_are_refused_with_reasons_and_v1_keeps_running() {
    let Some(ops) = setup("") else { return };
    let w = &ops.w;
    let _sink = w.sink();
    let _agent = w.agent_as_configured();
    ops.wait_status("app");
    let v2 = guest("passthrough_c").unwrap();
    // Untrusted key.
    ops.push(&v2, "v2", "rogue", &[]);
    ops.wait_status("signed by an untrusted key");
    // A signature made for another version.
    let sig = w.path("v2.sig");
    ops.sign(&v2, "v9", &sig);
    ops.push(&v2, "v3", "ops", &["--signature", sig.to_str().unwrap()]);
    ops.wait_status("refused v3");
    // A tampered body: v2's signature, another module's bytes.
    let tampered = w.path("tampered.wasm");
    let mut bytes = std::fs::read(&v2).unwrap();
    bytes.extend_from_slice(b"\0tampered");
    std::fs::write(&tampered, bytes).unwrap();
    ops.sign(&v2, "v4", &sig);
    ops.push(
        &tampered,
        "v4",
        "ops",
        &["--signature", sig.to_str().unwrap()],
    );
    let s = ops.wait_status("refused v4");
    assert!(s.contains("bad signature"), "{s}");
    // Properly signed, but it traps on the self-check's test records (on `boom`).
    if let Some(panic) = guest("panic_rust") {
        let vectors = w.path("vectors.ndjson");
        std::fs::write(&vectors, "{\"i\":1}\n{\"i\":2,\"t\":\"boom\"}\n").unwrap();
        ops.push(
            &panic,
            "v5",
            "ops",
            &["--vectors", vectors.to_str().unwrap()],
        );
        let s = ops.wait_status("refused v5");
        assert!(s.contains("self-check failed"), "{s}");
    }
    // v1 still runs.
    ops.write(0, 100);
    let tags = versions(w, 100);
    let v1 = tags[0].clone();
    assert!(v1.starts_with("t@") && !v1.contains("@v"), "{v1}");
    assert!(tags.iter().all(|t| *t == v1), "only v1 ran");
}

/// 3. An agent offline during the push gets v2 when it connects; after a SIGKILL it
///    restarts with v2 (from its own queue file) before any record flows.
#[test]
fn offline_agent_gets_the_push_and_keeps_it_across_sigkill() {
    let Some(ops) = setup("") else { return };
    let w = &ops.w;
    let _sink = w.sink();
    let mut agent = w.agent_as_configured();
    ops.wait_status("app");
    agent.kill9();
    let v2 = guest("passthrough_c").unwrap();
    let out = ops.push(&v2, "v2", "ops", &[]);
    assert!(out.contains("stored"), "{out}");
    let mut agent = w.agent_as_configured();
    ops.wait_status("accepted v2");
    ops.write(0, 500);
    ops.wait_status("active v2");
    let _ = versions(w, 500);
    agent.kill9();
    // Records written while it is down go through v2 as soon as it is back.
    ops.write(500, 1000);
    let _agent = w.agent_as_configured();
    let tags = versions(w, 1000);
    assert!(
        tags.iter().all(|t| t == "t@v2"),
        "v2 throughout: {:?}",
        &tags[..3]
    );
    let log = std::fs::read_to_string(w.path("agent.log")).unwrap();
    assert!(log.contains("pushed transform restored"), "{log}");
}

/// 4. A v3 that traps on every batch is rolled back to v2 on its own; its records are
///    dead letters, not lost; a manual rollback then returns to v1.
#[test]
fn trapping_version_rolls_back_and_manual_rollback_works() {
    let Some(ops) = setup("rollback_window_batches = 4\nrollback_failed_share = 0.5") else {
        return;
    };
    let Some(panic) = guest("panic_rust") else {
        return;
    };
    let w = &ops.w;
    let _sink = w.sink();
    let mut agent = w.agent_as_configured();
    ops.wait_status("app");
    let v2 = guest("passthrough_c").unwrap();
    ops.push(&v2, "v2", "ops", &[]);
    ops.wait_status("accepted v2");
    ops.write(0, 10);
    ops.wait_status("active v2");
    // v3 traps on every batch of `boom` records. Its self-check on the recent input would
    // catch that; an empty vector file checks only `init`, so it goes live, as a module
    // that fails only on data the check did not see would.
    let empty = w.path("empty.ndjson");
    std::fs::write(&empty, "\n").unwrap();
    ops.push(&panic, "v3", "ops", &["--vectors", empty.to_str().unwrap()]);
    ops.wait_status("accepted v3");
    // Batches arrive one poll at a time: after 3 failed of a window of 4 it goes.
    let mut next = 10;
    let start = Instant::now();
    while !ops.status().contains("rolled_back v3") {
        ops.write_tagged(next, next + 10, "boom");
        next += 10;
        std::thread::sleep(Duration::from_millis(150));
        assert!(start.elapsed() < Duration::from_secs(30), "no rollback");
    }
    let s = ops.wait_status("rolled_back v3");
    assert!(s.contains("batches failed after the swap"), "{s}");
    // v2 runs again.
    ops.write(next, next + 100);
    let total = next + 100;
    let sent = wait_until_all_accounted(w, total, &mut agent);
    assert!(
        sent.iter().all(|t| t == "t@v2"),
        "delivered records are v2's (v3's went to the dead letters)"
    );
    let _agent = w.agent_as_configured();
    ops.wait_status("app");
    // Manual rollback: the push before v3 is v2, which runs already...
    let out = ops.rollback();
    assert!(out.contains("pushed version now: v2"), "{out}");
    // ...and once more: back to the configured v1, also for agents connecting later.
    let out = ops.rollback();
    assert!(
        out.contains("pushed version now: the configured module"),
        "{out}"
    );
    let s = ops.wait_status("rolled_back v2");
    assert!(s.contains("rolled back by the operator"), "{s}");
    ops.write(total, total + 50);
    let out = wait_for_output(&w.output_dir(), sent.len() + 50, Duration::from_secs(30));
    let last = out.iter().max_by_key(|l| l.seq).unwrap();
    let tag = last.headers.get("x-version").cloned().unwrap_or_default();
    assert!(
        tag.starts_with("t@") && !tag.contains("@v"),
        "v1 again: {tag}"
    );
}

/// Waits until every record `0..n` is at the sink or a dead letter (exactly one of the
/// two), stopping the agent to read its dead letters; returns the delivered tags.
fn wait_until_all_accounted(w: &World, n: usize, agent: &mut Proc) -> Vec<String> {
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let out = read_output(&w.output_dir());
        agent.kill9();
        let dead = dead_letters(w);
        let mut seen = vec![0u32; n];
        for l in &out {
            let v: serde_json::Value = serde_json::from_str(&l.payload).unwrap();
            seen[v["i"].as_u64().unwrap() as usize] += 1;
        }
        for d in &dead {
            let payload = d["payload"].as_str().unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(payload)
                && let Some(i) = v["i"].as_u64()
            {
                seen[i as usize] += 1;
                let reason = d["dead_letter_reason"].as_str().unwrap_or_default();
                assert!(reason.starts_with("t@v3"), "{reason}");
            }
        }
        if seen.iter().all(|&c| c == 1) {
            assert!(!dead.is_empty(), "v3's records are dead letters");
            return out
                .iter()
                .map(|l| l.headers.get("x-version").cloned().unwrap_or_default())
                .collect();
        }
        assert!(seen.iter().all(|&c| c <= 1), "a record twice");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {n} accounted for",
            seen.iter().filter(|&&c| c == 1).count()
        );
        *agent = w.agent_as_configured();
    }
}

/// A push with `--agent` is a canary: only that agent takes it; the other keeps v1, also
/// across a reconnect, until a push for everyone.
#[test]
fn a_push_for_one_agent_reaches_only_that_agent() {
    let Some(ops) = setup("") else { return };
    let w = &ops.w;
    w.issue("edge-2", &[]);
    // A second agent: its own data directory, input and certificate.
    let one = std::fs::read_to_string(w.path("agent.toml")).unwrap();
    let two = one
        .replace("agent/data", "agent2/data")
        .replace("edge-1", "edge-2")
        .replace("input/*.log", "input2/*.log");
    std::fs::write(w.path("agent2.toml"), two).unwrap();
    std::fs::create_dir_all(w.path("input2")).unwrap();
    let _sink = w.sink();
    let _a1 = w.agent_as_configured();
    let mut a2 = Proc::start("agent", &w.path("agent2.toml"), &w.path("agent2.log"));
    ops.wait_status("edge-2");
    ops.wait_status("edge-1");
    let v2 = guest("passthrough_c").unwrap();
    let out = ops.push(&v2, "v2", "ops", &["--agent", "edge-2"]);
    assert!(out.contains("for agents edge-2"), "{out}");
    assert!(out.contains("offered to 1 connected agent"), "{out}");
    ops.wait_status("accepted v2");
    // edge-2 reconnects: nothing new for it; edge-1 was never offered v2.
    a2.kill9();
    let _a2 = Proc::start("agent", &w.path("agent2.toml"), &w.path("agent2.log"));
    let write = |dir: &str, from: usize| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(w.path(&format!("{dir}/app.log")))
            .unwrap();
        for i in from..from + 50 {
            writeln!(f, r#"{{"i":{i}}}"#).unwrap();
        }
    };
    write("input", 0);
    write("input2", 50);
    let tags = versions(w, 100);
    assert!(
        tags[..50].iter().all(|t| !t.contains("@v")),
        "edge-1 kept v1: {:?}",
        &tags[..3]
    );
    assert!(
        tags[50..].iter().all(|t| t == "t@v2"),
        "edge-2 runs v2: {:?}",
        &tags[50..53]
    );
    let s = ops.status();
    let edge1 = s.lines().find(|l| l.starts_with("edge-1")).unwrap_or("");
    assert!(!edge1.contains("v2"), "edge-1 never heard of v2: {s}");
}
