//! # plico — the service: HTTP API, configuration and wiring of the crates
//!
//! This crate is the only place that knows HTTP, configuration files, tokio and TLS. The
//! vault and the HSM are synchronous and know none of it.
//!
//! - [`app`] builds the axum [`Router`] from an [`AppState`]; it opens no socket, so tests
//!   drive it with `tower::ServiceExt::oneshot`.
//! - [`serve`] runs that router on a listener, with rustls when TLS is configured, until a
//!   shutdown future resolves ([`shutdown_signal`]: SIGINT or SIGTERM), then drains in-flight
//!   requests.
//! - [`edge`] is the listener's accept loop under [`serve`]: connection caps (in total, per
//!   client address, and a reserve for the probes and `/v1/sys/*`), deadlines for the TLS
//!   handshake, the request head and idle keep-alive, and a least request body rate.
//! - [`config`] reads the TOML file and `PLICO_*` environment overrides.
//! - [`api`] holds one module per resource and the single [`api::ApiError`]; its route table
//!   declares, for every endpoint, who may call it (public, or a list of roles).
//! - [`AppState`] holds the HSM, the store (sled in production), the audit chain, the
//!   accounts, the code vault with its import rules, and the card management side over it
//!   ([`cards::Cards`]: holder registry, card lifecycle, problem reports), and how mailers
//!   are printed ([`mailers::PrintSetup`], with the progress of running print runs). When the HSM
//!   becomes unsealed,
//!   [`AppState::unsealed`] installs the audit key; [`AppState::seal`] seals it again and drops
//!   every key held in memory; at shutdown [`AppState::shut_down`] writes a MAC'd checkpoint.
//! - [`expiry_sweeps`] revokes the cards past their expiry once a day (and once at start, as
//!   soon as the service is unsealed); [`serve`] runs it beside the listener.
//! - [`recover_outbox`] puts the outbox's jobs that a stopped process left `sending` back to
//!   `queued`, once, as soon as the service is unsealed; [`serve`] starts it with the listener.
//! - [`delivery`] the workers that send the outbox's jobs by e-mail and SMS (after that
//!   recovery), when [`AppState::delivery`] has couriers; [`serve`] runs them and stops them
//!   at shutdown. `/v1/dlr` takes the SMS gateway's delivery reports.
//! - [`AppState::keys`] the key ceremonies under dual control ([`vault::Ceremonies`]); their
//!   durable jobs (rotate, shred, discard) run on a blocking thread through
//!   [`api::keys::KeyRunner`], started by an approval and, after a restart, by [`key_jobs`]
//!   once the service is unsealed; [`serve`] runs it beside the listener.
//!
//! The command line (`src/main.rs` and `src/cli/`) is the binary's own and is not part of
//! this library.

pub mod api;
pub mod audit_stream;
pub mod backup;
pub mod config;
pub mod console;
pub mod delivery;
pub mod edge;
pub mod ids;
pub mod mailers;
pub mod metrics;
pub mod process;
pub mod tls;

use axum::Router;
use cards::Cards;
use cards::Date;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vault::CodeVault;
use vault::Store;
use vault::{lock, Clock};
use vault::{Accounts, Actor};
use vault::{AuditLog, DEFAULT_CHECKPOINT_EVERY};
use vault::{Ceremonies, CeremonyPolicy};
use vault::{CodePolicy, Hsm};
use vault::{ParseRules, SerialRule};

