//! `plico`: the service binary and its command line.
//!
//! Start-up order matters: first the process is hardened (no core dumps, not dumpable, so key
//! material in memory cannot be read from a core file or by a same-user debugger), then the
//! arguments are parsed, logging is set up, and the subcommand runs. Subcommands live in
//! `cli/`; this file holds only that sequence.

mod cli;

/// mimalloc instead of the system allocator: glibc's malloc was a fifth of a two-thread print
/// run's time (arena contention and consolidation), see `plico-bench mailers`.
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
    quiet_on_closed_stdout();
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

/// Disables core dumps, marks the process non-dumpable and turns transparent huge pages off
/// (see `plico::process`). Returns what could not be done: logging is not set up yet when
/// this runs.
fn harden_process() -> Vec<String> {
    use nix::sys::resource::{setrlimit, Resource};
    let mut problems = Vec::new();
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        problems.push(format!("could not disable core dumps (RLIMIT_CORE): {e}"));
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        problems.push(format!("could not make the process non-dumpable: {e}"));
    }
    problems.extend(plico::process::disable_transparent_huge_pages());
    problems
}

/// The exit status of a command whose reader closed its standard output early (`plico … | head
/// -1`): what a shell reports for a process ended by SIGPIPE (128 + 13).
const CLOSED_STDOUT_EXIT: i32 = 141;

/// Makes a closed standard output end the process quietly, as it ends other Unix tools.
///
/// Rust ignores SIGPIPE, so `println!` to a pipe whose reader has gone panics ("failed printing
/// to stdout: Broken pipe"): exit 101 and a panic message, although whatever the command did
/// (an account created, say) is done. The hook turns exactly that panic into the conventional
/// SIGPIPE status, with no message; every other panic keeps the default report. SIGPIPE itself
/// stays ignored, so a closed socket is an error for the caller, never the death of the server.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(CLOSED_STDOUT_EXIT);
        }
        default(info);
    }));
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
