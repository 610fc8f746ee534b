//! The forwarder: sends queued records to a sink over QUIC and deletes them once acked.
//!
//! # Protocol per connection
//! Open a bidirectional stream, send `Hello` (protocol version, queue id), receive
//! `Welcome` (the sink's journal id), send `Resolve` (the highest seq this journal acked as
//! we durably recorded it, and our ack mark), receive `Resolved` with the journal's
//! high-water mark: what it holds beyond our ack mark is its own and is acked here. Then
//! batches flow with up to `window` in flight; each `Ack` lets the queue delete up to its
//! `last_seq` and record the journal as owner; once that commit is durable, a `Confirm`
//! lets the sink output those records. Nothing is deleted on QUIC delivery alone.
//!
//! # Failures
//! Any error drops the connection; the next one (same or next sink in the list, after a
//! back-off with jitter) resends from the oldest unacknowledged seq and the sink drops what
//! it already has.

#![warn(missing_docs, unreachable_pub)]

mod config;
mod link;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::ForwardConfig;
use dataweaver_queue::{DeadLetter, Queue, QueueError, WhenFull};
use dataweaver_tls::TlsError;
use dataweaver_wire::session::agent::{
    AgentConfig as SessionConfig, AgentSession, Effect, Ended, Marks, SessionError,
};
use dataweaver_wire::{self as wire, FrameError, SinkFrame};
pub use link::Link;

/// Forwarder errors (each ends one connection attempt).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The sink address did not resolve.
    #[error("cannot resolve sink address `{0}`")]
    Resolve(String),
    /// QUIC connect or handshake failed (includes certificate refusal).
    #[error("connect: {0}")]
    Connect(String),
    /// The connection or stream broke.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be read or written.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The sink refused the stream.
    #[error("sink refused: {0}")]
    Refused(String),
    /// The sink holds seqs of this queue that this process never inherited: another copy of
    /// the data directory runs (or ran) with the same certificate.
    #[error("sink refused: {0}")]
    Forked(String),
    /// The sink broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The sink knows this queue beyond its last commit (a cloned or restored queue file).
    #[error(transparent)]
    AheadOfQueue(SessionError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// TLS material was unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Local socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Which process of a queue is speaking: tells a restart from a copy of the data
/// directory (a cloned VM, a golden image), whose records a sink would otherwise drop as
/// duplicates of the other copy's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Incarnation {
    /// Random per process (0: not told; the sink skips the check).
    pub instance: u64,
    /// The queue's last committed seq when this process opened it.
    pub inherited_upto: u64,
}

impl Incarnation {
    /// A new process's incarnation of `queue`; call right after opening it.
    pub fn of(queue: &Queue) -> Incarnation {
        Incarnation {
            instance: fastrand::u64(1..),
            inherited_upto: queue.last_committed(),
        }
    }
}

/// A connected, welcomed and resolved data stream to a sink.
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    core: AgentSession,
    /// The sink's high-water mark for our queue after resolution.
    pub high_water_mark: u64,
    /// The sink's name, for logs.
    pub sink_id: String,
    /// The sink's journal id: what acks are recorded against.
    pub journal_id: String,
}

/// Where and how long to try: a sink's address, the name its certificate must carry, and
/// the longest wait for the QUIC/TLS handshake.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    /// The sink's address.
    pub addr: SocketAddr,
    /// The name its certificate is verified for.
    pub server_name: &'a str,
    /// Bound on the handshake (a dead sink would otherwise cost a whole idle timeout).
    pub timeout: Duration,
}

