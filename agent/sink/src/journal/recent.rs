//! The batches this process journaled and the outputs have not taken yet, kept in memory
//! so that the drain does not read back from the file what it was given moments before.
//!
//! Reading an entry back was a tenth of the sink's CPU: redb's lookup, a copy out of its
//! page (from the file when the entry has left redb's cache) and the entry's envelope
//! decoded again. What is kept here is exactly what the file holds: a batch enters only
//! once its transaction has committed, and leaves before a commit that changes or removes
//! its entry (a `Resolve` rewrites only unconfirmed entries, and forgets them here before
//! its changes become visible). A reopen forgets everything. A miss costs only the read.
//!
//! Bounded by bytes. When full, new batches are not kept: the drain takes entries oldest
//! first, so the oldest kept are the ones it reads next.

use std::collections::BTreeMap;
use std::sync::Mutex;

use dataweaver_wire::JournalEntry;

/// Kept entries by entry number, with their total size.
#[derive(Debug)]
pub(super) struct Recent {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    kept: BTreeMap<u64, JournalEntry>,
    bytes: usize,
}

impl Recent {
    /// A cache of at most `max_bytes` of batches.
    pub(super) fn new(max_bytes: usize) -> Recent {
        Recent {
            max_bytes,
            inner: Mutex::default(),
        }
    }

    /// After a commit: forgets the entries it changed or removed, then keeps the batches
    /// it journaled, as room allows.
    pub(super) fn committed(&self, forget: &[u64], keep: Vec<(u64, JournalEntry)>) {
        if forget.is_empty() && keep.is_empty() {
            return;
        }
        let mut i = self.lock();
        for k in forget {
            i.remove(*k);
        }
        for (k, kept) in keep {
            if i.bytes + kept.batch.len() > self.max_bytes {
                break;
            }
            i.bytes += kept.batch.len();
            i.kept.insert(k, kept);
        }
    }

    /// Takes the batch of entry `key` if it is kept: a round that fails reads it from the
    /// file next time.
    pub(super) fn take(&self, key: u64) -> Option<JournalEntry> {
        self.lock().remove(key)
    }

    /// Forgets every batch (the file was reopened).
    pub(super) fn clear(&self) {
        *self.lock() = Inner::default();
    }

    /// How many batches are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().kept.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing here panics while the lock is held; a poisoned lock still holds
        // consistent data.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn remove(&mut self, key: u64) -> Option<JournalEntry> {
        let kept = self.kept.remove(&key)?;
        self.bytes -= kept.batch.len();
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(n: usize) -> JournalEntry {
        JournalEntry {
            batch: vec![0; n].into(),
            ..Default::default()
        }
    }

    /// Full, it keeps the oldest (the drain's next) and not the newest; what a commit
    /// changed is forgotten before its new batches are kept.
    #[test]
    fn a_full_cache_keeps_the_oldest_and_forgets_what_a_commit_changed() {
        let r = Recent::new(100);
        r.committed(&[], vec![(1, kept(40)), (2, kept(40)), (3, kept(40))]);
        assert_eq!(r.len(), 2);
        assert!(r.take(3).is_none(), "no room for the newest");
        r.committed(&[1], vec![(4, kept(40))]);
        assert!(r.take(1).is_none(), "forgotten by the commit");
        assert_eq!(r.take(2).map(|k| k.batch.len()), Some(40));
        assert_eq!(r.take(4).map(|k| k.batch.len()), Some(40));
        assert!(r.take(4).is_none(), "taken once");
        r.committed(&[], vec![(5, kept(100))]);
        r.clear();
        assert_eq!(r.len(), 0);
    }
}
