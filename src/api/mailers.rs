//! Printed mailers over HTTP: bulk print runs, outcomes, reconciliation, a card's mailers,
//! and the counter's single part-A page.
//!
//! | method and path                        | roles                          | answer              |
//! |----------------------------------------|--------------------------------|---------------------|
//! | `POST /v1/mailers/runs`                | cms                            | `202 {"run": id}`   |
//! | `GET /v1/mailers/runs`                 | cms, admin, officer, auditor   | [`RunView`] list    |
//! | `GET /v1/mailers/runs/{id}`            | cms, admin, officer, auditor   | [`RunView`]         |
//! | `POST /v1/mailers/outcomes`            | cms, operator                  | counts by outcome   |
//! | `GET /v1/mailers/reconciliation`       | cms, admin, officer, auditor   | per batch counts    |
//! | `GET /v1/cards/{serial}/mailers`       | cms, operator                  | [`MailerView`] list |
//! | `POST /v1/cards/{serial}/counter-page` | operator (rate-limited)        | `application/pdf`   |
//!
//! The two bulk bodies (a run's list of serials, a batch of outcomes) are read under their own
//! limits, [`RUN_BODY_LIMIT`] and [`OUTCOMES_BODY_LIMIT`], not the API's 64 KiB.
//!
//! # Print runs
//!
//! `POST /v1/mailers/runs` takes `{"batch": "b000001"}` or `{"serials": [...]}`, and optionally
//! `"reprint"` (`unprinted`, the default; `undelivered`; `all`), `"label"` (default: the batch
//! id, or `run`), `"plan"` (default `whole`) and `"part"` (default `whole`; `A` or `B` of a
//! `counter(N)+…` plan). The run is started on the blocking pool; a refusal to start comes
//! back at once (`409 refused` while another run goes, `404` for a batch that is not
//! committed, `422 invalid` for a bad request), then the run goes on in the background and
//! the answer is `202 {"run": id}` with `Location: /v1/mailers/runs/{id}`. Poll that: while
//! the run goes its record carries `done_so_far`, the mailers rendered so far. Print files
//! are written only as sealed `.pdf.age` files (to the `[mailers] recipients`) with their
//! manifests; no answer here carries a code or a personal datum.
//!
//! # The counter page
//!
//! `POST /v1/cards/{serial}/counter-page` with `{}` answers part A of the card's split
//! dispatch in force ([`cards::Cards::print_counter_part`]), as a one-page PDF,
//! `Cache-Control: no-store`, named after the serial's last four characters. A `"plan"` in
//! the body must be that dispatch's plan, else `409 refused` naming the plan in force; without
//! a split dispatch in force there is no page (`409 refused`). The first print is recorded on
//! part A's job as its hand-over at the counter (when, by whom; `dispatch.handover`) and
//! releases part B to its courier; printing again needs `"reprint": true` (audited as
//! `dispatch.reprint`), else `409 refused`. It passes the vault's code gate
//! (`card.codes_release` audit event, `409 wrong_state` for a card that is not active) and
//! the per-account limit of sensitive routes. The PDF is the only place a code appears; it
//! leaves its zeroizing buffer only as the response body.

use super::extract::{id, page_limit, parse_json, query, JsonBody};
use super::{blocking, ApiError, Caller, Endpoint, ErrorCode};
use crate::ids::Serial;
use crate::mailers::PrintSetup;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use cards::{MailerOutcome, MailerState, PrintRunRecord, Reconciliation, Reprint, Selection};
use dispatch::{Addressee, Channel, Plan, SecretBuf};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vault::lock;
use vault::BatchId;
use vault::Role;

const RUN: &[Role] = &[Role::Cms];
const READ: &[Role] = &[Role::Cms, Role::Admin, Role::Officer, Role::Auditor];
const OUTCOMES: &[Role] = &[Role::Cms, Role::Operator];
const CARD_MAILERS: &[Role] = &[Role::Cms, Role::Operator];
const COUNTER_PAGE: &[Role] = &[Role::Operator];

