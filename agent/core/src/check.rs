//! Checking a config section for what serde cannot (non-empty lists, readable files, sane
//! limits). Each component's crate implements [`Check`] for its own config type, next to
//! the code that uses it; the config loader walks the file and collects every problem.

/// The problems of a config file: `(dotted key path, message)` each, every one found (the
/// first per key, in the order found), and the range of every bounded key.
#[derive(Debug, Default)]
pub struct Problems {
    found: Vec<(String, String)>,
    bounds: Vec<Bound>,
}

/// One bounded key of a config: `(key path, value, min, max)`.
pub type Bound = (String, u64, u64, u64);

/// A config section that checks what serde cannot.
pub trait Check {
    /// Adds every problem of this section, found at key path `at` (`""` at the top), and
    /// the range of each of its bounded keys, to `p`.
    fn check(&self, at: &str, p: &mut Problems);
}

/// Key `key` under path `at`: `at.key`, or `key` at the top.
pub fn key(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

impl Problems {
    /// A problem at `key` (ignored if that key already has one).
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        if !self.found.iter().any(|(k, _)| *k == key) {
            self.found.push((key, message.into()));
        }
    }

    /// `key` must not be 0.
    pub fn nonzero(&mut self, key: impl Into<String>, v: u64) {
        if v == 0 {
            self.push(key, "must be greater than 0");
        }
    }

    /// `key` must lie in `min..=max`; checked after every other problem (see
    /// [`finish`](Self::finish)), and listed by the config reference.
    pub fn range(&mut self, key: impl Into<String>, v: u64, min: u64, max: u64) {
        self.bounds.push((key.into(), v, min, max));
    }

    /// `file` must be a file.
    pub fn file(&mut self, key: impl Into<String>, file: &std::path::Path) {
        if !file.is_file() {
            self.push(key, format!("no such file: {}", file.display()));
        }
    }

    /// The reconnect back-off keys under `at` (`reconnect_min_ms` up to
    /// `reconnect_max_ms`), each between 1 ms and an hour.
    pub fn reconnect(&mut self, at: &str, min_ms: u64, max_ms: u64) {
        if min_ms == 0 || min_ms > max_ms {
            self.push(
                key(at, "reconnect_min_ms"),
                "must be > 0 and <= reconnect_max_ms",
            );
        }
        self.range(key(at, "reconnect_min_ms"), min_ms, 1, MS_HOUR);
        self.range(key(at, "reconnect_max_ms"), max_ms, 1, MS_HOUR);
    }

    /// The ranges recorded so far.
    pub fn bounds(&self) -> &[Bound] {
        &self.bounds
    }

    /// Every problem, the values out of range last. The ranges are wide: they only keep
    /// out what breaks the agent (a linger of 292 million years that hangs the writer, a
    /// timeout of 0, a size no machine has), not unusual tuning.
    pub fn finish(mut self) -> Result<(), Vec<(String, String)>> {
        for (key, v, min, max) in std::mem::take(&mut self.bounds) {
            if !(min..=max).contains(&v) {
                self.push(
                    key,
                    format!("{v} is out of range: must be between {min} and {max}"),
                );
            }
        }
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(self.found)
        }
    }
}

/// Default first reconnect delay of the forwarder and the MQTT source.
pub fn default_reconnect_min_ms() -> u64 {
    100
}

/// Default longest reconnect delay of the forwarder and the MQTT source.
pub fn default_reconnect_max_ms() -> u64 {
    5_000
}

/// Milliseconds in an hour.
pub const MS_HOUR: u64 = 3_600_000;
/// Bytes in a mebibyte.
pub const MIB: u64 = 1 << 20;
/// Bytes in a gibibyte.
pub const GIB: u64 = 1 << 30;
/// Bytes in a tebibyte.
pub const TIB: u64 = 1 << 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_problem_of_a_key_wins_and_ranges_come_last() {
        let mut p = Problems::default();
        p.range("a", 0, 1, 10);
        p.nonzero("a", 0);
        p.range("b", 11, 1, 10);
        p.push("c", "bad");
        p.push("c", "worse");
        assert_eq!(p.bounds().len(), 2);
        let found = p.finish().unwrap_err();
        assert_eq!(
            found,
            vec![
                ("a".to_string(), "must be greater than 0".to_string()),
                ("c".into(), "bad".into()),
                (
                    "b".into(),
                    "11 is out of range: must be between 1 and 10".into()
                ),
            ]
        );
        assert_eq!(key("", "x"), "x");
        assert_eq!(key("a[0]", "x"), "a[0].x");
    }
}
