//! Control plane, transforms, file modes (issue 12: 13, 14, 18, 19, 20, 25).
//!
//! Defects 18 and 19 (the WASM host's table accounting, output cap, guest log limits) are
//! pinned by unit tests in `agent/transform/src/wasm.rs`; the v1-signature refusal and
//! status paging by unit tests in `agent/control/src/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dataweaver::control::admin::{AdminTarget, request};
use dataweaver::wire::{self, AdminRequest};

use crate::util::*;

// The operator's world of the control tests: an admin certificate, a trusted key `ops`
// and an untrusted `rogue`, an agent whose pipeline `app` runs the Rust pass-through.
use crate::control::{Ops, setup};

impl Ops {
    fn admin(&self, cmd: &str, extra: &[&str]) -> std::process::Output {
        let port = format!("127.0.0.1:{}", self.w.port);
        let certs = self.w.certs();
        Command::new(bin())
            .args(["transform", cmd, "--sink", &port, "--certs"])
            .arg(&certs)
            .args(extra)
            .output()
            .unwrap()
    }

    fn key(&self, name: &str) -> String {
        self.w
            .path(&format!("keys/{name}.key"))
            .display()
            .to_string()
    }

    fn target(&self) -> AdminTarget {
        let certs = self.w.certs();
        AdminTarget {
            sink: format!("127.0.0.1:{}", self.w.port),
            server_name: "localhost".into(),
            ca: certs.join("ca.pem"),
            cert: certs.join("admin.pem"),
            key: certs.join("admin.key"),
        }
    }

