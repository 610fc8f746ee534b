//! The WASM host: loads a transform component, runs batches through it under limits.
//!
//! One [`Module`] is a compiled, linked component plus its settings; it is immutable and
//! shared. An [`Instance`] is one store with that module instantiated and `init` called;
//! the chain owns one per module and replaces it after a trap, because a trapped store's
//! memory is in an unknown state.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::config::{TransformConfig, WasiGrant};
use dataweaver_core::{Headers, Record, Shared, bounded};

/// The host side of the WIT world, generated; private, so its items need no docs of their own.
mod bindings {
    #![allow(missing_docs, unreachable_pub)]
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "transform",
    });
}

use bindings::dataweaver;
use bindings::dataweaver::transform::types::{Event, Header, Level};
use bindings::{Transform, TransformPre};

/// The WIT world this host implements, as a guest's error message should name it.
pub const WORLD: &str = "dataweaver:transform/transform@0.1.0";

/// How often the epoch ticks: the resolution of the per-call time limit.
const TICK: Duration = Duration::from_millis(5);

/// Log lines a module may write per second, over all its instances (a token bucket);
/// lines above it are dropped and counted.
const LOG_LINES_PER_SECOND: f64 = 50.0;
/// Lines a module may write at once after a quiet spell (the bucket's size).
const LOG_LINES_BURST: f64 = 100.0;
/// Longest log line kept from a module.
const LOG_LINE_BYTES: usize = 1024;

/// How many times `output_max_bytes` the host may copy out of one call. wasmtime counts
/// the host's own structs too (about 140 bytes per record beside its bytes), so a legal
/// output of small records needs room above the cap; the exact cap is checked after.
const COPY_BUDGET_FACTOR: usize = 8;

/// The start of wasmtime's message when a call's copy budget ("hostcall fuel") runs out;
/// its error type is private. `output_made_of_one_shared_buffer_stops_at_the_copy_budget`
/// fails if a wasmtime upgrade changes it.
const COPY_BUDGET_EXHAUSTED: &str = "too much data is being copied between the host and the guest";

/// Bytes the host may copy out of one guest call: records whose payloads all point at one
/// buffer in the guest's memory cost the guest nothing, and would make the host copy each.
fn copy_budget(output_max_bytes: usize) -> usize {
    output_max_bytes
        .saturating_mul(COPY_BUDGET_FACTOR)
        .saturating_add(1 << 20)
}

/// Whether a call failed because its output ran over [`copy_budget`].
fn over_copy_budget(e: &wasmtime::Error) -> bool {
    e.chain()
        .any(|c| c.to_string().starts_with(COPY_BUDGET_EXHAUSTED))
}

/// Why a module could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// The module file could not be read.
    #[error("reading transform module {path}: {source}")]
    Read {
        /// The module path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid component (or not wasm at all).
    #[error("transform `{name}`: not a valid WebAssembly component: {reason}")]
    Compile {
        /// Module name.
        name: String,
        /// The compiler's message.
        reason: String,
    },
    /// The component needs something the host does not provide, or is of another world.
    #[error("transform `{name}` refused: {reason}")]
    Link {
        /// Module name.
        name: String,
        /// What is missing.
        reason: String,
    },
    /// Instantiating the module failed (its start code trapped, ran out of time or
    /// memory, or a granted directory could not be opened).
    #[error("transform `{name}` could not be instantiated: {reason}")]
    Instantiate {
        /// Module name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The module's `init` failed or trapped.
    #[error("transform `{name}` refused its config: {reason}")]
    Init {
        /// Module name.
        name: String,
        /// The module's or the host's message.
        reason: String,
    },
}

/// Limits and settings for one module.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Module name (dead letters and logs name it).
    pub name: String,
    /// The module's config as a JSON object.
    pub config_json: String,
    /// Memory cap per instance, bytes.
    pub memory_max_bytes: usize,
    /// Time limit per call (wall clock while the guest runs).
    pub deadline: Duration,
    /// WebAssembly stack limit, bytes.
    pub max_stack_bytes: usize,
    /// Records per guest call.
    pub batch_max_records: usize,
    /// Output bytes per guest call at most (payloads, keys, headers, topics, sources);
    /// over it the batch fails into the dead letters.
    pub output_max_bytes: usize,
    /// Header stamped on every output record with `name@version`, if set.
    pub version_header: Option<String>,
    /// WASI granted to the module, if any.
    pub wasi: Option<WasiGrant>,
}

