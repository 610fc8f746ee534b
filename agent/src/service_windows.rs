//! The Windows service: installation through the service control manager and the
//! service's own entry point (`dataweaver service run`, which the SCM starts).
//!
//! Compiled only on Windows (`cfg(windows)`); the project's Linux CI cannot build it (no
//! Windows target there), so it follows the `windows-service` crate's own examples.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use crate::install::{Action, Kind};

/// What the dispatched service runs (set before the dispatcher starts).
static RUN: OnceLock<(Kind, PathBuf)> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Runs `action` through the service control manager.
pub fn service(
    action: Action,
    kind: Kind,
    config: Option<&Path>,
    _user: &str,
) -> anyhow::Result<ExitCode> {
    let name = kind.service_name();
    let access = ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE;
    let manager = ServiceManager::local_computer(None::<&str>, access)?;
    match action {
        Action::Install => {
            let config = std::fs::canonicalize(config.context("--config is needed to install")?)?;
            let kind_arg = match kind {
                Kind::Agent => "agent",
                Kind::Sink => "sink",
            };
            let info = ServiceInfo {
                name: OsString::from(&name),
                display_name: OsString::from(format!("DataWeaver {kind_arg}")),
                service_type: ServiceType::OWN_PROCESS,
                start_type: ServiceStartType::AutoStart,
                error_control: ServiceErrorControl::Normal,
                executable_path: std::env::current_exe()?,
                launch_arguments: vec![
                    "service".into(),
                    "run".into(),
                    "--kind".into(),
                    kind_arg.into(),
                    "--config".into(),
                    config.into_os_string(),
                ],
                dependencies: vec![],
                account_name: None,
                account_password: None,
            };
            let svc = manager
                .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)?;
            svc.set_description("DataWeaver: collect, transform, queue durably, forward")?;
            // Restart on failure, like systemd's Restart=on-failure.
            svc.update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
                reboot_msg: None,
                command: None,
                actions: Some(vec![
                    ServiceAction {
                        action_type: ServiceActionType::Restart,
                        delay: Duration::from_secs(2),
                    };
                    3
                ]),
            })?;
            println!("installed service {name}; start it with `dataweaver service start`");
        }
        Action::Uninstall => {
            let svc = manager.open_service(&name, ServiceAccess::STOP | ServiceAccess::DELETE)?;
            let _ = svc.stop();
            svc.delete()?;
            println!("removed service {name}");
        }
        Action::Start => {
            let svc = manager.open_service(&name, ServiceAccess::START)?;
            svc.start::<&str>(&[])?;
        }
        Action::Stop => {
            let svc = manager.open_service(&name, ServiceAccess::STOP)?;
            svc.stop()?;
        }
        Action::Status => {
            let svc = manager.open_service(&name, ServiceAccess::QUERY_STATUS)?;
            println!("{name}: {:?}", svc.query_status()?.current_state);
        }
        Action::Run => {
            let config = config.context("--config is needed")?.to_path_buf();
            let _ = RUN.set((kind, config));
            service_dispatcher::start(&name, ffi_service_main)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = run_service() {
        tracing::error!(error = %e, "service failed");
    }
}

fn run_service() -> anyhow::Result<()> {
    let (kind, config) = RUN
        .get()
        .cloned()
        .context("service started without its arguments")?;
    let stop = CancellationToken::new();
    let on_stop = stop.clone();
    let handler = move |event| match event {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            on_stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status = service_control_handler::register(kind.service_name(), handler)?;
    let report = |state, accept, code| {
        status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accept,
            exit_code: ServiceExitCode::Win32(code),
            checkpoint: 0,
            wait_hint: Duration::from_secs(30),
            process_id: None,
        })
    };
    report(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        0,
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    // A service stop is a clean shutdown, as SIGTERM is on Unix.
    let result = rt.block_on(async {
        match kind {
            Kind::Agent => {
                let cfg = dataweaver::config::load_agent(&config)?;
                dataweaver::agent::run(cfg, stop.cancelled()).await?;
            }
            Kind::Sink => {
                let cfg = dataweaver::config::load_sink(&config)?;
                let sink = dataweaver::sink::Sink::bind(&cfg)?;
                sink.run(stop.clone()).await;
            }
        }
        anyhow::Ok(())
    });
    report(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        u32::from(result.is_err()),
    )?;
    result
}
