//! `POST /v1/sys/seal`: the emergency seal, for an officer or an admin.
//!
//! It drops every key from memory: the HSM seals (the simulator wipes its root and KEKs; a
//! PKCS#11 token is logged out and its sessions closed, so its keys are out of reach), and the
//! code vault forgets its unwrapped data keys and index key ([`AppState::seal`]). From then on
//! `/readyz` answers `503 sealed`, the delivery workers claim no new job (a send already under
//! way finishes and is recorded; nothing is half-written: each job's state changes in one
//! commit), a running key job stops at its next chunk and resumes after the unseal, and
//! unsealing again needs the custodians' quorum (`POST /v1/sys/unseal`).
//!
//! The audit key stays installed (as after any seal, until the next unseal or shutdown), so
//! the seal is itself recorded: an `hsm.seal` event by the caller, with whether the HSM was
//! sealed already. An emergency seal is never refused for its audit: if the event cannot be
//! written, the HSM is sealed all the same and the caller gets the error.
//!
//! Answer: `{"sealed": true, "was_sealed": bool}`. No body is needed (`{}` or none).

use super::{blocking, ApiError, Caller, Endpoint};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde::Serialize;
use vault::Role;

/// Who may seal: an officer (key custody) or an admin (the service's operator in an
/// emergency, e.g. a suspected intrusion at night).
const SEALERS: &[Role] = &[Role::Officer, Role::Admin];

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::POST, "/v1/sys/seal", post(seal)).roles(SEALERS)]
}

#[derive(Serialize)]
struct Sealed {
    sealed: bool,
    was_sealed: bool,
}

async fn seal(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let st = state.clone();
    let event = caller.event("hsm.seal", "hsm");
    let (was_sealed, audited) = blocking(move || {
        let was_sealed = st.hsm.status().sealed;
        let audited = st
            .audit
            .append(event.detail("was_sealed", was_sealed.to_string()));
        // Whatever the audit said: an emergency seal is not refused.
        st.seal();
        Ok((was_sealed, audited))
    })
    .await?;
    tracing::warn!(by = %caller.account.id, was_sealed, "hsm sealed by request");
    audited?;
    let mut res = (
        StatusCode::OK,
        Json(Sealed {
            sealed: true,
            was_sealed,
        }),
    )
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
