//! Running the agent or the sink as a long-lived process: stop on SIGTERM / Ctrl-C, reload
//! the config on SIGHUP or the admin endpoint's `POST /reload`.
//!
//! A reload reads and validates the file first; a config with an error is refused (the
//! error is logged, or returned to the HTTP caller) and the running one stays. A valid one
//! stops the running agent or sink the way SIGTERM does (sources commit, the forwarder
//! drains, the queue writer flushes) and starts it again with the new config; the queue,
//! checkpoints and journal carry over. A new `log.level` applies at once; log format and
//! file from the next start.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dataweaver::admin::ReloadFn;
use dataweaver::{agent, config, sink};
use tokio_util::sync::CancellationToken;

/// A reload hook that validates `path` with `load`, keeps the result in `next` and stops
/// the current run through `stop`.
fn reload_hook<C: Send + 'static>(
    path: PathBuf,
    load: fn(&std::path::Path) -> Result<C, config::ConfigError>,
    next: Arc<Mutex<Option<C>>>,
    stop: CancellationToken,
) -> ReloadFn {
    Arc::new(move || {
        let c = load(&path).map_err(|e| e.to_string())?;
        *next.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
        tracing::info!(config = %path.display(), "config reload: new config valid, restarting");
        stop.cancel();
        Ok(())
    })
}

/// Calls `reload` on every SIGHUP (Unix); logs a refused config.
fn on_sighup(reload: ReloadFn) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                if let Err(e) = reload() {
                    tracing::error!(error = %e, "SIGHUP: config refused; keeping the running one");
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = reload;
            std::future::pending::<()>().await;
        }
    })
}

/// Completes on the first of `a` or `b`.
async fn either(a: CancellationToken, b: CancellationToken) {
    tokio::select! {
        _ = a.cancelled() => {}
        _ = b.cancelled() => {}
    }
}

/// The process-wide exit token, cancelled by SIGTERM / Ctrl-C.
fn exit_token() -> CancellationToken {
    let exit = CancellationToken::new();
    let e = exit.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        e.cancel();
    });
    exit
}

/// The config to run next: the reloaded one (its log level applied), unless the process
/// is exiting.
fn take_next<C>(
    next: &Mutex<Option<C>>,
    exit: &CancellationToken,
    log: impl Fn(&C) -> &config::LogConfig,
) -> Option<C> {
    let new = next.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    if exit.is_cancelled() {
        return None;
    }
    crate::logs::apply_level(log(&new).level.as_deref());
    Some(new)
}

/// Runs the agent from `path` until SIGTERM, restarting it on a valid reload.
pub async fn run_agent(path: PathBuf) -> anyhow::Result<()> {
    let mut cfg = config::load_agent(&path)?;
    let exit = exit_token();
    loop {
        let stop = CancellationToken::new();
        let next = Arc::new(Mutex::new(None));
        let reload = reload_hook(path.clone(), config::load_agent, next.clone(), stop.clone());
        let hup = on_sighup(reload.clone());
        agent::run_with(cfg, either(stop, exit.clone()), Some(reload)).await?;
        hup.abort();
        match take_next(&next, &exit, |c| &c.log) {
            Some(c) => cfg = c,
            None => return Ok(()),
        }
    }
}

/// Runs the sink from `path` until SIGTERM, restarting it on a valid reload.
pub async fn run_sink(path: PathBuf) -> anyhow::Result<()> {
    let mut cfg = config::load_sink(&path)?;
    let exit = exit_token();
    loop {
        let stop = CancellationToken::new();
        let next = Arc::new(Mutex::new(None));
        let reload = reload_hook(path.clone(), config::load_sink, next.clone(), stop.clone());
        let hup = on_sighup(reload.clone());
        let mut s = sink::Sink::bind(&cfg)?;
        s.set_reload(reload);
        tracing::info!(addr = %s.local_addr()?, "sink listening");
        let both = CancellationToken::new();
        {
            let (both, stop, exit) = (both.clone(), stop, exit.clone());
            tokio::spawn(async move {
                either(stop, exit).await;
                both.cancel();
            });
        }
        s.run(both).await;
        hup.abort();
        match take_next(&next, &exit, |c| &c.log) {
            Some(c) => cfg = c,
            None => return Ok(()),
        }
    }
}

/// Completes on Ctrl-C, or SIGTERM on Unix (how service managers stop us).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
