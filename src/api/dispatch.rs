//! Delivery of a card's codes over HTTP: the service side of the durable outbox
//! ([`cards::outbox`]). Nothing here sends anything: a request writes jobs, and the
//! service's workers send them.
//!
//! | method and path                    | roles                        | body                | answer                 |
//! |------------------------------------|------------------------------|---------------------|------------------------|
//! | `POST /v1/cards/{serial}/dispatch` | cms, operator (rate-limited) | [`DispatchBody`]    | `201` [`DispatchView`] |
//! | `POST /v1/cards/{serial}/resend`   | cms, operator (rate-limited) | `{"part": "B"}`     | `201` [`JobView`]      |
//! | `GET /v1/dispatch/metrics`         | admin, auditor, support      |                     | `200` Prometheus text  |
//!
//! (`POST /v1/cards/{serial}/reidentify`, the counter's new identification of the holder that a
//! changed contact needs, is a lifecycle change: it is in [`super::cards`], and each part's
//! delivery state is in the card's status there.)
//!
//! A plan is `counter(N)+sms`, `counter(N)+email`, `counter(N)+remote` (SMS if the holder has
//! a usable mobile number, else e-mail), `sms`, `email` or `mailer`. `counter(N)+…` makes two
//! parts: `A`, the first N digits of each code, printed at the counter (its job is `counter`
//! until the counter page is printed, then `handed_over`), and `B`, the rest, sent remotely:
//! its job is `awaiting_counter` until part A is handed over, and only then `queued` for its
//! courier. A plan that does not parse, or whose N leaves nothing for part B under the code
//! policy, is `422 invalid`.
//!
//! A card has one dispatch in force at a time: a new dispatch of a card whose dispatch is
//! under way or done is `409 refused` unless the body says `"replace": true` with a
//! `"reason"`; then the old dispatch is superseded and its unsent parts `cancelled`, in the
//! store batch of the new one (`dispatch.supersede`). `reason` without `replace`, or `replace`
//! without a reason, is `422 invalid`.
//!
//! Both routes send codes, so both are limited per account like every route that reveals or
//! sends one (`[limits] sensitive_per_minute`, `429` beyond): a resend is the help desk's answer
//! to a lost half, and must not become a way to flood a holder's phone.
//!
//! The vault decides and audits (`dispatch.request`, `dispatch.resend`, each in the store batch
//! of its jobs). Its refusals come back as they are: `409 wrong_state` with the card's state
//! in `error.state` for a card that is not `active` (nothing is written); `409 refused` when
//! the codes are not held, when the holder has no registered contact for the channel, when that
//! contact changed after the card's last identification (rule 13: identify the holder again
//! with `reidentify` first), when a dispatch of the card is still under way (resend a part
//! instead), or to resend the counter part or a part being sent at this moment; the message
//! names what is missing. An unknown card, or a part never dispatched, is `404`.
//!
//! The metrics are the delivery workers' counters since start-up (`plico_dispatch_sent_total`,
//! `…_failed_total` for temporary failures, `…_dead_total`) and the overdue alert's gauge
//! (`plico_dispatch_overdue_parts`: parts not delivered after `[dispatch] overdue_after_secs`,
//! at the last check, made every minute; `…_overdue_checked_seconds`: when). In the
//! Prometheus text format, for a scraper holding an auditor's or support token.
//!
//! No answer holds a code, a contact or a job's idempotency key: jobs are shown as
//! [`JobView`], which leaves out the key, the courier's message id, the account and the last
//! courier error (a courier may quote an address in it).

use super::extract::id;
use super::extract::JsonBody;
use super::{blocking, ApiError, Caller, Endpoint};
use crate::ids::Serial;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use cards::{Channel, DispatchHistory, DispatchRequest, Dispatched, Job, JobState, Part, Plan};
use serde::{Deserialize, Serialize};
use vault::Role;

