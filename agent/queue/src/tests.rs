use super::*;

fn rec(i: usize) -> Record {
    Record::new("t/s", "t", format!("line {i}").into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_ack_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig::default();
    let q = Queue::open(dir.path(), &cfg).unwrap();
    let id = q.queue_id().to_string();
    let a = q
        .append(
            (0..3000).map(rec).collect(),
            Some(Checkpoint {
                key: "k".into(),
                value: vec![7],
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        a,
        Appended {
            first_seq: 1,
            count: 3000,
            dropped: 0
        }
    );
    let got = q.read(1500, 10_000, usize::MAX).unwrap();
    assert_eq!(got.len(), 1501);
    assert_eq!(got[0].0, 1500);
    assert_eq!(got[0].1.payload, b"line 1499");
    q.ack(2048);
    // The ack is applied with the next commit.
    q.append(vec![rec(3000)], None).await.unwrap();
    let st = q.stats().unwrap();
    assert_eq!(st.depth, 3001 - 2048);
    q.close().await;
    drop(q);
    let q = Queue::open(dir.path(), &cfg).unwrap();
    assert_eq!(q.queue_id(), id, "queue id survives reopen");
    assert_eq!(q.checkpoint("k").unwrap(), Some(vec![7]));
    let first = q.read(0, 1, usize::MAX).unwrap();
    // Chunk [1..=1024] and [1025..=2048] were fully acked and deleted; 2049.. remain.
    assert_eq!(first[0].0, 2049);
    let b = q.append(vec![rec(1)], None).await.unwrap();
    assert_eq!(b.first_seq, 3002, "seqs continue after reopen");
    q.close().await;
}

fn small(max_bytes: u64) -> QueueConfig {
    QueueConfig {
        max_bytes,
        ..QueueConfig::default()
    }
}

fn batch(from: usize, n: usize) -> Vec<Record> {
    (from..from + n)
        .map(|i| Record::new("t/s", "t", vec![b'x'; 200 + i % 3]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_refuses_and_hands_records_back() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), &small(50_000)).unwrap();
    let mut stored = 0;
    let refused = loop {
        match q
            .append_with(batch(stored, 50), Vec::new(), None, WhenFull::Block)
            .await
        {
            Ok(a) => stored += a.count,
            Err(QueueError::Full(r)) => break r.records,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(refused.len(), 50, "the refused records come back whole");
    assert!(stored > 0 && stored < 300, "stored {stored}");
    // Acknowledging frees room, and the same records are then accepted.
    q.ack(stored as u64);
    q.append(Vec::new(), None).await.unwrap();
    let a = q
        .append_with(refused, Vec::new(), None, WhenFull::Block)
        .await
        .unwrap();
    assert_eq!(a.count, 50);
    q.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_policies_count_exactly_what_they_drop() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), &small(50_000)).unwrap();
    let (mut stored, mut dropped) = (0, 0);
    for i in 0..20 {
        let a = q
            .append_with(batch(i * 50, 50), Vec::new(), None, WhenFull::DropNewest)
            .await
            .unwrap();
        stored += a.count;
        dropped += a.dropped;
    }
    assert_eq!(stored + dropped, 1000);
    assert!(dropped > 0);
    let st = q.stats().unwrap();
    assert_eq!(st.dropped_newest, dropped as u64);
    assert_eq!(st.depth, stored as u64);

    // drop_oldest: new records always land; the oldest unsent ones make room, counted.
    for i in 0..20 {
        let a = q
            .append_with(batch(i * 50, 50), Vec::new(), None, WhenFull::DropOldest)
            .await
            .unwrap();
        assert_eq!(a.count, 50);
    }
    let st = q.stats().unwrap();
    assert!(st.bytes <= 50_000 + 20_000, "bytes {}", st.bytes);
    assert_eq!(st.depth + st.dropped_oldest, stored as u64 + 1000, "{st:?}");
    // The survivors are the newest records.
    let first = q.read(0, 1, usize::MAX).unwrap()[0].0;
    assert!(
        first > stored as u64,
        "oldest records should be gone, first is {first}"
    );
    q.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_stored_with_reason_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), &QueueConfig::default()).unwrap();
    let dl = DeadLetter {
        ts_ns: 1,
        pipeline: "p".into(),
        reason: "invalid JSON: eof".into(),
        record: rec(7),
    };
    q.append_with(vec![rec(1)], vec![dl], None, WhenFull::Block)
        .await
        .unwrap();
    assert_eq!(q.stats().unwrap().dead_letters, 1);
    q.close().await;
    drop(q);
    let mut out = Vec::new();
    assert_eq!(export(Some(dir.path()), None, &mut out).unwrap().records, 2);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("\"payload\":\"line 1\"") && text.contains("invalid JSON: eof"),
        "{text}"
    );
    let report = check(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_file_is_set_aside_and_a_fresh_queue_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), vec![0xA5u8; 64 * 1024]).unwrap();
    let report = check(dir.path()).unwrap();
    assert!(!report.problems.is_empty(), "garbage must be reported");
    let q = Queue::open(dir.path(), &QueueConfig::default()).unwrap();
    let a = q.append(vec![rec(1)], None).await.unwrap();
    assert_eq!(a.first_seq, 1);
    q.close().await;
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept for inspection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_is_dropped_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), &QueueConfig::default()).unwrap();
    q.append((0..2048).map(rec).collect(), None).await.unwrap(); // chunks at 1 and 1025
    q.close().await;
    drop(q);
    {
        let d = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = d.begin_write().unwrap();
        txn.open_table(CHUNKS)
            .unwrap()
            .insert(1, &[chunk::V1, 0, 4, 0, 0, 0xff, 0xff][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let q = Queue::open(dir.path(), &QueueConfig::default()).unwrap();
    assert!(matches!(
        q.read(1, 10, usize::MAX),
        Err(QueueError::Corrupt { seq: 1, .. })
    ));
    let lost = tokio::task::block_in_place(|| q.drop_corrupt_chunk(1)).unwrap();
    assert_eq!(lost, 1024);
    assert_eq!(q.stats().unwrap().corrupt_dropped, 1024);
    let rest = q.read(1, 10, usize::MAX).unwrap();
    assert_eq!(rest[0].0, 1025, "reading resumes after the bad chunk");
    q.close().await;
}

/// Appends records `*offered..*offered + n` under `drop_newest`; returns where they began.
async fn offer(q: &Queue, offered: &mut usize, n: usize) -> (usize, Appended) {
    let from = *offered;
    *offered += n;
    let a = q
        .append_with(batch(from, n), Vec::new(), None, WhenFull::DropNewest)
        .await
        .unwrap();
    assert_eq!(a.count + a.dropped, n);
    (from, a)
}

/// Issue 12, defect 7: under `drop_newest` a large append was refused whole and later
/// small ones squeezed into the room left, so the kept records had holes. Now a pipeline
/// keeps the part of an append that fits, then drops everything until the queue is below
/// its low-water mark: what is kept is one contiguous prefix plus what came after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_keeps_a_contiguous_prefix_without_holes() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), &small(50_000)).unwrap();
    let (mut kept, mut offered, mut dropped) = (Vec::new(), 0, 0);
    // Single records alternate with large appends, well past max_bytes.
    for i in 0..40 {
        let (from, a) = offer(&q, &mut offered, if i % 2 == 0 { 1 } else { 37 }).await;
        kept.extend(from..from + a.count);
        dropped += a.dropped;
    }
    let k = kept.len();
    assert!(k > 0 && dropped > 0, "kept {k}, dropped {dropped}");
    assert_eq!(kept, (0..k).collect::<Vec<_>>(), "one contiguous prefix");
    // Room for a record or two is not enough to take records again: the low-water mark is.
    q.ack(1);
    q.append(Vec::new(), None).await.unwrap();
    let (_, a) = offer(&q, &mut offered, 1).await;
    assert_eq!(a.count, 0, "still dropping above the low-water mark");
    dropped += 1;
    // The sink takes everything: the queue empties and records are kept again.
    q.ack(q.last_committed());
    q.append(Vec::new(), None).await.unwrap();
    let resumed = offered;
    for i in 0..6 {
        let (from, a) = offer(&q, &mut offered, if i % 2 == 0 { 37 } else { 1 }).await;
        kept.extend(from..from + a.count);
        dropped += a.dropped;
    }
    assert_eq!(
        kept[k..],
        (resumed..offered).collect::<Vec<_>>(),
        "all kept after recovery"
    );
    assert_eq!(q.stats().unwrap().dropped_newest, dropped as u64);
    q.close().await;
}

/// Rewrites the stored chunk at `first` with `f`.
fn patch_chunk(dir: &Path, first: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let d = Database::create(dir.join(FILE_NAME)).unwrap();
    let txn = d.begin_write().unwrap();
    {
        let mut t = txn.open_table(CHUNKS).unwrap();
        let mut v = t.get(first).unwrap().unwrap().value().to_vec();
        f(&mut v);
        t.insert(first, v.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// Issue 12, defect 11 (unit): a chunk whose bytes were altered fails its checksum on read;
/// its unsent records go to the dead-letter table with the reason, none is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_failing_its_checksum_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), &QueueConfig::default()).unwrap();
    q.append((0..10).map(rec).collect(), None).await.unwrap();
    q.close().await;
    drop(q);
    patch_chunk(dir.path(), 1, |v| {
        let at = v.windows(6).position(|w| w == b"line 5").unwrap();
        v[at + 5] = b'6'; // still valid CBOR: only the checksum can tell
    });
    let q = Queue::open(dir.path(), &QueueConfig::default()).unwrap();
    q.ack(2); // records 1 and 2 were delivered before the byte flipped
    match q.read(1, 100, usize::MAX) {
        Err(QueueError::Corrupt { seq: 1, message }) => assert!(message.contains("checksum")),
        other => panic!("expected a checksum failure, got {other:?}"),
    }
    let lost = tokio::task::block_in_place(|| q.drop_corrupt_chunk(1)).unwrap();
    assert_eq!(lost, 0, "the records still decode: dead-lettered, not lost");
    let st = q.stats().unwrap();
    assert_eq!((st.dead_letters, st.corrupt_dead, st.bytes), (8, 8, 0));
    assert!(q.read(1, 100, usize::MAX).unwrap().is_empty());
    q.close().await;
    drop(q);
    let mut out = Vec::new();
    export(Some(dir.path()), None, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("checksum mismatch").count(), 8, "{text}");
}

/// A version 1 file (chunks without a checksum) is still read, and upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_files_are_read_and_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let d = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = d.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format_version", &1u64.to_le_bytes()[..])
                .unwrap();
            meta.insert("next_seq", &3u64.to_le_bytes()[..]).unwrap();
            meta.insert("queue_id", &b"old"[..]).unwrap();
            let mut v = vec![chunk::V1, 2, 0, 0, 0];
            ciborium::into_writer(&vec![rec(0), rec(1)], &mut v).unwrap();
            txn.open_table(CHUNKS)
                .unwrap()
                .insert(1, v.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let q = Queue::open(dir.path(), &QueueConfig::default()).unwrap();
    assert_eq!(q.queue_id(), "old");
    let got = q.read(1, 10, usize::MAX).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].1.payload, b"line 1");
    assert_eq!(q.append(vec![rec(2)], None).await.unwrap().first_seq, 3);
    assert_eq!(q.read(1, 10, usize::MAX).unwrap().len(), 3);
    q.close().await;
    drop(q);
    let report = check(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.records, 3);
}

/// Found by the simulation (seed 10): a chunk is deleted only once all of it is acked, and
/// on reopen the ack mark was taken from the first chunk left, so the acked part of a
/// chunk came back as unacked. The agent then resent it, possibly to another sink than the
/// one recorded as its owner, and both sinks output it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_mark_inside_a_chunk_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        commit_max_records: 16,
        ..QueueConfig::default()
    };
    let q = Queue::open(dir.path(), &cfg).unwrap();
    q.append((0..16).map(rec).collect(), None).await.unwrap();
    q.ack_from("journal-a", 5);
    let mut durable = q.durable_acked();
    durable.wait_for(|d| *d >= 5).await.unwrap();
    q.close().await;
    drop(q);
    let q = Queue::open(dir.path(), &cfg).unwrap();
    assert_eq!(q.acked(), 5, "the ack mark inside the chunk is kept");
    assert_eq!(q.owner_mark("journal-a").unwrap(), 5);
    assert_eq!(q.stats().unwrap().depth, 11);
    q.close().await;
}

