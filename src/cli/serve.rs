//! `plico serve`: opens the HSM sealed and the store, and runs the HTTP API until SIGINT or
//! SIGTERM.
//!
//! Refusals come before anything is opened: plain HTTP only on loopback, TLS files that load,
//! a data directory that holds an HSM, and no development HSM without `--dev`. The store
//! (`DATA/store`, sled) is opened once, for the life of the process; a damaged store, or one
//! locked by another process, is an error at start. At shutdown the audit chain gets a MAC'd
//! checkpoint and the HSM is sealed.
//!
//! `--dev` is the one-command local start: data in `./plico-data`, listener forced onto
//! loopback, and a 1-of-1 HSM whose only share is kept beside the data
//! (`./plico-data/dev-share.txt`) so it can unseal itself at start. On the first run it also
//! creates the first admin account, with its token in `./plico-data/admin-token.txt`, and,
//! unless `[mailers] recipients` is set, a development print facility identity
//! (`./plico-data/print-facility-dev.key`) that print files are sealed to. It says so loudly.
//! Without `[dispatch]` (or for a channel without its relay), `--dev` spools e-mails and SMS
//! to `./plico-data/spool` WITH THE CODES IN CLEAR instead of sending them, and warns so.

use super::{bootstrap, files};
use anyhow::{bail, Context, Result};
use clap::Args;
use hsm_pkcs11::Pkcs11Hsm;
use hsm_sim::{InitOptions, SimulatedHsm};
use plico::config::{Config, HsmKind, LogFormat};
use plico::tls::TlsConfig;
use plico::AppState;
use secrecy::{ExposeSecret, SecretString};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vault::Actor;
use vault::Hsm;

/// Data directory of `--dev`.
const DEV_DATA_DIR: &str = "./plico-data";
/// The dev share's file name inside the data directory.
const DEV_SHARE_FILE: &str = "dev-share.txt";
/// With `--dev` only: print runs pause at this file step (`STEP` or `STEP:N`), for crash tests.
const DEV_TEST_PRINT_PAUSE_ENV: &str = "PLICO_DEV_TEST_PRINT_PAUSE";
/// The development print facility identity of `--dev` without `[mailers] recipients`.
const DEV_PRINT_KEY_FILE: &str = "print-facility-dev.key";

/// Arguments of `plico serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory holding the HSM state [config: data_dir; env: PLICO_DATA_DIR].
    #[arg(long = "data", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8200; plain HTTP only on loopback [config: listen;
    /// env: PLICO_LISTEN; default 127.0.0.1:8200].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "PLICO_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: ./plico-data, loopback only, self-unsealing 1-of-1 HSM with its
    /// share on disk. NOT FOR PRODUCTION.
    #[arg(long)]
    dev: bool,
}

impl ServeArgs {
    /// The config file's `[log] format`, if the configuration loads.
    pub fn configured_log_format(&self) -> Option<LogFormat> {
        Config::load(self.config.as_deref())
            .ok()
            .map(|c| c.log.format)
    }
}

