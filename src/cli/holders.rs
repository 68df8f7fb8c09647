//! `plico holders search (--cf CF | --surname S --birth-date D)`: the client for
//! `POST /v1/holders/search` (operator, cms or support token).
//!
//! Exact match only, as the registry's blind index allows. The holders found are printed with
//! their personal data — that is what identification at the counter needs — and the search is
//! an audit event on the server. The key travels in the request body, never in a URL.
//!
//! Mind that a key given as an argument is personal data in the shell history and, while the
//! command runs, in the process list of this machine.

use super::client::{AuthArgs, Client, ServerArgs};
use anyhow::{bail, Result};
use clap::{ArgGroup, Args, Subcommand};
use plico::api::holders::{HolderMatch, HolderPage};
use serde_json::{json, Value};

/// Arguments of `plico holders`.
#[derive(Debug, Args)]
pub struct HoldersArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(subcommand)]
    command: HoldersCommand,
}

/// The `holders` subcommands.
#[derive(Debug, Subcommand)]
pub enum HoldersCommand {
    /// Find holders by codice fiscale, or by surname and birth date (exact match; audited).
    #[command(group(ArgGroup::new("key").required(true).args(["cf", "surname"])))]
    Search {
        /// The holder's codice fiscale.
        #[arg(long, value_name = "CF")]
        cf: Option<String>,
        /// The holder's surname (with --birth-date).
        #[arg(long, value_name = "SURNAME", requires = "birth_date")]
        surname: Option<String>,
        /// The holder's birth date, YYYY-MM-DD (with --surname).
        #[arg(long, value_name = "YYYY-MM-DD", requires = "surname")]
        birth_date: Option<String>,
        /// Start after this holder id (the `next` of the previous page).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
        /// Holders per page (1 to 50).
        #[arg(long, value_name = "N", default_value_t = 10)]
        limit: usize,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `plico holders …`.
pub fn run(args: HoldersArgs) -> Result<()> {
    let HoldersCommand::Search {
        cf,
        surname,
        birth_date,
        after,
        limit,
        json,
    } = &args.command;
    let mut body = match (cf, surname, birth_date) {
        (Some(cf), None, None) => json!({ "codice_fiscale": cf }),
        (None, Some(s), Some(d)) => json!({ "surname": s, "birth_date": d }),
        _ => bail!("give either --cf CF, or --surname SURNAME and --birth-date YYYY-MM-DD"),
    };
    if let Value::Object(map) = &mut body {
        map.insert("limit".into(), json!(limit));
        if let Some(a) = after {
            map.insert("after".into(), json!(a));
        }
    }
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    let page: HolderPage = runtime.block_on(client.post("/v1/holders/search", &body))?;
    if *json {
        super::show::print_json(&page)?;
        return Ok(());
    }
    if page.holders.is_empty() {
        println!("no holder found");
    }
    for h in &page.holders {
        print_holder(h);
    }
    if let Some(next) = &page.next {
        eprintln!("more: --after {next}");
    }
    Ok(())
}

fn print_holder(h: &HolderMatch) {
    let p = &h.personal;
    println!(
        "holder {}: {} {}, born {}, codice fiscale {}{}",
        h.id,
        super::show::line(&p.given_names),
        super::show::line(&p.surname),
        p.birth_date,
        p.codice_fiscale,
        if h.deceased { " (DECEASED)" } else { "" }
    );
    if let Some(e) = &p.email {
        println!("  e-mail:  {}", super::show::line(e));
    }
    if let Some(m) = &p.mobile {
        println!("  mobile:  {}", super::show::line(m));
    }
    if let Some(a) = &p.address {
        println!("  address: {}", super::show::line(a));
    }
    for c in &h.cards {
        println!("  card {}: {}", c.serial, c.state);
    }
}