/// Runs listed when the caller does not say how many.
const DEFAULT_RUNS: usize = 50;
/// Most runs one list shows.
const MAX_RUNS: usize = 1000;
/// Largest body of `POST /v1/mailers/runs`: a list of up to
/// [`cards::MAX_LISTED_SERIALS`] serials.
pub const RUN_BODY_LIMIT: usize = 4 << 20;
/// Largest body of `POST /v1/mailers/outcomes` (about 150,000 outcomes).
pub const OUTCOMES_BODY_LIMIT: usize = 8 << 20;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::POST, "/v1/mailers/runs", post(start_run))
            .roles(RUN)
            .bulk(),
        Endpoint::new(Method::GET, "/v1/mailers/runs", get(list_runs)).roles(READ),
        Endpoint::new(Method::GET, "/v1/mailers/runs/{id}", get(show_run)).roles(READ),
        Endpoint::new(Method::POST, "/v1/mailers/outcomes", post(outcomes))
            .roles(OUTCOMES)
            .bulk(),
        Endpoint::new(
            Method::GET,
            "/v1/mailers/reconciliation",
            get(reconciliation),
        )
        .roles(READ),
        Endpoint::new(Method::GET, "/v1/cards/{serial}/mailers", get(card_mailers))
            .roles(CARD_MAILERS),
        Endpoint::new(
            Method::POST,
            "/v1/cards/{serial}/counter-page",
            post(counter_page),
        )
        .roles(COUNTER_PAGE)
        .sensitive(),
    ]
}

/// The print runs going in this process: run id → mailers rendered so far.
#[derive(Debug, Default)]
pub struct RunProgress {
    runs: Mutex<HashMap<u64, Arc<AtomicU64>>>,
}

impl RunProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicU64>>> {
        // Guards a plain map: a panic while it was held leaves it usable.
        lock(&self.runs)
    }

    fn start(&self, id: u64) -> Arc<AtomicU64> {
        let counter = Arc::new(AtomicU64::new(0));
        self.lock().insert(id, counter.clone());
        counter
    }

    fn end(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Mailers rendered so far by run `id`, if it is going in this process.
    pub fn done_so_far(&self, id: u64) -> Option<u64> {
        self.lock().get(&id).map(|c| c.load(Ordering::Relaxed))
    }
}

/// Reads a JSON body of at most `limit` bytes (these routes are bulk: they set their own
/// limit instead of the global one).
async fn bulk_json<T: serde::de::DeserializeOwned>(
    request: Request,
    limit: usize,
) -> Result<T, ApiError> {
    let (parts, body) = request.into_parts();
    if super::upload::content_length(&parts.headers).is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let bytes = super::batches::read_body(body, limit, super::REQUEST_TIMEOUT).await?;
    parse_json(&parts.headers, &bytes)
}

/// `422 invalid`: the request is well-formed JSON but asks for something impossible.
fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
}

/// The vault's `Invalid` as `422 invalid`; the rest as usual.
fn unprocessable(e: vault::Error) -> ApiError {
    match e {
        vault::Error::Invalid(why) => invalid(why),
        other => ApiError::from(other),
    }
}

/// `503 not_configured` when no print facility recipient is configured.
fn check_recipients(setup: &PrintSetup) -> Result<(), ApiError> {
    if setup.recipients.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NotConfigured,
            "no print facility recipients configured: set [mailers] recipients",
        ));
    }
    Ok(())
}

/// A plan's text, parsed, and checked against the shortest codes the policy allows.
fn parse_plan(state: &AppState, field: &str, text: &str) -> Result<Plan, ApiError> {
    plan_for_policy(&state.import_rules.policy, field, text)
}

/// [`parse_plan`] under the code policy `policy`.
pub(super) fn plan_for_policy(
    policy: &vault::CodePolicy,
    field: &str,
    text: &str,
) -> Result<Plan, ApiError> {
    let plan = Plan::parse(text).map_err(|e| invalid(format!("{field}: {e}")))?;
    if let Plan::Whole(Some(channel @ (Channel::Sms | Channel::Email))) = plan {
        return Err(invalid(format!(
            "{field}: a print run prints mailers, not {channel}: use `whole`, `mailer` or \
             `counter(N)+…`"
        )));
    }
    if let Plan::Counter { digits, .. } = plan {
        let shortest = usize::from(policy.pin.min.min(policy.puk.min));
        if digits >= shortest {
            return Err(invalid(format!(
                "{field}: counter({digits}) leaves nothing for part B of a {shortest}-digit code"
            )));
        }
    }
    Ok(plan)
}

