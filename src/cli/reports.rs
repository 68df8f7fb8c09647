//! `plico reports open|list|comment|assign|close`: the client for `/v1/reports`.
//!
//! An operator opens a technical problem report (optionally about a card); the service centre
//! (`support`) lists, comments, assigns and closes them. Every step is an audit event on the
//! server.

use super::client::{AuthArgs, Client, ServerArgs};
use super::show;
use super::time::utc;
use anyhow::Result;
use clap::{Args, Subcommand};
use plico::api::reports::{ReportPage, ReportView};
use plico::ids::ReportId;
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
        id: ReportId,
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
        id: ReportId,
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
        id: ReportId,
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
                    super::show::print_json(&page)?;
                } else {
                    if page.reports.is_empty() {
                        println!("no report");
                    }
                    for r in &page.reports {
                        print!("{}", render_report(r));
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
            super::show::print_json(&report)?;
        } else {
            print!("{}", render_report(&report));
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

/// A report as the terminal shows it: every stored text escaped ([`show`]).
fn render_report(r: &ReportView) -> String {
    use std::fmt::Write as _;
    let mut out = format!("report {}: {}", r.id, show::line(&name(&r.state)));
    if let Some(card) = &r.card {
        let _ = write!(out, ", card {}", show::line(card));
    }
    let _ = write!(
        out,
        ", opened by {} at {}",
        show::line(&r.opened_by),
        utc(r.opened_ms)
    );
    if let Some(a) = &r.assignee {
        let _ = write!(out, ", assigned to {}", show::line(a));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "  title: {}", show::line(&r.title));
    let _ = writeln!(out, "  text:  {}", show::lines(&r.text));
    for c in &r.comments {
        let _ = writeln!(
            out,
            "  comment by {} at {}: {}",
            show::line(&c.by),
            utc(c.at_ms),
            show::lines(&c.text)
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use plico::api::reports::CommentView;

    #[test]
    fn stored_escapes_do_not_reach_the_terminal() {
        // A report stored before input was checked, or by another writer.
        let r: ReportView = serde_json::from_value(json!({
            "id": 1, "card": null, "state": "open", "opened_by": "op\u{1b}[2J",
            "opened_ms": 0, "assignee": null, "closed_ms": null,
            "title": "\u{1b}]0;pwned\u{7}title\r", "text": "line 1\nline\u{202e} 2\u{9b}",
            "comments": [{ "by": "s", "at_ms": 1, "text": "\u{1b}[31mred" }],
        }))
        .unwrap();
        let _: &Vec<CommentView> = &r.comments;
        let out = render_report(&r);
        assert!(!out.bytes().any(|b| b < 0x20 && b != b'\n'), "{out:?}");
        assert!(
            !out.contains('\u{202e}') && !out.contains('\u{9b}'),
            "{out:?}"
        );
        assert!(out.contains("\\u{1b}]0;pwned\\u{7}title\\u{d}"), "{out}");
    }

    #[test]
    fn assign_takes_the_api_field_name_and_keeps_to() {
        use clap::Parser;
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
