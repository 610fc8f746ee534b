//! A simulated disk for crash-consistency and full-disk tests (the model is redb's own
//! `tests/crash_consistency.rs`, made random).
//!
//! Every write lands in the live image at once, as in the page cache, and is remembered as
//! unsynced until the next `sync_data`, which makes the live image durable. A crash
//! ([`SimDisk::crash_image`]) keeps the durable image and, for each unsynced operation
//! independently (so in any order a disk may reorder them), drops it, applies it, or (for
//! writes) tears it: each 512-byte sector it touches reaches the platter or not. That covers
//! what a disk honouring `fsync` may leave after a power cut. Not modelled: a failed sync
//! whose pages the kernel then drops for good (here they become durable with the next
//! sync that works), and read errors.
//!
//! Faults: from a chosen operation on, every operation fails as if the machine died there
//! ([`SimDisk::crash_at`]), or operations in a window fail with ENOSPC or EIO
//! ([`SimDisk::fail`]), or writes beyond a capacity fail with ENOSPC
//! ([`SimDisk::set_capacity`]). Operations are counted (writes, length changes and syncs,
//! from 1), so a test can first count a workload's operations, then crash at any of them.

use std::io::{Error, ErrorKind};
use std::sync::{Arc, Mutex, MutexGuard};

/// Sector size of the simulated disk: the unit a torn write tears at.
const SECTOR: u64 = 512;

/// How a failing operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// ENOSPC: the disk is full.
    NoSpace,
    /// EIO: the device reported an error.
    Io,
}

impl Fault {
    fn error(self) -> Error {
        match self {
            Fault::NoSpace => Error::new(ErrorKind::StorageFull, "simulated ENOSPC"),
            Fault::Io => Error::other("simulated EIO"),
        }
    }
}

/// A disk in memory that loses unsynced writes at a crash; cheap to clone (clones share
/// the disk).
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Operations since the last sync, in order.
    unsynced: Vec<Op>,
    /// Operations so far (writes, length changes, syncs).
    ops: u64,
    /// Bytes read so far (reads are not operations: they change nothing).
    read_bytes: u64,
    /// From this operation on, everything fails: the machine died there.
    crash_at: Option<u64>,
    crashed: bool,
    /// Operations in `[from, to)` fail so.
    faults: Vec<(u64, u64, Fault)>,
    /// Writes that would grow the disk past this fail with ENOSPC.
    capacity: Option<u64>,
    /// What the next syncs after a write at offset 0 (redb's header: the last write of a
    /// commit) do, in order: fail with the fault, its writes already in place, or pass
    /// (`None`); and whether such a write is waiting for its sync.
    commit_syncs: (std::collections::VecDeque<Option<Fault>>, bool),
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test thread that panicked while holding the lock leaves a consistent state
        // (every change is one assignment): go on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `StorageBackend` redb opens.
    pub(crate) fn backend(&self) -> SimBackend {
        SimBackend(self.clone())
    }

    /// Operations performed so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Bytes read from the disk so far.
    pub fn read_bytes(&self) -> u64 {
        self.lock().read_bytes
    }

    /// Operation `op` (counted from 1) and every one after it fail: the machine dies there.
    pub fn crash_at(&self, op: u64) {
        self.lock().crash_at = Some(op);
    }

    /// Whether the crash point was reached.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The next `count` operations after the ones so far fail with `fault`.
    pub fn fail_next(&self, count: u64, fault: Fault) {
        let mut s = self.lock();
        let from = s.ops + 1;
        s.faults.push((from, from + count, fault));
    }

    /// Operations `from..from + count` (counted from 1) fail with `fault`.
    pub fn fail(&self, from: u64, count: u64, fault: Fault) {
        self.lock().faults.push((from, from + count, fault));
    }

    /// The next commit's final sync fails with `fault` after all its writes, header
    /// included, are in place: a commit that reports failure but may have landed.
    pub fn fail_next_commit_sync(&self, fault: Fault) {
        self.plan_commit_syncs(&[Some(fault)]);
    }

    /// What the final syncs of the next commits do, one entry each, in order: fail with
    /// the fault (as [`SimDisk::fail_next_commit_sync`]) or pass (`None`). Opening a
    /// database that was not closed cleanly makes such syncs too.
    pub fn plan_commit_syncs(&self, plan: &[Option<Fault>]) {
        self.lock().commit_syncs = (plan.iter().copied().collect(), false);
    }

    /// Entries of the plan not reached yet.
    pub fn planned_commit_syncs(&self) -> usize {
        self.lock().commit_syncs.0.len()
    }

    /// Writes that would grow the disk beyond `bytes` fail with ENOSPC (`None`: no limit).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Bytes the disk holds now.
    pub fn len(&self) -> u64 {
        self.lock().live.len() as u64
    }

    /// Whether the disk holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Room left under the capacity (`None` if there is no limit).
    pub fn free_bytes(&self) -> Option<u64> {
        let s = self.lock();
        s.capacity.map(|c| c.saturating_sub(s.live.len() as u64))
    }

    /// What a crash leaves, as a new disk: the durable image, with each unsynced operation
    /// dropped, applied or torn as `seed` decides.
    pub fn crash_image(&self, seed: u64) -> SimDisk {
        let s = self.lock();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut image = s.durable.clone();
        for op in &s.unsynced {
            match op {
                Op::SetLen(len) => {
                    if rng.bool() {
                        image.resize(*len as usize, 0);
                    }
                }
                Op::Write(offset, data) => match rng.u8(0..3) {
                    0 => {}
                    1 => put(&mut image, *offset, data),
                    _ => {
                        let end = offset + data.len() as u64;
                        let mut at = *offset;
                        while at < end {
                            let next = ((at / SECTOR) + 1) * SECTOR;
                            let upto = next.min(end);
                            if rng.bool() {
                                let from = (at - offset) as usize;
                                let to = (upto - offset) as usize;
                                put(&mut image, at, &data[from..to]);
                            }
                            at = upto;
                        }
                    }
                },
            }
        }
        SimDisk {
            state: Arc::new(Mutex::new(State {
                live: image.clone(),
                durable: image,
                ..State::default()
            })),
        }
    }

    /// Counts one operation and says whether it fails.
    fn step(s: &mut State) -> Result<(), Error> {
        if s.crashed {
            return Err(Error::other("simulated crash: the disk is gone"));
        }
        s.ops += 1;
        if s.crash_at.is_some_and(|at| s.ops >= at) {
            s.crashed = true;
            return Err(Error::other("simulated crash: the disk is gone"));
        }
        let op = s.ops;
        match s
            .faults
            .iter()
            .find(|(from, to, _)| (*from..*to).contains(&op))
        {
            Some((_, _, fault)) => Err(fault.error()),
            None => Ok(()),
        }
    }
}

