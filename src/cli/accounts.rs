//! `plico accounts create|list|disable|rotate-token|set-password`: the admin's client for
//! `/v1/accounts`.
//!
//! A new token is written to `--token-out FILE` (created 0600, never overwriting) when given;
//! otherwise it is printed once on stdout, with a warning on stderr that it will not be shown
//! again. The caller's own token comes from `--token-file` or `PLICO_TOKEN` and is never
//! printed.

use super::client::{AuthArgs, Client, ServerArgs};
use super::files;
use anyhow::Result;
use clap::{Args, Subcommand};
use plico::ids::AccountId;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use vault::AccountView;

/// Arguments of `plico accounts`.
#[derive(Debug, Args)]
pub struct AccountsArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(subcommand)]
    command: AccountsCommand,
}

/// The `accounts` subcommands.
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account; its token is shown once (or written to --token-out).
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// One of admin, manufacturer, cms, operator, support, officer, auditor.
        #[arg(long)]
        role: String,
        /// Write the new token to this new file (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        token_out: Option<PathBuf>,
    },
    /// List the accounts (no tokens, no hashes).
    List {
        /// Print the server's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: its token stops working at once.
    Disable {
        /// The account id.
        id: String,
    },
    /// Set an operator's or officer's password (argon2id; at least 12 characters), read from a
    /// file so it never appears in the shell history or the process list.
    SetPassword {
        /// The account id.
        id: String,
        /// A file whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
    },
    /// Give an account a new token; the old one stops working at once.
    RotateToken {
        /// The account id.
        id: String,
        /// Write the new token to this new file (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        token_out: Option<PathBuf>,
    },
}

#[derive(Deserialize)]
struct Created {
    account: AccountView,
    token: SecretString,
}

#[derive(Deserialize)]
struct List {
    accounts: Vec<AccountView>,
}

#[derive(Deserialize)]
struct One {
    account: AccountView,
}

#[derive(Deserialize)]
struct NewToken {
    token: SecretString,
}

/// Runs `plico accounts …`.
pub fn run(args: AccountsArgs) -> Result<()> {
    if let AccountsCommand::Create {
        token_out: Some(p), ..
    }
    | AccountsCommand::RotateToken {
        token_out: Some(p), ..
    } = &args.command
    {
        // Refuse before the server makes a token nobody could receive.
        if p.exists() {
            anyhow::bail!("{} already exists; refusing to overwrite it", p.display());
        }
    }
    let client = Client::with_token(&args.server, &args.auth)?;
    let runtime = super::unseal::client_runtime()?;
    runtime.block_on(async {
        match &args.command {
            AccountsCommand::Create {
                name,
                role,
                token_out,
            } => {
                let c: Created = client
                    .post("/v1/accounts", &json!({"name": name, "role": role}))
                    .await?;
                println!("created account {} ({})", c.account.id, c.account.role);
                hand_over(&c.token, token_out.as_deref())
            }
            AccountsCommand::List { json } => {
                let list: List = client.get("/v1/accounts").await?;
                if *json {
                    super::show::print_json(&json!({ "accounts": list.accounts }))?;
                } else {
                    print_table(&list.accounts);
                }
                Ok(())
            }
            AccountsCommand::Disable { id } => {
                let one: One = client
                    .post(
                        &format!("/v1/accounts/{}/disable", path_segment(id)?),
                        &json!({}),
                    )
                    .await?;
                println!("disabled account {} ({})", one.account.id, one.account.role);
                Ok(())
            }
            AccountsCommand::SetPassword { id, password_file } => {
                use secrecy::ExposeSecret;
                let password = files::read_password(password_file)?;
                let one: One = client
                    .post(
                        &format!("/v1/accounts/{}/password", path_segment(id)?),
                        &json!({ "password": password.expose_secret() }),
                    )
                    .await?;
                println!(
                    "password set for account {} ({})",
                    one.account.id, one.account.role
                );
                Ok(())
            }
            AccountsCommand::RotateToken { id, token_out } => {
                let t: NewToken = client
                    .post(
                        &format!("/v1/accounts/{}/rotate-token", path_segment(id)?),
                        &json!({}),
                    )
                    .await?;
                println!("new token for account {id}; the old one no longer works");
                hand_over(&t.token, token_out.as_deref())
            }
        }
    })
}

/// An id as one path segment: ids are hex, so anything else is refused rather than escaped.
fn path_segment(id: &str) -> Result<AccountId> {
    id.parse()
        .map_err(|e| anyhow::anyhow!("account id {id:?} is not {e}"))
}

fn hand_over(token: &SecretString, out: Option<&Path>) -> Result<()> {
    match out {
        Some(path) => {
            files::write_token(path, token)?;
            println!("token written to {} (mode 0600)", path.display());
        }
        None => {
            use secrecy::ExposeSecret;
            eprintln!(
                "WARNING: the token below is shown only this once; store it safely (or use \
                 --token-out FILE next time)"
            );
            println!("{}", token.expose_secret());
        }
    }
    Ok(())
}

fn print_table(accounts: &[AccountView]) {
    println!(
        "{:<17} {:<13} {:<9} {:<9} NAME",
        "ID", "ROLE", "STATE", "PASSWORD"
    );
    for a in accounts {
        println!(
            "{:<17} {:<13} {:<9} {:<9} {}",
            a.id,
            a.role.as_str(),
            if a.disabled { "disabled" } else { "enabled" },
            if a.has_password { "yes" } else { "no" },
            super::show::line(&a.name)
        );
    }
}
