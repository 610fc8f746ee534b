//! Stage two of reading a config: what serde cannot check (non-empty lists, readable
//! files, sane limits), every problem collected rather than the first. Each component
//! checks its own section ([`Check`], in its crate); this file checks what only the whole
//! file knows (unique names across pipelines, sources and transforms).

use dataweaver_core::check::{Check, Problems, key};

use super::*;

pub(super) use dataweaver_core::check::Bound;

/// A problem found by validation: `(dotted key path, message)`.
pub type Invalid = (String, String);

/// A config file's stage two: what serde cannot check (the agent's and the sink's file).
pub trait Validate {
    /// Checks what serde cannot; the errors are `(key path, message)`, every one found.
    fn validate(&self) -> Result<(), Vec<Invalid>>;
}

impl<T: Check> Validate for T {
    fn validate(&self) -> Result<(), Vec<Invalid>> {
        let mut found = Problems::default();
        self.check("", &mut found);
        found.finish()
    }
}

/// The range of every duration, size and count key of a config file.
pub(super) trait Bounded {
    /// `(key, value, min, max)` of each such key.
    fn bounds(&self) -> Vec<Bound>;
}

impl<T: Check> Bounded for T {
    fn bounds(&self) -> Vec<Bound> {
        let mut found = Problems::default();
        self.check("", &mut found);
        found.bounds().to_vec()
    }
}

impl Check for AgentConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        self.forward.check(&key(at, "forward"), p);
        self.queue.check(&key(at, "queue"), p);
        if self.pipelines.is_empty() {
            p.push(key(at, "pipelines"), "at least one pipeline is needed");
        }
        self.control.check(&key(at, "control"), p);
        self.admin.check(&key(at, "admin"), p);
        let mut names = std::collections::HashSet::new();
        for (i, pipeline) in self.pipelines.iter().enumerate() {
            let at = key(at, &format!("pipelines[{i}]"));
            if !names.insert(&pipeline.name) {
                p.push(
                    key(&at, "name"),
                    format!("duplicate pipeline `{}`", pipeline.name),
                );
            }
            pipeline.check(&at, p);
        }
    }
}

impl Check for PipelineConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        if self.sources.is_empty() {
            p.push(key(at, "sources"), "at least one source is needed");
        }
        let mut transform_names = std::collections::HashSet::new();
        for (j, t) in self.transforms.iter().enumerate() {
            let at = key(at, &format!("transforms[{j}]"));
            if !transform_names.insert(t.name()) {
                p.push(
                    key(&at, "name"),
                    format!("duplicate transform name `{}`", t.name()),
                );
            }
            t.check(&at, p);
        }
        let mut source_names = std::collections::HashSet::new();
        for (j, s) in self.sources.iter().enumerate() {
            let at = key(at, &format!("sources[{j}]"));
            if !source_names.insert(s.name()) {
                p.push(
                    key(&at, "name"),
                    format!(
                        "duplicate source name `{}` in pipeline `{}` (checkpoints are kept per source name)",
                        s.name(),
                        self.name
                    ),
                );
            }
            s.check(&at, p);
        }
    }
}