impl Settings {
    /// Settings from a pipeline's transform entry.
    pub fn from_config(c: &TransformConfig) -> Self {
        Settings {
            name: c.name(),
            config_json: c.config_json(),
            memory_max_bytes: c.memory_max_bytes as usize,
            deadline: Duration::from_millis(c.deadline_ms),
            max_stack_bytes: c.max_stack_bytes,
            batch_max_records: c.batch_max_records,
            output_max_bytes: c.output_max_bytes as usize,
            version_header: c.version_header.clone(),
            wasi: c.wasi.clone(),
        }
    }
}

/// Engines by stack limit: the stack limit is an engine setting, everything else is
/// per store. Each engine gets an epoch ticker thread for the time limits.
fn engine(max_stack: usize) -> Result<Engine, String> {
    static ENGINES: OnceLock<Mutex<HashMap<usize, Engine>>> = OnceLock::new();
    let mut map = ENGINES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(e) = map.get(&max_stack) {
        return Ok(e.clone());
    }
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(max_stack);
    let engine = Engine::new(&cfg).map_err(|e| format!("{e:#}"))?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(e) = weak.upgrade() {
                e.increment_epoch();
                drop(e);
                std::thread::sleep(TICK);
            }
        })
        .map_err(|e| e.to_string())?;
    map.insert(max_stack, engine.clone());
    Ok(engine)
}

/// Per-store state: limits, the optional WASI context, log accounting.
pub struct State {
    limiter: Limiter,
    wasi: WasiCtx,
    table: ResourceTable,
    module: Arc<str>,
    logs: Arc<Mutex<LogBucket>>,
}

/// A module's log budget: a token bucket refilled at [`LOG_LINES_PER_SECOND`], shared by
/// its instances so a replaced (trapped) instance does not start with a fresh budget.
#[derive(Debug)]
struct LogBucket {
    tokens: f64,
    at: std::time::Instant,
    dropped: u64,
}

impl LogBucket {
    fn new() -> LogBucket {
        LogBucket {
            tokens: LOG_LINES_BURST,
            at: std::time::Instant::now(),
            dropped: 0,
        }
    }

    /// Whether a line may be written now; if so, also how many were dropped before it.
    fn take(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * LOG_LINES_PER_SECOND;
        self.tokens = (self.tokens + refill).min(LOG_LINES_BURST);
        self.at = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return None;
        }
        self.tokens -= 1.0;
        Some(std::mem::take(&mut self.dropped))
    }
}

/// `s` with control characters (and Unicode line breaks) escaped, so a guest cannot
/// end a log line and forge another, or send terminal escapes.
fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl dataweaver::transform::types::Host for State {}

impl dataweaver::transform::host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        let taken = self.logs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(dropped) = taken else { return };
        let m = &*self.module;
        if dropped > 0 {
            tracing::warn!(
                module = m,
                dropped,
                "module log lines over the rate limit dropped"
            );
        }
        let message = bounded(message, LOG_LINE_BYTES);
        let message = escape_controls(&message);
        match level {
            Level::Trace => tracing::trace!(module = m, "{message}"),
            Level::Debug => tracing::debug!(module = m, "{message}"),
            Level::Info => tracing::info!(module = m, "{message}"),
            Level::Warn => tracing::warn!(module = m, "{message}"),
            Level::Error => tracing::error!(module = m, "{message}"),
        }
    }
}

/// Memory cap over all of an instance's memories and tables (a component may hold
/// several core instances), remembering that it was hit so the dead-letter reason can
/// say so.
struct Limiter {
    max: usize,
    used: usize,
    hit: bool,
}

/// Core instances, memories and tables one component may create: generous for real
/// guests (CPython's component has about a dozen instances), small enough that they
/// cannot be multiplied to get around the memory cap.
const MAX_INSTANCES: usize = 100;
const MAX_MEMORIES: usize = 32;
const MAX_TABLES: usize = 100;
/// Elements per table: real guests' function tables hold thousands.
const MAX_TABLE_ELEMENTS: usize = 1 << 18;
/// Host bytes per table element (wasmtime stores a pointer per element).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

