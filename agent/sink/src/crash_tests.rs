//! Crash consistency of the sink's journal and its drain to the outputs, in-process, on a
//! [`SimDisk`]: two agents submit batches (some resent over what is held), confirm what
//! they recorded as acked, and the drainer moves confirmed entries to an output, until
//! the disk dies at a seeded operation. After the crash the journal is reopened on what
//! the disk kept, the output recovers to its committed position (as the JSONL output
//! truncates to it), the agents resolve and resend what was not acked, and at the end
//! every seq is output exactly once, in order. Seeds as in the queue's crash tests
//! (`DATAWEAVER_CRASH_SEEDS`, `DATAWEAVER_CRASH_SEED`).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use super::journal::tests::encode;
use super::journal::{Journal, JournalOptions, Outcome};
use super::output::Output;
use super::{drain_round, read_positions, recover_outputs};
use dataweaver_store::seeds::{crash_seeds, run_seeds};
use dataweaver_store::{Fault, Medium, SimDisk};
use dataweaver_wire::{Resolve, scan_batch};

const AGENTS: [&str; 2] = ["a", "b"];

/// An output that keeps what it was given, one `T` per record (made by `line`), durable at
/// once (a JSONL output syncs before the drainer commits), and on restart truncates to its
/// committed position. Shared with the simulation (`crate::sim`).
pub(crate) struct SimOutput<T> {
    pub(crate) lines: Arc<Mutex<Vec<T>>>,
    pub(crate) committed: usize,
    pub(crate) line: fn(&super::journal::Entry, &dataweaver_wire::RecordView<'_>) -> T,
}

impl<T: Send> Output for SimOutput<T> {
    fn name(&self) -> String {
        "sim".into()
    }

    fn write(&mut self, entries: &[(u64, super::journal::Entry)]) -> std::io::Result<()> {
        let mut lines = self
            .lines
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        for (_, e) in entries {
            lines.extend(e.records().map(|r| (self.line)(e, &r)));
        }
        Ok(())
    }

    fn position(&self) -> Vec<u8> {
        let n = self.lines.lock().map_or(0, |l| l.len());
        (n as u64).to_le_bytes().to_vec()
    }

    fn committed(&mut self) {
        self.committed = self.lines.lock().map_or(0, |l| l.len());
    }

    fn rollback(&mut self) -> std::io::Result<()> {
        if let Ok(mut l) = self.lines.lock() {
            l.truncate(self.committed);
        }
        Ok(())
    }

    fn restore(&mut self, committed: &[u8]) -> std::io::Result<()> {
        self.committed = position(committed);
        self.rollback()
    }
}

pub(crate) fn position(v: &[u8]) -> usize {
    let mut b = [0u8; 8];
    b[..v.len().min(8)].copy_from_slice(&v[..v.len().min(8)]);
    u64::from_le_bytes(b) as usize
}

async fn submit(j: &Journal, agent: &str, from: u64, to: u64) -> Result<Outcome, String> {
    let b = encode(from, to);
    let info = scan_batch(&b).map_err(|e| format!("scan: {e:?}"))?;
    j.submit(agent, "q", b, &info, 0)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|_| "journal closed".to_string())?
        .map_err(|e| e.to_string())
}

async fn resolve(j: &Journal, agent: &str, confirm_upto: u64) -> Result<u64, String> {
    let r = Resolve {
        confirm_upto,
        ..Default::default()
    };
    j.resolve(agent, "q", &r).await.map_err(|r| r.reason)
}

/// The agents' side: what they sent, what they were told is stored, what they confirmed.
#[derive(Debug, Default, Clone)]
struct Agents {
    sent: [u64; 2],
    acked: [u64; 2],
    confirmed: [u64; 2],
}

fn output(lines: &Arc<Mutex<Vec<(String, u64)>>>) -> Vec<Box<dyn Output>> {
    let committed = lines.lock().map_or(0, |l| l.len());
    vec![Box::new(SimOutput {
        lines: lines.clone(),
        committed,
        line: |e, r| (e.agent_id.clone(), r.seq),
    })]
}

