//! Crash consistency of the queue, in-process, on a [`SimDisk`]: a seeded workload of
//! appends (with checkpoints), acks and reads runs until the disk dies at a seeded
//! operation; the disk then loses or tears what was not synced, the queue is reopened on
//! what is left, and the invariants are checked. `DATAWEAVER_CRASH_SEEDS=N` runs N seeds
//! instead of the default 2,000; a failure names its seed, and `DATAWEAVER_CRASH_SEED=S`
//! replays that one.
//!
//! Also here: ENOSPC and EIO at chosen writes, and a disk that fills up: the queue refuses,
//! stays up, recovers, and loses nothing (the tmpfs tests in `tests/e2e` do the same on a
//! real filesystem, as root).

use std::collections::BTreeMap;

use super::*;
use dataweaver_store::seeds::{crash_seeds, run_seeds};
use dataweaver_store::{Fault, Medium, SimDisk};

const SOURCES: [&str; 3] = ["a", "b", "c"];

fn cfg() -> QueueConfig {
    QueueConfig {
        // A small chunk limit so a workload spans many chunks and deletions split them.
        commit_max_records: 16,
        ..QueueConfig::default()
    }
}

fn line(source: &str, i: u64) -> Record {
    Record::new(source, "t", format!("{source}:{i}").into_bytes())
}

fn checkpoint(source: &str, upto: u64) -> Checkpoint {
    Checkpoint {
        key: format!("cp:{source}"),
        value: upto.to_le_bytes().to_vec(),
    }
}

/// What the workload was told: the queue's side of every promise it made.
#[derive(Debug, Default)]
struct Told {
    /// Appends the queue acknowledged: (source, first index, first seq, count).
    appended: Vec<(usize, u64, u64, u64)>,
    /// Per source, the last index the source was told is stored.
    stored_upto: [u64; 3],
    /// Per source, the last index sent in any append (stored or maybe stored).
    sent_upto: [u64; 3],
    /// Highest seq acked by the sink.
    acked: u64,
    /// Highest `durable_acked` seen: what the agent would confirm to the sink.
    durable_acked: u64,
    /// Highest `committed` seen.
    committed: u64,
}

/// Runs the seeded workload until the disk fails or it ends.
async fn workload(q: &Queue, seed: u64) -> Told {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut told = Told::default();
    let durable = q.durable_acked();
    let committed = q.committed();
    for _ in 0..rng.usize(10..40) {
        match rng.u8(0..10) {
            // A group of appends from several sources at once: one commit, or a few.
            0..=5 => {
                let n = rng.usize(1..=3);
                let picks: Vec<(usize, u64)> = (0..n).map(|i| (i, rng.u64(1..=40))).collect();
                let mut futs = Vec::new();
                for &(s, k) in &picks {
                    let from = told.sent_upto[s] + 1;
                    let to = from + k - 1;
                    told.sent_upto[s] = to;
                    let records = (from..=to).map(|i| line(SOURCES[s], i)).collect();
                    let q = q.clone();
                    futs.push(tokio::spawn(async move {
                        (
                            s,
                            from,
                            to,
                            q.append(records, Some(checkpoint(SOURCES[s], to))).await,
                        )
                    }));
                }
                let mut failed = false;
                for f in futs {
                    let Ok((s, from, to, r)) = f.await else {
                        panic!("append task panicked");
                    };
                    match r {
                        Ok(a) => {
                            assert_eq!(a.count as u64, to - from + 1);
                            told.appended.push((s, from, a.first_seq, a.count as u64));
                            told.stored_upto[s] = told.stored_upto[s].max(to);
                        }
                        Err(_) => failed = true,
                    }
                }
                if failed {
                    break;
                }
            }
            // The sink acknowledges part of what is stored.
            6..=8 => {
                let top = told
                    .appended
                    .iter()
                    .map(|a| a.2 + a.3 - 1)
                    .max()
                    .unwrap_or(0);
                if top > told.acked {
                    let seq = rng.u64(told.acked + 1..=top);
                    q.ack_from("sink", seq);
                    told.acked = seq;
                }
            }
            // A reader: the forwarder reads what it sends.
            _ => {
                if q.read(told.acked + 1, 100, usize::MAX).is_err() {
                    break;
                }
            }
        }
        told.durable_acked = told.durable_acked.max(*durable.borrow());
        told.committed = told.committed.max(*committed.borrow());
    }
    told.durable_acked = told.durable_acked.max(*durable.borrow());
    told.committed = told.committed.max(*committed.borrow());
    told
}

