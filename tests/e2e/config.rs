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

/// The line (1-based) of the first line of `text` that starts with `start`.
fn line_of(text: &str, start: &str) -> usize {
    text.lines().position(|l| l.starts_with(start)).unwrap() + 1
}

/// Issue 13: `validate` reports every problem in a file, each with its line and key, not
/// just the first (a wrong type, an unknown key and a value out of range here).
#[test]
fn three_problems_are_all_reported_with_their_lines() {
    let w = World::new();
    let good = std::fs::read_to_string(w.agent_config()).unwrap();
    let bad = good
        .replacen("reconnect_min_ms = 50", "reconnect_min_ms = \"fast\"", 1)
        .replacen(
            "poll_interval_ms = 50",
            "poll_interval_ms = 50\nfollow_symlinks = true",
            1,
        )
        .replacen("sinks = [", "window = 0\nsinks = [", 1);
    let p = w.path("three.toml");
    std::fs::write(&p, &bad).unwrap();
    let (ok, err) = validate(&p);
    assert!(!ok);
    let expected = [
        (line_of(&bad, "window = 0"), "forward.window"),
        (
            line_of(&bad, "reconnect_min_ms"),
            "forward.reconnect_min_ms",
        ),
        (
            line_of(&bad, "follow_symlinks"),
            "pipelines[0].sources[0].follow_symlinks",
        ),
    ];
    let problems: Vec<&str> = err.lines().filter(|l| l.contains("three.toml:")).collect();
    assert_eq!(problems.len(), 3, "{err}");
    for ((line, key), got) in expected.iter().zip(&problems) {
        assert!(
            got.contains(&format!("three.toml:{line}:")) && got.contains(key),
            "{key} at {line}: {err}"
        );
    }
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
