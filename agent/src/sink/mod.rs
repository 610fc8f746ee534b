//! The sink: a QUIC server that journals batches from agents and drains them to outputs.
//!
//! Data path: accept (mutual TLS; the agent id is the client certificate's CN) → read
//! `Hello` → `Welcome` → `Resolve` → `Resolved` (high-water mark) → for each `Batch`,
//! submit its bytes to the [`Journal`] and, once committed, send `Ack` (in order, on the
//! same stream); `Confirm` frames mark records as this sink's. A separate drainer moves
//! confirmed entries to the outputs.

pub mod journal;
pub mod output;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{OutputConfig, SinkConfig};
use crate::control::sink::ControlPlane;
use crate::counters::Counters;
use crate::tls;
use crate::wire::{self, AgentFrame, SinkFrame, agent_frame, sink_frame};
pub use journal::{Journal, JournalError};
use output::{JsonlOutput, Output, StdoutOutput};

/// Errors that stop the sink from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// TLS material unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Socket or output file error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The control store could not be opened.
    #[error("{0}")]
    Control(String),
}

/// A bound, running-ready sink.
pub struct Sink {
    endpoint: quinn::Endpoint,
    journal: Journal,
    control: Arc<ControlPlane>,
    counters: Arc<Counters>,
    admin: crate::config::AdminConfig,
    reload: Option<crate::admin::ReloadFn>,
    outputs: Vec<Box<dyn Output>>,
    sink_id: String,
}