/// Checks what the reopened queue holds against what the workload was told.
fn check(q: &Queue, told: &Told) -> Result<(), String> {
    let stats = q.stats().map_err(|e| format!("stats: {e}"))?;
    let held = q
        .read(1, usize::MAX, usize::MAX)
        .map_err(|e| format!("read: {e}"))?;
    let first = held.first().map_or(stats.next_seq, |(s, _)| *s);
    // Seqs are contiguous, up to the last one assigned.
    for (i, (seq, _)) in held.iter().enumerate() {
        if *seq != first + i as u64 {
            return Err(format!("seq {seq} at position {i}: a gap after {first}"));
        }
    }
    if let Some((last, _)) = held.last()
        && *last + 1 != stats.next_seq
    {
        return Err(format!("last seq {last} but next_seq {}", stats.next_seq));
    }
    if told.committed >= stats.next_seq {
        return Err(format!(
            "committed {} was announced, the queue ends at {}",
            told.committed,
            stats.next_seq - 1
        ));
    }
    // Nothing the sink has not acked was deleted; everything announced as durably acked
    // was, and its owner with it.
    if first > told.acked + 1 {
        return Err(format!(
            "seqs below {first} are gone, only {} were acked",
            told.acked
        ));
    }
    // Chunks go whole: the first one left must still hold a seq not announced as acked.
    let first_chunk = q
        .shared
        .with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let t = txn.open_table(CHUNKS).map_err(db)?;
            let first = t.first().map_err(db)?;
            Ok(first.map(|(k, v)| (k.value(), chunk_header(k.value(), v.value()).map(|h| h.0))))
        })
        .map_err(|e| format!("chunks: {e}"))?;
    if let Some((key, Ok(count))) = first_chunk
        && key + u64::from(count) - 1 <= told.durable_acked
    {
        return Err(format!(
            "durable_acked {} was announced, chunk {key}..{} is still queued",
            told.durable_acked,
            key + u64::from(count) - 1
        ));
    }
    let owner = q.owner_mark("sink").map_err(|e| format!("owner: {e}"))?;
    if owner < told.durable_acked {
        return Err(format!(
            "durable_acked {} was announced, the owner mark is {owner}",
            told.durable_acked
        ));
    }
    // Every acknowledged append is there, record for record (unless acked and deleted).
    let by_seq: BTreeMap<u64, &Record> = held.iter().map(|(s, r)| (*s, r)).collect();
    for &(s, from, seq, count) in &told.appended {
        for i in 0..count {
            if seq + i < first {
                continue;
            }
            let want = format!("{}:{}", SOURCES[s], from + i);
            match by_seq.get(&(seq + i)) {
                Some(r) if r.payload == want.as_bytes() => {}
                Some(r) => {
                    return Err(format!(
                        "seq {} holds {:?}, not {want}",
                        seq + i,
                        String::from_utf8_lossy(&r.payload)
                    ));
                }
                None => return Err(format!("acknowledged seq {} ({want}) is gone", seq + i)),
            }
        }
    }
    // Checkpoints match their records: a source resumes exactly after what is stored.
    for (s, name) in SOURCES.iter().enumerate() {
        let cp = q
            .checkpoint(&format!("cp:{name}"))
            .map_err(|e| format!("checkpoint: {e}"))?
            .map_or(0, |v| le_u64(&v));
        if cp < told.stored_upto[s] || cp > told.sent_upto[s] {
            return Err(format!(
                "checkpoint of {name} is {cp}; told stored up to {}, sent up to {}",
                told.stored_upto[s], told.sent_upto[s]
            ));
        }
        let mine: Vec<u64> = held
            .iter()
            .filter(|(_, r)| *r.source == **name)
            .map(|(_, r)| {
                let p = String::from_utf8_lossy(&r.payload);
                p.rsplit(':')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        if mine.windows(2).any(|w| w[1] != w[0] + 1) {
            return Err(format!(
                "records of {name} out of order or repeated: {mine:?}"
            ));
        }
        let last = mine.last().copied().unwrap_or(told.stored_upto[s]);
        if last != cp {
            return Err(format!(
                "{name}'s records end at {last}, its checkpoint says {cp}"
            ));
        }
        // What is missing before its first record was acked and deleted.
        if let Some(&lowest) = mine.first()
            && lowest > 1
            && !told
                .appended
                .iter()
                .any(|a| a.0 == s && (a.1..a.1 + a.3).contains(&(lowest - 1)) && a.2 < first)
        {
            return Err(format!(
                "{name}'s records start at {lowest}; the ones before were never deleted"
            ));
        }
    }
    Ok(())
}

/// One seed: count the workload's operations, run it again with the disk dying at a
/// seeded one, crash, reopen, check; then the reopened queue must take appends again.
async fn crash_once(seed: u64) -> Result<bool, String> {
    let probe = SimDisk::new();
    {
        let q = Queue::open_on(Medium::Sim(probe.clone()), None, &cfg())
            .map_err(|e| format!("probe open: {e}"))?;
        workload(&q, seed).await;
        q.close().await;
    }
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15);
    let disk = SimDisk::new();
    disk.crash_at(rng.u64(1..=probe.ops().max(1)));
    let told = {
        let q = match Queue::open_on(Medium::Sim(disk.clone()), None, &cfg()) {
            Ok(q) => q,
            // Died while creating the file: nothing was promised.
            Err(_) => {
                return reopen_and_check(&disk, seed, &Told::default())
                    .await
                    .map(|()| true);
            }
        };
        let told = workload(&q, seed).await;
        q.close().await;
        told
    };
    reopen_and_check(&disk, seed, &told).await?;
    Ok(disk.crashed())
}

