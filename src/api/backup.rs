//! `POST /v1/sys/backup`: a consistent backup of the running service, streamed as an age
//! archive sealed to `[backup] recipient` (see [`crate::backup`]), for an admin or an officer.
//!
//! The backup is made while the service serves (sled locks its directory, so no other process
//! could read the store): imports, deliveries and key jobs go on, and the archive is the store
//! and the HSM state as they were at one instant. The archive is sealed as it is produced and
//! streamed; the server writes nothing to disk. One backup runs at a time (`409 refused`).
//!
//! Audited twice: `backup.create` before the snapshot (so the archive holds the event of its
//! own making), and `backup.done` after it, with the audit head, the HSM generation and the
//! counts the archive holds (or `backup.failed`).
//!
//! The body ends with an error (a broken transfer) if the backup fails after the answer
//! started; a cut archive does not decrypt, so it cannot be mistaken for a whole one.

use super::audit::{ChannelWriter, CHUNK};
use super::{blocking, ApiError, Caller, Endpoint};
use crate::backup::BackupError;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::io::Write;
use vault::{Outcome, Role};

/// Who may take a backup: the service's operator (admin) or key custody (officer). The
/// archive is sealed to the backup recipient, whose identity neither holds on the server.
const BACKUP_ROLES: &[Role] = &[Role::Admin, Role::Officer];

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::POST, "/v1/sys/backup", post(backup)).roles(BACKUP_ROLES)]
}

async fn backup(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let Some(backups) = state.backups.clone() else {
        return Err(ApiError::new(
            super::error::ErrorCode::Refused,
            "backups are not enabled on this server",
        ));
    };
    if backups.recipient.is_none() {
        return Err(ApiError::new(
            super::error::ErrorCode::Refused,
            "no [backup] recipient configured: backups are refused",
        ));
    }
    let audit = state.audit.clone();
    let event = caller.event("backup.create", "store");
    blocking(move || audit.append(event).map(|_| ())).await?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let audit = state.audit.clone();
    let now = state.clock.now_ms();
    let done = caller.event("backup.done", "store");
    let failed = caller
        .event("backup.failed", "store")
        .outcome(Outcome::Failed);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let outcome = backups
            .write(&mut w, now)
            .and_then(|m| w.flush().map(|()| m).map_err(BackupError::from));
        match outcome {
            Ok(m) => {
                let head = m.audit_head.as_ref();
                let event = done
                    .detail("audit_head_seq", head.map_or(0, |h| h.seq).to_string())
                    .detail(
                        "audit_head_hash",
                        head.map_or_else(String::new, |h| h.hash.clone()),
                    )
                    .detail(
                        "hsm_generation",
                        m.hsm_generation.unwrap_or_default().to_string(),
                    )
                    .detail("cards", m.cards.to_string())
                    .detail("batches", m.batches.to_string())
                    .detail("jobs", m.jobs.to_string())
                    .detail("entries", m.entries.to_string());
                if let Err(e) = audit.append(event) {
                    tracing::error!(error = %e, "backup made but its audit event failed");
                }
                tracing::info!(
                    entries = m.entries,
                    bytes = m.bytes,
                    cards = m.cards,
                    "backup made"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "backup failed");
                let _ = audit.append(failed);
                let _ = tx.blocking_send(Err(std::io::Error::other("backup failed")));
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut res = Body::from_stream(stream).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