impl Sink {
    /// Opens the journal and outputs and binds the QUIC endpoint.
    pub fn bind(cfg: &SinkConfig) -> Result<Sink, SinkError> {
        let server = tls::server_config(&cfg.tls, Duration::from_millis(cfg.idle_timeout_ms))?;
        let journal = Journal::open(&cfg.data_dir)?;
        let control =
            ControlPlane::open(&cfg.data_dir, cfg.admins.clone()).map_err(SinkError::Control)?;
        let positions = read_positions(&journal)?;
        let mut outputs: Vec<Box<dyn Output>> = Vec::new();
        for o in &cfg.outputs {
            match o {
                OutputConfig::Jsonl(j) => {
                    let position_of = |name: &str| {
                        positions
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, p)| p.clone())
                    };
                    outputs.push(Box::new(JsonlOutput::open(
                        &j.dir,
                        j.max_file_bytes,
                        crate::fsmode::parse_mode(&j.file_mode)
                            .unwrap_or(crate::fsmode::PRIVATE_FILE),
                        position_of,
                    )?));
                }
                OutputConfig::Stdout(_) => outputs.push(Box::new(StdoutOutput::new())),
            }
        }
        let sink_id = match &cfg.sink_id {
            Some(id) => id.clone(),
            None => tls::load_certs(&cfg.tls.cert)?
                .first()
                .and_then(tls::common_name)
                .unwrap_or_else(|| "sink".into()),
        };
        let reset_key = tls::stateless_reset_key(&cfg.data_dir)?;
        let socket = std::net::UdpSocket::bind(cfg.listen)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::new(reset_key),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Sink {
            endpoint,
            journal,
            control,
            counters: Arc::new(Counters::default()),
            admin: cfg.admin.clone(),
            reload: None,
            outputs,
            sink_id,
        })
    }

    /// Lets the admin endpoint's `POST /reload` call `reload`.
    pub fn set_reload(&mut self, reload: crate::admin::ReloadFn) {
        self.reload = Some(reload);
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown`, then stops accepting, lets streams finish and drains.
    pub async fn run(self, shutdown: CancellationToken) {
        let Sink {
            endpoint,
            journal,
            control,
            counters,
            admin,
            reload,
            outputs,
            sink_id,
        } = self;
        let admin_stop = CancellationToken::new();
        let admin_task = admin.enabled.then(|| {
            let view = crate::admin::SinkView {
                counters: counters.clone(),
                journal: journal.clone(),
                reload,
                started: std::time::Instant::now(),
            };
            let listen = admin.listen.unwrap_or_else(|| ADMIN_DEFAULT.into());
            tokio::spawn(crate::admin::serve(
                listen,
                Arc::new(view),
                admin_stop.clone(),
            ))
        });
        let tracker = TaskTracker::new();
        let drain_stop = CancellationToken::new();
        // The drainer blocks on file writes and fsyncs, so it gets a thread of its own
        // that drives its async waits with the runtime's handle.
        let handle = tokio::runtime::Handle::current();
        let (j, s) = (journal.clone(), drain_stop.clone());
        let drainer = std::thread::Builder::new()
            .name("sink-drainer".into())
            .spawn(move || handle.block_on(drain(j, outputs, s)));
        let sink_id = Arc::new(sink_id);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let (journal, sink_id, control) = (journal.clone(), sink_id.clone(), control.clone());
                    let counters = counters.clone();
                    tracker.spawn(async move {
                        if let Err(e) = serve_connection(incoming, journal, sink_id, control, counters).await {
                            tracing::info!(error = %e, "connection ended");
                        }
                    });
                }
            }
        }
        endpoint.close(0u32.into(), b"sink shutting down");
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), tracker.wait()).await;
        drain_stop.cancel();
        if let Ok(d) = drainer {
            let _ = tokio::task::spawn_blocking(move || d.join()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        admin_stop.cancel();
        if let Some(a) = admin_task {
            let _ = a.await;
        }
    }
}

/// Default address of a sink's admin endpoint.
pub const ADMIN_DEFAULT: ([u8; 4], u16) = ([127, 0, 0, 1], 7411);

fn read_positions(journal: &Journal) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
    use redb::{ReadableDatabase, ReadableTable};
    journal.with_db(|d| {
        let txn = d.begin_read().map_err(journal::db)?;
        let t = txn.open_table(journal::CURSOR).map_err(journal::db)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(journal::db)? {
            let (k, v) = e.map_err(journal::db)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    })
}

async fn serve_connection(
    incoming: quinn::Incoming,
    journal: Journal,
    sink_id: Arc<String>,
    control: Arc<ControlPlane>,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused connection (TLS handshake failed)");
            return Ok(());
        }
    };
    let Some(agent) = tls::peer_id(&conn) else {
        tracing::warn!(%remote, "refused connection: client certificate has no common name");
        conn.close(1u32.into(), b"no agent identity");
        return Ok(());
    };
    tracing::info!(%remote, %agent, "agent connected");
    counters
        .counter("sink.connections_opened")
        .fetch_add(1, Ordering::Relaxed);
    let closed = counters.counter("sink.connections_closed");
    let _count_close = scopeguard(move || {
        closed.fetch_add(1, Ordering::Relaxed);
    });
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => return Err(format!("agent {agent}: {e}")),
        };
        let (journal, agent, sink_id) = (journal.clone(), agent.clone(), sink_id.clone());
        let (control, counters) = (control.clone(), counters.clone());
        tokio::spawn(async move {
            if let Err(e) =
                serve_stream(send, recv, &journal, &agent, &sink_id, control, counters).await
            {
                tracing::info!(%agent, error = %e, "stream ended");
            }
        });
    }
}

/// Serves one stream by its first frame: a data stream (`Hello`), an agent's control
/// stream (`ControlHello`) or an operator's request (`Admin`).
async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    journal: &Journal,
    agent: &str,
    sink_id: &str,
    control: Arc<ControlPlane>,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let first = wire::read_frame_max::<AgentFrame>(&mut recv, wire::MAX_CONTROL_FRAME)
        .await
        .map_err(|e| e.to_string())?;
    let hello = match first.and_then(|f| f.kind) {
        Some(agent_frame::Kind::Hello(h)) => h,
        Some(agent_frame::Kind::ControlHello(h)) => {
            return control.serve_agent(agent.into(), h, send, recv).await;
        }
        Some(agent_frame::Kind::Admin(req)) => {
            let reply = control.admin(agent, req).await;
            let frame = SinkFrame {
                kind: Some(sink_frame::Kind::AdminReply(reply)),
            };
            wire::write_frame(&mut send, &frame)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            // Let the reply reach the client before the stream is dropped.
            let _ = send.stopped().await;
            return Ok(());
        }
        other => return Err(format!("expected hello, got {other:?}")),
    };
    if hello.protocol_version != wire::PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} not supported (sink speaks {})",
            hello.protocol_version,
            wire::PROTOCOL_VERSION
        );
        let refusal = SinkFrame {
            kind: Some(sink_frame::Kind::Refusal(wire::Refusal {
                reason: reason.clone(),
            })),
        };
        let _ = wire::write_frame(&mut send, &refusal).await;
        let _ = send.finish();
        return Err(reason);
    }
    let queue_id = hello.queue_id;
    let welcome = SinkFrame {
        kind: Some(sink_frame::Kind::Welcome(wire::Welcome {
            protocol_version: wire::PROTOCOL_VERSION,
            sink_id: sink_id.into(),
            journal_id: journal.id().into(),
        })),
    };
    wire::write_frame(&mut send, &welcome)
        .await
        .map_err(|e| e.to_string())?;
    let resolve = match wire::read_frame::<AgentFrame>(&mut recv)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(AgentFrame {
            kind: Some(agent_frame::Kind::Resolve(r)),
        }) => r,
        other => return Err(format!("expected resolve, got {other:?}")),
    };
    let hwm = journal
        .resolve(
            agent,
            &queue_id,
            resolve.confirm_upto,
            resolve.delivered_upto,
        )
        .await?;
    let resolved = SinkFrame {
        kind: Some(sink_frame::Kind::Resolved(wire::Resolved {
            high_water_mark: hwm,
        })),
    };
    wire::write_frame(&mut send, &resolved)
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!(%agent, %queue_id, hwm, "stream welcomed");

    // Acks go out in batch order from their own task, each after its commit.
    let (pending_tx, mut pending) =
        mpsc::channel::<(u64, tokio::sync::oneshot::Receiver<Result<u64, String>>)>(64);
    let acker = tokio::spawn(async move {
        while let Some((batch_id, done)) = pending.recv().await {
            let last_seq = match done.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("journal: {e}")),
                Err(_) => return Err("journal closed".into()),
            };
            let ack = SinkFrame {
                kind: Some(sink_frame::Kind::Ack(wire::Ack { batch_id, last_seq })),
            };
            wire::write_frame(&mut send, &ack)
                .await
                .map_err(|e| e.to_string())?;
        }
        let _ = send.finish();
        Ok::<(), String>(())
    });
    let result = async {
        loop {
            // Batches stay encoded: only their seqs are read here, the bytes are journaled
            // as they came (decoding and re-encoding every record cost a fifth of the sink).
            let frame = match wire::read_frame::<wire::AgentFrameRaw>(&mut recv)
                .await
                .map_err(|e| e.to_string())?
            {
                None => return Ok(()),
                Some(f) => f,
            };
            if let Some(c) = frame.confirm {
                journal
                    .confirm(agent, &queue_id, c.upto_seq)
                    .await
                    .map_err(|e| e.to_string())?;
                continue;
            }
            let Some(raw) = frame.batch else {
                return Err("expected batch or confirm".to_string());
            };
            let seqs = wire::BatchSeqs::decode(raw.clone())
                .map_err(|e| format!("malformed batch: {e}"))?;
            let (Some(first), Some(last)) = (seqs.records.first(), seqs.records.last()) else {
                return Err("empty batch".to_string());
            };
            if seqs.records.windows(2).any(|w| w[0].seq >= w[1].seq) {
                return Err("batch seqs not ascending".to_string());
            }
            let batch = wire::Batch {
                batch_id: seqs.batch_id,
                records: Vec::new(),
            };
            counters
                .counter("sink.batches")
                .fetch_add(1, Ordering::Relaxed);
            counters
                .counter("sink.records")
                .fetch_add(seqs.records.len() as u64, Ordering::Relaxed);
            counters
                .counter("sink.bytes")
                .fetch_add(raw.len() as u64, Ordering::Relaxed);
            let done = journal
                .submit(agent, &queue_id, raw, first.seq, last.seq)
                .await
                .map_err(|e| e.to_string())?;
            if pending_tx.send((batch.batch_id, done)).await.is_err() {
                return Err("ack writer stopped".to_string());
            }
        }
    }
    .await;
    drop(pending_tx);
    let acked = acker.await.map_err(|e| e.to_string())?;
    result.and(acked)
}

/// Moves confirmed journal entries to the outputs, committing positions after each round.
async fn drain(journal: Journal, mut outputs: Vec<Box<dyn Output>>, stop: CancellationToken) {
    let mut changed = journal.changed();
    loop {
        changed.borrow_and_update();
        // Writes and fsyncs: in place on this task's own thread (see `Sink::run`).
        match drain_round(&journal, &mut outputs) {
            Ok(0) => {
                tokio::select! {
                    r = changed.changed() => if r.is_err() { break },
                    _ = stop.cancelled() => break,
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "output drain failed; retrying");
                // If it was the journal's storage, redb needs a reopen before anything works.
                journal.reopen().await;
                for o in outputs.iter_mut() {
                    if let Err(e) = o.rollback() {
                        tracing::error!(output = %o.name(), error = %e, "output rollback failed");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
}

/// Writes one round of confirmed entries to every output, then commits their positions and
/// deletes the entries in one transaction. Returns how many entries were drained.
fn drain_round(journal: &Journal, outputs: &mut [Box<dyn Output>]) -> Result<usize, String> {
    // A few MiB per round: big enough that the fsyncs amortise, small enough to keep the
    // sink's memory flat while a backlog drains.
    let entries = journal.read_drainable(4 << 20).map_err(|e| e.to_string())?;
    if entries.is_empty() {
        return Ok(0);
    }
    for o in outputs.iter_mut() {
        o.write(&entries)
            .map_err(|e| format!("{}: {e}", o.name()))?;
    }
    let keys: Vec<u64> = entries.iter().map(|(k, _)| *k).collect();
    journal
        .with_db(|d| {
            let txn = d.begin_write().map_err(journal::db)?;
            {
                let mut c = txn.open_table(journal::CURSOR).map_err(journal::db)?;
                for o in outputs.iter() {
                    let p = o.position();
                    if !p.is_empty() {
                        c.insert(o.name().as_str(), p.as_slice())
                            .map_err(journal::db)?;
                    }
                }
            }
            journal::delete_entries(&txn, &keys)?;
            txn.commit().map_err(journal::db)
        })
        .map_err(|e| e.to_string())?;
    for o in outputs.iter_mut() {
        o.committed();
    }
    Ok(entries.len())
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
