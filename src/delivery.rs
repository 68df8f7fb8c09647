//! The delivery workers: where the vault's outbox meets the couriers of crate `dispatch`.
//!
//! [`run_workers`] waits for the outbox's start-up recovery ([`crate::recover_outbox`]: a job
//! left `sending` by a dead process must be queued again before any worker claims), then
//! loops over the lanes, one a channel with a courier, each with a semaphore capping its jobs
//! in flight. For a lane with free slots, on the blocking pool, it claims that many due jobs
//! of the lane's channel and releases them through the audited gate, in one flushed commit
//! ([`cards::Cards::claim_and_release`]: card `active`, contact registered and not changed
//! since the last identification, one `card.codes_release` event a job), and renders each
//! job's part by e-mail or SMS. Then each message is
//! sent by its own task on tokio, and a marker task records the outcomes: the `sent` jobs
//! waiting at that moment in one commit ([`cards::Cards::mark_sent_many`]), failures one by
//! one (temporary or permanent, with the policy's backoff, `dead` and fallback). A job the
//! vault refuses at release because of the card's state (suspended, revoked, codes gone,
//! contact missing or changed) comes back already `cancelled` with that reason, in the
//! release's commit: it is not a channel failure, is not marked failed and never falls back.
//! Any other refusal at release is a permanent failure: it goes `dead` and nothing is sent.
//!
//! Only channels with a courier here are claimed: `mailer` jobs wait for a print run, and a
//! channel turned off keeps its jobs queued (the overdue alert shows them).
//!
//! A job keeps its slot in the lane until its outcome is recorded, so a crash sends again at
//! most a lane's `max_in_flight` messages: those sent but not yet marked `sent` (measured by
//! `tests/service/dispatch_crash.rs`).
//!
//! # Security
//! Codes and contacts exist in clear only inside [`cards::JobRelease`]
//! and the rendered [`Outgoing`] (zeroizing, redacted `Debug`), for one job, and are dropped
//! once the courier returns. Logs carry the job id, channel, part and outcome — never a code,
//! a contact or a serial. Failure reasons kept on the job lose addresses here and digit runs
//! in the vault. The `--dev` spool courier ([`dispatch::courier::spool`]) writes codes in
//! clear and says so at start.

use crate::api;
use crate::config::{DispatchConfig, SmtpTls};
use crate::mailers::{to_dispatch, PrintSetup};
use crate::AppState;
use cards::{Channel, Job, JobState, OutboxPolicy};
use cards::{JobRelease, ReleaseDestination};
use dispatch::courier::retry::Throttled;
use dispatch::courier::sms::{KannelConfig, KannelCourier};
use dispatch::courier::smtp::{SmtpConfig, SmtpCourier, SmtpSecurity};
use dispatch::courier::spool::InsecureSpoolCourier;
use dispatch::courier::{
    Courier, Destination, FailureReason, FailureScope, IdempotencyKey, Outgoing, SendError,
};
use dispatch::{Addressee, EmailRenderer, Mailer, Plan, SmsRenderer};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// How long the claim loop sleeps when nothing is due, by default.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

/// Jobs claimed at once, at most, by default.
pub const DEFAULT_BATCH: usize = 64;

/// `sent` outcomes marked in one commit, at most.
const MARK_BATCH: usize = 512;

/// How often the overdue alert looks.
const OVERDUE_EVERY: Duration = Duration::from_secs(60);

/// A configuration that cannot make couriers.
#[derive(Debug, thiserror::Error)]
#[error("[dispatch]: {0}")]
pub struct DeliveryError(String);

/// First pause of a lane after a relay-wide failure, by default; doubles each failure in a row.
pub const DEFAULT_PAUSE_BASE: Duration = Duration::from_secs(1);

/// Longest pause of a lane, by default.
pub const DEFAULT_PAUSE_CAP: Duration = Duration::from_secs(300);

/// One channel's courier and its cap of jobs in flight.
#[derive(Debug)]
struct Lane {
    channel: Channel,
    courier: Arc<dyn Courier>,
    slots: Arc<Semaphore>,
    pause: Mutex<LanePause>,
}

/// A lane's pause after relay-wide failures (TLS, credentials, connection, capability).
#[derive(Debug, Default)]
struct LanePause {
    /// Claim nothing before this.
    until: Option<tokio::time::Instant>,
    /// Relay-wide failures since the last success (the backoff's exponent).
    in_a_row: u32,
    /// The pause's end as Unix ms (the paused jobs are due then).
    resume_ms: u64,
}

