//! `plico reports open|list|comment|assign|close`: the client for `/v1/reports`.
//!
//! An operator opens a technical problem report (optionally about a card); the service centre
//! (`support`) lists, comments, assigns and closes them. Every step is an audit event on the
//! server.

use super::client::{AuthArgs, Client, ServerArgs};
use super::time::utc;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use plico::api::reports::{ReportPage, ReportView};
use serde_json::json;

/// Arguments of `plico reports`.
#[derive(Debug, Args)]
pub struct ReportsArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(subcommand)]
    command: ReportsCommand,
}

/// The `reports` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportsCommand {
    /// Open a report (operator token).
    Open {
        /// A short title (at most 200 characters).
        #[arg(long)]
        title: String,
        /// What happened (at most 4000 characters).
        #[arg(long)]
        text: String,
        /// The card it is about.
        #[arg(long, value_name = "SERIAL")]
        card: Option<String>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List open and assigned reports, oldest first (support token).
    List {
        /// Start after this report number (the `next` of the previous page).
        #[arg(long, value_name = "N")]
        after: Option<u64>,
        /// Reports per page (1 to 100).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// List closed reports too.
        #[arg(long)]
        closed: bool,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Comment on a report (support token).
    Comment {
        /// The report number.
        id: u64,
        /// The comment.
        #[arg(long)]
        text: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Assign a report to a support account (support token).
    Assign {
        /// The report number.
        id: u64,
        /// The id of the support account that takes it (the API's `assignee`; `--to` is kept as
        /// an alias).
        #[arg(long, value_name = "ACCOUNT", alias = "to")]
        assignee: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Close a report with a last comment (support token).
    Close {
        /// The report number.
        id: u64,
        /// The closing comment.
        #[arg(long)]
        text: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `plico reports …`.
pub fn run(args: ReportsArgs) -> Result<()> {
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    runtime.block_on(async {
        let (report, json): (ReportView, bool) = match &args.command {
            ReportsCommand::Open {
                title,
                text,
                card,
                json,
            } => {
                let body = json!({ "title": title, "text": text, "card": card });
                (client.post("/v1/reports", &body).await?, *json)
            }
            ReportsCommand::List {
                after,
                limit,
                closed,
                json,
            } => {
                let mut path = format!("/v1/reports?limit={limit}&closed={closed}");
                if let Some(a) = after {
                    path.push_str(&format!("&after={a}"));
                }
                let page: ReportPage = client.get(&path).await?;
                if *json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&page).context("cannot format the list")?
                    );
                } else {
                    if page.reports.is_empty() {
                        println!("no report");
                    }
                    for r in &page.reports {
                        print_report(r);
                    }
                    if let Some(next) = page.next {
                        eprintln!("more: --after {next}");
                    }
                }
                return Ok(());
            }
            ReportsCommand::Comment { id, text, json } => {
                let path = format!("/v1/reports/{id}/comment");
                (client.post(&path, &json!({ "text": text })).await?, *json)
            }
            ReportsCommand::Assign { id, assignee, json } => {
                let path = format!("/v1/reports/{id}/assign");
                (
                    client.post(&path, &json!({ "assignee": assignee })).await?,
                    *json,
                )
            }
            ReportsCommand::Close { id, text, json } => {
                let path = format!("/v1/reports/{id}/close");
                (client.post(&path, &json!({ "text": text })).await?, *json)
            }
        };
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).context("cannot format the report")?
            );
        } else {
            print_report(&report);
        }
        Ok(())
    })
}

fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn print_report(r: &ReportView) {
    let mut head = format!("report {}: {}", r.id, name(&r.state));
    if let Some(card) = &r.card {
        head.push_str(&format!(", card {card}"));
    }
    head.push_str(&format!(
        ", opened by {} at {}",
        r.opened_by,
        utc(r.opened_ms)
    ));
    if let Some(a) = &r.assignee {
        head.push_str(&format!(", assigned to {a}"));
    }
    println!("{head}");
    println!("  title: {}", r.title);
    println!("  text:  {}", r.text);
    for c in &r.comments {
        println!("  comment by {} at {}: {}", c.by, utc(c.at_ms), c.text);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn assign_takes_the_api_field_name_and_keeps_to() {
        for flag in ["--assignee", "--to"] {
            let args = crate::cli::Args::try_parse_from([
                "plico", "reports", "assign", "3", flag, "acc_x",
            ])
            .unwrap_or_else(|e| panic!("{flag}: {e}"));
            let crate::cli::Command::Reports(r) = args.command else {
                panic!("not reports")
            };
            assert!(format!("{r:?}").contains("assignee: \"acc_x\""), "{r:?}");
        }
    }
}
