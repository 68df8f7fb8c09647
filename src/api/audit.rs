//! The audit chain over HTTP: search, verify and export for the `auditor`, and the history of
//! one card for the counter and the service centre.
//!
//! | method and path                | roles                 | answer                        |
//! |--------------------------------|-----------------------|-------------------------------|
//! | `GET /v1/audit`                | auditor               | a page of events              |
//! | `GET /v1/audit/verify`         | auditor               | the verification report       |
//! | `GET /v1/audit/export`         | auditor               | every event, JSON lines       |
//! | `GET /v1/cards/{serial}/history` | operator, support, cms | a page of the card's events |
//! | `POST /v1/audit/prune`         | admin                 | the last pruned event         |
//!
//! A prune removes whole checkpointed segments older than `older_than_days` (default and
//! minimum: `[audit] retention_days`, 730), and is itself an event (`audit.prune`). It is the
//! admin's, not the auditor's: the role that reads the chain does not also destroy it.
//!
//! `GET /v1/audit` takes `from_ms`, `to_ms` (ms since the epoch, `to_ms` exclusive), `actor`,
//! `action` (exact, or a prefix ending in `.`), `subject`, `after` (the paging cursor: the
//! `next` of the previous page) and `limit` (default 100, at most 1000).
//!
//! Reading the chain is itself audited (`audit.query`, `audit.verify`, `audit.export`,
//! `card.history`), and the event is written before the answer: a read that cannot be
//! recorded is not served. Events hold personal data only as HMACs, so nothing here shows a
//! name or a codice fiscale in clear.

use super::extract::{id, page_limit, JsonBody};
use super::{blocking, ApiError, Caller, Endpoint};
use crate::ids::Serial;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use std::io::Write;
use vault::Role;
use vault::{Outcome, Page, Query as AuditQuery, VerifyReport, MAX_PAGE};

/// Longest filter value accepted (an account id, an action, a card serial fit easily).
const MAX_FILTER: usize = 64;

/// Events per page when the caller does not say.
pub const DEFAULT_PAGE: usize = 100;

const AUDITOR: &[Role] = &[Role::Auditor];
const ADMIN: &[Role] = &[Role::Admin];
const CARD_HISTORY: &[Role] = &[Role::Operator, Role::Support, Role::Cms];

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/v1/audit", get(query)).roles(AUDITOR),
        Endpoint::new(Method::GET, "/v1/audit/verify", get(verify)).roles(AUDITOR),
        Endpoint::new(Method::GET, "/v1/audit/export", get(export)).roles(AUDITOR),
        Endpoint::new(Method::GET, "/v1/cards/{serial}/history", get(card_history))
            .roles(CARD_HISTORY),
        Endpoint::new(Method::POST, "/v1/audit/prune", post(prune)).roles(ADMIN),
    ]
}

/// The filters of an audit query (the API's query string; the console's form).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryParams {
    pub(crate) from_ms: Option<u64>,
    pub(crate) to_ms: Option<u64>,
    pub(crate) actor: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) after: Option<u64>,
    pub(crate) limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    after: Option<u64>,
    limit: Option<usize>,
}

fn limit(asked: Option<usize>) -> Result<usize, ApiError> {
    page_limit(asked, DEFAULT_PAGE, MAX_PAGE)
}

/// An audited query of the chain (the API and the console).
pub(crate) async fn query(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<QueryParams>,
) -> Result<Json<Page>, ApiError> {
    let q = AuditQuery {
        from_ms: p.from_ms,
        to_ms: p.to_ms,
        actor: p.actor,
        action: p.action,
        subject: p.subject,
        after: p.after.unwrap_or(0),
        limit: limit(p.limit)?,
    };
    // Filter values go into the query's own audit event: keep them short and printable, so
    // the chain holds no bulk text of a caller's choosing.
    for (name, value) in [
        ("actor", &q.actor),
        ("action", &q.action),
        ("subject", &q.subject),
    ] {
        if let Some(v) = value {
            if v.len() > MAX_FILTER || v.chars().any(char::is_control) {
                return Err(ApiError::bad_request(format!(
                    "{name}: at most {MAX_FILTER} printable characters"
                )));
            }
        }
    }
    let mut event = caller.event("audit.query", "audit");
    for (k, v) in [
        ("actor", &q.actor),
        ("action", &q.action),
        ("subject", &q.subject),
    ] {
        if let Some(v) = v {
            event = event.detail(k, v.clone());
        }
    }
    for (k, v) in [("from_ms", q.from_ms), ("to_ms", q.to_ms)] {
        if let Some(v) = v {
            event = event.detail(k, v.to_string());
        }
    }
    let audit = state.audit.clone();
    let page = blocking(move || {
        audit.append(event)?;
        audit.query(&q)
    })
    .await?;
    Ok(Json(page))
}