const DISPATCH: &[Role] = &[Role::Cms, Role::Operator];
const RESEND: &[Role] = &[Role::Cms, Role::Operator];
const METRICS: &[Role] = &[Role::Admin, Role::Auditor, Role::Support];

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::POST, "/v1/cards/{serial}/dispatch", post(dispatch))
            .roles(DISPATCH)
            .sensitive(),
        Endpoint::new(Method::POST, "/v1/cards/{serial}/resend", post(resend))
            .roles(RESEND)
            .sensitive(),
        Endpoint::new(Method::GET, "/v1/dispatch/metrics", get(metrics)).roles(METRICS),
    ]
}

/// The delivery workers' counters, the open jobs and the overdue gauge, in the OpenMetrics
/// text format: the delivery part of `/metrics`, from the same place ([`crate::metrics`]).
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = crate::metrics::render_dispatch(&state).await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text))
}

/// One job of a dispatch, as the API shows it: one part of the codes by one channel. No code,
/// no contact, no idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: u64,
    /// The dispatch request it belongs to.
    pub request: u64,
    /// Card serial.
    pub serial: String,
    /// `A`, `B` or `whole`.
    pub part: Part,
    /// `counter`, `sms`, `email` or `mailer`.
    pub channel: Channel,
    /// `counter`, `queued`, `sending`, `sent`, `delivered`, `failed`, `dead` or `superseded`.
    pub state: JobState,
    /// N of `counter(N)` for a split part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digits: Option<u32>,
    /// Attempts so far.
    pub attempts: u32,
    /// `request`, `resend` or `fallback`.
    pub origin: String,
    /// The job it replaces (resend, fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<u64>,
    /// Dead with no fallback left: the part must be reprinted at the counter.
    pub needs_counter_reprint: bool,
    /// Created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_ms: u64,
    /// Part A: first printed and handed over at the counter, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_ms: Option<u64>,
    /// Part A: the account that handed it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_by: Option<String>,
    /// Part A: prints so far (the first, then reprints).
    #[serde(default)]
    pub prints: u32,
    /// Why it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        JobView {
            id: j.id,
            request: j.request,
            serial: j.serial,
            part: j.part,
            channel: j.channel,
            state: j.state,
            digits: j.digits,
            attempts: j.attempts,
            origin: j.origin,
            replaces: j.replaces,
            needs_counter_reprint: j.needs_counter_reprint,
            created_ms: j.created_ms,
            updated_ms: j.updated_ms,
            handed_over_ms: j.handed_over_ms,
            handed_over_by: j.handed_over_by,
            prints: j.prints,
            cancel_reason: j.cancel_reason,
        }
    }
}

/// A dispatch request and its jobs, as `POST /v1/cards/{serial}/dispatch` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchView {
    /// Request id.
    pub id: u64,
    /// Card serial.
    pub serial: String,
    /// The plan as asked for (trimmed).
    pub plan: String,
    /// When, ms since the Unix epoch.
    pub created_ms: u64,
    /// Its jobs (one per part when made; a card's history adds resends and fallbacks).
    pub jobs: Vec<JobView>,
    /// The dispatch it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<u64>,
    /// Why it replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_reason: Option<String>,
    /// The dispatch that replaced this one (then it is no longer in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<u64>,
}

impl DispatchView {
    fn of(request: DispatchRequest, jobs: Vec<Job>) -> Self {
        DispatchView {
            id: request.id,
            serial: request.serial,
            plan: request.plan,
            created_ms: request.created_ms,
            jobs: jobs.into_iter().map(JobView::from).collect(),
            replaces: request.replaces,
            replace_reason: request.replace_reason,
            superseded_by: request.superseded_by,
        }
    }
}

impl From<Dispatched> for DispatchView {
    fn from(d: Dispatched) -> Self {
        DispatchView::of(d.request, d.jobs)
    }
}

impl From<DispatchHistory> for DispatchView {
    fn from(d: DispatchHistory) -> Self {
        DispatchView::of(d.request, d.jobs)
    }
}