/// What every request handler can reach.
///
/// Cheap to clone: everything is shared behind an `Arc` and chosen at start-up (the
/// simulator today, a PKCS#11 token later; sled, or an in-memory store in tests).
#[derive(Debug, Clone)]
pub struct AppState {
    /// The custody seam.
    pub hsm: Arc<dyn Hsm>,
    /// The code vault over [`AppState::store`]: batches of sealed PIN/PUK records.
    pub codes: Arc<CodeVault>,
    /// The card management side over [`AppState::codes`]: holder registry, card lifecycle,
    /// problem reports, and the gate of code delivery. One per process: it serialises every
    /// change it makes.
    pub cms: Arc<Cards>,
    /// What an imported file must satisfy: the code policy (`[codes]`) and the serial rule
    /// (`[import.serial]`); also the rules of generation.
    pub import_rules: Arc<ParseRules>,
    /// Limits of uploads and of bulk work.
    pub bulk: api::BulkLimits,
    /// Days audit events are kept at least (`[audit] retention_days`).
    pub retention_days: u32,
    /// The store (opened once per process: sled locks its directory).
    pub store: Arc<dyn Store>,
    /// The audit chain over [`AppState::store`].
    pub audit: Arc<AuditLog>,
    /// Accounts over [`AppState::store`], audited in [`AppState::audit`].
    pub accounts: Arc<Accounts>,
    /// Per-account rate limits.
    pub limits: Arc<api::RateLimits>,
    /// How print files and the counter's page are made (`[mailers]`). Without recipients,
    /// print runs are refused.
    pub print: Arc<mailers::PrintSetup>,
    /// The print runs going in this process, with the mailers each has rendered so far.
    pub print_runs: Arc<api::mailers::RunProgress>,
    /// The couriers, renderers and retry policy of the delivery workers, and the token of
    /// `/v1/dlr` (`[dispatch]`). `None`: no worker runs and `/v1/dlr` answers 401.
    pub delivery: Option<Arc<delivery::Delivery>>,
    /// The key ceremonies (proposals, approvals, the key jobs) over [`AppState::codes`]. One
    /// per process. Rekeys to a single share are allowed only on a development HSM.
    pub keys: Arc<Ceremonies>,
    /// Runs the unfinished key job on a blocking thread, one at a time, and knows where new
    /// rekey shares are written (`[keys]`).
    pub key_runner: Arc<api::keys::KeyRunner>,
    /// The listener's connection caps and deadlines, applied by [`serve`].
    pub edge: edge::EdgeLimits,
    /// The unseal route's rate limits: per client address, and a global ceiling.
    pub unseal_rate: Arc<api::UnsealRate>,
    /// The browser console: its sessions, failed-login counts and templates.
    pub console: Arc<console::Console>,
    /// The counts of the audit stream (`[audit.stream]`), for the metrics; `None`: no stream.
    pub audit_stream: Option<Arc<audit_stream::StreamStats>>,
    /// Backups of the store and HSM state (`POST /v1/sys/backup`); `None`: refused.
    pub backups: Option<Arc<backup::Backups>>,
    /// The metrics counted as the process runs, and the scrape token (`/metrics`).
    pub metrics: Arc<metrics::Metrics>,
    /// Serialises unseal submissions, so that the audit key is installed exactly once per
    /// unseal.
    unseal_lock: Arc<Mutex<()>>,
    /// Wall-clock time for everything this state times: the clock of [`AppState::audit`]
    /// (and so of the records written with its events), of the approval windows and
    /// cryptoperiods of [`AppState::keys`], and of the delivery workers.
    pub clock: Arc<dyn Clock>,
}

/// Settings of an [`AppState`] that come from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Code lengths.
    pub codes: CodePolicy,
    /// Audit events between MAC'd checkpoints.
    pub checkpoint_every: u64,
    /// Days an audit event is kept at least.
    pub retention_days: u32,
    /// Calls per minute and account on sensitive routes (those that reveal tokens or codes).
    pub sensitive_per_minute: NonZeroU32,
    /// The shape of card serials.
    pub serial: SerialRule,
    /// Largest batch file accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Imports and generations running at once.
    pub max_concurrent_imports: u32,
    /// Largest holder registry file accepted, in bytes.
    pub registry_max_upload_bytes: u64,
    /// How long a key proposal waits for a second officer's approval, in ms (`[keys]
    /// approval_window_secs`).
    pub key_approval_window_ms: u64,
    /// Data keys rewrapped per chunk of a key job (`[keys] rewrap_chunk`).
    pub rewrap_chunk: usize,
    /// Pause after each rewrap chunk, in ms, to leave the HSM to delivery (`[keys]
    /// rewrap_pause_ms`; 0: none).
    pub rewrap_pause_ms: u64,
    /// The listener's connection caps and deadlines (`[limits]`).
    pub edge: edge::EdgeLimits,
    /// The unseal route's rate limits (`[limits]`).
    pub unseal: api::UnsealLimits,
}