/// What the workers have done since the process started, and the overdue parts found by the
/// last check: the figures of `GET /v1/dispatch/metrics`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Jobs marked `sent`.
    pub sent: AtomicU64,
    /// Temporary failures (the job backs off and is tried again).
    pub failed: AtomicU64,
    /// Jobs that went `dead`.
    pub dead: AtomicU64,
    /// Parts not delivered after `overdue_after`, at the last check (at most 1,000 counted).
    pub overdue: AtomicU64,
    /// When the overdue check last ran (Unix ms; 0: not yet).
    pub overdue_checked_ms: AtomicU64,
    /// Lane pauses (relay-wide failures that started a pause).
    pub lane_pauses: AtomicU64,
    /// Failures by reason code (`tls_untrusted`, `rejected_recipient`, …), lane-wide ones
    /// included.
    pub by_reason: Mutex<BTreeMap<&'static str, u64>>,
}

impl DeliveryStats {
    fn count_reason(&self, code: FailureReason) {
        // A poisoned lock only means a panic while adding one; the map is still a map.
        let mut map = self
            .by_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(code.as_str()).or_default() += 1;
    }

    /// The failure counts by reason code, in code order.
    pub fn failures_by_reason(&self) -> Vec<(&'static str, u64)> {
        let map = self
            .by_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().map(|(r, n)| (*r, *n)).collect()
    }
}

