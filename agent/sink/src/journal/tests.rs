use super::*;

/// `Journal::resolve` for an agent that does not tell its process (no fork check).
async fn resolve_t(j: &Journal, agent: &str, queue: &str, c: u64, d: u64) -> Result<u64, String> {
    let r = dataweaver_wire::Resolve {
        confirm_upto: c,
        delivered_upto: d,
        ..Default::default()
    };
    j.resolve(agent, queue, &r).await.map_err(|r| r.reason)
}
use dataweaver_wire::{Header, scan_batch};

/// An encoded batch of seqs `from..=to`, payloads `r<seq>`.
pub(crate) fn encode(from: u64, to: u64) -> bytes::Bytes {
    encode_payloads(from, to, |seq| format!("r{seq}").into_bytes())
}

/// An encoded batch of seqs `from..=to` with the payloads `payload` gives.
fn encode_payloads(from: u64, to: u64, payload: impl Fn(u64) -> Vec<u8>) -> bytes::Bytes {
    let records: Vec<Record> = (from..=to)
        .map(|seq| Record {
            seq,
            payload: payload(seq).into(),
            ..Default::default()
        })
        .collect();
    Batch {
        batch_id: 1,
        records,
        from_seq: from,
    }
    .encode_to_vec()
    .into()
}

async fn try_put(j: &Journal, agent: &str, from: u64, to: u64) -> Result<Outcome, Refused> {
    submit_q(j, agent, encode(from, to)).await
}

/// Submits `batch` to queue `q` of `agent` and waits for the outcome.
async fn submit_q(j: &Journal, agent: &str, batch: bytes::Bytes) -> Result<Outcome, Refused> {
    let info = scan_batch(&batch).unwrap();
    j.submit(agent, "q", batch, &info, 0)
        .await
        .unwrap()
        .await
        .unwrap()
}

/// Issue 12, defect 3 (the journal's part): a restarted agent process (it inherited
/// every seq the sink holds) is accepted; a copy of the data directory that did not
/// inherit them is refused as forked, and batches from a process that another one
/// took over from are refused. A process that does not tell its instance is not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_queue_is_refused_as_forked_and_a_restart_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let resolve = |instance: u64, inherited_upto: u64| dataweaver_wire::Resolve {
        instance,
        inherited_upto,
        ..Default::default()
    };
    let submit = |from: u64, to: u64, instance: u64| {
        let j = j.clone();
        async move {
            let batch = encode(from, to);
            let info = scan_batch(&batch).unwrap();
            j.submit("a", "q", batch, &info, instance)
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    assert_eq!(j.resolve("a", "q", &resolve(1, 0)).await, Ok(0));
    assert_eq!(submit(1, 10, 1).await, Ok(Outcome::Stored(10)));
    // Process 2 restarted from the file that held seq 10: a successor.
    assert_eq!(j.resolve("a", "q", &resolve(2, 10)).await, Ok(10));
    assert!(
        submit(11, 12, 1).await.is_err(),
        "the old process's stream is taken over"
    );
    assert_eq!(submit(11, 20, 2).await, Ok(Outcome::Stored(20)));
    // Process 3 runs from a copy taken at seq 10: the sink holds 20 it never had.
    let refused = j.resolve("a", "q", &resolve(3, 10)).await.unwrap_err();
    assert_eq!(
        refused.code,
        dataweaver_wire::REFUSED_FORKED,
        "{}",
        refused.reason
    );
    // Process 2 goes on; the instance survives a reopen of the file.
    drop(j);
    let j = reopen(|| Journal::open(dir.path())).await;
    assert_eq!(j.resolve("a", "q", &resolve(2, 10)).await, Ok(20));
    let refused = j.resolve("a", "q", &resolve(3, 10)).await.unwrap_err();
    assert_eq!(refused.code, dataweaver_wire::REFUSED_FORKED);
    assert_eq!(
        resolve_t(&j, "a", "q", 0, 0).await,
        Ok(20),
        "unchecked: instance 0"
    );
}

/// Opens the journal again once the last handle's writer thread has let go of the file.
async fn reopen(open: impl Fn() -> Result<Journal, JournalError>) -> Journal {
    let mut reopened = open();
    for _ in 0..100 {
        if reopened.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        reopened = open();
    }
    reopened.unwrap()
}

/// A journal in `dir` where agents `a` and `b` resolved queue `q` from nothing.
async fn two_agents(dir: &Path) -> Journal {
    let j = Journal::open(dir).unwrap();
    resolve_t(&j, "a", "q", 0, 0).await.unwrap();
    resolve_t(&j, "b", "q", 0, 0).await.unwrap();
    j
}

async fn put(j: &Journal, agent: &str, from: u64, to: u64) {
    try_put(j, agent, from, to).await.unwrap();
}

fn drainable_seqs(j: &Journal) -> Vec<u64> {
    j.read_drainable(usize::MAX)
        .unwrap()
        .entries
        .into_iter()
        .flat_map(|(_, e)| e.records().map(|r| r.seq).collect::<Vec<_>>())
        .collect()
}

/// Acks lost in a failover: the journal holds 1..=10, the agent recorded only 1..=4 as
/// acked here and delivered 5..=8 through another sink. Resolve keeps 1..=4 (ours,
/// drainable), discards 5..=8, keeps 9..=10 unconfirmed (the agent still has them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_discards_what_went_elsewhere_and_outputs_only_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let j = two_agents(dir.path()).await;
    put(&j, "a", 1, 6).await;
    put(&j, "a", 7, 10).await;
    assert!(
        drainable_seqs(&j).is_empty(),
        "nothing is output before the agent confirms"
    );
    let hwm = resolve_t(&j, "a", "q", 4, 8).await.unwrap();
    assert_eq!(hwm, 10, "9 and 10 are still held here");
    assert_eq!(drainable_seqs(&j), vec![1, 2, 3, 4]);
    // Seqs 5..=8 are gone for good: a confirm up to 10 outputs only 9 and 10 more.
    j.confirm("a", "q", 10).await.unwrap();
    put(&j, "b", 1, 1).await; // flush the writer
    assert_eq!(drainable_seqs(&j), vec![1, 2, 3, 4, 9, 10]);
}

