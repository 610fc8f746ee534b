//! The two sides of the control stream as state machines, without I/O: the agent announces
//! its transforms (`ControlHello`), the sink offers modules (`ModuleOffer`), the agent
//! reports what it did with each (`ModuleOutcome`). The control client and the sink's
//! control handler drive them over QUIC.
//!
//! The rules they keep:
//! - the agent's outcomes survive a broken stream: one leaves the agent's outbox only once
//!   written, and the next stream (to any sink) sends the rest first;
//! - the sink keeps at most [`MAX_PIPELINES_PER_AGENT`] announced pipelines, each named in
//!   at most [`MAX_NAME_BYTES`], and takes outcomes only for those: an agent certificate
//!   cannot add rows to the sink's store without bound.

use std::collections::VecDeque;

use crate::{
    AgentFrame, ControlHello, ModuleOffer, ModuleOutcome, SinkFrame, agent_frame, sink_frame,
};

/// Pipelines an agent may announce and report on: more than any real config, few
/// enough that one agent certificate cannot fill the sink's store (rows per agent).
pub const MAX_PIPELINES_PER_AGENT: usize = 64;
/// Longest pipeline name kept from an agent.
pub const MAX_NAME_BYTES: usize = 128;

/// The agent's side: its hello, the sink's offers in, its outcomes out.
#[derive(Debug, Default)]
pub struct ControlAgent {
    /// Frames to write, the hello (once per stream) before the outcomes.
    hello: Option<ControlHello>,
    outbox: VecDeque<ModuleOutcome>,
}

impl ControlAgent {
    /// A new stream opens: `hello` goes first, then every outcome not yet written.
    pub fn open(&mut self, hello: ControlHello) {
        self.hello = Some(hello);
    }

    /// A frame from the sink: the offer to act on, if it is one (other kinds are for
    /// newer agents and ignored).
    pub fn handle(&mut self, frame: SinkFrame) -> Option<ModuleOffer> {
        match frame.kind {
            Some(sink_frame::Kind::Offer(o)) => Some(o),
            _ => None,
        }
    }

    /// What the agent did with an offer (or a rollback it made): queued to be reported.
    pub fn outcome(&mut self, outcome: ModuleOutcome) {
        self.outbox.push_back(outcome);
    }

    /// The next frame to write, if any; it stays first until [`sent`](Self::sent).
    pub fn next_frame(&self) -> Option<AgentFrame> {
        let kind = match (&self.hello, self.outbox.front()) {
            (Some(h), _) => agent_frame::Kind::ControlHello(h.clone()),
            (None, Some(o)) => agent_frame::Kind::Outcome(o.clone()),
            (None, None) => return None,
        };
        Some(AgentFrame { kind: Some(kind) })
    }

    /// The frame [`next_frame`](Self::next_frame) returned was written.
    pub fn sent(&mut self) {
        if self.hello.take().is_none() {
            self.outbox.pop_front();
        }
    }

    /// Outcomes not yet written.
    pub fn pending(&self) -> usize {
        self.outbox.len()
    }
}

/// What the sink's side asks its driver to do.
#[derive(Debug, PartialEq)]
pub enum SinkEffect {
    /// Record the outcome an agent reported.
    Outcome(ModuleOutcome),
    /// An outcome for a pipeline the agent did not announce: dropped (log it, cut).
    Unannounced {
        /// The pipeline named.
        pipeline: String,
    },
}

/// The sink's side of one agent's control stream.
#[derive(Debug, Clone)]
pub struct ControlSink {
    hello: ControlHello,
    announced: usize,
}

impl ControlSink {
    /// The stream of an agent that sent `hello`; keeps what the limits allow.
    pub fn new(mut hello: ControlHello) -> Self {
        let announced = hello.transforms.len();
        hello
            .transforms
            .retain(|t| !t.pipeline.is_empty() && t.pipeline.len() <= MAX_NAME_BYTES);
        hello.transforms.truncate(MAX_PIPELINES_PER_AGENT);
        ControlSink { hello, announced }
    }

