//! The agent's control-plane settings (`[control]` in the agent's file): which keys may sign
//! a pushed module, and when a new one is rolled back.

use dataweaver_core::check::{Check, Problems};
use serde::Deserialize;

/// Which pushed modules the agent accepts and how it watches them.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Public keys (`ed25519:<base64>`, as `transform keygen` writes them) whose
    /// signatures the agent accepts. Empty: every pushed module is refused.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Batches watched after a pushed version starts.
    #[serde(default = "default_rollback_window")]
    pub rollback_window_batches: u32,
    /// Share of those batches that may fail (trap, limit, or every record in error)
    /// before the previous version is swapped back in.
    #[serde(default = "default_rollback_share")]
    pub rollback_failed_share: f64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            trusted_keys: Vec::new(),
            rollback_window_batches: default_rollback_window(),
            rollback_failed_share: default_rollback_share(),
        }
    }
}

fn default_rollback_window() -> u32 {
    10
}

fn default_rollback_share() -> f64 {
    0.5
}

impl Check for ControlConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        use dataweaver_core::check::key;
        for (i, k) in self.trusted_keys.iter().enumerate() {
            if let Err(e) = crate::parse_public_key(k) {
                p.push(key(at, &format!("trusted_keys[{i}]")), e);
            }
        }
        if self.rollback_window_batches == 0 || !(0.0..1.0).contains(&self.rollback_failed_share) {
            p.push(
                key(at, "rollback_failed_share"),
                "needs rollback_window_batches > 0 and a share in [0, 1)",
            );
        }
        p.range(
            key(at, "rollback_window_batches"),
            self.rollback_window_batches.into(),
            1,
            100_000,
        );
    }
}