/// A resent batch that overlaps what is held is journaled as received, its duplicate
/// head only marked; the outputs see every seq once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_resend_outputs_each_seq_once() {
    let dir = tempfile::tempdir().unwrap();
    let j = two_agents(dir.path()).await;
    put(&j, "a", 1, 6).await;
    put(&j, "a", 4, 8).await;
    put(&j, "a", 2, 5).await; // entirely old: not journaled at all
    j.confirm("a", "q", 8).await.unwrap();
    put(&j, "b", 1, 1).await; // flush the writer
    assert_eq!(drainable_seqs(&j), vec![1, 2, 3, 4, 5, 6, 7, 8]);
}

/// The drain takes a batch journaled by this process from memory, once; read again (a
/// round that failed) or after a reopen, the same records come from the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_batches_come_from_memory_once_then_from_the_file_alike() {
    let dir = tempfile::tempdir().unwrap();
    let j = two_agents(dir.path()).await;
    for (from, to) in [(1, 3), (4, 8)] {
        put(&j, "a", from, to).await;
    }
    j.confirm("a", "q", 8).await.unwrap();
    put(&j, "b", 1, 1).await; // flush the writer
    assert_eq!(j.store.recent.len(), 3);
    let from_memory = drainable_seqs(&j);
    assert_eq!(from_memory, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        j.store.recent.len(),
        1,
        "b's entry is not confirmed: not taken"
    );
    assert_eq!(drainable_seqs(&j), from_memory, "read from the file");
    drop(j);
    let j = reopen(|| Journal::open(dir.path())).await;
    assert_eq!(j.store.recent.len(), 0);
    assert_eq!(drainable_seqs(&j), from_memory);
}