/// The sizes of the stored chunks, in order.
fn chunk_sizes(q: &Queue) -> Vec<(u64, usize)> {
    q.shared
        .with_db(|d| {
            let txn = d.begin_read().map_err(db)?;
            let t = txn.open_table(CHUNKS).map_err(db)?;
            let mut out = Vec::new();
            for e in t.iter().map_err(db)? {
                let (k, v) = e.map_err(db)?;
                out.push((k.value(), v.value().len()));
            }
            Ok(out)
        })
        .unwrap()
}

fn sized(i: usize) -> Record {
    Record::new("t/s", "t", vec![b'x'; 250 + i % 7])
}

/// A queue in `dir` holding 3,000 [`sized`] records (about 750 KiB: several chunks).
async fn sized_queue(dir: &std::path::Path) -> Queue {
    let q = Queue::open(dir, &QueueConfig::default()).unwrap();
    q.append((0..3000).map(sized).collect(), None)
        .await
        .unwrap();
    q
}

/// Found by tracing the queue's I/O under `cargo bench --bench pipeline -- --only e2e`:
/// chunks were cut at 1 MiB, so 1,024 records of 256 B made a chunk just over 256 KiB,
/// which redb keeps on a 512 KiB page and writes and reads whole (half of it padding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_stops_short_of_a_power_of_two_page() {
    let dir = tempfile::tempdir().unwrap();
    let q = sized_queue(dir.path()).await;
    let sizes = chunk_sizes(&q);
    assert!(
        sizes.len() >= 4,
        "3,000 records of 256 B span chunks: {sizes:?}"
    );
    for (first, len) in &sizes {
        assert!(
            *len <= 252 << 10,
            "chunk {first} is {len} bytes: past the 256 KiB page"
        );
    }
    // Full chunks are full: they stop only when the next record does not fit.
    for (first, len) in &sizes[..sizes.len() - 1] {
        assert!(
            *len > (252 << 10) - 300,
            "chunk {first} is only {len} bytes"
        );
    }
    // Every record is there, once, in order.
    let got = q.read(1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(got.len(), 3000);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (s, r))| *s == i as u64 + 1 && r.payload.len() == 250 + i % 7)
    );
    q.close().await;
}

