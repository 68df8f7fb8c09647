//! `plico batches list|show`: the client for `GET /v1/batches` and `/v1/batches/{id}`, and the
//! printing of an upload's or a generation's answer shared with `import` and `generate`.
//!
//! Nothing printed here is a code: batch records hold none.

use super::client::{AuthArgs, Client, ServerArgs};
use super::time::utc;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use plico::api::batches::{BatchAnswer, BatchPage, BatchView};
use plico::ids::batch_id;
use reqwest::StatusCode;
use vault::BatchId;

/// Arguments of `plico batches`.
#[derive(Debug, Args)]
pub struct BatchesArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(subcommand)]
    command: BatchesCommand,
}

/// The `batches` subcommands.
#[derive(Debug, Subcommand)]
pub enum BatchesCommand {
    /// List batches, oldest first (a manufacturer sees its own uploads only).
    List {
        /// Start after this batch id (the `next` of the previous page).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
        /// Batches per page (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Print the server's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one batch: state, counts, runs, data key and its KCV, problems.
    Show {
        /// The batch id, e.g. b000042.
        id: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// The statuses of `POST /v1/batches` and `POST /v1/generate` that carry an outcome.
pub fn outcome_statuses() -> [StatusCode; 2] {
    [StatusCode::CONFLICT, StatusCode::UNPROCESSABLE_ENTITY]
}

/// Prints an upload's or a generation's answer; an error (exit 1) for a rejected or
/// quarantined batch, after its problems.
pub fn print_answer(a: &BatchAnswer, json: bool) -> Result<()> {
    if json {
        super::show::print_json(a)?;
    } else {
        match a.outcome.as_str() {
            "committed" => println!(
                "batch {}: committed, {} cards in {} run(s), {} bytes, {} ms",
                a.batch, a.cards, a.runs, a.bytes, a.elapsed_ms
            ),
            "already_stored" => println!(
                "batch {}: this file was stored before ({} cards); nothing new was stored",
                a.batch, a.cards
            ),
            other => {
                println!(
                    "batch {}: {other}, {} problem(s){}",
                    a.batch,
                    a.problems_total,
                    if other == "quarantined" {
                        " (serials already in the vault; nothing was overwritten)"
                    } else {
                        "; nothing was stored"
                    }
                );
                for p in &a.problems {
                    println!("  {p}");
                }
                let shown = a.problems.len() as u64;
                if a.problems_total > shown {
                    println!("  ... and {} more", a.problems_total - shown);
                }
                if other == "quarantined" {
                    println!("{}", quarantine_next_step(&a.batch));
                }
            }
        }
    }
    match a.outcome.as_str() {
        "committed" | "already_stored" => Ok(()),
        other => bail!("batch {} was {other}", a.batch),
    }
}

/// What to do with a quarantined batch: it is held back, invisible, until an officer decides.
fn quarantine_next_step(batch: &str) -> String {
    format!(
        "next step: check the listed serials with the manufacturer. plico never merges a \
         quarantined batch; for a corrected file an officer proposes discarding this one \
         (`plico keys propose discard --batch {batch} --reason …`), a second officer approves \
         (`plico keys approve ID`), and the manufacturer uploads the corrected file \
         (docs/keys.md, \"Discard a quarantined batch\")"
    )
}

/// A batch id as one path segment: `b` and digits, or digits.
fn path_segment(id: &str) -> Result<BatchId> {
    batch_id(id).map_err(|e| anyhow::anyhow!("{id:?} is not a batch id ({e})"))
}

/// Runs `plico batches …`.
pub fn run(args: BatchesArgs) -> Result<()> {
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    runtime.block_on(async {
        match &args.command {
            BatchesCommand::List { after, limit, json } => {
                let mut path = format!("/v1/batches?limit={limit}");
                if let Some(a) = after {
                    path.push_str(&format!("&after={}", path_segment(a)?));
                }
                let page: BatchPage = client.get(&path).await?;
                if *json {
                    super::show::print_json(&page)?;
                } else {
                    print_table(&page.batches);
                    if let Some(next) = &page.next {
                        eprintln!("more: --after {next}");
                    }
                }
                Ok(())
            }
            BatchesCommand::Show { id, json } => {
                let b: BatchView = client
                    .get(&format!("/v1/batches/{}", path_segment(id)?))
                    .await?;
                if *json {
                    super::show::print_json(&b)?;
                } else {
                    print_one(&b);
                }
                Ok(())
            }
        }
    })
}

fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn range(b: &BatchView) -> String {
    let first = b.runs.iter().map(|r| r.first.as_str()).min();
    let last = b.runs.iter().map(|r| r.last.as_str()).max();
    match (first, last) {
        (Some(f), Some(l)) => format!("{f}..{l}"),
        _ => "-".to_owned(),
    }
}

fn print_table(batches: &[BatchView]) {
    println!(
        "{:<9} {:<12} {:<10} {:>10}  {:<20} SERIALS",
        "ID", "STATE", "SOURCE", "CARDS", "MANUFACTURER"
    );
    for b in batches {
        println!(
            "{:<9} {:<12} {:<10} {:>10}  {:<20} {}",
            b.id,
            name(&b.state),
            name(&b.source),
            b.cards,
            b.manufacturer,
            range(b)
        );
    }
}

fn print_one(b: &BatchView) {
    println!("batch:        {}", b.id);
    println!("state:        {}", name(&b.state));
    println!("source:       {}", name(&b.source));
    if !b.manufacturer.is_empty() {
        println!("manufacturer: {}", b.manufacturer);
    }
    if let Some(first) = &b.duplicate_of {
        println!("duplicate of: {first} (the same file; nothing of this upload was kept)");
    }
    println!("cards:        {}", b.cards);
    println!(
        "signature:    {}",
        if b.signature_pairs { "yes" } else { "no" }
    );
    println!("bytes:        {}", b.bytes);
    if let (Some(k), Some(kcv)) = (b.data_key, &b.data_key_kcv) {
        println!("data key:     {k} (KCV {kcv})");
    }
    println!(
        "by:           {} ({}), request {}",
        b.actor, b.role, b.request_id
    );
    println!("started:      {}", utc(b.started_ms));
    println!("finished:     {}", utc(b.finished_ms));
    for r in &b.runs {
        println!(
            "run {:<4}      {}..{}: {} cards, {} segments",
            r.run, r.first, r.last, r.cards, r.segments
        );
    }
    if b.problems_total > 0 {
        println!("problems:     {}", b.problems_total);
        for p in &b.problems {
            println!("  {p}");
        }
    }
}
