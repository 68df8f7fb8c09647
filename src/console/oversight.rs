//! The auditor's and the officer's read-only pages: the audit chain browsed with filters
//! (actor, action, subject, days), verified (showing the first broken link, if any) and
//! exported as NDJSON; and the key status (the HSM sealed or not, with the unseal progress
//! as counts, never a share; terms, data keys, ages, warnings, the key job), which opens
//! before the first unseal too.
//!
//! Filters travel in POST forms, never in URLs (a subject may be a card serial). Each view
//! calls the API's own function ([`crate::api::audit::query`], `verify`, `export`) or the
//! same domain call ([`vault::ceremony::Ceremonies::status`]), so it is audited as through the
//! API. Ceremonies themselves stay on the CLI.

use super::{me, me_checked, Me, Posted, Roles, WithCsrf};
use crate::api::audit::QueryParams;
use crate::api::{self, blocking, ApiError, RequestId};
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use cards::Date;
use minijinja::context;
use serde::Deserialize;
use vault::Role;

const AUDITOR: &[Role] = &[Role::Auditor];
const KEY_READERS: &[Role] = &[Role::Officer, Role::Auditor];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit", get(audit_page).post(audit_query))
        .route("/audit/verify", axum::routing::post(verify))
        .route("/audit/export", axum::routing::post(export))
        .route("/keys", get(keys))
}

/// The audit filters' form.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct AuditForm {
    csrf: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    subject: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

impl WithCsrf for AuditForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// Auditors: the [`Posted`] forms of the audit pages.
struct Auditors;

impl Roles for Auditors {
    const ROLES: &'static [Role] = AUDITOR;
}

fn text(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A day (`YYYY-MM-DD`) as ms since the Unix epoch at its start (or its end, `end`).
fn day_ms(field: &str, v: &Option<String>, end: bool) -> Result<Option<u64>, ApiError> {
    let Some(t) = text(v) else { return Ok(None) };
    let d = Date::parse(&t).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?;
    let days = u64::try_from(d.days_since_epoch() + i64::from(end)).unwrap_or(0);
    Ok(Some((days * 86_400_000).saturating_sub(u64::from(end))))
}

async fn render_events(state: &AppState, me: &Me, params: QueryParams, f: &AuditForm) -> Response {
    let page = api::audit::query(
        axum::extract::State(state.clone()),
        me.caller.clone(),
        Query(params),
    )
    .await;
    match page {
        Ok(page) => {
            let events: Vec<_> = page
                .0
                .events
                .into_iter()
                .rev()
                .map(|e| {
                    context! {
                        seq => e.seq, when => super::utc(e.time_ms), action => e.action,
                        actor => e.actor, role => e.role, subject => e.subject,
                        outcome => format!("{:?}", e.outcome).to_lowercase(), details => e.details,
                    }
                })
                .collect();
            let ctx = context! {
                events => events,
                actor => text(&f.actor), action => text(&f.action), subject => text(&f.subject),
                from => text(&f.from), to => text(&f.to),
            };
            state
                .console
                .render(StatusCode::OK, "audit.html", me.lang, Some(me), ctx)
        }
        Err(e) => state.console.error(me, &e, "/audit"),
    }
}

async fn audit_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(rid): Extension<RequestId>,
) -> Response {
    let me = match me(&state, &headers, &rid, AUDITOR, false).await {
        Ok(me) => me,
        Err(res) => return res,
    };
    // The last 24 hours, as a start.
    let params = QueryParams {
        from_ms: Some(super::now_ms().saturating_sub(86_400_000)),
        limit: Some(vault::MAX_PAGE),
        ..QueryParams::default()
    };
    render_events(&state, &me, params, &AuditForm::default()).await
}

async fn audit_query(
    State(state): State<AppState>,
    Posted { me, form: f, .. }: Posted<AuditForm, Auditors>,
) -> Response {
    let params = match (day_ms("from", &f.from, false), day_ms("to", &f.to, true)) {
        (Ok(from_ms), Ok(to_ms)) => QueryParams {
            from_ms,
            to_ms,
            actor: text(&f.actor),
            action: text(&f.action),
            subject: text(&f.subject),
            after: None,
            limit: Some(vault::MAX_PAGE),
        },
        (Err(e), _) | (_, Err(e)) => return state.console.error(&me, &e, "/audit"),
    };
    render_events(&state, &me, params, &f).await
}

async fn verify(
    State(state): State<AppState>,
    Posted { me, .. }: Posted<AuditForm, Auditors>,
) -> Response {
    match api::audit::verify(State(state.clone()), me.caller.clone()).await {
        Ok(report) => {
            let r = report.0;
            let ctx = context! {
                events => r.events,
                macs => r.macs_checked,
                problem => r.problem.as_ref().map(|p| context! { seq => p.seq, message => p.message.clone() }),
            };
            state
                .console
                .render(StatusCode::OK, "verify.html", me.lang, Some(&me), ctx)
        }
        Err(e) => state.console.error(&me, &e, "/audit"),
    }
}

async fn export(
    State(state): State<AppState>,
    Posted { me, .. }: Posted<AuditForm, Auditors>,
) -> Response {
    match api::audit::export(State(state.clone()), me.caller.clone()).await {
        Ok(mut res) => {
            res.headers_mut().insert(
                axum::http::header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"plico-audit.ndjson\""),
            );
            res
        }
        Err(e) => state.console.error(&me, &e, "/audit"),
    }
}

async fn keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(rid): Extension<RequestId>,
) -> Response {
    // Opens before the first unseal too: that is when the officers need it most.
    let me = match me_checked(
        &state,
        &headers,
        &rid,
        KEY_READERS,
        super::Gate::Page,
        false,
    )
    .await
    {
        Ok(me) => me,
        Err(res) => return res,
    };
    let keys = state.keys.clone();
    let hsm = state.hsm.clone();
    // The seal and the unseal progress: counts only, never a share.
    let h = state.hsm.status();
    let seal = context! {
        sealed => h.sealed,
        progress => h.progress,
        threshold => h.threshold,
        shares => h.shares,
        provider => h.provider,
    };
    match blocking(move || keys.status(&*hsm, super::now_ms())).await {
        Ok(status) => {
            let text = serde_json::to_string_pretty(&status).unwrap_or_default();
            state.console.render(
                StatusCode::OK,
                "keys.html",
                me.lang,
                Some(&me),
                context! { status => text, hsm => seal },
            )
        }
        Err(e) => state.console.error(&me, &e, "/"),
    }
}