    fn push_signed(&self, module: &Path, version: &str, sig: &Path) -> std::process::Output {
        self.admin(
            "push",
            &[
                "--pipeline",
                "app",
                "--module",
                module.to_str().unwrap(),
                "--version",
                version,
                "--signature",
                sig.to_str().unwrap(),
            ],
        )
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Issue 12, defect 13: an old signed module was accepted after a newer one (a sink, or
/// anyone who kept an old offer, could downgrade an agent to a version with a known bug).
/// Signed offers carry a sequence number the agent keeps per pipeline; the replayed older
/// offer is refused and the agent keeps running the newer one.
#[test]
fn replayed_older_signed_offer_is_refused_after_a_newer_one() {
    let Some(ops) = setup("") else { return };
    let w = &ops.w;
    let (v1, v2) = (
        guest("passthrough_c").unwrap(),
        guest("passthrough_rust").unwrap(),
    );
    // Two versions signed in turn (v1 first, so v1's signature is the older one).
    let (sig1, sig2) = (w.path("v1.sig"), w.path("v2.sig"));
    ops.sign(&v1, "v1", &sig1);
    std::thread::sleep(Duration::from_millis(5));
    ops.sign(&v2, "v2", &sig2);
    let _sink = w.sink();
    let _agent = w.agent_as_configured();
    ops.wait_status("app");
    assert!(ops.push_signed(&v1, "v1", &sig1).status.success());
    ops.wait_status("accepted v1");
    assert!(ops.push_signed(&v2, "v2", &sig2).status.success());
    ops.wait_status("accepted v2");
    // The replay: v1's offer, exactly as it was signed.
    assert!(ops.push_signed(&v1, "v1", &sig1).status.success());
    let s = ops.wait_status("refused v1");
    assert!(s.contains("is not newer than"), "{s}");
    std::fs::write(w.path("input/app.log"), "{\"i\":1}\n").unwrap();
    let out = wait_for_output(&w.output_dir(), 1, Duration::from_secs(20));
    assert_eq!(
        out[0].headers.get("x-version").map(String::as_str),
        Some("t@v2"),
        "v2 still runs"
    );
}

/// Issue 12, defect 13: rollback orders were not signed: anyone able to talk to the sink
/// as an admin (or a compromised sink) could return every agent to an older module. A
/// rollback is now an order signed by a trusted key: a signed one is carried out; one
/// without a signature, or signed by a stranger's key, is refused (the agent checks its
/// trusted keys for rollbacks as for pushes; the sink already refuses an order by a key
/// that signed none of the pipeline's pushes).
#[test]
fn rollback_must_be_signed_by_a_trusted_key() {
    let Some(ops) = setup("") else { return };
    let w = &ops.w;
    let (v2, v3) = (
        guest("passthrough_c").unwrap(),
        guest("passthrough_rust").unwrap(),
    );
    let _sink = w.sink();
    let _agent = w.agent_as_configured();
    ops.wait_status("app");
    let push = |m: &PathBuf, v: &str| {
        let out = ops.admin(
            "push",
            &[
                "--pipeline",
                "app",
                "--module",
                m.to_str().unwrap(),
                "--version",
                v,
                "--key",
                &ops.key("ops"),
            ],
        );
        assert!(out.status.success(), "{out:?}");
    };
    push(&v2, "v2");
    ops.wait_status("accepted v2");
    push(&v3, "v3");
    ops.wait_status("accepted v3");
    // Unsigned: the sink refuses to store or send it.
    let reply = runtime()
        .block_on(request(
            &ops.target(),
            AdminRequest {
                action: "rollback".into(),
                pipeline: "app".into(),
                ..Default::default()
            },
        ))
        .unwrap();
    assert!(!reply.ok, "unsigned rollback accepted: {}", reply.message);
    assert!(reply.message.contains("signed"), "{}", reply.message);
    // Forged (a key the agent does not trust).
    let out = ops.admin(
        "rollback",
        &["--pipeline", "app", "--key", &ops.key("rogue")],
    );
    assert!(!out.status.success(), "forged rollback accepted: {out:?}");
    assert!(ops.status().contains("accepted v3"), "v3 still active");
    // Signed by the trusted key: back to v2.
    let out = ops.admin("rollback", &["--pipeline", "app", "--key", &ops.key("ops")]);
    assert!(out.status.success(), "{out:?}");
    let s = ops.wait_status("rolled_back v2");
    assert!(s.contains("rolled back by the operator"), "{s}");
    std::fs::write(w.path("input/app.log"), "{\"i\":1}\n").unwrap();
    let out = wait_for_output(&w.output_dir(), 1, Duration::from_secs(20));
    assert_eq!(
        out[0].headers.get("x-version").map(String::as_str),
        Some("t@v2")
    );
}

/// Issue 12, defect 14: one agent certificate could flood the control store: outcome
/// rows for any pipeline name and reasons of any length were stored (`control.redb` grew
/// to 269 MB; `transform status` then failed on its own reply frame). A raw control
/// stream with a valid agent certificate now gets rows only for the pipelines it
/// announced, with bounded reasons.
#[test]
fn agent_certificate_cannot_flood_the_control_store() {
    let w = World::new();
    w.issue("admin", &[]);
    let certs = w.certs();
    let _sink = w.sink();
    let rt = runtime();
    let port = w.port;
    let certs2 = certs.clone();
    rt.block_on(async move {
        let material = dataweaver::tls::TlsMaterial::load(
            &certs2.join("ca.pem"),
            Some((&certs2.join("edge-1.pem"), &certs2.join("edge-1.key"))),
        )
        .unwrap();
        let client = dataweaver::tls::client_config(&material, Duration::from_secs(10)).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let start = Instant::now();
        let conn = loop {
            let c = endpoint
                .connect_with(client.clone(), ([127, 0, 0, 1], port).into(), "localhost")
                .unwrap()
                .await;
            match c {
                Ok(c) => break c,
                Err(e) => {
                    assert!(start.elapsed() < Duration::from_secs(10), "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let hello = wire::AgentFrame {
            kind: Some(wire::agent_frame::Kind::ControlHello(wire::ControlHello {
                transforms: vec![wire::TransformState {
                    pipeline: "app".into(),
                    version: "v1".into(),
                    ..Default::default()
                }],
            })),
        };
        wire::write_frame(&mut send, &hello).await.unwrap();
        let huge = "x".repeat(100_000);
        for i in 0..=200 {
            let pipeline = if i == 200 {
                "app".to_string()
            } else {
                format!("p{i}")
            };
            let o = wire::AgentFrame {
                kind: Some(wire::agent_frame::Kind::Outcome(wire::ModuleOutcome {
                    pipeline,
                    version: format!("v{i}"),
                    outcome: "refused".into(),
                    reason: huge.clone(),
                    ..Default::default()
                })),
            };
            wire::write_frame(&mut send, &o).await.unwrap();
        }
        send.finish().unwrap();
        let _ = send.stopped().await;
        conn.close(0u32.into(), b"done");
    });
    let target = AdminTarget {
        sink: format!("127.0.0.1:{port}"),
        server_name: "localhost".into(),
        ca: certs.join("ca.pem"),
        cert: certs.join("admin.pem"),
        key: certs.join("admin.key"),
    };
    // The last outcome (for `app`) shows once every one before it was handled.
    let start = Instant::now();
    let reply = loop {
        let r = rt
            .block_on(dataweaver::control::admin::request_all(
                &target,
                AdminRequest {
                    action: "status".into(),
                    ..Default::default()
                },
            ))
            .unwrap();
        if r.agents.iter().any(|a| a.last_outcome == "refused v200") {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}", r.message);
        std::thread::sleep(Duration::from_millis(100));
    };
    let rows: Vec<_> = reply
        .agents
        .iter()
        .filter(|a| a.agent == "edge-1")
        .collect();
    assert_eq!(
        rows.len(),
        1,
        "rows only for announced pipelines, got {}",
        rows.len()
    );
    assert_eq!(rows[0].pipeline, "app");
    assert!(
        rows[0].reason.len() <= 1100,
        "reason kept bounded: {} bytes",
        rows[0].reason.len()
    );
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Issue 12, defect 20: the queue, the journal, the control store and the JSONL output
/// were world-readable (0644 in 0755 directories). Now data files are 0600 and
/// directories 0700 whatever the umask, and the units set `UMask=0077`.
#[cfg(unix)]
#[test]
fn data_files_are_not_world_readable() {
    let w = World::new();
    w.agent_config();
    let _sink = w.sink();
    let mut agent = w.agent();
    let mut f = std::fs::File::create(w.path("input/app.log")).unwrap();
    writeln!(f, "hello").unwrap();
    wait_for_output(&w.output_dir(), 1, Duration::from_secs(20));
    sigterm(&mut agent);
    for (p, want) in [
        ("agent/data", 0o700),
        ("agent/data/queue.redb", 0o600),
        ("sink/data", 0o700),
        ("sink/data/journal.redb", 0o600),
        ("sink/data/control.redb", 0o600),
        ("sink/out", 0o700),
    ] {
        assert_eq!(mode(&w.path(p)), want, "{p}: {:o}", mode(&w.path(p)));
    }
    for e in std::fs::read_dir(w.output_dir()).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    let unit = dw(&[
        "service",
        "install",
        "--print",
        "linux",
        "--config",
        w.path("agent.toml").to_str().unwrap(),
    ]);
    assert!(unit.contains("UMask=0077"), "{unit}");
}

/// Issue 12, defect 20: `certs issue` over an existing 0644 key kept it 0644 and
/// `certs issue --name ca` silently replaced the CA with a leaf certificate. Now the CA
/// is never replaced, an existing key only with `--force`, and the new key is 0600.
#[cfg(unix)]
#[test]
fn certs_issue_never_replaces_the_ca_and_fixes_key_modes() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let c = w.certs();
    let dir = c.to_str().unwrap();
    let ca = std::fs::read(c.join("ca.pem")).unwrap();
    let ca_key = std::fs::read(c.join("ca.key")).unwrap();
    let issue = |extra: &[&str]| {
        Command::new(bin())
            .args(["certs", "issue", "--dir", dir])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = issue(&["--name", "ca"]);
    assert!(!out.status.success(), "--name ca must be refused");
    let out = issue(&["--name", "ca", "--force"]);
    assert!(
        !out.status.success(),
        "--name ca must be refused even with --force"
    );
    assert_eq!(std::fs::read(c.join("ca.pem")).unwrap(), ca, "CA untouched");
    assert_eq!(std::fs::read(c.join("ca.key")).unwrap(), ca_key);
    // An existing key, left 0644 by an older version.
    let key = c.join("edge-1.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&key).unwrap();
    let out = issue(&["--name", "edge-1"]);
    assert!(
        !out.status.success(),
        "an existing key is kept without --force"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{out:?}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let out = issue(&["--name", "edge-1", "--force"]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(std::fs::read(&key).unwrap(), before, "replaced");
    assert_eq!(mode(&key), 0o600);
}

/// Issue 12, defect 25: a 70 MB module push failed with "sending stopped by peer" (the
/// sink drops a frame over the 64 MiB control limit). The client now refuses it before
/// sending, naming the limit.
#[test]
fn oversized_module_push_names_the_frame_limit() {
    let Some(ops) = setup("") else { return };
    let w = &ops.w;
    let _sink = w.sink();
    let big = w.path("big.wasm");
    std::fs::write(&big, vec![7u8; 70_000_000]).unwrap();
    let out = ops.admin(
        "push",
        &[
            "--pipeline",
            "app",
            "--module",
            big.to_str().unwrap(),
            "--version",
            "v9",
            "--key",
            &ops.key("ops"),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("64 MiB limit"), "{err}");
}
