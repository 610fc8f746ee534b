//! Issue 3: HTTP ingest answers only after commit, with clear errors.

use std::time::Duration;

use crate::util::*;

fn http_source(port: u16, extra: &str) -> String {
    format!(
        "[[pipelines.sources]]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\ncodec = \"json\"\n{extra}\n"
    )
}

fn ndjson(from: usize, n: usize) -> Vec<u8> {
    (from..from + n)
        .map(|i| format!("{{\"msg\":\"line-{i:08}-http\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A 200 means committed: the agent is SIGKILLed right after each answer and the queue
/// already holds every accepted line.
#[test]
fn http_answers_only_after_commit() {
    let w = World::new();
    let port = tcp_port();
    w.agent_config_sources("", "", &[w.port], &http_source(port, ""));
    let mut total = 0;
    for round in 0..3 {
        let mut agent = w.agent_as_configured();
        let (status, text) = http_post(
            port,
            "/ingest",
            &[("Content-Type", "application/x-ndjson")],
            &ndjson(total, 100),
        );
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("{\"accepted\":100,\"dropped\":0}"), "{text}");
        agent.kill9();
        total += 100;
        assert_eq!(
            w.queue_stats()["depth"],
            total as u64,
            "round {round}: acknowledged but not in the queue"
        );
    }
    let _sink = w.sink();
    let _agent = w.agent_as_configured();
    let out = wait_for_output(&w.output_dir(), total, Duration::from_secs(60));
    assert_eq!(out.len(), total);
}

/// 400 with the reason (nothing stored), 413 over the limit, 401 without the token.
#[test]
fn http_rejects_bad_requests_with_reasons() {
    let w = World::new();
    let port = tcp_port();
    w.agent_config_sources(
        "",
        "",
        &[w.port],
        &http_source(port, "max_body_bytes = 4096\nauth_token = \"s3cret\""),
    );
    let mut agent = w.agent_as_configured();
    let auth = ("Authorization", "Bearer s3cret");

    let (status, text) = http_post(port, "/ingest", &[], &ndjson(0, 1));
    assert_eq!(status, 401, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    let (status, _) = http_post(
        port,
        "/ingest",
        &[("Authorization", "Bearer wrong")],
        &ndjson(0, 1),
    );
    assert_eq!(status, 401);

    let (status, text) = http_post(port, "/ingest", &[auth], b"{\"ok\":1}\n{oops\n");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("line 2: invalid JSON"), "{text}");
    let (status, text) = http_post(port, "/ingest", &[auth], b"");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("empty body"), "{text}");

    let (status, text) = http_post(port, "/ingest", &[auth], &ndjson(0, 200));
    assert_eq!(status, 413, "{text}");

    let (status, text) = http_post(port, "/ingest", &[auth], &ndjson(0, 3));
    assert_eq!(status, 200, "{text}");
    agent.kill9();
    assert_eq!(
        w.queue_stats()["depth"],
        3,
        "only the good request was stored"
    );
}

/// `block` with a full queue: 503 with Retry-After; after the sink returns, everything that
/// got a 200 arrives exactly once, and new requests succeed again.
#[test]
fn http_full_queue_answers_503_and_loses_nothing() {
    let w = World::new();
    let port = tcp_port();
    w.agent_config_sources(
        "max_bytes = 60000",
        "when_full = \"block\"",
        &[w.port],
        &http_source(port, ""),
    );
    let _agent = w.agent_as_configured();
    let mut accepted = 0;
    let mut got_503 = false;
    for _ in 0..200 {
        let (status, text) = http_post(port, "/ingest", &[], &ndjson(accepted, 50));
        match status {
            200 => accepted += 50,
            503 => {
                assert!(
                    text.to_ascii_lowercase().contains("retry-after: 1"),
                    "{text}"
                );
                got_503 = true;
                break;
            }
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert!(got_503, "the queue never filled");
    let _sink = w.sink();
    let out = wait_for_output(&w.output_dir(), accepted, Duration::from_secs(60));
    assert_eq!(out.len(), accepted);
    let mut retried = false;
    for _ in 0..50 {
        if http_post(port, "/ingest", &[], &ndjson(accepted, 10)).0 == 200 {
            retried = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        retried,
        "after the sink drained the queue, requests succeed again"
    );
}
