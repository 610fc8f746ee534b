//! Acceptance 6: malformed configs fail `validate` with the file, line and key.

use std::process::Command;

use crate::util::*;

/// `dataweaver validate` on `path`: `(passed, stderr)`.
pub fn validate(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(["validate", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mutate(w: &World, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let good = std::fs::read_to_string(w.agent_config()).unwrap();
    assert!(good.contains(from), "fixture must contain {from:?}");
    let p = w.path(name);
    std::fs::write(&p, good.replacen(from, to, 1)).unwrap();
    p
}

#[test]
fn valid_configs_pass() {
    let w = World::new();
    let (ok, err) = validate(&w.agent_config());
    assert!(ok, "{err}");
    let (ok, err) = validate(&w.sink_config());
    assert!(ok, "{err}");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let w = World::new();
    let p = mutate(
        &w,
        "bad1.toml",
        "poll_interval_ms = 50",
        "poll_interval_ms = 50\nfollow_symlinks = true",
    );
    let (ok, err) = validate(&p);
    assert!(!ok);
    assert!(err.contains("bad1.toml:21:"), "line: {err}");
    assert!(
        err.contains("pipelines[0].sources[0].follow_symlinks"),
        "key: {err}"
    );
}

#[test]
fn wrong_type_is_named_with_its_line() {
    let w = World::new();
    let p = mutate(
        &w,
        "bad2.toml",
        "reconnect_min_ms = 50",
        "reconnect_min_ms = \"fast\"",
    );
    let (ok, err) = validate(&p);
    assert!(!ok);
    assert!(err.contains("bad2.toml:6:"), "line: {err}");
    assert!(
        err.contains("forward.reconnect_min_ms") && err.contains("invalid type"),
        "key: {err}"
    );
}

#[test]
fn missing_field_is_named() {
    let w = World::new();
    let p = mutate(&w, "bad3.toml", "data_dir = \"agent/data\"", "");
    let (ok, err) = validate(&p);
    assert!(!ok);
    assert!(
        err.contains("bad3.toml") && err.contains("data_dir") && err.contains("missing field"),
        "{err}"
    );
}

#[test]
fn invalid_value_is_named_with_its_line() {
    let w = World::new();
    let p = mutate(&w, "bad4.toml", "sinks = [", "window = 0\nsinks = [");
    let (ok, err) = validate(&p);
    assert!(!ok);
    assert!(
        err.contains("bad4.toml:4:") && err.contains("forward.window"),
        "{err}"
    );
}

#[test]
fn sink_unknown_key_is_named() {
    let w = World::new();
    let good = std::fs::read_to_string(w.sink_config()).unwrap();
    let p = w.path("badsink.toml");
    std::fs::write(&p, good.replace("max_file_bytes", "max_bytes")).unwrap();
    let (ok, err) = validate(&p);
    assert!(!ok);
    assert!(
        err.contains("badsink.toml:10:") && err.contains("outputs[0].max_bytes"),
        "{err}"
    );
}

/// The example configs shipped in `packaging/examples` (and shown in the README) are valid.
#[test]
fn shipped_examples_are_valid() {
    let w = World::new();
    w.issue("agent", &[]);
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/examples");
    for name in ["agent.toml", "sink.toml"] {
        let p = w.path(name);
        std::fs::copy(examples.join(name), &p).unwrap();
        let (ok, err) = validate(&p);
        assert!(ok, "{name}: {err}");
    }
}