/// Days audit events are kept at least when nothing says otherwise: 24 months.
pub const DEFAULT_RETENTION_DAYS: u32 = 730;

/// Largest batch file accepted when nothing says otherwise: 2 GiB (about 50 M CNS lines).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 2 << 30;

/// Largest holder registry file accepted when nothing says otherwise: 64 MiB (a few hundred
/// thousand holders; their parsed entries are held in memory until the file is applied).
pub const DEFAULT_REGISTRY_MAX_UPLOAD_BYTES: u64 = 64 << 20;

/// Imports and generations running at once when nothing says otherwise. Each one keeps both
/// cores busy and holds up to a run of sealed records in memory (about 100 MiB).
pub const DEFAULT_MAX_CONCURRENT_IMPORTS: u32 = 2;

/// Data keys rewrapped per chunk of a key job when nothing says otherwise. A chunk's cost is
/// mostly the durable write of the whole keyring, not the HSM calls, so larger chunks are
/// faster: with 4,002 data keys (10 M cards) a rotation took 0.23 s in chunks of 256 and
/// 1.6 s in chunks of 64 (`plico-bench rotate`), and each chunk holds the keyring lock for a
/// few tens of milliseconds either way.
pub const DEFAULT_REWRAP_CHUNK: usize = 256;

/// Sensitive calls per minute and account when nothing says otherwise.
pub const DEFAULT_SENSITIVE_PER_MINUTE: NonZeroU32 = match NonZeroU32::new(30) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

impl Default for Settings {
    fn default() -> Self {
        Settings {
            codes: CodePolicy::default(),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            retention_days: DEFAULT_RETENTION_DAYS,
            sensitive_per_minute: DEFAULT_SENSITIVE_PER_MINUTE,
            serial: SerialRule::CNS,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_concurrent_imports: DEFAULT_MAX_CONCURRENT_IMPORTS,
            registry_max_upload_bytes: DEFAULT_REGISTRY_MAX_UPLOAD_BYTES,
            key_approval_window_ms: vault::DEFAULT_WINDOW_MS,
            rewrap_chunk: DEFAULT_REWRAP_CHUNK,
            rewrap_pause_ms: 0,
            edge: edge::EdgeLimits::default(),
            unseal: api::UnsealLimits::default(),
        }
    }
}

impl AppState {
    /// State over `hsm` and `store` with the default settings.
    ///
    /// # Errors
    /// As [`AppState::with_settings`].
    pub fn new(hsm: Arc<dyn Hsm>, store: Arc<dyn Store>) -> vault::Result<Self> {
        Self::with_settings(hsm, store, &Settings::default())
    }

    /// State over `hsm` and `store`: opens the audit chain, the accounts and the code vault in
    /// the store. Opening the code vault removes the batches a crash left staging (logged at
    /// warn).
    ///
    /// If the HSM is already unsealed (a self-unsealed dev HSM, or in tests), call
    /// [`AppState::unsealed`] next, so that the audit key is installed.
    ///
    /// # Errors
    /// [`vault::Error::Storage`] if the store cannot be read (its audit head, or a batch record
    /// or directory, is damaged); [`vault::Error::Invalid`] or [`vault::Error::Code`] for
    /// unusable import rules.
    pub fn with_settings(
        hsm: Arc<dyn Hsm>,
        store: Arc<dyn Store>,
        settings: &Settings,
    ) -> vault::Result<Self> {
        Self::with_clock(hsm, store, settings, vault::system_clock())
    }

