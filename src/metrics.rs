//! The service's metrics: what `/metrics` shows, in the Prometheus (OpenMetrics) text format,
//! through the Prometheus project's own Rust client (`prometheus-client`: typed label sets, no
//! global registry, no hand-written text).
//!
//! Two kinds of figures:
//!
//! - **Counted as they happen**, held in [`Metrics`] for the life of the process: HTTP
//!   requests by route template (never the concrete path: serials are personal-ish), method
//!   and status, with a latency histogram ([`track`], one layer over the API and the console);
//!   and audited operations, counted from the audit chain itself — every committed event since
//!   start-up by action and outcome, and the lifecycle operations by kind among them. The audit
//!   chain is the one place where every change is recorded (by the API, the console, the
//!   sweeps and the key jobs alike), so the counters are read from its tail at each scrape
//!   ([`AuditTail`]) instead of being incremented in every handler.
//! - **Read at each scrape** from the state: the seal and unseal progress, batches and pairs by
//!   outcome, open dispatch jobs by channel and state, the delivery workers' counters and the
//!   overdue parts (the same [`crate::delivery::DeliveryStats`] as `GET /v1/dispatch/metrics`,
//!   which renders [`dispatch_registry`] — one source for both), print runs by state and their
//!   mailers, key ages and encryption counts against their limits, the audit chain's length
//!   and the age of its last checkpoint, and the store's size on disk with the free space of
//!   its file system.
//!
//! No metric carries a code, a contact, a serial, a token or an account name: labels are route
//! templates, methods, statuses, action names, channels and states.
//!
//! Who may scrape: the holder of the scrape token (`[metrics] token_file`), as a bearer token,
//! compared in constant time with its SHA-256. Not an account's token: accounts can be checked
//! only while unsealed, and a scrape must work while sealed (that is when the `sealed` alert
//! matters). Without a configured token `/metrics` answers 401 to everyone.

use crate::api::ApiError;
use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vault::{lock, Store, Tree};

/// The content type of the text `/metrics` answers (OpenMetrics 1.0, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Audit events read per scrape at most; the rest are counted at the next scrape.
const AUDIT_EVENTS_PER_SCRAPE: usize = 100_000;

/// Open dispatch jobs counted per scrape at most (`plico_dispatch_jobs_counted_limit`).
const OPEN_JOBS_LIMIT: usize = 10_000;

/// The route label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

/// Labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

/// Label of a delivery failure: its reason code (`dispatch::FailureReason`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Labels of a request's latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// Labels of an audited action.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
    outcome: AuditOutcome,
}

/// Labels of a lifecycle operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
    outcome: AuditOutcome,
}

/// An audit event's outcome, as a label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum AuditOutcome {
    ok,
    refused,
    failed,
}

impl From<vault::Outcome> for AuditOutcome {
    fn from(o: vault::Outcome) -> Self {
        match o {
            vault::Outcome::Ok => AuditOutcome::ok,
            vault::Outcome::Refused => AuditOutcome::refused,
            vault::Outcome::Failed => AuditOutcome::failed,
        }
    }
}

