//! `plico registry import FILE`: the CMS's client for `POST /v1/registry`.
//!
//! The holder registry file (CSV or JSON lines, `docs/formats.md`) is streamed from disk to
//! the server, with a progress bar on stderr, like a batch upload. The answer comes once the
//! file is applied (all or nothing); the command prints what changed, or the problems of a
//! rejected file (line, field and what is wrong: never a value of the file) and exits 1.

use super::client::{AuthArgs, Client, Payload, ServerArgs};
use super::import::{file_body, progress_bar};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use plico::api::registry::RegistryAnswer;
use reqwest::StatusCode;
use std::path::PathBuf;

/// Arguments of `plico registry`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(subcommand)]
    command: RegistryCommand,
}

/// The `registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Upload a holder registry file (CSV or JSON lines); applied all or nothing (cms token).
    Import {
        /// The registry file: holders and their cards (see docs/formats.md).
        file: PathBuf,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `plico registry …`.
pub fn run(args: RegistryArgs) -> Result<()> {
    match &args.command {
        RegistryCommand::Import { file, json } => import(&args, file, *json),
    }
}

fn import(args: &RegistryArgs, path: &PathBuf, json: bool) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    let size = meta.len();
    let client = Client::with_token(&args.server, &args.auth)?;
    let bar = progress_bar(size);
    let body = file_body(path, bar.clone())?;
    let runtime = super::unseal::client_runtime()?;
    let sent = runtime.block_on(client.post_bulk::<RegistryAnswer>(
        "/v1/registry",
        Payload::Stream {
            body,
            length: Some(size),
        },
        &[StatusCode::UNPROCESSABLE_ENTITY],
    ));
    bar.finish_and_clear();
    let (_, answer) = sent?;
    print_answer(&answer, json)
}

/// Prints a registry upload's answer; an error (exit 1) for a rejected file, after its
/// problems.
fn print_answer(a: &RegistryAnswer, json: bool) -> Result<()> {
    if json {
        super::show::print_json(a)?;
    } else if a.outcome == "applied" {
        println!(
            "registry applied: {} holder(s) created, {} updated, {} card(s) created, {} revoked \
             ({} ms)",
            a.holders_created,
            a.holders_updated,
            a.cards_created,
            a.revoked.len(),
            a.elapsed_ms
        );
        for r in &a.revoked {
            println!("  revoked {}: {}", r.serial, r.reason);
        }
    } else {
        println!(
            "registry file {}: {} problem(s); nothing was applied",
            a.outcome, a.problems_total
        );
        for p in &a.problems {
            println!("  {p}");
        }
        let shown = a.problems.len() as u64;
        if a.problems_total > shown {
            println!("  ... and {} more", a.problems_total - shown);
        }
    }
    match a.outcome.as_str() {
        "applied" => Ok(()),
        other => bail!("the registry file was {other}"),
    }
}
