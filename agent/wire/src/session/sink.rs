//! The sink's side of a data stream, without I/O.

use std::collections::VecDeque;

use crate::{
    AgentFrameRaw, BatchInfo, Hello, MAX_QUEUE_ID, PROTOCOL_VERSION, Refusal, Resolve, Resolved,
    SinkFrame, Welcome, scan_batch, sink_frame, valid_id,
};

/// What became of a batch handed to the journal ([`Effect::Submit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every record up to this seq is durable (or already was): `Ack`.
    Stored(u64),
    /// The batch will never be stored (the journal's mark moved over it): `Rejected`.
    Rejected(String),
    /// The journal could not take it: the stream ends with a refusal, so that nothing
    /// after it is journaled over the gap.
    Failed(String),
}

/// What the driver must do next ([`SinkStream::poll`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write this frame to the stream.
    Send(SinkFrame),
    /// Ask the journal to resolve this queue with the agent's `Resolve`; answer with
    /// [`SinkStream::resolved`].
    Resolve {
        /// The queue.
        queue_id: String,
        /// The agent's marks and incarnation.
        resolve: Resolve,
    },
    /// Record the agent's confirmation that seqs up to `upto` are this sink's.
    Confirm {
        /// The queue.
        queue_id: String,
        /// Up to this seq.
        upto: u64,
    },
    /// Hand an encoded batch to the journal (checked: `info`); its outcomes go to
    /// [`SinkStream::outcome`] in the order of the submits.
    Submit {
        /// The queue.
        queue_id: String,
        /// The encoded `Batch`, as received.
        batch: bytes::Bytes,
        /// What the one-pass check found.
        info: BatchInfo,
        /// `Resolve.instance` of this stream.
        instance: u64,
    },
    /// The stream is over: `Ok` when the agent finished it, else why it was ended.
    Closed(Result<(), String>),
}

#[derive(Debug)]
enum State {
    Hello,
    Resolve { queue_id: String },
    Resolving { queue_id: String, instance: u64 },
    Streaming { queue_id: String, instance: u64 },
    Closed,
}

/// The sink's side of one data stream: checks `Hello`, answers `Welcome`, has the journal
/// resolve the agent's marks, answers `Resolved`, then hands batches and confirmations to
/// the journal and answers each batch, in order, once the journal has decided on it.
/// No sockets, tasks or storage inside.
#[derive(Debug)]
pub struct SinkStream {
    sink_id: String,
    journal_id: String,
    state: State,
    /// Submitted batches not answered yet: (batch id, last seq).
    pending: VecDeque<(u64, u64)>,
    /// The agent finished its side.
    finished: bool,
    out: VecDeque<Effect>,
}