/// Found with the chunk above: a batch cut inside a chunk made the next batch read and
/// check that chunk again. Chunks after a batch's first go in whole, and a batch never
/// holds more than `max_bytes` of records unless its one record is larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_later_chunks_whole_and_stays_within_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let q = sized_queue(dir.path()).await;
    let starts: Vec<u64> = chunk_sizes(&q).iter().map(|c| c.0).collect();
    let read = |from: u64, max_bytes: usize| {
        let (mut n, mut bytes) = (0usize, 0usize);
        let last = q
            .read_encoded(from, 2048, max_bytes, |_, r| {
                n += 1;
                bytes += r.len();
            })
            .unwrap();
        (last, n, bytes)
    };
    // From the start of a chunk: two whole chunks fit 504 KiB.
    let (last, _, bytes) = read(1, 504 << 10);
    assert!(bytes <= 504 << 10);
    assert_eq!(last, Some(starts[2] - 1), "two whole chunks");
    // From inside a chunk: the rest of it, then only whole chunks.
    let from = starts[1] - 10;
    let (last, n, bytes) = read(from, 504 << 10);
    assert!(bytes <= 504 << 10);
    assert_eq!(
        last,
        Some(starts[2] - 1),
        "the rest of the first, then one whole chunk"
    );
    assert_eq!(n as u64, starts[2] - from);
    // A small limit cuts inside a chunk, never past the limit.
    let (last, n, bytes) = read(1, 10_000);
    assert!(bytes <= 10_000 && n > 1, "{n} records, {bytes} bytes");
    assert_eq!(last, Some(n as u64));
    // One record larger than the limit still goes, alone.
    let (last, n, _) = read(5, 10);
    assert_eq!((last, n), (Some(5), 1));
    q.close().await;
}

/// Found while tracing the queue's I/O: `stats` added up the size of every stored chunk,
/// reading the whole queue, and the agent's `/metrics` and `/ready` call it on every
/// scrape and probe, so a queue that had grown during a sink outage was read through
/// again and again, just when it was large. The size is the writer's count now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_do_not_read_every_chunk() {
    let disk = dataweaver_store::SimDisk::new();
    let q = Queue::open_on(
        dataweaver_store::Medium::Sim(disk.clone()),
        None,
        &QueueConfig::default(),
    )
    .unwrap();
    // 8 MiB of records: four times redb's cache.
    for i in 0..8 {
        q.append((i * 4000..(i + 1) * 4000).map(sized).collect(), None)
            .await
            .unwrap();
    }
    let before = disk.read_bytes();
    let st = q.stats().unwrap();
    let read = disk.read_bytes() - before;
    assert_eq!(st.depth, 32_000);
    assert_eq!(
        st.bytes,
        chunk_sizes(&q).iter().map(|c| c.1 as u64).sum::<u64>()
    );
    // The first chunk (for the oldest record's age) and a few pages of the tree.
    assert!(read <= 1 << 20, "stats read {read} bytes of an 8 MiB queue");
    q.close().await;
}