/// Verifies the chain, audited (the API and the console).
pub(crate) async fn verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<VerifyReport>, ApiError> {
    let audit = state.audit.clone();
    let report = blocking(move || {
        let report = audit.verify()?;
        let mut event = caller
            .event("audit.verify", "audit")
            .detail("events", report.events.to_string())
            .detail("macs_checked", report.macs_checked.to_string());
        if let Some(p) = &report.problem {
            event = event
                .outcome(Outcome::Failed)
                .detail("problem_seq", p.seq.to_string());
        }
        audit.append(event)?;
        Ok(report)
    })
    .await?;
    if let Some(p) = &report.problem {
        tracing::error!(seq = p.seq, problem = %p.message, "audit chain verification failed");
    }
    Ok(Json(report))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PruneRequest {
    older_than_days: Option<u32>,
}

/// What a prune did.
#[derive(Debug, serde::Serialize)]
struct PruneAnswer {
    /// Events up to this sequence number are gone (0: nothing was old enough).
    pruned_through: u64,
    /// The age limit applied, in days.
    older_than_days: u32,
}

async fn prune(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<PruneRequest>,
) -> Result<Json<PruneAnswer>, ApiError> {
    let days = req.older_than_days.unwrap_or(state.retention_days);
    if days < state.retention_days {
        return Err(ApiError::bad_request(format!(
            "older_than_days: at least the retention period of {} days, got {days}",
            state.retention_days
        )));
    }
    let now_ms = state.clock.now_ms();
    let cutoff_ms = now_ms.saturating_sub(u64::from(days) * 86_400_000);
    let audit = state.audit.clone();
    let event = caller
        .event("audit.prune", "audit")
        .detail("older_than_days", days.to_string());
    let through = blocking(move || audit.prune(cutoff_ms, event)).await?;
    tracing::info!(through, days, by = %caller.account.id, "audit chain pruned");
    Ok(Json(PruneAnswer {
        pruned_through: through,
        older_than_days: days,
    }))
}

/// Chunks of the export travel from the blocking writer to the response body through this
/// channel, so the chain is streamed, never held whole in memory.
/// Also the backup's (`api/backup.rs`).
pub(super) struct ChannelWriter {
    pub(super) tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    pub(super) buf: Vec<u8>,
}

pub(super) const CHUNK: usize = 64 * 1024;

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The whole chain as NDJSON, audited (the API and the console).
pub(crate) async fn export(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let audit = state.audit.clone();
    let event = caller.event("audit.export", "audit");
    blocking(move || audit.append(event).map(|_| ())).await?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let audit = state.audit.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let outcome = audit
            .export(&mut w)
            .map_err(|e| e.to_string())
            .and_then(|n| w.flush().map(|()| n).map_err(|e| e.to_string()));
        match outcome {
            Ok(n) => tracing::info!(events = n, "audit chain exported"),
            Err(e) => {
                // The status line is gone already: end the body with an error, so the client
                // sees a broken transfer rather than a short, seemingly complete file.
                tracing::error!(error = %e, "audit export failed");
                let _ = tx.blocking_send(Err(std::io::Error::other("audit export failed")));
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut res = Body::from_stream(stream).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(res)
}

/// A card serial as it may appear in a path (the console's check; the API parses a [`Serial`]).
pub(crate) fn check_serial(serial: &str) -> Result<(), ApiError> {
    id::<Serial>("serial", serial).map(|_| ())
}

async fn card_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
    Query(p): Query<PageParams>,
) -> Result<Json<Page>, ApiError> {
    card_events(state, &caller, serial, p.after.unwrap_or(0), p.limit).await
}

/// A page of a card's audit events, itself audited as `card.history` (the API and the
/// console).
pub(crate) async fn card_events(
    state: AppState,
    caller: &Caller,
    serial: String,
    after: u64,
    asked: Option<usize>,
) -> Result<Json<Page>, ApiError> {
    let serial: Serial = id("serial", &serial)?;
    let q = AuditQuery {
        subject: Some(serial.to_string()),
        after,
        limit: limit(asked)?,
        ..AuditQuery::default()
    };
    let audit = state.audit.clone();
    let event = caller.event("card.history", serial);
    let page = blocking(move || {
        audit.append(event)?;
        audit.query(&q)
    })
    .await?;
    Ok(Json(page))
}