/// Labels with one `outcome`, `state` or `purpose` string.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    channel: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TermLabels {
    term: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurposeLabel {
    purpose: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Where the audit counters have read the chain up to.
#[derive(Debug)]
struct AuditTail {
    /// The last sequence number counted; `None` until the first look, which starts at the head
    /// (events before the process started are not counted).
    after: Option<u64>,
}

/// The metrics a process counts as it runs, and who may read them. Cheap to clone: every
/// family shares its values.
#[derive(Debug, Clone)]
pub struct Metrics {
    http_requests: Family<HttpLabels, Counter>,
    http_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    audit_events: Family<ActionLabels, Counter>,
    lifecycle: Family<KindLabels, Counter>,
    tail: Arc<Mutex<AuditTail>>,
    /// SHA-256 of the scrape token; `None`: nobody may scrape.
    token_sha256: Option<[u8; 32]>,
    /// The store's directory, measured for `plico_store_size_bytes`.
    store_dir: Option<PathBuf>,
}

impl Default for Metrics {
    fn default() -> Self {
        let lifecycle = Family::default();
        // Every kind is shown from the start, at 0, so that a rate over it has a series.
        for kind in LIFECYCLE_KINDS {
            let _ = lifecycle.get_or_create(&KindLabels {
                kind: kind.to_owned(),
                outcome: AuditOutcome::ok,
            });
        }
        Metrics {
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(latency_histogram),
            audit_events: Family::default(),
            lifecycle,
            tail: Arc::new(Mutex::new(AuditTail { after: None })),
            token_sha256: None,
            store_dir: None,
        }
    }
}

/// The lifecycle operations (audit actions `card.<kind>`) counted by kind.
pub const LIFECYCLE_KINDS: [&str; 5] =
    ["activate", "suspend", "reactivate", "revoke", "reidentify"];

impl Metrics {
    /// Metrics that count from the audit chain's current head in `store` on.
    pub fn new(store: &dyn Store) -> Self {
        let m = Metrics::default();
        lock(&m.tail).after = audit_head(store).ok();
        m
    }

    /// The same metrics, readable with `token` (`[metrics] token_file`).
    pub fn with_token(mut self, token: &SecretString) -> Self {
        self.token_sha256 = Some(sha256(token.expose_secret().trim().as_bytes()));
        self
    }

    /// The same metrics, measuring the size of the store in `dir`.
    pub fn with_store_dir(mut self, dir: PathBuf) -> Self {
        self.store_dir = Some(dir);
        self
    }

    /// Whether `presented` is the scrape token (constant time).
    fn accepts(&self, presented: &str) -> bool {
        let Some(want) = &self.token_sha256 else {
            return false;
        };
        let got = sha256(presented.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(&got, want).is_ok()
    }

    /// Counts the audit events committed since the last look.
    fn read_audit_tail(&self, audit: &vault::AuditLog, store: &dyn Store) -> vault::Result<()> {
        let mut tail = lock(&self.tail);
        let mut after = match tail.after {
            Some(a) => a,
            None => {
                tail.after = Some(audit_head(store)?);
                return Ok(());
            }
        };
        let mut read = 0;
        while read < AUDIT_EVENTS_PER_SCRAPE {
            let page = audit.query(&vault::Query {
                after,
                limit: vault::MAX_PAGE,
                ..vault::Query::default()
            })?;
            for e in &page.events {
                let outcome = AuditOutcome::from(e.outcome);
                self.audit_events
                    .get_or_create(&ActionLabels {
                        action: e.action.clone(),
                        outcome,
                    })
                    .inc();
                if let Some(kind) = e
                    .action
                    .strip_prefix("card.")
                    .filter(|k| LIFECYCLE_KINDS.contains(k))
                {
                    self.lifecycle
                        .get_or_create(&KindLabels {
                            kind: kind.to_owned(),
                            outcome,
                        })
                        .inc();
                }
                after = after.max(e.seq);
            }
            read += page.events.len();
            if page.events.is_empty() || page.next.is_none() {
                break;
            }
        }
        tail.after = Some(after);
        Ok(())
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The sequence number of the last event of the chain (0: none).
fn audit_head(store: &dyn Store) -> vault::Result<u64> {
    Ok(store
        .last(Tree::Audit)?
        .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// The middleware of every route: counts the request by its route template, method and
/// status, and observes its latency.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, |p| p.as_str())
        .to_owned();
    // A client may send any token as a method: only the standard ones become labels, so that
    // nobody can grow the series without bound.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let elapsed = start.elapsed().as_secs_f64();
    metrics
        .http_latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(elapsed);
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The access check of [`crate::api::Access::ScrapeToken`] routes: `Authorization: Bearer
/// <scrape token>`, else `401`. Works while sealed; needs no account.
pub async fn authorize_scrape(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let accepted = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| state.metrics.accepts(token.trim()));
    if !accepted {
        return Err(ApiError::unauthorized());
    }
    // Checked: nothing after this needs the token, so nothing can log it.
    request.headers_mut().remove(header::AUTHORIZATION);
    Ok(next.run(request).await)
}

/// Every metric of the service, read now, as OpenMetrics text.
///
/// # Errors
/// Store errors reading the state (mapped).
pub async fn render(state: &AppState) -> Result<String, ApiError> {
    let s = state.clone();
    let registry = crate::api::blocking(move || full_registry(&s)).await?;
    encode(&registry)
}

/// The delivery figures only (`GET /v1/dispatch/metrics`), as OpenMetrics text.
///
/// # Errors
/// Store errors reading the open jobs (mapped).
pub async fn render_dispatch(state: &AppState) -> Result<String, ApiError> {
    let s = state.clone();
    let registry = crate::api::blocking(move || {
        let mut r = Registry::default();
        dispatch_registry(&mut r, &s)?;
        Ok(r)
    })
    .await?;
    encode(&registry)
}

fn encode(registry: &Registry) -> Result<String, ApiError> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).map_err(|_| {
        tracing::error!("cannot encode the metrics");
        ApiError::internal()
    })?;
    Ok(out)
}

fn gauge(value: impl TryInto<i64>) -> Gauge {
    let g = Gauge::default();
    g.set(value.try_into().unwrap_or(i64::MAX));
    g
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

/// Builds the registry of every metric from `state`, now.
fn full_registry(state: &AppState) -> vault::Result<Registry> {
    let m = &state.metrics;
    let mut r = Registry::default();
    r.register(
        "plico_http_requests",
        "HTTP requests answered, by method, route template and status",
        m.http_requests.clone(),
    );
    r.register_with_unit(
        "plico_http_request_duration",
        "time to answer an HTTP request, by method and route template",
        prometheus_client::registry::Unit::Seconds,
        m.http_latency.clone(),
    );
    seal_metrics(&mut r, state);
    m.read_audit_tail(&state.audit, &*state.store)?;
    r.register(
        "plico_audit_events",
        "audit events committed since start-up, by action and outcome",
        m.audit_events.clone(),
    );
    r.register(
        "plico_lifecycle_operations",
        "card lifecycle operations audited since start-up, by kind and outcome",
        m.lifecycle.clone(),
    );
    audit_metrics(&mut r, state)?;
    import_metrics(&mut r, state)?;
    dispatch_registry(&mut r, state)?;
    print_metrics(&mut r, state)?;
    key_metrics(&mut r, state);
    r.register(
        "plico_store_writes_refused",
        "whether the store refuses writes: 0 no, 1 for now (a full or failing disk), 2 until \
         the service is restarted",
        gauge(match state.store.writes() {
            vault::Writes::Working => 0,
            vault::Writes::Failing => 1,
            vault::Writes::Stuck => 2,
        }),
    );
    disk_metrics(&mut r, state);
    Ok(r)
}

fn seal_metrics(r: &mut Registry, state: &AppState) {
    let status = state.hsm.status();
    r.register(
        "plico_sealed",
        "1 while the HSM is sealed (no key can be used), 0 when unsealed",
        gauge(i64::from(status.sealed)),
    );
    r.register(
        "plico_unseal_progress",
        "custodian shares submitted towards the next unseal",
        gauge(status.progress),
    );
    r.register(
        "plico_unseal_threshold",
        "custodian shares needed to unseal",
        gauge(status.threshold),
    );
}

fn audit_metrics(r: &mut Registry, state: &AppState) -> vault::Result<()> {
    let head = audit_head(&*state.store)?;
    r.register(
        "plico_audit_chain_events",
        "sequence number of the last event of the audit chain (its length, pruned events \
         included)",
        gauge(head),
    );
    let checkpoint = state
        .store
        .last(Tree::AuditCheckpoints)?
        .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).ok())
        .map(u64::from_be_bytes);
    let now_ms = state.clock.now_ms();
    // The checkpoint's time is that of the event it MACs; -1 when there is none yet.
    let age = match checkpoint {
        Some(seq) => {
            let page = state.audit.query(&vault::Query {
                after: seq.saturating_sub(1),
                limit: 1,
                ..vault::Query::default()
            })?;
            page.events.first().map_or(-1, |e| {
                i64::try_from(now_ms.saturating_sub(e.time_ms) / 1000).unwrap_or(i64::MAX)
            })
        }
        None => -1,
    };
    r.register(
        "plico_audit_checkpoint_age_seconds",
        "seconds since the event of the last MAC'd checkpoint (-1: no checkpoint yet)",
        gauge(age),
    );
    r.register(
        "plico_audit_events_since_checkpoint",
        "audit events after the last MAC'd checkpoint",
        gauge(head.saturating_sub(checkpoint.unwrap_or(0))),
    );
    let stream = state.audit_stream.as_deref();
    r.register(
        "plico_audit_stream_streamed",
        "audit events written to the audit stream ([audit.stream]) since start-up",
        counter(stream.map_or(0, |s| s.streamed())),
    );
    r.register(
        "plico_audit_stream_dropped",
        "audit events the stream dropped since start-up (the sink failed, or the stream fell \
         behind)",
        counter(stream.map_or(0, |s| s.dropped())),
    );
    Ok(())
}

fn import_metrics(r: &mut Registry, state: &AppState) -> vault::Result<()> {
    let batches: Family<Outcome, Gauge> = Family::default();
    let pairs: Family<Outcome, Gauge> = Family::default();
    for outcome in ["committed", "quarantined", "rejected", "duplicate"] {
        let label = Outcome {
            outcome: outcome.to_owned(),
        };
        // Present at 0 before the first batch of the outcome.
        let _ = batches.get_or_create(&label);
        let _ = pairs.get_or_create(&label);
    }
    let mut after = None;
    loop {
        let page = state.codes.batches(after, 1000)?;
        for b in page
            .iter()
            .filter(|b| b.state != vault::BatchState::Staging)
        {
            let label = Outcome {
                outcome: batch_outcome(b.state).to_owned(),
            };
            batches.get_or_create(&label).inc();
            pairs
                .get_or_create(&label)
                .inc_by(i64::try_from(b.cards).unwrap_or(i64::MAX));
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.id),
            _ => break,
        }
    }
    r.register(
        "plico_import_batches",
        "batches in the store by outcome (imported and generated; staging ones left out)",
        batches,
    );
    r.register(
        "plico_import_pairs",
        "PIN/PUK pairs (cards) of the batches in the store, by the batch's outcome",
        pairs,
    );
    Ok(())
}

fn batch_outcome(state: vault::BatchState) -> &'static str {
    use vault::BatchState as S;
    match state {
        S::Staging => "staging",
        S::Committed => "committed",
        S::Quarantined => "quarantined",
        S::Rejected => "rejected",
        S::Shredded => "shredded",
        S::Discarded => "discarded",
        S::Duplicate => "duplicate",
    }
}

