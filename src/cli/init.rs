//! `plico init`: creates the HSM — a simulated one in the data directory, or plico's keys on
//! a PKCS#11 token (`--hsm pkcs11 --module … --token-label …`) — and hands each custodian
//! share to its own file.
//!
//! On a token, the PIN it was initialised with is read from `--token-pin-file` (never from
//! the command line); init replaces it by the PIN the custodians' shares derive, so after it
//! nobody knows the token's PIN and only a quorum opens it.
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
use hsm_pkcs11::{Pkcs11Config, Pkcs11Hsm, WrapMechanism};
use hsm_sim::{InitOptions, SimulatedHsm};
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
    /// Which HSM to create: `sim` (state file in DATA) or `pkcs11` (keys on a token).
    #[arg(long, value_enum, default_value_t = HsmChoice::Sim)]
    hsm: HsmChoice,
    /// With --hsm pkcs11: the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, value_name = "LIB", required_if_eq("hsm", "pkcs11"))]
    module: Option<PathBuf>,
    /// With --hsm pkcs11: the label of the (initialised, empty) token.
    #[arg(long, value_name = "LABEL", required_if_eq("hsm", "pkcs11"))]
    token_label: Option<String>,
    /// With --hsm pkcs11: the mechanism meaning RFC 5649 (`pad`, `kwp` or a hex vendor number).
    #[arg(long, value_name = "MECH", default_value = "pad")]
    mechanism: String,
    /// With --hsm pkcs11: file (mode 0600) holding the token's current user PIN, which init
    /// replaces by the PIN the shares derive.
    #[arg(long, value_name = "FILE", required_if_eq("hsm", "pkcs11"))]
    token_pin_file: Option<PathBuf>,
    /// INSECURE, with --hsm pkcs11: also write the token PIN the shares derive to this new
    /// file (mode 0600), for `[hsm] pin_file` (the service then unseals itself at start,
    /// without the custodians). Whoever reads the file can use every key.
    #[arg(long, value_name = "FILE", requires = "token_pin_file")]
    insecure_pin_file_out: Option<PathBuf>,
}

/// The HSM `plico init` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HsmChoice {
    /// The simulated HSM.
    Sim,
    /// A PKCS#11 token.
    Pkcs11,
}

/// What was made, whichever the HSM.
struct Made {
    share_set: String,
    root_kcv: vault::Kcv,
    first_term_kcv: vault::Kcv,
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

