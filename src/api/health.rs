//! Probes: `GET /healthz` (the process is up and can go on working) and `GET /readyz` (the HSM
//! is unsealed and the store takes writes, so the service can do its work).
//!
//! Both read the store's [`Writes`]: what its last write or flush found. A store that refuses
//! writes for now (`Failing`: a full disk may get space back) makes `/readyz` answer
//! `503 storage_unavailable`; it probes with a flush, so that it turns ready again by itself
//! once the disk works, even with no change coming in. A store stuck until it is opened again
//! (`Stuck`: sled after an I/O error) makes `/healthz` answer `503 storage_unavailable` too:
//! only a restart (and so an unseal) brings writes back. Neither answer says more than that:
//! the cause and the path are in the server log.

use super::{blocking, ApiError, Endpoint};
use crate::AppState;
use axum::extract::State;
use axum::http::Method;
use axum::routing::get;
use axum::Json;
use serde::Serialize;
use vault::Writes;

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

/// 200 while the process answers and its store can take writes again; `503
/// storage_unavailable` once the store refuses every write until a restart.
async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.store.writes() == Writes::Stuck {
        return Err(ApiError::storage_unavailable().with_message(
            "the store refuses writes until the service is restarted (disk full or failing); \
             see the server log",
        ));
    }
    Ok(Json(Health { status: "ok" }))
}

/// 200 when the HSM is unsealed and the store takes writes; `503 sealed` while it is sealed,
/// `503 storage_unavailable` while the store refuses writes.
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let hsm = state.hsm.clone();
    let store = state.store.clone();
    let (sealed, writes) = blocking(move || {
        let sealed = hsm.status().sealed;
        let writes = match store.writes() {
            // A flush that works again shows that the disk came back; one that fails
            // changes nothing (the store refuses writes already).
            Writes::Failing => {
                let _ = store.flush();
                store.writes()
            }
            w => w,
        };
        Ok((sealed, writes))
    })
    .await?;
    if sealed {
        return Err(vault::Error::Sealed.into());
    }
    match writes {
        Writes::Working => Ok(Json(Health { status: "ready" })),
        Writes::Failing => Err(ApiError::storage_unavailable()
            .with_message("the store refuses writes (disk full or failing); see the server log")),
        Writes::Stuck => Err(ApiError::storage_unavailable().with_message(
            "the store refuses writes until the service is restarted (disk full or failing); \
             see the server log",
        )),
    }
}
