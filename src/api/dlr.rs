//! `GET /v1/dlr`: the SMS gateway's delivery reports (Kannel's `dlr-url`).
//!
//! Kannel calls it with the job's idempotency key and its status (`%d`): 1 delivered → the
//! part is `delivered`; 2 or 16 (a negative receipt) → the job fails (retried, or `dead` and
//! its fallback, by the policy); 4 and 8 (buffered, accepted by the SMSC) are intermediate and
//! ignored. The route has no bearer token (the gateway has none): it requires instead the
//! shared secret `[dispatch.sms] dlr_token` as `token=` in the query, compared in constant
//! time; without it, or when none is configured, 401. The answer says only whether the
//! report was applied.

use super::{blocking, ApiError, Endpoint, ErrorCode};
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::routing::get;
use axum::Json;
use cards::ReceiptOutcome;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::GET, "/v1/dlr", get(dlr)).public()]
}

#[derive(Deserialize)]
struct DlrQuery {
    token: Option<String>,
    key: Option<String>,
    status: Option<String>,
}

fn unauthorized() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "a valid delivery report token is required",
    )
}

/// Whether `given` is the configured token: both hashed, the digests compared in constant
/// time (so neither the content nor the length leaks through timing).
fn token_ok(state: &AppState, given: Option<&str>) -> bool {
    let (Some(given), Some(want)) = (given, state.delivery.as_ref().and_then(|d| d.dlr_token()))
    else {
        return false;
    };
    let digest = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let (a, b) = (
        digest(given.as_bytes()),
        digest(want.expose_secret().as_bytes()),
    );
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref()).is_ok()
}

async fn dlr(
    State(state): State<AppState>,
    query: Result<Query<DlrQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Ok(Query(q)) = query else {
        return Err(unauthorized());
    };
    if !token_ok(&state, q.token.as_deref()) {
        return Err(unauthorized());
    }
    let Some(delivery) = state.delivery.clone() else {
        return Err(unauthorized());
    };
    let key = q
        .key
        .ok_or_else(|| ApiError::bad_request("key: required"))?;
    let delivered = match q.status.as_deref().map(str::trim) {
        Some("1") => true,
        Some("2" | "16") => false,
        Some("4" | "8") => return Ok(Json(json!({"outcome": "ignored"}))),
        _ => return Err(ApiError::bad_request("status: expected 1, 2, 4, 8 or 16")),
    };
    if !state.audit.has_key() {
        return Err(vault::Error::Sealed.into());
    }
    let (cms, audit, hsm) = (state.cms.clone(), state.audit.clone(), state.hsm.clone());
    let policy = delivery.policy;
    let now = state.clock.now_ms();
    let (job, outcome) =
        blocking(move || cms.mark_delivered_by_key(&*hsm, &audit, &key, delivered, now, &policy))
            .await?;
    let applied = matches!(outcome, ReceiptOutcome::Applied);
    tracing::info!(
        job = job.id,
        channel = job.channel.as_str(),
        part = job.part.as_str(),
        delivered,
        applied,
        outcome = job.state.as_str(),
        "delivery report"
    );
    Ok(Json(
        json!({"outcome": if applied { "applied" } else { "repeat" }}),
    ))
}
