//! The agent's side of the control plane: a control stream to the sink, pushed modules
//! verified, self-checked, persisted and swapped in; rollbacks reported.
//!
//! The first transform of each pipeline is the one a push for that pipeline replaces.
//! Its state (active pushed module, the one before it, ids of versions rolled back) is a
//! checkpoint in the queue file (`transform:<pipeline>`), so a restart runs what was
//! accepted last, and a rolled-back version is not taken again when the sink re-offers it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ControlConfig;
use dataweaver_core::Record;
use dataweaver_forward::{ForwardError, Link};
use dataweaver_queue::WhenFull;
use dataweaver_queue::{Checkpoint, Queue};
use dataweaver_transform::TransformConfig;
use dataweaver_transform::{Instance, Module, RollbackGuard, Settings, SlotEvent, SwapSlot};
use dataweaver_wire::session::control::ControlAgent;
use dataweaver_wire::{
    self as wire, ControlHello, ModuleOffer, ModuleOutcome, SinkFrame, TransformState,
};

/// A stage's settings and swap slot, as [`dataweaver_transform::Chain::slots`] lists them.
pub type StageSlot = (Settings, Arc<SwapSlot>);

/// A stage the control plane manages: the first transform of a pipeline.
struct Managed {
    pipeline: String,
    config: TransformConfig,
    settings: Settings,
    slot: Arc<SwapSlot>,
    /// `(version, sha256)` the stage runs or is about to run (an offer not yet taken).
    intended: Mutex<(String, String)>,
}

/// A module kept in the queue file. CBOR; do not reorder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    version: String,
    hash: String,
    #[serde(with = "serde_bytes")]
    module: Vec<u8>,
}

/// A managed stage's persisted state. CBOR; do not reorder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct State {
    /// The pushed module in use (`None`: the configured one).
    active: Option<Stored>,
    /// The one before it (`None`: the configured one).
    previous: Option<Stored>,
    /// Hashes of versions rolled back here, newest last.
    rejected: Vec<String>,
    /// Highest offer sequence number taken for this pipeline: an offer must be above it,
    /// so an old signed offer cannot be replayed after a newer one.
    #[serde(default)]
    seq: u64,
}

/// Rolled-back hashes remembered.
const REJECTED_KEEP: usize = 64;

/// The agent's control plane.
pub struct Control {
    cfg: ControlConfig,
    stages: Vec<Managed>,
    queue: Queue,
    cache: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// Manages the first transform stage of each pipeline in `pipelines` (its name, its
    /// transforms' config and its chain's slots, in order).
    pub fn new(
        cfg: ControlConfig,
        pipelines: Vec<(String, Vec<TransformConfig>, Vec<StageSlot>)>,
        queue: Queue,
        cache: PathBuf,
    ) -> Control {
        let stages = pipelines
            .into_iter()
            .filter_map(|(pipeline, transforms, slots)| {
                let config = transforms.into_iter().next()?;
                let (settings, slot) = slots.into_iter().next()?;
                let intended = Mutex::new(slot.active_version());
                Some(Managed {
                    pipeline,
                    config,
                    settings,
                    slot,
                    intended,
                })
            })
            .collect();
        Control {
            cfg,
            stages,
            queue,
            cache,
        }
    }

    fn load_state(&self, pipeline: &str) -> State {
        self.queue
            .checkpoint(&format!("transform:{pipeline}"))
            .ok()
            .flatten()
            .and_then(|v| decode_state(&v))
            .unwrap_or_default()
    }

    async fn save_state(&self, pipeline: &str, state: &State) -> Result<(), String> {
        let mut value = Vec::new();
        ciborium::into_writer(state, &mut value).map_err(|e| e.to_string())?;
        let cp = Checkpoint {
            key: format!("transform:{pipeline}"),
            value,
        };
        self.queue
            .append_with(Vec::new(), Vec::new(), Some(cp), WhenFull::Block)
            .await
            .map(|_| ())
            .map_err(|e| format!("could not persist it: {e}"))
    }

    /// Offers each stage the pushed module it ran last (before any record flows, so
    /// every record after a restart goes through it). Blocking: compiles.
    pub fn restore(&self) {
        for m in &self.stages {
            let Some(st) = self.load_state(&m.pipeline).active else {
                continue;
            };
            match Module::from_bytes(
                &st.module,
                m.settings.clone(),
                Some(st.version.clone()),
                Some(&self.cache),
            ) {
                Ok(module) => {
                    tracing::info!(pipeline = %m.pipeline, module = %module.label(), "pushed transform restored");
                    *lock(&m.intended) = (module.version.clone(), module.hash.clone());
                    m.slot.offer(module);
                }
                Err(e) => {
                    tracing::error!(pipeline = %m.pipeline, version = %st.version, error = %e, "stored pushed transform does not load; running the configured one")
                }
            }
        }
    }