/// Connects as `dial` says and opens a data stream:
/// `Hello` → `Welcome` → `Resolve` (with the marks `marks(journal_id)` returns: what this
/// journal acked, as durably recorded, and what was delivered anywhere) → `Resolved`.
/// Public so tests and tools can probe a sink exactly as an agent would.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    dial: Dial<'_>,
    queue_id: &str,
    incarnation: Incarnation,
    marks: impl FnOnce(&str) -> Result<(u64, u64), ForwardError>,
) -> Result<Session, ForwardError> {
    let cfg = session_config(queue_id, incarnation, 1, Duration::from_secs(30), None);
    open(endpoint, client, dial, cfg, |journal| {
        let (confirm_upto, delivered_upto) = marks(journal)?;
        // A probe sends nothing: it makes no claim about the queue's commits.
        Ok(Marks {
            confirm_upto,
            delivered_upto,
            committed: u64::MAX,
            ..Marks::default()
        })
    })
    .await
}

fn session_config(
    queue_id: &str,
    incarnation: Incarnation,
    window: usize,
    ack_timeout: Duration,
    failback_at: Option<Instant>,
) -> SessionConfig {
    SessionConfig {
        queue_id: queue_id.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        instance: incarnation.instance,
        inherited_upto: incarnation.inherited_upto,
        window,
        ack_timeout,
        answer_timeout: Duration::from_secs(10),
        // A sink that stops answering must not hold up a stop for long.
        drain_timeout: Duration::from_secs(3),
        failback_at,
    }
}

/// The QUIC/TLS handshake `dial` describes, bounded by its timeout: without a bound it
/// waits out the whole QUIC idle timeout for a dead sink, and failover would take
/// `failover_after` times that.
pub(crate) async fn handshake(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    dial: Dial<'_>,
) -> Result<quinn::Connection, ForwardError> {
    let Dial {
        addr,
        server_name,
        timeout,
    } = dial;
    let connecting = endpoint
        .connect_with(client, addr, server_name)
        .map_err(|e| ForwardError::Connect(e.to_string()))?;
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| ForwardError::Connect(format!("no handshake within {timeout:?}")))?
        .map_err(|e| ForwardError::Connect(e.to_string()))
}

/// Connects and drives the session core until the stream is resolved.
async fn open(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    dial: Dial<'_>,
    cfg: SessionConfig,
    marks: impl FnOnce(&str) -> Result<Marks, ForwardError>,
) -> Result<Session, ForwardError> {
    let conn = handshake(endpoint, client, dial).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut core = AgentSession::new(cfg, Instant::now());
    let mut marks = Some(marks);
    loop {
        while let Some(effect) = core.poll() {
            match effect {
                Effect::Send(frame) => wire::write_frame(&mut send, &frame).await?,
                Effect::Marks { journal_id } => {
                    let Some(marks) = marks.take() else {
                        return Err(ForwardError::Protocol("welcomed twice".into()));
                    };
                    core.marks(marks(&journal_id)?);
                }
                Effect::Connected {
                    sink_id,
                    journal_id,
                    high_water_mark,
                } => {
                    return Ok(Session {
                        conn,
                        send,
                        recv,
                        core,
                        high_water_mark,
                        sink_id,
                        journal_id,
                    });
                }
                Effect::Closed(r) => {
                    return Err(match r {
                        Err(e) => e.into(),
                        Ok(_) => ForwardError::Protocol("session closed before it opened".into()),
                    });
                }
                other => {
                    return Err(ForwardError::Protocol(format!(
                        "unexpected {other:?} before the stream was resolved"
                    )));
                }
            }
        }
        // A read cut short here only happens on a deadline, which ends the session.
        let deadline = core.poll_timeout().unwrap_or_else(Instant::now);
        match tokio::time::timeout_at(deadline.into(), wire::read_frame::<SinkFrame>(&mut recv))
            .await
        {
            Err(_) => core.handle_timeout(Instant::now()),
            Ok(Ok(Some(frame))) => core.handle(frame, Instant::now()),
            Ok(Ok(None)) => core.stream_ended(),
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

impl From<SessionError> for ForwardError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Refused(r) => ForwardError::Refused(r),
            SessionError::Forked(r) => ForwardError::Forked(r),
            e @ SessionError::AheadOfQueue { .. } => ForwardError::AheadOfQueue(e),
            other => ForwardError::Protocol(other.to_string()),
        }
    }
}

