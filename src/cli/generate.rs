//! `plico generate --range FIRST:COUNT | --serials FILE`: the CMS's client for
//! `POST /v1/generate`: codes drawn by the server for cards that came without them, stored like
//! an import. Nothing is printed but the batch's outcome: the codes leave plico only in
//! mailers and messages to holders.

use super::batches::{outcome_statuses, print_answer};
use super::client::{AuthArgs, Client, Payload, ServerArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use plico::api::batches::BatchAnswer;
use serde_json::json;
use std::path::PathBuf;

/// Arguments of `plico generate`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("cards").required(true).args(["range", "serials"])))]
pub struct GenerateArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// COUNT serials from FIRST on, counting in decimal at FIRST's width (e.g.
    /// 80380000000000000001:1000).
    #[arg(long, value_name = "FIRST:COUNT")]
    range: Option<String>,
    /// A file of serials, one a line (blank lines and `#` comments skipped).
    #[arg(long, value_name = "FILE")]
    serials: Option<PathBuf>,
    /// Accept weak codes (all digits equal, ascending or descending runs); filtered by default.
    #[arg(long)]
    no_weak_filter: bool,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Runs `plico generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let weak_filter = !args.no_weak_filter;
    let body = match (&args.range, &args.serials) {
        (Some(range), None) => {
            let Some((first, count)) = range.split_once(':') else {
                bail!("--range: expected FIRST:COUNT, e.g. 80380000000000000001:1000");
            };
            let count: u64 = count
                .parse()
                .with_context(|| format!("--range: COUNT {count:?} is not a number"))?;
            json!({"range": {"first": first, "count": count}, "weak_filter": weak_filter})
        }
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let serials: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            if serials.is_empty() {
                bail!("{} holds no serial", file.display());
            }
            json!({"serials": serials, "weak_filter": weak_filter})
        }
        _ => bail!("give either --range FIRST:COUNT or --serials FILE"),
    };
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    let (_, answer): (_, BatchAnswer) = runtime.block_on(client.post_bulk(
        "/v1/generate",
        Payload::json(&body)?,
        &outcome_statuses(),
    ))?;
    print_answer(&answer, args.json)
}
