//! `plico completions SHELL` and the hidden `plico man --out DIR`: shell completions and man
//! pages generated from the same clap definitions the binary parses with, so they cannot
//! drift from it.
//!
//! The Debian package runs both at package time (`packaging/build-deb.sh`): the built binary
//! writes the man pages and completion files that `[package.metadata.deb]` then ships. `man`
//! is hidden because only packaging needs it; `completions` is for anyone whose shell is not
//! set up by the package (`plico completions zsh > ~/.zfunc/_plico`).

use super::Args;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::PathBuf;

/// Arguments of `plico completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for (bash, zsh, fish, elvish, powershell).
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Arguments of `plico man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages to (plico.1, plico-serve.1, …); created if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Writes the completion script for `args.shell` to stdout.
///
/// # Errors
/// None in practice; kept fallible like every subcommand.
pub fn run_completions(args: CompletionsArgs) -> Result<()> {
    let mut command = Args::command();
    clap_complete::generate(args.shell, &mut command, "plico", &mut std::io::stdout());
    Ok(())
}

/// Writes one man page per command and subcommand into `args.out`.
///
/// # Errors
/// The directory cannot be created or a page cannot be written.
pub fn run_man(args: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    clap_mangen::generate_to(Args::command(), &args.out)
        .with_context(|| format!("cannot write man pages to {}", args.out.display()))?;
    println!("plico: man pages written to {}", args.out.display());
    Ok(())
}
