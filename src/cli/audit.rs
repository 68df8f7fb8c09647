//! `plico audit verify|export|prune`: the client for `/v1/audit` (prune is the admin's).
//!
//! `verify` prints the report and exits with status 1, naming the first broken link, if the
//! chain is damaged. `export` writes the chain as JSON lines (exactly as stored, so every hash
//! can be recomputed) to `--out FILE` (a new file) or stdout.

use super::client::{AuthArgs, Client, ServerArgs};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Deserialize;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use vault::VerifyReport;

/// Arguments of `plico audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(subcommand)]
    command: AuditCommand,
}

/// The `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the chain and its checkpoints; exit 1 and name the first broken link if damaged.
    Verify {
        /// Print the server's JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Write every event as one JSON line, for archiving.
    Export {
        /// A new file to write (mode 0600); stdout if absent.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Remove whole checkpointed segments older than the retention period (admin; audited).
    Prune {
        /// Age limit in days; at least the server's `[audit] retention_days` (its default).
        #[arg(long, value_name = "DAYS")]
        older_than_days: Option<u32>,
    },
}

/// `POST /v1/audit/prune`'s answer.
#[derive(Debug, Deserialize)]
struct Pruned {
    pruned_through: u64,
    older_than_days: u32,
}

/// Runs `plico audit …`.
pub fn run(args: AuditArgs) -> Result<()> {
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    runtime.block_on(async {
        match &args.command {
            AuditCommand::Verify { json } => {
                let r: VerifyReport = client.get("/v1/audit/verify").await?;
                if *json {
                    super::show::print_json(&r)?;
                } else {
                    println!("events:      {}", r.events);
                    println!("checkpoints: {}", r.checkpoints);
                    println!(
                        "macs:        {}",
                        if r.macs_checked {
                            "checked"
                        } else {
                            "not checked (no audit key)"
                        }
                    );
                    for w in &r.warnings {
                        println!("warning:     {w}");
                    }
                }
                match &r.problem {
                    None => {
                        println!("intact");
                        Ok(())
                    }
                    Some(p) => bail!(
                        "the audit chain is damaged: {} at event {}: {}",
                        p.damage,
                        p.seq,
                        p.message
                    ),
                }
            }
            AuditCommand::Export { out } => {
                match out {
                    Some(path) => {
                        let mut f = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(path)
                            .with_context(|| format!("cannot create {}", path.display()))?;
                        let n = client.download("/v1/audit/export", &mut f).await?;
                        f.sync_all()
                            .with_context(|| format!("cannot sync {}", path.display()))?;
                        eprintln!("exported {n} bytes to {}", path.display());
                    }
                    None => {
                        let stdout = std::io::stdout();
                        let mut lock = stdout.lock();
                        client.download("/v1/audit/export", &mut lock).await?;
                        lock.flush().context("cannot write to stdout")?;
                    }
                }
                Ok(())
            }
            AuditCommand::Prune { older_than_days } => {
                let body = match older_than_days {
                    Some(d) => serde_json::json!({ "older_than_days": d }),
                    None => serde_json::json!({}),
                };
                let p: Pruned = client.post("/v1/audit/prune", &body).await?;
                if p.pruned_through == 0 {
                    println!("nothing older than {} days to prune", p.older_than_days);
                } else {
                    println!(
                        "pruned events up to {} (older than {} days)",
                        p.pruned_through, p.older_than_days
                    );
                }
                Ok(())
            }
        }
    })
}