/// Issue 12, defect 2: after a failed commit (a full disk) the next batch of the same
/// stream committed, the high-water mark jumped over the missing seqs, and the resend
/// was acked as a duplicate: the agent deleted records the sink never had. Now a batch
/// that does not follow on from what the journal holds is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_leaves_no_gap_in_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    resolve_t(&j, "a", "q", 0, 0).await.unwrap();
    j.fail_next_commit();
    assert!(try_put(&j, "a", 1, 3).await.is_err(), "the commit failed");
    // Wait out the writer's reopen (it refuses everything meanwhile).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let later = loop {
        match try_put(&j, "a", 4, 6).await {
            Err(Refused::Unavailable(e))
                if e.contains("failing") && std::time::Instant::now() < until =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => break other,
        }
    };
    let refused = later.expect_err("4..=6 would leave 1..=3 missing");
    assert!(matches!(refused, Refused::Gap { .. }), "{refused}");
    // The resend from the agent's ack mark is stored, not taken for a duplicate.
    assert_eq!(try_put(&j, "a", 1, 3).await, Ok(Outcome::Stored(3)));
    assert_eq!(try_put(&j, "a", 4, 6).await, Ok(Outcome::Stored(6)));
    j.confirm("a", "q", 6).await.unwrap();
    assert_eq!(resolve_t(&j, "a", "q", 6, 6).await, Ok(6));
    assert_eq!(drainable_seqs(&j), vec![1, 2, 3, 4, 5, 6]);
}

/// Issue 12, defect 1: an entry that does not decode (stored before batches were
/// checked, or a flipped bit) stopped the drain for every agent and made every
/// `Resolve` naming it fail. Now it is quarantined and the rest goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_journal_entry_is_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    resolve_t(&j, "a", "q", 0, 0).await.unwrap();
    resolve_t(&j, "bad", "q", 0, 0).await.unwrap();
    // A record whose `source` is not UTF-8, as a v1 sink journaled it unchecked.
    let mut rec = Vec::new();
    prost::encoding::uint64::encode(1, &1u64, &mut rec);
    prost::encoding::bytes::encode(3, &vec![0xffu8, 0xfe], &mut rec);
    let mut batch = Vec::new();
    prost::encoding::bytes::encode(2, &rec, &mut batch);
    let entry = JournalEntry {
        agent_id: "bad".into(),
        queue_id: "q".into(),
        last_seq: 1,
        batch: batch.into(),
        skip_upto: 0,
    }
    .encode_to_vec();
    j.with_db(|d| {
        let txn = d.begin_write().map_err(db)?;
        {
            let mut t = txn.open_table(JOURNAL).map_err(db)?;
            t.insert(1000, entry.as_slice()).map_err(db)?;
            t.insert(1001, &[0xff, 0xff, 0xff][..]).map_err(db)?;
        }
        txn.commit().map_err(db)
    })
    .unwrap();
    // They are in the file when it opens.
    drop(j);
    let j = reopen(|| Journal::open(dir.path())).await;
    put(&j, "a", 1, 2).await;
    j.confirm("a", "q", 2).await.unwrap();
    // Resolve scans the entries of (bad, q) and must not fail on them.
    assert_eq!(resolve_t(&j, "bad", "q", 1, 0).await, Ok(1));
    let round = j.read_drainable(usize::MAX).unwrap();
    let seqs: Vec<u64> = round
        .entries
        .iter()
        .flat_map(|(_, e)| e.records().map(|r| r.seq))
        .collect();
    assert_eq!(seqs, vec![1, 2], "the good agent's records drain");
    j.with_db(|d| {
        let txn = d.begin_write().map_err(db)?;
        quarantine_entries(&txn, &round.bad)?;
        txn.commit().map_err(db)
    })
    .unwrap();
    assert_eq!(j.quarantined().unwrap(), 2);
    assert!(j.read_drainable(usize::MAX).unwrap().bad.is_empty());
}

