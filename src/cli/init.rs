//! `plico init`: creates a simulated HSM and hands each custodian share to its own file.
//!
//! The shares are written (0600, fsync'd, never overwriting a file) before the HSM commits
//! its state: if writing fails, no HSM exists that nobody could unseal. Shares are never
//! printed; stdout shows only the file names, the share set id and the root key's KCV.
//!
//! Then, in this process, the fresh HSM is unsealed with a quorum of the shares just made, the
//! store is created in `DATA/store` with the audit key and the chain's first events
//! (`key.create`, `hsm.init`, `hsm.unseal`), the first admin account is created and its token
//! written to a 0600 file (`--admin-token-file`, default `DATA/admin-token.txt`), and the HSM
//! is sealed again. The token is never printed or logged.

use super::{bootstrap, files};
use anyhow::{bail, Context, Result};
use clap::Args;
use hsm_sim::{InitOptions, InitReport, SimulatedHsm};
use plico::AppState;
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vault::Actor;
use vault::Hsm;
use vault::NewEvent;

/// Arguments of `plico init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory for the HSM state (created, or restricted, to mode 0700; must not hold an HSM
    /// yet).
    #[arg(long = "data", value_name = "DIR")]
    data: PathBuf,
    /// Number of custodian shares to issue (n).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    shares: u8,
    /// Shares needed to unseal (m); at least 2 unless --dev.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u8).range(1..))]
    threshold: u8,
    /// Directory for the share files (created, or restricted, to mode 0700), one file per
    /// custodian.
    #[arg(long, value_name = "SDIR")]
    share_dir: PathBuf,
    /// Development HSM: allows a threshold of 1. NOT FOR PRODUCTION.
    #[arg(long)]
    dev: bool,
    /// New file (mode 0600) for the first admin account's token [default: DATA/admin-token.txt].
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
}

/// Runs `plico init`.
pub fn run(args: InitArgs) -> Result<()> {
    if args.threshold > args.shares {
        bail!(
            "--threshold {} is more than --shares {}",
            args.threshold,
            args.shares
        );
    }
    if args.threshold < 2 && !args.dev {
        bail!("--threshold must be at least 2 (a threshold of 1 is allowed only with --dev)");
    }

    files::private_dir(&args.data)?;
    if SimulatedHsm::exists(&args.data) {
        bail!(
            "{} already holds an HSM ({}); refusing to replace it",
            args.data.display(),
            SimulatedHsm::STATE_FILE
        );
    }
    let token_file = args
        .admin_token_file
        .clone()
        .unwrap_or_else(|| args.data.join(bootstrap::ADMIN_TOKEN_FILE));
    if token_file.exists() {
        bail!(
            "{} already exists; refusing to overwrite a token file",
            token_file.display()
        );
    }
    let store_dir = bootstrap::store_dir(&args.data);
    if store_dir.exists() {
        bail!(
            "{} exists but there is no HSM beside it; a store belongs to one HSM: remove it first",
            store_dir.display()
        );
    }
    files::private_dir(&args.share_dir)?;
    if same_dir(&args.data, &args.share_dir) {
        if args.dev {
            tracing::warn!("share files are written into the data directory (--dev)");
        } else {
            bail!(
                "--share-dir is the data directory: shares must leave the machine that holds \
                 the HSM state; choose another directory"
            );
        }
    }

    let paths: Vec<PathBuf> = (1..=args.shares)
        .map(|i| {
            args.share_dir
                .join(format!("share-{i}-of-{}.txt", args.shares))
        })
        .collect();
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} already exists; refusing to overwrite a share file",
            existing.display()
        );
    }

    let mut written: Vec<PathBuf> = Vec::new();
    // A quorum of the shares, kept (zeroizing) only until the HSM has been unsealed below.
    let mut quorum: Vec<SecretString> = Vec::new();
    let opts = InitOptions {
        shares: args.shares,
        threshold: args.threshold,
        dev: args.dev,
    };
    let result = SimulatedHsm::init(&args.data, opts, &mut |shares: &[SecretString]| {
        write_shares(&args.share_dir, &paths, shares, &mut written)?;
        quorum = shares
            .iter()
            .take(usize::from(args.threshold))
            .cloned()
            .collect();
        Ok(())
    });
    let (hsm, report) = match result {
        Ok(ok) => ok,
        Err(e) => {
            if SimulatedHsm::exists(&args.data) {
                // The state may have been committed: the shares are the only way in.
                eprintln!("plico: the HSM state exists despite the error; keep the share files");
            } else {
                for p in &written {
                    let _ = std::fs::remove_file(p);
                }
            }
            return Err(e).context(format!("cannot create the HSM in {}", args.data.display()));
        }
    };

    let hsm = Arc::new(hsm);
    let admin = first_unseal(hsm.clone(), &args.data, &report, &quorum, &token_file);
    drop(quorum);
    hsm.seal();
    let admin = admin.with_context(|| {
        format!(
            "the HSM in {} was created (keep the share files), but its store could not be set up",
            args.data.display()
        )
    })?;

    println!(
        "created a simulated HSM in {} ({} of {} shares needed to unseal)",
        args.data.display(),
        args.threshold,
        args.shares
    );
    println!("share set: {}", report.share_set);
    println!("root key KCV: {}", report.root_kcv);
    println!("term 1 KCV: {}", report.first_term_kcv);
    println!("share files (give each to a different custodian and remove it from this machine):");
    for p in &paths {
        println!("  {}", p.display());
    }
    println!("store: {}", store_dir.display());
    println!(
        "first admin account {admin}: token written to {} (mode 0600); move it somewhere safe",
        token_file.display()
    );
    if args.dev {
        println!("WARNING: this is a development HSM (--dev); never use it for real codes");
    }
    Ok(())
}