/// The couriers, renderers and policy of the workers; also the secret of `/v1/dlr`.
pub struct Delivery {
    lanes: Vec<Lane>,
    /// The workers' counters and the overdue gauge.
    pub stats: Arc<DeliveryStats>,
    email: EmailRenderer,
    sms: SmsRenderer,
    /// Retries, backoff, `dead` and fallback.
    pub policy: OutboxPolicy,
    /// Jobs claimed at once, at most.
    pub batch: usize,
    /// Sleep of the claim loop when nothing is due.
    pub poll: Duration,
    /// Parts not delivered after this long are logged as overdue.
    pub overdue_after: Duration,
    /// The token `/v1/dlr` requires; `None`: `/v1/dlr` answers 401 to everyone.
    dlr_token: Option<SecretString>,
    /// First pause of a lane after a relay-wide failure; doubles each one in a row.
    pub pause_base: Duration,
    /// Longest pause of a lane.
    pub pause_cap: Duration,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("lanes", &self.lanes)
            .field("policy", &self.policy)
            .field("batch", &self.batch)
            .field("poll", &self.poll)
            .field("dlr_token", &self.dlr_token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// No courier yet, the renderers of `print` (its templates and issuer), this policy.
    pub fn new(print: &PrintSetup, policy: OutboxPolicy) -> Delivery {
        Delivery {
            lanes: Vec::new(),
            stats: Arc::default(),
            email: EmailRenderer::new(print.templates.clone(), print.issuer.clone()),
            sms: SmsRenderer::new(print.templates.clone(), print.issuer.clone()),
            policy,
            batch: DEFAULT_BATCH,
            poll: DEFAULT_POLL,
            overdue_after: Duration::from_secs(86_400),
            dlr_token: None,
            pause_base: DEFAULT_PAUSE_BASE,
            pause_cap: DEFAULT_PAUSE_CAP,
        }
    }

    /// Sends `channel`'s jobs (`Email` or `Sms`) by `courier`, `max_in_flight` at once.
    pub fn with_courier(
        mut self,
        channel: Channel,
        courier: Arc<dyn Courier>,
        max_in_flight: usize,
    ) -> Delivery {
        self.lanes.retain(|l| l.channel != channel);
        self.lanes.push(Lane {
            channel,
            courier,
            slots: Arc::new(Semaphore::new(max_in_flight.max(1))),
            pause: Mutex::default(),
        });
        self
    }

    /// The token `/v1/dlr` requires.
    pub fn with_dlr_token(mut self, token: SecretString) -> Delivery {
        self.dlr_token = Some(token);
        self
    }

    /// The token `/v1/dlr` requires, if any.
    pub fn dlr_token(&self) -> Option<&SecretString> {
        self.dlr_token.as_ref()
    }

    /// Whether any channel has a courier.
    pub fn has_couriers(&self) -> bool {
        !self.lanes.is_empty()
    }

    /// Whether `channel` has a courier (its jobs are claimed here).
    pub fn sends(&self, channel: Channel) -> bool {
        self.lanes.iter().any(|l| l.channel == channel)
    }

    /// The delivery of `[dispatch]`: SMTP and Kannel couriers, each throttled to its rate.
    /// With `dev`, a channel without its relay (or every channel, with `spool_dir`, or with no
    /// `[dispatch]` at all) uses the INSECURE spool in `spool_dir` (default `data_dir/spool`).
    /// `None` when nothing is configured and not `dev`.
    ///
    /// # Errors
    /// [`DeliveryError`] for a spool outside `--dev`, or a courier that cannot be made.
    pub fn from_config(
        config: Option<&DispatchConfig>,
        dev: bool,
        data_dir: &Path,
        print: &PrintSetup,
    ) -> Result<Option<Delivery>, DeliveryError> {
        let default = DispatchConfig::default();
        let c = match (config, dev) {
            (None, false) => return Ok(None),
            (None, true) => &default,
            (Some(c), _) => c,
        };
        if c.spool_dir.is_some() && !dev {
            return Err(DeliveryError(
                "`spool_dir` writes codes in clear and is for `serve --dev` only".into(),
            ));
        }
        let policy = OutboxPolicy {
            max_attempts: c.max_attempts.max(1),
            backoff_base_ms: c.backoff_base_ms.max(1),
            backoff_max_ms: c.backoff_cap_ms.max(c.backoff_base_ms),
            ..OutboxPolicy::default()
        };
        let mut d = Delivery::new(print, policy);
        d.overdue_after = Duration::from_secs(c.overdue_after_secs.max(1));
        d.pause_base = Duration::from_millis(c.pause_base_ms.max(1));
        d.pause_cap = Duration::from_millis(c.pause_cap_ms.max(c.pause_base_ms.max(1)));
        let spool_dir: PathBuf = c
            .spool_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("spool"));
        let rate = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let bad = |e: dispatch::courier::ConfigError| DeliveryError(e.to_string());
        let spool = |channel: dispatch::Channel| -> Result<Arc<dyn Courier>, DeliveryError> {
            tracing::warn!(
                dir = %spool_dir.display(),
                channel = channel.as_str(),
                "INSECURE: --dev spools {} messages to files WITH THE CODES IN CLEAR; \
                 configure [dispatch.smtp] / [dispatch.sms] to send them",
                channel.as_str()
            );
            let from = c
                .smtp
                .as_ref()
                .map_or("plico@localhost".to_owned(), |s| s.from.clone());
            Ok(Arc::new(
                InsecureSpoolCourier::new(&spool_dir, channel, from).map_err(bad)?,
            ))
        };
        if c.email_enabled {
            let courier: Option<Arc<dyn Courier>> = match (&c.smtp, dev) {
                (Some(s), _) if c.spool_dir.is_none() => {
                    let mut sc = SmtpConfig::new(s.host.clone(), s.port, s.from.clone());
                    sc.security = match s.tls {
                        SmtpTls::None => SmtpSecurity::InsecurePlaintext,
                        SmtpTls::Starttls => SmtpSecurity::StartTls,
                        SmtpTls::Tls => SmtpSecurity::Tls,
                    };
                    sc.max_connections = s.max_connections.max(1);
                    smtp_settings(s, &mut sc)?;
                    if s.tls == SmtpTls::None {
                        tracing::warn!(
                            "[dispatch.smtp] tls = \"none\": e-mails cross the network in clear"
                        );
                    }
                    Some(Arc::new(SmtpCourier::new(sc).map_err(bad)?))
                }
                (_, true) => Some(spool(dispatch::Channel::Email)?),
                (None, false) => None,
                (Some(_), false) => None,
            };
            if let Some(courier) = courier {
                let throttled = Arc::new(Throttled::new(
                    courier,
                    rate(c.email_per_second),
                    rate(c.email_per_second),
                ));
                d = d.with_courier(Channel::Email, throttled, c.max_in_flight);
            }
        }
        if let Some(token) = c.sms.as_ref().and_then(|s| s.dlr_token.clone()) {
            d = d.with_dlr_token(SecretString::from(token));
        }
        if c.sms_enabled {
            let courier: Option<Arc<dyn Courier>> = match (&c.sms, dev) {
                (Some(s), _) if c.spool_dir.is_none() => {
                    let mut kc = KannelConfig::new(
                        s.sendsms_url.clone(),
                        s.username.clone(),
                        SecretString::from(s.password.clone()),
                        s.from.clone(),
                    );
                    kc.dlr_url = s.dlr_url.clone();
                    kc.tls_ca_pem = s.ca_file.as_ref().map(read_ca_file).transpose()?;
                    kc.max_in_flight = c.max_in_flight.max(1);
                    Some(Arc::new(KannelCourier::new(kc).map_err(bad)?))
                }
                (_, true) => Some(spool(dispatch::Channel::Sms)?),
                (None, false) => None,
                (Some(_), false) => None,
            };
            if let Some(courier) = courier {
                let throttled = Arc::new(Throttled::new(
                    courier,
                    rate(c.sms_per_second),
                    rate(c.sms_per_second),
                ));
                d = d.with_courier(Channel::Sms, throttled, c.max_in_flight);
            }
        }
        Ok(Some(d))
    }
}

