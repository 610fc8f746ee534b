//! Named counters (received, dropped, ...) kept in memory and logged; the Prometheus
//! endpoint (a later issue) will export the same registry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A registry of monotonically increasing counters.
#[derive(Debug, Default)]
pub struct Counters {
    map: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl Counters {
    /// The counter `name`, created at 0 on first use.
    pub fn counter(&self, name: &str) -> Arc<AtomicU64> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// Current values, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }

    /// One line `name=value name=value ...` for the log.
    pub fn line(&self) -> String {
        self.snapshot()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