/// Unseals the new HSM with `quorum`, creates the store with its audit key and first events,
/// and the first admin account. Returns the admin's account id. The caller seals the HSM.
fn first_unseal(
    hsm: Arc<SimulatedHsm>,
    data: &Path,
    report: &InitReport,
    quorum: &[SecretString],
    token_file: &Path,
) -> Result<String> {
    let store = bootstrap::open_store(data, None)?;
    let state = AppState::new(hsm.clone(), store).context("cannot open the new store")?;
    for share in quorum {
        hsm.unseal(share)
            .context("the new HSM refused its own share")?;
    }
    if hsm.status().sealed {
        bail!("the new HSM did not unseal with its own shares");
    }
    let actor = Actor::system("init");
    let status = hsm.status();
    state
        .audit
        .unlock(state.hsm.clone())
        .context("cannot create the audit key")?;
    state
        .audit
        .append(
            NewEvent::new("hsm.init", "hsm")
                .request("init")
                .detail("share_set", report.share_set.to_string())
                .detail("shares", status.shares.to_string())
                .detail("threshold", status.threshold.to_string())
                .detail("root_kcv", report.root_kcv.to_string())
                .detail("dev", status.dev.to_string()),
        )
        .context("cannot write the first audit event")?;
    state.unsealed(&actor, "init")?;
    let admin = bootstrap::bootstrap_admin(&state, token_file)?
        .context("the new store already holds accounts")?;
    state
        .shut_down()
        .context("cannot checkpoint the audit chain")?;
    Ok(admin)
}

/// The delivery callback: one file per share, all durable before returning `Ok`. On failure
/// the files written so far are removed, so a retry starts clean.
fn write_shares(
    dir: &Path,
    paths: &[PathBuf],
    shares: &[SecretString],
    written: &mut Vec<PathBuf>,
) -> vault::Result<()> {
    if shares.len() != paths.len() {
        return Err(vault::Error::Refused(format!(
            "expected {} shares, the hsm produced {}",
            paths.len(),
            shares.len()
        )));
    }
    let outcome = paths.iter().zip(shares).try_for_each(|(path, share)| {
        files::write_secret_line(path, share.expose_secret())
            .map_err(|e| vault::Error::Storage(format!("share file {}: {e}", path.display())))?;
        written.push(path.clone());
        Ok(())
    });
    let outcome = outcome.and_then(|()| {
        files::sync_dir(dir)
            .map_err(|e| vault::Error::Storage(format!("share directory {}: {e}", dir.display())))
    });
    if outcome.is_err() {
        for p in written.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
    outcome
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