/// Issue 12, defect 1: an invalid batch is not stored; the mark moves over it (so the
/// agent's next batch follows on), it is noted in the quarantine, and a resend of it is
/// rejected again rather than acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batch_is_rejected_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    resolve_t(&j, "a", "q", 0, 0).await.unwrap();
    let mut bad = Batch {
        batch_id: 1,
        records: vec![Record {
            seq: 1,
            headers: vec![Header {
                name: "h".into(),
                value: "v".into(),
            }],
            ..Default::default()
        }],
        from_seq: 1,
    }
    .encode_to_vec();
    // Turn the header value's `v` into a byte that is not UTF-8.
    let at = bad.iter().rposition(|b| *b == b'v').unwrap();
    bad[at] = 0xff;
    let bad = bytes::Bytes::from(bad);
    let info = scan_batch(&bad).unwrap();
    assert!(info.invalid.is_some());
    for _ in 0..2 {
        let out = j
            .submit("a", "q", bad.clone(), &info, 0)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(out, Ok(Outcome::Rejected(_))), "{out:?}");
    }
    put(&j, "a", 2, 3).await;
    j.confirm("a", "q", 3).await.unwrap();
    assert_eq!(resolve_t(&j, "a", "q", 3, 3).await, Ok(3));
    assert_eq!(drainable_seqs(&j), vec![2, 3]);
    assert_eq!(j.quarantined().unwrap(), 1);
}

/// The quarantine grew by a row (up to 64 KiB) per rejected batch without bound, so
/// one agent sending invalid batches could fill the sink's disk for everyone. It keeps
/// the newest [`QUARANTINE_MAX_ROWS`]; ids go on rising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_of_rejected_batches_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    resolve_t(&j, "a", "q", 0, 0).await.unwrap();
    let n = QUARANTINE_MAX_ROWS + 10;
    for seq in 1..=n {
        let mut bad = Batch {
            batch_id: seq,
            records: vec![Record {
                seq,
                source: "mark!".into(),
                ..Default::default()
            }],
            from_seq: seq,
        }
        .encode_to_vec();
        // The source's first byte becomes one that is not UTF-8.
        let at = bad.windows(5).position(|w| w == b"mark!").unwrap();
        bad[at] = 0xff;
        let bad = bytes::Bytes::from(bad);
        let info = scan_batch(&bad).unwrap();
        assert!(info.invalid.is_some());
        let out = j
            .submit("a", "q", bad, &info, 0)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(out, Ok(Outcome::Rejected(_))), "{out:?}");
    }
    assert_eq!(j.quarantined().unwrap(), QUARANTINE_MAX_ROWS);
    let newest = j
        .store
        .with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let q = txn.open_table(QUARANTINE).map_err(db)?;
            let first = q.first().map_err(db)?.map(|(k, _)| k.value());
            let last = q.last().map_err(db)?.map(|(k, _)| k.value());
            Ok((first, last))
        })
        .unwrap();
    assert_eq!(newest, (Some(11), Some(n)), "the oldest rows went");
}

/// Issue 12, defect 17: marks were keyed `"{agent}/{queue}"`, so agent `edge-1/x` with
/// queue `q` and agent `edge-1` with queue `x/q` shared one mark. Keys are tuples now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_in_agent_name_does_not_share_marks() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    resolve_t(&j, "edge-1/x", "q", 0, 0).await.unwrap();
    let batch = encode(1, 50);
    let info = scan_batch(&batch).unwrap();
    j.submit("edge-1/x", "q", batch, &info, 0)
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resolve_t(&j, "edge-1", "x/q", 0, 0).await, Ok(0));
    assert_eq!(resolve_t(&j, "edge-1/x", "q", 0, 0).await, Ok(50));
}

/// Issue 12, defect 17: a version-1 journal (string keys) is migrated on open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_journal_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let d = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = d.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format_version", 1).unwrap();
            meta.insert("journal_id", 0xabcd).unwrap();
            let mut h = txn.open_table(V1_HWM).unwrap();
            h.insert("edge-1/0123abcd", 40).unwrap();
            h.insert("edge-2/ffff", 7).unwrap();
            let mut c = txn.open_table(V1_CONFIRMED).unwrap();
            c.insert("edge-1/0123abcd", 30).unwrap();
        }
        txn.commit().unwrap();
    }
    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(j.id(), format!("{:016x}", 0xabcd));
    j.with_db(|d| {
        let txn = d.begin_read().map_err(db)?;
        let m = txn.open_table(MARKS).map_err(db)?;
        assert_eq!(
            m.get(("edge-1", "0123abcd")).unwrap().unwrap().value(),
            (40, 30)
        );
        assert_eq!(m.get(("edge-2", "ffff")).unwrap().unwrap().value(), (7, 0));
        let meta = txn.open_table(META).map_err(db)?;
        assert_eq!(meta.get("format_version").unwrap().unwrap().value(), 2);
        assert!(txn.open_table(V1_HWM).is_err(), "the v1 tables are gone");
        Ok(())
    })
    .unwrap();
    // The confirmed mark carried over: nothing up to 30 is taken again.
    assert_eq!(resolve_t(&j, "edge-1", "0123abcd", 0, 0).await, Ok(30));
}