    /// [`AppState::with_settings`] timed by `clock` (tests move a
    /// [`vault::ManualClock`] instead of waiting).
    ///
    /// # Errors
    /// As [`AppState::with_settings`].
    pub fn with_clock(
        hsm: Arc<dyn Hsm>,
        store: Arc<dyn Store>,
        settings: &Settings,
        clock: Arc<dyn Clock>,
    ) -> vault::Result<Self> {
        let import_rules = ParseRules {
            policy: settings.codes,
            serial: settings.serial,
            ..ParseRules::default()
        };
        import_rules.validate()?;
        let audit = Arc::new(
            AuditLog::open(store.clone(), settings.checkpoint_every)?.with_clock(clock.clone()),
        );
        let accounts = Arc::new(Accounts::new(store.clone(), audit.clone()));
        let (codes, recovery) = CodeVault::open(store.clone())?;
        if !recovery.removed.is_empty() {
            let removed: Vec<String> = recovery.removed.iter().map(|b| b.to_string()).collect();
            tracing::warn!(
                batches = %removed.join(","),
                "removed batches an interrupted import or generation left staging"
            );
        }
        tracing::info!(committed = recovery.committed, "code vault opened");
        let codes = Arc::new(codes);
        let cms = Arc::new(Cards::new(codes.clone()).with_clock(clock.clone()));
        let keys = Ceremonies::new(
            codes.clone(),
            audit.clone(),
            CeremonyPolicy {
                window_ms: settings.key_approval_window_ms.max(1),
                chunk: settings.rewrap_chunk.max(1),
                // The HSM records whether it is a development one (`--dev`, 1-of-1): only
                // there may a rekey go down to a single share.
                insecure_allow_single_share: hsm.status().dev,
                ..CeremonyPolicy::default()
            },
        )
        .with_cards(cms.clone());
        let mut bulk =
            api::BulkLimits::new(settings.max_upload_bytes, settings.max_concurrent_imports);
        bulk.registry_max_upload_bytes = settings.registry_max_upload_bytes;
        let metrics = Arc::new(metrics::Metrics::new(&*store));
        Ok(AppState {
            metrics,
            hsm,
            cms,
            codes,
            import_rules: Arc::new(import_rules),
            bulk,
            retention_days: settings.retention_days,
            store,
            audit,
            accounts,
            limits: Arc::new(api::RateLimits::new(settings.sensitive_per_minute)),
            print: Arc::new(default_print_setup()?),
            print_runs: Arc::default(),
            delivery: None,
            keys: Arc::new(keys),
            key_runner: Arc::new(api::keys::KeyRunner::new(Duration::from_millis(
                settings.rewrap_pause_ms,
            ))),
            edge: settings.edge,
            unseal_rate: Arc::new(api::UnsealRate::new(settings.unseal)),
            console: Arc::new(new_console(
                console::ConsoleSettings::default(),
                clock.clone(),
            )?),
            backups: None,
            audit_stream: None,
            unseal_lock: Arc::new(Mutex::new(())),
            clock,
        })
    }

    /// The same state with backups ([`backup::Backups`]: its store must be the state's store).
    pub fn with_backups(mut self, backups: backup::Backups) -> Self {
        self.backups = Some(Arc::new(backups));
        self
    }

    /// The same state with `setup` for print runs and the counter's page (from `[mailers]`).
    pub fn with_print(mut self, setup: mailers::PrintSetup) -> Self {
        self.print = Arc::new(setup);
        self
    }

    /// The same state with a console of these settings (and no session yet).
    ///
    /// # Errors
    /// [`vault::Error::Invalid`] if an embedded template does not parse.
    pub fn with_console(mut self, settings: console::ConsoleSettings) -> vault::Result<Self> {
        self.console = Arc::new(new_console(settings, self.clock.clone())?);
        Ok(self)
    }

    /// The same state with these delivery workers' settings (from `[dispatch]`).
    pub fn with_delivery(mut self, delivery: delivery::Delivery) -> Self {
        self.delivery = Some(Arc::new(delivery));
        self
    }

    /// The same state with these metrics (a scrape token, the store's directory); what was
    /// counted so far is kept.
    pub fn with_metrics(mut self, metrics: metrics::Metrics) -> Self {
        self.metrics = Arc::new(metrics);
        self
    }

