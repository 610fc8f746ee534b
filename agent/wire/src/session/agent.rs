//! The agent's side of a data stream, without I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{
    AgentFrame, Confirm, Hello, PROTOCOL_VERSION, REFUSED_FORKED, Resolve, SinkFrame, agent_frame,
    sink_frame,
};

/// How an agent session behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The queue's id (`Hello.queue_id`).
    pub queue_id: String,
    /// `Hello.agent_version`.
    pub agent_version: String,
    /// `Resolve.instance`: random per process (0: not told).
    pub instance: u64,
    /// `Resolve.inherited_upto`: the queue's last seq when this process opened it.
    pub inherited_upto: u64,
    /// Batches in flight before waiting for acks.
    pub window: usize,
    /// A sink that has not acknowledged the oldest batch in flight this long has failed.
    pub ack_timeout: Duration,
    /// Longest wait for `Welcome` and for `Resolved`.
    pub answer_timeout: Duration,
    /// Longest wait for the outstanding acks once draining.
    pub drain_timeout: Duration,
    /// When to stop sending and leave for the preferred sink (`Ended::Failback`).
    pub failback_at: Option<Instant>,
}

/// What the queue says when the session is welcomed: the input to [`AgentSession::marks`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// Highest seq this journal acked, as durably recorded (`Resolve.confirm_upto`).
    pub confirm_upto: u64,
    /// Highest seq acked by any sink (`Resolve.delivered_upto`).
    pub delivered_upto: u64,
    /// The queue's ack mark now (what was acked, durable or not).
    pub acked: u64,
    /// The queue's last committed seq.
    pub committed: u64,
    /// The queue's durable ack mark.
    pub durable: u64,
}

/// Why a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop ([`AgentSession::shutdown`]), everything acked confirmed.
    Shutdown,
    /// Time to go back to the preferred sink (`failback_at`).
    Failback,
}

/// Why a session failed: the connection is dropped, the next one resends what is unacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The sink refused the stream.
    #[error("sink refused: {0}")]
    Refused(String),
    /// The sink holds seqs of this queue that this process never inherited (another copy
    /// of the data directory): the queue must take a new id.
    #[error("sink refused: {0}")]
    Forked(String),
    /// The sink knows this queue beyond its last commit (a cloned or restored queue file):
    /// acking those seqs would delete unsent records; the queue must take a new id.
    #[error("sink holds seq {high_water_mark} of this queue, beyond its last commit {committed}")]
    AheadOfQueue {
        /// The sink's high-water mark.
        high_water_mark: u64,
        /// The queue's last commit.
        committed: u64,
    },
    /// The sink broke the protocol, went silent or ended the stream.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// What the driver must do next ([`AgentSession::poll`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write this frame to the stream.
    Send(AgentFrame),
    /// Read the queue's marks for this journal and answer with [`AgentSession::marks`].
    Marks {
        /// The sink's journal id (`Welcome.journal_id`).
        journal_id: String,
    },
    /// Resolved: the session is open.
    Connected {
        /// The sink's name.
        sink_id: String,
        /// Its journal id: what acks are recorded against.
        journal_id: String,
        /// What the journal holds of this queue.
        high_water_mark: u64,
    },
    /// Record `journal_id` as the owner of every seq up to `upto`: the journal kept them
    /// from an earlier session (its high-water mark beyond our ack mark).
    Adopt {
        /// The journal.
        journal_id: String,
        /// Up to this seq.
        upto: u64,
    },
    /// Read records from seq `from` (as many as a batch takes) and write them as batch
    /// `batch_id`; answer with [`AgentSession::batch_sent`] or
    /// [`AgentSession::nothing_queued`].
    SendBatch {
        /// The batch id to give it.
        batch_id: u64,
        /// Its first seq.
        from: u64,
    },
    /// The sink answered batch `first..=last`: after dead-lettering the records when it
    /// was rejected (with the sink's reason), record `journal_id` as their owner.
    Acked {
        /// The journal.
        journal_id: String,
        /// First seq of the batch.
        first: u64,
        /// Last seq of the batch.
        last: u64,
        /// When the batch was written.
        sent_at: Instant,
        /// The sink's reason, if it refused the batch for good.
        rejected: Option<String>,
    },
    /// The session is over: close the stream (cleanly on `Ok`).
    Closed(Result<Ended, SessionError>),
}

/// One batch written and not yet answered.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    batch_id: u64,
    first: u64,
    last: u64,
    sent_at: Instant,
}

