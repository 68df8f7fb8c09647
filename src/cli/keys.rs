//! `plico keys propose|approve|withdraw|list|show|status`: the officers' client for key
//! ceremonies under dual control (`/v1/keys/proposals`, `/v1/sys/keys`; officer token, or
//! auditor to read).
//!
//! One officer proposes (`propose rotate|retire|rekey|shred|discard --reason …`), a different
//! officer approves (`approve ID`). A rekey's approval takes a quorum of the current shares
//! from `--share-file` files (one share each), or prompted without echo on a terminal, or one a
//! line from a piped stdin — never from the command line. The new shares are written by the
//! server into its `[keys] rekey_share_dir`; this command prints only where.
//!
//! `approve --wait` follows the job a rotate, shred or discard starts (every 250 ms, with a
//! progress bar of data keys rewrapped) until it ends.

use super::client::{AuthArgs, Client, ServerArgs};
use super::files;
use super::time::utc;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plico::api::keys::{Approved, ProposalList, ProposalView};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;
use vault::{JobState, KeyJob, KeyStatus, Proposal};

/// How often `approve --wait` asks how far the job is.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Arguments of `plico keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(subcommand)]
    command: KeysCommand,
}

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Propose a key operation; a different officer must approve it within the window.
    Propose(ProposeArgs),
    /// Approve another officer's proposal; it runs at once (a rekey needs current shares).
    Approve(ApproveArgs),
    /// Withdraw an open proposal.
    Withdraw {
        /// The proposal, e.g. kp000007.
        id: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List proposals, newest first (open ones past their window are marked lapsed).
    List {
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one proposal.
    Show {
        /// The proposal, e.g. kp000007.
        id: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// The key hierarchy: terms and data keys with KCVs, the job's progress, open proposals,
    /// warnings and recommendations.
    Status {
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `plico keys propose`.
#[derive(Debug, Args)]
pub struct ProposeArgs {
    #[command(subcommand)]
    op: ProposeOp,
}

/// Why: every proposal says.
#[derive(Debug, Args)]
pub struct Reason {
    /// Why the operation is needed (a ticket, an event); shown to the approver and audited.
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

/// The operations an officer can propose.
#[derive(Debug, Subcommand)]
pub enum ProposeOp {
    /// A new KEK term becomes active; a job rewraps every data key under it.
    Rotate {
        #[command(flatten)]
        why: Reason,
    },
    /// Destroy a decrypt-only term that wraps no data key any more.
    Retire {
        /// The term's number.
        #[arg(long, value_name = "N")]
        term: u32,
        #[command(flatten)]
        why: Reason,
    },
    /// A new root key and a new set of custodian shares (approval needs m current shares).
    Rekey {
        /// Shares to issue (n).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
        shares: u8,
        /// Shares needed to unseal (m); at least 2 outside --dev.
        #[arg(long, value_name = "M", value_parser = clap::value_parser!(u8).range(1..))]
        threshold: u8,
        #[command(flatten)]
        why: Reason,
    },
    /// Destroy a committed batch's codes for good (crypto-shred, then rotate and retire).
    Shred {
        /// The batch, e.g. b000042.
        #[arg(long, value_name = "ID")]
        batch: String,
        /// Shred although cards of the batch still need their codes: they are revoked
        /// (reason codes_destroyed) and their unsent dispatch jobs cancelled.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        why: Reason,
    },
    /// Discard a quarantined batch (destroyed as a shred is).
    #[command(alias = "discard-quarantined")]
    Discard {
        /// The batch, e.g. b000043.
        #[arg(long, value_name = "ID")]
        batch: String,
        #[command(flatten)]
        why: Reason,
    },
}

/// Arguments of `plico keys approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The proposal, e.g. kp000007.
    id: String,
    /// A rekey: a file holding one current share (repeat for each custodian). Without any,
    /// the shares are prompted for (no echo), or read one a line from a piped stdin.
    #[arg(long = "share-file", value_name = "FILE")]
    share_files: Vec<PathBuf>,
    /// Follow the job the approval starts (rotate, shred, discard) until it ends.
    #[arg(long)]
    wait: bool,
    /// The KCV you expect the named key to have (from the ceremony log or `keys status`):
    /// the approval is refused, and nothing changes, if it differs.
    #[arg(long, value_name = "HEX")]
    expect_kcv: Option<String>,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

/// The body of a rekey's approval: borrowed shares, serialized straight into the request.
#[derive(serde::Serialize)]
struct ApproveBody<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shares: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expect_kcv: Option<&'a str>,
}

fn batch_number(text: &str) -> Result<u64> {
    plico::ids::batch_id(text)
        .map(|b| b.0)
        .map_err(|e| anyhow::anyhow!("--batch: {e}"))
}

/// A proposal id for a path: `kp` and digits only.
fn proposal_segment(text: &str) -> Result<String> {
    plico::ids::proposal_id(text)
        .map(|id| id.to_string())
        .map_err(|e| anyhow::anyhow!("proposal id: {e}"))
}

/// Runs `plico keys …`.
pub fn run(args: KeysArgs) -> Result<()> {
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    runtime.block_on(async {
        match &args.command {
            KeysCommand::Propose(p) => propose(&client, &p.op).await,
            KeysCommand::Approve(a) => approve(&client, a).await,
            KeysCommand::Withdraw { id, json } => {
                let path = format!("/v1/keys/proposals/{}/withdraw", proposal_segment(id)?);
                let v: ProposalView = client.post(&path, &json!({})).await?;
                if *json {
                    super::show::print_json(&v)?;
                } else {
                    println!("{} withdrawn", v.proposal.id);
                }
                Ok(())
            }
            KeysCommand::List { json } => {
                let v: ProposalList = client.get("/v1/keys/proposals").await?;
                if *json {
                    super::show::print_json(&v)?;
                } else {
                    print_list(&v.proposals);
                }
                Ok(())
            }
            KeysCommand::Show { id, json } => {
                let path = format!("/v1/keys/proposals/{}", proposal_segment(id)?);
                let v: ProposalView = client.get(&path).await?;
                if *json {
                    super::show::print_json(&v)?;
                } else {
                    print_proposal(&v.proposal);
                }
                Ok(())
            }
            KeysCommand::Status { json } => {
                let v: Value = client.get("/v1/sys/keys").await?;
                if *json {
                    super::show::print_json(&v)?;
                } else {
                    let s: KeyStatus =
                        serde_json::from_value(v).context("unexpected answer from /v1/sys/keys")?;
                    print_status(&s);
                }
                Ok(())
            }
        }
    })
}

async fn propose(client: &Client, op: &ProposeOp) -> Result<()> {
    let (mut body, why) = match op {
        ProposeOp::Rotate { why } => (json!({"op": "rotate"}), why),
        ProposeOp::Retire { term, why } => (json!({"op": "retire", "term": term}), why),
        ProposeOp::Rekey {
            shares,
            threshold,
            why,
        } => {
            if threshold > shares {
                bail!("--threshold {threshold} is more than --shares {shares}");
            }
            (
                json!({"op": "rekey", "shares": shares, "threshold": threshold}),
                why,
            )
        }
        ProposeOp::Shred { batch, force, why } => {
            let mut body = json!({"op": "shred", "batch": batch_number(batch)?});
            if *force {
                body["force"] = json!(true);
            }
            (body, why)
        }
        ProposeOp::Discard { batch, why } => (
            json!({"op": "discard_quarantined", "batch": batch_number(batch)?}),
            why,
        ),
    };
    body["reason"] = json!(why.reason);
    let v: ProposalView = client.post("/v1/keys/proposals", &body).await?;
    if why.json {
        super::show::print_json(&v)?;
        return Ok(());
    }
    let p = &v.proposal;
    println!("proposed {}: {}", p.id, p.op);
    if let Some(k) = p.kcv {
        println!("KCV of the key it names: {k}");
    }
    print_impact(p);
    println!("expires: {}", utc(p.expires_ms));
    println!(
        "a different officer compares the KCV and approves it: plico keys approve {}",
        p.id
    );
    Ok(())
}

/// Reads the current shares for a rekey approval: the files, else a prompt, else stdin.
fn read_current_shares(files_given: &[PathBuf]) -> Result<Vec<SecretString>> {
    if !files_given.is_empty() {
        return files_given.iter().map(|f| files::read_share(f)).collect();
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut out = Vec::new();
        for line in stdin.lock().lines() {
            let line = zeroize::Zeroizing::new(line.context("cannot read shares from stdin")?);
            let t = line.trim();
            if !t.is_empty() {
                out.push(SecretString::from(t.to_owned()));
            }
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    eprintln!("enter the current shares, one per line (not shown); an empty line ends");
    loop {
        eprint!("share {}: ", out.len() + 1);
        std::io::stderr().flush().ok();
        let share = read_hidden_line()?;
        if share.expose_secret().trim().is_empty() {
            break;
        }
        out.push(share);
    }
    Ok(out)
}

/// One line from the terminal with echo off (`stty -echo`), restored afterwards.
fn read_hidden_line() -> Result<SecretString> {
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !stty("-echo") {
        bail!("cannot turn off the terminal's echo to read a share: use --share-file FILE");
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    let read = std::io::stdin().lock().read_line(&mut line);
    stty("echo");
    eprintln!();
    read.context("cannot read a share")?;
    Ok(SecretString::from(line.trim().to_owned()))
}

async fn approve(client: &Client, a: &ApproveArgs) -> Result<()> {
    let id = proposal_segment(&a.id)?;
    let shown: ProposalView = client.get(&format!("/v1/keys/proposals/{id}")).await?;
    let is_rekey = matches!(shown.proposal.op, vault::Operation::Rekey { .. });
    if !is_rekey && !a.share_files.is_empty() {
        bail!("{id} is not a rekey: it needs no shares");
    }
    let expect = a.expect_kcv.as_deref().map(str::trim);
    if let Some(k) = expect {
        k.parse::<vault::Kcv>()
            .map_err(|_| anyhow::anyhow!("--expect-kcv: expected 6 hex digits, e.g. DC95C0"))?;
    }
    if !a.json {
        // What is approved, before it is: the operation, the KCV and everything it will do.
        println!("approving:");
        print_proposal(&shown.proposal);
    }
    let path = format!("/v1/keys/proposals/{id}/approve");
    let v: Approved = if is_rekey {
        if !client.is_private_channel() {
            bail!(
                "refusing to send shares over plain http to {}: use https",
                client.base()
            );
        }
        let shares = read_current_shares(&a.share_files)?;
        if shares.is_empty() {
            bail!("a rekey needs a quorum of the current shares: --share-file FILE ...");
        }
        let body = ApproveBody {
            shares: shares.iter().map(|s| s.expose_secret()).collect(),
            expect_kcv: expect,
        };
        client.post(&path, &body).await?
    } else {
        let body = ApproveBody {
            shares: Vec::new(),
            expect_kcv: expect,
        };
        client.post(&path, &body).await?
    };
    if a.json && !a.wait {
        super::show::print_json(&v)?;
        return Ok(());
    }
    let p = &v.proposal;
    println!("approved {}: {} ({})", p.id, p.op, p.state);
    if let Some(r) = &v.rekey {
        println!(
            "new share set {}: {} of {} shares; root key KCV {}",
            r.share_set, r.threshold, r.shares, r.root_kcv
        );
        println!("the new shares were written on the server's host, one file per custodian:");
        for f in &r.share_files {
            println!("  {f}");
        }
        println!(
            "hand each to a different custodian, then delete them; the old shares no longer work"
        );
    }
    if let Some(o) = &p.outcome {
        println!("outcome: {o}");
    }
    if let Some(job) = &v.job {
        if a.wait {
            let last = follow(client, job).await?;
            if a.json {
                super::show::print_json(&last)?;
            } else {
                print_job(&last);
            }
            if last.state != JobState::Done {
                bail!("the job of {} ended {:?}", last.id, last.state);
            }
        } else {
            println!("job started: follow it with `plico keys status`");
        }
    }
    Ok(())
}

/// Polls `/v1/sys/keys` until `job` ends, with a progress bar.
async fn follow(client: &Client, job: &KeyJob) -> Result<KeyJob> {
    let bar = ProgressBar::with_draw_target(Some(job.total.max(1)), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {pos}/{len} data keys ({per_sec}) {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("{} {}", job.id, job.op.name()));
    loop {
        let s: KeyStatus = client.get("/v1/sys/keys").await?;
        let current = s.job.filter(|j| j.id == job.id);
        if let Some(j) = current {
            bar.set_length(j.total.max(1));
            bar.set_position(j.done);
            bar.set_message(format!("{} {:?}", j.id, j.phase));
            if !j.unfinished() {
                bar.finish_and_clear();
                return Ok(j);
            }
        }
        bar.tick();
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn print_list(list: &[Proposal]) {
    println!(
        "{:<9}  {:<10}  {:<34}  {:<7}  {:<10}  {:<10}  reason",
        "id", "state", "operation", "kcv", "proposer", "approver"
    );
    for p in list {
        println!(
            "{:<9}  {:<10}  {:<34}  {:<7}  {:<10}  {:<10}  {}",
            p.id.to_string(),
            p.state.to_string(),
            p.op.to_string(),
            p.kcv.map(|k| k.to_string()).unwrap_or_default(),
            p.proposer,
            p.approver.as_deref().unwrap_or("-"),
            p.reason
        );
    }
}

fn print_proposal(p: &Proposal) {
    println!("proposal:  {}", p.id);
    println!("operation: {}", p.op);
    println!("state:     {}", p.state);
    if let Some(k) = p.kcv {
        println!("kcv:       {k}");
    }
    println!("reason:    {}", super::show::line(&p.reason));
    println!(
        "proposer:  {} at {}",
        super::show::line(&p.proposer),
        utc(p.proposed_ms)
    );
    println!("expires:   {}", utc(p.expires_ms));
    if let Some(a) = &p.approver {
        println!(
            "decided:   by {a}{}",
            p.decided_ms
                .map(|t| format!(" at {}", utc(t)))
                .unwrap_or_default()
        );
    }
    if let Some(o) = &p.outcome {
        println!("outcome:   {o}");
    }
    print_impact(p);
}

/// What the proposal will do: keys and terms, cards by state, jobs cancelled.
fn print_impact(p: &Proposal) {
    let Some(i) = &p.impact else {
        return;
    };
    println!("it will:");
    for k in &i.keys {
        println!("  {k}");
    }
    if p.op.batch().is_some() && matches!(p.op, vault::Operation::Shred { .. }) {
        if i.cards.is_empty() {
            println!("  cards that lose their codes: none");
        }
        for g in &i.cards {
            let more = g.count.saturating_sub(g.serials.len() as u64);
            println!(
                "  cards {} that lose their codes: {}{}{}",
                g.state,
                g.count,
                if g.serials.is_empty() { "" } else { ": " },
                g.serials.join(", ")
            );
            if more > 0 {
                println!("    … and {more} more");
            }
        }
        if matches!(p.op, vault::Operation::Shred { force: true, .. }) && i.live_cards() > 0 {
            println!(
                "  revoke {} card(s) that still need their codes (reason codes_destroyed)",
                i.live_cards()
            );
        }
        println!("  cancel dispatch jobs: {}", i.jobs.count);
        for j in &i.jobs.listed {
            println!(
                "    job {} card {} part {} by {} ({})",
                j.job, j.serial, j.part, j.channel, j.state
            );
        }
        let more = i.jobs.count.saturating_sub(i.jobs.listed.len() as u64);
        if more > 0 {
            println!("    … and {more} more");
        }
    }
}

fn print_job(j: &KeyJob) {
    println!(
        "job {} ({}): {:?}, phase {:?}, {} of {} data keys rewrapped{}",
        j.id,
        j.op.name(),
        j.state,
        j.phase,
        j.done,
        j.total,
        match (j.target, j.target_kcv) {
            (Some(t), Some(k)) => format!(" under {t} (KCV {k})"),
            _ => String::new(),
        }
    );
    if !j.retired.is_empty() {
        let retired: Vec<String> = j
            .retired
            .iter()
            .map(|(t, k)| format!("{t} (KCV {k})"))
            .collect();
        println!("  retired: {}", retired.join(", "));
    }
    if let Some(e) = &j.last_error {
        println!("  last error: {e}");
    }
}

fn print_status(s: &KeyStatus) {
    println!(
        "hsm:        {} ({})",
        s.provider,
        if s.sealed { "sealed" } else { "unsealed" }
    );
    println!("root key:   KCV {}", s.root_kcv);
    println!(
        "share set:  {} ({} of {} shares to unseal)",
        s.share_set, s.threshold, s.shares
    );
    println!();
    println!(
        "{:<6}  {:<13}  {:<7}  {:<10}  {:>9}",
        "term", "state", "kcv", "created", "data keys"
    );
    for t in &s.terms {
        println!(
            "{:<6}  {:<13}  {:<7}  {:<10}  {:>9}",
            t.id.0,
            format!("{:?}", t.state).to_lowercase(),
            t.kcv.to_string(),
            &utc(t.created_unix * 1000)[..10],
            t.data_keys
        );
    }
    println!();
    println!(
        "{:<8}  {:<8}  {:<7}  {:>5}  {:<10}  {:>12}",
        "data key", "purpose", "kcv", "term", "created", "encryptions"
    );
    for k in &s.data_keys {
        println!(
            "{:<8}  {:<8}  {:<7}  {:>5}  {:<10}  {:>12}",
            k.id.to_string(),
            serde_json::to_value(k.purpose)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            k.kcv.to_string(),
            k.term.0,
            &utc(k.created_unix * 1000)[..10],
            k.encryptions
        );
    }
    println!();
    match &s.job {
        Some(j) => print_job(j),
        None => println!("job: none yet"),
    }
    if !s.proposals.is_empty() {
        println!();
        println!("open proposals:");
        print_list(&s.proposals);
    }
    if !s.warnings.is_empty() {
        println!();
        for w in &s.warnings {
            println!("warning: {w}");
        }
    }
    if !s.recommendations.is_empty() {
        println!();
        for r in &s.recommendations {
            println!("recommended: {r}");
        }
    }
}
