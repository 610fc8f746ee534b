//! Sink: hostile frames and records, journal gaps and corruption, limits (issue 12: 1, 2, 12, 15, 16, 17).
//!
//! The hostile agent here is a raw QUIC client with a valid agent certificate that speaks
//! the protocol itself (`dataweaver::wire`), so it can send what no real agent would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dataweaver::tls;
use dataweaver::wire::{self, AgentFrame, SinkFrame, agent_frame};
use prost::Message;

use crate::util::*;

/// A QUIC connection to the world's sink as agent `name`, retried while the sink starts.
async fn raw_connect(w: &World, name: &str) -> (quinn::Endpoint, quinn::Connection) {
    let c = w.certs();
    let material = tls::TlsMaterial::load(
        &c.join("ca.pem"),
        Some((
            &c.join(format!("{name}.pem")),
            &c.join(format!("{name}.key")),
        )),
    )
    .unwrap();
    let client = tls::client_config(&material, Duration::from_secs(5)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let addr: SocketAddr = format!("127.0.0.1:{}", w.port).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = endpoint.connect(addr, "localhost").unwrap();
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(conn)) => return (endpoint, conn),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("cannot connect to the sink: {other:?}"),
        }
    }
}

async fn send(s: &mut quinn::SendStream, kind: agent_frame::Kind) {
    wire::write_frame(s, &AgentFrame { kind: Some(kind) })
        .await
        .unwrap();
}

/// The sink's next frame on a stream, as text (`None`: the stream or connection ended).
async fn answer(r: &mut quinn::RecvStream) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(10), wire::read_frame::<SinkFrame>(r)).await {
        Ok(Ok(Some(f))) => Some(format!("{:?}", f.kind)),
        _ => None,
    }
}

/// Opens a data stream: Hello with `queue_id`; Welcome → Resolve(0, 0) → Resolved.
/// Returns the stream, or the first answer that was not a Welcome.
async fn data_stream(
    conn: &quinn::Connection,
    queue_id: &str,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let hello = wire::Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        queue_id: queue_id.into(),
        agent_version: "raw".into(),
    };
    wire::write_frame(
        &mut s,
        &AgentFrame {
            kind: Some(agent_frame::Kind::Hello(hello)),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let welcome = answer(&mut r).await.unwrap_or_default();
    if !welcome.contains("Welcome") {
        return Err(welcome);
    }
    send(
        &mut s,
        agent_frame::Kind::Resolve(wire::Resolve {
            confirm_upto: 0,
            delivered_upto: 0,
            ..Default::default()
        }),
    )
    .await;
    let resolved = answer(&mut r).await.unwrap_or_default();
    if !resolved.contains("Resolved") {
        return Err(resolved);
    }
    Ok((s, r))
}

/// A `Batch` frame written by hand: record 1 with a `source` that is not UTF-8, record 2
/// with `topic` sent as a varint (the wrong wire type).
fn hostile_batch_frame() -> Vec<u8> {
    let mut r1 = Vec::new();
    prost::encoding::uint64::encode(1, &1u64, &mut r1);
    prost::encoding::bytes::encode(3, &vec![0xffu8, 0xfe, b'x'], &mut r1);
    prost::encoding::bytes::encode(7, &b"hostile".to_vec(), &mut r1);
    let mut r2 = Vec::new();
    prost::encoding::uint64::encode(1, &2u64, &mut r2);
    prost::encoding::uint64::encode(4, &5u64, &mut r2);
    let mut batch = Vec::new();
    prost::encoding::uint64::encode(1, &1u64, &mut batch);
    prost::encoding::bytes::encode(2, &r1, &mut batch);
    prost::encoding::bytes::encode(2, &r2, &mut batch);
    // AgentFrame.batch (field 2), length-prefixed.
    let mut frame = Vec::new();
    prost::encoding::bytes::encode(2, &batch, &mut frame);
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

fn sink_rss_kib(sink: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", sink.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Issue 12, defect 1: a raw client with a valid agent certificate sent a batch with a
/// non-UTF-8 `source` and a field of the wrong wire type, and confirmed it. The sink acked
/// it (it read only the seqs); then the drain failed on that entry every second and no
/// agent's records reached an output again, across restarts. Now the batch is rejected
/// before it is journaled, and every other agent's records flow, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_record_from_one_agent_does_not_stop_the_output_for_all() {
    let w = World::new();
    w.issue("edge-2", &[]);
    let mut sink = w.sink();
    let (_ep, conn) = raw_connect(&w, "edge-2").await;
    let (mut s, mut r) = data_stream(&conn, "hostile0queue").await.unwrap();
    s.write_all(&hostile_batch_frame()).await.unwrap();
    let reply = answer(&mut r).await;
    send(
        &mut s,
        agent_frame::Kind::Confirm(wire::Confirm { upto_seq: 2 }),
    )
    .await;
    let mut agent = w.agent();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 64);
    lines.write(100);
    let out = wait_for_output(&w.output_dir(), 100, Duration::from_secs(20));
    assert_exactly_once(&out, 100);
    assert!(
        reply.as_deref().is_some_and(|r| r.contains("Rejected")),
        "the invalid batch must be rejected, not acked: {reply:?}"
    );
    conn.close(0u32.into(), b"done");
    // A restart of the sink changes nothing.
    sink.kill9();
    let _sink = w.sink();
    lines.write(100);
    let out = wait_for_output(&w.output_dir(), 200, Duration::from_secs(20));
    assert_exactly_once(&out, 200);
    assert!(
        out.iter().all(|l| l.agent == "edge-1"),
        "nothing of the hostile batch is output"
    );
    agent.kill9();
}

/// Issue 12, defect 16: a huge `queue_id` in Hello became a journal key (sink RSS 24 →
/// 652 MB, journal 1.1 GB). Now a queue id must be short and of a safe character set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_or_odd_queue_id_is_refused() {
    let w = World::new();
    let _sink = w.sink();
    let (_ep, conn) = raw_connect(&w, "edge-1").await;
    for bad in ["q".repeat(4000), "a/b".to_string(), String::new()] {
        let refused = data_stream(&conn, &bad).await.err();
        assert!(
            refused.is_some(),
            "queue id of {} bytes must be refused",
            bad.len()
        );
    }
    // A 1 MiB queue id is refused by the first-frame limit before it is even read whole.
    let refused = data_stream(&conn, &"q".repeat(1 << 20)).await.err();
    assert!(refused.is_some());
    assert!(data_stream(&conn, "0123456789abcdef").await.is_ok());
}

