//! The service centre's pages: the problem-report queue (open and assigned, or all), each
//! report with its comments, and the steps on it (assign, comment, close); and the parts of
//! deliveries that are overdue. (Card look-up and suspension are the counter's card page, in
//! [`super::operator`], which support may open.)
//!
//! The steps call the API's functions ([`crate::api::reports`]); the listing is audited by the
//! vault, as through the API.

use super::{me, see_other, Me, Posted, Roles, WithCsrf};
use crate::api::{self, ApiError, RequestId};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use cards::ReportStep;
use minijinja::context;
use serde::Deserialize;
use vault::Role;

const WORK: &[Role] = &[Role::Support];

/// A part is overdue after this long when the service runs no delivery workers (else their
/// `[dispatch]` setting).
const OVERDUE_AFTER_MS: u64 = 86_400_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/reports", get(queue))
        .route("/reports/{id}/assign", post(assign))
        .route("/reports/{id}/comment", post(comment))
        .route("/reports/{id}/close", post(close))
        .route("/overdue", get(overdue))
}

/// `?closed=1` lists closed reports too; `?done=` a notice.
#[derive(Debug, Deserialize)]
pub(super) struct QueueQuery {
    closed: Option<String>,
    done: Option<String>,
}

/// A step's form. No `Debug`: free text.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct StepForm {
    csrf: Option<String>,
    assignee: Option<String>,
    text: Option<String>,
}

async fn queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(rid): Extension<RequestId>,
    Query(q): Query<QueueQuery>,
) -> Response {
    let me = match me(&state, &headers, &rid, WORK, false).await {
        Ok(me) => me,
        Err(res) => return res,
    };
    let closed = q.closed.is_some();
    let page =
        api::reports::list_reports(state.clone(), &me.caller, 0, api::reports::MAX_PAGE, closed)
            .await;
    let done = q
        .done
        .as_deref()
        .filter(|d| ["done_assigned", "done_commented", "done_closed"].contains(d));
    match page {
        Ok(page) => {
            let ctx = context! { reports => page.reports, closed => closed, done => done };
            state
                .console
                .render(StatusCode::OK, "reports.html", me.lang, Some(&me), ctx)
        }
        Err(e) => state.console.error(&me, &e, "/"),
    }
}

/// The service centre: [`Posted`] forms of the report queue.
struct Workers;

impl Roles for Workers {
    const ROLES: &'static [Role] = WORK;
}

impl WithCsrf for StepForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

fn after(state: &AppState, me: &Me, done: Result<(), ApiError>, key: &str) -> Response {
    match done {
        Ok(()) => see_other(&format!("/reports?done={key}")),
        Err(e) => state.console.error(me, &e, "/reports"),
    }
}

async fn assign(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { me, form: f, .. }: Posted<StepForm, Workers>,
) -> Response {
    // Without an assignee the report is taken by whoever assigns it.
    let assignee = f
        .assignee
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or(&me.account.id)
        .to_owned();
    let done = api::reports::assign_report(state.clone(), &me.caller, &id, &assignee)
        .await
        .map(|_| ());
    after(&state, &me, done, "done_assigned")
}

async fn comment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { me, form: f, .. }: Posted<StepForm, Workers>,
) -> Response {
    let text = f.text.clone().unwrap_or_default();
    let done = api::reports::step(state.clone(), &me.caller, &id, ReportStep::Comment(text))
        .await
        .map(|_| ());
    after(&state, &me, done, "done_commented")
}

async fn close(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { me, form: f, .. }: Posted<StepForm, Workers>,
) -> Response {
    let text = f.text.clone().unwrap_or_default();
    let done = api::reports::step(state.clone(), &me.caller, &id, ReportStep::Close(text))
        .await
        .map(|_| ());
    after(&state, &me, done, "done_closed")
}

/// One overdue part as the page shows it.
#[derive(Debug, serde::Serialize)]
struct OverdueRow {
    serial: String,
    part: String,
    channel: String,
    state: String,
    attempts: u32,
    since: String,
}

async fn overdue(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(rid): Extension<RequestId>,
) -> Response {
    let me = match me(&state, &headers, &rid, WORK, false).await {
        Ok(me) => me,
        Err(res) => return res,
    };
    let older = state.delivery.as_ref().map_or(OVERDUE_AFTER_MS, |d| {
        u64::try_from(d.overdue_after.as_millis()).unwrap_or(u64::MAX)
    });
    let cms = state.cms.clone();
    let jobs = api::blocking(move || cms.overdue(super::now_ms(), older, 1000)).await;
    match jobs {
        Ok(jobs) => {
            let rows: Vec<OverdueRow> = jobs
                .into_iter()
                .map(|j| OverdueRow {
                    serial: j.serial.clone(),
                    part: j.part.as_str().to_owned(),
                    channel: j.channel.as_str().to_owned(),
                    state: j.state.as_str().to_owned(),
                    attempts: j.attempts,
                    since: super::utc(j.created_ms),
                })
                .collect();
            let ctx = context! { jobs => rows, hours => older / 3_600_000 };
            state
                .console
                .render(StatusCode::OK, "overdue.html", me.lang, Some(&me), ctx)
        }
        Err(e) => state.console.error(&me, &e, "/"),
    }
}
