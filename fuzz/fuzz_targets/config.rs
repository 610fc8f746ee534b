//! A config file through `dataweaver validate`'s path: read, parse (TOML with key paths),
//! validate, locate the error in the text, as an agent config and as a sink config.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dataweaver::config;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir").keep())
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("dataweaver.toml");
    std::fs::write(&path, data).expect("write the config");
    let _ = config::detect_kind(&path);
    if let Err(e) = config::load_agent(&path) {
        let _ = e.to_string();
    }
    if let Err(e) = config::load_sink(&path) {
        let _ = e.to_string();
    }
});