/// The optional `[dispatch.smtp]` keys into the courier's configuration: the CA file and the
/// password file are read here, at start (a missing or empty file is an error naming the key).
fn smtp_settings(s: &crate::config::SmtpSection, sc: &mut SmtpConfig) -> Result<(), DeliveryError> {
    if let Some(path) = &s.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            DeliveryError(format!(
                "[dispatch.smtp] `ca_file` {}: {}",
                path.display(),
                e.kind()
            ))
        })?;
        sc.tls_ca_pem = Some(pem);
    }
    if let (Some(user), Some(path)) = (&s.username, &s.password_file) {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            DeliveryError(format!(
                "[dispatch.smtp] `password_file` {}: {}",
                path.display(),
                e.kind()
            ))
        })?);
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(DeliveryError(format!(
                "[dispatch.smtp] `password_file` {}: empty",
                path.display()
            )));
        }
        sc.auth = Some((user.clone(), SecretString::from(password.to_owned())));
    }
    if let Some(name) = &s.ehlo_name {
        sc.hello_name = name.clone();
    }
    sc.return_path = s.return_path.clone();
    Ok(())
}

/// Resolves when `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A failure: its reason code (which decides retry, end or lane pause), and a reason without
/// codes or contacts.
#[derive(Debug, Clone)]
struct Failure {
    code: FailureReason,
    reason: String,
}

impl Failure {
    fn new(code: FailureReason, reason: impl Into<String>) -> Failure {
        Failure {
            code,
            reason: reason.into(),
        }
    }

    fn from_send(e: &SendError) -> Failure {
        Failure::new(e.code(), without_addresses(e.reason()))
    }
}

/// A job's end as the marker records it: the courier's id for the message, or a failure; and
/// the job's slot in its lane, given back once the outcome is recorded.
type Outcome = (Job, Result<String, Failure>, Option<OwnedSemaphorePermit>);