/// Runs the seeded workload until the disk dies or it ends. In one seed of four, a few
/// operations fail with EIO on the way: the sink goes through its recovery (the writer
/// reopens the file, the drainer puts the outputs where the journal says), and the agents
/// resend what was not acked, as they do after their stream ends.
async fn workload(
    j: &Journal,
    disk: &SimDisk,
    seed: u64,
    lines: &Arc<Mutex<Vec<(String, u64)>>>,
) -> Agents {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ag = Agents::default();
    let mut next = [1u64; 2];
    let mut outputs = output(lines);
    let quarantined = AtomicU64::new(0);
    let faulty = seed.is_multiple_of(4);
    // The drainer's recovery waits for the journal to reopen: on a dead disk, never.
    let stop = tokio_util::sync::CancellationToken::new();
    let watchdog = {
        let (disk, stop) = (disk.clone(), stop.clone());
        tokio::spawn(async move {
            while !disk.crashed() {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            stop.cancel();
        })
    };
    for a in AGENTS {
        if resolve(j, a, 0).await.is_err() {
            watchdog.abort();
            return ag;
        }
    }
    for _ in 0..rng.usize(10..40) {
        let x = rng.usize(0..2);
        match rng.u8(0..11) {
            0..=4 => {
                // Mostly new seqs; sometimes a resend that overlaps what was acked.
                let from = if rng.u8(0..4) == 0 {
                    ag.acked[x].saturating_sub(rng.u64(0..5)) + 1
                } else {
                    next[x]
                };
                let to = from + rng.u64(0..30);
                ag.sent[x] = ag.sent[x].max(to);
                next[x] = next[x].max(to + 1);
                match submit(j, AGENTS[x], from, to).await {
                    Ok(Outcome::Stored(upto)) => ag.acked[x] = ag.acked[x].max(upto),
                    Ok(Outcome::Rejected(why)) => panic!("a valid batch was rejected: {why}"),
                    Err(_) if disk.crashed() => break,
                    // The stream ends; the agent resends from what was acked.
                    Err(_) => next[x] = ag.acked[x] + 1,
                }
            }
            5..=6 => {
                if ag.acked[x] > ag.confirmed[x] {
                    let upto = rng.u64(ag.confirmed[x] + 1..=ag.acked[x]);
                    if j.confirm(AGENTS[x], "q", upto).await.is_err() {
                        break;
                    }
                    ag.confirmed[x] = upto;
                }
            }
            7..=9 => {
                if let Err(e) = drain_round(j, &mut outputs, &quarantined)
                    && (disk.crashed() || !recover_outputs(j, &mut outputs, &e, &stop).await)
                {
                    break;
                }
            }
            _ => {
                if faulty {
                    disk.fail_next(rng.u64(1..4), Fault::Io);
                }
            }
        }
        if disk.crashed() {
            break;
        }
    }
    watchdog.abort();
    ag
}

/// After the crash: reopen, recover the output, let the agents resolve and resend, drain
/// everything, and check.
async fn recover_and_check(
    disk: &SimDisk,
    seed: u64,
    ag: &Agents,
    lines: &Arc<Mutex<Vec<(String, u64)>>>,
) -> Result<(), String> {
    let j = match Journal::open_on(
        Medium::Sim(disk.crash_image(seed)),
        JournalOptions::default(),
    ) {
        Ok(j) => j,
        // The disk died while the file was being created, before anything was acked: on a
        // real file this is the corrupt file the sink sets aside.
        Err(e) if ag.acked == [0, 0] => {
            tracing::debug!(error = %e, "crashed while creating the journal");
            return Ok(());
        }
        Err(e) => return Err(format!("reopen after the crash: {e}")),
    };
    let position = read_positions(&j)
        .map_err(|e| format!("positions: {e}"))?
        .into_iter()
        .find(|(k, _)| k == "sim")
        .map_or(0, |(_, v)| position(&v));
    {
        let mut l = lines.lock().map_err(|_| "poisoned")?;
        if position > l.len() {
            return Err(format!(
                "the journal's cursor is at {position}, the output holds only {}",
                l.len()
            ));
        }
        l.truncate(position);
    }
    let mut outputs = output(lines);
    let quarantined = AtomicU64::new(0);
    for (x, a) in AGENTS.iter().enumerate() {
        let hwm = resolve(&j, a, ag.confirmed[x]).await?;
        if hwm < ag.acked[x] {
            return Err(format!(
                "{a}: acked up to {}, the journal holds up to {hwm}",
                ag.acked[x]
            ));
        }
        // The agent resends everything it was not told is stored (it still has it).
        let top = ag.sent[x];
        if top > ag.acked[x] {
            match submit(&j, a, ag.acked[x] + 1, top).await? {
                Outcome::Stored(upto) if upto == top => {}
                other => return Err(format!("{a}: resend answered {other:?}")),
            }
        }
        j.confirm(a, "q", top).await.map_err(|e| e.to_string())?;
    }
    // The confirms are applied by the writer in order; a resolve is answered after them.
    for a in AGENTS {
        resolve(&j, a, 0).await?;
    }
    while drain_round(&j, &mut outputs, &quarantined).map_err(|e| format!("drain: {e}"))? > 0 {}
    let got = lines.lock().map_err(|_| "poisoned")?.clone();
    for (x, a) in AGENTS.iter().enumerate() {
        let mine: Vec<u64> = got
            .iter()
            .filter(|(g, _)| g == a)
            .map(|(_, s)| *s)
            .collect();
        let want: Vec<u64> = (1..=ag.sent[x]).collect();
        if mine != want {
            return Err(format!(
                "{a}: output {} seqs (first differences: {:?}), want 1..={}",
                mine.len(),
                mine.iter().zip(&want).find(|(m, w)| m != w),
                ag.sent[x]
            ));
        }
    }
    Ok(())
}

async fn crash_once(seed: u64) -> Result<bool, String> {
    let probe = SimDisk::new();
    {
        let j = Journal::open_on(Medium::Sim(probe.clone()), JournalOptions::default())
            .map_err(|e| format!("probe open: {e}"))?;
        workload(&j, &probe, seed, &Arc::default()).await;
    }
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15);
    let disk = SimDisk::new();
    disk.crash_at(rng.u64(1..=probe.ops().max(1)));
    let lines = Arc::default();
    let ag = match Journal::open_on(Medium::Sim(disk.clone()), JournalOptions::default()) {
        Ok(j) => workload(&j, &disk, seed, &lines).await,
        Err(_) => Agents::default(),
    };
    recover_and_check(&disk, seed, &ag, &lines).await?;
    Ok(disk.crashed())
}