impl Limiter {
    /// Accounts a memory or table going from `current` to `desired` bytes, or traps.
    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let total = (self.used - current.min(self.used)).saturating_add(desired);
        if total > self.max {
            self.hit = true;
            // An error (not `Ok(false)`) traps at once: guests that ignore a failed
            // `memory.grow` would otherwise fail later with a less useful message.
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes reached",
                self.max
            )));
        }
        self.used = total;
        Ok(true)
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current, desired)
    }

    // Called at table creation too (from 0), so every table's elements count.
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// A compiled and linked transform component, ready to instantiate.
pub struct Module {
    /// Name, limits and config.
    pub settings: Settings,
    /// Version: the first 12 hex digits of the module's SHA-256 unless given.
    pub version: String,
    /// Full SHA-256 of the module bytes, hex.
    pub hash: String,
    engine: Engine,
    pre: TransformPre<State>,
    logs: Arc<Mutex<LogBucket>>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Module({}@{})", self.settings.name, self.version)
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Module {
    /// Reads, compiles (or loads from `cache_dir`), links and test-instantiates a module.
    pub fn load(
        path: &Path,
        settings: Settings,
        cache_dir: Option<&Path>,
    ) -> Result<Arc<Module>, TransformError> {
        let bytes = std::fs::read(path).map_err(|source| TransformError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_bytes(&bytes, settings, None, cache_dir)
    }

    /// Like [`load`](Self::load), from bytes; `version` defaults to the hash prefix.
    pub fn from_bytes(
        bytes: &[u8],
        settings: Settings,
        version: Option<String>,
        cache_dir: Option<&Path>,
    ) -> Result<Arc<Module>, TransformError> {
        let name = settings.name.clone();
        let compile_err = |reason: String| TransformError::Compile {
            name: name.clone(),
            reason,
        };
        let engine = engine(settings.max_stack_bytes).map_err(compile_err)?;
        let hash = sha256_hex(bytes);
        let component = compile_cached(&engine, bytes, &hash, cache_dir).map_err(compile_err)?;

        let link_err = |e: wasmtime::Error| TransformError::Link {
            name: name.clone(),
            reason: format!("{e:#}"),
        };
        let mut linker: Linker<State> = Linker::new(&engine);
        Transform::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut linker, |s| s)
            .map_err(link_err)?;
        if settings.wasi.is_some() {
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_err)?;
        }
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            let mut reason = format!("{e:#}");
            if settings.wasi.is_none() && reason.contains("wasi:") {
                reason.push_str(
                    " (the module uses WASI, which this pipeline does not grant: see `wasi` in the transform's config)",
                );
            }
            TransformError::Link {
                name: name.clone(),
                reason,
            }
        })?;
        let pre = TransformPre::new(pre).map_err(|e| TransformError::Link {
            name: name.clone(),
            reason: format!("it does not implement the world {WORLD}: {e:#}"),
        })?;
        let module = Arc::new(Module {
            version: version.unwrap_or_else(|| hash[..12].to_string()),
            hash,
            settings,
            engine,
            pre,
            logs: Arc::new(Mutex::new(LogBucket::new())),
        });
        // Instantiate and init once now, so a bad module or config is refused at load.
        Instance::new(module.clone())?;
        Ok(module)
    }

    /// `name@version`, as dead letters and headers show it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.settings.name, self.version)
    }
}

fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    hash: &str,
    cache_dir: Option<&Path>,
) -> Result<Component, String> {
    let Some(dir) = cache_dir else {
        return Component::new(engine, bytes).map_err(|e| format!("{e:#}"));
    };
    // The engine's compatibility hash covers the wasmtime version and every setting that
    // changes compiled code, so a stale artifact is never loaded.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let path = dir.join(format!("{hash}-{:016x}.cwasm", h.finish()));
    // The file is our artifact behind its SHA-256: a torn or corrupted file (power loss,
    // a bad disk) is recompiled, never handed to `deserialize`, which trusts its input.
    if let Ok(file) = std::fs::read(&path)
        && file.len() > 32
        && ring::digest::digest(&ring::digest::SHA256, &file[32..]).as_ref() == &file[..32]
    {
        // SAFETY: the bytes are what `serialize` wrote for this engine configuration (the
        // file name says so), verified by their checksum.
        match unsafe { Component::deserialize(engine, &file[32..]) } {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "compiled transform cache unusable; recompiling")
            }
        }
    }
    let c = Component::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
    if let Ok(art) = c.serialize()
        && let Err(e) = write_cache(dir, &path, &art)
    {
        tracing::warn!(path = %path.display(), error = %e, "could not cache compiled transform");
    }
    Ok(c)
}