/// The delivery figures, registered into `r`: what `/v1/dispatch/metrics` shows and `/metrics`
/// includes.
fn dispatch_registry(r: &mut Registry, state: &AppState) -> vault::Result<()> {
    let workers = state.delivery.as_ref().is_some_and(|d| d.has_couriers());
    let stats = state.delivery.as_ref().map(|d| d.stats.clone());
    let get = |f: fn(&crate::delivery::DeliveryStats) -> u64| stats.as_deref().map_or(0, f);
    r.register(
        "plico_dispatch_workers",
        "1 if this process runs delivery workers",
        gauge(i64::from(workers)),
    );
    r.register(
        "plico_dispatch_sent",
        "deliveries marked sent by the workers since start-up",
        counter(get(|s| s.sent.load(Relaxed))),
    );
    r.register(
        "plico_dispatch_failed",
        "temporary delivery failures since start-up (the job is tried again)",
        counter(get(|s| s.failed.load(Relaxed))),
    );
    r.register(
        "plico_dispatch_dead",
        "deliveries given up (dead) since start-up",
        counter(get(|s| s.dead.load(Relaxed))),
    );
    r.register(
        "plico_dispatch_overdue_parts",
        "parts not delivered after overdue_after_secs, at the last check (at most 1000)",
        gauge(get(|s| s.overdue.load(Relaxed))),
    );
    r.register(
        "plico_dispatch_overdue_checked_seconds",
        "Unix time of the last overdue check (0: none yet)",
        gauge(get(|s| s.overdue_checked_ms.load(Relaxed)) / 1000),
    );
    let reasons: Family<ReasonLabel, Counter> = Family::default();
    if let Some(stats) = &stats {
        for (reason, n) in stats.failures_by_reason() {
            reasons
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .inc_by(n);
        }
    }
    r.register(
        "plico_dispatch_failures",
        "send failures since start-up, by reason code (tls_untrusted, auth_failed, \
         rejected_recipient, …; lane-wide ones included)",
        reasons,
    );
    r.register(
        "plico_dispatch_lane_pauses",
        "lanes paused by a relay-wide failure (tls, auth, connection, capability) since start-up",
        counter(get(|s| s.lane_pauses.load(Relaxed))),
    );
    let jobs: Family<JobLabels, Gauge> = Family::default();
    let open = state
        .cms
        .overdue(state.clock.now_ms(), 0, OPEN_JOBS_LIMIT)?;
    for job in &open {
        jobs.get_or_create(&JobLabels {
            channel: job.channel.as_str().to_owned(),
            state: job.state.as_str().to_owned(),
        })
        .inc();
    }
    r.register(
        "plico_dispatch_jobs_open",
        "jobs of parts still to be delivered by a courier (queued, sending, failed, dead, \
         sent awaiting a receipt), by channel and state",
        jobs,
    );
    r.register(
        "plico_dispatch_jobs_counted_limit",
        "open jobs counted at most per scrape (plico_dispatch_jobs_open stops there)",
        gauge(OPEN_JOBS_LIMIT),
    );
    Ok(())
}

