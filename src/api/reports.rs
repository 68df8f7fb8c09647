//! Technical problem reports ("segnalazione problemi tecnici") over HTTP: the counter opens
//! them, the service centre works them.
//!
//! | method and path                  | roles    | body                          | answer         |
//! |----------------------------------|----------|-------------------------------|----------------|
//! | `POST /v1/reports`               | operator | `{"card"?, "title", "text"}`  | [`ReportView`], 201 |
//! | `GET /v1/reports`                | support  | —                             | [`ReportPage`] |
//! | `POST /v1/reports/{id}/comment`  | support  | `{"text"}`                    | [`ReportView`] |
//! | `POST /v1/reports/{id}/assign`   | support  | `{"assignee": "<account id>"}` | [`ReportView`] |
//! | `POST /v1/reports/{id}/close`    | support  | `{"text"}` (a last comment)   | [`ReportView`] |
//!
//! `GET /v1/reports` takes `after` (a report number: the `next` of the previous page), `limit`
//! (1 to 100, default 50) and `closed` (`true` to list closed reports too; default: open and
//! assigned ones only). A report may be assigned only to an enabled `support` account. A
//! closed report takes no further step (`409 wrong_state`, `error.state` = `closed`). Every
//! step, and every listing, is an audit event (by the vault).
//!
//! Titles, texts and comments are free text and may name people: the vault keeps them sealed,
//! and this module never logs them.

use super::extract::{id, page_limit, query, JsonBody};
use super::{blocking, ApiError, Caller, Endpoint};
use crate::ids::{ReportId, Serial};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use axum::Json;
use cards::{Report, ReportState, ReportStep};
use serde::{Deserialize, Serialize};
use vault::Role;

const OPEN: &[Role] = &[Role::Operator];
const WORK: &[Role] = &[Role::Support];

/// Reports per page when the caller does not say.
pub const DEFAULT_PAGE: usize = 50;
/// The most reports one page may hold.
pub const MAX_PAGE: usize = 100;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::POST, "/v1/reports", post(open)).roles(OPEN),
        Endpoint::new(Method::GET, "/v1/reports", get(list)).roles(WORK),
        Endpoint::new(Method::POST, "/v1/reports/{id}/comment", post(comment)).roles(WORK),
        Endpoint::new(Method::POST, "/v1/reports/{id}/assign", post(assign)).roles(WORK),
        Endpoint::new(Method::POST, "/v1/reports/{id}/close", post(close)).roles(WORK),
    ]
}

/// The body of a new report. No `Debug`: free text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenBody {
    card: Option<String>,
    title: String,
    text: String,
}

/// The body of a comment or a closing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TextBody {
    text: String,
}

/// The body of an assignment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AssignBody {
    assignee: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    after: Option<u64>,
    limit: Option<usize>,
    closed: Option<bool>,
}

/// A comment on a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentView {
    /// The account that wrote it.
    pub by: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The text.
    pub text: String,
}

/// A report as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportView {
    /// The report number.
    pub id: u64,
    /// The card it is about.
    pub card: Option<String>,
    /// `open`, `assigned` or `closed`.
    pub state: ReportState,
    /// The account that opened it.
    pub opened_by: String,
    /// When, ms since the Unix epoch.
    pub opened_ms: u64,
    /// The support account it is assigned to.
    pub assignee: Option<String>,
    /// When it was closed, ms since the Unix epoch.
    pub closed_ms: Option<u64>,
    /// The title.
    pub title: String,
    /// The description.
    pub text: String,
    /// Comments, oldest first (the last one of a closed report is its closing note).
    pub comments: Vec<CommentView>,
}

impl From<Report> for ReportView {
    fn from(r: Report) -> Self {
        ReportView {
            id: r.id,
            card: r.card,
            state: r.state,
            opened_by: r.opened_by,
            opened_ms: r.opened_ms,
            assignee: r.assignee,
            closed_ms: r.closed_ms,
            title: r.title,
            text: r.text,
            comments: r
                .comments
                .into_iter()
                .map(|c| CommentView {
                    by: c.by,
                    at_ms: c.at_ms,
                    text: c.text,
                })
                .collect(),
        }
    }
}

/// A page of reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportPage {
    /// The reports, by ascending number.
    pub reports: Vec<ReportView>,
    /// The `after` of the next page; absent when this page is not full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// A report number from the path.
