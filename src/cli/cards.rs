//! `plico cards show|activate|suspend|reactivate|revoke|reidentify|counter-page|dispatch|resend
//! SERIAL`: the client for `/v1/cards/{serial}` (operator or cms token; support may show and
//! suspend; only operators re-identify a holder and print the counter page, part A of the codes,
//! to a new 0600 PDF file).
//!
//! `dispatch` asks for a card's codes to be delivered by a plan (e.g. `counter(2)+sms`) and
//! prints the request's jobs; a card with a dispatch under way or done needs `--replace
//! --reason TEXT` (the old dispatch is superseded, its unsent parts cancelled). `resend` sends
//! one part again. Neither shows a code or a contact; the workers send the parts, and `show`
//! tells where each one is and lists every dispatch with its parts.
//!
//! `counter-page` prints part A of the card's split dispatch in force (its plan; `--plan`, if
//! given, must be that plan) and records its hand-over; part B goes to its courier only after
//! that. Printing it again needs `--reprint`.
//!
//! Every change prints the card's new status. A change the card's state does not allow fails
//! with the server's `wrong_state` message, which names the current state (exit 1).
//!
//! Activation by the holder:
//!
//! ```text
//! plico cards activate SERIAL --holder-document carta_identita:CA12345AB --consent REF
//! ```
//!
//! by a delegate (a parent for a minor is a delegate):
//!
//! ```text
//! plico cards activate SERIAL --delegate-cf CF --delegate-given-names "Anna" \
//!     --delegate-surname "Bianchi" --delegate-document passaporto:YA1234567 \
//!     --delegation REF --consent REF
//! ```
//!
//! `reidentify` takes the same options as `activate`: the holder identified again at the
//! counter, needed before codes go to a contact the registry changed since the last
//! identification.
//!
//! Mind that identity data given as arguments is personal data in the shell history and,
//! while the command runs, in the process list of this machine.

use super::client::{AuthArgs, Client, ServerArgs};
use super::time::utc;
use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use plico::api::cards::CardView;
use plico::api::dispatch::{DispatchView, JobView};
use plico::ids::Serial;
use serde_json::{json, Value};
use std::path::Path;

/// Arguments of `plico cards`.
#[derive(Debug, Args)]
pub struct CardsArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(subcommand)]
    command: CardsCommand,
}