/// Writes checksum + artifact durably under a unique temporary name, then renames.
fn write_cache(dir: &Path, path: &Path, art: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    dataweaver_store::fsmode::data_dir(dir)?;
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let mut f =
        dataweaver_store::fsmode::create_file(&tmp, dataweaver_store::fsmode::PRIVATE_FILE, true)?;
    f.write_all(ring::digest::digest(&ring::digest::SHA256, art).as_ref())?;
    f.write_all(art)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// One live instance of a module.
pub struct Instance {
    /// The module it runs.
    pub module: Arc<Module>,
    store: Store<State>,
    bindings: Transform,
}

/// Why a batch failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Ran past its time limit.
    Deadline,
    /// Hit its memory cap.
    Memory,
    /// Trapped otherwise (panic, unreachable, out of bounds...).
    Trap,
    /// Returned an error index outside the batch: a broken module.
    Invalid,
    /// Returned more than `output_max_bytes`.
    Output,
}

impl Failure {
    /// Counter suffix.
    pub fn as_str(&self) -> &'static str {
        match self {
            Failure::Deadline => "deadline",
            Failure::Memory => "memory",
            Failure::Trap => "trap",
            Failure::Invalid => "invalid",
            Failure::Output => "output",
        }
    }
}

/// What one call made: kept records and per-record errors (index into the input).
pub struct Processed {
    /// Output records.
    pub records: Vec<Record>,
    /// Inputs the module reported as failed, with its reason.
    pub errors: Vec<(Record, String)>,
}

impl Instance {
    /// Instantiates `module` and calls its `init`.
    pub fn new(module: Arc<Module>) -> Result<Instance, TransformError> {
        let s = &module.settings;
        let init_err = |reason: String| TransformError::Init {
            name: s.name.clone(),
            reason,
        };
        let inst_err = |reason: String| TransformError::Instantiate {
            name: s.name.clone(),
            reason,
        };
        let mut wasi = WasiCtxBuilder::new();
        if let Some(g) = &s.wasi {
            for d in &g.dirs {
                let perms = if d.read_only {
                    wasmtime_wasi::FsPerms::ReadOnly
                } else {
                    wasmtime_wasi::FsPerms::ReadWrite
                };
                wasi.preopened_dir(&d.host, &d.guest, perms)
                    .map_err(|e| inst_err(format!("preopening {}: {e:#}", d.host.display())))?;
            }
            for (k, v) in &g.env {
                wasi.env(k, v);
            }
            if g.stdio {
                wasi.inherit_stderr();
            }
        }
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let state = State {
            limiter: Limiter {
                max: s.memory_max_bytes,
                used: 0,
                hit: false,
            },
            wasi: wasi.build(),
            table: ResourceTable::new(),
            module: Arc::from(module.label()),
            logs: module.logs.clone(),
        };
        let mut store = Store::new(&module.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(copy_budget(s.output_max_bytes));
        store.set_epoch_deadline(ticks(s.deadline));
        let bindings = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| inst_err(describe(&store, &e, s)))?;
        store.set_epoch_deadline(ticks(s.deadline));
        match bindings
            .dataweaver_transform_transformer()
            .call_init(&mut store, &s.config_json)
        {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => return Err(init_err(msg)),
            Err(e) => return Err(init_err(describe(&store, &e, s))),
        }
        Ok(Instance {
            module: module.clone(),
            store,
            bindings,
        })
    }

