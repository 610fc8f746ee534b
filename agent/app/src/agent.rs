//! The agent: sources → transforms → queue → forwarder, started and stopped in order.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AgentView, ReloadFn};
use crate::config::AgentConfig;
use crate::control::agent::Control;
use crate::counters::Counters;
use crate::forward::{ForwardError, ForwardStats, Forwarder, Link};
use crate::pipeline::Stages;
use crate::queue::{Queue, QueueError};
use crate::source::{self, Pipeline};
use crate::transform::Chain;

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The queue could not be opened.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The forwarder could not be set up.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// Loading a transform panicked.
    #[error("loading transforms failed: {0}")]
    Panicked(String),
    /// A transform module was refused.
    #[error(transparent)]
    Transform(#[from] crate::transform::TransformError),
}

/// Runs the agent until `shutdown` completes.
///
/// Stops in pipeline order: sources finish their current append (so every record they
/// consumed is committed), the forwarder waits briefly for outstanding acks and closes its
/// connection, and the queue writer commits what it holds.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    run_with(cfg, shutdown, None).await
}

/// Default address of an agent's admin endpoint.
pub const ADMIN_DEFAULT: ([u8; 4], u16) = ([127, 0, 0, 1], 7410);

/// Raises the soft open-files limit to the hard one: network sources and tailed files each
/// hold a descriptor, and the common soft default (1,024) is far below what the hard limit
/// allows.
fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write only the struct they are given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                let from = lim.rlim_cur;
                lim.rlim_cur = lim.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    tracing::debug!(from, to = lim.rlim_max, "open-files limit raised");
                }
            }
        }
    }
}

/// [`run`], with a config reload hook for the admin endpoint's `POST /reload`.
pub async fn run_with(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
    reload: Option<ReloadFn>,
) -> Result<(), AgentError> {
    let started = std::time::Instant::now();
    raise_open_files_limit();
    let queue = Queue::open(&cfg.data_dir, &cfg.queue)?;
    tracing::info!(queue_id = queue.queue_id(), data_dir = %cfg.data_dir.display(), "queue open");
    let forward_stats = Arc::new(ForwardStats::default());
    // One link to the sinks: the forwarder's data streams and the control stream share its
    // endpoint, TLS configuration, dial and back-off.
    let link = Link::new(&cfg.forward)?;
    let forwarder = Forwarder::new(
        cfg.forward.clone(),
        link.clone(),
        queue.clone(),
        forward_stats.clone(),
    )?;

    let counters = Arc::new(Counters::default());
    let sources_stop = CancellationToken::new();
    let sources = TaskTracker::new();
    let cache = cfg.data_dir.join("transform-cache");
    let mut pipelines = Vec::new();
    let mut managed = Vec::new();
    let mut transforms = Vec::new();
    for p in &cfg.pipelines {
        // Compiling and instantiating run guest code (WASI modules block on files):
        // keep it off the async workers.
        let chain = {
            let (p, cache, counters) = (p.clone(), cache.clone(), counters.clone());
            tokio::task::spawn_blocking(move || {
                Chain::from_config(&p.name, &p.transforms, Some(&cache), counters)
            })
            .await
            .map_err(|e| AgentError::Panicked(e.to_string()))??
        };
        let slots = chain.slots();
        for (settings, slot) in &slots {
            transforms.push((p.name.clone(), settings.name.clone(), slot.clone()));
        }
        managed.push((p.name.clone(), p.transforms.clone(), slots));
        let stages = Stages::new(&p.name, p.when_full, chain, queue.clone(), counters.clone());
        let pipeline = Pipeline::new(&p.name, counters.clone(), stages);
        pipelines.push((p, pipeline));
    }
    // Pushed modules accepted before a restart are offered before any record flows.
    let control = Arc::new(Control::new(
        cfg.control.clone(),
        managed,
        queue.clone(),
        cache.clone(),
    ));
    {
        let c = control.clone();
        tokio::task::spawn_blocking(move || c.restore())
            .await
            .map_err(|e| AgentError::Panicked(e.to_string()))?;
    }
    for (p, pipeline) in pipelines {
        for s in &p.sources {
            tracing::info!(pipeline = %p.name, source = s.name(), "starting source");
            sources.spawn(source::run(
                s.clone(),
                pipeline.clone(),
                sources_stop.clone(),
            ));
        }
    }
    // Compiling modules leaves the compiler's working memory in the allocator's free
    // lists; hand it back, or a first start idles megabytes above a restart.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if cfg.pipelines.iter().any(|p| !p.transforms.is_empty()) {
        // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    let forward_stop = CancellationToken::new();
    let forwarding = tokio::spawn(forwarder.run(forward_stop.clone()));
    let controlling =
        tokio::spawn(control.run(link, cfg.forward.sinks.clone(), forward_stop.clone()));

    let admin_stop = CancellationToken::new();
    let admin = cfg.admin.enabled.then(|| {
        let view = AgentView {
            counters: counters.clone(),
            queue: queue.clone(),
            forward: forward_stats.clone(),
            transforms,
            ready_sink_down: std::time::Duration::from_secs(cfg.admin.ready_sink_down_secs),
            reload,
            started,
        };
        let listen = cfg.admin.listen.unwrap_or_else(|| ADMIN_DEFAULT.into());
        tokio::spawn(crate::admin::serve(
            listen,
            Arc::new(view),
            admin_stop.clone(),
        ))
    });

    // Counters also go to the log every 10 s when they changed.
    let report = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                let line = counters.line();
                if line != last && !line.is_empty() {
                    tracing::info!(counters = %line, "counters");
                    last = line;
                }
            }
        })
    };
    shutdown.await;
    tracing::info!("shutting down: stopping sources");
    sources_stop.cancel();
    sources.close();
    sources.wait().await;
    forward_stop.cancel();
    if tokio::time::timeout(std::time::Duration::from_secs(10), forwarding)
        .await
        .is_err()
    {
        tracing::warn!("forwarder did not stop within 10 s; leaving it");
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), controlling).await;
    admin_stop.cancel();
    if let Some(a) = admin {
        let _ = a.await;
    }
    queue.close().await;
    report.abort();
    tracing::info!(counters = %counters.line(), "agent stopped");
    Ok(())
}
