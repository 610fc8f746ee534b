//! Logging: `tracing` to stderr or a rotating file, human or JSON, and the filter a config
//! reload may change.

use anyhow::Context;
use dataweaver::config;

/// Sets up `tracing`: the filter from `RUST_LOG`, else `--log`/`DATAWEAVER_LOG`, else the
/// config's `log.level`, else `info`; human or JSON lines; stderr or a rotating file. The
/// returned guard flushes the file writer when dropped.
pub fn init(
    cli: Option<&str>,
    cfg: &config::LogConfig,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let chosen = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.is_empty())
        .or_else(|| cli.map(String::from));
    let overridden = chosen.is_some();
    let filter = chosen
        .or_else(|| cfg.level.clone())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard, ansi) = match &cfg.file {
        None => (
            BoxMakeWriter::new(std::io::stderr),
            None,
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
        Some(path) => {
            use tracing_appender::rolling::{Builder, Rotation};
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            let prefix = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "dataweaver.log".into());
            let rotation = match cfg.rotate {
                config::LogRotation::Daily => Rotation::DAILY,
                config::LogRotation::Hourly => Rotation::HOURLY,
                config::LogRotation::Never => Rotation::NEVER,
            };
            let appender = Builder::new()
                .rotation(rotation)
                .filename_prefix(prefix)
                .max_log_files(cfg.keep.max(1))
                .build(dir)
                .with_context(|| format!("log file in {}", dir.display()))?;
            let (nb, guard) = tracing_appender::non_blocking(appender);
            (BoxMakeWriter::new(nb), Some(guard), false)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match cfg.format {
        config::LogFormat::Human => {
            let b = builder.with_ansi(ansi).with_filter_reloading();
            keep_filter_handle(b.reload_handle(), overridden);
            b.init()
        }
        config::LogFormat::Json => {
            let b = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_filter_reloading();
            keep_filter_handle(b.reload_handle(), overridden);
            b.init()
        }
    }
    Ok(guard)
}

/// Sets the log filter; `None` when `RUST_LOG` or `--log` chose it (they win over configs).
type FilterSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: std::sync::OnceLock<Option<FilterSetter>> = std::sync::OnceLock::new();

fn keep_filter_handle<S: 'static>(
    h: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
    overridden: bool,
) {
    let setter: Option<FilterSetter> = (!overridden).then(|| {
        Box::new(move |f: &str| {
            let filter = tracing_subscriber::EnvFilter::try_new(f).map_err(|e| e.to_string())?;
            h.reload(filter).map_err(|e| e.to_string())
        }) as FilterSetter
    });
    let _ = LOG_FILTER.set(setter);
}

/// After a config reload: the new `log.level` takes effect (unless `RUST_LOG` or `--log`
/// set the filter). Format and file stay as they were until the next start.
pub fn apply_level(level: Option<&str>) {
    if let Some(Some(set)) = LOG_FILTER.get() {
        let level = level.unwrap_or("info");
        match set(level) {
            Ok(()) => tracing::info!(%level, "log level from the reloaded config"),
            Err(e) => tracing::warn!(%level, error = %e, "log level not changed"),
        }
    }
}