/// Issue 12, defect 17: dedup keys were `"{agent}/{queue}"`, so a certificate named
/// `edge-1/x` could raise edge-1's high-water mark. Keys are structured now, and the sink
/// refuses certificate names outside ASCII letters, digits, `-`, `_` and `.`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_name_outside_the_safe_set_is_refused() {
    let w = World::new();
    w.issue("edge-1@evil", &[]);
    let _sink = w.sink();
    let (_ep, good) = raw_connect(&w, "edge-1").await;
    assert!(data_stream(&good, "q1").await.is_ok());
    let (_ep2, bad) = raw_connect(&w, "edge-1@evil").await;
    let refused = data_stream(&bad, "q1").await.err();
    assert!(refused.is_some(), "a name with `@` must be refused");
}

/// Issue 12, defect 15: the first frame of any stream could claim 64 MiB and was buffered
/// before its type was known (6 partial frames: sink RSS 15 → 201 MB), and connections per
/// agent were unlimited. Now the first frame is limited to 64 KiB, buffers grow only as
/// bytes arrive, and connections and streams per agent are capped; other agents deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frames_and_connection_floods_from_one_agent_stay_bounded() {
    let w = World::new();
    w.issue("edge-2", &[]);
    let sink = w.sink();
    let (_ep, probe) = raw_connect(&w, "edge-2").await;
    probe.close(0u32.into(), b"ready");
    let before = sink_rss_kib(&sink);
    let mut conns = Vec::new();
    let mut streams = Vec::new();
    let chunk = vec![0x42u8; 256 * 1024];
    for _ in 0..20 {
        let (ep, conn) = raw_connect(&w, "edge-2").await;
        for _ in 0..6 {
            let Ok((mut s, r)) = conn.open_bi().await else {
                break;
            };
            // Claim a 60 MiB frame, send 1 MiB of it, never finish.
            let _ = s.write_all(&(60u32 << 20).to_be_bytes()).await;
            for _ in 0..4 {
                let _ = tokio::time::timeout(Duration::from_millis(500), s.write_all(&chunk)).await;
            }
            streams.push((s, r));
        }
        conns.push((ep, conn));
    }
    // The flood is on; an honest agent still delivers.
    let _agent = w.agent();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 64);
    lines.write(100);
    let out = wait_for_output(&w.output_dir(), 100, Duration::from_secs(30));
    assert_exactly_once(&out, 100);
    let grown_mib = sink_rss_kib(&sink).saturating_sub(before) / 1024;
    let accepted = conns
        .iter()
        .filter(|(_, c)| c.close_reason().is_none())
        .count();
    assert!(
        grown_mib < 64,
        "one agent's partial frames grew the sink by {grown_mib} MiB ({accepted} connections open)"
    );
    assert!(
        accepted <= 16,
        "{accepted} connections of one agent are open (limits.max_connections_per_agent = 16)"
    );
    drop(streams);
    drop(conns);
}