    fn stage(&self, pipeline: &str) -> Option<&Managed> {
        self.stages.iter().find(|m| m.pipeline == pipeline)
    }

    fn outcome(
        m: &Managed,
        version: &str,
        hash: &str,
        outcome: &str,
        reason: &str,
    ) -> ModuleOutcome {
        ModuleOutcome {
            pipeline: m.pipeline.clone(),
            version: version.into(),
            sha256: hash.into(),
            outcome: outcome.into(),
            reason: reason.into(),
            active_version: lock(&m.intended).0.clone(),
        }
    }

    /// Verifies, checks, persists and offers a pushed module or a signed rollback order
    /// (to a module, or with none to the configured one).
    async fn handle_offer(self: &Arc<Self>, o: ModuleOffer) -> ModuleOutcome {
        let hash = dataweaver_transform::wasm::sha256_hex(&o.module);
        let Some(m) = self.stage(&o.pipeline) else {
            return ModuleOutcome {
                pipeline: o.pipeline.clone(),
                version: o.version,
                sha256: hash,
                outcome: "refused".into(),
                reason: format!("no transform in pipeline `{}` on this agent", o.pipeline),
                active_version: String::new(),
            };
        };
        let refuse = |why: String| {
            tracing::warn!(pipeline = %m.pipeline, version = %o.version, reason = %why, "pushed transform refused");
            Self::outcome(m, &o.version, &hash, "refused", &why)
        };
        if o.module.is_empty() && !o.rollback {
            return refuse("unsigned rollback order (from an older sink?): a rollback must be signed by a trusted key (`transform rollback --key`)".into());
        }
        if self.cfg.trusted_keys.is_empty() {
            return refuse("no trusted keys configured (control.trusted_keys)".into());
        }
        if !self
            .cfg
            .trusted_keys
            .iter()
            .any(|k| k.trim() == o.key.trim())
        {
            return refuse(format!("signed by an untrusted key {}", o.key));
        }
        if let Err(why) = super::verify_offer(&o) {
            return refuse(why);
        }
        let mut state = self.load_state(&m.pipeline);
        // An operator's signed rollback may return to a version rolled back here before.
        if !o.rollback && state.rejected.contains(&hash) {
            return refuse("this module was rolled back here before; push a new version".into());
        }
        let running = lock(&m.intended).1 == hash;
        if o.seq <= state.seq {
            if o.seq == state.seq && running {
                return Self::outcome(m, &o.version, &hash, "active", "already running");
            }
            return refuse(format!(
                "sequence {} is not newer than {} taken before for this pipeline: an older offer replayed (or signed where the clock is behind: sign again with a higher --seq)",
                o.seq, state.seq
            ));
        }
        state.seq = o.seq;
        if o.module.is_empty() {
            return self.revert_to_configured(m, state).await;
        }
        if running {
            if let Err(e) = self.save_state(&m.pipeline, &state).await {
                return refuse(e);
            }
            return Self::outcome(m, &o.version, &hash, "active", "already running");
        }
        // A rollback order's vectors are not signed: it self-checks on recent input.
        let vectors = if o.rollback { Vec::new() } else { o.vectors };
        let module = {
            let (me, settings, version, bytes, sample) = (
                self.clone(),
                m.settings.clone(),
                o.version.clone(),
                o.module.clone(),
                m.slot.sample(),
            );
            let checked = tokio::task::spawn_blocking(move || {
                let module = Module::from_bytes(&bytes, settings, Some(version), Some(&me.cache))
                    .map_err(|e| format!("does not load: {e}"))?;
                self_check(&module, &vectors, sample)?;
                Ok::<_, String>(module)
            })
            .await;
            match checked {
                Ok(Ok(module)) => module,
                Ok(Err(why)) => return refuse(why),
                Err(e) => return refuse(format!("self-check crashed: {e}")),
            }
        };
        state.previous = state.active.take();
        state.active = Some(Stored {
            version: o.version.clone(),
            hash: hash.clone(),
            module: o.module,
        });
        if let Err(e) = self.save_state(&m.pipeline, &state).await {
            return refuse(e);
        }
        *lock(&m.intended) = (module.version.clone(), module.hash.clone());
        m.slot.offer_guarded(
            module,
            RollbackGuard {
                window_batches: self.cfg.rollback_window_batches,
                max_failed_share: self.cfg.rollback_failed_share,
            },
        );
        if o.rollback {
            tracing::warn!(pipeline = %m.pipeline, version = %o.version, "signed rollback order accepted; swapping at the next batch");
            return Self::outcome(
                m,
                &o.version,
                &hash,
                "rolled_back",
                "rolled back by the operator",
            );
        }
        tracing::info!(pipeline = %m.pipeline, version = %o.version, "pushed transform accepted; swapping at the next batch");
        Self::outcome(m, &o.version, &hash, "accepted", "")
    }

