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

use crate::config::{TransformConfig, WasiGrant};
use crate::record::Record;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform",
});

use dataweaver::transform::types::{Event, Header, Level};

/// The WIT world this host implements, as a guest's error message should name it.
pub const WORLD: &str = "dataweaver:transform/transform@0.1.0";

/// How often the epoch ticks: the resolution of the per-call time limit.
const TICK: Duration = Duration::from_millis(5);

/// Log lines a module may write per call before the host drops them (counted).
const LOG_LINES_PER_CALL: u32 = 64;
/// Longest log line kept from a module.
const LOG_LINE_BYTES: usize = 1024;

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
    log_left: u32,
    log_dropped: u64,
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
        if self.log_left == 0 {
            self.log_dropped += 1;
            return;
        }
        self.log_left -= 1;
        let message = bounded(message, LOG_LINE_BYTES);
        let m = &*self.module;
        match level {
            Level::Trace => tracing::trace!(module = m, "{message}"),
            Level::Debug => tracing::debug!(module = m, "{message}"),
            Level::Info => tracing::info!(module = m, "{message}"),
            Level::Warn => tracing::warn!(module = m, "{message}"),
            Level::Error => tracing::error!(module = m, "{message}"),
        }
    }
}

/// Memory cap over all of an instance's memories (a component may hold several core
/// instances), remembering that it was hit so the dead-letter reason can say so.
struct Limiter {
    max: usize,
    used: usize,
    hit: bool,
}

/// Core instances, memories and tables one component may create: generous for real
/// guests (CPython's component has about a dozen instances), small enough that they
/// cannot be multiplied to get around the memory cap.
const MAX_INSTANCES: usize = 200;
const MAX_MEMORIES: usize = 32;
const MAX_TABLES: usize = 200;
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
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

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
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
    std::fs::create_dir_all(dir)?;
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
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
}

impl Failure {
    /// Counter suffix.
    pub fn as_str(&self) -> &'static str {
        match self {
            Failure::Deadline => "deadline",
            Failure::Memory => "memory",
            Failure::Trap => "trap",
            Failure::Invalid => "invalid",
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
            log_left: LOG_LINES_PER_CALL,
            log_dropped: 0,
        };
        let mut store = Store::new(&module.engine, state);
        store.limiter(|s| &mut s.limiter);
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
        self.store.data_mut().log_left = LOG_LINES_PER_CALL;
        self.store.data_mut().limiter.hit = false;
        self.store.set_epoch_deadline(ticks(s.deadline));
        let res = self
            .bindings
            .dataweaver_transform_transformer()
            .call_process(&mut self.store, &events);
        let dropped = std::mem::take(&mut self.store.data_mut().log_dropped);
        if dropped > 0 {
            tracing::warn!(module = %self.module.label(), dropped, "module log lines over the per-call limit dropped");
        }
        match res {
            Ok(out) => {
                if let Some(bad) = out.errors.iter().find(|e| e.index as usize >= n) {
                    let reason = format!(
                        "returned an error for record {} of a batch of {n}",
                        bad.index
                    );
                    return Err((
                        Failure::Invalid,
                        reason,
                        events.into_iter().map(from_event).collect(),
                    ));
                }
                let mut records: Vec<Record> = out.events.into_iter().map(from_event).collect();
                if let Some(h) = &s.version_header {
                    let label = self.module.label();
                    for r in &mut records {
                        r.headers.push((h.clone(), label.clone()));
                    }
                }
                // Each failed input is dead-lettered once (the first reason wins), with a
                // bounded reason.
                let mut seen = std::collections::HashSet::new();
                let errors = out
                    .errors
                    .into_iter()
                    .filter(|e| seen.insert(e.index))
                    .map(|e| {
                        let reason = bounded(e.reason, 600);
                        (from_event(events[e.index as usize].clone()), reason)
                    })
                    .collect();
                Ok(Processed { records, errors })
            }
            Err(e) => {
                let kind = if self.store.data().limiter.hit {
                    Failure::Memory
                } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                    Failure::Deadline
                } else {
                    Failure::Trap
                };
                let reason = describe(&self.store, &e, s);
                Err((kind, reason, events.into_iter().map(from_event).collect()))
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

/// `s` cut to at most `max` bytes (on a character boundary).
fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / TICK.as_millis()).max(1) as u64 + 1
}

fn to_event(r: Record) -> Event {
    Event {
        ts_ns: r.ts_ns,
        source: r.source,
        topic: r.topic,
        key: r.key,
        headers: r
            .headers
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect(),
        payload: r.payload,
    }
}

fn from_event(e: Event) -> Record {
    Record {
        ts_ns: e.ts_ns,
        source: e.source,
        topic: e.topic,
        key: e.key,
        headers: e.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        payload: e.payload,
    }
}
