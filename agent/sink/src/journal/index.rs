//! Where each journal entry stands, kept in memory: the drainer reads only confirmed
//! entries, a `Resolve` only its own queue's, and what an agent holds unconfirmed is known
//! without reading the file.
//!
//! Before, every drain round and every `Resolve` read the whole journal (an entry's header
//! is read with its whole page), so an agent that sent batches and never confirmed them
//! made every other agent's delivery slower, and could fill the disk without bound.
//!
//! Built from the file at every open and reopen. In between, the writer keeps
//! [`Unconfirmed`] up to date while it builds a transaction (a failed commit leads to a
//! reopen, which rebuilds it), and confirmed entries enter [`Ready`] only once their
//! confirmation has committed: the drainer never outputs an entry the file does not hold
//! as confirmed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

/// An entry waiting for its agent's confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Waiting {
    /// Entry number.
    pub(super) key: u64,
    /// Last seq of its records.
    pub(super) last_seq: u64,
    /// Its size as stored.
    pub(super) bytes: u64,
}

/// One queue's unconfirmed entries.
#[derive(Debug, Default)]
struct QueueWaiting {
    /// Their total size.
    bytes: u64,
    /// In entry order (so in seq order).
    entries: VecDeque<Waiting>,
}

/// Unconfirmed entries by agent and queue (the writer's).
#[derive(Debug, Default)]
pub(super) struct Unconfirmed(HashMap<String, HashMap<String, QueueWaiting>>);

impl Unconfirmed {
    /// Bytes the queue holds unconfirmed.
    pub(super) fn bytes(&self, agent: &str, queue: &str) -> u64 {
        self.0
            .get(agent)
            .and_then(|a| a.get(queue))
            .map_or(0, |q| q.bytes)
    }

    /// Adds an entry at the end of its queue.
    pub(super) fn push(&mut self, agent: &str, queue: &str, w: Waiting) {
        let a = match self.0.get_mut(agent) {
            Some(a) => a,
            None => self.0.entry(agent.to_string()).or_default(),
        };
        let q = match a.get_mut(queue) {
            Some(q) => q,
            None => a.entry(queue.to_string()).or_default(),
        };
        q.bytes += w.bytes;
        q.entries.push_back(w);
    }

    /// Takes out the queue's entries whose records are all at or below `upto`.
    pub(super) fn take_upto(&mut self, agent: &str, queue: &str, upto: u64) -> Vec<Waiting> {
        let mut out = Vec::new();
        let Some(q) = self.0.get_mut(agent).and_then(|a| a.get_mut(queue)) else {
            return out;
        };
        q.entries.retain(|w| {
            let confirmed = w.last_seq <= upto;
            if confirmed {
                out.push(*w);
            }
            !confirmed
        });
        q.bytes -= out.iter().map(|w| w.bytes).sum::<u64>();
        self.tidy(agent, queue);
        out
    }

    /// Takes out all of the queue's entries, oldest first.
    pub(super) fn take_queue(&mut self, agent: &str, queue: &str) -> VecDeque<Waiting> {
        let Some(q) = self.0.get_mut(agent).and_then(|a| a.get_mut(queue)) else {
            return VecDeque::new();
        };
        let out = std::mem::take(&mut q.entries);
        q.bytes = 0;
        self.tidy(agent, queue);
        out
    }

    /// Whether the queue has unconfirmed entries (`tidy` forgets queues without any).
    pub(super) fn holds(&self, agent: &str, queue: &str) -> bool {
        self.0.get(agent).is_some_and(|a| a.contains_key(queue))
    }

    /// Forgets empty queues and agents, so that the map holds only what waits.
    fn tidy(&mut self, agent: &str, queue: &str) {
        let Some(a) = self.0.get_mut(agent) else {
            return;
        };
        if a.get(queue).is_some_and(|q| q.entries.is_empty()) {
            a.remove(queue);
        }
        if a.is_empty() {
            self.0.remove(agent);
        }
    }
}

/// A confirmed entry the outputs have not taken yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadyEntry {
    /// Its size as stored.
    pub(super) bytes: u64,
    /// Its agent, empty for an entry whose header does not decode.
    pub(super) agent: String,
    /// Its queue.
    pub(super) queue: String,
}

impl ReadyEntry {
    /// An entry of `bytes` of the queue `queue` of `agent`.
    pub(super) fn new(bytes: u64, agent: &str, queue: &str) -> ReadyEntry {
        ReadyEntry {
            bytes,
            agent: agent.to_string(),
            queue: queue.to_string(),
        }
    }
}