/// What the forwarder reports to `/metrics`, `/ready` and `status`.
#[derive(Debug)]
pub struct ForwardStats {
    /// A data stream to a sink is open.
    pub connected: std::sync::atomic::AtomicBool,
    /// The sink connected to (or last tried).
    pub sink: Mutex<String>,
    /// Since when no sink has been connected (`None` while connected).
    pub down_since: Mutex<Option<std::time::Instant>>,
    /// Bytes of batch frames written.
    pub bytes_sent: std::sync::atomic::AtomicU64,
    /// Batches the sink acknowledged.
    pub batches_acked: std::sync::atomic::AtomicU64,
    /// Records the sink acknowledged.
    pub records_acked: std::sync::atomic::AtomicU64,
    /// Sessions opened (the first one included).
    pub sessions: std::sync::atomic::AtomicU64,
    /// Time from writing a batch to its ack, seconds.
    pub batch_rtt: dataweaver_core::Histogram,
}

impl Default for ForwardStats {
    fn default() -> Self {
        ForwardStats {
            connected: Default::default(),
            sink: Default::default(),
            down_since: Mutex::new(Some(std::time::Instant::now())),
            bytes_sent: Default::default(),
            batches_acked: Default::default(),
            records_acked: Default::default(),
            sessions: Default::default(),
            batch_rtt: dataweaver_core::latency_histogram(),
        }
    }
}

impl ForwardStats {
    fn set_connected(&self, sink: &str, up: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.connected.store(up, Relaxed);
        if let Ok(mut s) = self.sink.lock() {
            *s = sink.to_string();
        }
        if let Ok(mut d) = self.down_since.lock() {
            match (up, d.is_some()) {
                (true, _) => *d = None,
                (false, false) => *d = Some(std::time::Instant::now()),
                (false, true) => {}
            }
        }
    }

    /// How long no sink has been connected.
    pub fn down_for(&self) -> Option<Duration> {
        self.down_since
            .lock()
            .ok()
            .and_then(|d| d.map(|t| t.elapsed()))
    }
}

/// Sends the queue's records to the configured sinks until shutdown.
pub struct Forwarder {
    cfg: ForwardConfig,
    queue: Queue,
    link: Link,
    stats: Arc<ForwardStats>,
    incarnation: Incarnation,
}

impl Forwarder {
    /// Builds the QUIC client from the TLS files in `cfg`. Call right after opening `queue`
    /// (the queue's last seq then is what this process inherited).
    pub fn new(
        cfg: ForwardConfig,
        link: Link,
        queue: Queue,
        stats: Arc<ForwardStats>,
    ) -> Result<Self, ForwardError> {
        Ok(Forwarder {
            incarnation: Incarnation::of(&queue),
            cfg,
            queue,
            link,
            stats,
        })
    }

