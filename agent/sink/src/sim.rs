//! Deterministic simulation of the whole data path (after TigerBeetle's VOPR and
//! FoundationDB's simulator): agents with real queues and sinks with real journals and
//! outputs, all on simulated disks, talking through the real session cores
//! ([`dataweaver_wire::session`]) over a simulated network, with faults chosen by one seed.
//!
//! The network delivers each connection's frames in order (a QUIC stream) but with any
//! delay: frames of one connection interleave arbitrarily with other connections' and with
//! everything else, connections are cut (what is in flight is lost), partitions hold frames
//! until the session times out, and every reconnect resends what was not acknowledged
//! (duplicates). Agents and sinks crash: their disk dies at a seeded operation, loses or
//! tears what was not synced, and the node restarts from what is left. At the end the
//! faults stop, every agent resolves with every sink, the sinks drain, and the check is:
//! every record a source was told is stored is output exactly once, and each sink outputs
//! an agent's records in order.
//!
//! `DATAWEAVER_SIM_SEEDS=N` runs N seeds (default 1,000), `DATAWEAVER_SIM_SEED=S` replays
//! one; a failure names its seed. Everything runs on one thread per seed and every store
//! call is waited for before the next step, so a seed replays exactly.
//!
//! Model limits (said so the figures are read right): an agent's acks are recorded in its
//! queue by a separate step, as its writer commits them later (and before the marks of a
//! new session are read, as `Queue::resolve_marks` waits for them); the sink answers a batch
//! once the journal decided on it; the sweeper's resolve with idle sinks is the final
//! resolve with every sink.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Buf;
use prost::Message;

use crate::crash_tests::SimOutput;
use crate::journal::{Journal, JournalOptions, Outcome};
use crate::output::Output;
use crate::{drain_round, read_positions, recover_outputs};
use dataweaver_core::Record;
use dataweaver_queue::Queue;
use dataweaver_queue::QueueConfig;
use dataweaver_store::seeds::seeds;
use dataweaver_store::{Fault, Medium, SimDisk};
use dataweaver_wire::session::agent::{self, AgentConfig, AgentSession, Marks};
use dataweaver_wire::session::sink::{self, SinkStream};
use dataweaver_wire::{AgentFrame, AgentFrameRaw, SinkFrame};

const AGENTS: usize = 3;

/// `DATAWEAVER_SIM_TRACE=1`: print every step (with a single seed, to read a failure).
fn trace() -> bool {
    std::env::var_os("DATAWEAVER_SIM_TRACE").is_some()
}

macro_rules! say {
    ($($t:tt)*) => { if trace() { eprintln!($($t)*); } };
}
const SINKS: usize = 2;

/// What an output holds: (agent id, payload), in output order.
type Lines = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

struct SimAgent {
    name: String,
    disk: SimDisk,
    queue: Option<Queue>,
    /// The source's next record number.
    next: u64,
    /// Records the source was told are stored.
    stored: Vec<u64>,
    /// Records the queue refused (first, count): the source sends them again, as a file
    /// source re-reads from its checkpoint and an HTTP or MQTT client resends.
    refused: Option<(u64, u64)>,
    /// Acks received and not yet recorded in the queue: (journal, upto).
    acks: Vec<(String, u64)>,
    instance: u64,
    inherited: u64,
    restarts: u32,
}

struct SimSink {
    name: String,
    disk: SimDisk,
    journal: Option<Journal>,
    lines: Lines,
    outputs: Vec<Box<dyn Output>>,
    restarts: u32,
}

/// One data stream between an agent and a sink.
struct Conn {
    agent: usize,
    sink: usize,
    core: AgentSession,
    stream: SinkStream,
    /// Encoded `AgentFrame`s on their way (without the length prefix).
    to_sink: VecDeque<Vec<u8>>,
    to_agent: VecDeque<SinkFrame>,
    /// The sink's side is gone (its process crashed or the connection was cut there).
    sink_gone: bool,
}

struct World {
    rng: fastrand::Rng,
    start: Instant,
    /// Simulated milliseconds since `start`.
    ms: u64,
    agents: Vec<SimAgent>,
    sinks: Vec<SimSink>,
    conns: Vec<Conn>,
    /// (agent, sink) pairs that cannot reach each other.
    partitioned: Vec<(usize, usize)>,
    cfg: QueueConfig,
    sessions: u64,
    cuts: u64,
}

