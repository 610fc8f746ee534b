//! `dataweaver service install|uninstall|start|stop|status`: the agent (or the sink) as a
//! system service: a systemd unit on Linux, a launchd daemon on macOS, a service of the
//! Windows service control manager (see `service_windows.rs`).
//!
//! The unit and the plist are rendered from the templates in `packaging/` (the .deb ships
//! the same unit), so what `install --print` shows is what gets installed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

/// The systemd unit template (`packaging/systemd/dataweaver.service.in`).
pub const SYSTEMD_UNIT: &str = include_str!("../../packaging/systemd/dataweaver.service.in");
/// The launchd plist template (`packaging/launchd/io.dataweaver.plist.in`).
pub const LAUNCHD_PLIST: &str = include_str!("../../packaging/launchd/io.dataweaver.plist.in");

/// Which process the service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The edge agent.
    Agent,
    /// The central sink.
    Sink,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Sink => "sink",
        }
    }

    /// systemd unit / Windows service name.
    pub fn service_name(self) -> String {
        format!("dataweaver-{}", self.as_str())
    }

    fn state_dir(self) -> &'static str {
        match self {
            Kind::Agent => "dataweaver",
            Kind::Sink => "dataweaver-sink",
        }
    }
}

/// What a service runs: the binary, the config, as whom.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Agent or sink.
    pub kind: Kind,
    /// Absolute path of the `dataweaver` binary.
    pub bin: PathBuf,
    /// Absolute path of the config file.
    pub config: PathBuf,
    /// The user it runs as.
    pub user: String,
}

/// Fills a template's `{kind}`, `{bin}`, `{config}`, `{user}`, `{state}` placeholders.
pub fn render(template: &str, s: &Spec) -> String {
    template
        .replace("{kind}", s.kind.as_str())
        .replace("{bin}", &s.bin.display().to_string())
        .replace("{config}", &s.config.display().to_string())
        .replace("{user}", &s.user)
        .replace("{state}", s.kind.state_dir())
}

/// Operating systems with a file-based service definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Os {
    /// systemd.
    Linux,
    /// launchd.
    Macos,
}

impl Os {
    /// The OS this binary runs on.
    pub fn current() -> Os {
        if cfg!(target_os = "macos") {
            Os::Macos
        } else {
            Os::Linux
        }
    }
}

/// The service definition for this OS: `(file it goes to, contents)`.
pub fn definition(s: &Spec) -> (PathBuf, String) {
    definition_for(Os::current(), s)
}

/// The service definition for `os`.
pub fn definition_for(os: Os, s: &Spec) -> (PathBuf, String) {
    if os == Os::Macos {
        (
            PathBuf::from(format!(
                "/Library/LaunchDaemons/io.dataweaver.{}.plist",
                s.kind.as_str()
            )),
            render(LAUNCHD_PLIST, s),
        )
    } else {
        (
            PathBuf::from(format!(
                "/etc/systemd/system/{}.service",
                s.kind.service_name()
            )),
            render(SYSTEMD_UNIT, s),
        )
    }
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .with_context(|| format!("running {cmd}"))?;
    if !st.success() {
        bail!("{cmd} {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// The service actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Write the service definition and enable it (does not start it).
    Install,
    /// Stop, disable and remove it.
    Uninstall,
    /// Start it.
    Start,
    /// Stop it (SIGTERM / service stop: a clean shutdown).
    Stop,
    /// Show its state.
    Status,
    /// Run as the service (what the Windows service manager starts; elsewhere the same
    /// as `dataweaver agent|sink`).
    #[value(hide = true)]
    Run,
}

/// Runs `action` for `kind`; `config` is needed by `install`; `print` only shows the
/// definition `install` would write.
pub fn service(
    action: Action,
    kind: Kind,
    config: Option<&Path>,
    user: &str,
    print: Option<Os>,
) -> anyhow::Result<ExitCode> {
    #[cfg(windows)]
    {
        let _ = print;
        return crate::service_windows::service(action, kind, config, user);
    }
    #[cfg(not(windows))]
    {
        let spec = || -> anyhow::Result<Spec> {
            let config = config.context("--config is needed to install")?;
            let config = std::fs::canonicalize(config)
                .with_context(|| format!("config {}", config.display()))?;
            // Refuse to install a service that would fail at its first start.
            match kind {
                Kind::Agent => {
                    dataweaver::config::load_agent(&config)?;
                }
                Kind::Sink => {
                    dataweaver::config::load_sink(&config)?;
                }
            }
            Ok(Spec {
                kind,
                bin: std::env::current_exe()?.canonicalize()?,
                config,
                user: user.to_string(),
            })
        };
        let name = kind.service_name();
        let label = format!("system/io.dataweaver.{}", kind.as_str());
        let mac = cfg!(target_os = "macos");
        match action {
            Action::Install => {
                if let Some(os) = print {
                    print!("{}", definition_for(os, &spec()?).1);
                    return Ok(ExitCode::SUCCESS);
                }
                let (path, text) = definition(&spec()?);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                if mac {
                    run(
                        "launchctl",
                        &["bootstrap", "system", &path.display().to_string()],
                    )?;
                } else {
                    run("systemctl", &["daemon-reload"])?;
                    run("systemctl", &["enable", &name])?;
                }
                println!(
                    "installed {}; start it with `dataweaver service start`",
                    path.display()
                );
            }
            Action::Uninstall => {
                let (path, _) = definition(&Spec {
                    kind,
                    bin: PathBuf::new(),
                    config: PathBuf::new(),
                    user: String::new(),
                });
                if mac {
                    let _ = run("launchctl", &["bootout", &label]);
                } else {
                    let _ = run("systemctl", &["disable", "--now", &name]);
                }
                if path.exists() {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                }
                if !mac {
                    run("systemctl", &["daemon-reload"])?;
                }
                println!("removed {}", path.display());
            }
            Action::Start if mac => run("launchctl", &["kickstart", &label])?,
            Action::Start => run("systemctl", &["start", &name])?,
            Action::Stop if mac => run("launchctl", &["kill", "SIGTERM", &label])?,
            Action::Stop => run("systemctl", &["stop", &name])?,
            Action::Status if mac => run("launchctl", &["print", &label])?,
            Action::Status => run("systemctl", &["status", "--no-pager", &name])?,
            Action::Run => {
                let config = config.context("--config is needed")?.to_path_buf();
                let rt = tokio::runtime::Runtime::new()?;
                match kind {
                    Kind::Agent => rt.block_on(crate::service::run_agent(config))?,
                    Kind::Sink => rt.block_on(crate::service::run_sink(config))?,
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