#[derive(Debug)]
enum State {
    /// `Hello` written; waiting for `Welcome` until the deadline.
    Hello {
        deadline: Instant,
    },
    /// Welcomed; waiting for the driver's [`AgentSession::marks`].
    Marks {
        sink_id: String,
        journal_id: String,
        deadline: Instant,
    },
    /// `Resolve` written; waiting for `Resolved`.
    Resolving {
        sink_id: String,
        journal_id: String,
        marks: Marks,
        deadline: Instant,
    },
    Streaming(Stream),
    Closed,
}

#[derive(Debug)]
struct Stream {
    journal_id: String,
    in_flight: VecDeque<InFlight>,
    /// Next seq to send.
    cursor: u64,
    /// Last batch id given out.
    batch_id: u64,
    /// Highest seq this sink acked in this session (or adopted at its start).
    session_acked: u64,
    /// Highest seq confirmed to the sink.
    confirmed: u64,
    /// The queue's durable ack mark.
    durable: u64,
    /// The queue's last commit.
    committed: u64,
    /// A `SendBatch` is out and not answered.
    asked: bool,
    /// The queue had nothing from `cursor` when its last commit was this.
    idle_at: Option<u64>,
    /// Since when the session stops sending and collects acks.
    draining: Option<Instant>,
    ended: Ended,
    /// By when the oldest batch in flight must be answered.
    ack_deadline: Instant,
}

/// The agent's side of one data stream: `Hello` → `Welcome` → `Resolve` → `Resolved`,
/// then batches with up to `window` in flight, acks in order, and `Confirm` of what this
/// sink acked once the queue recorded that durably. Takes frames, queue marks and time;
/// returns frames to write and effects on the queue. No sockets, tasks or clocks inside.
#[derive(Debug)]
pub struct AgentSession {
    cfg: AgentConfig,
    state: State,
    out: VecDeque<Effect>,
}

impl AgentSession {
    /// A session that starts by writing `Hello`.
    pub fn new(cfg: AgentConfig, now: Instant) -> AgentSession {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            queue_id: cfg.queue_id.clone(),
            agent_version: cfg.agent_version.clone(),
        };
        let deadline = now + cfg.answer_timeout;
        let mut out = VecDeque::new();
        out.push_back(send(agent_frame::Kind::Hello(hello)));
        AgentSession {
            cfg,
            state: State::Hello { deadline },
            out,
        }
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<Effect> {
        if self.out.is_empty() {
            self.step();
        }
        self.out.pop_front()
    }