fn print_metrics(r: &mut Registry, state: &AppState) -> vault::Result<()> {
    let runs: Family<StateLabel, Gauge> = Family::default();
    let mut printed = 0u64;
    let mut voided = 0u64;
    for run in state.cms.print_runs(usize::MAX)? {
        runs.get_or_create(&StateLabel {
            state: run.state.clone(),
        })
        .inc();
        printed = printed.saturating_add(run.printed);
        voided = voided.saturating_add(run.voided);
    }
    r.register(
        "plico_print_runs",
        "print runs in the store, by state",
        runs,
    );
    r.register(
        "plico_mailers_printed",
        "mailers printed by every print run in the store",
        gauge(printed),
    );
    r.register(
        "plico_mailers_voided",
        "printed mailers voided (spoiled or reprinted)",
        gauge(voided),
    );
    Ok(())
}

fn key_metrics(r: &mut Registry, state: &AppState) {
    let now_ms = state.clock.now_ms();
    let Ok(status) = state.keys.status(&*state.hsm, now_ms) else {
        // Sealed or unreadable: the key figures are left out, `plico_sealed` says why.
        return;
    };
    let policy = state.keys.policy().keys;
    let now_s = now_ms / 1000;
    let terms: Family<TermLabels, Gauge> = Family::default();
    for t in &status.terms {
        terms
            .get_or_create(&TermLabels {
                term: t.id.0.to_string(),
                // The names of the key status report (`GET /v1/sys/keys`).
                state: match t.state {
                    vault::TermState::Active => "active",
                    vault::TermState::DecryptOnly => "decrypt_only",
                    vault::TermState::Retired => "retired",
                }
                .to_owned(),
            })
            .set(i64::try_from(now_s.saturating_sub(t.created_unix)).unwrap_or(i64::MAX));
    }
    r.register(
        "plico_key_term_age_seconds",
        "age of each KEK term, by term and state",
        terms,
    );
    r.register(
        "plico_key_term_period_seconds",
        "the cryptoperiod of a KEK term (rotation recommended after it)",
        gauge(u64::from(policy.term_period_days) * 86_400),
    );
    let age: Family<PurposeLabel, Gauge> = Family::default();
    let encryptions: Family<PurposeLabel, Gauge> = Family::default();
    for k in &status.data_keys {
        let label = PurposeLabel {
            purpose: k.purpose.as_str().to_owned(),
        };
        let a = i64::try_from(now_s.saturating_sub(k.created_unix)).unwrap_or(i64::MAX);
        let g = age.get_or_create(&label);
        g.set(g.get().max(a));
        drop(g);
        let n = i64::try_from(k.encryptions).unwrap_or(i64::MAX);
        let g = encryptions.get_or_create(&label);
        g.set(g.get().max(n));
    }
    r.register(
        "plico_data_key_max_age_seconds",
        "age of the oldest data key, by purpose",
        age,
    );
    r.register(
        "plico_data_key_period_seconds",
        "the cryptoperiod of a data key",
        gauge(u64::from(policy.data_key_period_days) * 86_400),
    );
    r.register(
        "plico_data_key_max_encryptions",
        "records encrypted under the most used data key, by purpose",
        encryptions,
    );
    r.register(
        "plico_data_key_encryption_warn",
        "encryptions under one data key from which it is near the AES-GCM limit of the \
         envelope ([keys] policy; 80 % of the limit by default)",
        gauge(policy.warn_encryptions),
    );
    r.register(
        "plico_key_warnings",
        "warnings of the key status report (periods and limits near or past)",
        gauge(status.warnings.len()),
    );
}