/// The `cards` subcommands.
#[derive(Debug, Subcommand)]
pub enum CardsCommand {
    /// Show a card's status: state, dates, holder id, whether its codes are held.
    Show {
        /// The card serial.
        serial: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Activate an issued card, collected by its holder or by a delegate.
    Activate(ActivateArgs),
    /// Suspend an active card.
    Suspend {
        /// The card serial.
        serial: String,
        /// lost, stolen, damaged, malfunction, code_compromised, puk_blocked, data_error,
        /// deceased, replaced, expired or other.
        #[arg(long, value_name = "REASON")]
        reason: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Reactivate a suspended card.
    Reactivate {
        /// The card serial.
        serial: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Print part A of the card's split dispatch in force at the counter: a one-page PDF
    /// written to a new 0600 file (operator; the card must be active; audited as a code
    /// release and as part A's hand-over, which lets part B go to its courier).
    CounterPage {
        /// The card serial.
        serial: String,
        /// The plan of the dispatch in force, e.g. `counter(2)+sms`, as a check: another plan
        /// is refused. Default: the dispatch's own plan.
        #[arg(long, value_name = "PLAN")]
        plan: Option<String>,
        /// Print part A again (it was already handed over); audited as a reprint.
        #[arg(long)]
        reprint: bool,
        /// The PDF file to write; it must not exist.
        #[arg(long, value_name = "FILE.pdf")]
        out: std::path::PathBuf,
    },
    /// Identify the holder of an active card again at the counter (operator), with the same
    /// options as `activate`; needed before codes go to a mobile number or e-mail address that
    /// changed since the last identification.
    Reidentify(ActivateArgs),
    /// Ask for a card's codes to be delivered (cms or operator; the card must be active): one
    /// job per part, sent by the server's workers. Prints the jobs, never a code or a contact.
    Dispatch {
        /// The card serial.
        serial: String,
        /// The delivery plan: counter(N)+sms, counter(N)+email, counter(N)+remote (SMS if the
        /// holder has a mobile number, else e-mail), sms, email or mailer. Part A of
        /// counter(N)+… is printed at the counter (`plico cards counter-page`).
        #[arg(long, value_name = "PLAN")]
        plan: String,
        /// Replace the card's dispatch under way or done (needs --reason): it is superseded
        /// and its unsent parts cancelled.
        #[arg(long, requires = "reason")]
        replace: bool,
        /// Why the dispatch in force is replaced (with --replace).
        #[arg(long, value_name = "TEXT", requires = "replace")]
        reason: Option<String>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Send one part of a card's codes again by the channel of its last job (cms or operator;
    /// rate-limited and audited), e.g. the B half a holder says never arrived.
    Resend {
        /// The card serial.
        serial: String,
        /// The part to send again: B (the remote half of counter(N)+…) or whole.
        #[arg(long, value_name = "PART")]
        part: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a card for good; its codes are deleted.
    Revoke {
        /// The card serial.
        serial: String,
        /// lost, stolen, damaged, malfunction, code_compromised, puk_blocked, data_error,
        /// deceased, replaced, expired or other.
        #[arg(long, value_name = "REASON")]
        reason: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `plico cards activate` and `plico cards reidentify`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("who").required(true).args(["holder_document", "delegate_cf"])))]
pub struct ActivateArgs {
    /// The card serial.
    serial: String,
    /// The holder in person: their identity document, TYPE:NUMBER (e.g.
    /// carta_identita:CA12345AB).
    #[arg(long, value_name = "TYPE:NUMBER")]
    holder_document: Option<String>,
    /// A delegate (for the holder): the delegate's codice fiscale.
    #[arg(
        long,
        value_name = "CF",
        requires_all = ["delegate_given_names", "delegate_surname", "delegate_document", "delegation"]
    )]
    delegate_cf: Option<String>,
    /// The delegate's given name(s).
    #[arg(long, value_name = "NAMES", requires = "delegate_cf")]
    delegate_given_names: Option<String>,
    /// The delegate's surname.
    #[arg(long, value_name = "SURNAME", requires = "delegate_cf")]
    delegate_surname: Option<String>,
    /// The delegate's identity document, TYPE:NUMBER.
    #[arg(long, value_name = "TYPE:NUMBER", requires = "delegate_cf")]
    delegate_document: Option<String>,
    /// Reference of the delegation form (its id or hash).
    #[arg(long, value_name = "REF", requires = "delegate_cf")]
    delegation: Option<String>,
    /// Reference of the signed consent form (its id or hash).
    #[arg(long, value_name = "REF")]
    consent: String,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

/// A card serial as one path segment: 1 to 64 letters, digits, `-` or `_`.
fn path_segment(serial: &str) -> Result<Serial> {
    serial
        .parse()
        .map_err(|e| anyhow::anyhow!("the serial must be {e}"))
}

/// `TYPE:NUMBER` of a document option, split.
fn document<'a>(option: &str, text: &'a str) -> Result<(&'a str, &'a str)> {
    match text.split_once(':') {
        Some((t, n)) if !t.trim().is_empty() && !n.trim().is_empty() => Ok((t.trim(), n.trim())),
        _ => bail!("{option}: expected TYPE:NUMBER, e.g. carta_identita:CA12345AB"),
    }
}

fn activation(a: &ActivateArgs) -> Result<Value> {
    if let Some(doc) = &a.holder_document {
        let (t, n) = document("--holder-document", doc)?;
        return Ok(json!({
            "by": "holder",
            "document_type": t,
            "document_number": n,
            "consent_ref": a.consent,
        }));
    }
    let (Some(cf), Some(given_names), Some(surname), Some(doc), Some(delegation)) = (
        &a.delegate_cf,
        &a.delegate_given_names,
        &a.delegate_surname,
        &a.delegate_document,
        &a.delegation,
    ) else {
        bail!(
            "give --holder-document, or --delegate-cf with --delegate-given-names, \
             --delegate-surname, --delegate-document and --delegation"
        );
    };
    let (t, n) = document("--delegate-document", doc)?;
    Ok(json!({
        "by": "delegate",
        "given_names": given_names,
        "surname": surname,
        "codice_fiscale": cf,
        "document_type": t,
        "document_number": n,
        "delegation_ref": delegation,
        "consent_ref": a.consent,
    }))
}

/// Runs `plico cards …`.
pub fn run(args: CardsArgs) -> Result<()> {
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    match &args.command {
        CardsCommand::CounterPage {
            serial,
            plan,
            reprint,
            out,
        } => {
            return runtime.block_on(counter_page(
                &client,
                serial,
                plan.as_deref(),
                *reprint,
                out,
            ));
        }
        CardsCommand::Dispatch {
            serial,
            plan,
            replace,
            reason,
            json,
        } => {
            let path = format!("/v1/cards/{}/dispatch", path_segment(serial)?);
            let mut body = json!({ "plan": plan });
            if *replace {
                body["replace"] = json!(true);
                body["reason"] = json!(reason);
            }
            let d: DispatchView = runtime.block_on(client.post(&path, &body))?;
            if *json {
                super::show::print_json(&d)?;
            } else {
                print_dispatch(&d);
            }
            return Ok(());
        }
        CardsCommand::Resend { serial, part, json } => {
            let path = format!("/v1/cards/{}/resend", path_segment(serial)?);
            let j: JobView = runtime.block_on(client.post(&path, &json!({ "part": part })))?;
            if *json {
                super::show::print_json(&j)?;
            } else {
                print_job(&j);
            }
            return Ok(());
        }
        _ => {}
    }
    let (card, json): (CardView, bool) = runtime.block_on(async {
        Ok::<_, anyhow::Error>(match &args.command {
            CardsCommand::Show { serial, json } => {
                let path = format!("/v1/cards/{}", path_segment(serial)?);
                (client.get(&path).await?, *json)
            }
            CardsCommand::Activate(a) => {
                let body = activation(a)?;
                let path = format!("/v1/cards/{}/activate", path_segment(&a.serial)?);
                (client.post(&path, &body).await?, a.json)
            }
            CardsCommand::Suspend {
                serial,
                reason,
                json,
            } => {
                let path = format!("/v1/cards/{}/suspend", path_segment(serial)?);
                let body = json!({ "reason": reason });
                (client.post(&path, &body).await?, *json)
            }
            CardsCommand::Reactivate { serial, json } => {
                let path = format!("/v1/cards/{}/reactivate", path_segment(serial)?);
                (client.post(&path, &json!({})).await?, *json)
            }
            CardsCommand::Reidentify(a) => {
                let body = activation(a)?;
                let path = format!("/v1/cards/{}/reidentify", path_segment(&a.serial)?);
                (client.post(&path, &body).await?, a.json)
            }
            CardsCommand::Revoke {
                serial,
                reason,
                json,
            } => {
                let path = format!("/v1/cards/{}/revoke", path_segment(serial)?);
                let body = json!({ "reason": reason });
                (client.post(&path, &body).await?, *json)
            }
            CardsCommand::CounterPage { .. }
            | CardsCommand::Dispatch { .. }
            | CardsCommand::Resend { .. } => bail!("handled above"),
        })
    })?;
    if json {
        super::show::print_json(&card)?;
    } else {
        print_card(&card);
    }
    Ok(())
}

fn print_job(j: &JobView) {
    let mut line = format!(
        "{:<14}{} by {}, job {}",
        format!("part {}:", j.part.as_str()),
        j.state.as_str(),
        j.channel.as_str(),
        j.id
    );
    if let Some(r) = j.replaces {
        line.push_str(&format!(" (replaces job {r})"));
    }
    if let (Some(by), Some(at)) = (&j.handed_over_by, j.handed_over_ms) {
        line.push_str(&format!(", handed over by {by} at {}", utc(at)));
    }
    if j.prints > 1 {
        line.push_str(&format!(", printed {} times", j.prints));
    }
    if let Some(r) = &j.cancel_reason {
        line.push_str(&format!(", cancelled: {r}"));
    }
    println!("{line}");
}

/// A dispatch and its jobs.
fn print_dispatch(d: &DispatchView) {
    let mut line = format!("dispatch {} of card {} by {}", d.id, d.serial, d.plan);
    if let Some(old) = d.replaces {
        line.push_str(&format!(", replaces dispatch {old}"));
    }
    if let Some(new) = d.superseded_by {
        line.push_str(&format!(", superseded by dispatch {new}"));
    }
    println!("{line}");
    for j in &d.jobs {
        print_job(j);
    }
}

/// Fetches the counter page and writes it to a new 0600 file (never over an existing one).
async fn counter_page(
    client: &Client,
    serial: &str,
    plan: Option<&str>,
    reprint: bool,
    out: &Path,
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if out.exists() {
        bail!("{} exists; refusing to overwrite it", out.display());
    }
    let path = format!("/v1/cards/{}/counter-page", path_segment(serial)?);
    let mut body = json!({ "reprint": reprint });
    if let Some(plan) = plan {
        body["plan"] = json!(plan);
    }
    let pdf = client.post_secret_bytes(&path, &body).await?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    f.write_all(&pdf)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "counter page written to {} ({} bytes); print it and delete the file",
        out.display(),
        pdf.len()
    );
    Ok(())
}

fn print_card(c: &CardView) {
    println!("card:         {}", c.serial);
    println!("state:        {}", c.state);
    println!("holder:       {}", c.holder);
    if let Some(e) = c.expiry {
        println!("expiry:       {e}");
    }
    if let Some(r) = c.reason {
        println!("reason:       {r}");
    }
    if let Some(r) = &c.replaced_by {
        println!("replaced by:  {r}");
    }
    if let (Some(by), Some(at)) = (&c.activated_by, c.activated_ms) {
        println!("activated:    by the {by}, at {}", utc(at));
    }
    println!("changed:      {}", utc(c.changed_ms));
    println!("codes held:   {}", if c.codes_held { "yes" } else { "no" });
    if let Some(at) = c.identified_ms {
        println!("identified:   at {}", utc(at));
    }
    if c.parts.is_empty() {
        for d in &c.delivery {
            println!("delivery:     {}: {}", d.part, d.state);
        }
    }
    for p in &c.parts {
        let state = if p.needs_counter_reprint {
            "needs_counter_reprint"
        } else {
            p.state.as_str()
        };
        let reason = p
            .failure_reason
            .as_deref()
            .map(|r| format!(", last failure {r}"))
            .unwrap_or_default();
        println!(
            "{:<14}{} by {}, {} attempt(s){reason}, job {}, at {}",
            format!("part {}:", p.part.as_str()),
            state,
            p.channel.as_str(),
            p.attempts,
            p.job,
            utc(p.updated_ms)
        );
    }
    for d in &c.dispatches {
        print_dispatch(d);
    }
}