    /// Runs one guest call over `batch`; on `Err` the instance must be replaced.
    pub fn process(
        &mut self,
        batch: Vec<Record>,
    ) -> Result<Processed, (Failure, String, Vec<Record>)> {
        let s = &self.module.settings;
        let n = batch.len();
        let events: Vec<Event> = batch.into_iter().map(to_event).collect();
        self.store.data_mut().limiter.hit = false;
        self.store.set_epoch_deadline(ticks(s.deadline));
        let res = self
            .bindings
            .dataweaver_transform_transformer()
            .call_process(&mut self.store, &events);
        match res {
            Ok(out) => {
                let size: usize = out.events.iter().map(event_bytes).sum();
                if size > s.output_max_bytes {
                    let reason = format!(
                        "output of {size} bytes for a batch of {n} exceeds output_max_bytes ({})",
                        s.output_max_bytes
                    );
                    return Err((Failure::Output, reason, Rebuild::all(events)));
                }
                if let Some(bad) = out.errors.iter().find(|e| e.index as usize >= n) {
                    let reason = format!(
                        "returned an error for record {} of a batch of {n}",
                        bad.index
                    );
                    return Err((Failure::Invalid, reason, Rebuild::all(events)));
                }
                let version = (s.version_header.as_deref())
                    .map(|h| (Shared::from(h), Shared::from(self.module.label())));
                let mut rebuild = Rebuild::new(version);
                let records = (out.events.into_iter())
                    .map(|e| rebuild.record(e))
                    .collect();
                let mut rebuild = Rebuild::new(None);
                // Each failed input is dead-lettered once (the first reason wins), with a
                // bounded reason.
                let mut seen = std::collections::HashSet::new();
                let errors = out
                    .errors
                    .into_iter()
                    .filter(|e| seen.insert(e.index))
                    .map(|e| {
                        let reason = bounded(e.reason, 600);
                        (rebuild.record(events[e.index as usize].clone()), reason)
                    })
                    .collect();
                Ok(Processed { records, errors })
            }
            Err(e) => {
                let kind = if self.store.data().limiter.hit {
                    Failure::Memory
                } else if over_copy_budget(&e) {
                    Failure::Output
                } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                    Failure::Deadline
                } else {
                    Failure::Trap
                };
                let reason = describe(&self.store, &e, s);
                Err((kind, reason, Rebuild::all(events)))
            }
        }
    }
}

/// A trap as one line: the deadline and the memory cap are named, other traps keep
/// wasmtime's message (which includes the guest backtrace's first frame).
fn describe(store: &Store<State>, e: &wasmtime::Error, s: &Settings) -> String {
    if store.data().limiter.hit {
        return format!("memory limit of {} bytes reached", s.memory_max_bytes);
    }
    if over_copy_budget(e) {
        return format!(
            "output exceeds output_max_bytes ({}): the host stopped copying it at {} bytes",
            s.output_max_bytes,
            copy_budget(s.output_max_bytes)
        );
    }
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return format!(
            "time limit of {} ms exceeded (deadline_ms)",
            s.deadline.as_millis()
        );
    }
    format!(
        "trapped: {}",
        bounded(format!("{e:#}").replace('\n', " "), 600)
    )
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / TICK.as_millis()).max(1) as u64 + 1
}

/// Bytes an output event carries (what the queue and the sink will hold).
fn event_bytes(e: &Event) -> usize {
    let headers: usize = e.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    e.payload.len() + e.key.as_ref().map_or(0, Vec::len) + e.source.len() + e.topic.len() + headers
}

