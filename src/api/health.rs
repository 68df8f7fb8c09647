//! Probes: `GET /healthz` (the process is up) and `GET /readyz` (the HSM is unsealed, so the
//! service can do its work).

use super::{blocking, ApiError, Endpoint};
use crate::AppState;
use axum::extract::State;
use axum::http::Method;
use axum::routing::get;
use axum::Json;
use serde::Serialize;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/healthz", get(healthz)).public(),
        Endpoint::new(Method::GET, "/readyz", get(readyz)).public(),
    ]
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// Always 200 while the process answers.
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// 200 when the HSM is unsealed; `503 sealed` while it is sealed.
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let hsm = state.hsm.clone();
    let sealed = blocking(move || Ok(hsm.status().sealed)).await?;
    if sealed {
        Err(vault::Error::Sealed.into())
    } else {
        Ok(Json(Health { status: "ready" }))
    }
}
