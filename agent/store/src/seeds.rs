//! Seeded test runs shared by the crash-consistency tests and the simulation: which seeds
//! to run (from environment variables) and a runner that names the seed of a failure.

/// Seeds to run: `DATAWEAVER_CRASH_SEED` (one), else `DATAWEAVER_CRASH_SEEDS` (that many
/// from 0), else `default`.
pub fn crash_seeds(default: u64) -> Vec<u64> {
    seeds("DATAWEAVER_CRASH_SEED", "DATAWEAVER_CRASH_SEEDS", default)
}

/// Seeds to run: the one in env var `one`, else what `many` says (`N`: that many from 0;
/// `A..B`: from A up to B, so a long run can be split over sittings), else `default`.
pub fn seeds(one: &str, many: &str, default: u64) -> Vec<u64> {
    if let Some(one) = std::env::var(one).ok().and_then(|v| v.parse().ok()) {
        return vec![one];
    }
    let many = std::env::var(many).unwrap_or_default();
    if let Some((a, b)) = many.split_once("..")
        && let (Ok(a), Ok(b)) = (a.trim().parse(), b.trim().parse())
    {
        return (a..b).collect();
    }
    (0..many.trim().parse().unwrap_or(default)).collect()
}

/// Seeds between progress lines: a long on-demand run says how far it got.
const PROGRESS_EVERY: usize = 10_000;

/// Runs `one` for every seed on two threads (a runtime each), panicking with the seed of
/// the first failure. `one` says whether the disk died before its workload ended; most
/// seeds must, or the test would check nothing.
pub fn run_seeds<F, Fut>(what: &str, replay: &str, seeds: &[u64], one: F)
where
    F: Fn(u64) -> Fut + Sync,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let failed = std::sync::Mutex::new(None);
    let crashed = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for half in seeds.chunks(seeds.len().div_ceil(2).max(1)) {
            let (one, failed, crashed, done) = (&one, &failed, &crashed, &done);
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                for &seed in half {
                    match rt.block_on(one(seed)) {
                        Ok(c) => {
                            crashed.fetch_add(usize::from(c), std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(why) => {
                            failed.lock().unwrap().get_or_insert((seed, why));
                            return;
                        }
                    }
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n % PROGRESS_EVERY == 0 {
                        eprintln!(
                            "{what}: {n} of {} seeds passed, {:.0} s",
                            seeds.len(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                    if failed.lock().unwrap().is_some() {
                        return;
                    }
                }
            });
        }
    });
    if let Some((seed, why)) = failed.into_inner().unwrap() {
        panic!("{what}: seed {seed}: {why} (replay it with {replay}={seed})");
    }
    let crashed = crashed.into_inner();
    eprintln!(
        "{what}: {} seeds, {crashed} crashed mid-run, every invariant held",
        seeds.len()
    );
    assert!(
        crashed * 3 >= seeds.len() * 2 || seeds.len() < 10,
        "{what}: only {crashed} of {} seeds crashed before their workload ended",
        seeds.len()
    );
}