/// The workers of `delivery` over `state`: waits for the outbox recovery, then claims and
/// sends until `shutdown` turns true; then claims no more, lets the jobs in flight finish (up
/// to [`crate::SHUTDOWN_GRACE`]), records their outcomes and returns. Jobs cut short stay
/// `sending` and are queued again by the next start's recovery, with the same idempotency key.
///
/// Each lane's free slots are claimed, released and rendered together on the blocking pool
/// (one claim write, one audited and flushed release commit), then sent one task a job; a
/// marker task records outcomes as they come, the `sent` ones together (one commit each
/// time it wakes). So a store flush serves a whole batch, not one message.
pub async fn run_workers(
    state: AppState,
    delivery: Arc<Delivery>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = crate::recover_outbox(state.clone(), crate::RECOVER_CHECK_EVERY) => {}
        _ = stopped(&mut shutdown) => return,
    }
    let channels: Vec<&str> = delivery.lanes.iter().map(|l| l.channel.as_str()).collect();
    tracing::info!(channels = %channels.join(","), "delivery workers started");
    let (outcomes, received) = mpsc::unbounded_channel::<Outcome>();
    let freed = Arc::new(Notify::new());
    let marker = tokio::spawn(mark_outcomes(
        state.clone(),
        delivery.clone(),
        received,
        freed.clone(),
    ));
    let mut tasks = JoinSet::new();
    let mut overdue_at = tokio::time::Instant::now();
    while !*shutdown.borrow() {
        while tasks.try_join_next().is_some() {}
        if tokio::time::Instant::now() >= overdue_at {
            overdue_at += OVERDUE_EVERY;
            overdue_alert(&state, &delivery).await;
        }
        let mut claimed_any = false;
        let mut any_free = false;
        // Sealed (an emergency seal, or not yet unsealed): claim nothing new; sends under way
        // finish and are recorded; claiming resumes after the unseal.
        let sealed = state.hsm.status().sealed;
        let now = tokio::time::Instant::now();
        for lane in delivery
            .lanes
            .iter()
            .filter(|_| !sealed)
            .filter(|l| lock_pause(l).until.is_none_or(|until| until <= now))
        {
            let mut permits = Vec::new();
            while permits.len() < delivery.batch {
                match lane.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            if permits.is_empty() {
                continue;
            }
            any_free = true;
            let prepared = claim_and_prepare(&state, &delivery, lane.channel, permits.len()).await;
            claimed_any |= !prepared.is_empty();
            for (job, outgoing) in prepared {
                let permit = permits.pop();
                if job.state == JobState::Cancelled {
                    // Cancelled by the vault for the card's state: nothing to send or mark.
                    tracing::warn!(
                        job = job.id,
                        channel = job.channel.as_str(),
                        part = job.part.as_str(),
                        reason = job.cancel_reason.as_deref().unwrap_or(""),
                        outcome = "cancelled",
                        "dispatch"
                    );
                    drop(permit);
                    continue;
                }
                let outgoing = match outgoing {
                    Ok(o) => o,
                    Err(failure) => {
                        let _ = outcomes.send((job, Err(failure), permit));
                        continue;
                    }
                };
                let (courier, outcomes) = (lane.courier.clone(), outcomes.clone());
                tasks.spawn(async move {
                    let sent = courier.send(&outgoing).await;
                    drop(outgoing);
                    let outcome = sent.map(|s| s.peer_id).map_err(|e| Failure::from_send(&e));
                    // The slot stays taken until the marker has recorded the outcome: so the
                    // jobs sent and not yet marked `sent` (sent again after a crash) are at
                    // most the lane's cap.
                    let _ = outcomes.send((job, outcome, permit));
                });
            }
        }
        if claimed_any {
            continue;
        }
        if any_free || tasks.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(delivery.poll) => {}
                _ = stopped(&mut shutdown) => {}
            }
        } else {
            // Every lane is full: wait for the marker to give slots back (the back-pressure).
            tokio::select! {
                _ = freed.notified() => {}
                _ = tokio::time::sleep(delivery.poll) => {}
                _ = stopped(&mut shutdown) => {}
            }
        }
    }
    let drained = tokio::time::timeout(crate::SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Cut the sends short: their jobs stay `sending` and are sent again after restart.
        tasks.shutdown().await;
        tracing::warn!(
            "delivery workers stopped with jobs in flight; they are sent again after restart"
        );
    }
    // Every sender is gone now: the marker records what came back and ends.
    drop(outcomes);
    if tokio::time::timeout(crate::SHUTDOWN_GRACE, marker)
        .await
        .is_err()
    {
        tracing::warn!(
            "outcomes not all recorded at shutdown; those jobs are sent again after restart"
        );
    }
    tracing::info!("delivery workers stopped");
}

/// On the blocking pool: claims up to `limit` due jobs of `channel` and releases them through
/// the audited gate, in one commit ([`cards::Cards::claim_and_release`]), and renders each
/// job's message. A job the vault refuses, or whose message cannot be made, comes back with
/// its failure. If the commit fails, nothing was claimed: the jobs stay due.
async fn claim_and_prepare(
    state: &AppState,
    delivery: &Arc<Delivery>,
    channel: Channel,
    limit: usize,
) -> Vec<(Job, Result<Outgoing, Failure>)> {
    let (st, d) = (state.clone(), delivery.clone());
    let prepared = api::blocking(move || {
        let released = st.cms.claim_and_release(
            &*st.hsm,
            &st.audit,
            channel,
            st.clock.now_ms(),
            limit,
            st.cms.today(),
        )?;
        Ok(released
            .into_iter()
            .map(|(job, release)| {
                let outgoing = release
                    .map_err(|e| release_refused(&e))
                    .and_then(|r| render(&d, &r));
                (job, outgoing)
            })
            .collect())
    })
    .await;
    prepared.unwrap_or_else(|e| {
        tracing::error!(
            code = e.code().as_str(),
            channel = channel.as_str(),
            "claiming dispatch jobs failed"
        );
        Vec::new()
    })
}

/// A refused release: permanent when the vault says the job cannot go (card not `active`,
/// contact refused, job or card unknown), temporary otherwise (sealed, storage).
fn release_refused(e: &vault::Error) -> Failure {
    let permanent = matches!(
        e,
        vault::Error::WrongState { .. }
            | vault::Error::Refused(_)
            | vault::Error::Refusal(_)
            | vault::Error::NotFound(_)
            | vault::Error::Missing(_)
            | vault::Error::Invalid(_)
    );
    let code = if permanent {
        FailureReason::OtherPermanent
    } else {
        FailureReason::OtherTemporary
    };
    Failure::new(code, format!("release refused: {e}"))
}