/// Issue 12, defect 12: a journal with flipped bytes made the sink fail (or panic) at
/// open on every start. Now the file is set aside, what decodes is salvaged, the sink
/// starts, and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_the_journal_do_not_stop_the_sink() {
    let w = World::new();
    let mut sink = w.sink();
    let mut agent = w.agent();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 64);
    lines.write(300);
    wait_for_output(&w.output_dir(), 300, Duration::from_secs(20));
    sigterm(&mut sink);
    let path = w.path("sink/data/journal.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for off in [4096usize, len / 2, len.saturating_sub(8192)] {
        if let Some(b) = bytes.get_mut(off..off + 512) {
            b.iter_mut().for_each(|x| *x ^= 0xa5);
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let mut sink = w.sink();
    lines.write(100);
    let out = wait_for_output(&w.output_dir(), 400, Duration::from_secs(30));
    assert_exactly_once(&out, 400);
    let aside = std::fs::read_dir(w.path("sink/data"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .count();
    assert_eq!(aside, 1, "the corrupt journal is kept aside");
    assert!(sink.child.try_wait().unwrap().is_none(), "the sink runs");
    agent.kill9();
    sink.kill9();
}

/// The hand-written hostile frame is what it claims to be (guards the test itself).
#[test]
fn hostile_batch_frame_is_well_framed() {
    let f = hostile_batch_frame();
    let len = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
    assert_eq!(len, f.len() - 4);
    let raw = wire::AgentFrameRaw::decode(&f[4..]).unwrap();
    assert!(raw.batch.is_some());
    assert!(wire::Batch::decode(raw.batch.unwrap()).is_err());
}

/// A stand-in sink that refuses every batch with `Rejected`, as the real one does for
/// invalid records; returns how many batches it refused.
async fn rejecting_sink(
    c: std::path::PathBuf,
    port: u16,
    stop: tokio_util::sync::CancellationToken,
) -> usize {
    let files = dataweaver::config::TlsFiles {
        ca: c.join("ca.pem"),
        cert: c.join("sink.pem"),
        key: c.join("sink.key"),
    };
    let server = tls::server_config(&files.load().unwrap(), Duration::from_secs(5)).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let endpoint = quinn::Endpoint::server(server, addr).unwrap();
    let rejected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stop.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let rejected = rejected.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut s, mut r)) = conn.accept_bi().await {
                let rejected = rejected.clone();
                tokio::spawn(async move {
                    let sink_frame = |kind| SinkFrame { kind: Some(kind) };
                    use wire::sink_frame::Kind;
                    while let Ok(Some(f)) = wire::read_frame::<AgentFrame>(&mut r).await {
                        let reply = match f.kind {
                            Some(agent_frame::Kind::Hello(_)) => Kind::Welcome(wire::Welcome {
                                protocol_version: wire::PROTOCOL_VERSION,
                                sink_id: "rejecting".into(),
                                journal_id: "0000000000000001".into(),
                            }),
                            Some(agent_frame::Kind::Resolve(_)) => {
                                Kind::Resolved(wire::Resolved { high_water_mark: 0 })
                            }
                            Some(agent_frame::Kind::Batch(b)) => {
                                rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                Kind::Rejected(wire::Rejected {
                                    batch_id: b.batch_id,
                                    last_seq: b.records.last().map_or(0, |r| r.seq),
                                    reason: "record 0 (seq 1): source is not UTF-8".into(),
                                })
                            }
                            _ => continue,
                        };
                        if wire::write_frame(&mut s, &sink_frame(reply)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    endpoint.close(0u32.into(), b"bye");
    rejected.load(std::sync::atomic::Ordering::Relaxed)
}

/// Issue 12, defect 1 (the agent's side): a batch the sink refuses as invalid must not be
/// lost silently nor block the queue: the agent moves its records to its dead-letter table
/// with the sink's reason and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rejected_by_the_sink_becomes_dead_letters() {
    let w = World::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let sink = tokio::spawn(rejecting_sink(w.certs(), w.port, stop.clone()));
    let mut agent = w.agent();
    let mut lines = LineWriter::new(&w.path("input/app.log"), 64);
    lines.write(20);
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let s = std::fs::read_to_string(w.path("agent.log")).unwrap_or_default();
        if s.contains("the sink refused a batch") || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Let the dead letters commit, then stop the agent to read its queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&mut agent);
    stop.cancel();
    let refused = sink.await.unwrap();
    let dead = dead_letters(&w);
    assert_eq!(
        dead.len(),
        20,
        "every refused record is a dead letter ({refused} batches refused)\n{stats}"
    );
    assert!(
        dead.iter().all(|d| d["dead_letter_reason"]
            .as_str()
            .is_some_and(|r| r.contains("not UTF-8"))),
        "{dead:?}"
    );
}