impl SinkStream {
    /// A stream of a sink named `sink_id` whose journal is `journal_id`.
    pub fn new(sink_id: &str, journal_id: &str) -> SinkStream {
        SinkStream {
            sink_id: sink_id.into(),
            journal_id: journal_id.into(),
            state: State::Hello,
            pending: VecDeque::new(),
            finished: false,
            out: VecDeque::new(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<Effect> {
        self.out.pop_front()
    }

    /// Whether the stream is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the stream is resolved and carries batches.
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming { .. })
    }

    /// Batches submitted and not answered yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The queue this stream is for, once `Hello` named it.
    pub fn queue_id(&self) -> Option<&str> {
        match &self.state {
            State::Resolve { queue_id }
            | State::Resolving { queue_id, .. }
            | State::Streaming { queue_id, .. } => Some(queue_id),
            _ => None,
        }
    }

    /// The stream's `Hello` (the driver reads the first frame itself: control and admin
    /// streams start differently).
    pub fn hello(&mut self, hello: Hello) {
        if !matches!(self.state, State::Hello) {
            return self.refuse("hello twice".into());
        }
        if hello.protocol_version != PROTOCOL_VERSION {
            return self.refuse(format!(
                "protocol version {} not supported (sink speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ));
        }
        if !valid_id(&hello.queue_id, MAX_QUEUE_ID) {
            return self.refuse(format!(
                "queue id of {} bytes refused: 1 to {MAX_QUEUE_ID} ASCII letters, digits, - _ .",
                hello.queue_id.len()
            ));
        }
        self.send(sink_frame::Kind::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            sink_id: self.sink_id.clone(),
            journal_id: self.journal_id.clone(),
        }));
        self.state = State::Resolve {
            queue_id: hello.queue_id,
        };
    }

    /// A frame from the agent (`None`: it finished its side of the stream).
    pub fn frame(&mut self, frame: Option<AgentFrameRaw>) {
        let Some(frame) = frame else {
            self.finished = true;
            return self.finish_if_done();
        };
        match &self.state {
            State::Closed => {}
            State::Resolve { queue_id } => {
                let Some(resolve) = frame.resolve else {
                    return self.end(Err(format!("expected resolve, got {frame:?}")));
                };
                let queue_id = queue_id.clone();
                self.out.push_back(Effect::Resolve {
                    queue_id: queue_id.clone(),
                    resolve,
                });
                self.state = State::Resolving {
                    queue_id,
                    instance: resolve.instance,
                };
            }
            State::Streaming { queue_id, instance } => {
                let (queue_id, instance) = (queue_id.clone(), *instance);
                if let Some(c) = frame.confirm {
                    self.out.push_back(Effect::Confirm {
                        queue_id,
                        upto: c.upto_seq,
                    });
                    return;
                }
                let Some(batch) = frame.batch else {
                    return self.end(Err("expected batch or confirm".into()));
                };
                let info = match scan_batch(&batch) {
                    Ok(info) => info,
                    Err(e) => return self.end(Err(e.to_string())),
                };
                self.pending.push_back((info.batch_id, info.last));
                self.out.push_back(Effect::Submit {
                    queue_id,
                    batch,
                    info,
                    instance,
                });
            }
            State::Hello | State::Resolving { .. } => {
                self.end(Err("frame before the stream was resolved".into()));
            }
        }
    }

    /// The journal's answer to `Effect::Resolve`: the high-water mark, or a refusal.
    pub fn resolved(&mut self, r: Result<u64, Refusal>) {
        let State::Resolving { queue_id, instance } = &self.state else {
            return;
        };
        let (queue_id, instance) = (queue_id.clone(), *instance);
        match r {
            Ok(high_water_mark) => {
                self.send(sink_frame::Kind::Resolved(Resolved { high_water_mark }));
                self.state = State::Streaming { queue_id, instance };
            }
            Err(refusal) => {
                let reason = refusal.reason.clone();
                self.send(sink_frame::Kind::Refusal(refusal));
                self.end(Err(reason));
            }
        }
    }

    /// What became of the oldest submitted batch not answered yet.
    pub fn outcome(&mut self, outcome: Outcome) {
        let Some((batch_id, last_seq)) = self.pending.pop_front() else {
            return;
        };
        match outcome {
            Outcome::Stored(last_seq) => {
                self.send(sink_frame::Kind::Ack(crate::Ack { batch_id, last_seq }));
            }
            Outcome::Rejected(reason) => {
                self.send(sink_frame::Kind::Rejected(crate::Rejected {
                    batch_id,
                    last_seq,
                    reason,
                }));
            }
            Outcome::Failed(e) => return self.refuse(format!("journal: {e}")),
        }
        self.finish_if_done();
    }

    fn finish_if_done(&mut self) {
        if self.finished && self.pending.is_empty() {
            self.end(Ok(()));
        }
    }

    fn send(&mut self, kind: sink_frame::Kind) {
        self.out
            .push_back(Effect::Send(SinkFrame { kind: Some(kind) }));
    }

    /// Ends the stream with a refusal the agent can read.
    fn refuse(&mut self, reason: String) {
        self.send(sink_frame::Kind::Refusal(Refusal {
            reason: reason.clone(),
            code: 0,
        }));
        self.end(Err(reason));
    }

    fn end(&mut self, r: Result<(), String>) {
        if !self.is_closed() {
            self.state = State::Closed;
            self.out.push_back(Effect::Closed(r));
        }
    }
}