// `fsblkcnt_t` and `c_ulong` are u64 here but u32 on some targets: the conversions stay.
#[allow(clippy::useless_conversion)]
fn disk_metrics(r: &mut Registry, state: &AppState) {
    let Some(dir) = &state.metrics.store_dir else {
        return;
    };
    r.register(
        "plico_store_size_bytes",
        "bytes of the store's files on disk",
        gauge(dir_size(dir)),
    );
    if let Ok(fs) = nix::sys::statvfs::statvfs(dir.as_path()) {
        let block = u64::from(fs.fragment_size());
        r.register(
            "plico_store_filesystem_avail_bytes",
            "bytes available to plico on the store's file system",
            gauge(u64::from(fs.blocks_available()).saturating_mul(block)),
        );
        r.register(
            "plico_store_filesystem_size_bytes",
            "size of the store's file system",
            gauge(u64::from(fs.blocks()).saturating_mul(block)),
        );
    }
}

/// The bytes of the files under `dir` (unreadable entries count 0).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrape_token_is_checked_by_its_hash() {
        let m = Metrics::default();
        assert!(!m.accepts(""), "no token configured: nobody");
        let m = m.with_token(&SecretString::from("s3cret-scrape\n"));
        assert!(m.accepts("s3cret-scrape"));
        assert!(!m.accepts("s3cret-scrap"));
        assert!(!m.accepts(""));
    }
}