    /// The same state writing the new shares of a rekey into `dir` (`[keys] rekey_share_dir`),
    /// one file per share under a folder named after the proposal. Without it, rekeys are
    /// refused.
    pub fn with_rekey_share_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.key_runner = Arc::new(self.key_runner.with_share_dir(dir));
        self
    }

    /// To be called once the HSM has become unsealed: unwraps (creating it on first use) the
    /// audit key, installs it, and records an `hsm.unseal` event by `actor`.
    ///
    /// # Errors
    /// HSM and store errors. The caller should seal the HSM again: an unsealed service that
    /// cannot audit must not work.
    pub fn unsealed(&self, actor: &Actor, how: &str) -> vault::Result<()> {
        self.audit.unlock(self.hsm.clone())?;
        self.audit
            .append(actor.event("hsm.unseal", "hsm").detail("how", how))?;
        Ok(())
    }

    /// Runs `f` while no other unseal submission runs.
    pub(crate) fn with_unseal_lock<T>(&self, f: impl FnOnce() -> T) -> T {
        // The lock guards no data, only the ordering of submissions: poison is harmless.
        let _guard = lock(&self.unseal_lock);
        f()
    }

    /// Seals the HSM and drops every key the service holds in memory (the code vault's
    /// unwrapped data keys and index key, the registry's holder key). The audit key stays until [`AppState::shut_down`]
    /// or the next unseal: sealing is itself audited by the callers that may.
    pub fn seal(&self) {
        self.hsm.seal();
        self.codes.forget_keys();
        self.cms.forget_keys();
    }

    /// At shutdown: a MAC'd checkpoint of the audit chain, then the audit key and the code
    /// vault's keys are dropped.
    ///
    /// # Errors
    /// Store errors from writing the checkpoint.
    pub fn shut_down(&self) -> vault::Result<()> {
        let checkpoint = self.audit.checkpoint();
        let dropped = self.audit.set_key(None);
        self.codes.forget_keys();
        self.cms.forget_keys();
        checkpoint.and(dropped)
    }
}

fn new_console(
    settings: console::ConsoleSettings,
    clock: Arc<dyn Clock>,
) -> vault::Result<console::Console> {
    console::Console::new(settings, clock)
        .map_err(|e| vault::Error::Invalid(format!("console templates: {e}")))
}

/// The print setup of a state made without `[mailers]`: built-in templates and texts, and no
/// recipient, so print runs are refused until [`AppState::with_print`] gives one.
fn default_print_setup() -> vault::Result<mailers::PrintSetup> {
    let templates = dispatch::Templates::builtin()
        .map_err(|e| vault::Error::Invalid(format!("built-in mailer templates: {e}")))?;
    Ok(mailers::PrintSetup {
        templates: Arc::new(templates),
        layout: dispatch::Layout::default(),
        issuer: dispatch::Issuer::default(),
        out_dir: std::path::PathBuf::from("print"),
        recipients: Vec::new(),
        per_file: config::DEFAULT_MAILERS_PER_FILE,
    })
}

/// The whole HTTP API as a router, with its limits (body size, timeout, authentication, rate)
/// applied to every route, and the browser console beside it ([`console`]).
pub fn app(state: AppState) -> Router {
    api::router(state)
}

/// How long in-flight requests may take to finish once shutdown has begun.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Plain HTTP is allowed on loopback only.
    #[error(
        "refusing to listen on {0} without tls: configure [tls] cert and key, or listen on a \
         loopback address such as 127.0.0.1"
    )]
    PlainNotLoopback(SocketAddr),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks that `addr` may be listened on: any address with TLS, loopback only without.
///
/// # Errors
/// [`ServeError::PlainNotLoopback`] for a non-loopback address without TLS.
pub fn check_listen(addr: SocketAddr, tls: bool) -> Result<(), ServeError> {
    if tls || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ServeError::PlainNotLoopback(addr))
    }
}