/// Runs `plico serve`.
pub fn run(args: ServeArgs) -> Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(data) = args.data {
        config.data_dir = Some(data);
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.dev {
        config
            .data_dir
            .get_or_insert_with(|| PathBuf::from(DEV_DATA_DIR));
        if !config.listen.ip().is_loopback() {
            let forced = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), config.listen.port());
            tracing::warn!(asked = %config.listen, using = %forced, "--dev listens on loopback only");
            config.listen = forced;
        }
    }

    let tls = match config.tls_files() {
        Some((cert, key)) => Some(TlsConfig::load(cert, key)?),
        None => None,
    };
    plico::check_listen(config.listen, tls.is_some())?;
    let Some(data_dir) = config.data_dir.clone() else {
        bail!("no data directory: pass --data DIR, or set data_dir in the config file or PLICO_DATA_DIR");
    };

    let (hsm, token): (Arc<dyn Hsm>, Option<Arc<Pkcs11Hsm>>) = match config.hsm.kind {
        HsmKind::Sim if args.dev => (Arc::new(open_dev(&data_dir)?), None),
        HsmKind::Sim => (Arc::new(open_production(&data_dir)?), None),
        HsmKind::Pkcs11 => {
            if args.dev {
                bail!("--dev runs the simulated HSM; remove [hsm] kind = \"pkcs11\" or --dev");
            }
            let hsm = Arc::new(open_pkcs11(&config, &data_dir)?);
            (hsm.clone(), Some(hsm))
        }
    };
    let pin_unseal = token.clone().filter(|_| config.hsm.pin_file.is_some());

    let dev_recipient = if args.dev && config.mailers.recipients.is_empty() {
        Some(vec![dev_print_recipient(&data_dir)?])
    } else {
        None
    };
    let print = config.mailers.print_setup(&data_dir, dev_recipient)?;
    if print.recipients.is_empty() {
        tracing::warn!(
            "no print facility recipients configured ([mailers] recipients): print runs are refused"
        );
    }
    let delivery = plico::delivery::Delivery::from_config(
        config.dispatch.as_ref(),
        args.dev,
        &data_dir,
        &print,
    )?;
    if delivery.is_none() {
        tracing::warn!("no [dispatch] configured: dispatch jobs are queued but not sent");
    }
    if super::restore::pending(&data_dir) {
        bail!(
            "{} holds a restored backup the custodians have not accepted ({}): run `plico \
             restore --accept-rollback --data {} --share FILE... --replaced-anchor \
             SEQ:HASH|unknown` first (a PKCS#11 token: `--config FILE` instead of \
             --replaced-anchor)",
            data_dir.display(),
            super::restore::PENDING_FILE,
            data_dir.display()
        );
    }
    let store = Arc::new(plico::backup::SnapshotStore::new(bootstrap::open_store(
        &data_dir,
        config.store.cache_mib,
    )?));
    let hsm_state =
        matches!(config.hsm.kind, HsmKind::Sim).then(|| data_dir.join(SimulatedHsm::STATE_FILE));
    let mut backups = plico::backup::Backups::new(store.clone(), hsm_state, &config.backup)?;
    if let Some(token) = token {
        backups = backups.with_token(token);
    }
    let mut state = AppState::with_settings(hsm.clone(), store, &config.settings())
        .context("cannot open the audit chain in the store")?
        .with_backups(backups)
        .with_print(print)
        .with_console(config.console.settings())
        .context("cannot build the console")?;
    if let Some(delivery) = delivery {
        state = state.with_delivery(delivery);
    }
    let audit_stream = match &config.audit.stream {
        Some(c) => Some(
            plico::audit_stream::AuditStream::start(c, state.store.clone(), state.audit.clone())
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    state.audit_stream = audit_stream.as_ref().map(|s| s.stats());
    let mut metrics = (*state.metrics)
        .clone()
        .with_store_dir(bootstrap::store_dir(&data_dir));
    match &config.metrics.token_file {
        Some(file) => {
            let token = files::read_token(file).context("[metrics] token_file")?;
            metrics = metrics.with_token(&token);
        }
        None => tracing::warn!(
            "no [metrics] token_file configured: GET /metrics answers 401 to every scraper"
        ),
    }
    state = state.with_metrics(metrics);
    if let Some(dir) = rekey_share_dir(&config, &data_dir, args.dev)? {
        state = state.with_rekey_share_dir(dir);
    }
    if args.dev {
        // A rekey that stays in dev mode (threshold 1) replaces the dev share; one to a
        // threshold of 2 or more turns the HSM into a production one (`serve --data` then).
        state.key_runner = Arc::new(
            state
                .key_runner
                .with_dev_share(data_dir.join(DEV_SHARE_FILE)),
        );
        if let Ok(spec) = std::env::var(DEV_TEST_PRINT_PAUSE_ENV) {
            plico::mailers::insecure_dev_test_pause(&spec).map_err(anyhow::Error::msg)?;
            tracing::warn!(spec = %spec, "print runs pause for a crash test ({DEV_TEST_PRINT_PAUSE_ENV}); --dev only");
        }
    }
    // Before any request: runs left `running` become `interrupted`, and the print directory
    // is brought to agree with the vault (partial outputs removed, missing manifests of
    // recorded files written, files of no run quarantined).
    plico::mailers::recover(&state.cms, &state.print)
        .context("cannot recover print runs and print files at start-up")?;
    if let (Some(hsm), Some(pin_file)) = (pin_unseal, config.hsm.pin_file.as_deref()) {
        auto_unseal(&state, &hsm, pin_file)?;
    }
    let mut admin_token = None;
    if args.dev {
        state
            .unsealed(&Actor::system("serve-dev"), "dev share")
            .context("cannot install the audit key of the dev HSM")?;
        let token_file = data_dir.join(bootstrap::ADMIN_TOKEN_FILE);
        if let Some(id) = bootstrap::bootstrap_admin(&state, &token_file)? {
            println!(
                "plico: created the first admin account {id}; its token is in {}",
                token_file.display()
            );
        }
        if token_file.exists() {
            admin_token = Some(token_file);
        }
    }

    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    if args.dev {
        print_dev_banner(&data_dir, admin_token.as_deref());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Signals are caught from here on, before anyone is told the service listens.
    let shutdown = {
        let _in_runtime = runtime.enter();
        plico::shutdown_signal()
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("plico: listening on {scheme}://{bound}");
    std::io::stdout().flush()?;

    let served = runtime.block_on(plico::serve(listener, state.clone(), tls, shutdown));
    if let Err(e) = state.shut_down() {
        tracing::error!(error = %e, "could not checkpoint the audit chain at shutdown");
    }
    if let Some(stream) = audit_stream {
        stream.stop();
    }
    state.seal();
    tracing::info!("hsm sealed");
    served?;
    Ok(())
}

/// Where the new shares of a rekey are written: `[keys] rekey_share_dir`, else with `--dev`
/// `DATA/rekey-shares`. Outside `--dev` it must be neither inside the data directory nor
/// around it: shares must not be kept (or backed up) with the HSM state.
fn rekey_share_dir(config: &Config, data_dir: &Path, dev: bool) -> Result<Option<PathBuf>> {
    let dir = match (&config.keys.rekey_share_dir, dev) {
        (Some(d), _) => d.clone(),
        (None, true) => data_dir.join("rekey-shares"),
        (None, false) => {
            tracing::info!("no [keys] rekey_share_dir configured: rekeys are refused");
            return Ok(None);
        }
    };
    if !dev {
        // Compared as resolved paths, the share directory made first if it does not exist
        // yet: neither may hold the other, or a backup of the data directory would carry the
        // HSM state together with the shares that open it.
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("[keys] rekey_share_dir {}", dir.display()))?;
        let shares = dir.canonicalize()?;
        let data = data_dir.canonicalize()?;
        if shares.starts_with(&data) || data.starts_with(&shares) {
            bail!(
                "[keys] rekey_share_dir {} and the data directory {} hold one another: new \
                 shares must not be kept with the HSM state; choose another directory",
                shares.display(),
                data.display()
            );
        }
    } else if config.keys.rekey_share_dir.is_none() {
        tracing::warn!(
            dir = %dir.display(),
            "rekey shares are written beside the data (--dev); not for production"
        );
    }
    Ok(Some(dir))
}

fn open_production(dir: &Path) -> Result<SimulatedHsm> {
    if !SimulatedHsm::exists(dir) {
        bail!(
            "no HSM in {}: create one with `plico init --data {} ...` (or use `plico serve --dev` \
             for a local development start)",
            dir.display(),
            dir.display()
        );
    }
    let hsm = SimulatedHsm::open(dir)
        .with_context(|| format!("cannot open the HSM in {}", dir.display()))?;
    if hsm.status().dev {
        bail!(
            "the HSM in {} is a development HSM (1-of-1 share, made with --dev): serve it with \
             `plico serve --dev`, or create a production HSM with `plico init` (threshold >= 2)",
            dir.display()
        );
    }
    tracing::info!(data = %dir.display(), "hsm opened sealed; waiting for custodian shares");
    Ok(hsm)
}

/// Opens the PKCS#11 token of `[hsm]`, sealed. A data directory that holds a simulated HSM
/// is refused: its store's keys are wrapped under that HSM, not under the token.
fn open_pkcs11(config: &Config, dir: &Path) -> Result<Pkcs11Hsm> {
    if SimulatedHsm::exists(dir) {
        bail!(
            "{} holds a simulated HSM ({}), but [hsm] kind = \"pkcs11\": a store belongs to \
             the HSM it was made with",
            dir.display(),
            SimulatedHsm::STATE_FILE
        );
    }
    let cfg = config.hsm.pkcs11()?;
    let hsm = Pkcs11Hsm::open(&cfg).with_context(|| {
        format!(
            "cannot open the plico HSM on pkcs#11 token {:?} ({})",
            cfg.token_label,
            cfg.module.display()
        )
    })?;
    if hsm.status().dev {
        bail!(
            "the HSM on pkcs#11 token {:?} is a development HSM (threshold 1); create a \
             production one with `plico init --hsm pkcs11` (threshold >= 2)",
            cfg.token_label
        );
    }
    tracing::info!(token = %cfg.token_label, mechanism = %cfg.mechanism, "pkcs#11 hsm opened sealed; waiting for custodian shares");
    Ok(hsm)
}

/// The opt-in auto-unseal of `[hsm] pin_file`: reads the token PIN from a file that only its
/// owner may read, unseals with it, and installs the audit key. Says loudly what it gives up.
fn auto_unseal(state: &AppState, hsm: &Pkcs11Hsm, pin_file: &Path) -> Result<()> {
    let pin = files::read_pin_file(pin_file).context("[hsm] pin_file")?;
    hsm.unseal_with_pin(&pin).with_context(|| {
        format!(
            "[hsm] pin_file {} does not open the token",
            pin_file.display()
        )
    })?;
    tracing::warn!(
        pin_file = %pin_file.display(),
        "INSECURE: the hsm was unsealed from [hsm] pin_file, without the custodians; whoever \
         reads that file can use every key"
    );
    if let Err(e) = state.unsealed(&Actor::system("serve"), "pin_file") {
        state.seal();
        return Err(e).context("cannot install the audit key after the pin_file unseal");
    }
    Ok(())
}

/// Opens (creating it on first use) the development HSM in `dir` and unseals it with the dev
/// share kept beside it.
fn open_dev(dir: &Path) -> Result<SimulatedHsm> {
    let share_path = dir.join(DEV_SHARE_FILE);
    let hsm = if SimulatedHsm::exists(dir) {
        SimulatedHsm::open(dir)
            .with_context(|| format!("cannot open the HSM in {}", dir.display()))?
    } else {
        files::private_dir(dir)?;
        if share_path.exists() {
            bail!(
                "{} exists but there is no HSM beside it; remove the stale dev share first",
                share_path.display()
            );
        }
        let opts = InitOptions {
            shares: 1,
            threshold: 1,
            dev: true,
        };
        let (hsm, report) = SimulatedHsm::init(dir, opts, &mut |shares: &[SecretString]| {
            let [share] = shares else {
                return Err(vault::Refusal::ShareCount {
                    expected: 1,
                    produced: shares.len(),
                }
                .into());
            };
            files::write_secret_line(&share_path, share.expose_secret())
                .and_then(|()| files::sync_dir(dir))
                .map_err(|e| {
                    vault::Error::Storage(format!("dev share {}: {e}", share_path.display()))
                })
        })
        .with_context(|| format!("cannot create the dev HSM in {}", dir.display()))?;
        tracing::info!(
            share_set = %report.share_set,
            root_kcv = %report.root_kcv,
            "created a development hsm"
        );
        hsm
    };
    let status = hsm.status();
    if !status.dev {
        bail!(
            "{} holds a production HSM ({} of {} shares; a development HSM rekeyed to a \
             threshold of 2 or more becomes one): serve it without --dev, `plico serve --data \
             {}`, and unseal it with its custodian shares (`plico unseal`)",
            dir.display(),
            status.threshold,
            status.shares,
            dir.display()
        );
    }
    if status.sealed {
        let share = files::read_share(&share_path)
            .with_context(|| format!("the dev HSM in {} cannot unseal itself", dir.display()))?;
        let pending = plico::api::keys::pending_dev_share(&share_path);
        let progress = match hsm.unseal(&share) {
            Ok(p) => p,
            Err(e) if pending.exists() => {
                // A rekey committed before its new dev share was moved into place.
                let next = files::read_share(&pending).with_context(|| {
                    format!("the dev HSM in {} cannot unseal itself", dir.display())
                })?;
                let p = hsm.unseal(&next).with_context(|| {
                    format!(
                        "dev share {} refused ({e}), and so is {}",
                        share_path.display(),
                        pending.display()
                    )
                })?;
                std::fs::rename(&pending, &share_path)
                    .and_then(|()| files::sync_dir(dir))
                    .with_context(|| format!("cannot move {} into place", pending.display()))?;
                tracing::warn!(file = %share_path.display(), "dev share of an interrupted rekey moved into place");
                p
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("dev share {} refused", share_path.display()))
            }
        };
        if progress.sealed {
            bail!("the dev share did not unseal the dev HSM");
        }
    }
    let _ = std::fs::remove_file(plico::api::keys::pending_dev_share(&share_path));
    Ok(hsm)
}

/// The recipient of the development print facility identity in `dir`, created (0600) on first
/// use. Print files of `--dev` are sealed to it, so they can be opened with
/// `age -d -i DIR/print-facility-dev.key`.
fn dev_print_recipient(dir: &Path) -> Result<String> {
    use std::str::FromStr;
    let path = dir.join(DEV_PRINT_KEY_FILE);
    files::private_dir(dir)?;
    if !path.exists() {
        let identity = age::x25519::Identity::generate();
        files::write_secret_line(&path, identity.to_string().expose_secret())
            .and_then(|()| files::sync_dir(dir))
            .with_context(|| format!("cannot write the dev print key {}", path.display()))?;
    }
    let text = files::read_share(&path)
        .with_context(|| format!("cannot read the dev print key {}", path.display()))?;
    let identity = age::x25519::Identity::from_str(text.expose_secret())
        .map_err(|_| anyhow::anyhow!("{} is not an age identity", path.display()))?;
    tracing::warn!(
        key = %path.display(),
        "print files are sealed to a DEVELOPMENT print facility key kept beside the data; not for \
         production: configure [mailers] recipients"
    );
    Ok(identity.to_public().to_string())
}

fn print_dev_banner(dir: &Path, admin_token: Option<&Path>) {
    let share = dir.join(DEV_SHARE_FILE);
    let token = admin_token.map_or_else(
        || "(none: the first admin's token file was moved away)".to_owned(),
        |p| p.display().to_string(),
    );
    let banner = format!(
        "\n\
         ==================================================================\n\
         !!  plico is running in DEVELOPMENT mode (--dev)                !!\n\
         !!  NOT FOR PRODUCTION. NEVER STORE REAL CODES HERE.            !!\n\
         !!                                                              !!\n\
         !!  - the HSM has a single 1-of-1 custodian share, kept ON DISK !!\n\
         !!    beside the data: anyone who can read the data directory   !!\n\
         !!    can unseal it                                             !!\n\
         !!  - it unsealed itself at start                               !!\n\
         !!  - without [mailers] recipients, print files are sealed to a !!\n\
         !!    development key kept beside the data                      !!\n\
         ==================================================================\n\
         data:        {}\n\
         dev share:   {}\n\
         admin token: {}\n",
        dir.display(),
        share.display(),
        token
    );
    eprintln!("{banner}");
    tracing::warn!(
        data = %dir.display(),
        "development mode: self-unsealing 1-of-1 hsm with its share on disk; not for production"
    );
}
