//! `plico mailers run|runs|show|outcomes|reconcile`: the client for `/v1/mailers/…` (cms token
//! to run; cms, admin, officer or auditor to read; cms or operator for outcomes).
//!
//! `run` starts a print run and follows it every 250 ms with a spinner (mailers rendered and
//! their rate) until it ends, then prints the run's record. Print files are written by the
//! server, sealed to the print facility; nothing here ever shows a code.
//!
//! An outcomes file is either lines `NUMBER,delivered|spoiled`, where NUMBER may also be the
//! page's scanned Data Matrix (`PLICO;<number>;<masked serial>`) (blank lines and `#` comments
//! ignored) or JSON: a list of `{"number": N, "outcome": "delivered"}`, or the API's body
//! `{"outcomes": [...]}`. It is recorded all or nothing.

use super::client::{AuthArgs, Client, ServerArgs};
use anyhow::{bail, Context, Result};
use cards::Reconciliation;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plico::api::mailers::{OutcomeCounts, RunView, Started};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vault::BatchId;

/// How often `plico mailers run` asks how far the run is.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Arguments of `plico mailers`.
#[derive(Debug, Args)]
pub struct MailersArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(subcommand)]
    command: MailersCommand,
}

/// The `mailers` subcommands.
#[derive(Debug, Subcommand)]
pub enum MailersCommand {
    /// Start a print run (a batch, or a list of serials) and follow it to its end (cms).
    Run(RunArgs),
    /// List print runs, newest first.
    Runs {
        /// Most runs to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one print run: state, counts, files.
    Show {
        /// The run id.
        id: u64,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Record what became of printed mailers, all or nothing (cms or operator).
    Outcomes {
        /// Lines `NUMBER,delivered|spoiled` (blank lines and `#` comments ignored), or JSON:
        /// a list of `{"number": N, "outcome": "delivered"}` or `{"outcomes": [...]}`.
        file: PathBuf,
    },
    /// Printed mailers by batch: delivered, spoiled, voided, outstanding, balanced.
    Reconcile {
        /// Only this batch (e.g. b000001, or `mixed`).
        #[arg(long, value_name = "ID")]
        batch: Option<String>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Which selected cards get a mailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReprintArg {
    /// Only cards without an outstanding or delivered mailer.
    Unprinted,
    /// Cards without a delivered mailer (outstanding ones are voided and printed again).
    Undelivered,
    /// Every selected card (outstanding mailers are voided).
    All,
}

impl ReprintArg {
    fn as_str(self) -> &'static str {
        match self {
            ReprintArg::Unprinted => "unprinted",
            ReprintArg::Undelivered => "undelivered",
            ReprintArg::All => "all",
        }
    }
}

/// Arguments of `plico mailers run`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selection").required(true).args(["batch", "serials"])))]
pub struct RunArgs {
    /// Print every card of this committed batch (e.g. b000001).
    #[arg(long, value_name = "ID")]
    batch: Option<String>,
    /// Print the cards listed in FILE, one serial a line.
    #[arg(long, value_name = "FILE")]
    serials: Option<PathBuf>,
    /// Which selected cards get a mailer.
    #[arg(long, value_enum, default_value = "unprinted")]
    reprint: ReprintArg,
    /// The label the print files are named after [default: the batch id, or `run`].
    #[arg(long, value_name = "LABEL")]
    label: Option<String>,
    /// The delivery plan, e.g. `whole` or `counter(2)+sms`.
    #[arg(long, value_name = "PLAN", default_value = "whole")]
    plan: String,
    /// The part of the plan to print: `whole`, or `A` / `B` of a counter plan.
    #[arg(long, value_name = "PART", default_value = "whole")]
    part: String,
    /// Start the run and return at once, printing its id.
    #[arg(long)]
    no_wait: bool,
}

fn read_serials(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read serials file {}", path.display()))?;
    let list: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        bail!("serials file {} lists no serial", path.display());
    }
    Ok(list)
}

/// Reads an outcomes file (see the module docs) into the API's body.
fn read_outcomes(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read outcomes file {}", path.display()))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("outcomes file {}: not valid JSON", path.display()))?;
        return Ok(if v.is_array() {
            json!({ "outcomes": v })
        } else {
            v
        });
    }
    let mut list = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("outcomes file {} line {}", path.display(), i + 1);
        let (n, o) = line
            .split_once(',')
            .with_context(|| format!("{}: expected NUMBER,delivered|spoiled", at()))?;
        // A number, or a page's scanned Data Matrix (`PLICO;<number>;<masked serial>`).
        let number: u64 = match dispatch::render::marks::ScanCode::parse(n) {
            Some(code) => code.number.with_context(|| {
                format!(
                    "{}: the scanned code is a counter page's (no mailer number)",
                    at()
                )
            })?,
            None => n
                .trim()
                .parse()
                .with_context(|| format!("{}: the mailer number is not a number", at()))?,
        };
        let outcome = o.trim();
        if !matches!(outcome, "delivered" | "spoiled") {
            bail!("{}: the outcome must be delivered or spoiled", at());
        }
        list.push(json!({ "number": number, "outcome": outcome }));
    }
    if list.is_empty() {
        bail!("outcomes file {} has no outcome", path.display());
    }
    Ok(json!({ "outcomes": list }))
}