/// Serves [`app`]`(state)` on `listener` until `shutdown` resolves, then stops accepting and
/// lets in-flight requests finish for up to [`SHUTDOWN_GRACE`].
///
/// With `tls` the listener speaks HTTPS only. Without it the listener must be on a loopback
/// address ([`check_listen`]), checked again here so no caller can skip it.
///
/// # Errors
/// [`ServeError::PlainNotLoopback`]; [`ServeError::Io`] if the listener fails.
pub async fn serve<F>(
    listener: std::net::TcpListener,
    state: AppState,
    tls: Option<tls::TlsConfig>,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    check_listen(addr, tls.is_some())?;

    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining requests");
        let _ = stop.send(true);
    });

    let sweeps = tokio::spawn(expiry_sweeps(state.clone(), SWEEP_CHECK_EVERY));
    let key_jobs_task = tokio::spawn(key_jobs(state.clone(), KEY_JOBS_CHECK_EVERY));
    let runner = state.key_runner.clone();
    // The workers await the recovery themselves; without them it runs alone.
    let (recovery, workers) = match state.delivery.clone().filter(|d| d.has_couriers()) {
        Some(d) => (
            None,
            Some(tokio::spawn(delivery::run_workers(
                state.clone(),
                d,
                stopping.clone(),
            ))),
        ),
        None => (
            Some(tokio::spawn(recover_outbox(
                state.clone(),
                RECOVER_CHECK_EVERY,
            ))),
            None,
        ),
    };
    let limits = state.edge;
    // Behind TLS the console's cookies are `Secure`.
    let state = if tls.is_some() && !state.console.settings.secure_cookies {
        let settings = console::ConsoleSettings {
            secure_cookies: true,
            ..state.console.settings
        };
        state
            .with_console(settings)
            .map_err(std::io::Error::other)?
    } else {
        state
    };
    let router = app(state);
    match &tls {
        Some(t) => {
            t.reload_on_sighup();
            tracing::info!(%addr, "serving https (SIGHUP reloads the certificate and key)");
        }
        None => {
            tls::ignore_sighup();
            tracing::info!(%addr, "serving plain http on loopback");
        }
    }
    let served = edge::run(
        listener,
        router,
        tls.map(|t| t.acceptor()),
        limits,
        stopping,
        SHUTDOWN_GRACE,
    )
    .await;
    sweeps.abort();
    key_jobs_task.abort();
    // A running key job stops after its current chunk; it carries on at the next start.
    runner.stop();
    if let Some(recovery) = recovery {
        recovery.abort();
    }
    if let Some(workers) = workers {
        if tokio::time::timeout(SHUTDOWN_GRACE, workers).await.is_err() {
            tracing::warn!("delivery workers did not stop in time");
        }
    }
    served?;
    tracing::info!("server stopped");
    Ok(())
}

/// How often [`serve`]'s expiry sweeper wakes up to see whether a sweep is due.
pub const SWEEP_CHECK_EVERY: Duration = Duration::from_secs(60);