/// Records outcomes as they come: every `sent` one waiting at that moment in one commit, each
/// failure with its backoff, `dead` and fallback; then gives their slots back and wakes the
/// claim loop through `freed`. Ends when every sender has gone.
async fn mark_outcomes(
    state: AppState,
    delivery: Arc<Delivery>,
    mut received: mpsc::UnboundedReceiver<Outcome>,
    freed: Arc<Notify>,
) {
    let mut waiting = Vec::new();
    while received.recv_many(&mut waiting, MARK_BATCH).await > 0 {
        let (sent, failed): (Vec<Outcome>, Vec<Outcome>) =
            waiting.drain(..).partition(|(_, o, _)| o.is_ok());
        if !sent.is_empty() {
            for lane in &delivery.lanes {
                if sent.iter().any(|(job, _, _)| job.channel == lane.channel) {
                    lane_recovered(lane);
                }
            }
            mark_sent(&state, &delivery.stats, sent).await;
        }
        for (job, outcome, permit) in failed {
            if let Err(failure) = outcome {
                mark_failed(&state, &delivery, &job, failure).await;
            }
            drop(permit);
        }
        // The outcomes' slots went back with them: wake the claim loop.
        freed.notify_one();
    }
}

/// Marks `sent` jobs sent, in one commit.
async fn mark_sent(state: &AppState, stats: &DeliveryStats, sent: Vec<Outcome>) {
    let peers: Vec<(u64, String)> = sent
        .iter()
        .map(|(job, o, _)| (job.id, peer_id(o.as_deref().unwrap_or(""))))
        .collect();
    let (cms, audit) = (state.cms.clone(), state.audit.clone());
    match api::blocking(move || cms.mark_sent_many(&audit, &peers)).await {
        Ok(results) => {
            for ((job, _, _), result) in sent.iter().zip(results) {
                let (id, channel, part) = (job.id, job.channel.as_str(), job.part.as_str());
                match result {
                    Ok(_) => {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(job = id, channel, part, outcome = "sent", "dispatch");
                    }
                    Err(e) => tracing::error!(
                        job = id,
                        channel,
                        part,
                        code = api::ApiError::from(e).code().as_str(),
                        "sent, but the job could not be marked sent"
                    ),
                }
            }
        }
        Err(e) => tracing::error!(
            jobs = sent.len(),
            code = e.code().as_str(),
            "sent, but the jobs could not be marked sent; they are sent again after restart"
        ),
    }
}

fn lock_pause(lane: &Lane) -> std::sync::MutexGuard<'_, LanePause> {
    // A poisoned lock only means a panic while updating the pause; its fields stay valid.
    lane.pause
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A send went through on `lane`: its pause backoff starts again from the base.
fn lane_recovered(lane: &Lane) {
    let mut pause = lock_pause(lane);
    if pause.in_a_row > 0 {
        tracing::info!(
            channel = lane.channel.as_str(),
            after = pause.in_a_row,
            "dispatch lane resumed: the relay accepted a message"
        );
    }
    *pause = LanePause::default();
}

/// A relay-wide failure on `lane` at `now_ms`: pauses the lane (1 s doubling to the cap, by
/// default) unless a pause is already running, with one alert line a pause; returns when the
/// lane's jobs are due again (Unix ms).
fn pause_lane(delivery: &Delivery, lane: &Lane, failure: &Failure, now_ms: u64) -> u64 {
    let mut pause = lock_pause(lane);
    let now = tokio::time::Instant::now();
    if pause.until.is_some_and(|until| until > now) {
        return pause.resume_ms;
    }
    let shift = pause.in_a_row.min(20);
    let wait = delivery
        .pause_base
        .saturating_mul(1u32 << shift)
        .min(delivery.pause_cap);
    pause.in_a_row = pause.in_a_row.saturating_add(1);
    pause.until = Some(now + wait);
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    pause.resume_ms = now_ms.saturating_add(wait_ms);
    delivery.stats.lane_pauses.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        channel = lane.channel.as_str(),
        reason = failure.code.as_str(),
        detail = %failure.reason,
        pause_ms = wait_ms,
        in_a_row = pause.in_a_row,
        "ALERT dispatch lane paused: the relay or gateway fails for every job; jobs stay queued \
         with their attempts, nothing falls back"
    );
    pause.resume_ms
}

