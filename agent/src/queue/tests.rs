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
    assert_eq!(export(dir.path(), &mut out).unwrap(), 2);
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
            .insert(1, &[CHUNK_VERSION, 0, 4, 0, 0, 0xff, 0xff][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let q = Queue::open(dir.path(), &QueueConfig::default()).unwrap();
    assert!(matches!(
        q.read(1, 10, usize::MAX),
        Err(QueueError::Corrupt { seq: 1, .. })
    ));
    assert_eq!(q.drop_corrupt_chunk(1).unwrap(), 1024);
    let rest = q.read(1, 10, usize::MAX).unwrap();
    assert_eq!(rest[0].0, 1025, "reading resumes after the bad chunk");
    q.close().await;
}