/// Issue 12, defect 16: queue ids per agent are capped; a settled one makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_ids_per_agent_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open_with(
        dir.path(),
        JournalOptions {
            max_queues_per_agent: 3,
            ..JournalOptions::default()
        },
    )
    .unwrap();
    resolve_t(&j, "a", "q", 0, 0).await.unwrap();
    put(&j, "a", 1, 5).await; // unconfirmed: q is not settled
    for q in ["q1", "q2"] {
        resolve_t(&j, "a", q, 0, 0).await.unwrap();
    }
    // q1 and q2 hold nothing: settled, so a fourth id evicts one of them.
    resolve_t(&j, "a", "q3", 0, 0).await.unwrap();
    resolve_t(&j, "a", "q4", 0, 0).await.unwrap();
    // Now give every held id something unconfirmed: nothing can make room.
    let held: Vec<String> = j
        .with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let m = txn.open_table(MARKS).map_err(db)?;
            let mut v = Vec::new();
            for e in m.iter().map_err(db)? {
                let (k, _) = e.map_err(db)?;
                v.push(k.value().1.to_string());
            }
            Ok(v)
        })
        .unwrap();
    assert_eq!(held.len(), 3, "{held:?}");
    for q in held.iter().filter(|q| *q != "q") {
        let batch = encode(1, 1);
        let info = scan_batch(&batch).unwrap();
        j.submit("a", q, batch, &info, 0)
            .await
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    }
    let refused = resolve_t(&j, "a", "q5", 0, 0).await.unwrap_err();
    assert!(refused.contains("max_queues_per_agent"), "{refused}");
    // Another agent is not affected.
    assert_eq!(resolve_t(&j, "b", "q5", 0, 0).await, Ok(0));
}