/// The body of a dispatch request: `{"plan": "counter(2)+sms"}`, and to replace the card's
/// dispatch in force, `"replace": true` with a `"reason"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchBody {
    /// The plan.
    pub(crate) plan: String,
    /// Replaces the card's dispatch in force.
    #[serde(default)]
    pub(crate) replace: bool,
    /// Why (required with `replace`).
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

/// The body of a resend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResendBody {
    part: String,
}

/// Checks a plan before the vault sees it: it parses, and a `counter(N)` leaves digits for
/// part B of the shortest code the policy allows. `422 invalid` otherwise.
fn check_plan(state: &AppState, text: &str) -> Result<(), ApiError> {
    check_plan_for(&state.import_rules.policy, text)
}

/// [`check_plan`] under the code policy `policy`.
pub(super) fn check_plan_for(policy: &vault::CodePolicy, text: &str) -> Result<(), ApiError> {
    let plan = Plan::parse(text).map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Plan::Counter { digits, .. } = plan {
        let shortest = usize::from(policy.pin.min.min(policy.puk.min));
        if digits >= shortest {
            return Err(ApiError::invalid(format!(
                "plan: counter({digits}) leaves nothing for part B of a {shortest}-digit code"
            )));
        }
    }
    Ok(())
}

async fn dispatch(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
    JsonBody(body): JsonBody<DispatchBody>,
) -> Result<(StatusCode, Json<DispatchView>), ApiError> {
    let view = request_dispatch(state, &caller, serial, body).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Checks and records a dispatch of the card's codes (the API and the console).
pub(crate) async fn request_dispatch(
    state: AppState,
    caller: &Caller,
    serial: String,
    body: DispatchBody,
) -> Result<DispatchView, ApiError> {
    let serial: Serial = id("serial", &serial)?;
    check_plan(&state, &body.plan)?;
    let replace = match (body.replace, body.reason) {
        (true, Some(r)) => {
            let t = r.trim();
            if t.is_empty() || t.chars().count() > 200 || t.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    "reason: 1 to 200 characters without control characters",
                ));
            }
            Some(r)
        }
        (true, None) => {
            return Err(ApiError::invalid(
                "reason: required with `replace` (why the dispatch in force is replaced)",
            ))
        }
        (false, Some(_)) => return Err(ApiError::invalid("reason: only with `replace: true`")),
        (false, None) => None,
    };
    let s = state.clone();
    let actor = caller.actor();
    let done = blocking(move || {
        s.cms.request_dispatch_with(
            &*s.hsm,
            &s.audit,
            &serial,
            &body.plan,
            replace.as_deref(),
            s.cms.today(),
            &actor,
        )
    })
    .await?;
    tracing::info!(
        serial = %done.request.serial,
        dispatch = done.request.id,
        jobs = done.jobs.len(),
        by = %caller.account.id,
        "dispatch requested"
    );
    Ok(DispatchView::from(done))
}

async fn resend(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
    JsonBody(body): JsonBody<ResendBody>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let job = resend_part(state, &caller, serial, &body.part).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

/// Resends one part of the card's dispatch in force (the API and the console).
pub(crate) async fn resend_part(
    state: AppState,
    caller: &Caller,
    serial: String,
    part: &str,
) -> Result<JobView, ApiError> {
    let serial: Serial = id("serial", &serial)?;
    // `a`/`b`/`WHOLE` are the same parts as `A`/`B`/`whole`.
    let name = part.trim();
    let name = if name.len() == 1 {
        name.to_ascii_uppercase()
    } else {
        name.to_ascii_lowercase()
    };
    let part: Part = name
        .parse()
        .map_err(|e| ApiError::invalid(format!("invalid: {e}")))?;
    let s = state.clone();
    let actor = caller.actor();
    let job = blocking(move || {
        s.cms
            .resend_part(&*s.hsm, &s.audit, &serial, part, s.cms.today(), &actor)
    })
    .await?;
    tracing::info!(
        serial = %job.serial,
        part = %job.part,
        job = job.id,
        replaces = job.replaces.unwrap_or_default(),
        by = %caller.account.id,
        "part resent"
    );
    Ok(JobView::from(job))
}