    /// The operator rolled back past every push: back to the configured module. `state`
    /// carries the order's sequence number, persisted either way.
    async fn revert_to_configured(
        self: &Arc<Self>,
        m: &Managed,
        mut state: State,
    ) -> ModuleOutcome {
        let (version, hash) = lock(&m.intended).clone();
        let fail = |why: String| Self::outcome(m, &version, &hash, "refused", &why);
        let Some(current) = state.active.take() else {
            if let Err(e) = self.save_state(&m.pipeline, &state).await {
                return fail(e);
            }
            return Self::outcome(m, &version, &hash, "active", "the configured module runs");
        };
        let loaded = {
            let (settings, path, cache) = (
                m.settings.clone(),
                m.config.module.clone(),
                self.cache.clone(),
            );
            tokio::task::spawn_blocking(move || Module::load(&path, settings, Some(&cache))).await
        };
        let module = match loaded {
            Ok(Ok(module)) => module,
            Ok(Err(e)) => return fail(format!("the configured module does not load: {e}")),
            Err(e) => return fail(e.to_string()),
        };
        state.previous = None;
        if let Err(e) = self.save_state(&m.pipeline, &state).await {
            return fail(e);
        }
        *lock(&m.intended) = (module.version.clone(), module.hash.clone());
        tracing::warn!(pipeline = %m.pipeline, from = %current.version, to = %module.version, "transform rolled back to the configured module by the operator");
        m.slot.offer(module);
        Self::outcome(
            m,
            &current.version,
            &current.hash,
            "rolled_back",
            "rolled back by the operator to the configured module",
        )
    }

    /// A stage's own report: persists a rollback, tells the sink what runs.
    async fn handle_event(&self, idx: usize, e: SlotEvent) -> Option<ModuleOutcome> {
        let m = self.stages.get(idx)?;
        match e {
            SlotEvent::Swapped { version, hash } => {
                Some(Self::outcome(m, &version, &hash, "active", ""))
            }
            SlotEvent::RolledBack {
                version,
                hash,
                active_version,
                reason,
            } => {
                // The stage went back to what it ran before: the stored previous
                // module, or else the configured one.
                let mut state = self.load_state(&m.pipeline);
                let (_, running) = m.slot.active_version();
                state.active = match state.previous.take() {
                    Some(p) if p.hash == running => Some(p),
                    _ => None,
                };
                remember_rejected(&mut state, hash.clone());
                if let Err(e) = self.save_state(&m.pipeline, &state).await {
                    tracing::error!(pipeline = %m.pipeline, error = %e, "rollback not persisted");
                }
                *lock(&m.intended) = m.slot.active_version();
                let mut o = Self::outcome(m, &version, &hash, "rolled_back", &reason);
                o.active_version = active_version;
                Some(o)
            }
        }
    }

    fn hello(&self) -> ControlHello {
        ControlHello {
            transforms: self
                .stages
                .iter()
                .map(|m| {
                    let (version, sha256) = lock(&m.intended).clone();
                    TransformState {
                        pipeline: m.pipeline.clone(),
                        transform: m.settings.name.clone(),
                        version,
                        sha256,
                        pushed: self.load_state(&m.pipeline).active.is_some(),
                    }
                })
                .collect(),
        }
    }

