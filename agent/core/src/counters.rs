//! Named counters (received, dropped, ...) and latency histograms kept in memory; logged,
//! and exported by the admin endpoint's `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::family::Family;
/// A latency histogram (prometheus-client's), as stages keep them.
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;

/// A registry of monotonically increasing counters.
#[derive(Debug, Default)]
pub struct Counters {
    map: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, HistogramFamily>>,
}

/// Histograms of one metric, by label set.
pub type HistogramFamily = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;

/// A latency histogram with the agent's buckets, seconds: 10 µs to about 2.6 s, ×4 each.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 4.0, 10))
}

impl Counters {
    /// The counter `name`, created at 0 on first use.
    pub fn counter(&self, name: &str) -> Arc<AtomicU64> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// The latency histogram (seconds) of metric `family` with `labels`, created on first
    /// use; clones share their data.
    pub fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> Histogram {
        let mut map = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.entry(family.to_string()).or_insert_with(|| {
            Family::new_with_constructor(latency_histogram as fn() -> Histogram)
        });
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        f.get_or_create(&labels).clone()
    }

    /// The histogram families, sorted by name (clones share their data).
    pub fn histograms(&self) -> Vec<(String, HistogramFamily)> {
        let map = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
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