    let pkcs11 = match args.hsm {
        HsmChoice::Sim => None,
        HsmChoice::Pkcs11 => Some(pkcs11_config(&args)?),
    };
    files::private_dir(&args.data)?;
    if SimulatedHsm::exists(&args.data) {
        bail!(
            "{} already holds an HSM ({}); refusing to replace it",
            args.data.display(),
            SimulatedHsm::STATE_FILE
        );
    }
    if let Some(cfg) = &pkcs11 {
        if Pkcs11Hsm::exists(cfg)? {
            bail!(
                "pkcs#11 token {:?} already holds a plico HSM; refusing to replace it",
                cfg.token_label
            );
        }
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
    let mut deliver = |shares: &[SecretString]| {
        write_shares(&args.share_dir, &paths, shares, &mut written)?;
        quorum = shares
            .iter()
            .take(usize::from(args.threshold))
            .cloned()
            .collect();
        Ok(())
    };
    let result: vault::Result<(Arc<dyn Hsm>, Made)> = match &pkcs11 {
        None => SimulatedHsm::init(&args.data, opts, &mut deliver).map(|(h, r)| {
            let made = Made {
                share_set: r.share_set.to_string(),
                root_kcv: r.root_kcv,
                first_term_kcv: r.first_term_kcv,
            };
            (Arc::new(h) as Arc<dyn Hsm>, made)
        }),
        Some(cfg) => {
            let pin_file = args.token_pin_file.as_deref().unwrap_or(Path::new(""));
            let pin = files::read_pin_file(pin_file).context("--token-pin-file")?;
            Pkcs11Hsm::init(cfg, &pin, opts, &mut deliver).map(|(h, r)| {
                let made = Made {
                    share_set: r.share_set,
                    root_kcv: r.root_kcv,
                    first_term_kcv: r.first_term_kcv,
                };
                (Arc::new(h) as Arc<dyn Hsm>, made)
            })
        }
    };
    let where_ = match &pkcs11 {
        None => args.data.display().to_string(),
        Some(cfg) => format!("pkcs#11 token {:?}", cfg.token_label),
    };
    let (hsm, report) = match result {
        Ok(ok) => ok,
        Err(e) => {
            let exists = match &pkcs11 {
                None => SimulatedHsm::exists(&args.data),
                Some(cfg) => Pkcs11Hsm::exists(cfg).unwrap_or(true),
            };
            if exists {
                // The state may have been committed: the shares are the only way in.
                eprintln!("plico: the HSM state exists despite the error; keep the share files");
            } else {
                for p in &written {
                    let _ = std::fs::remove_file(p);
                }
            }
            return Err(e).context(format!("cannot create the HSM in {where_}"));
        }
    };

    let pin_out = match (&pkcs11, &args.insecure_pin_file_out) {
        (Some(_), Some(path)) => Some(write_pin_file(path, &quorum)),
        _ => None,
    };
    let admin = first_unseal(hsm.clone(), &args.data, &report, &quorum, &token_file);
    drop(quorum);
    hsm.seal();
    let admin = admin.with_context(|| {
        format!(
            "the HSM in {where_} was created (keep the share files), but its store could not be \
             set up"
        )
    })?;

    match &pkcs11 {
        None => println!(
            "created a simulated HSM in {} ({} of {} shares needed to unseal)",
            args.data.display(),
            args.threshold,
            args.shares
        ),
        Some(cfg) => {
            println!(
                "created plico's keys on pkcs#11 token {:?} ({} of {} shares needed to unseal; \
                 the token's user pin is now the one the shares derive)",
                cfg.token_label, args.threshold, args.shares
            );
            println!(
                "serve it with [hsm] kind = \"pkcs11\", module = {:?}, token_label = {:?}, \
                 mechanism = \"{}\"",
                cfg.module.display().to_string(),
                cfg.token_label,
                cfg.mechanism
            );
        }
    }
    if let Some(written) = pin_out {
        let path = written.context("the HSM was created (keep the share files)")?;
        println!(
            "WARNING: the token pin is in {} (mode 0600) for [hsm] pin_file: whoever reads it \
             can use every key",
            path.display()
        );
    }
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
    hsm: Arc<dyn Hsm>,
    data: &Path,
    report: &Made,
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

/// Writes the token PIN that `quorum` derives to a new 0600 file (`--insecure-pin-file-out`).
fn write_pin_file(path: &Path, quorum: &[SecretString]) -> Result<PathBuf> {
    let pin = Pkcs11Hsm::insecure_token_pin_from_shares(quorum)?;
    files::write_secret_line(path, pin.expose_secret())
        .with_context(|| format!("cannot write pin file {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// The token of `--hsm pkcs11`.
fn pkcs11_config(args: &InitArgs) -> Result<Pkcs11Config> {
    let (Some(module), Some(token_label)) = (&args.module, &args.token_label) else {
        bail!("--hsm pkcs11 needs --module and --token-label");
    };
    let mechanism: WrapMechanism = args
        .mechanism
        .parse()
        .map_err(|e| anyhow::anyhow!("--mechanism: {e}"))?;
    Ok(Pkcs11Config {
        module: module.clone(),
        token_label: token_label.clone(),
        mechanism,
    })
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
        return Err(vault::Refusal::ShareCount {
            expected: paths.len(),
            produced: shares.len(),
        }
        .into());
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
