//! The transform stage: where a pipeline's records are rewritten before they are queued.
//!
//! A pipeline's [`Chain`] holds one [`Stage`] per configured WASM module. [`Chain::apply`]
//! is called once per source batch, before the queue append, under the pipeline's lock, so
//! a batch boundary is the only place a module can be swapped: a new version is *offered*
//! to the stage's [`SwapSlot`] (by the file watcher here, by the control plane later) and
//! taken at the start of the next batch. Every record is therefore transformed by exactly
//! one version.

#![warn(missing_docs, unreachable_pub)]

mod config;
pub mod tryout;
pub mod wasm;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

pub use config::{PreopenDir, TransformConfig, WasiGrant};
use dataweaver_core::Counters;
use dataweaver_core::Record;
pub use wasm::{Failure, Instance, Module, Settings, TransformError};

/// What a transform chain made of one input batch.
#[derive(Debug, Default)]
pub struct Output {
    /// Records to queue.
    pub records: Vec<Record>,
    /// Records that could not be processed, with the reason (for the dead-letter table).
    pub failed: Vec<(Record, String)>,
}

/// Watch over a version installed by the control plane: within its first
/// `window_batches` batches, more than `max_failed_share` of them failing (a trap, a
/// limit, or an error for every record) swaps the previous version back in.
#[derive(Debug, Clone, Copy)]
pub struct RollbackGuard {
    /// Batches watched after the swap.
    pub window_batches: u32,
    /// Share of failed batches beyond which the stage rolls back.
    pub max_failed_share: f64,
}

/// What a stage reports about versions (to the control plane).
#[derive(Debug, Clone)]
pub enum SlotEvent {
    /// A version offered through the slot is now running.
    Swapped {
        /// Its version.
        version: String,
        /// Its SHA-256.
        hash: String,
    },
    /// A guarded version failed too often and the previous one runs again.
    RolledBack {
        /// The version given up.
        version: String,
        /// Its SHA-256.
        hash: String,
        /// The version running again.
        active_version: String,
        /// Why.
        reason: String,
    },
}

/// Records kept from recent input for a self-check of a new version.
const SAMPLE_MAX: usize = 32;

/// Where a new version of a module is handed to a running stage.
#[derive(Debug, Default)]
pub struct SwapSlot {
    pending: Mutex<Option<(Arc<Module>, Option<RollbackGuard>)>>,
    active: Mutex<(String, String, String)>,
    sample: Mutex<Vec<Record>>,
    events: Mutex<Option<tokio::sync::mpsc::UnboundedSender<SlotEvent>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SwapSlot {
    /// Offers `module`; the stage takes it at its next batch boundary (a later offer
    /// replaces one not yet taken).
    pub fn offer(&self, module: Arc<Module>) {
        *lock(&self.pending) = Some((module, None));
    }

    /// Like [`offer`](Self::offer), watched by `guard` once it runs.
    pub fn offer_guarded(&self, module: Arc<Module>, guard: RollbackGuard) {
        *lock(&self.pending) = Some((module, Some(guard)));
    }

    /// `name@version` of the module the stage runs now.
    pub fn active(&self) -> String {
        lock(&self.active).0.clone()
    }

    /// `(version, sha256)` of the module the stage runs now.
    pub fn active_version(&self) -> (String, String) {
        let a = lock(&self.active);
        (a.1.clone(), a.2.clone())
    }

    /// Up to the last `SAMPLE_MAX` records the stage was given.
    pub fn sample(&self) -> Vec<Record> {
        lock(&self.sample).clone()
    }

    /// Version events from now on go to the returned receiver (replacing an earlier one).
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<SlotEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *lock(&self.events) = Some(tx);
        rx
    }

    fn take(&self) -> Option<(Arc<Module>, Option<RollbackGuard>)> {
        lock(&self.pending).take()
    }

    fn set_active(&self, m: &Module) {
        *lock(&self.active) = (m.label(), m.version.clone(), m.hash.clone());
    }

    fn emit(&self, e: SlotEvent) {
        if let Some(tx) = lock(&self.events).as_ref() {
            let _ = tx.send(e);
        }
    }

    fn keep_sample(&self, records: &[Record]) {
        let mut s = lock(&self.sample);
        s.clear();
        s.extend(records.iter().take(SAMPLE_MAX).cloned());
    }
}

/// A guarded version's record since its swap.
#[derive(Debug)]
struct Watch {
    guard: RollbackGuard,
    batches: u32,
    failed: u32,
}

/// Counters of one stage.
struct StageCounters {
    latency: dataweaver_core::Histogram,
    records_in: Arc<AtomicU64>,
    records_out: Arc<AtomicU64>,
    record_errors: Arc<AtomicU64>,
    swaps: Arc<AtomicU64>,
    counters: Arc<Counters>,
    prefix: String,
}

