//! A transform's config: owned here, next to the code that uses it (the agent's config
//! file embeds it as `pipelines[].transforms[]`).

use dataweaver_core::check::{Check, GIB, MIB, Problems, key};
use std::path::PathBuf;

use serde::Deserialize;

/// One WASM transform in a pipeline's chain.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Name in logs, counters and dead letters (default: the module's file stem).
    pub name: Option<String>,
    /// The component file (`.wasm`), relative to the config file.
    pub module: PathBuf,
    /// Settings handed to the module's `init` as a JSON object.
    #[serde(default)]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub config: toml::Table,
    /// Memory cap per instance.
    #[serde(default = "default_wasm_memory")]
    pub memory_max_bytes: u64,
    /// Time limit per guest call (one call carries up to `batch_max_records`): wall-clock
    /// time while the guest runs, checked every 5 ms.
    #[serde(default = "default_wasm_deadline")]
    pub deadline_ms: u64,
    /// WebAssembly stack limit.
    #[serde(default = "default_wasm_stack")]
    pub max_stack_bytes: usize,
    /// Records per guest call.
    #[serde(default = "default_wasm_batch")]
    pub batch_max_records: usize,
    /// Output bytes per guest call at most; a call returning more fails its batch into
    /// the dead letters.
    #[serde(default = "default_wasm_output")]
    pub output_max_bytes: u64,
    /// If set, every output record gets this header with `name@version`.
    pub version_header: Option<String>,
    /// Reload the module when its file changes (swapped at a batch boundary).
    #[serde(default = "yes")]
    pub watch: bool,
    /// WASI for modules that need it; none by default.
    pub wasi: Option<WasiGrant>,
}

impl TransformConfig {
    /// The configured or default name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.module
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "transform".into())
        })
    }

    /// `config` as a JSON object.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

/// What WASI a transform may use. Without this table a module that imports WASI is
/// refused at load. Network access is never granted.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasiGrant {
    /// Directories the module may open.
    #[serde(default)]
    pub dirs: Vec<PreopenDir>,
    /// Environment variables the module sees (nothing of the agent's own).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Let the module write to the agent's stderr.
    #[serde(default)]
    pub stdio: bool,
}

/// A host directory made visible to a module.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreopenDir {
    /// Directory on this machine (relative to the config file).
    pub host: PathBuf,
    /// Path the module opens it by, e.g. `/data`.
    pub guest: String,
    /// Read-only unless set to false.
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn default_wasm_memory() -> u64 {
    64 << 20
}

fn default_wasm_output() -> u64 {
    16 << 20
}

fn default_wasm_deadline() -> u64 {
    1000
}

fn default_wasm_stack() -> usize {
    512 << 10
}

fn default_wasm_batch() -> usize {
    256
}

fn yes() -> bool {
    true
}

impl Check for TransformConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        if !self.module.is_file() {
            p.push(
                key(at, "module"),
                format!("no such file: {}", self.module.display()),
            );
        }
        p.nonzero(key(at, "deadline_ms"), self.deadline_ms);
        p.nonzero(key(at, "batch_max_records"), self.batch_max_records as u64);
        if self.memory_max_bytes < MIB {
            p.push(key(at, "memory_max_bytes"), "at least 1 MiB");
        }
        // Guest code runs on the agent's own threads (2 MiB stacks): a WebAssembly stack
        // limit near that would overrun the native stack instead of trapping.
        if self.max_stack_bytes < (64 << 10) || self.max_stack_bytes > (1 << 20) {
            p.push(key(at, "max_stack_bytes"), "between 64 KiB and 1 MiB");
        }
        for (k, d) in self.wasi.iter().flat_map(|w| w.dirs.iter()).enumerate() {
            if !d.host.is_dir() {
                p.push(
                    key(at, &format!("wasi.dirs[{k}].host")),
                    format!("no such directory: {}", d.host.display()),
                );
            }
        }
        p.range(
            key(at, "memory_max_bytes"),
            self.memory_max_bytes,
            MIB,
            4 * GIB,
        );
        p.range(key(at, "deadline_ms"), self.deadline_ms, 1, 600_000);
        p.range(key(at, "output_max_bytes"), self.output_max_bytes, 1, GIB);
        p.range(
            key(at, "max_stack_bytes"),
            self.max_stack_bytes as u64,
            64 << 10,
            MIB,
        );
        p.range(
            key(at, "batch_max_records"),
            self.batch_max_records as u64,
            1,
            65_536,
        );
    }
}