/// The daily expiry sweep: wakes every `check_every`, and when the service is unsealed (the
/// audit key is installed) and no sweep has run yet on today's UTC date, revokes every card
/// past its expiry ([`Cards::sweep_expired`], audited there: one `card.revoke` event a card, by
/// the system actor, request id `expiry-sweep`). So the first sweep runs at start, or within
/// `check_every` of the custodians' unseal, and then once a day. Never returns; [`serve`]
/// aborts it at shutdown.
///
/// A failed sweep is logged and retried at the next wake-up. Only the count of revoked cards
/// is logged: serials go to the audit chain, not to the log.
pub async fn expiry_sweeps(state: AppState, check_every: Duration) {
    let mut ticks = tokio::time::interval(check_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept_on: Option<Date> = None;
    loop {
        ticks.tick().await;
        if !state.audit.has_key() {
            continue;
        }
        let today = state.cms.today();
        if swept_on == Some(today) {
            continue;
        }
        match sweep_once(&state, today).await {
            Ok(revoked) => {
                swept_on = Some(today);
                tracing::info!(revoked, %today, "expiry sweep done");
            }
            Err(e) => {
                tracing::error!(
                    code = e.code().as_str(),
                    "expiry sweep failed; retrying later"
                );
            }
        }
    }
}

/// One expiry sweep for `today`: the number of cards it revoked.
///
/// # Errors
/// The sweep's store or audit error, mapped (cards revoked before it stay revoked).
pub async fn sweep_once(state: &AppState, today: Date) -> Result<usize, api::ApiError> {
    let cms = state.cms.clone();
    let audit = state.audit.clone();
    let revoked =
        api::blocking(move || cms.sweep_expired(&audit, today, &Actor::system("expiry-sweep")))
            .await?;
    Ok(revoked.len())
}

/// How often [`recover_outbox`] looks whether the service is unsealed yet.
pub const RECOVER_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The outbox's start-up recovery: waits (looking every `check_every`) until the service is
/// unsealed (the audit key is installed: recovery writes `dispatch.recover` events), then puts
/// every job found `sending` — its worker died with the previous process — back to `queued`
/// with the same idempotency key ([`Cards::recover`]), logs how many, and returns that count. A
/// failed recovery is logged and retried at the next look.
///
/// It runs once per process, before any worker may claim a job: a job claimed by a live
/// worker is `sending` too, and would be sent twice. So whatever starts the workers awaits
/// this first. [`serve`] starts it beside the listener; the API itself does not need it.
pub async fn recover_outbox(state: AppState, check_every: Duration) -> u64 {
    let mut ticks = tokio::time::interval(check_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !state.audit.has_key() {
            continue;
        }
        let cms = state.cms.clone();
        let audit = state.audit.clone();
        match api::blocking(move || cms.recover(&audit)).await {
            Ok(requeued) => {
                tracing::info!(
                    requeued,
                    "outbox recovered: dispatch jobs left sending are queued again"
                );
                return requeued;
            }
            Err(e) => {
                tracing::error!(
                    code = e.code().as_str(),
                    "outbox recovery failed; retrying later"
                );
            }
        }
    }
}

/// How often [`key_jobs`] looks for an unfinished key job to carry on.
pub const KEY_JOBS_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Carries on unfinished key jobs (rotate, shred, discard): wakes every `check_every`, and when
/// the service is unsealed (the audit key is installed and the HSM open) and a job is
/// unfinished with no thread running it — a job a stopped process left, or one an error
/// interrupted — runs it on a blocking thread ([`api::keys::KeyRunner::spawn`]). So after a
/// crash the job resumes within `check_every` of the unseal. Never returns; [`serve`] aborts it
/// at shutdown.
pub async fn key_jobs(state: AppState, check_every: Duration) {
    let mut ticks = tokio::time::interval(check_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !state.audit.has_key() || state.hsm.status().sealed || state.key_runner.is_running() {
            continue;
        }
        if !state.key_runner.retry_due() {
            continue;
        }
        let keys = state.keys.clone();
        match api::blocking(move || keys.job()).await {
            Ok(Some(job)) if job.unfinished() => {
                tracing::info!(
                    proposal = %job.id,
                    op = job.op.name(),
                    phase = ?job.phase,
                    done = job.done,
                    total = job.total,
                    "resuming an unfinished key job"
                );
                state.key_runner.spawn(&state);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(
                code = e.code().as_str(),
                "cannot read the key jobs; retrying later"
            ),
        }
    }
}

/// SIGINT and SIGTERM, caught from the moment [`shutdown_signal`] returns (it must be called
/// inside a runtime): the server announces that it listens only after this, so a signal that
/// comes right after the announcement stops it gracefully instead of killing it.
///
/// If the signal handlers cannot be installed (which only happens when the runtime has no
/// signal driver), it logs the failure and the future never resolves: the process then stops
/// only when killed, which is no worse than having no graceful shutdown.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(int), Ok(term)) => Some((int, term)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; graceful shutdown is off");
            None
        }
    };
    async move {
        let Some((mut int, mut term)) = handlers else {
            return std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = int.recv() => tracing::info!("received SIGINT"),
            _ = term.recv() => tracing::info!("received SIGTERM"),
        }
    }
}