/// Marks `job` failed: a relay-wide failure pauses its lane and queues the job again with its
/// attempt given back; otherwise temporary with backoff, or `dead` with the policy's fallback.
async fn mark_failed(state: &AppState, delivery: &Delivery, job: &Job, failure: Failure) {
    let (cms, audit, hsm) = (state.cms.clone(), state.audit.clone(), state.hsm.clone());
    let clock = state.clock.clone();
    let (id, channel, part) = (job.id, job.channel.as_str(), job.part.as_str());
    delivery.stats.count_reason(failure.code);
    let code = failure.code.as_str();
    let scope = failure.code.scope();
    if scope == FailureScope::Lane {
        if let Some(lane) = delivery.lanes.iter().find(|l| l.channel == job.channel) {
            let now_ms = clock.now_ms();
            let resume_ms = pause_lane(delivery, lane, &failure, now_ms);
            let reason = failure.reason.clone();
            let marked =
                api::blocking(move || cms.mark_paused(id, code, &reason, now_ms, resume_ms)).await;
            match marked {
                Ok(j) => tracing::warn!(
                    job = id,
                    channel,
                    part,
                    reason = code,
                    attempts = j.attempts,
                    outcome = "paused",
                    "dispatch failed"
                ),
                Err(e) => tracing::error!(
                    job = id,
                    channel,
                    part,
                    code = e.code().as_str(),
                    "the paused job could not be queued again"
                ),
            }
            return;
        }
    }
    let temporary = scope != FailureScope::Final;
    let reason = failure.reason;
    let policy = delivery.policy;
    let marked = api::blocking(move || {
        cms.mark_failed_coded(
            &*hsm,
            &audit,
            id,
            temporary,
            code,
            &reason,
            clock.now_ms(),
            &policy,
        )
    })
    .await;
    match marked {
        Ok(j) => {
            let counter = if j.state == JobState::Dead {
                &delivery.stats.dead
            } else {
                &delivery.stats.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                job = id,
                channel,
                part,
                temporary,
                reason = code,
                attempts = j.attempts,
                outcome = j.state.as_str(),
                "dispatch failed"
            );
        }
        Err(e) => tracing::error!(
            job = id,
            channel,
            part,
            code = e.code().as_str(),
            "the failed job could not be marked failed"
        ),
    }
}

/// The overdue alert: counts the parts not delivered after the configured time into the
/// `overdue` gauge, and logs a warning when there are any.
async fn overdue_alert(state: &AppState, delivery: &Delivery) {
    let (cms, clock) = (state.cms.clone(), state.clock.clone());
    let older = u64::try_from(delivery.overdue_after.as_millis()).unwrap_or(u64::MAX);
    match api::blocking(move || cms.overdue(clock.now_ms(), older, 1000)).await {
        Ok(jobs) => {
            let stats = &delivery.stats;
            stats.overdue.store(jobs.len() as u64, Ordering::Relaxed);
            stats
                .overdue_checked_ms
                .store(state.clock.now_ms(), Ordering::Relaxed);
            if !jobs.is_empty() {
                tracing::warn!(
                    overdue = jobs.len(),
                    after_secs = delivery.overdue_after.as_secs(),
                    "dispatch parts not delivered in time"
                );
            }
        }
        Err(e) => tracing::error!(code = e.code().as_str(), "overdue check failed"),
    }
}

/// The message of a released job's part, addressed.
/// A `ca_file`'s PEM bytes (parsed by the courier); the error names the setting and the path.
fn read_ca_file(path: &PathBuf) -> Result<Vec<u8>, DeliveryError> {
    std::fs::read(path).map_err(|e| {
        DeliveryError(format!(
            "[dispatch.sms] ca_file {}: cannot read: {}",
            path.display(),
            e.kind()
        ))
    })
}

fn render(delivery: &Delivery, release: &JobRelease) -> Result<Outgoing, Failure> {
    let job = &release.job;
    let render_failed =
        |e: dispatch::Error| Failure::new(FailureReason::BadMessage, format!("render: {e}"));
    let plan = Plan::parse(&job.courier_plan()).map_err(render_failed)?;
    let codes = to_dispatch(&release.codes).map_err(render_failed)?;
    let wanted = job.part.as_str();
    let part = plan
        .cut(&codes)
        .map_err(render_failed)?
        .into_iter()
        .find(|p| p.part.name.as_str().eq_ignore_ascii_case(wanted))
        .ok_or_else(|| {
            Failure::new(
                FailureReason::BadMessage,
                format!("render: plan has no part {wanted}"),
            )
        })?;
    let addressee = Addressee {
        name: release.name.to_string(),
        address: Vec::new(),
    };
    let mailer = Mailer {
        addressee: &addressee,
        card_serial: &job.serial,
        codes: &part,
        number: None,
    };
    let permanent = |e: SendError| Failure::new(FailureReason::BadAddress, e.reason());
    let key = IdempotencyKey::new(job.idempotency_key.clone()).map_err(permanent)?;
    match (&release.destination, job.channel) {
        (ReleaseDestination::Email(to), Channel::Email) => {
            let message = delivery
                .email
                .render_email(&mailer)
                .map_err(render_failed)?;
            let to = Destination::email(to.as_str()).map_err(permanent)?;
            Outgoing::email(key, to, message).map_err(permanent)
        }
        (ReleaseDestination::Mobile(to), Channel::Sms) => {
            let message = delivery.sms.render_sms(&mailer).map_err(render_failed)?;
            let to = Destination::phone(to.as_str()).map_err(permanent)?;
            Outgoing::sms(key, to, message).map_err(permanent)
        }
        _ => Err(Failure::new(
            FailureReason::BadAddress,
            "channel and destination differ",
        )),
    }
}