/// Issue 12, defect 12: a journal whose bytes were altered failed (or panicked) at
/// open, and the sink refused to start forever. Now it is set aside, what decodes is
/// salvaged, and the sink starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_journal_is_set_aside_and_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(dir.path()).unwrap();
        resolve_t(&j, "a", "q", 0, 0).await.unwrap();
        for n in 0..50 {
            put(&j, "a", n * 10 + 1, n * 10 + 10).await;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let path = dir.path().join(FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for off in [4096usize, len / 2, len - 4096] {
        if let Some(b) = bytes.get_mut(off..off + 64) {
            b.iter_mut().for_each(|x| *x ^= 0x5a);
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let j = Journal::open(dir.path()).expect("a corrupt journal must not stop the sink");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside");
    // It serves: a resolve and a batch go through.
    let hwm = resolve_t(&j, "a", "q", 0, 0).await.unwrap();
    let out = try_put(&j, "a", hwm + 1, hwm + 5).await;
    assert_eq!(out, Ok(Outcome::Stored(hwm + 5)));
}

/// After a reopen the drainer asked for (its own commit failed), the journal stayed
/// `failing` until some agent's command committed: the sink's `/ready` said unready, and
/// a sink taken out of rotation for it got no traffic to clear it. The writer now commits
/// once after the reopen, so `failing` clears as soon as the disk takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_clears_after_a_reopen_the_drainer_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    resolve_t(&j, "a", "q", 0, 0).await.unwrap();
    j.reopen().await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while j.reopens() == 0 || j.failing() {
        assert!(
            std::time::Instant::now() < until,
            "still failing after the reopen (reopens {})",
            j.reopens()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Seqs `from..=to` of `agent`'s queue `q`, payloads of `size` bytes.
async fn put_sized(
    j: &Journal,
    agent: &str,
    from: u64,
    to: u64,
    size: usize,
) -> Result<Outcome, Refused> {
    submit_q(j, agent, encode_payloads(from, to, |_| vec![b'x'; size])).await
}

/// Every drain round and every `Resolve` read the whole journal, skipping entries that
/// wait for their agent's confirmation (an entry's header is read with its whole page):
/// an agent that sent batches and never confirmed them made every other agent's delivery
/// slower. Now a round reads only what it outputs, and a `Resolve` only its own queue's
/// entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_confirms_does_not_make_others_read_its_entries() {
    let disk = dataweaver_store::SimDisk::new();
    let j = Journal::open_on(Medium::Sim(disk.clone()), JournalOptions::default()).unwrap();
    resolve_t(&j, "silent", "q", 0, 0).await.unwrap();
    // 24 MiB unconfirmed: three times the journal's cache.
    for n in 0..60 {
        let out = put_sized(&j, "silent", n * 100 + 1, n * 100 + 100, 4000).await;
        assert_eq!(out, Ok(Outcome::Stored(n * 100 + 100)));
    }
    resolve_t(&j, "good", "q", 0, 0).await.unwrap();
    put(&j, "good", 1, 10).await;
    j.confirm_durable("good", "q", 10).await.unwrap();
    let before = disk.read_bytes();
    let round = j.read_drainable(usize::MAX).unwrap();
    assert_eq!(round.entries.len(), 1, "only the confirmed entry");
    let read = disk.read_bytes() - before;
    assert!(read < 2 << 20, "a drain round read {read} bytes");
    let before = disk.read_bytes();
    assert_eq!(resolve_t(&j, "good", "q", 10, 0).await, Ok(10));
    let read = disk.read_bytes() - before;
    assert!(read < 2 << 20, "a resolve read {read} bytes");
    // The silent agent's entries are still there, and drain once it confirms.
    assert_eq!(resolve_t(&j, "silent", "q", 6000, 0).await, Ok(6000));
    let seqs: Vec<u64> = j
        .read_drainable(usize::MAX)
        .unwrap()
        .entries
        .iter()
        .filter(|(_, e)| e.agent_id == "silent")
        .flat_map(|(_, e)| e.records().map(|r| r.seq))
        .collect();
    assert_eq!(seqs, (1..=6000).collect::<Vec<_>>());
}

/// Resolves `agent`'s queue `q` and sends it batches of 100 records of 4,000 B (400 KB),
/// confirming each if `confirm`, until one is refused: the last seq stored, and why.
async fn fill_until_refused(j: &Journal, agent: &str, confirm: bool) -> (u64, Refused) {
    resolve_t(j, agent, "q", 0, 0).await.unwrap();
    let mut last = 0;
    loop {
        match put_sized(j, agent, last + 1, last + 100, 4000).await {
            Ok(Outcome::Stored(l)) => last = l,
            Ok(other) => panic!("{other:?}"),
            Err(r) => return (last, r),
        }
        if confirm {
            j.confirm_durable(agent, "q", last).await.unwrap();
        }
        assert!(last <= 1000, "never refused");
    }
}

/// Nothing bounded what one agent could hold journaled and unconfirmed: one that never
/// confirmed filled the sink's disk, and then the journal's commits failed for every agent.
/// Now its batches are refused once it holds its share; other agents go on, and it is
/// taken again once it confirms, also after the journal is reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_confirms_is_refused_once_it_holds_its_share() {
    let disk = dataweaver_store::SimDisk::new();
    let opts = JournalOptions {
        max_unconfirmed_bytes_per_queue: 2 << 20,
        ..JournalOptions::default()
    };
    let j = Journal::open_on(Medium::Sim(disk.clone()), opts).unwrap();
    resolve_t(&j, "good", "q", 0, 0).await.unwrap();
    let (last, refused) = fill_until_refused(&j, "silent", false).await;
    assert_eq!(last, 500);
    assert!(
        matches!(&refused, Refused::Unconfirmed(r) if r.contains("max_unconfirmed_bytes_per_queue")),
        "{refused:?}"
    );
    // Nor is another queue of the same agent (a queue id it left may hold unconfirmed
    // entries for good).
    let batch = encode_payloads(1, 100, |_| vec![b'x'; 4000]);
    let info = scan_batch(&batch).unwrap();
    resolve_t(&j, "silent", "q2", 0, 0).await.unwrap();
    let other_queue = j.submit("silent", "q2", batch, &info, 0).await.unwrap();
    assert_eq!(other_queue.await.unwrap(), Ok(Outcome::Stored(100)));
    // Another agent is not affected, whether it confirms or not.
    for n in 0..5 {
        let out = put_sized(&j, "good", n * 100 + 1, n * 100 + 100, 4000).await;
        assert_eq!(out, Ok(Outcome::Stored(n * 100 + 100)));
        j.confirm_durable("good", "q", n * 100 + 100).await.unwrap();
    }
    // Confirming makes room.
    j.confirm_durable("silent", "q", 100).await.unwrap();
    assert_eq!(
        put_sized(&j, "silent", 501, 600, 4000).await,
        Ok(Outcome::Stored(600))
    );
    assert!(put_sized(&j, "silent", 601, 700, 4000).await.is_err());
    // What it holds is counted again from the file after a reopen.
    drop(j);
    let j = reopen(|| Journal::open_on(Medium::Sim(disk.clone()), opts)).await;
    assert_eq!(resolve_t(&j, "silent", "q", 0, 0).await, Ok(600));
    assert!(
        matches!(
            put_sized(&j, "silent", 601, 700, 4000).await,
            Err(Refused::Unconfirmed(_))
        ),
        "still over its share after the reopen"
    );
    // A new stream's Resolve confirms, and the agent goes on.
    assert_eq!(resolve_t(&j, "silent", "q", 600, 0).await, Ok(600));
    assert_eq!(
        put_sized(&j, "silent", 601, 700, 4000).await,
        Ok(Outcome::Stored(700))
    );
    let drained: usize = j
        .read_drainable(usize::MAX)
        .unwrap()
        .entries
        .iter()
        .map(|(_, e)| e.len())
        .sum();
    assert_eq!(
        drained,
        600 + 500,
        "silent's 600 and good's 500 confirmed records"
    );
}

/// While the outputs were behind, nothing bounded what one agent could hold in the
/// journal: one that sent (and confirmed) without pause filled the disk, and every agent's
/// batches were refused with it. Now it is refused once it holds its share; another agent
/// goes on, and it is taken again once the outputs have drained its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_cannot_take_the_whole_journal_while_the_outputs_are_behind() {
    let disk = dataweaver_store::SimDisk::new();
    let opts = JournalOptions {
        max_journal_bytes_per_agent: 2 << 20,
        ..JournalOptions::default()
    };
    let j = Journal::open_on(Medium::Sim(disk.clone()), opts).unwrap();
    resolve_t(&j, "other", "q", 0, 0).await.unwrap();
    let (last, refused) = fill_until_refused(&j, "flood", true).await;
    assert_eq!(last, 500, "five 400 KB batches fit 2 MiB");
    assert!(
        matches!(&refused, Refused::Share(r) if r.contains("max_journal_bytes_per_agent")),
        "{refused:?}"
    );
    assert_eq!(
        put_sized(&j, "other", 1, 100, 4000).await,
        Ok(Outcome::Stored(100)),
        "another agent is not refused"
    );
    // The outputs catch up: the drained entries no longer count.
    let round = j.read_drainable(1 << 20).unwrap();
    let keys: Vec<u64> = round.entries.iter().map(|(k, _)| *k).collect();
    assert!(!keys.is_empty());
    j.with_db(|d| {
        let txn = d.begin_write().map_err(db)?;
        delete_entries(&txn, &keys)?;
        txn.commit().map_err(db)
    })
    .unwrap();
    j.drained(keys);
    assert_eq!(
        put_sized(&j, "flood", 501, 600, 4000).await,
        Ok(Outcome::Stored(600))
    );
}