/// Confirmed entries by entry number (the order they are output in): added by the writer
/// once a confirmation commits, taken by the drainer once its round commits.
#[derive(Debug, Default)]
pub(super) struct Ready(Mutex<ReadyMap>);

#[derive(Debug, Default)]
struct ReadyMap {
    entries: BTreeMap<u64, ReadyEntry>,
    /// Their bytes per agent.
    bytes: HashMap<String, u64>,
}

impl ReadyMap {
    fn insert(&mut self, key: u64, e: ReadyEntry) {
        *self.bytes.entry(e.agent.clone()).or_default() += e.bytes;
        if let Some(old) = self.entries.insert(key, e) {
            self.forget(&old);
        }
    }

    fn forget(&mut self, e: &ReadyEntry) {
        if let Some(b) = self.bytes.get_mut(&e.agent) {
            *b = b.saturating_sub(e.bytes);
            if *b == 0 {
                self.bytes.remove(&e.agent);
            }
        }
    }
}

impl Ready {
    fn map(&self) -> std::sync::MutexGuard<'_, ReadyMap> {
        // The map is whole after every operation on it: a panic elsewhere leaves it usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds committed entries.
    pub(super) fn add(&self, entries: Vec<(u64, ReadyEntry)>) {
        let mut m = self.map();
        for (k, e) in entries {
            m.insert(k, e);
        }
    }

    /// Replaces everything with what a reopened file holds.
    pub(super) fn replace(&self, entries: BTreeMap<u64, ReadyEntry>) {
        let mut m = ReadyMap::default();
        for (k, e) in entries {
            m.insert(k, e);
        }
        *self.map() = m;
    }

    /// The oldest entries: at least one, then more while their size stays within
    /// `max_bytes`.
    pub(super) fn oldest(&self, max_bytes: usize) -> Vec<u64> {
        let mut total = 0u64;
        let mut out = Vec::new();
        for (k, e) in self.map().entries.iter() {
            total += e.bytes;
            if !out.is_empty() && total > max_bytes as u64 {
                break;
            }
            out.push(*k);
        }
        out
    }

    /// Forgets entries that were drained or moved away.
    pub(super) fn remove(&self, keys: impl IntoIterator<Item = u64>) {
        let mut m = self.map();
        for k in keys {
            if let Some(e) = m.entries.remove(&k) {
                m.forget(&e);
            }
        }
    }

    /// Bytes of `agent`'s entries waiting for the outputs.
    pub(super) fn bytes(&self, agent: &str) -> u64 {
        self.map().bytes.get(agent).copied().unwrap_or(0)
    }

    /// Whether the queue has entries waiting for the outputs.
    pub(super) fn holds(&self, agent: &str, queue: &str) -> bool {
        self.map()
            .entries
            .values()
            .any(|e| e.agent == agent && e.queue == queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: u64, last_seq: u64) -> Waiting {
        Waiting {
            key,
            last_seq,
            bytes: 10,
        }
    }

    #[test]
    fn confirming_takes_only_what_is_covered_and_keeps_the_count() {
        let mut u = Unconfirmed::default();
        u.push("a", "q", w(1, 5));
        u.push("a", "q", w(3, 9));
        u.push("a", "r", w(2, 4));
        u.push("b", "q", w(4, 5));
        assert_eq!((u.bytes("a", "q"), u.bytes("a", "r")), (20, 10));
        assert_eq!(u.take_upto("a", "q", 6), vec![w(1, 5)]);
        assert_eq!(u.bytes("a", "q"), 10);
        assert_eq!(u.take_queue("a", "r"), VecDeque::from([w(2, 4)]));
        assert!(!u.holds("a", "r") && u.holds("a", "q") && u.holds("b", "q"));
        assert_eq!(u.take_upto("a", "q", 9), vec![w(3, 9)]);
        assert_eq!((u.bytes("a", "q"), u.0.len()), (0, 1), "agent a forgotten");
    }

    #[test]
    fn the_oldest_ready_entries_come_first_within_the_size() {
        let r = Ready::default();
        let e = |bytes| ReadyEntry {
            bytes,
            agent: "a".into(),
            queue: "q".into(),
        };
        r.add(vec![(7, e(50)), (2, e(100)), (5, e(50))]);
        assert_eq!(r.oldest(10), vec![2], "at least one");
        assert_eq!(r.oldest(150), vec![2, 5]);
        assert_eq!(r.bytes("a"), 200);
        r.remove([2, 3]);
        assert_eq!(r.oldest(usize::MAX), vec![5, 7]);
        assert_eq!(r.bytes("a"), 100);
        assert!(r.holds("a", "q") && !r.holds("a", "r"));
    }
}
