//! `POST /v1/bounces`: the bounce intake. The relay's bounces for plico's return path (a DSN,
//! RFC 3464) are posted here, raw, by whatever receives them (e.g. a postfix `pipe` transport
//! running `curl --data-binary @-`), with a `cms` token.
//!
//! | method and path    | roles | answer          |
//! |--------------------|-------|-----------------|
//! | `POST /v1/bounces` | cms   | [`BounceAnswer`] |
//!
//! The body is the whole DSN message (at most [`super::BODY_LIMIT`], 64 KiB: `413` above).
//! [`dispatch::dsn::parse`] reads it; the job is the e-mail job its `Original-Envelope-Id`
//! names (plico sends the job's key as `ENVID`), else the one whose `Message-ID` the DSN
//! returns (plico's `<…​.plico@domain>`). A recipient block with `Action: failed` makes a
//! `sent` job `dead` with the reason `bounced <status>` (e.g. `bounced 5.1.1`), audited, and
//! its fallback by policy ([`cards::Cards::mark_bounced`]):
//!
//! | outcome   | status | meaning                                                       |
//! |-----------|--------|---------------------------------------------------------------|
//! | `applied` | 200    | the job is now `dead` with the bounce's status                |
//! | `repeat`  | 200    | the job was not `sent` (e.g. this DSN was posted before): unchanged |
//! | `ignored` | 200    | no recipient failed (`delayed`, `delivered`, `relayed`): unchanged |
//!
//! A body that is not a DSN is `400 bad_request` naming why (no `multipart/report`, no
//! `message/delivery-status` part, a recipient block without `Status`…); a DSN with neither an
//! envelope id nor a returned `Message-ID` is `400` too; one that names no e-mail job of plico's
//! is `404 not_found`.
//!
//! # Security
//! A DSN returns the original message's header (`RET=HDRS`) or, from a relay that ignores it,
//! the whole message with its codes. The parser reads only the returned header section, and no
//! answer, log line or audit event of this route holds anything of the body but the job it
//! names, the `Action` and the status code: neither the recipient's address nor the
//! diagnostic text (which names the address).

use super::{blocking, ApiError, Caller, Endpoint};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use cards::ReceiptOutcome;
use dispatch::dsn::{self, Action};
use serde::{Deserialize, Serialize};
use vault::Role;

const BOUNCES: &[Role] = &[Role::Cms];

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::POST, "/v1/bounces", post(bounce)).roles(BOUNCES)]
}

/// What a posted DSN did. Holds no address and no text of the DSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BounceAnswer {
    /// `applied`, `repeat` or `ignored`.
    pub outcome: String,
    /// The recipient block's `Action` that decided (`failed`, or the first block's).
    pub action: String,
    /// Its status code, e.g. `5.1.1`.
    pub status: String,
    /// The job, when the DSN named one (not for `ignored`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
    /// The card's part the job carries (`whole`, `A`, `B`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// The job's state after the DSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

async fn bounce(
    State(state): State<AppState>,
    _caller: Caller,
    body: Bytes,
) -> Result<Json<BounceAnswer>, ApiError> {
    let parsed = dsn::parse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    drop(body);
    let failed = parsed
        .recipients
        .iter()
        .find(|r| r.action == Action::Failed);
    let Some(failed) = failed else {
        let (action, status) = parsed
            .recipients
            .first()
            .map(|r| (r.action.as_str(), r.status.to_string()))
            .unwrap_or_default();
        tracing::info!(action, status, "bounce ignored: no recipient failed");
        return Ok(Json(BounceAnswer {
            outcome: "ignored".into(),
            action: action.into(),
            status,
            job: None,
            part: None,
            state: None,
        }));
    };
    let status = failed.status.to_string();
    let envelope_id = parsed.envelope_id.clone();
    let digest =
        match parsed.message_id.as_deref() {
            Some(id) => dsn::plico_message_digest(id),
            None if envelope_id.is_some() => None,
            None => return Err(ApiError::bad_request(
                "the dsn names no message: no original-envelope-id, and no text/rfc822-headers \
                 or message/rfc822 part with a message-id",
            )),
        };
    let (cms, audit, hsm) = (state.cms.clone(), state.audit.clone(), state.hsm.clone());
    let policy = state
        .delivery
        .as_ref()
        .map(|d| d.policy)
        .unwrap_or_default();
    let now = state.clock.now_ms();
    let status_for_job = status.clone();
    let (job, outcome) = blocking(move || {
        cms.mark_bounced(
            &*hsm,
            &audit,
            envelope_id.as_deref(),
            digest.as_deref(),
            &status_for_job,
            now,
            &policy,
        )
    })
    .await?;
    let outcome = match outcome {
        ReceiptOutcome::Applied => "applied",
        ReceiptOutcome::Repeat => "repeat",
    };
    tracing::info!(
        job = job.id,
        part = job.part.as_str(),
        status,
        outcome,
        state = job.state.as_str(),
        "bounce"
    );
    Ok(Json(BounceAnswer {
        outcome: outcome.into(),
        action: Action::Failed.as_str().into(),
        status,
        job: Some(job.id),
        part: Some(job.part.as_str().into()),
        state: Some(job.state.as_str().into()),
    }))
}