/// The part name of `plan` that `text` names (`whole`, or `A`/`B` of a split plan).
pub(super) fn parse_part(plan: &Plan, text: &str) -> Result<&'static str, ApiError> {
    let t = text.trim();
    match plan {
        Plan::Whole(_) if t.eq_ignore_ascii_case("whole") => Ok("whole"),
        Plan::Counter { .. } if t.eq_ignore_ascii_case("a") => Ok("A"),
        Plan::Counter { .. } if t.eq_ignore_ascii_case("b") => Ok("B"),
        Plan::Whole(_) => Err(invalid("part: a `whole` plan has only the part `whole`")),
        Plan::Counter { .. } => Err(invalid("part: a `counter(N)+…` plan has parts `A` and `B`")),
    }
}

/// The body of `POST /v1/mailers/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunBody {
    batch: Option<String>,
    serials: Option<Vec<String>>,
    #[serde(default)]
    reprint: Reprint,
    label: Option<String>,
    pub(super) plan: Option<String>,
    pub(super) part: Option<String>,
}

/// `202`'s body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Started {
    /// The run id.
    pub run: u64,
}

/// A print run as the API shows it: the stored record, and while it goes in this process, how
/// far it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunView {
    /// The stored record.
    #[serde(flatten)]
    pub record: PrintRunRecord,
    /// Mailers rendered so far, while the run goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_so_far: Option<u64>,
}

async fn start_run(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    check_recipients(&state.print)?;
    let body: RunBody = bulk_json(request, RUN_BODY_LIMIT).await?;
    let selection = match (body.batch, body.serials) {
        (Some(b), None) => Selection::Batch(BatchId::parse(b.trim()).map_err(unprocessable)?),
        (None, Some(list)) => {
            for (i, s) in list.iter().enumerate() {
                s.parse::<Serial>()
                    .map_err(|e| invalid(format!("serials item {}: {e}", i + 1)))?;
            }
            Selection::Serials(list)
        }
        _ => return Err(invalid("give either `batch` or `serials`")),
    };
    let plan_text = body
        .plan
        .unwrap_or_else(|| "whole".into())
        .trim()
        .to_owned();
    let plan = parse_plan(&state, "plan", &plan_text)?;
    let part = parse_part(&plan, body.part.as_deref().unwrap_or("whole"))?;
    let label = body.label.unwrap_or_else(|| match &selection {
        Selection::Batch(id) => id.to_string(),
        _ => "run".into(),
    });

    let (tx, rx) = tokio::sync::oneshot::channel::<vault::Result<u64>>();
    let actor = caller.actor();
    let s = state.clone();
    let task = tokio::task::spawn_blocking(move || {
        if let Err(e) = s.print.create_out_dir() {
            let _ = tx.send(Err(e));
            return;
        }
        let job = match s.cms.start_print_run(
            &s.audit,
            selection,
            body.reprint,
            &label,
            &plan_text,
            part,
            &actor,
        ) {
            Ok(job) => job,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let id = job.id();
        let counter = s.print_runs.start(id);
        let _ = tx.send(Ok(id));
        let progress = |n: u64| counter.store(n, Ordering::Relaxed);
        let today = s.cms.today();
        let out = crate::mailers::print(
            &*s.hsm, &s.audit, job, &s.print, &plan, part, today, &progress,
        );
        s.print_runs.end(id);
        match out {
            Ok((record, _manifests)) => tracing::info!(
                run = id,
                state = %record.state,
                printed = record.printed,
                files = record.files.len(),
                voided = record.voided,
                "print run ended"
            ),
            Err(e) => {
                tracing::error!(run = id, error = %e, "print run could not be closed")
            }
        }
    });
    let id = match rx.await {
        Ok(started) => started.map_err(unprocessable)?,
        Err(_) => {
            // The task ended without a word: it panicked before the run started.
            let panicked = task.await.err().is_some_and(|e| e.is_panic());
            tracing::error!(panicked, "a print run did not start");
            return Err(ApiError::internal());
        }
    };
    tracing::info!(run = id, by = %caller.account.id, "print run started");
    let location = format!("/v1/mailers/runs/{id}");
    let mut res = (StatusCode::ACCEPTED, Json(Started { run: id })).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

fn view(state: &AppState, record: PrintRunRecord) -> RunView {
    let done_so_far = if record.state == "running" {
        state.print_runs.done_so_far(record.id)
    } else {
        None
    };
    RunView {
        record,
        done_so_far,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<usize>,
}

async fn list_runs(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    let p = query(params)?;
    let limit = page_limit(p.limit, DEFAULT_RUNS, MAX_RUNS)?;
    let cms = state.cms.clone();
    let records = blocking(move || cms.print_runs(limit)).await?;
    Ok(Json(records.into_iter().map(|r| view(&state, r)).collect()))
}

async fn show_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("run id: expected a number"))?;
    let cms = state.cms.clone();
    let record = blocking(move || cms.print_run(id)).await?;
    Ok(Json(view(&state, record)))
}

/// One entry of `POST /v1/mailers/outcomes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeEntry {
    number: u64,
    outcome: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutcomesBody {
    outcomes: Vec<OutcomeEntry>,
}

/// The answer of `POST /v1/mailers/outcomes`.
#[derive(Debug, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Mailers by what was recorded: `delivered`, `spoiled`, `unchanged`.
    pub counts: BTreeMap<String, u64>,
}

