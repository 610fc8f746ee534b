//! `dataweaver`: the command line over the library. Errors become an exit code here only.

mod cli;
mod install;
mod logs;
mod service;
#[cfg(windows)]
mod service_windows;
mod status;
mod up;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