    /// Keeps a control stream open to the first reachable of `sinks` until `shutdown`,
    /// over the forwarder's `link` (its endpoint, TLS, dial and back-off).
    pub async fn run(self: Arc<Self>, link: Link, sinks: Vec<String>, shutdown: CancellationToken) {
        if self.stages.is_empty() || sinks.is_empty() {
            return;
        }
        let (ev_tx, mut events) = mpsc::unbounded_channel::<(usize, SlotEvent)>();
        for (i, m) in self.stages.iter().enumerate() {
            let mut rx = m.slot.subscribe();
            let tx = ev_tx.clone();
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    if tx.send((i, e)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(ev_tx);
        let mut core = ControlAgent::default();
        let mut failures = 0u32;
        let mut next = 0usize;
        loop {
            let addr = &sinks[next % sinks.len()];
            let mut opened = false;
            let session = self.session(&link, addr, &mut events, &mut core, &mut opened, &shutdown);
            match session.await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(sink = %addr, error = %e, "control stream ended");
                    next += 1;
                }
            }
            failures = if opened {
                1
            } else {
                failures.saturating_add(1)
            };
            let pause = tokio::time::sleep(link.backoff(failures));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut pause => break,
                    Some((i, e)) = events.recv() => {
                        if let Some(o) = self.handle_event(i, e).await {
                            core.outcome(o);
                        }
                    }
                }
            }
        }
    }

    /// One control stream: hello, then offers in and outcomes out until it breaks.
    async fn session(
        self: &Arc<Self>,
        link: &Link,
        addr: &str,
        events: &mut mpsc::UnboundedReceiver<(usize, SlotEvent)>,
        core: &mut ControlAgent,
        opened: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<(), ForwardError> {
        // A stop must not wait out the handshake with an unreachable sink.
        let conn = tokio::select! {
            c = link.connect(addr) => c?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let (mut send, mut recv) = conn.open_bi().await?;
        core.open(self.hello());
        // A reader task: a frame read must never be cut short by another select branch.
        let (ftx, mut frames) = mpsc::channel::<SinkFrame>(4);
        let reader = tokio::spawn(async move {
            while let Ok(Some(frame)) =
                wire::read_frame_max::<SinkFrame>(&mut recv, wire::MAX_CONTROL_FRAME).await
            {
                if ftx.send(frame).await.is_err() {
                    return;
                }
            }
        });
        let result = 'session: loop {
            while let Some(frame) = core.next_frame() {
                if let Err(e) = wire::write_frame(&mut send, &frame).await {
                    break 'session Err(e.into());
                }
                if !*opened {
                    tracing::info!(sink = %addr, "control stream open");
                    *opened = true;
                }
                core.sent();
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = send.finish();
                    conn.close(0u32.into(), b"agent stopping");
                    break Ok(());
                }
                Some((i, e)) = events.recv() => {
                    if let Some(o) = self.handle_event(i, e).await {
                        core.outcome(o);
                    }
                }
                frame = frames.recv() => match frame {
                    Some(frame) => {
                        if let Some(offer) = core.handle(frame) {
                            let outcome = self.handle_offer(offer).await;
                            core.outcome(outcome);
                        }
                    }
                    None => break Err(ForwardError::Protocol("sink closed the control stream".into())),
                }
            }
        };
        reader.abort();
        result
    }
}

/// A stored [`State`]; `None` if it does not decode (the configured module runs then).
pub(crate) fn decode_state(value: &[u8]) -> Option<State> {
    ciborium::from_reader(value).ok()
}

fn remember_rejected(state: &mut State, hash: String) {
    if !state.rejected.contains(&hash) {
        state.rejected.push(hash);
    }
    let extra = state.rejected.len().saturating_sub(REJECTED_KEEP);
    state.rejected.drain(..extra);
}

/// Runs a new module once before it goes live: `init` (done by loading), then one
/// batch of the shipped test vectors (NDJSON), or else of the stage's recent input.
fn self_check(module: &Arc<Module>, vectors: &[u8], sample: Vec<Record>) -> Result<(), String> {
    let inputs: Vec<Record> = if vectors.is_empty() {
        sample
    } else {
        String::from_utf8_lossy(vectors)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(dataweaver_transform::tryout::parse_line)
            .collect()
    };
    if inputs.is_empty() {
        return Ok(());
    }
    let n = inputs.len();
    let mut inst = Instance::new(module.clone()).map_err(|e| format!("self-check: {e}"))?;
    match inst.process(inputs) {
        Err((_, why, _)) => Err(format!("self-check failed: {why}")),
        Ok(p) if p.errors.len() == n => Err(format!(
            "self-check failed: every one of {n} test records was refused; first: {}",
            p.errors[0].1
        )),
        Ok(_) => Ok(()),
    }
}