#[test]
fn journal_and_outputs_keep_exactly_once_through_seeded_crashes() {
    run_seeds(
        "journal",
        "DATAWEAVER_CRASH_SEED",
        &crash_seeds(2000),
        crash_once,
    );
}

/// Found by the seeded crashes: a batch that reached the journal's writer in the same group
/// as the drainer's request to reopen the file waited, unanswered, until the file reopened;
/// on a disk that stays broken its stream hung for ever instead of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_the_group_of_a_reopen_is_refused_while_storage_fails() {
    for round in 0..20 {
        let disk = SimDisk::new();
        let j = Journal::open_on(Medium::Sim(disk.clone()), JournalOptions::default()).unwrap();
        resolve(&j, "a", 0).await.unwrap();
        disk.fail_next(u64::MAX / 2, Fault::Io);
        let b = encode(1, 3);
        let info = scan_batch(&b).unwrap();
        // Back to back, so the writer usually takes both in one group.
        j.reopen().await;
        let answer = j.submit("a", "q", b, &info, 0).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), answer)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the batch was not answered"));
        assert!(
            matches!(got, Ok(Err(_))),
            "round {round}: refused, not stored: {got:?}"
        );
    }
}

/// Found by the seeded crashes: when the drainer's commit reported a failure although its
/// writes had reached the file (the sync failed), the outputs were rolled back to the
/// position before the round while the reopened journal held the round as committed, its
/// entries deleted: the round was lost. Now the outputs go to the position read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_commit_that_failed_but_landed_keeps_its_round() {
    async fn setup(disk: &SimDisk) -> Journal {
        let j = Journal::open_on(Medium::Sim(disk.clone()), JournalOptions::default()).unwrap();
        resolve(&j, "a", 0).await.unwrap();
        assert_eq!(submit(&j, "a", 1, 10).await, Ok(Outcome::Stored(10)));
        j.confirm("a", "q", 10).await.unwrap();
        resolve(&j, "a", 10).await.unwrap(); // the confirm is committed
        j
    }
    let quarantined = AtomicU64::new(0);
    let disk = SimDisk::new();
    let j = setup(&disk).await;
    // The drain round's commit: every write in place, header included; then its sync fails.
    disk.fail_next_commit_sync(Fault::Io);
    let lines: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut outputs = output(&lines);
    let e = drain_round(&j, &mut outputs, &quarantined).expect_err("the commit's sync fails");
    let stop = tokio_util::sync::CancellationToken::new();
    assert!(recover_outputs(&j, &mut outputs, &e, &stop).await);
    while j.reopens() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let landed = read_positions(&j)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "sim")
        .map(|(_, v)| position(&v));
    assert_eq!(
        landed,
        Some(10),
        "the failed commit landed (else this tests nothing)"
    );
    // Drain the rest as `drain` does: retry after a failure, until nothing is left.
    for _ in 0..1000 {
        match drain_round(&j, &mut outputs, &quarantined) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert!(recover_outputs(&j, &mut outputs, &e, &stop).await);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
    let seqs: Vec<u64> = lines.lock().unwrap().iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<_>>(),
        "the round is output once"
    );
}