/// One module in a chain: the live instance and the slot new versions arrive in.
pub struct Stage {
    module: Arc<Module>,
    instance: Option<Instance>,
    slot: Arc<SwapSlot>,
    counters: StageCounters,
    /// The version before the last swap, for a rollback.
    previous: Option<Arc<Module>>,
    watch: Option<Watch>,
}

impl Stage {
    /// A stage running `module`, counting under `{pipeline}.transform.{name}.*`.
    pub fn new(
        module: Arc<Module>,
        pipeline: &str,
        counters: Arc<Counters>,
    ) -> Result<Stage, TransformError> {
        let prefix = format!("{pipeline}.transform.{}", module.settings.name);
        let latency = counters.histogram(
            "transform_latency_seconds",
            &[("pipeline", pipeline), ("transform", &module.settings.name)],
        );
        let instance = Instance::new(module.clone())?;
        // Failure counters exist from the start, at 0: an alert on their rate needs a series.
        for kind in [
            Failure::Deadline,
            Failure::Memory,
            Failure::Trap,
            Failure::Invalid,
            Failure::Output,
        ] {
            counters.counter(&format!("{prefix}.{}", kind.as_str()));
        }
        let slot = Arc::new(SwapSlot::default());
        slot.set_active(&module);
        Ok(Stage {
            previous: None,
            watch: None,
            module,
            instance: Some(instance),
            slot,
            counters: StageCounters {
                latency,
                records_in: counters.counter(&format!("{prefix}.in")),
                records_out: counters.counter(&format!("{prefix}.out")),
                record_errors: counters.counter(&format!("{prefix}.record_errors")),
                swaps: counters.counter(&format!("{prefix}.swaps")),
                counters,
                prefix,
            },
        })
    }

    /// The slot through which a new version is offered.
    pub fn slot(&self) -> Arc<SwapSlot> {
        self.slot.clone()
    }

    fn swap_if_offered(&mut self) {
        let Some((next, guard)) = self.slot.take() else {
            return;
        };
        match Instance::new(next.clone()) {
            Ok(inst) => {
                tracing::info!(from = %self.module.label(), to = %next.label(), "transform swapped");
                let old = std::mem::replace(&mut self.module, next);
                self.previous = Some(old);
                self.instance = Some(inst);
                self.watch = guard.map(|guard| Watch {
                    guard,
                    batches: 0,
                    failed: 0,
                });
                self.slot.set_active(&self.module);
                self.counters.swaps.fetch_add(1, Ordering::Relaxed);
                self.slot.emit(SlotEvent::Swapped {
                    version: self.module.version.clone(),
                    hash: self.module.hash.clone(),
                });
            }
            Err(e) => {
                tracing::warn!(keeping = %self.module.label(), error = %e, "new transform version refused")
            }
        }
    }

    /// Counts one batch of a guarded version; rolls back when too many failed.
    fn observe(&mut self, failed: bool, why: &str) {
        let Some(w) = &mut self.watch else { return };
        w.batches += 1;
        w.failed += u32::from(failed);
        let limit = w.guard.max_failed_share * f64::from(w.guard.window_batches);
        if f64::from(w.failed) > limit {
            let reason = format!(
                "{} of {} batches failed after the swap (limit {:.0} % of {}); last: {why}",
                w.failed,
                w.batches,
                w.guard.max_failed_share * 100.0,
                w.guard.window_batches
            );
            self.watch = None;
            self.roll_back(reason);
        } else if w.batches >= w.guard.window_batches {
            self.watch = None;
        }
    }

    fn roll_back(&mut self, reason: String) {
        let Some(prev) = self.previous.take() else {
            return;
        };
        match Instance::new(prev.clone()) {
            Ok(inst) => {
                let bad = std::mem::replace(&mut self.module, prev);
                self.instance = Some(inst);
                self.slot.set_active(&self.module);
                tracing::warn!(from = %bad.label(), to = %self.module.label(), %reason, "transform rolled back");
                self.slot.emit(SlotEvent::RolledBack {
                    version: bad.version.clone(),
                    hash: bad.hash.clone(),
                    active_version: self.module.version.clone(),
                    reason,
                });
            }
            Err(e) => {
                tracing::error!(keeping = %self.module.label(), error = %e, "rollback impossible: the previous version no longer instantiates");
                self.previous = Some(prev);
            }
        }
    }