async fn outcomes(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Json<OutcomeCounts>, ApiError> {
    let body: OutcomesBody = bulk_json(request, OUTCOMES_BODY_LIMIT).await?;
    let mut list = Vec::with_capacity(body.outcomes.len());
    for (i, e) in body.outcomes.iter().enumerate() {
        let outcome = match e.outcome.trim() {
            "delivered" => MailerOutcome::Delivered,
            "spoiled" => MailerOutcome::Spoiled,
            _ => {
                return Err(invalid(format!(
                    "outcome {} (mailer {}): `outcome` must be delivered or spoiled",
                    i + 1,
                    e.number
                )))
            }
        };
        list.push((e.number, outcome));
    }
    let s = state.clone();
    let actor = caller.actor();
    let counts =
        tokio::task::spawn_blocking(move || s.cms.record_mailer_outcomes(&s.audit, &list, &actor))
            .await
            .map_err(|_| ApiError::internal())?
            .map_err(unprocessable)?;
    Ok(Json(OutcomeCounts { counts }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileParams {
    batch: Option<String>,
}

async fn reconciliation(
    State(state): State<AppState>,
    params: Result<Query<ReconcileParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Reconciliation>>, ApiError> {
    let p = query(params)?;
    // A batch id is normalised (`b1` → `b000001`); `mixed` names files of several batches.
    let batch = match p.batch.as_deref().map(str::trim) {
        None | Some("") => None,
        Some("mixed") => Some("mixed".to_owned()),
        Some(b) => Some(BatchId::parse(b)?.to_string()),
    };
    let cms = state.cms.clone();
    let rows = blocking(move || cms.reconcile(batch.as_deref())).await?;
    Ok(Json(rows))
}

/// One printed mailer of a card.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailerView {
    /// The mailer number (printed on it).
    pub number: u64,
    /// `outstanding`, `delivered`, `spoiled` or `voided`.
    pub state: MailerState,
    /// The print file's id.
    pub file: u64,
}

async fn card_mailers(
    State(state): State<AppState>,
    Path(serial): Path<String>,
) -> Result<Json<Vec<MailerView>>, ApiError> {
    let serial: Serial = id("serial", &serial)?;
    let cms = state.cms.clone();
    let found = blocking(move || {
        if cms.card(&serial)?.is_none() {
            return Err(vault::Missing::Card(serial.to_string()).into());
        }
        cms.mailers_of(&serial)
    })
    .await?;
    Ok(Json(
        found
            .into_iter()
            .map(|m| MailerView {
                number: m.number,
                state: m.state,
                file: m.file,
            })
            .collect(),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CounterBody {
    /// If given, must be the plan of the card's dispatch in force.
    plan: Option<String>,
    /// Prints part A again (it was already handed over).
    #[serde(default)]
    reprint: bool,
}

/// A rendered PDF as a response body's owner: the bytes stay in their zeroizing buffer until
/// the body is dropped.
struct PdfBytes(SecretBuf);

impl AsRef<[u8]> for PdfBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

/// What a counter page's file is called: never the whole serial.
fn page_name(serial: &str) -> String {
    format!("counter-page-{}.pdf", serial_tail(serial))
}

/// The last four characters of `serial`: what a downloaded file's name may show of it.
pub(crate) fn serial_tail(serial: &str) -> &str {
    let start = serial.char_indices().rev().nth(3).map_or(0, |(i, _)| i);
    &serial[start..]
}

async fn counter_page(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
    JsonBody(body): JsonBody<CounterBody>,
) -> Result<Response, ApiError> {
    counter_pdf(state, &caller, serial, body.plan, body.reprint).await
}

/// Part A of the card's split dispatch in force as a PDF download (the API and the console;
/// see the module docs).
pub(crate) async fn counter_pdf(
    state: AppState,
    caller: &Caller,
    serial: String,
    plan: Option<String>,
    reprint: bool,
) -> Result<Response, ApiError> {
    let serial: Serial = id("serial", &serial)?;
    let s = state.clone();
    let actor = caller.actor();
    let name = page_name(&serial);
    let pdf = tokio::task::spawn_blocking(move || -> Result<SecretBuf, ApiError> {
        // The addressee first: nothing is released for a card without a holder.
        let (holder_name, address) = s
            .cms
            .addressee_of(&*s.hsm, &serial)?
            .ok_or_else(|| vault::Missing::CardHolder(serial.to_string()))?;
        let addressee = Addressee {
            name: holder_name,
            address,
        };
        let printed = s.cms.print_counter_part(
            &*s.hsm,
            &s.audit,
            &serial,
            plan.as_deref(),
            reprint,
            s.cms.today(),
            &actor,
            |codes, slip| {
                let plan = Plan::parse(&slip.courier_plan)?;
                crate::mailers::counter_page(&s.print, &addressee, &serial, codes, &plan, "A")
            },
        )?;
        let (pdf, print) = printed.map_err(|e| {
            // dispatch errors name fields and parts, never digits or the name itself.
            if let Some(layout) = e.layout() {
                return ApiError::new(
                    ErrorCode::Unprintable,
                    format!("card {serial}: the page cannot be laid out: {layout}"),
                );
            }
            tracing::error!(error = %e, "counter page could not be rendered");
            ApiError::internal()
        })?;
        tracing::info!(
            dispatch = print.slip.dispatch,
            job = print.job.id,
            reprint = print.slip.reprint,
            released = print.released.len(),
            "counter part A handed over"
        );
        Ok(pdf)
    })
    .await
    .map_err(|_| ApiError::internal())??;
    tracing::info!(by = %caller.account.id, "counter page released");
    let mut res = Response::new(Body::from(Bytes::from_owner(PdfBytes(pdf))));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pdf"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_plans() {
        let whole = Plan::parse("whole").unwrap();
        let split = Plan::parse("counter(2)+sms").unwrap();
        assert_eq!(parse_part(&whole, "whole").unwrap(), "whole");
        assert_eq!(parse_part(&split, "a").unwrap(), "A");
        assert_eq!(parse_part(&split, "B").unwrap(), "B");
        assert_eq!(
            parse_part(&whole, "A").unwrap_err().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            parse_part(&split, "whole").unwrap_err().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    /// The fuzz target `api_json`'s echo check: a print run's plan `counter(N)+…` with a long
    /// N was refused with N repeated (`counter(12345678) leaves nothing for part B`).
    #[test]
    fn a_refused_plan_repeats_no_digits() {
        for text in ["counter(12345678)+sms", "whole 12345678", "counter(99)+sms"] {
            let e = plan_for_policy(&vault::CodePolicy::CNS, "plan", text).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY, "{text}");
            assert!(!e.message().contains("345"), "{text}: {}", e.message());
        }
    }

    #[test]
    fn page_names_show_only_the_last_four() {
        assert_eq!(page_name("80380001234567890123"), "counter-page-0123.pdf");
        assert_eq!(page_name("12"), "counter-page-12.pdf");
    }
}