/// Writes `data` at `offset`, growing `image` with zeros as needed.
fn put(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let (from, to) = (offset as usize, offset as usize + data.len());
    if image.len() < to {
        image.resize(to, 0);
    }
    image[from..to].copy_from_slice(data);
}

/// The [`redb::StorageBackend`] of a [`SimDisk`].
#[derive(Debug)]
pub(crate) struct SimBackend(SimDisk);

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, Error> {
        Ok(self.0.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        let mut s = self.0.lock();
        if s.crashed {
            return Err(Error::other("simulated crash: the disk is gone"));
        }
        let from = usize::try_from(offset).map_err(|_| Error::from(ErrorKind::UnexpectedEof))?;
        let slice = s
            .live
            .get(from..from.saturating_add(out.len()))
            .ok_or_else(|| Error::from(ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(slice);
        s.read_bytes += out.len() as u64;
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), Error> {
        let mut s = self.0.lock();
        SimDisk::step(&mut s)?;
        if s.capacity.is_some_and(|c| len > c) {
            return Err(Fault::NoSpace.error());
        }
        s.live.resize(len as usize, 0);
        s.unsynced.push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), Error> {
        let mut s = self.0.lock();
        SimDisk::step(&mut s)?;
        if s.commit_syncs.1 {
            s.commit_syncs.1 = false;
            if let Some(Some(fault)) = s.commit_syncs.0.pop_front() {
                return Err(fault.error());
            }
        }
        let ops = std::mem::take(&mut s.unsynced);
        for op in ops {
            match op {
                Op::SetLen(len) => s.durable.resize(len as usize, 0),
                Op::Write(offset, data) => put(&mut s.durable, offset, &data),
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut s = self.0.lock();
        SimDisk::step(&mut s)?;
        let end = offset + data.len() as u64;
        if s.capacity.is_some_and(|c| end > c) {
            return Err(Fault::NoSpace.error());
        }
        put(&mut s.live, offset, data);
        s.unsynced.push(Op::Write(offset, data.to_vec()));
        if offset == 0 && !s.commit_syncs.0.is_empty() {
            s.commit_syncs.1 = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    #[test]
    fn a_crash_keeps_what_was_synced_and_may_lose_the_rest() {
        let disk = SimDisk::new();
        let b = disk.backend();
        b.write(0, &[1; 1024]).unwrap();
        b.sync_data().unwrap();
        b.write(0, &[2; 1024]).unwrap();
        let mut kinds = std::collections::HashSet::new();
        for seed in 0..64 {
            let img = disk.crash_image(seed);
            let mut out = [0u8; 1024];
            img.backend().read(0, &mut out).unwrap();
            // Sector by sector: old or new, never anything else.
            for s in out.chunks(512) {
                assert!(s.iter().all(|&x| x == s[0]) && (s[0] == 1 || s[0] == 2));
            }
            kinds.insert((out[0], out[600]));
        }
        assert_eq!(
            kinds.len(),
            4,
            "dropped, applied and torn both ways: {kinds:?}"
        );
    }

    #[test]
    fn operations_fail_from_the_crash_point_and_in_fault_windows() {
        let disk = SimDisk::new();
        let b = disk.backend();
        disk.fail(2, 1, Fault::NoSpace);
        disk.crash_at(4);
        b.write(0, &[1]).unwrap();
        let e = b.write(0, &[1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StorageFull);
        b.sync_data().unwrap();
        assert!(b.sync_data().is_err());
        assert!(disk.crashed() && b.write(0, &[1]).is_err());
    }
}