fn to_event(r: Record) -> Event {
    Event {
        ts_ns: r.ts_ns,
        source: r.source.to_string(),
        topic: r.topic.to_string(),
        key: r.key,
        headers: r
            .headers
            .iter()
            .map(|(name, value)| Header {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect(),
        payload: r.payload,
    }
}

/// Turns the guest's events back into records, sharing the text that repeats from one
/// record to the next (a batch's source, topic and headers usually do) instead of a new
/// copy of each per record.
#[derive(Default)]
struct Rebuild {
    source: Shared,
    topic: Shared,
    headers: Headers,
    /// The header naming the module's version, appended to every record.
    version: Option<(Shared, Shared)>,
}

impl Rebuild {
    fn new(version: Option<(Shared, Shared)>) -> Self {
        Rebuild {
            version,
            ..Rebuild::default()
        }
    }

    /// Records for `events` as they are (a batch handed back on a failure).
    fn all(events: Vec<Event>) -> Vec<Record> {
        let mut r = Rebuild::default();
        events.into_iter().map(|e| r.record(e)).collect()
    }

    fn record(&mut self, e: Event) -> Record {
        if *self.source != *e.source {
            self.source = e.source.into();
        }
        if *self.topic != *e.topic {
            self.topic = e.topic.into();
        }
        let extra = usize::from(self.version.is_some());
        let same = self.headers.len() == e.headers.len() + extra
            && (self.headers.iter().zip(&e.headers))
                .all(|((n, v), h)| **n == *h.name && **v == *h.value);
        if !same {
            let given = e
                .headers
                .into_iter()
                .map(|h| (h.name.into(), h.value.into()));
            self.headers = given.chain(self.version.clone()).collect();
        }
        Record {
            ts_ns: e.ts_ns,
            source: self.source.clone(),
            topic: self.topic.clone(),
            key: e.key,
            headers: self.headers.clone(),
            payload: e.payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dataweaver::transform::host::Host as _;
    use super::*;

    fn passthrough(output_max_bytes: usize) -> Option<Arc<Module>> {
        prebuilt("passthrough_rust", output_max_bytes)
    }

    /// `transforms/prebuilt/<name>.wasm` with test settings, if it is there.
    fn prebuilt(name: &str, output_max_bytes: usize) -> Option<Arc<Module>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../transforms/prebuilt/{name}.wasm"));
        if !path.is_file() {
            eprintln!("SKIPPING: {} not built", path.display());
            return None;
        }
        let settings = Settings {
            name: "p".into(),
            config_json: "{}".into(),
            memory_max_bytes: 64 << 20,
            deadline: Duration::from_secs(10),
            max_stack_bytes: 512 << 10,
            batch_max_records: 1024,
            output_max_bytes,
            version_header: None,
            wasi: None,
        };
        Some(Module::load(&path, settings, None).unwrap())
    }

    fn record(bytes: usize) -> Record {
        Record {
            ts_ns: 1,
            source: "s".into(),
            topic: "t".into(),
            key: None,
            headers: Default::default(),
            payload: vec![b'a'; bytes],
        }
    }

    /// Issue 12, defect 18: tables were not counted in `memory_max_bytes` (99 tables of
    /// 2^20 funcrefs reached 813 MiB RSS under a 2 MiB cap). Table elements now count as
    /// host memory (a pointer each) against the same cap, and one table is smaller.
    /// Records rebuilt from a guest's events hold what the events say, the version header
    /// last, and share one copy of the text that repeats.
    #[test]
    fn rebuilt_records_share_repeated_text() {
        let event = |source: &str, header: &str| Event {
            ts_ns: 7,
            source: source.into(),
            topic: "t".into(),
            key: None,
            headers: vec![Header {
                name: "h".into(),
                value: header.into(),
            }],
            payload: b"p".to_vec(),
        };
        let version = Some(("v".into(), "m@1".into()));
        let mut rebuild = Rebuild::new(version);
        let r: Vec<Record> = [event("a", "x"), event("a", "x"), event("b", "y")]
            .into_iter()
            .map(|e| rebuild.record(e))
            .collect();
        let pairs = |r: &Record| -> Vec<(String, String)> {
            (r.headers.iter())
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            pairs(&r[0]),
            [("h".into(), "x".into()), ("v".into(), "m@1".into())]
        );
        assert_eq!(
            pairs(&r[2]),
            [("h".into(), "y".into()), ("v".into(), "m@1".into())]
        );
        assert_eq!((&*r[2].source, &*r[2].topic, r[2].ts_ns), ("b", "t", 7));
        assert!(Arc::ptr_eq(&r[0].source, &r[1].source));
        assert!(Arc::ptr_eq(&r[0].headers, &r[1].headers));
        assert!(Arc::ptr_eq(&r[0].topic, &r[2].topic));
        assert!(!Arc::ptr_eq(&r[1].headers, &r[2].headers));
        let plain = Rebuild::all(vec![event("a", "x")]);
        assert_eq!(pairs(&plain[0]), [("h".into(), "x".into())]);
    }

    #[test]
    fn tables_count_toward_the_memory_cap() {
        let mut l = Limiter {
            max: 2 << 20,
            used: 0,
            hit: false,
        };
        use wasmtime::ResourceLimiter as _;
        // One table of 2^20 elements (8 MiB of pointers) under a 2 MiB cap.
        assert!(
            !matches!(l.table_growing(0, 1 << 20, None), Ok(true)),
            "a table past the cap was allowed"
        );
        // Many small tables: together past the cap.
        let mut l = Limiter {
            max: 2 << 20,
            used: 0,
            hit: false,
        };
        let granted = (0..99)
            .take_while(|_| matches!(l.table_growing(0, 1 << 16, None), Ok(true)))
            .count();
        assert!(granted < 99, "99 tables of 2^16 elements fit under 2 MiB");
        assert!(l.hit, "the dead-letter reason names the memory cap");
        // Memory and tables share the budget.
        let mut l = Limiter {
            max: 2 << 20,
            used: 0,
            hit: false,
        };
        assert!(matches!(l.memory_growing(0, 1 << 20, None), Ok(true)));
        assert!(matches!(l.table_growing(0, 1 << 16, None), Ok(true)));
        assert!(l.memory_growing(1 << 20, 2 << 20, None).is_err());
    }

    /// Issue 12, defect 18: a call's output was unbounded (5 ten-byte records became
    /// 3.7 GB at the sink). Over `output_max_bytes` the batch fails (into the dead
    /// letters), the records handed back for that.
    #[test]
    fn output_over_output_max_bytes_fails_the_batch() {
        let Some(module) = passthrough(1000) else {
            return;
        };
        let mut inst = Instance::new(module).unwrap();
        let ok = inst.process(vec![record(100), record(100)]).unwrap();
        assert_eq!(ok.records.len(), 2);
        match inst.process((0..5).map(|_| record(300)).collect()) {
            Err((Failure::Output, reason, back)) => {
                assert!(reason.contains("output_max_bytes"), "{reason}");
                assert_eq!(back.len(), 5);
            }
            Err((f, r, _)) => panic!("wrong failure {f:?}: {r}"),
            Ok(p) => panic!("{} records over the cap passed", p.records.len()),
        }
    }

    /// Issue 12, defect 18: the output cap was checked after wasmtime had copied the whole
    /// output into the host, so the host's memory was bounded only by wasmtime's default
    /// 128 MiB per call. A guest whose 2,000 records all point at one 32 KiB buffer
    /// (`transforms/wat/alias.wat`, 0.2 MiB of guest memory) had the host copy 62.5 MiB
    /// before the cap refused it. The copy now stops at the call's budget (8 × 64 KiB +
    /// 1 MiB here) and the batch fails as over `output_max_bytes`, the records handed back.
    #[test]
    fn output_made_of_one_shared_buffer_stops_at_the_copy_budget() {
        let Some(module) = prebuilt("alias", 64 << 10) else {
            return;
        };
        let mut inst = Instance::new(module).unwrap();
        match inst.process(vec![record(10)]) {
            Err((Failure::Output, reason, back)) => {
                assert!(reason.contains("output_max_bytes (65536)"), "{reason}");
                assert!(
                    reason.contains("stopped copying it at 1572864 bytes"),
                    "{reason}"
                );
                assert_eq!(back.len(), 1);
            }
            Err((f, r, _)) => panic!("wrong failure {f:?}: {r}"),
            Ok(p) => panic!("{} records of a shared buffer passed", p.records.len()),
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 12, defect 19: guest logs were limited per call (64 lines), not per second,
    /// so a module called often flooded the log; and a line with a newline forged agent
    /// log lines. Now a module has a per-second budget over all its calls and instances,
    /// and control characters are escaped.
    #[test]
    fn guest_logs_are_rate_limited_per_module_and_cannot_forge_lines() {
        let Some(module) = passthrough(16 << 20) else {
            return;
        };
        let out = Captured::default();
        let sub = tracing_subscriber::fmt()
            .with_writer({
                let out = out.clone();
                move || out.clone()
            })
            .with_ansi(false)
            .finish();
        let start = std::time::Instant::now();
        tracing::subscriber::with_default(sub, || {
            let mut inst = Instance::new(module.clone()).unwrap();
            for _ in 0..20 {
                inst.process(vec![record(1)]).unwrap();
                for _ in 0..64 {
                    inst.store.data_mut().log(
                        Level::Info,
                        "hi\n2026-01-01T00:00:00Z  INFO dataweaver: FORGED\x1b[2J".into(),
                    );
                }
            }
            // A fresh instance of the same module shares the budget; after a pause a
            // few lines pass again, the first with the count of those dropped.
            std::thread::sleep(Duration::from_millis(100));
            let mut again = Instance::new(module.clone()).unwrap();
            for _ in 0..64 {
                again.store.data_mut().log(Level::Info, "more".into());
            }
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let kept = lines.iter().filter(|l| l.contains("hi\\n")).count();
        assert!(kept > 0, "{text}");
        let budget = LOG_LINES_BURST + LOG_LINES_PER_SECOND * start.elapsed().as_secs_f64();
        let more = lines.iter().filter(|l| l.contains("more")).count();
        assert!(more > 0, "{text}");
        assert!(
            (kept + more) as f64 <= budget + 1.0,
            "{kept} + {more} lines kept of 1344, budget {budget}"
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("2026-01-01")),
            "a forged line: {text}"
        );
        assert!(!text.contains('\x1b'), "terminal escape passed through");
        assert!(text.contains("over the rate limit dropped"), "{text}");
    }
}