/// Runs `plico mailers …`.
pub fn run(args: MailersArgs) -> Result<()> {
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    runtime.block_on(async {
        match &args.command {
            MailersCommand::Run(a) => run_print(&client, a).await,
            MailersCommand::Runs { limit, json } => {
                let runs: Vec<RunView> = client
                    .get(&format!("/v1/mailers/runs?limit={limit}"))
                    .await?;
                if *json {
                    super::show::print_json(&runs)?;
                } else {
                    println!(
                        "{:>6}  {:<11}  {:<24}  {:>9}  {:>6}  {:>7}",
                        "run", "state", "label", "printed", "files", "voided"
                    );
                    for r in &runs {
                        let rec = &r.record;
                        println!(
                            "{:>6}  {:<11}  {:<24}  {:>9}  {:>6}  {:>7}",
                            rec.id,
                            rec.state,
                            rec.label,
                            r.done_so_far.unwrap_or(rec.printed),
                            rec.files.len(),
                            rec.voided
                        );
                    }
                }
                Ok(())
            }
            MailersCommand::Show { id, json } => {
                let r: RunView = client.get(&format!("/v1/mailers/runs/{id}")).await?;
                if *json {
                    super::show::print_json(&r)?;
                } else {
                    print_run(&r);
                }
                Ok(())
            }
            MailersCommand::Outcomes { file } => {
                let body = read_outcomes(file)?;
                let answer: OutcomeCounts = client.post("/v1/mailers/outcomes", &body).await?;
                for (k, v) in &answer.counts {
                    println!("{k}: {v}");
                }
                Ok(())
            }
            MailersCommand::Reconcile { batch, json } => {
                let path = match batch {
                    Some(b) => format!("/v1/mailers/reconciliation?batch={}", segment(b)?),
                    None => "/v1/mailers/reconciliation".to_owned(),
                };
                let rows: Vec<Reconciliation> = client.get(&path).await?;
                if *json {
                    super::show::print_json(&rows)?;
                } else {
                    print_reconciliation(&rows);
                }
                Ok(())
            }
        }
    })
}

/// A batch id as a query value.
fn segment(text: &str) -> Result<BatchId> {
    plico::ids::batch_id(text).map_err(|e| anyhow::anyhow!("--batch: {e}"))
}

async fn run_print(client: &Client, a: &RunArgs) -> Result<()> {
    let mut body = json!({
        "reprint": a.reprint.as_str(),
        "plan": a.plan,
        "part": a.part,
    });
    match (&a.batch, &a.serials) {
        (Some(b), None) => body["batch"] = json!(b),
        (None, Some(f)) => body["serials"] = json!(read_serials(f)?),
        _ => bail!("give --batch ID or --serials FILE"),
    }
    if let Some(l) = &a.label {
        body["label"] = json!(l);
    }
    let started: Started = client.post("/v1/mailers/runs", &body).await?;
    let id = started.run;
    if a.no_wait {
        println!("print run {id} started");
        return Ok(());
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} print run {msg}: {pos} mailers ({per_sec}) {elapsed}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(id.to_string());
    let path = format!("/v1/mailers/runs/{id}");
    let last = loop {
        let r: RunView = client.get(&path).await?;
        if r.record.state != "running" {
            break r;
        }
        bar.set_position(r.done_so_far.unwrap_or(r.record.printed));
        bar.tick();
        tokio::time::sleep(POLL_EVERY).await;
    };
    bar.set_position(last.record.printed);
    bar.finish_and_clear();
    print_run(&last);
    if last.record.state != "done" {
        bail!("print run {id} ended {}", last.record.state);
    }
    Ok(())
}

fn print_run(r: &RunView) {
    let rec = &r.record;
    println!("run:       {}", rec.id);
    println!("label:     {}", super::show::line(&rec.label));
    println!("state:     {}", rec.state);
    if let Some(b) = &rec.batch {
        println!("batch:     {b}");
    }
    if let Some(n) = rec.listed {
        println!("listed:    {n}");
    }
    println!("plan:      {} (part {})", rec.plan, rec.part);
    println!("reprint:   {:?}", rec.reprint);
    println!("printed:   {}", rec.printed);
    if let Some(n) = r.done_so_far {
        println!("rendered:  {n} so far");
    }
    println!("voided:    {}", rec.voided);
    for (why, n) in &rec.skipped {
        println!("skipped:   {n} {why}");
    }
    println!("files:     {}", rec.files.len());
    for f in &rec.files {
        println!("           {f}");
    }
    if let Some(e) = &rec.error {
        println!("error:     {}", super::show::line(e));
    }
}

fn print_reconciliation(rows: &[Reconciliation]) {
    println!(
        "{:<10} {:>6} {:>9} {:>10} {:>8} {:>7} {:>12}  balanced",
        "batch", "files", "printed", "delivered", "spoiled", "voided", "outstanding"
    );
    for r in rows {
        println!(
            "{:<10} {:>6} {:>9} {:>10} {:>8} {:>7} {:>12}  {}",
            r.batch,
            r.files,
            r.printed,
            r.delivered,
            r.spoiled,
            r.voided,
            r.outstanding,
            if r.balanced { "yes" } else { "no" }
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn outcome_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("o.csv");
        std::fs::write(&f, "# from the post\n12,delivered\n13, spoiled\n\n").unwrap();
        let v = read_outcomes(&f).unwrap();
        assert_eq!(
            v,
            json!({"outcomes": [{"number": 12, "outcome": "delivered"}, {"number": 13, "outcome": "spoiled"}]})
        );
        std::fs::write(&f, "12,delivered\n13,lost\n").unwrap();
        let e = read_outcomes(&f).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(&f, "PLICO;14;8039********1234,delivered\n15,spoiled\n").unwrap();
        assert_eq!(read_outcomes(&f).unwrap()["outcomes"][0]["number"], 14);
        std::fs::write(&f, "PLICO;-;8039********1234,delivered\n").unwrap();
        let e = read_outcomes(&f).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("counter page"), "{e}");
        std::fs::write(&f, r#"[{"number": 1, "outcome": "spoiled"}]"#).unwrap();
        assert_eq!(read_outcomes(&f).unwrap()["outcomes"][0]["number"], 1);
    }
}
