//! `GET /v1/sys/status`: the HSM's public state — sealed or not, unseal progress, the share
//! set, the root key's and each term's key check value. Never key bytes: [`vault::HsmStatus`]
//! has none to show.

use super::{blocking, ApiError, Endpoint};
use crate::AppState;
use axum::extract::State;
use axum::http::Method;
use axum::routing::get;
use axum::Json;
use vault::HsmStatus;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::GET, "/v1/sys/status", get(status)).public()]
}

async fn status(State(state): State<AppState>) -> Result<Json<HsmStatus>, ApiError> {
    let hsm = state.hsm.clone();
    Ok(Json(blocking(move || Ok(hsm.status())).await?))
}