    /// Runs until `shutdown`, then waits briefly for outstanding acks and closes cleanly.
    pub async fn run(self, shutdown: CancellationToken) {
        let sinks = self.cfg.sinks.len();
        // Sinks that may hold records they acked but were never confirmed as theirs (their
        // session ended abruptly): after a restart, any of them.
        let unconfirmed: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(if sinks > 1 {
            self.cfg.sinks.iter().cloned().collect()
        } else {
            HashSet::new()
        }));
        let current = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sweeper = tokio::spawn(sweep(
            self.cfg.clone(),
            self.queue.clone(),
            self.link.clone(),
            unconfirmed.clone(),
            current.clone(),
            self.incarnation,
            shutdown.clone(),
        ));
        let _stop_sweeper = AbortOnDrop(sweeper);
        let mut failures = 0u32; // consecutive, for the back-off
        let mut here = 0u32; // consecutive failures on the current sink
        let mut which = 0usize;
        while !shutdown.is_cancelled() {
            let target = &self.cfg.sinks[which % sinks];
            let delivered_before = self.queue.acked();
            // Away from the first (preferred) sink, go back to it now and then.
            let failback = (!which.is_multiple_of(sinks))
                .then(|| Instant::now() + Duration::from_millis(self.cfg.failback_after_ms));
            current.store(which % sinks, std::sync::atomic::Ordering::Relaxed);
            let ended = self.session(target, &shutdown, failback).await;
            self.stats.set_connected(target, false);
            if !matches!(ended, Ok(Ended::Shutdown)) && sinks > 1 {
                // The sink may hold acked records it was not yet told are its own.
                if let Ok(mut pending) = unconfirmed.lock() {
                    pending.insert(target.clone());
                }
            }
            match ended {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::Failback) => {
                    tracing::info!(from = %target, to = %self.cfg.sinks[0], "failing back to the preferred sink");
                    which = 0;
                    (failures, here) = (0, 0);
                    continue;
                }
                Err(e) => {
                    if self.queue.acked() > delivered_before {
                        (failures, here) = (0, 0);
                    }
                    failures = failures.saturating_add(1);
                    here += 1;
                    tracing::warn!(sink = %target, error = %e, "sink connection ended");
                    // A sink that just restarted is worth a few tries before failing over:
                    // batches it may have committed are only recognised by it.
                    // A session that timed out means the sink has been silent for a whole
                    // idle timeout already: retrying it first would only add to the outage.
                    if went_silent(&e) {
                        here = here.max(self.cfg.failover_after);
                    }
                    if here >= self.cfg.failover_after && sinks > 1 {
                        which += 1;
                        here = 0;
                        tracing::warn!(to = %self.cfg.sinks[which % sinks], "failing over");
                    }
                }
            }
            let delay = self.link.backoff(failures);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.link.close().await;
        tracing::debug!("forwarder stopped");
    }

    async fn session(
        &self,
        target: &str,
        shutdown: &CancellationToken,
        failback: Option<Instant>,
    ) -> Result<Ended, ForwardError> {
        let addr = self.link.resolve(target).await?;
        let queue = &self.queue;
        let queue_id = queue.queue_id();
        let cfg = session_config(
            &queue_id,
            self.incarnation,
            self.cfg.window,
            Duration::from_millis(self.cfg.ack_timeout_ms),
            failback,
        );
        let connecting = open(
            self.link.endpoint(),
            self.link.client(),
            self.link.dial(addr),
            cfg,
            |journal| {
                let (confirm_upto, delivered_upto) =
                    tokio::task::block_in_place(|| queue.resolve_marks(journal))?;
                Ok(Marks {
                    confirm_upto,
                    delivered_upto,
                    acked: queue.acked(),
                    committed: queue.last_committed(),
                    durable: *queue.durable_acked().borrow(),
                })
            },
        );
        // Nothing is in flight yet: a stop need not wait for an unreachable sink.
        let session = tokio::select! {
            s = connecting => s,
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        let session = match session {
            Err(ForwardError::Forked(reason)) => {
                // Two copies of one queue: each record of ours with a seq the other copy
                // already sent would be dropped as a duplicate. A new id makes all of ours
                // new (records from before the copy may then arrive twice: once per copy).
                let new_id = tokio::task::block_in_place(|| self.queue.new_identity())?;
                tracing::error!(
                    old_id = %queue_id, %new_id, %reason,
                    "another copy of this queue (a cloned or restored data directory?) is \
                     known to the sink; switched to a new queue id so nothing is lost"
                );
                return Err(ForwardError::Forked(reason));
            }
            Err(ForwardError::AheadOfQueue(e)) => {
                // The sink holds seqs this queue never wrote: the file was cloned or restored.
                // Acking them would delete unsent records; take a new identity instead, at the
                // price of possibly resending what the sink already has.
                let new_id = tokio::task::block_in_place(|| self.queue.new_identity())?;
                tracing::error!(
                    %e, %new_id,
                    "sink knows this queue beyond its last commit (cloned or restored queue file?); \
                     switched to a new queue id so nothing is lost"
                );
                return Err(ForwardError::Protocol("queue identity reset".into()));
            }
            other => other?,
        };
        let Session {
            conn,
            mut send,
            recv,
            mut core,
            high_water_mark,
            sink_id,
            ..
        } = session;
        tracing::info!(sink = %target, %sink_id, high_water_mark, "connected to sink");
        self.stats.set_connected(target, true);
        self.stats
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        // Frames are read by their own task: a read cut short by `select!` would lose bytes.
        let (frame_tx, mut frames) = mpsc::channel(self.cfg.window * 2 + 4);
        let reader = tokio::spawn(read_frames(recv, frame_tx));
        let _abort_reader = AbortOnDrop(reader);
        let mut committed = self.queue.committed();
        let mut durable = self.queue.durable_acked();
        let mut stopping = false;
        loop {
            core.committed(*committed.borrow_and_update());
            core.durable(*durable.borrow_and_update());
            while let Some(effect) = core.poll() {
                match effect {
                    Effect::Send(frame) => wire::write_frame(&mut send, &frame).await?,
                    Effect::Adopt { journal_id, upto } => self.queue.ack_from(&journal_id, upto),
                    Effect::SendBatch { batch_id, from } => {
                        let Some((frame, last)) = self.read_batch(batch_id, from)? else {
                            core.nothing_queued();
                            continue;
                        };
                        // A sink that stops reading must not hold up shutdown.
                        tokio::select! {
                            r = send.write_all(&frame) => r.map_err(FrameError::from)?,
                            _ = shutdown.cancelled() => {
                                conn.close(0u32.into(), b"agent shutting down");
                                return Ok(Ended::Shutdown);
                            }
                        }
                        self.stats
                            .bytes_sent
                            .fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        core.batch_sent(batch_id, last, Instant::now());
                    }
                    Effect::Acked {
                        journal_id,
                        first,
                        last,
                        sent_at,
                        rejected,
                    } => {
                        if let Some(reason) = rejected {
                            self.dead_letter_rejected(first, last, &sink_id, &reason)
                                .await?;
                        }
                        self.queue.ack_from(&journal_id, last);
                        self.stats
                            .batch_rtt
                            .observe(sent_at.elapsed().as_secs_f64());
                        self.stats
                            .batches_acked
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.stats.records_acked.fetch_add(
                            (last + 1).saturating_sub(first),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                    Effect::Closed(ended) => {
                        let ended = ended?;
                        let _ = send.finish();
                        conn.close(0u32.into(), b"bye");
                        return Ok(ended);
                    }
                    Effect::Marks { .. } | Effect::Connected { .. } => {}
                }
            }
            let deadline = core.poll_timeout();
            tokio::select! {
                frame = frames.recv() => match frame {
                    Some(Ok(Some(frame))) => core.handle(frame, Instant::now()),
                    Some(Ok(None)) | None => core.stream_ended(),
                    Some(Err(e)) => return Err(e.into()),
                },
                _ = committed.changed() => {}
                r = durable.changed() => {
                    if r.is_err() {
                        return Err(ForwardError::Protocol("queue closed".into()));
                    }
                }
                _ = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    core.shutdown(Instant::now());
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    core.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// The batch from `from`, encoded; a corrupt chunk on the way is set aside (its
    /// readable records become dead letters) and reading goes on after it.
    fn read_batch(
        &self,
        batch_id: u64,
        from: u64,
    ) -> Result<Option<(BytesMut, u64)>, ForwardError> {
        let (max_r, max_b) = (self.cfg.batch_max_records, self.cfg.batch_max_bytes);
        loop {
            // A short read of recently written pages: done in place rather than on the
            // blocking pool, whose many threads would each keep an allocator heap of
            // batch-sized buffers (it doubled the agent's RSS).
            match tokio::task::block_in_place(|| {
                encode_batch(&self.queue, batch_id, from, max_r, max_b)
            }) {
                Err(QueueError::Corrupt { seq, message }) => {
                    // Undecodable bytes cannot be delivered; stalling on them would stop
                    // everything behind them.
                    let lost = tokio::task::block_in_place(|| self.queue.drop_corrupt_chunk(seq))?;
                    tracing::error!(first_seq = seq, lost, %message, "corrupt queue chunk set aside: its readable records are dead letters");
                }
                other => return Ok(other?),
            }
        }
    }
}

impl Forwarder {
    /// A batch the sink will never store (it found a record invalid): its records go to the
    /// dead-letter table with the sink's reason before they are let go like acked ones.
    async fn dead_letter_rejected(
        &self,
        first: u64,
        last: u64,
        sink_id: &str,
        reason: &str,
    ) -> Result<(), ForwardError> {
        let n = usize::try_from(last.saturating_sub(first) + 1).unwrap_or(usize::MAX);
        let records = tokio::task::block_in_place(|| self.queue.read(first, n, usize::MAX))?;
        let ts_ns = dataweaver_core::now_ns();
        let dead: Vec<DeadLetter> = records
            .into_iter()
            .filter(|(seq, _)| *seq <= last)
            .map(|(_, record)| DeadLetter {
                ts_ns,
                pipeline: "forward".into(),
                reason: format!("refused by sink {sink_id}: {reason}"),
                record,
            })
            .collect();
        tracing::error!(first, last, records = dead.len(), sink = %sink_id, %reason, "the sink refused a batch; its records go to the dead-letter table");
        // Dead letters are kept even when the queue is full (only new records are dropped).
        self.queue
            .append_with(Vec::new(), dead, None, WhenFull::DropNewest)
            .await?;
        Ok(())
    }
}

/// Every few seconds, resolves with the sinks (other than the current one) that may hold
/// records they acked but were never confirmed as theirs: a short `Hello`/`Resolve`
/// exchange confirms what is theirs (so they output it) and discards copies delivered
/// elsewhere. Without it such records would wait for the agent's next session with them.
#[allow(clippy::too_many_arguments)]
async fn sweep(
    cfg: ForwardConfig,
    queue: Queue,
    link: Link,
    unconfirmed: Arc<Mutex<HashSet<String>>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    incarnation: Incarnation,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let active =
            &cfg.sinks[current.load(std::sync::atomic::Ordering::Relaxed) % cfg.sinks.len()];
        let targets: Vec<String> = match unconfirmed.lock() {
            Ok(p) => p.iter().filter(|t| *t != active).cloned().collect(),
            Err(_) => return,
        };
        for target in targets {
            let Ok(addr) = link.resolve(&target).await else {
                continue;
            };
            let marks = |journal: &str| {
                Ok(tokio::task::block_in_place(|| {
                    queue.resolve_marks(journal)
                })?)
            };
            let queue_id = queue.queue_id();
            let attempt = connect(
                link.endpoint(),
                link.client(),
                link.dial(addr),
                &queue_id,
                incarnation,
                marks,
            );
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(session)) => {
                    // Held beyond our ack mark means copies of records still in flight
                    // elsewhere: come back later to have them discarded.
                    if session.high_water_mark <= queue.acked()
                        && let Ok(mut p) = unconfirmed.lock()
                    {
                        p.remove(&target);
                    }
                    tracing::debug!(sink = %target, "resolved ownership with an idle sink");
                    session.conn.close(0u32.into(), b"resolved");
                }
                Ok(Err(e)) => {
                    tracing::debug!(sink = %target, error = %e, "cannot resolve with idle sink yet")
                }
                Err(_) => tracing::debug!(sink = %target, "resolve with idle sink timed out"),
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the sink's frames into `tx` until the stream ends (`Ok(None)`) or fails.
async fn read_frames(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Option<SinkFrame>, FrameError>>,
) {
    loop {
        let item = wire::read_frame::<SinkFrame>(&mut recv).await;
        let stop = !matches!(item, Ok(Some(_)));
        if tx.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// Reads the next batch from `from` and encodes it as one frame; `None` if nothing is queued.
///
/// The records go into the frame as the queue stores them (the wire encoding): the frame is
/// `AgentFrame { batch: Batch { batch_id, records, from_seq } }` assembled around those
/// bytes, so a record is neither decoded nor encoded again on its way to the sink.
pub fn encode_batch(
    queue: &Queue,
    batch_id: u64,
    from: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Option<(BytesMut, u64)>, QueueError> {
    use bytes::Buf;
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, uint64};
    // The batch is written after room for the longest frame head (length, key, varint),
    // and the head goes in front of it once its length is known: the records are copied
    // once, into a buffer sized for the whole batch (growing it by doubling, then copying
    // the batch into the frame, moved every byte three times).
    const HEAD: usize = 4 + 1 + 10;
    let mut buf = BytesMut::with_capacity(
        HEAD + 16 + max_bytes.saturating_add(max_records).min(wire::MAX_FRAME),
    );
    buf.resize(HEAD, 0);
    if batch_id != 0 {
        uint64::encode(1, &batch_id, &mut buf);
    }
    let last = queue.read_encoded(from, max_records, max_bytes, |_, record| {
        encode_key(2, WireType::LengthDelimited, &mut buf);
        buf.extend_from_slice(record);
    })?;
    let Some(last) = last else {
        return Ok(None);
    };
    // Seqs between `from` and the first record were dropped here: the sink must not take
    // the batch for one that skips over seqs it never got.
    if from != 0 {
        uint64::encode(3, &from, &mut buf);
    }
    let len = buf.len() - HEAD;
    // `AgentFrame.batch` is field 2 of the frame.
    let body = 1 + encoded_len_varint(len as u64) + len;
    let start = HEAD - (4 + 1 + encoded_len_varint(len as u64));
    let mut head = &mut buf[start..HEAD];
    head[..4].copy_from_slice(&(body as u32).to_be_bytes());
    head = &mut head[4..];
    encode_key(2, WireType::LengthDelimited, &mut head);
    encode_varint(len as u64, &mut head);
    buf.advance(start);
    Ok(Some((buf, last)))
}

/// Whether a session ended because the sink sent nothing for a whole idle timeout.
fn went_silent(e: &ForwardError) -> bool {
    use quinn::{ConnectionError::TimedOut, ReadError, ReadExactError, WriteError};
    matches!(
        e,
        ForwardError::Connection(TimedOut)
            | ForwardError::Frame(FrameError::Read(ReadExactError::ReadError(
                ReadError::ConnectionLost(TimedOut)
            )))
            | ForwardError::Frame(FrameError::Write(WriteError::ConnectionLost(TimedOut)))
    )
}

/// A client endpoint that reaches IPv4 and IPv6 sinks: dual-stack `[::]:0` where the host
/// has IPv6, `0.0.0.0:0` where it has none (an IPv4-only socket cannot reach `[::1]`).
pub fn client_endpoint() -> std::io::Result<quinn::Endpoint> {
    let open = |addr: SocketAddr| {
        let socket = dataweaver_tls::udp_socket(addr, true)?;
        let runtime = std::sync::Arc::new(quinn::TokioRuntime);
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
    };
    open(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))).or_else(|e| {
        tracing::debug!(error = %e, "no IPv6 socket; sinks are reached over IPv4 only");
        open(SocketAddr::from(([0, 0, 0, 0], 0)))
    })
}

/// Exponential back-off with jitter: between half and all of `min * 2^(n-1)`, capped.
pub fn backoff(min_ms: u64, max_ms: u64, failures: u32) -> Duration {
    let exp = min_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(20));
    let cap = exp.min(max_ms).max(1);
    Duration::from_millis(cap / 2 + fastrand::u64(0..=cap / 2))
}

#[cfg(test)]
mod tests {
    use super::backoff;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for n in 1..40 {
            let d = backoff(100, 5000, n).as_millis() as u64;
            let cap = (100u64 << (n - 1).min(20)).min(5000);
            assert!(d >= cap / 2 && d <= cap, "n={n} d={d}");
        }
        let samples: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(100, 5000, 10)).collect();
        assert!(samples.len() > 1, "jitter");
    }
}
