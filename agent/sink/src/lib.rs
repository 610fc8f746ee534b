//! The sink: a QUIC server that journals batches from agents and drains them to outputs.
//!
//! Data path: accept (mutual TLS; the agent id is the client certificate's CN) → read
//! `Hello` → `Welcome` → `Resolve` → `Resolved` (high-water mark) → for each `Batch`,
//! check every record ([`wire::scan_batch`]), submit its bytes to the [`Journal`] and,
//! once committed, send `Ack` (or `Rejected` for an invalid batch; in order, on the same
//! stream); `Confirm` frames mark records as this sink's. A separate drainer moves
//! confirmed entries to the outputs.
//!
//! # What one agent can hold (trust boundary: an agent certificate may be stolen)
//! - Certificate names and queue ids outside [`wire::valid_id`] are refused.
//! - The first frame of a stream may be at most [`wire::MAX_FIRST_FRAME`] (an admin
//!   request from an admin: [`wire::MAX_CONTROL_FRAME`]); a frame's buffer grows only as
//!   its bytes arrive.
//! - `[limits]`: connections in total and per agent, streams in total and per agent.

#![warn(missing_docs, unreachable_pub)]

mod config;
#[cfg(test)]
pub(crate) mod crash_tests;
pub mod journal;
pub mod output;
#[cfg(test)]
mod sim;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{JsonlOutputConfig, OutputConfig, SinkConfig, SinkLimits, StdoutOutputConfig};
use dataweaver_control::sink::ControlPlane;
use dataweaver_core::Counters;
use dataweaver_tls as tls;
use dataweaver_wire::session::sink::{self as stream, Effect, SinkStream};
use dataweaver_wire::{self as wire, AgentFrame, SinkFrame, agent_frame, sink_frame};
pub use journal::{Journal, JournalError, JournalOptions, Outcome, Refused};
use output::Output;

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
    Control(#[from] dataweaver_control::sink::ControlError),
    /// The config names an output this binary was built without.
    #[error(
        "the `{output}` output is not built into this binary (cargo feature `output-{output}`)"
    )]
    NotBuilt {
        /// The output's `type`.
        output: &'static str,
    },
}

/// A bound, running-ready sink.
pub struct Sink {
    endpoint: quinn::Endpoint,
    journal: Journal,
    control: Arc<ControlPlane>,
    counters: Arc<Counters>,
    admin: dataweaver_admin::AdminConfig,
    reload: Option<dataweaver_admin::ReloadFn>,
    outputs: Vec<Box<dyn Output>>,
    sink_id: String,
    gate: Arc<Gate>,
    admins: Arc<Vec<String>>,
}