/// A courier's reason with any e-mail address (a word with `@`) blanked out; the vault blanks
/// digit runs (numbers) itself.
fn without_addresses(reason: &str) -> String {
    reason
        .split(' ')
        .map(|w| if w.contains('@') { "<address>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A courier's id for a message, as the outbox keeps it: printable ASCII, no blanks, at most
/// 128 characters.
fn peer_id(peer: &str) -> String {
    let p: String = peer
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect();
    if p.is_empty() {
        "accepted".to_owned()
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn print() -> PrintSetup {
        PrintSetup {
            templates: Arc::new(dispatch::Templates::builtin().unwrap()),
            layout: dispatch::Layout::default(),
            issuer: dispatch::Issuer::default(),
            out_dir: PathBuf::from("print"),
            recipients: Vec::new(),
            per_file: 1,
        }
    }

    #[test]
    fn couriers_from_config() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing configured: no workers, except --dev, which spools both channels.
        assert!(Delivery::from_config(None, false, dir.path(), &print())
            .unwrap()
            .is_none());
        let d = Delivery::from_config(None, true, dir.path(), &print())
            .unwrap()
            .unwrap();
        assert!(d.sends(Channel::Email) && d.sends(Channel::Sms));
        assert!(dir.path().join("spool").is_dir());
        assert!(d.dlr_token().is_none());
        // A spool outside --dev is refused.
        let spool = DispatchConfig {
            spool_dir: Some(dir.path().join("s")),
            ..DispatchConfig::default()
        };
        let e = Delivery::from_config(Some(&spool), false, dir.path(), &print()).unwrap_err();
        assert!(e.to_string().contains("spool_dir"), "{e}");
        // A relay and no gateway: e-mail only; the policy from the table.
        let relay = DispatchConfig {
            smtp: Some(crate::config::SmtpSection {
                host: "127.0.0.1".into(),
                port: 2525,
                tls: SmtpTls::None,
                from: "pin@example.it".into(),
                max_connections: 2,
                ca_file: None,
                username: None,
                password_file: None,
                ehlo_name: None,
                return_path: None,
                insecure_plaintext_to_remote: false,
            }),
            max_attempts: 2,
            ..DispatchConfig::default()
        };
        let d = Delivery::from_config(Some(&relay), false, dir.path(), &print())
            .unwrap()
            .unwrap();
        assert!(d.sends(Channel::Email) && !d.sends(Channel::Sms));
        assert_eq!(d.policy.max_attempts, 2);
        assert!(!format!("{d:?}").is_empty());
    }

    #[test]
    fn a_gateway_ca_file_is_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = |ca_file: PathBuf| DispatchConfig {
            sms: Some(crate::config::SmsSection {
                sendsms_url: "https://127.0.0.1:13013/cgi-bin/sendsms".into(),
                ca_file: Some(ca_file),
                username: "plico".into(),
                password: "p".into(),
                from: "PLICO".into(),
                dlr_url: None,
                dlr_token: None,
            }),
            ..DispatchConfig::default()
        };
        let missing = dir.path().join("missing.pem");
        let e = Delivery::from_config(Some(&gateway(missing)), false, dir.path(), &print())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[dispatch.sms] ca_file") && e.contains("missing.pem"),
            "{e}"
        );
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let e = Delivery::from_config(Some(&gateway(not_pem)), false, dir.path(), &print())
            .unwrap_err()
            .to_string();
        assert!(e.contains("sms.ca_file"), "{e}");
    }

    #[test]
    fn reasons_lose_addresses_and_peer_ids_are_clean() {
        assert_eq!(
            without_addresses("550 5.1.1 <mario@example.it>: rejected"),
            "550 5.1.1 <address> rejected"
        );
        assert_eq!(peer_id("<a b@c>"), "<ab@c>");
        assert_eq!(peer_id(" \n"), "accepted");
        assert_eq!(peer_id(&"x".repeat(300)).len(), 128);
    }
}
