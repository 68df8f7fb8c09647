//! `plico`: the service binary and its command line.
//!
//! Start-up order matters: first the process is hardened (no core dumps, not dumpable, so key
//! material in memory cannot be read from a core file or by a same-user debugger), then the
//! arguments are parsed, logging is set up, and the subcommand runs. Subcommands live in
//! `cli/`; this file holds only that sequence.

mod cli;

/// mimalloc instead of the system allocator: glibc's malloc was a fifth of a two-thread print
/// run's time (arena contention and consolidation), see `plico bench mailers`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use plico::config::LogFormat;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let hardening = harden_process();
    let args = cli::Args::parse();
    init_tracing(cli::log_format(&args));
    for problem in hardening {
        tracing::warn!("{problem}; continuing");
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plico: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Disables core dumps and marks the process non-dumpable. Returns what could not be done:
/// logging is not set up yet when this runs.
fn harden_process() -> Vec<String> {
    use nix::sys::resource::{setrlimit, Resource};
    let mut problems = Vec::new();
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        problems.push(format!("could not disable core dumps (RLIMIT_CORE): {e}"));
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        problems.push(format!("could not make the process non-dumpable: {e}"));
    }
    problems
}

/// Logs go to stderr (stdout is for command output), filtered by `RUST_LOG` (default `info`).
fn init_tracing(format: Option<LogFormat>) {
    let filter = EnvFilter::builder()
        .with_default_directive(tracing::Level::INFO.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format.unwrap_or_default() {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