async fn reopen_and_check(disk: &SimDisk, seed: u64, told: &Told) -> Result<(), String> {
    let image = disk.crash_image(seed);
    let q = match Queue::open_on(Medium::Sim(image), None, &cfg()) {
        Ok(q) => q,
        // The disk died while the file was being created, before anything was promised:
        // on a real file this is the corrupt file the agent sets aside (tested in e2e).
        Err(e) if is_corruption(&e) && told.appended.is_empty() && told.committed == 0 => {
            return Ok(());
        }
        Err(e) => return Err(format!("reopen after the crash: {e}")),
    };
    let result = check(&q, told);
    if result.is_ok() {
        let next = q.stats().map_err(|e| e.to_string())?.next_seq;
        let a = q
            .append(vec![line("z", 1)], None)
            .await
            .map_err(|e| format!("append after the crash: {e}"))?;
        if a.first_seq != next {
            return Err(format!(
                "append after the crash got seq {}, not {next}",
                a.first_seq
            ));
        }
    }
    q.close().await;
    result
}

#[test]
fn queue_keeps_every_acknowledged_append_through_seeded_crashes() {
    run_seeds(
        "queue",
        "DATAWEAVER_CRASH_SEED",
        &crash_seeds(2000),
        crash_once,
    );
}

/// Appends until stored, as a source does: a refused append comes back whole and is
/// retried. Fails after 20 s.
async fn append_until_stored(q: &Queue, records: Vec<Record>, cp: Checkpoint) -> (Appended, u32) {
    let start = std::time::Instant::now();
    let (mut records, mut cp, mut refusals) = (records, Some(cp), 0);
    loop {
        match q.append(records, cp).await {
            Ok(a) => return (a, refusals),
            Err(e) => {
                assert!(
                    start.elapsed().as_secs() < 20,
                    "the queue did not recover: {e}"
                );
                refusals += 1;
                let back = e.into_refused().expect("a refused append comes back whole");
                (records, cp) = (back.records, back.checkpoint);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_and_eio_at_chosen_writes_are_refused_then_recovered_without_loss() {
    let disk = SimDisk::new();
    let q = Queue::open_on(Medium::Sim(disk.clone()), None, &cfg()).unwrap();
    let (mut sent, mut refused) = (0u64, 0);
    for round in 0..12u64 {
        // Every third round, the next writes fail: ENOSPC, then EIO.
        if round % 3 == 1 {
            let fault = if round % 2 == 1 {
                Fault::NoSpace
            } else {
                Fault::Io
            };
            disk.fail_next(1 + round % 4, fault);
        }
        let records: Vec<Record> = (sent + 1..=sent + 50).map(|i| line("a", i)).collect();
        let (a, r) = append_until_stored(&q, records, checkpoint("a", sent + 50)).await;
        assert_eq!(a.count, 50);
        refused += r;
        // The queue stays up: the forwarder reads the round once, in order, and the sink
        // acknowledges it (a queue that failed a write holds a lower limit until drained).
        let held: Vec<String> = q
            .read(a.first_seq, usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|(_, r)| String::from_utf8_lossy(&r.payload).into_owned())
            .collect();
        let want: Vec<String> = (sent + 1..=sent + 50).map(|i| format!("a:{i}")).collect();
        assert_eq!(held, want, "round {round}: every record once, in order");
        sent += 50;
        q.ack_from("sink", a.first_seq + 49);
        assert_eq!(
            q.checkpoint("cp:a").unwrap(),
            Some(sent.to_le_bytes().to_vec())
        );
    }
    assert!(refused >= 4, "the faults were hit ({refused} refusals)");
    q.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_until_acks_free_space_and_loses_nothing() {
    let disk = SimDisk::new();
    let cfg = QueueConfig {
        // Only the failed writes tell the queue the disk is full.
        disk_reserve_bytes: 0,
        ..cfg()
    };
    let q = Queue::open_on(Medium::Sim(disk.clone()), None, &cfg).unwrap();
    q.append(vec![line("a", 0)], None).await.unwrap();
    disk.set_capacity(Some(disk.len() + (2 << 20)));
    let big = |i: u64| {
        Record::new(
            "a",
            "t",
            format!("{i}:{}", "x".repeat(32 << 10)).into_bytes(),
        )
    };
    let mut stored = Vec::new();
    let mut full = false;
    for i in 1..=400u64 {
        match q.append(vec![big(i)], None).await {
            Ok(a) => stored.push((a.first_seq, i)),
            Err(e) => {
                assert!(e.into_refused().is_some_and(|r| r.records.len() == 1));
                full = true;
                break;
            }
        }
    }
    assert!(full, "2 MiB of room filled up");
    // The sink acknowledges everything: deletions free pages, and the queue takes
    // records again (the writer's soft limit keeps it well below where it failed).
    let top = stored.last().map_or(1, |s| s.0);
    q.ack_from("sink", top);
    let (a, _) = append_until_stored(&q, vec![big(1000)], checkpoint("a", 1000)).await;
    assert!(a.first_seq > top);
    let held = q.read(1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(held.len(), 1, "only the record after the acks is left");
    q.close().await;
}

/// Found by the seeded crashes: a shutdown that arrived in the same group as appends whose
/// commit failed was taken by the group, and the writer then waited in its recovery for a
/// shutdown that had already come, so stopping the agent hung while storage failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_in_the_group_of_a_failing_commit_does_not_hang() {
    let disk = SimDisk::new();
    let cfg = QueueConfig {
        // The writer waits this long for more of the group: the shutdown joins it.
        commit_linger_ms: 300,
        ..cfg()
    };
    let q = Queue::open_on(Medium::Sim(disk.clone()), None, &cfg).unwrap();
    disk.fail_next(u64::MAX / 2, Fault::Io);
    let appending = {
        let q = q.clone();
        tokio::spawn(async move { q.append(vec![line("a", 1)], None).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), q.close())
        .await
        .expect("the queue closed while its storage was failing");
    assert!(
        appending.await.unwrap().is_err(),
        "the failed append was refused"
    );
}

/// Found in review: the full mark was cleared against the queue's size before the commit's
/// deletions, so an ack that emptied a full queue left it "full", and `/ready` said 503
/// while the agent sat idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_that_empties_a_full_queue_clears_its_full_mark() {
    let q = Queue::open_on(
        Medium::Sim(SimDisk::new()),
        None,
        &QueueConfig {
            max_bytes: 20_000,
            ..cfg()
        },
    )
    .unwrap();
    let mut last = 0;
    for i in 0..100 {
        let r = Record::new("a", "t", vec![b'x'; 1000]);
        match q.append(vec![r], Some(checkpoint("a", i))).await {
            Ok(a) => last = a.first_seq,
            Err(_) => break,
        }
    }
    assert!(q.is_full(), "20 kB of room filled up");
    let mut durable = q.durable_acked();
    q.ack_from("sink", last);
    while *durable.borrow_and_update() < last {
        durable.changed().await.unwrap();
    }
    assert!(!q.is_full(), "empty again after the ack");
    q.close().await;
}

/// A commit whose final sync fails after its writes landed reports failure; the source
/// retries the append whole, as it must. Its records are stored once, not under two seqs
/// (it was so: an MQTT QoS 2 message reached the sink twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landed_commit_that_reported_failure_is_not_stored_twice_when_retried() {
    let disk = SimDisk::new();
    let q = Queue::open_on(Medium::Sim(disk.clone()), None, &cfg()).unwrap();
    let first: Vec<Record> = (1..=10).map(|i| line("a", i)).collect();
    let (a, _) = append_until_stored(&q, first, checkpoint("a", 10)).await;
    assert_eq!((a.first_seq, a.count), (1, 10));
    disk.fail_next_commit_sync(Fault::Io);
    // The source retries a refused append whole; meanwhile the forwarder delivers what the
    // queue holds and the sink acknowledges it (a failed commit lowers the limit).
    let mut delivered: Vec<String> = Vec::new();
    let mut from = 1;
    let (mut records, mut cp) = (
        (11..=20).map(|i| line("a", i)).collect::<Vec<_>>(),
        Some(checkpoint("a", 20)),
    );
    let start = std::time::Instant::now();
    loop {
        for (s, r) in q.read(from, usize::MAX, usize::MAX).unwrap_or_default() {
            delivered.push(String::from_utf8_lossy(&r.payload).into_owned());
            from = s + 1;
            q.ack_from("sink", s);
        }
        match q.append(records, cp).await {
            Ok(_) => break,
            Err(e) => {
                assert!(start.elapsed().as_secs() < 20, "did not recover: {e}");
                let back = e.into_refused().expect("comes back whole");
                (records, cp) = (back.records, back.checkpoint);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    for (_, r) in q.read(from, usize::MAX, usize::MAX).unwrap() {
        delivered.push(String::from_utf8_lossy(&r.payload).into_owned());
    }
    let want: Vec<String> = (1..=20).map(|i| format!("a:{i}")).collect();
    assert_eq!(delivered, want, "every record delivered once");
    q.close().await;
}

/// Found by the 100,000-seed simulation (seed 61418): after a reopen the writer commits the
/// deletions it owes; when that commit failed too, it ignored the failure and sat idle on a
/// database redb had latched failed, so the acks never became durable and every read
/// failed until some other command happened to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_of_owed_deletions_after_a_reopen_is_recovered() {
    let disk = SimDisk::new();
    let q = Queue::open_on(Medium::Sim(disk.clone()), None, &cfg()).unwrap();
    let records: Vec<Record> = (1..=10).map(|i| line("a", i)).collect();
    let (a, _) = append_until_stored(&q, records, checkpoint("a", 10)).await;
    assert_eq!((a.first_seq, a.count), (1, 10));
    // The ack's commit fails; the writer reopens the file (redb's recovery on open makes
    // six header syncs of its own here, which pass); then the commit of the deletions it
    // still owes fails as well.
    let mut plan = vec![Some(Fault::Io)];
    plan.extend([None; 6]);
    plan.push(Some(Fault::Io));
    disk.plan_commit_syncs(&plan);
    q.ack_from("sink", 5);
    let mut durable = q.durable_acked();
    let made = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        durable.wait_for(|d| *d >= 5),
    )
    .await;
    assert!(
        made.is_ok(),
        "the acks became durable without another command (durable at {})",
        *q.durable_acked().borrow()
    );
    assert_eq!(
        disk.planned_commit_syncs(),
        0,
        "both planned failures were reached"
    );
    let left = q.read(6, usize::MAX, usize::MAX).expect("reads work again");
    assert_eq!(
        left.len(),
        5,
        "the unacknowledged records are there to send"
    );
    q.close().await;
}