/// After a journal command failed for its storage: waits until the journal's writer has
/// reopened the file (or the disk died), so that what the next step sends meets the same
/// journal on every run, not one still recovering or not, as real time decides.
async fn recovered(j: &Journal, disk: &SimDisk, before: u64, why: &str) {
    if !why.contains("storage") {
        return;
    }
    while j.reopens() <= before && !disk.crashed() {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// After a queue call: waits until the queue's writer has reopened its file after any
/// storage error and committed the deletions it owed (or the disk died), so that the next
/// step, and the final resolve, meet the same queue on every run, not one still in its
/// real-time reopen back-off (`store::Backoff`), as wall-clock time decides.
async fn queue_settled(q: &Queue, disk: &SimDisk) {
    while (q.is_recovering() || *q.durable_acked().borrow() < q.acked()) && !disk.crashed() {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Completes once `disk` has died.
async fn died(disk: &SimDisk) {
    while !disk.crashed() {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn payload(agent: usize, n: u64) -> Vec<u8> {
    format!("{agent}:{n}").into_bytes()
}

fn parse_payload(p: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(p).ok()?;
    let (a, n) = s.split_once(':')?;
    Some((a.parse().ok()?, n.parse().ok()?))
}

impl World {
    fn new(seed: u64) -> Result<World, String> {
        let mut w = World {
            rng: fastrand::Rng::with_seed(seed),

            start: Instant::now(),
            ms: 0,
            agents: Vec::new(),
            sinks: Vec::new(),
            conns: Vec::new(),
            partitioned: Vec::new(),
            cfg: QueueConfig {
                commit_max_records: 8,
                ..QueueConfig::default()
            },
            sessions: 0,
            cuts: 0,
        };
        for i in 0..AGENTS {
            w.agents.push(SimAgent {
                name: format!("agent-{i}"),
                disk: SimDisk::new(),
                queue: None,
                next: 1,
                stored: Vec::new(),
                refused: None,
                acks: Vec::new(),
                instance: 0,
                inherited: 0,
                restarts: 0,
            });
            w.open_agent(i)?;
        }
        for i in 0..SINKS {
            w.sinks.push(SimSink {
                name: format!("sink-{i}"),
                disk: SimDisk::new(),
                journal: None,
                lines: Arc::default(),
                outputs: Vec::new(),
                restarts: 0,
            });
            w.open_sink(i)?;
        }
        Ok(w)
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.ms)
    }

    fn open_agent(&mut self, a: usize) -> Result<(), String> {
        let instance = self.rng.u64(1..);
        let ag = &mut self.agents[a];
        match Queue::open_on(Medium::Sim(ag.disk.clone()), None, &self.cfg) {
            Ok(q) => {
                ag.inherited = q.last_committed();
                ag.instance = instance;
                ag.queue = Some(q);
                Ok(())
            }
            Err(e) => Err(format!("{}: reopen after a crash: {e}", ag.name)),
        }
    }

    fn open_sink(&mut self, s: usize) -> Result<(), String> {
        let sk = &mut self.sinks[s];
        // Files are created before any crash is armed: a reopen that fails is a finding.
        let j = Journal::open_on(Medium::Sim(sk.disk.clone()), JournalOptions::default())
            .map_err(|e| format!("{}: reopen after a crash: {e}", sk.name))?;
        // The output goes back to the position its last drain committed.
        let position = read_positions(&j)
            .map_err(|e| format!("{}: positions: {e}", sk.name))?
            .into_iter()
            .find(|(k, _)| k == "sim")
            .map(|(_, v)| v);
        let mut out = SimOutput {
            lines: sk.lines.clone(),
            committed: 0,
            line: |e, r| (e.agent_id.clone(), r.payload.to_vec()),
        };
        let held = sk.lines.lock().map_or(0, |l| l.len());
        match position {
            Some(p) => {
                out.restore(&p).map_err(|e| e.to_string())?;
                if out.committed > held {
                    return Err(format!(
                        "{}: the journal's cursor is at {}, the output holds only {held}",
                        sk.name, out.committed
                    ));
                }
            }
            None => out
                .restore(&0u64.to_le_bytes())
                .map_err(|e| e.to_string())?,
        }
        sk.outputs = vec![Box::new(out)];
        sk.journal = Some(j);
        Ok(())
    }

    /// Crashes agent `a` now: its connections end abruptly, unsynced writes are lost or
    /// torn, it restarts on what its disk kept.
    fn crash_agent(&mut self, a: usize) -> Result<(), String> {
        let seed = self.rng.u64(..);
        say!("CRASH agent {a}");
        let ag = &mut self.agents[a];
        ag.disk.crash_at(ag.disk.ops());
        ag.queue = None;
        ag.acks.clear();
        ag.disk = ag.disk.crash_image(seed);
        ag.restarts += 1;
        self.conns.retain(|c| c.agent != a);
        self.open_agent(a)
    }

    fn crash_sink(&mut self, s: usize) -> Result<(), String> {
        let seed = self.rng.u64(..);
        say!("CRASH sink {s}");
        let sk = &mut self.sinks[s];
        sk.disk.crash_at(sk.disk.ops());
        sk.journal = None;
        sk.outputs.clear();
        sk.disk = sk.disk.crash_image(seed);
        sk.restarts += 1;
        // Answers already on the wire may still arrive; nothing more comes from it.
        for c in self.conns.iter_mut().filter(|c| c.sink == s) {
            c.sink_gone = true;
            c.to_sink.clear();
        }
        self.open_sink(s)
    }

    /// Restarts every node whose disk died during the last step.
    fn reap(&mut self) -> Result<(), String> {
        for a in 0..AGENTS {
            if self.agents[a].disk.crashed() {
                self.crash_agent(a)?;
            }
        }
        for s in 0..SINKS {
            if self.sinks[s].disk.crashed() {
                self.crash_sink(s)?;
            }
        }
        Ok(())
    }

    /// Arms a crash of a node's disk a few operations from now (mid-commit, usually).
    fn arm_crash(&mut self) {
        let k = self.rng.u64(1..40);
        if self.rng.bool() {
            let d = &self.agents[self.rng.usize(..AGENTS)].disk;
            d.crash_at(d.ops() + k);
        } else {
            let d = &self.sinks[self.rng.usize(..SINKS)].disk;
            d.crash_at(d.ops() + k);
        }
    }

    async fn append(&mut self, a: usize) {
        let n = self.rng.u64(1..=12);
        let ag = &mut self.agents[a];
        let Some(q) = &ag.queue else { return };
        let (from, n) = match ag.refused.take() {
            Some(again) => again,
            None => {
                ag.next += n;
                (ag.next - n, n)
            }
        };
        let records = (from..from + n)
            .map(|i| Record::new("src", "t", payload(a, i)))
            .collect();
        let r = q.append(records, None).await;
        queue_settled(q, &ag.disk).await;
        say!(
            "append agent {a} {from}..{}: {}",
            from + n - 1,
            if r.is_ok() {
                "stored".to_string()
            } else {
                format!("{:?}", r.as_ref().err())
            }
        );
        match r {
            Ok(_) => ag.stored.extend(from..from + n),
            // A refusal the process lived to see means "not stored": sent again. (After a
            // crash the outcome is unknown; a source without a checkpoint would resend and
            // may duplicate, which is not what is checked here.)
            Err(_) if !ag.disk.crashed() => ag.refused = Some((from, n)),
            Err(_) => {}
        }
        let committed = q.last_committed();
        for c in self.conns.iter_mut().filter(|c| c.agent == a) {
            c.core.committed(committed);
        }
    }

    /// Records the acks agent `a` received in its queue, and tells its sessions what is
    /// durable now.
    async fn record_acks(&mut self, a: usize) {
        let ag = &mut self.agents[a];
        let Some(q) = &ag.queue else { return };
        let durable = q.durable_acked();
        // One commit per ack that moves the mark, waited for: the same commits on every run.
        for (journal, upto) in ag.acks.drain(..) {
            say!("record ack agent {a}: {journal} {upto}");
            let moves = upto > q.acked();
            q.ack_from(&journal, upto);
            while moves && *durable.borrow() < upto && !ag.disk.crashed() {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        queue_settled(q, &ag.disk).await;
        let d = *durable.borrow();
        for c in self.conns.iter_mut().filter(|c| c.agent == a) {
            c.core.durable(d);
        }
    }

    fn connect(&mut self, a: usize, s: usize) {
        if self.conns.iter().any(|c| c.agent == a) || self.agents[a].queue.is_none() {
            return;
        }
        let Some(j) = &self.sinks[s].journal else {
            return;
        };
        let ag = &self.agents[a];
        let Some(q) = &ag.queue else { return };
        let cfg = AgentConfig {
            queue_id: q.queue_id(),
            agent_version: "sim".into(),
            instance: ag.instance,
            inherited_upto: ag.inherited,
            window: 1 + self.rng.usize(..4),
            ack_timeout: Duration::from_millis(3_000),
            answer_timeout: Duration::from_millis(2_000),
            drain_timeout: Duration::from_millis(1_000),
            failback_at: None,
        };
        let stream = SinkStream::new(&self.sinks[s].name, j.id());
        self.sessions += 1;
        self.conns.push(Conn {
            agent: a,
            sink: s,
            core: AgentSession::new(cfg, self.now()),
            stream,
            to_sink: VecDeque::new(),
            to_agent: VecDeque::new(),
            sink_gone: false,
        });
    }

    /// Applies the agent session's effects of connection `c`.
    async fn agent_effects(&mut self, c: usize) -> Result<(), String> {
        let now = self.now();
        loop {
            let Some(effect) = self.conns[c].core.poll() else {
                return Ok(());
            };
            let a = self.conns[c].agent;
            say!("agent {a} -> sink {}: {effect:?}", self.conns[c].sink);
            let Some(q) = self.agents[a].queue.clone() else {
                return Ok(());
            };
            match effect {
                agent::Effect::Send(frame) => {
                    self.conns[c].to_sink.push_back(frame.encode_to_vec())
                }
                agent::Effect::Marks { journal_id } => {
                    // As `Queue::resolve_marks` does: every ack received is durable first.
                    self.record_acks(a).await;
                    if self.agents[a].disk.crashed() {
                        self.conns[c].core.stream_ended();
                        continue;
                    }
                    let Ok((confirm_upto, delivered_upto)) = q.resolve_marks(&journal_id) else {
                        self.conns[c].core.stream_ended();
                        continue;
                    };
                    let durable = *q.durable_acked().borrow();
                    self.conns[c].core.marks(Marks {
                        confirm_upto,
                        delivered_upto,
                        acked: q.acked(),
                        committed: q.last_committed(),
                        durable,
                    });
                }
                agent::Effect::Connected { .. } => {}
                agent::Effect::Adopt { journal_id, upto } => {
                    self.agents[a].acks.push((journal_id, upto));
                }
                agent::Effect::SendBatch { batch_id, from } => {
                    let max = 1 + self.rng.usize(..20);
                    match dataweaver_forward::encode_batch(&q, batch_id, from, max, 1 << 20) {
                        Ok(Some((frame, last))) => {
                            let mut body = frame.freeze();
                            body.advance(4);
                            self.conns[c].to_sink.push_back(body.to_vec());
                            self.conns[c].core.batch_sent(batch_id, last, now);
                        }
                        Ok(None) => self.conns[c].core.nothing_queued(),
                        // As the forwarder does: the session ends, the next one reads
                        // again (a queue reopening after a storage error is unavailable
                        // for a moment). A corrupt chunk is a finding here.
                        Err(e @ dataweaver_queue::QueueError::Corrupt { .. }) => {
                            return Err(format!("agent {a}: read batch: {e}"));
                        }
                        Err(e) => {
                            say!("agent {a}: read batch: {e}");
                            self.conns[c].core.stream_ended();
                        }
                    }
                }
                agent::Effect::Acked {
                    journal_id,
                    last,
                    rejected,
                    ..
                } => {
                    if let Some(r) = rejected {
                        return Err(format!("agent {a}: batch up to {last} rejected: {r}"));
                    }
                    self.agents[a].acks.push((journal_id, last));
                }
                agent::Effect::Closed(Err(
                    e @ (agent::SessionError::AheadOfQueue { .. } | agent::SessionError::Forked(_)),
                )) => {
                    // No queue is copied here: a sink that knows more than the queue, or
                    // another process of it, is a broken rule.
                    return Err(format!("agent {a}: {e}"));
                }
                agent::Effect::Closed(_) => {
                    let conn = &mut self.conns[c];
                    // A clean end finishes the stream: what is on the wire still arrives.
                    conn.to_agent.clear();
                    if conn.to_sink.is_empty() && !conn.sink_gone {
                        conn.stream.frame(None);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Applies the sink stream's effects of connection `c`.
    async fn sink_effects(&mut self, c: usize) -> Result<(), String> {
        loop {
            let Some(effect) = self.conns[c].stream.poll() else {
                return Ok(());
            };
            say!(
                "sink {} (agent {}): {}",
                self.conns[c].sink,
                self.conns[c].agent,
                match &effect {
                    sink::Effect::Submit { info, .. } =>
                        format!("submit {}..={}", info.first, info.last),
                    other => format!("{other:?}"),
                }
            );
            let (s, agent) = (
                self.conns[c].sink,
                self.agents[self.conns[c].agent].name.clone(),
            );
            let Some(j) = self.sinks[s].journal.clone() else {
                return Ok(());
            };
            match effect {
                sink::Effect::Send(f) => self.conns[c].to_agent.push_back(f),
                sink::Effect::Resolve { queue_id, resolve } => {
                    let before = j.reopens();
                    let r = j.resolve(&agent, &queue_id, &resolve).await;
                    if let Err(refusal) = &r {
                        recovered(&j, &self.sinks[s].disk, before, &refusal.reason).await;
                    }
                    self.conns[c].stream.resolved(r);
                }
                sink::Effect::Confirm { queue_id, upto } => {
                    // Waited for, so that the journal's commits are the same on every run;
                    // a journal whose disk died holds it until it restarts.
                    let disk = self.sinks[s].disk.clone();
                    tokio::select! {
                        r = j.confirm_durable(&agent, &queue_id, upto) => r.map_err(|e| e.to_string())?,
                        _ = died(&disk) => {}
                    }
                }
                sink::Effect::Submit {
                    queue_id,
                    batch,
                    info,
                    instance,
                } => {
                    let before = j.reopens();
                    let outcome = match j.submit(&agent, &queue_id, batch, &info, instance).await {
                        Ok(rx) => match rx.await {
                            Ok(Ok(Outcome::Stored(last))) => sink::Outcome::Stored(last),
                            Ok(Ok(Outcome::Rejected(r))) => sink::Outcome::Rejected(r),
                            Ok(Err(e)) => sink::Outcome::Failed(e.to_string()),
                            Err(_) => sink::Outcome::Failed("journal closed".into()),
                        },
                        Err(e) => sink::Outcome::Failed(e.to_string()),
                    };
                    if let sink::Outcome::Failed(why) = &outcome {
                        recovered(&j, &self.sinks[s].disk, before, why).await;
                    }
                    self.conns[c].stream.outcome(outcome);
                }
                sink::Effect::Closed(_) => {
                    self.conns[c].sink_gone = true;
                    return Ok(());
                }
            }
        }
    }

    /// Delivers the next frame of connection `c` in one direction.
    async fn deliver(&mut self, c: usize, to_sink: bool) -> Result<bool, String> {
        let (a, s) = (self.conns[c].agent, self.conns[c].sink);
        if self.partitioned.contains(&(a, s)) {
            return Ok(false);
        }
        if to_sink {
            let conn = &mut self.conns[c];
            if conn.sink_gone {
                conn.to_sink.clear();
                return Ok(false);
            }
            let Some(bytes) = conn.to_sink.pop_front() else {
                return Ok(false);
            };
            if conn.stream.queue_id().is_none() && !conn.stream.is_closed() {
                // The first frame: the driver reads `Hello` itself.
                match AgentFrame::decode(&bytes[..]).ok().and_then(|f| f.kind) {
                    Some(dataweaver_wire::agent_frame::Kind::Hello(h)) => conn.stream.hello(h),
                    other => return Err(format!("first frame {other:?}")),
                }
            } else {
                let raw = AgentFrameRaw::decode(&bytes[..]).map_err(|e| e.to_string())?;
                conn.stream.frame(Some(raw));
            }
            if conn.to_sink.is_empty() && conn.core.is_closed() {
                conn.stream.frame(None);
            }
            self.sink_effects(c).await?;
        } else {
            let now = self.now();
            let conn = &mut self.conns[c];
            let Some(frame) = conn.to_agent.pop_front() else {
                if conn.sink_gone && !conn.core.is_closed() {
                    conn.core.stream_ended();
                    self.agent_effects(c).await?;
                    return Ok(true);
                }
                return Ok(false);
            };
            conn.core.handle(frame, now);
            self.agent_effects(c).await?;
        }
        Ok(true)
    }

    fn tick(&mut self, ms: u64) {
        self.ms += ms;
        let now = self.now();
        for c in &mut self.conns {
            if c.core.poll_timeout().is_some_and(|t| t <= now) {
                c.core.handle_timeout(now);
            }
        }
    }

    async fn drain(&mut self, s: usize) -> Result<usize, String> {
        let sk = &mut self.sinks[s];
        let Some(j) = &sk.journal else { return Ok(0) };
        let q = AtomicU64::new(0);
        match drain_round(j, &mut sk.outputs, &q) {
            Ok(n) => Ok(n),
            // As the sink's drainer does: the journal reopens and the outputs go back to the
            // positions it committed (a failed drain commit may have landed).
            Err(e) => {
                say!("drain sink {s} failed: {e}");
                // A disk that dies meanwhile holds the recovery until the sink restarts.
                let disk = sk.disk.clone();
                let stop = tokio_util::sync::CancellationToken::new();
                tokio::select! {
                    _ = recover_outputs(j, &mut sk.outputs, &e, &stop) => {}
                    _ = died(&disk) => {}
                }
                Ok(0)
            }
        }
    }

    /// Runs every pending effect, then drops finished connections.
    async fn settle(&mut self) -> Result<(), String> {
        for c in 0..self.conns.len() {
            self.agent_effects(c).await?;
            self.sink_effects(c).await?;
        }
        // A closed session's connection goes once its last frames reached the sink.
        self.conns
            .retain(|c| !(c.core.is_closed() && (c.to_sink.is_empty() || c.sink_gone)));
        Ok(())
    }

    /// One seeded step of the faulty phase.
    async fn step(&mut self) -> Result<(), String> {
        match self.rng.u8(0..100) {
            0..=24 => {
                let a = self.rng.usize(..AGENTS);
                self.append(a).await;
            }
            25..=59 if !self.conns.is_empty() => {
                let c = self.rng.usize(..self.conns.len());
                let to_sink = self.rng.bool();
                self.deliver(c, to_sink).await?;
            }
            60..=67 => {
                let a = self.rng.usize(..AGENTS);
                self.record_acks(a).await;
            }
            68..=75 => {
                let (a, s) = (self.rng.usize(..AGENTS), self.rng.usize(..SINKS));
                if !self.partitioned.contains(&(a, s)) {
                    self.connect(a, s);
                }
            }
            76..=82 => {
                let s = self.rng.usize(..SINKS);
                let n = self.drain(s).await?;
                say!("drain sink {s}: {n}");
            }
            83..=89 => {
                let ms = self.rng.u64(1..1_500);
                self.tick(ms);
            }
            90..=92 if !self.conns.is_empty() => {
                // A cut: both ends lose the stream; what is on the wire is gone.
                let c = self.rng.usize(..self.conns.len());
                let conn = &mut self.conns[c];
                conn.to_sink.clear();
                conn.to_agent.clear();
                conn.sink_gone = true;
                conn.core.stream_ended();
                say!("CUT conn agent {} sink {}", conn.agent, conn.sink);
                self.cuts += 1;
            }
            93..=94 => self.arm_crash(),
            95..=96 => {
                let pair = (self.rng.usize(..AGENTS), self.rng.usize(..SINKS));
                if let Some(i) = self.partitioned.iter().position(|p| *p == pair) {
                    self.partitioned.remove(i);
                } else {
                    self.partitioned.push(pair);
                }
            }
            97 => {
                let a = self.rng.usize(..AGENTS);
                self.crash_agent(a)?;
            }
            98 => {
                let s = self.rng.usize(..SINKS);
                self.crash_sink(s)?;
            }
            _ => {
                // A commit whose final sync fails: it reports failure, and may have landed.
                if self.rng.bool() {
                    self.agents[self.rng.usize(..AGENTS)]
                        .disk
                        .fail_next_commit_sync(Fault::Io);
                } else {
                    self.sinks[self.rng.usize(..SINKS)]
                        .disk
                        .fail_next_commit_sync(Fault::Io);
                }
            }
        }
        self.settle().await?;
        self.reap()
    }

    /// Faults off: every agent resolves with every sink and sends what it has, the sinks
    /// drain; then the outputs are checked.
    async fn heal_and_check(&mut self) -> Result<(), String> {
        self.partitioned.clear();
        for d in self
            .agents
            .iter()
            .map(|a| &a.disk)
            .chain(self.sinks.iter().map(|s| &s.disk))
        {
            d.crash_at(u64::MAX);
        }
        // Connections of the faulty phase end (as after a restart of the network).
        for c in &mut self.conns {
            c.to_sink.clear();
            c.to_agent.clear();
            c.sink_gone = true;
            c.core.stream_ended();
        }
        self.settle().await?;
        self.conns.clear();
        for ag in &self.agents {
            if let Some(q) = &ag.queue {
                queue_settled(q, &ag.disk).await;
            }
        }
        for round in 0..2 {
            for a in 0..AGENTS {
                for s in 0..SINKS {
                    self.run_session(a, s)
                        .await
                        .map_err(|e| format!("heal round {round}, agent {a} with sink {s}: {e}"))?;
                }
            }
        }
        for s in 0..SINKS {
            while self.drain(s).await? > 0 {}
        }
        self.check()
    }

    /// A fault-free session of agent `a` with sink `s` until all is acked and confirmed.
    async fn run_session(&mut self, a: usize, s: usize) -> Result<(), String> {
        self.connect(a, s);
        let c = self.conns.len() - 1;
        self.agent_effects(c).await?;
        let mut quiet = 0;
        let mut stopping = false;
        for _ in 0..100_000 {
            let mut moved = false;
            while self.deliver(c, true).await? {
                moved = true;
            }
            while !self.conns[c].to_agent.is_empty() && self.deliver(c, false).await? {
                moved = true;
            }
            if !self.agents[a].acks.is_empty() {
                self.record_acks(a).await;
                self.agent_effects(c).await?;
                moved = true;
            }
            if self.conns[c].core.is_closed() {
                while self.deliver(c, true).await? {}
                self.conns.remove(c);
                return Ok(());
            }
            quiet = if moved { 0 } else { quiet + 1 };
            if quiet > 2 && !stopping {
                stopping = true;
                let now = self.now();
                self.conns[c].core.shutdown(now);
                self.agent_effects(c).await?;
            } else if quiet > 2 {
                self.tick(500);
                self.agent_effects(c).await?;
            }
        }
        Err("the session never finished".into())
    }

    fn check(&self) -> Result<(), String> {
        let mut seen: Vec<BTreeMap<u64, usize>> = vec![BTreeMap::new(); AGENTS];
        for sk in &self.sinks {
            let lines = sk.lines.lock().map_err(|_| "poisoned")?;
            let mut last = [0u64; AGENTS];
            for (agent, p) in lines.iter() {
                let Some((a, n)) = parse_payload(p) else {
                    return Err(format!("{}: foreign record {p:?}", sk.name));
                };
                if format!("agent-{a}") != *agent {
                    return Err(format!(
                        "{}: record {a}:{n} output as agent {agent}",
                        sk.name
                    ));
                }
                if n <= last[a] {
                    return Err(format!(
                        "{}: agent {a} record {n} after {}",
                        sk.name, last[a]
                    ));
                }
                last[a] = n;
                *seen[a].entry(n).or_default() += 1;
            }
        }
        for (a, ag) in self.agents.iter().enumerate() {
            if let Some((n, k)) = seen[a].iter().find(|(_, k)| **k > 1) {
                return Err(format!("agent {a}: record {n} output {k} times"));
            }
            if let Some(n) = ag.stored.iter().find(|n| !seen[a].contains_key(n)) {
                return Err(format!(
                    "agent {a}: record {n} was acknowledged to its source but never output \
                     ({} stored, {} output, {} restarts)",
                    ag.stored.len(),
                    seen[a].len(),
                    ag.restarts
                ));
            }
        }
        Ok(())
    }
}

/// What the seeds did, summed: so a run shows it exercised what it claims to.
struct Tally;

static STORED: AtomicU64 = AtomicU64::new(0);
static OUTPUT: AtomicU64 = AtomicU64::new(0);
static AGENT_RESTARTS: AtomicU64 = AtomicU64::new(0);
static SINK_RESTARTS: AtomicU64 = AtomicU64::new(0);
static SESSIONS: AtomicU64 = AtomicU64::new(0);
static CUTS: AtomicU64 = AtomicU64::new(0);

impl Tally {
    fn add(w: &World) {
        use std::sync::atomic::Ordering::Relaxed;
        let stored: usize = w.agents.iter().map(|a| a.stored.len()).sum();
        let output: usize = w
            .sinks
            .iter()
            .map(|s| s.lines.lock().map_or(0, |l| l.len()))
            .sum();
        STORED.fetch_add(stored as u64, Relaxed);
        OUTPUT.fetch_add(output as u64, Relaxed);
        AGENT_RESTARTS.fetch_add(
            w.agents.iter().map(|a| u64::from(a.restarts)).sum(),
            Relaxed,
        );
        SINK_RESTARTS.fetch_add(w.sinks.iter().map(|s| u64::from(s.restarts)).sum(), Relaxed);
        SESSIONS.fetch_add(w.sessions, Relaxed);
        CUTS.fetch_add(w.cuts, Relaxed);
    }

    fn report() -> String {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "{} records acknowledged to sources, {} output; {} agent and {} sink crashes, {} sessions, {} connections cut",
            STORED.load(Relaxed),
            OUTPUT.load(Relaxed),
            AGENT_RESTARTS.load(Relaxed),
            SINK_RESTARTS.load(Relaxed),
            SESSIONS.load(Relaxed),
            CUTS.load(Relaxed)
        )
    }
}

async fn simulate(seed: u64) -> Result<bool, String> {
    if trace() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("dataweaver=debug")
            .with_writer(std::io::stderr)
            .try_init();
    }
    if std::env::var_os("DATAWEAVER_SIM_DIGEST").is_some() {
        eprintln!("start {seed}");
    }
    let mut w = World::new(seed)?;
    let steps = w.rng.usize(150..400);
    for _ in 0..steps {
        w.step().await?;
    }
    let crashed = w.agents.iter().any(|a| a.restarts > 0) || w.sinks.iter().any(|s| s.restarts > 0);
    w.heal_and_check().await?;
    if std::env::var_os("DATAWEAVER_SIM_DIGEST").is_some() {
        let stored: Vec<usize> = w.agents.iter().map(|a| a.stored.len()).collect();
        let restarts: Vec<u32> = w
            .agents
            .iter()
            .map(|a| a.restarts)
            .chain(w.sinks.iter().map(|s| s.restarts))
            .collect();
        let ops: Vec<u64> = w
            .agents
            .iter()
            .map(|a| a.disk.ops())
            .chain(w.sinks.iter().map(|s| s.disk.ops()))
            .collect();
        eprintln!(
            "digest {seed}: stored {stored:?} restarts {restarts:?} sessions {} ops {ops:?}",
            w.sessions
        );
    }
    Tally::add(&w);
    Ok(crashed)
}

#[test]
fn every_acknowledged_record_is_output_exactly_once_in_the_simulation() {
    dataweaver_store::seeds::run_seeds(
        "simulation",
        "DATAWEAVER_SIM_SEED",
        &seeds("DATAWEAVER_SIM_SEED", "DATAWEAVER_SIM_SEEDS", 1000),
        simulate,
    );
    eprintln!("simulation: {}", Tally::report());
}
