//! The command line: argument definitions and one module per subcommand.
//!
//! - `init` creates an HSM and writes its custodian shares to files, creates the store and the
//!   first admin account, and writes the admin's token to a 0600 file (offline: no server).
//! - `serve` opens the HSM sealed and the store, and runs the HTTP API.
//! - `unseal`, `status`, `seal`, `accounts`, `audit`, `import`, `import-recipient`, `generate`,
//!   `batches`, `registry`, `holders`, `cards`, `mailers`, `reports` and `keys` talk to a running server over
//!   HTTP(S); they never open the data directory, which belongs to the server while it runs
//!   (sled locks it).
//!
//! - `config check` loads and validates a configuration file as `serve` would and prints it,
//!   secrets redacted; `completions` and the hidden `man` write shell completions and man
//!   pages from these definitions (the package ships both). None of them opens the data
//!   directory.
//!
//! `anyhow` is the error type here and in `main.rs` only.

mod accounts;
mod audit;
mod backup;
mod batches;
mod bootstrap;
mod cards;
mod client;
mod completions;
mod config;
mod files;
mod generate;
mod holders;
mod import;
mod init;
mod keys;
mod mailers;
mod registry;
mod reports;
mod restore;
mod seal;
mod serve;
mod show;
mod status;
mod time;
mod unseal;

use clap::{Parser, Subcommand, ValueEnum};
use plico::config::LogFormat;

/// plico: a hardened PIN/PUK vault.
#[derive(Debug, Parser)]
#[command(name = "plico", version, about, propagate_version = true)]
pub struct Args {
    /// Log format on stderr [default: plain, or `[log] format` of the serve config file].
    #[arg(long, global = true, value_enum, env = "PLICO_LOG_FORMAT")]
    pub log_format: Option<LogFormatArg>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(a: LogFormatArg) -> Self {
        match a {
            LogFormatArg::Plain => LogFormat::Plain,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new HSM (simulated, or on a PKCS#11 token) and write its custodian shares.
    Init(init::InitArgs),
    /// Run the HTTP API (the HSM starts sealed unless --dev).
    Serve(serve::ServeArgs),
    /// Submit custodian share files to a running server.
    Unseal(unseal::UnsealArgs),
    /// Show a running server's HSM status (seal state, share set, key check values).
    Status(status::StatusArgs),
    /// Emergency seal of a running server: drops every key from memory (officer or admin).
    Seal(seal::SealArgs),
    /// Manage accounts on a running server (admin token).
    Accounts(accounts::AccountsArgs),
    /// Verify or export the audit chain of a running server (auditor token).
    Audit(audit::AuditArgs),
    /// Upload a PIN/PUK batch file to a running server (manufacturer token).
    Import(import::ImportArgs),
    /// Print the age recipient that batch files may be encrypted to (manufacturer or admin).
    ImportRecipient(import::RecipientArgs),
    /// Have a running server generate codes for cards that came without them (cms token).
    Generate(generate::GenerateArgs),
    /// List or show code batches on a running server (never a code).
    Batches(batches::BatchesArgs),
    /// Upload holder registry files to a running server (cms token).
    Registry(registry::RegistryArgs),
    /// Find holders by codice fiscale, or surname and birth date (operator, cms, support).
    Holders(holders::HoldersArgs),
    /// Show a card's status, change its state, or have its codes delivered (dispatch, resend).
    Cards(cards::CardsArgs),
    /// Print runs of PIN mailers, their outcomes and the reconciliation per batch.
    Mailers(mailers::MailersArgs),
    /// Technical problem reports: operators open them, support works them.
    Reports(reports::ReportsArgs),
    /// Key ceremonies under dual control: propose, approve, withdraw, list, status (officer).
    Keys(keys::KeysArgs),
    /// Check a configuration file as `serve` would load it, and print it (secrets redacted).
    Config(config::ConfigArgs),
    /// Print shell completions for bash, zsh or fish to stdout.
    Completions(completions::CompletionsArgs),
    /// Write the man pages to a directory (used when packaging).
    #[command(hide = true)]
    Man(completions::ManArgs),
    /// Back up a running server: store and HSM state, sealed to `[backup] recipient` (admin
    /// or officer).
    Backup(backup::BackupArgs),
    /// Restore a backup into an empty data directory, offline; then the custodians accept the
    /// rollback (`--accept-rollback`).
    Restore(restore::RestoreArgs),
}

/// The log format: `--log-format` or `PLICO_LOG_FORMAT`, else for `serve` the config file's
/// `[log] format`, else plain. A config file that does not load is reported by `serve` itself.
pub fn log_format(args: &Args) -> Option<LogFormat> {
    match (&args.log_format, &args.command) {
        (Some(f), _) => Some((*f).into()),
        (None, Command::Serve(s)) => s.configured_log_format(),
        (None, _) => None,
    }
}

/// Runs the chosen subcommand.
///
/// # Errors
/// Whatever the subcommand reports; the message is printed by `main`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Init(a) => init::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Unseal(a) => unseal::run(a),
        Command::Status(a) => status::run(a),
        Command::Seal(a) => seal::run(a),
        Command::Accounts(a) => accounts::run(a),
        Command::Audit(a) => audit::run(a),
        Command::Import(a) => import::run(a),
        Command::ImportRecipient(a) => import::run_recipient(a),
        Command::Generate(a) => generate::run(a),
        Command::Batches(a) => batches::run(a),
        Command::Registry(a) => registry::run(a),
        Command::Holders(a) => holders::run(a),
        Command::Cards(a) => cards::run(a),
        Command::Mailers(a) => mailers::run(a),
        Command::Reports(a) => reports::run(a),
        Command::Keys(a) => keys::run(a),
        Command::Config(a) => config::run(a),
        Command::Completions(a) => completions::run_completions(a),
        Command::Man(a) => completions::run_man(a),
        Command::Backup(a) => backup::run(a),
        Command::Restore(a) => restore::run(a),
    }
}