    /// The transforms kept from the hello.
    pub fn hello(&self) -> &ControlHello {
        &self.hello
    }

    /// How many the agent announced, kept or not (more than kept: log it).
    pub fn announced(&self) -> usize {
        self.announced
    }

    /// The announced pipelines' names.
    pub fn pipelines(&self) -> Vec<String> {
        self.hello
            .transforms
            .iter()
            .map(|t| t.pipeline.clone())
            .collect()
    }

    /// A frame from the agent.
    pub fn handle(&self, frame: AgentFrame) -> Option<SinkEffect> {
        let Some(agent_frame::Kind::Outcome(o)) = frame.kind else {
            return None;
        };
        if self
            .hello
            .transforms
            .iter()
            .any(|t| t.pipeline == o.pipeline)
        {
            Some(SinkEffect::Outcome(o))
        } else {
            Some(SinkEffect::Unannounced {
                pipeline: o.pipeline,
            })
        }
    }

    /// The frame that offers `offer`.
    pub fn offer(&self, offer: ModuleOffer) -> SinkFrame {
        SinkFrame {
            kind: Some(sink_frame::Kind::Offer(offer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TransformState;

    fn outcome(pipeline: &str, n: u64) -> ModuleOutcome {
        ModuleOutcome {
            pipeline: pipeline.into(),
            version: format!("v{n}"),
            ..ModuleOutcome::default()
        }
    }

    fn hello(pipelines: &[&str]) -> ControlHello {
        ControlHello {
            transforms: pipelines
                .iter()
                .map(|p| TransformState {
                    pipeline: p.to_string(),
                    ..TransformState::default()
                })
                .collect(),
        }
    }

    #[test]
    fn outcomes_survive_a_broken_stream_and_follow_the_next_hello() {
        let mut a = ControlAgent::default();
        a.open(hello(&["p"]));
        a.outcome(outcome("p", 1));
        a.outcome(outcome("p", 2));
        assert!(matches!(
            a.next_frame().and_then(|f| f.kind),
            Some(agent_frame::Kind::ControlHello(_))
        ));
        a.sent();
        // Outcome 1 is written; the stream breaks while writing outcome 2.
        a.sent();
        assert_eq!(a.pending(), 1);
        a.open(hello(&["p"]));
        assert!(matches!(
            a.next_frame().and_then(|f| f.kind),
            Some(agent_frame::Kind::ControlHello(_))
        ));
        a.sent();
        match a.next_frame().and_then(|f| f.kind) {
            Some(agent_frame::Kind::Outcome(o)) => assert_eq!(o.version, "v2"),
            other => panic!("expected outcome 2, got {other:?}"),
        }
        a.sent();
        assert!(a.next_frame().is_none());
    }

    #[test]
    fn the_sink_keeps_only_what_the_limits_allow_and_outcomes_of_announced_pipelines() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let mut names: Vec<String> = (0..MAX_PIPELINES_PER_AGENT + 5)
            .map(|i| format!("p{i}"))
            .collect();
        names.insert(0, long.clone());
        names.insert(1, String::new());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = ControlSink::new(hello(&refs));
        assert_eq!(s.announced(), MAX_PIPELINES_PER_AGENT + 7);
        assert_eq!(s.pipelines().len(), MAX_PIPELINES_PER_AGENT);
        assert_eq!(s.pipelines()[0], "p0");
        let frame = |o| AgentFrame {
            kind: Some(agent_frame::Kind::Outcome(o)),
        };
        assert_eq!(
            s.handle(frame(outcome("p0", 1))),
            Some(SinkEffect::Outcome(outcome("p0", 1)))
        );
        assert_eq!(
            s.handle(frame(outcome(&long, 1))),
            Some(SinkEffect::Unannounced { pipeline: long })
        );
        let last = format!("p{}", MAX_PIPELINES_PER_AGENT);
        assert!(matches!(
            s.handle(frame(outcome(&last, 1))),
            Some(SinkEffect::Unannounced { .. })
        ));
    }
}