fn report_id(text: &str) -> Result<u64, ApiError> {
    id::<ReportId>("report id", text).map(|r| r.0)
}

async fn open(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<OpenBody>,
) -> Result<(StatusCode, Json<ReportView>), ApiError> {
    let report = open_report(state, &caller, body.card, body.title, body.text).await?;
    Ok((StatusCode::CREATED, Json(report)))
}

/// Opens a problem report, about a card or not (the API and the console).
pub(crate) async fn open_report(
    state: AppState,
    caller: &Caller,
    card: Option<String>,
    title: String,
    text: String,
) -> Result<ReportView, ApiError> {
    if let Some(card) = &card {
        id::<Serial>("card", card)?;
    }
    let s = state.clone();
    let actor = caller.actor();
    let report = blocking(move || {
        s.cms
            .open_report(&*s.hsm, &s.audit, card.as_deref(), &title, &text, &actor)
    })
    .await?;
    tracing::info!(report = report.id, by = %caller.account.id, "problem report opened");
    Ok(ReportView::from(report))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ReportPage>, ApiError> {
    let p = query(params)?;
    let limit = page_limit(p.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let page = list_reports(
        state,
        &caller,
        p.after.unwrap_or(0),
        limit,
        p.closed.unwrap_or(false),
    )
    .await?;
    Ok(Json(page))
}

/// A page of reports after number `after`, at most `limit` (checked by the caller), closed
/// ones too if `closed`; the listing is audited by the vault (the API and the console).
pub(crate) async fn list_reports(
    state: AppState,
    caller: &Caller,
    after: u64,
    limit: usize,
    closed: bool,
) -> Result<ReportPage, ApiError> {
    let s = state.clone();
    let actor = caller.actor();
    let reports = blocking(move || {
        s.cms
            .reports(&*s.hsm, &s.audit, after, limit, closed, &actor)
    })
    .await?;
    let next = if reports.len() == limit {
        reports.last().map(|r| r.id)
    } else {
        None
    };
    Ok(ReportPage {
        reports: reports.into_iter().map(ReportView::from).collect(),
        next,
    })
}

/// Applies `step` to report `id` (the API and the console).
pub(crate) async fn step(
    state: AppState,
    caller: &Caller,
    id: &str,
    step: ReportStep,
) -> Result<Json<ReportView>, ApiError> {
    let id = report_id(id)?;
    let s = state.clone();
    let actor = caller.actor();
    let report = blocking(move || s.cms.report_step(&*s.hsm, &s.audit, id, &step, &actor)).await?;
    tracing::info!(
        report = report.id,
        state = ?report.state,
        by = %caller.account.id,
        "problem report step"
    );
    Ok(Json(ReportView::from(report)))
}

async fn comment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TextBody>,
) -> Result<Json<ReportView>, ApiError> {
    step(state, &caller, &id, ReportStep::Comment(body.text)).await
}

async fn close(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TextBody>,
) -> Result<Json<ReportView>, ApiError> {
    step(state, &caller, &id, ReportStep::Close(body.text)).await
}

async fn assign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AssignBody>,
) -> Result<Json<ReportView>, ApiError> {
    assign_report(state, &caller, &id, &body.assignee).await
}

/// Assigns report `id` to `assignee`, the id of an enabled support account (the API and the
/// console).
pub(crate) async fn assign_report(
    state: AppState,
    caller: &Caller,
    id: &str,
    assignee: &str,
) -> Result<Json<ReportView>, ApiError> {
    let assignee = assignee.trim().to_owned();
    let accounts = state.accounts.clone();
    let who = assignee.clone();
    let account = blocking(move || {
        if who.is_empty() || who.len() > 64 {
            return Ok(None);
        }
        accounts.get(&who)
    })
    .await?;
    match account {
        Some(a) if a.role == Role::Support && !a.disabled => {}
        _ => {
            return Err(ApiError::bad_request(
                "assignee: the id of an enabled support account",
            ))
        }
    }
    step(state, caller, id, ReportStep::Assign(assignee)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_ids() {
        assert_eq!(report_id("7").ok(), Some(7));
        assert!(report_id("0").is_err());
        assert!(report_id("-1").is_err());
        assert!(report_id("x").is_err());
    }
}