impl Sink {
    /// Opens the journal and outputs and binds the QUIC endpoint.
    pub fn bind(cfg: &SinkConfig) -> Result<Sink, SinkError> {
        let idle = Duration::from_millis(cfg.idle_timeout_ms);
        let material = cfg.tls.load()?;
        let mut server = tls::server_config(&material, idle)?;
        let mut transport = tls::transport_config(idle);
        // One connection can never hold more streams than its agent may; agents use no
        // unidirectional streams.
        let per_conn = u32::try_from(cfg.limits.max_streams_per_agent).unwrap_or(u32::MAX);
        transport
            .max_concurrent_bidi_streams(per_conn.into())
            .max_concurrent_uni_streams(0u32.into());
        server.transport_config(Arc::new(transport));
        server.max_incoming(cfg.limits.max_connections);
        let journal = Journal::open_with(
            &cfg.data_dir,
            JournalOptions {
                max_queues_per_agent: cfg.limits.max_queues_per_agent,
                max_unconfirmed_bytes_per_queue: cfg.limits.max_unconfirmed_bytes_per_queue,
                max_journal_bytes_per_agent: cfg.limits.max_journal_bytes_per_agent,
            },
        )?;
        let control =
            ControlPlane::open(&cfg.data_dir, cfg.admins.clone()).map_err(SinkError::Control)?;
        let positions = read_positions(&journal)?;
        let outputs = cfg
            .outputs
            .iter()
            .map(|o| output::open(o, &positions))
            .collect::<Result<Vec<_>, _>>()?;
        let sink_id = match &cfg.sink_id {
            Some(id) => id.clone(),
            None => material.common_name().unwrap_or_else(|| "sink".into()),
        };
        let reset_key = tls::stateless_reset_key(&cfg.data_dir)?;
        let socket = tls::udp_socket(cfg.listen, false)?;
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
            gate: Arc::new(Gate::new(cfg.limits.clone())),
            admins: Arc::new(cfg.admins.clone()),
        })
    }

    /// Lets the admin endpoint's `POST /reload` call `reload`.
    pub fn set_reload(&mut self, reload: dataweaver_admin::ReloadFn) {
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
            gate,
            admins,
        } = self;
        let admin_stop = CancellationToken::new();
        let admin_task = admin.enabled.then(|| {
            let view = dataweaver_admin::SinkView {
                counters: counters.clone(),
                journal_failing: {
                    let journal = journal.clone();
                    Arc::new(move || journal.failing())
                },
                reload,
                started: std::time::Instant::now(),
            };
            let listen = admin.listen.unwrap_or_else(|| ADMIN_DEFAULT.into());
            tokio::spawn(dataweaver_admin::serve(
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
        let (j, s, c) = (journal.clone(), drain_stop.clone(), counters.clone());
        let drainer = std::thread::Builder::new()
            .name("sink-drainer".into())
            .spawn(move || handle.block_on(drain(j, outputs, s, c)));
        let sink_id = Arc::new(sink_id);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    // Counted from the handshake on, so handshakes cannot pile up either.
                    let Some(permit) = gate.connection() else {
                        counters.counter("sink.connections_refused").fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(remote = %incoming.remote_address(), "refused connection: limits.max_connections reached");
                        incoming.refuse();
                        continue;
                    };
                    let ctx = Ctx {
                        journal: journal.clone(),
                        sink_id: sink_id.clone(),
                        control: control.clone(),
                        counters: counters.clone(),
                        gate: gate.clone(),
                        admins: admins.clone(),
                    };
                    tracker.spawn(async move {
                        let _permit = permit;
                        if let Err(e) = serve_connection(incoming, ctx).await {
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

pub(crate) fn read_positions(journal: &Journal) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
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

/// What every connection and stream task needs.
#[derive(Clone)]
struct Ctx {
    journal: Journal,
    sink_id: Arc<String>,
    control: Arc<ControlPlane>,
    counters: Arc<Counters>,
    gate: Arc<Gate>,
    admins: Arc<Vec<String>>,
}

/// Counts open connections and streams, in total and per agent, against `[limits]`.
struct Gate {
    limits: SinkLimits,
    state: Mutex<GateState>,
    /// Frame bytes all agents may hold (`limits.max_frame_bytes`).
    frames: Arc<Semaphore>,
}

#[derive(Default)]
struct GateState {
    connections: usize,
    streams: usize,
    agents: HashMap<String, AgentCount>,
}

/// What one agent holds open.
struct AgentCount {
    connections: usize,
    streams: usize,
    /// Frame bytes its streams may still hold (`limits.max_frame_bytes_per_agent`).
    frames: Arc<Semaphore>,
}

/// The memory a stream's frames may take: its agent's share and the sink's.
struct FrameBudget {
    agent: Arc<Semaphore>,
    all: Arc<Semaphore>,
}

/// Budget held by one frame until it is acknowledged.
type Held = Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>;

impl FrameBudget {
    /// Waits until `len` bytes fit the agent's share, then the sink's (`None`: closed).
    async fn reserve(&self, len: usize) -> Held {
        let n = u32::try_from(len.max(1)).ok()?;
        let agent = self.agent.clone().acquire_many_owned(n).await.ok()?;
        let all = self.all.clone().acquire_many_owned(n).await.ok()?;
        Some((agent, all))
    }
}

/// A byte budget as semaphore permits (tokio's maximum is far above any sane limit).
fn permits(bytes: u64) -> usize {
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// A counted connection or stream; uncounted when dropped.
struct Permit {
    gate: Arc<Gate>,
    agent: Option<String>,
    stream: bool,
}

impl Gate {
    fn new(limits: SinkLimits) -> Gate {
        Gate {
            frames: Arc::new(Semaphore::new(permits(limits.max_frame_bytes))),
            limits,
            state: Mutex::new(GateState::default()),
        }
    }

    /// A new agent's counts.
    fn agent_count(&self) -> AgentCount {
        AgentCount {
            connections: 0,
            streams: 0,
            frames: Arc::new(Semaphore::new(permits(
                self.limits.max_frame_bytes_per_agent,
            ))),
        }
    }

    /// The frame budget of `agent`'s streams (while one is open, its share stays the same).
    fn frame_budget(&self, agent: &str) -> FrameBudget {
        let agent = self
            .lock()
            .agents
            .get(agent)
            .map(|a| a.frames.clone())
            // Not reached: a stream's permit keeps its agent's entry.
            .unwrap_or_else(|| self.agent_count().frames);
        FrameBudget {
            agent,
            all: self.frames.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The counts stay consistent even if a holder panicked: every change is one step.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection slot (before the agent is known), if the total allows one.
    fn connection(self: &Arc<Self>) -> Option<Permit> {
        let mut st = self.lock();
        if st.connections >= self.limits.max_connections {
            return None;
        }
        st.connections += 1;
        Some(Permit {
            gate: self.clone(),
            agent: None,
            stream: false,
        })
    }

    /// Counts a handshaken connection for `agent`; the reason if it has too many.
    fn agent_connection(self: &Arc<Self>, agent: &str) -> Result<Permit, String> {
        let mut st = self.lock();
        let e = st
            .agents
            .entry(agent.to_string())
            .or_insert_with(|| self.agent_count());
        if e.connections >= self.limits.max_connections_per_agent {
            return Err(format!(
                "agent {agent} has {} connections open (limits.max_connections_per_agent)",
                e.connections
            ));
        }
        e.connections += 1;
        Ok(Permit {
            gate: self.clone(),
            agent: Some(agent.to_string()),
            stream: false,
        })
    }

    /// Counts a stream of `agent`; the reason if the agent or the sink has too many.
    fn stream(self: &Arc<Self>, agent: &str) -> Result<Permit, String> {
        let mut st = self.lock();
        if st.streams >= self.limits.max_streams {
            return Err("limits.max_streams reached".into());
        }
        let e = st
            .agents
            .entry(agent.to_string())
            .or_insert_with(|| self.agent_count());
        if e.streams >= self.limits.max_streams_per_agent {
            return Err(format!(
                "agent {agent} has {} streams open (limits.max_streams_per_agent)",
                e.streams
            ));
        }
        e.streams += 1;
        st.streams += 1;
        Ok(Permit {
            gate: self.clone(),
            agent: Some(agent.to_string()),
            stream: true,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        match &self.agent {
            None => st.connections = st.connections.saturating_sub(1),
            Some(a) => {
                if self.stream {
                    st.streams = st.streams.saturating_sub(1);
                }
                let gone = match st.agents.get_mut(a) {
                    Some(e) => {
                        if self.stream {
                            e.streams = e.streams.saturating_sub(1);
                        } else {
                            e.connections = e.connections.saturating_sub(1);
                        }
                        e.connections == 0 && e.streams == 0
                    }
                    None => false,
                };
                if gone {
                    st.agents.remove(a);
                }
            }
        }
    }
}

async fn serve_connection(incoming: quinn::Incoming, ctx: Ctx) -> Result<(), String> {
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
    if !wire::valid_id(&agent, wire::MAX_AGENT_ID) {
        tracing::warn!(%remote, agent = %agent.escape_debug(), "refused connection: certificate name outside the safe set (ASCII letters, digits, - _ .; at most 128)");
        conn.close(1u32.into(), b"certificate name not allowed");
        return Ok(());
    }
    let _permit = match ctx.gate.agent_connection(&agent) {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(%remote, %agent, "refused connection: {why}");
            ctx.counters
                .counter("sink.connections_refused")
                .fetch_add(1, Ordering::Relaxed);
            conn.close(2u32.into(), b"too many connections");
            return Ok(());
        }
    };
    tracing::info!(%remote, %agent, "agent connected");
    ctx.counters
        .counter("sink.connections_opened")
        .fetch_add(1, Ordering::Relaxed);
    let closed = ctx.counters.counter("sink.connections_closed");
    let _count_close = scopeguard(move || {
        closed.fetch_add(1, Ordering::Relaxed);
    });
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => return Err(format!("agent {agent}: {e}")),
        };
        let permit = match ctx.gate.stream(&agent) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(%agent, "refused stream: {why}");
                let _ = send.reset(2u32.into());
                let _ = recv.stop(2u32.into());
                continue;
            }
        };
        let (ctx, agent) = (ctx.clone(), agent.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_stream(send, recv, &ctx, &agent).await {
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
    ctx: &Ctx,
    agent: &str,
) -> Result<(), String> {
    let Ctx {
        journal,
        sink_id,
        control,
        counters,
        ..
    } = ctx;
    // Only an admin's request may be large (it carries the module it pushes); anything
    // else must say what it is within a small first frame.
    let is_admin = ctx.admins.iter().any(|a| a == agent);
    let first = wire::read_frame_by_kind::<AgentFrame>(&mut recv, |tag| {
        if tag == wire::ADMIN_FRAME_TAG && is_admin {
            wire::MAX_CONTROL_FRAME
        } else {
            wire::MAX_FIRST_FRAME
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let hello = match first.and_then(|f| f.kind) {
        Some(agent_frame::Kind::Hello(h)) => h,
        Some(agent_frame::Kind::ControlHello(h)) => {
            return control
                .clone()
                .serve_agent(agent.into(), h, send, recv)
                .await
                .map_err(|e| e.to_string());
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
    let mut core = SinkStream::new(sink_id, journal.id());
    core.hello(hello);
    // Until resolved, frames are small and read one at a time.
    while !core.is_streaming() {
        match core.poll() {
            Some(Effect::Send(frame)) => wire::write_frame(&mut send, &frame)
                .await
                .map_err(|e| e.to_string())?,
            Some(Effect::Resolve { queue_id, resolve }) => {
                core.resolved(journal.resolve(agent, &queue_id, &resolve).await);
            }
            Some(Effect::Closed(r)) => {
                let _ = send.finish();
                return r;
            }
            Some(other) => return Err(format!("unexpected {other:?} before resolve")),
            None => {
                let frame =
                    wire::read_frame_max::<wire::AgentFrameRaw>(&mut recv, wire::MAX_FIRST_FRAME)
                        .await
                        .map_err(|e| e.to_string())?;
                core.frame(frame);
            }
        }
    }
    let queue_id = core.queue_id().unwrap_or_default().to_string();
    tracing::debug!(%agent, %queue_id, "stream welcomed");

    // Frames are read by their own task (a read cut short by `select!` would lose bytes).
    // A frame waits for room in its agent's and the sink's frame budget before it is read,
    // so no agent can make the sink hold more than its share; the budget is held until the
    // frame's ack is out.
    let budget = ctx.gate.frame_budget(agent);
    let (frame_tx, mut frames) =
        mpsc::channel::<Result<Option<(wire::AgentFrameRaw, Held)>, String>>(4);
    let reader = tokio::spawn(async move {
        loop {
            let f = wire::read_frame_reserving::<wire::AgentFrameRaw, _, _, _>(&mut recv, |n| {
                budget.reserve(n)
            })
            .await
            .map_err(|e| e.to_string());
            let stop = !matches!(f, Ok(Some(_)));
            if frame_tx.send(f).await.is_err() || stop {
                return;
            }
        }
    });
    let _abort_reader = scopeguard(move || reader.abort());
    // Submitted batches in order: what the journal will say, and the frame's budget.
    let mut pending: VecDeque<(oneshot::Receiver<Result<Outcome, Refused>>, Held)> =
        VecDeque::new();
    let mut held: Held = None;
    // The budget of the frame just answered: released once its answer is written.
    let mut answered: Held = None;
    let rejected = counters.counter("sink.batches_rejected");
    loop {
        while let Some(effect) = core.poll() {
            match effect {
                Effect::Send(frame) => wire::write_frame(&mut send, &frame)
                    .await
                    .map_err(|e| e.to_string())?,
                Effect::Confirm { queue_id, upto } => journal
                    .confirm(agent, &queue_id, upto)
                    .await
                    .map_err(|e| e.to_string())?,
                Effect::Submit {
                    queue_id,
                    batch,
                    info,
                    instance,
                } => {
                    if let Some(why) = &info.invalid {
                        tracing::warn!(%agent, %queue_id, first = info.first, last = info.last, reason = %why, "rejecting an invalid batch");
                    }
                    counters
                        .counter("sink.batches")
                        .fetch_add(1, Ordering::Relaxed);
                    counters
                        .counter("sink.records")
                        .fetch_add(info.records as u64, Ordering::Relaxed);
                    counters
                        .counter("sink.bytes")
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    // Batches stay encoded: they are checked in one pass and journaled as
                    // they came (decoding and re-encoding every record cost a fifth of the
                    // sink).
                    let done = journal
                        .submit(agent, &queue_id, batch, &info, instance)
                        .await
                        .map_err(|e| e.to_string())?;
                    pending.push_back((done, held.take()));
                }
                Effect::Closed(r) => {
                    let _ = send.finish();
                    return r;
                }
                Effect::Resolve { .. } => return Err("resolve twice".into()),
            }
        }
        drop(answered.take());
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(Some((frame, h)))) => {
                    held = h;
                    core.frame(Some(frame));
                }
                Some(Ok(None)) => core.frame(None),
                Some(Err(e)) => return Err(e),
                None => return Err("frame reader stopped".into()),
            },
            outcome = async { (&mut pending.front_mut().expect("guarded").0).await }, if !pending.is_empty() => {
                answered = pending.pop_front().and_then(|p| p.1);
                core.outcome(match outcome {
                    Ok(Ok(Outcome::Stored(last))) => stream::Outcome::Stored(last),
                    Ok(Ok(Outcome::Rejected(reason))) => {
                        rejected.fetch_add(1, Ordering::Relaxed);
                        stream::Outcome::Rejected(reason)
                    }
                    Ok(Err(e)) => stream::Outcome::Failed(e.to_string()),
                    Err(_) => stream::Outcome::Failed("journal closed".into()),
                });
            }
        }
    }
}

/// Why a drain round failed.
#[derive(Debug)]
pub(crate) enum DrainError {
    /// The journal's storage: it needs a reopen.
    Storage(JournalError),
    /// Anything else (an output): retried as it is.
    Other(String),
}

impl std::fmt::Display for DrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrainError::Storage(e) => e.fmt(f),
            DrainError::Other(e) => f.write_str(e),
        }
    }
}

impl From<JournalError> for DrainError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Storage(_) | JournalError::Panicked(_) => DrainError::Storage(e),
            other => DrainError::Other(other.to_string()),
        }
    }
}

/// Moves confirmed journal entries to the outputs, committing positions after each round.
async fn drain(
    journal: Journal,
    mut outputs: Vec<Box<dyn Output>>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut changed = journal.changed();
    let quarantined = counters.counter("sink.quarantined");
    loop {
        changed.borrow_and_update();
        // Writes and fsyncs: in place on this task's own thread (see `Sink::run`).
        match drain_round(&journal, &mut outputs, &quarantined) {
            Ok(0) => {
                tokio::select! {
                    r = changed.changed() => if r.is_err() { break },
                    _ = stop.cancelled() => break,
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "output drain failed; retrying");
                if !recover_outputs(&journal, &mut outputs, &e, &stop).await {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
}

/// After a failed round: puts every output back where the journal says it is. An output
/// that failed left the journal untouched: back to its last commit. A storage failure may
/// have come after the commit's writes reached the file: the journal is reopened (redb
/// needs that after an I/O error, and only then), and the outputs go to the positions read
/// back from it. False if `stop` came first.
pub(crate) async fn recover_outputs(
    journal: &Journal,
    outputs: &mut [Box<dyn Output>],
    failure: &DrainError,
    stop: &CancellationToken,
) -> bool {
    if !matches!(failure, DrainError::Storage(_)) {
        for o in outputs.iter_mut() {
            if let Err(e) = o.rollback() {
                tracing::error!(output = %o.name(), error = %e, "output rollback failed");
            }
        }
        return true;
    }
    let mut before = journal.reopens();
    journal.reopen().await;
    loop {
        if journal.reopens() > before {
            let positions = match read_positions(journal) {
                Ok(p) => p,
                // Failing again: another reopen, and read once that is done.
                Err(e) => {
                    tracing::error!(error = %e, "output positions unreadable after the reopen");
                    before = journal.reopens();
                    journal.reopen().await;
                    continue;
                }
            };
            for o in outputs.iter_mut() {
                let name = o.name();
                let r = match positions.iter().find(|(k, _)| *k == name) {
                    Some((_, p)) => o.restore(p),
                    None => o.rollback(),
                };
                if let Err(e) = r {
                    tracing::error!(output = %name, error = %e, "output rollback failed");
                }
            }
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.cancelled() => return false,
        }
    }
}

/// Writes one round of confirmed entries to every output, then commits their positions,
/// deletes the entries and quarantines the ones that do not decode, in one transaction.
/// Returns how many entries were drained or quarantined.
pub(crate) fn drain_round(
    journal: &Journal,
    outputs: &mut [Box<dyn Output>],
    quarantined: &std::sync::atomic::AtomicU64,
) -> Result<usize, DrainError> {
    // A few MiB per round: big enough that the fsyncs amortise, small enough to keep the
    // sink's memory flat while a backlog drains.
    let journal::Drainable { entries, bad } = journal.read_drainable(4 << 20)?;
    if entries.is_empty() && bad.is_empty() {
        return Ok(0);
    }
    if !entries.is_empty() {
        for o in outputs.iter_mut() {
            o.write(&entries)
                .map_err(|e| DrainError::Other(format!("{}: {e}", o.name())))?;
        }
    }
    let keys: Vec<u64> = entries.iter().map(|(k, _)| *k).collect();
    journal.with_db(|d| {
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
        journal::quarantine_entries(&txn, &bad)?;
        txn.commit().map_err(journal::db)
    })?;
    journal.drained(keys.into_iter().chain(bad.iter().map(|(k, _)| *k)));
    quarantined.fetch_add(bad.len() as u64, Ordering::Relaxed);
    for o in outputs.iter_mut() {
        o.committed();
    }
    Ok(entries.len() + bad.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(per_agent: u64, all: u64) -> Arc<Gate> {
        Arc::new(Gate::new(SinkLimits {
            max_frame_bytes_per_agent: per_agent,
            max_frame_bytes: all,
            ..SinkLimits::default()
        }))
    }

    /// Frames held a stream's bytes with no bound beyond the streams' count (32 streams of
    /// 16 MiB frames, each with up to 64 batches waiting for the journal, per agent). Now
    /// an agent's frames wait once they hold its share, and another agent is not held up
    /// by it; the share comes back when a frame is acknowledged (its budget dropped).
    #[tokio::test]
    async fn one_agent_cannot_hold_more_frame_bytes_than_its_share() {
        let g = gate(1000, 1500);
        let (_a, _b) = (g.stream("a").unwrap(), g.stream("b").unwrap());
        let a = g.frame_budget("a");
        let first = a.reserve(800).await.expect("fits");
        let wait = Duration::from_millis(100);
        assert!(
            tokio::time::timeout(wait, a.reserve(300)).await.is_err(),
            "agent a is over its share: it waits"
        );
        let b = g.frame_budget("b");
        let other = tokio::time::timeout(wait, b.reserve(600))
            .await
            .expect("agent b is not held up by a")
            .expect("fits");
        // The sink's total (1500) is now what bounds a: 800 + 600 held.
        assert!(tokio::time::timeout(wait, a.reserve(200)).await.is_err());
        drop(other);
        let second = tokio::time::timeout(wait, a.reserve(200))
            .await
            .expect("room again once b's frame is acknowledged");
        drop((first, second));
        assert!(
            tokio::time::timeout(wait, a.reserve(1000))
                .await
                .is_ok_and(|h| h.is_some()),
            "the whole share is back"
        );
    }
}