    fn run(&mut self, records: Vec<Record>, failed: &mut Vec<(Record, String)>) -> Vec<Record> {
        let max = self.module.settings.batch_max_records.max(1);
        self.slot.keep_sample(&records);
        let mut out = Vec::with_capacity(records.len());
        let mut rest = records.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<Record> = rest.by_ref().take(max).collect();
            self.counters
                .records_in
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let label = self.module.label();
            let inst = match self.instance.take() {
                Some(i) => i,
                None => match Instance::new(self.module.clone()) {
                    Ok(i) => i,
                    Err(e) => {
                        let reason = format!("{label}: unavailable: {e}");
                        failed.extend(chunk.into_iter().map(|r| (r, reason.clone())));
                        continue;
                    }
                },
            };
            let mut inst = inst;
            let n = chunk.len();
            let started = std::time::Instant::now();
            let result = inst.process(chunk);
            self.counters
                .latency
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(p) => {
                    self.instance = Some(inst);
                    let all_failed = n > 0 && p.errors.len() == n;
                    self.counters
                        .records_out
                        .fetch_add(p.records.len() as u64, Ordering::Relaxed);
                    self.counters
                        .record_errors
                        .fetch_add(p.errors.len() as u64, Ordering::Relaxed);
                    out.extend(p.records);
                    let why = p.errors.first().map(|e| e.1.clone()).unwrap_or_default();
                    failed.extend(
                        p.errors
                            .into_iter()
                            .map(|(r, why)| (r, format!("{label}: {why}"))),
                    );
                    self.observe(all_failed, &why);
                }
                Err((kind, why, inputs)) => {
                    // The store is dropped: its memory may be in any state after a trap.
                    self.counters
                        .counters
                        .counter(&format!("{}.{}", self.counters.prefix, kind.as_str()))
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(module = %label, reason = %why, records = inputs.len(), "transform failed a batch; records dead-lettered, module re-instantiated");
                    let reason = format!("{label}: {why}");
                    failed.extend(inputs.into_iter().map(|r| (r, reason.clone())));
                    self.observe(true, &why);
                }
            }
        }
        out
    }
}

/// A pipeline's ordered transforms.
#[derive(Default)]
pub struct Chain {
    stages: Vec<Stage>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.stages.iter().map(|s| s.module.label()))
            .finish()
    }
}

impl Chain {
    /// The pass-through chain.
    pub fn empty() -> Self {
        Chain { stages: Vec::new() }
    }

    /// Loads a pipeline's modules (compiled code cached under `cache_dir`) and starts a
    /// file watcher for each one that has `watch` set.
    pub fn from_config(
        pipeline: &str,
        transforms: &[TransformConfig],
        cache_dir: Option<&Path>,
        counters: Arc<Counters>,
    ) -> Result<Chain, TransformError> {
        let mut stages = Vec::new();
        for t in transforms {
            let settings = Settings::from_config(t);
            let module = Module::load(&t.module, settings.clone(), cache_dir)?;
            tracing::info!(%pipeline, module = %module.label(), path = %t.module.display(), "transform loaded");
            let stage = Stage::new(module.clone(), pipeline, counters.clone())?;
            if t.watch {
                watch(
                    t.module.clone(),
                    settings,
                    module.hash.clone(),
                    cache_dir.map(Path::to_path_buf),
                    Arc::downgrade(&stage.slot),
                );
            }
            stages.push(stage);
        }
        Ok(Chain { stages })
    }

    /// A chain of ready stages.
    pub fn from_stages(stages: Vec<Stage>) -> Chain {
        Chain { stages }
    }

    /// True when there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The swap slots, in chain order, with the modules' settings.
    pub fn slots(&self) -> Vec<(Settings, Arc<SwapSlot>)> {
        self.stages
            .iter()
            .map(|s| (s.module.settings.clone(), s.slot()))
            .collect()
    }

    /// Runs one batch through every transform in order. Records a stage fails go to
    /// `failed` as they entered that stage.
    pub fn apply(&mut self, records: Vec<Record>) -> Output {
        let mut failed = Vec::new();
        let mut batch = records;
        for stage in &mut self.stages {
            stage.swap_if_offered();
            if batch.is_empty() {
                break;
            }
            batch = stage.run(batch, &mut failed);
        }
        Output {
            records: batch,
            failed,
        }
    }
}

/// How often a watched module file is checked.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Polls `path` and offers a recompiled module when its content changes. Ends when the
/// stage is gone. Polling (not inotify) because it works the same on every OS and for
/// files replaced by rename, and a module changes rarely.
fn watch(
    path: PathBuf,
    settings: Settings,
    mut hash: String,
    cache_dir: Option<PathBuf>,
    slot: Weak<SwapSlot>,
) {
    let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let spawned = std::thread::Builder::new()
        .name("transform-watch".into())
        .spawn(move || {
            let mut last = stamp(&path);
            loop {
                std::thread::sleep(WATCH_EVERY);
                let Some(slot) = slot.upgrade() else { return };
                let now = stamp(&path);
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                if wasm::sha256_hex(&bytes) == hash {
                    continue;
                }
                match Module::from_bytes(&bytes, settings.clone(), None, cache_dir.as_deref()) {
                    Ok(m) => {
                        tracing::info!(path = %path.display(), module = %m.label(), "transform file changed; new version offered");
                        hash = m.hash.clone();
                        slot.offer(m);
                    }
                    // Often a file still being written: the next change retries.
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "changed transform file refused; keeping the running version")
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the transform file watcher");
    }
}