    /// Whether the session is over (its `Closed` effect was produced).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Hello { deadline }
            | State::Marks { deadline, .. }
            | State::Resolving { deadline, .. } => Some(*deadline),
            State::Streaming(s) => {
                let drain = s.draining.map(|t| t + self.cfg.drain_timeout);
                let ack =
                    (!s.in_flight.is_empty() && s.draining.is_none()).then_some(s.ack_deadline);
                let failback = self.cfg.failback_at.filter(|_| s.draining.is_none());
                [drain, ack, failback].into_iter().flatten().min()
            }
            State::Closed => None,
        }
    }

    /// Time has come to `now`: deadlines that passed take effect.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::Hello { deadline }
            | State::Marks { deadline, .. }
            | State::Resolving { deadline, .. } => {
                if now >= *deadline {
                    let what = if matches!(self.state, State::Hello { .. }) {
                        "welcome"
                    } else {
                        "resolved"
                    };
                    let t = self.cfg.answer_timeout;
                    self.fail(SessionError::Protocol(format!("no {what} within {t:?}")));
                }
            }
            State::Streaming(s) => {
                if let Some(since) = s.draining {
                    if now >= since + self.cfg.drain_timeout {
                        // Outstanding acks are given up on; they are resent next time.
                        let ended = s.ended;
                        self.close(Ok(ended));
                    }
                    return;
                }
                if self.cfg.failback_at.is_some_and(|t| now >= t) {
                    s.draining = Some(now);
                    s.ended = Ended::Failback;
                    return;
                }
                if !s.in_flight.is_empty() && now >= s.ack_deadline {
                    let t = self.cfg.ack_timeout;
                    self.fail(SessionError::Protocol(format!("no ack within {t:?}")));
                }
            }
            State::Closed => {}
        }
    }

    /// A frame from the sink.
    pub fn handle(&mut self, frame: SinkFrame, now: Instant) {
        let Some(kind) = frame.kind else {
            return self.fail(SessionError::Protocol("empty frame".into()));
        };
        match (&mut self.state, kind) {
            (State::Closed, _) => {}
            (State::Hello { .. }, sink_frame::Kind::Welcome(w)) => {
                let deadline = now + self.cfg.answer_timeout;
                self.out.push_back(Effect::Marks {
                    journal_id: w.journal_id.clone(),
                });
                self.state = State::Marks {
                    sink_id: w.sink_id,
                    journal_id: w.journal_id,
                    deadline,
                };
            }
            (State::Resolving { .. }, sink_frame::Kind::Resolved(r)) => {
                // Always this arm's state: taken by value to move its fields out.
                if let State::Resolving {
                    sink_id,
                    journal_id,
                    marks,
                    ..
                } = std::mem::replace(&mut self.state, State::Closed)
                {
                    self.resolved(sink_id, journal_id, marks, r.high_water_mark, now);
                }
            }
            (State::Resolving { .. }, sink_frame::Kind::Refusal(r)) if r.code == REFUSED_FORKED => {
                self.fail(SessionError::Forked(r.reason));
            }
            (_, sink_frame::Kind::Refusal(r)) => self.fail(SessionError::Refused(r.reason)),
            (State::Streaming(_), sink_frame::Kind::Ack(a)) => {
                self.answered(a.batch_id, a.last_seq, None, now);
            }
            (State::Streaming(_), sink_frame::Kind::Rejected(r)) => {
                self.answered(r.batch_id, r.last_seq, Some(r.reason), now);
            }
            (state, other) => {
                let expected = match state {
                    State::Hello { .. } => "welcome",
                    State::Resolving { .. } => "resolved",
                    State::Marks { .. } => "nothing before resolve",
                    _ => "ack",
                };
                self.fail(SessionError::Protocol(format!(
                    "expected {expected}, got {other:?}"
                )));
            }
        }
    }

    /// The sink ended the stream (or the connection closed).
    pub fn stream_ended(&mut self) {
        if !self.is_closed() {
            self.fail(SessionError::Protocol("sink ended the stream".into()));
        }
    }

    /// The queue's marks for the journal named in `Effect::Marks`.
    pub fn marks(&mut self, marks: Marks) {
        let (sink_id, journal_id, deadline) =
            match std::mem::replace(&mut self.state, State::Closed) {
                State::Marks {
                    sink_id,
                    journal_id,
                    deadline,
                } => (sink_id, journal_id, deadline),
                other => {
                    self.state = other;
                    return;
                }
            };
        self.out.push_back(send(agent_frame::Kind::Resolve(Resolve {
            confirm_upto: marks.confirm_upto,
            delivered_upto: marks.delivered_upto,
            instance: self.cfg.instance,
            inherited_upto: self.cfg.inherited_upto,
        })));
        self.state = State::Resolving {
            sink_id,
            journal_id,
            marks,
            deadline,
        };
    }

    /// The queue committed up to `seq`.
    pub fn committed(&mut self, seq: u64) {
        if let State::Streaming(s) = &mut self.state {
            s.committed = s.committed.max(seq);
            if s.idle_at.is_some_and(|at| s.committed > at) {
                s.idle_at = None;
            }
        }
    }

    /// The queue's durable ack mark is `seq`.
    pub fn durable(&mut self, seq: u64) {
        if let State::Streaming(s) = &mut self.state {
            s.durable = s.durable.max(seq);
        }
    }

    /// Batch `batch_id` (asked for by `SendBatch`) was written; its last seq is `last`.
    pub fn batch_sent(&mut self, batch_id: u64, last: u64, now: Instant) {
        let ack_timeout = self.cfg.ack_timeout;
        let State::Streaming(s) = &mut self.state else {
            return;
        };
        if !s.asked || batch_id != s.batch_id + 1 || last < s.cursor {
            return self.fail(SessionError::Protocol(format!(
                "driver sent batch {batch_id} up to {last}, not the one asked for"
            )));
        }
        s.asked = false;
        if s.in_flight.is_empty() {
            s.ack_deadline = now + ack_timeout;
        }
        s.in_flight.push_back(InFlight {
            batch_id,
            first: s.cursor,
            last,
            sent_at: now,
        });
        s.batch_id = batch_id;
        s.cursor = last + 1;
    }

    /// The queue had nothing to send from the seq `SendBatch` named.
    pub fn nothing_queued(&mut self) {
        if let State::Streaming(s) = &mut self.state
            && s.asked
        {
            s.asked = false;
            s.idle_at = Some(s.committed);
        }
    }

    /// Stop sending; collect the outstanding acks, confirm, then close (`Ended::Shutdown`).
    pub fn shutdown(&mut self, now: Instant) {
        match &mut self.state {
            State::Streaming(s) => {
                if s.draining.is_none() {
                    s.draining = Some(now);
                    s.ended = Ended::Shutdown;
                }
            }
            // Nothing is in flight yet: no need to wait for the sink.
            State::Closed => {}
            _ => self.close(Ok(Ended::Shutdown)),
        }
    }

    fn resolved(
        &mut self,
        sink_id: String,
        journal_id: String,
        marks: Marks,
        high_water_mark: u64,
        now: Instant,
    ) {
        if high_water_mark > marks.committed {
            return self.fail(SessionError::AheadOfQueue {
                high_water_mark,
                committed: marks.committed,
            });
        }
        self.out.push_back(Effect::Connected {
            sink_id,
            journal_id: journal_id.clone(),
            high_water_mark,
        });
        // What this journal holds beyond our ack mark is its own (it kept it at Resolve):
        // acknowledge it like a batch, and confirm once that is durable.
        let mut session_acked = 0;
        if high_water_mark > marks.acked {
            self.out.push_back(Effect::Adopt {
                journal_id: journal_id.clone(),
                upto: high_water_mark,
            });
            session_acked = high_water_mark;
        }
        self.state = State::Streaming(Stream {
            journal_id,
            in_flight: VecDeque::new(),
            cursor: marks.acked.max(high_water_mark) + 1,
            batch_id: 0,
            session_acked,
            confirmed: 0,
            durable: marks.durable,
            committed: marks.committed,
            asked: false,
            idle_at: None,
            draining: None,
            ended: Ended::Shutdown,
            ack_deadline: now + self.cfg.ack_timeout,
        });
    }

    fn answered(&mut self, batch_id: u64, last: u64, rejected: Option<String>, now: Instant) {
        let ack_timeout = self.cfg.ack_timeout;
        let State::Streaming(s) = &mut self.state else {
            return;
        };
        let Some(f) = s.in_flight.pop_front() else {
            return self.fail(SessionError::Protocol(
                "ack without a batch in flight".into(),
            ));
        };
        if f.batch_id != batch_id || f.last != last {
            return self.fail(SessionError::Protocol(format!(
                "ack {batch_id}/{last} does not match batch {}/{}",
                f.batch_id, f.last
            )));
        }
        self.out.push_back(Effect::Acked {
            journal_id: s.journal_id.clone(),
            first: f.first,
            last,
            sent_at: f.sent_at,
            rejected,
        });
        s.session_acked = last;
        s.ack_deadline = now + ack_timeout;
        // A drain waits while acks keep coming.
        if s.draining.is_some() {
            s.draining = Some(now);
        }
    }

    /// Produces what the state calls for now: a `Confirm`, the next `SendBatch`, or the
    /// end of a finished drain.
    fn step(&mut self) {
        let window = self.cfg.window;
        let State::Streaming(s) = &mut self.state else {
            return;
        };
        // Confirm what this sink acked and we have durably recorded as its own: only then
        // may it write those records to its outputs.
        let upto = s.durable.min(s.session_acked);
        if upto > s.confirmed {
            s.confirmed = upto;
            self.out
                .push_back(send(agent_frame::Kind::Confirm(Confirm { upto_seq: upto })));
            return;
        }
        if s.draining.is_none() && !s.asked && s.idle_at.is_none() && s.in_flight.len() < window {
            s.asked = true;
            self.out.push_back(Effect::SendBatch {
                batch_id: s.batch_id + 1,
                from: s.cursor,
            });
            return;
        }
        // Leave only when the sink can output everything it acked in this session.
        if s.draining.is_some()
            && s.in_flight.is_empty()
            && !s.asked
            && s.confirmed >= s.session_acked
        {
            let ended = s.ended;
            self.close(Ok(ended));
        }
    }

    fn fail(&mut self, e: SessionError) {
        self.close(Err(e));
    }

    fn close(&mut self, r: Result<Ended, SessionError>) {
        if !self.is_closed() {
            // Effects already produced (an ack to record) still apply.
            self.state = State::Closed;
            self.out.push_back(Effect::Closed(r));
        }
    }
}

fn send(kind: agent_frame::Kind) -> Effect {
    Effect::Send(AgentFrame { kind: Some(kind) })
}
