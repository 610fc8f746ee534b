//! Network line sources: `tcp` (one task per connection, back-pressure through TCP flow
//! control) and `udp` (best-effort: a bounded buffer between socket and queue; what does
//! not fit is dropped and counted, never silently).
//!
//! Each record gets the peer address as the `peer` header. Neither protocol has an
//! application-level acknowledgement, so a line counts as taken once it is read; while the
//! queue refuses, a TCP connection holds its current lines and stops reading. TCP takes
//! at most `max_connections` at once (lowered to fit the open-files limit, as HTTP does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pipeline::Pipeline;
use crate::{Codec, NetSourceConfig};
use crate::{codec, lines};
use dataweaver_core::Record;

struct Ctx {
    source: String,
    topic: String,
    codec: Codec,
    max_line: usize,
    pipeline: Arc<Pipeline>,
    received: Arc<AtomicU64>,
}

impl Ctx {
    fn new(cfg: &NetSourceConfig, kind: &str, pipeline: Arc<Pipeline>) -> Ctx {
        let source = format!("{}/{}", pipeline.name, cfg.name.as_deref().unwrap_or(kind));
        let received = pipeline.counters.counter(&format!("{source}.received"));
        Ctx {
            topic: cfg.topic.clone().unwrap_or_else(|| pipeline.name.clone()),
            codec: cfg.codec,
            max_line: cfg.max_line_bytes,
            source,
            pipeline,
            received,
        }
    }

    fn records(&self, lines: Vec<Vec<u8>>, peer: &str) -> Vec<Record> {
        Record::from_lines(&self.source, &self.topic, Some(("peer", peer)), lines)
    }

    async fn emit(&self, records: Vec<Record>, shutdown: &CancellationToken) -> bool {
        let n = records.len() as u64;
        let (records, rejected) = codec::decode_lines(self.codec, self.max_line, records);
        match self
            .pipeline
            .emit_until_accepted(records, rejected, shutdown)
            .await
        {
            Ok(_) => {
                self.received.fetch_add(n, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!(source = %self.source, error = %e, lines = n, "lines not queued");
                false
            }
        }
    }
}

/// Accepts TCP connections until `shutdown`.
pub async fn run_tcp(cfg: NetSourceConfig, pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    let ctx = Arc::new(Ctx::new(&cfg, "tcp", pipeline));
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(source = %ctx.source, listen = %cfg.listen, error = %e, "cannot listen; source disabled");
            return;
        }
    };
    let max_connections = super::http::connection_budget(&ctx.source, cfg.max_connections);
    tracing::info!(source = %ctx.source, listen = %cfg.listen, max_connections, "tcp source listening");
    let refused = ctx
        .pipeline
        .counters
        .counter(&format!("{}.connections_refused", ctx.source));
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut last_refusal_log: Option<Instant> = None;
    let conns = TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over the limit the connection is closed at once (dropped): it costs
                    // its descriptor only for this moment, and the sender sees a reset.
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        drop(stream);
                        let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
                        if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            last_refusal_log = Some(Instant::now());
                            tracing::warn!(source = %ctx.source, max_connections, refused = n, "tcp connection limit reached; refusing new connections");
                        }
                        continue;
                    };
                    let (ctx, stop, max) = (ctx.clone(), shutdown.clone(), cfg.max_line_bytes);
                    conns.spawn(async move {
                        connection(stream, peer.to_string(), ctx, max, stop).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(source = %ctx.source, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
    conns.close();
    conns.wait().await;
}

async fn connection(
    mut stream: tokio::net::TcpStream,
    peer: String,
    ctx: Arc<Ctx>,
    max_line: usize,
    shutdown: CancellationToken,
) {
    // 64 KiB per connection: `max_connections` of them stay small.
    let mut buf = vec![0u8; 64 << 10];
    let mut carry = Vec::new();
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = stream.read(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(source = %ctx.source, %peer, error = %e, "connection error");
                    0
                }
            },
        };
        if n == 0 {
            // End of stream: an unterminated last line is still a line.
            if !carry.is_empty() {
                let last = std::mem::take(&mut carry);
                ctx.emit(ctx.records(vec![last], &peer), &shutdown).await;
            }
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        let lines = lines::split_lines(&mut carry, max_line);
        if !lines.is_empty() && !ctx.emit(ctx.records(lines, &peer), &shutdown).await {
            break;
        }
    }
}

/// Receives UDP datagrams until `shutdown`.
pub async fn run_udp(cfg: NetSourceConfig, pipeline: Arc<Pipeline>, shutdown: CancellationToken) {
    let ctx = Arc::new(Ctx::new(&cfg, "udp", pipeline));
    let dropped = ctx
        .pipeline
        .counters
        .counter(&format!("{}.dropped", ctx.source));
    let socket = match bind_udp(cfg.listen) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(source = %ctx.source, listen = %cfg.listen, error = %e, "cannot listen; source disabled");
            return;
        }
    };
    tracing::info!(source = %ctx.source, listen = %cfg.listen, "udp source listening (best-effort)");
    // The socket is drained by its own task into a bounded buffer, so a slow queue shows up
    // as counted drops here rather than as invisible kernel drops.
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, String)>(cfg.buffer_records.max(1));
    let receiver = {
        let (dropped, source, stop) = (dropped.clone(), ctx.source.clone(), shutdown.clone());
        let max_line = cfg.max_line_bytes;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let (n, peer) = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = socket.recv_from(&mut buf) => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(%source, error = %e, "udp receive error");
                            continue;
                        }
                    },
                };
                let mut datagram = buf[..n].to_vec();
                datagram.push(b'\n');
                let peer = peer.to_string();
                for line in lines::split_lines(&mut datagram, max_line) {
                    if tx.try_send((line, peer.clone())).is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = rx.recv() => match r { Some(x) => x, None => break },
        };
        batch.push(first);
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        let records: Vec<Record> = batch
            .drain(..)
            .flat_map(|(line, peer)| ctx.records(vec![line], &peer))
            .collect();
        ctx.emit(records, &shutdown).await;
    }
    receiver.abort();
    let lost = dropped.load(Ordering::Relaxed);
    if lost > 0 {
        tracing::warn!(source = %ctx.source, dropped = lost, "udp lines dropped (buffer full)");
    }
}

fn bind_udp(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}
