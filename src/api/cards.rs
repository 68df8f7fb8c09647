//! Card lifecycle over HTTP: a card's status, and the counter's changes of its state.
//!
//! | method and path                       | roles                  | body           | answer       |
//! |---------------------------------------|------------------------|----------------|--------------|
//! | `GET /v1/cards/{serial}`              | operator, cms, support | —              | [`CardView`] |
//! | `POST /v1/cards/{serial}/activate`    | operator, cms          | an activation  | [`CardView`] |
//! | `POST /v1/cards/{serial}/suspend`     | operator, cms, support | `{"reason"}`   | [`CardView`] |
//! | `POST /v1/cards/{serial}/reactivate`  | operator, cms          | none           | [`CardView`] |
//! | `POST /v1/cards/{serial}/revoke`      | operator, cms          | `{"reason"}`   | [`CardView`] |
//! | `POST /v1/cards/{serial}/reidentify`  | operator               | an activation  | [`CardView`] |
//!
//! (`GET /v1/cards/{serial}/history`, the card's audit events, is in [`super::audit`];
//! `GET /v1/cards/{serial}/mailers` and `POST /v1/cards/{serial}/counter-page`, the card's
//! printed mailers and the counter's part-A page, are in [`super::mailers`];
//! `POST /v1/cards/{serial}/dispatch` and `…/resend`, the delivery of its codes, are in
//! [`super::dispatch`].)
//!
//! Why these roles: the counter (`operator`) and the CMS run the lifecycle. The service
//! centre (`support`) may look a card up and suspend it — a holder who phones about a lost or
//! stolen card must be able to block it at once — but not activate, reactivate or revoke it:
//! those need the holder identified at the counter, or the CMS's decision. Auditors read the
//! same changes in the audit chain.
//!
//! An activation body is tagged by `by`:
//!
//! ```json
//! {"by": "holder", "document_type": "carta_identita", "document_number": "CA12345AB",
//!  "consent_ref": "consent-2026-0001"}
//! {"by": "delegate", "given_names": "Anna", "surname": "Bianchi", "codice_fiscale": "…",
//!  "document_type": "passaporto", "document_number": "YA1234567",
//!  "delegation_ref": "delega-77", "consent_ref": "consent-2026-0002"}
//! ```
//!
//! A re-identification takes the same body as an activation: the holder (or a delegate)
//! identified again at the counter. It keeps an active card active and is needed before codes
//! go to a mobile number or e-mail address that the registry changed after the card's last
//! identification (rule 13). Only the counter (`operator`) sees the documents, so only it may.
//!
//! A reason is one of `lost`, `stolen`, `damaged`, `malfunction`, `code_compromised`,
//! `puk_blocked`, `data_error`, `deceased`, `replaced`, `expired`, `other`.
//!
//! Every change answers the card's new status, and is one audit event written in the same
//! store transaction as the change (by the vault). A change the card's state does not allow
//! answers `409 wrong_state` with the current state in `error.state`, and changes nothing; an
//! unknown card is `404`; activating a card of a holder registered as deceased is
//! `409 refused`. A card found past its expiry is revoked on the way (reason `expired`), as on
//! every access.
//!
//! Reading a status is not audited: it shows neither a code nor a personal datum (the holder
//! appears by id), and the counter reads it often; the card's history is. No answer here ever
//! holds a code: revoking a card deletes its codes, and `codes_held` only says whether plico
//! still has them. Each part's delivery ([`PartView`]) shows its channel and state, never the
//! contact it goes to or its job's idempotency key; `dispatches` lists every dispatch of the
//! card with all its parts' jobs (superseded ones too), in the same form.

use super::dispatch::DispatchView;
use super::extract::id;
use super::extract::JsonBody;
use super::{blocking, ApiError, Caller, Endpoint};
use crate::ids::Serial;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::routing::{get, post};
use axum::Json;
use cards::Date;
use cards::{Activation, CardState, CardStatus, Change, Channel, JobState, PartDelivery, Reason};
use serde::{Deserialize, Serialize};
use vault::Role;

const READ: &[Role] = &[Role::Operator, Role::Cms, Role::Support];
const ACTIVATE: &[Role] = &[Role::Operator, Role::Cms];
const SUSPEND: &[Role] = &[Role::Operator, Role::Cms, Role::Support];
const REACTIVATE: &[Role] = &[Role::Operator, Role::Cms];
const REVOKE: &[Role] = &[Role::Operator, Role::Cms];
const REIDENTIFY: &[Role] = &[Role::Operator];

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/v1/cards/{serial}", get(show)).roles(READ),
        Endpoint::new(Method::POST, "/v1/cards/{serial}/activate", post(activate)).roles(ACTIVATE),
        Endpoint::new(Method::POST, "/v1/cards/{serial}/suspend", post(suspend)).roles(SUSPEND),
        Endpoint::new(
            Method::POST,
            "/v1/cards/{serial}/reactivate",
            post(reactivate),
        )
        .roles(REACTIVATE),
        Endpoint::new(Method::POST, "/v1/cards/{serial}/revoke", post(revoke)).roles(REVOKE),
        Endpoint::new(
            Method::POST,
            "/v1/cards/{serial}/reidentify",
            post(reidentify),
        )
        .roles(REIDENTIFY),
    ]
}

/// The delivery state of one part of a card's codes, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPart {
    /// The part: `A`, `B` or `whole`.
    pub part: String,
    /// Its latest job's state, or `needs_counter_reprint`.
    pub state: String,
}

/// One part's delivery in detail: its latest job. No contact, no idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartView {
    /// `A`, `B` or `whole`.
    pub part: cards::Part,
    /// The channel of its latest job: `counter`, `sms`, `email` or `mailer`.
    pub channel: Channel,
    /// The state of its latest job.
    pub state: JobState,
    /// Dead with no fallback left: the part must be reprinted at the counter.
    pub needs_counter_reprint: bool,
    /// The latest job's id.
    pub job: u64,
    /// Its attempts so far.
    pub attempts: u32,
    /// Its last change, ms since the Unix epoch.
    pub updated_ms: u64,
    /// The reason code of its last failure (`tls_untrusted`, `rejected_recipient`, …; the
    /// table is in docs/delivery.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

impl From<PartDelivery> for PartView {
    fn from(p: PartDelivery) -> Self {
        PartView {
            part: p.part,
            channel: p.channel,
            state: p.state,
            needs_counter_reprint: p.needs_counter_reprint,
            job: p.job,
            attempts: p.attempts,
            updated_ms: p.updated_ms,
            failure_reason: p.failure_reason,
        }
    }
}

/// A card's status as the API shows it. No code, no personal datum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardView {
    /// The card serial.
    pub serial: String,
    /// `issued`, `active`, `suspended` or `revoked`.
    pub state: CardState,
    /// The holder id (personal data is only shown by a search).
    pub holder: String,
    /// Expiry date.
    pub expiry: Option<Date>,
    /// The card that replaces it.
    pub replaced_by: Option<String>,
    /// Why it was last suspended or revoked.
    pub reason: Option<Reason>,
    /// `holder` or `delegate`, once activated.
    pub activated_by: Option<String>,
    /// Activation time, ms since the Unix epoch.
    pub activated_ms: Option<u64>,
    /// Last change, ms since the Unix epoch.
    pub changed_ms: u64,
    /// Whether plico holds the card's codes.
    pub codes_held: bool,
    /// Delivery state of each part of the codes (empty until a delivery is asked for).
    pub delivery: Vec<DeliveryPart>,
    /// The same in detail: channel, state, attempts and last change of each part.
    #[serde(default)]
    pub parts: Vec<PartView>,
    /// When the holder was last identified for this card (activation or re-identification),
    /// ms since the Unix epoch.
    #[serde(default)]
    pub identified_ms: Option<u64>,
    /// Every dispatch of the card, oldest first, each with all its jobs (resends and
    /// fallbacks included); the last one is in force unless superseded.
    #[serde(default)]
    pub dispatches: Vec<DispatchView>,
}

impl From<CardStatus> for CardView {
    fn from(s: CardStatus) -> Self {
        CardView {
            serial: s.serial,
            state: s.state,
            holder: s.holder,
            expiry: s.expiry,
            replaced_by: s.replaced_by,
            reason: s.reason,
            activated_by: s.activated_by,
            activated_ms: s.activated_ms,
            changed_ms: s.changed_ms,
            codes_held: s.codes_held,
            delivery: s
                .delivery
                .into_iter()
                .map(|(part, state)| DeliveryPart { part, state })
                .collect(),
            parts: s.parts.into_iter().map(PartView::from).collect(),
            identified_ms: s.identified_ms,
            dispatches: s.dispatches.into_iter().map(DispatchView::from).collect(),
        }
    }
}

/// The body of a suspension or revocation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReasonBody {
    reason: String,
}

pub(super) fn reason(body: &ReasonBody) -> Result<Reason, ApiError> {
    Ok(Reason::parse(body.reason.trim())?)
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
) -> Result<Json<CardView>, ApiError> {
    card_status(state, &caller, serial).await
}

/// A card's status (the API and the console).
pub(crate) async fn card_status(
    state: AppState,
    caller: &Caller,
    serial: String,
) -> Result<Json<CardView>, ApiError> {
    let serial: Serial = id("serial", &serial)?;
    let s = state.clone();
    let actor = caller.actor();
    let status = blocking(move || s.cms.status(&s.audit, &serial, s.cms.today(), &actor)).await?;
    Ok(Json(CardView::from(status)))
}

/// Applies `change` to the card and answers its new status (the API and the console).
pub(crate) async fn change(
    state: AppState,
    caller: &Caller,
    serial: String,
    change: Change,
) -> Result<Json<CardView>, ApiError> {
    let serial: Serial = id("serial", &serial)?;
    let s = state.clone();
    let actor = caller.actor();
    let status = blocking(move || {
        s.cms
            .change(&*s.hsm, &s.audit, &serial, &change, s.cms.today(), &actor)
    })
    .await?;
    tracing::info!(
        serial = %status.serial,
        state = %status.state,
        by = %caller.account.id,
        "card state changed"
    );
    Ok(Json(CardView::from(status)))
}

async fn activate(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
    JsonBody(activation): JsonBody<Activation>,
) -> Result<Json<CardView>, ApiError> {
    change(state, &caller, serial, Change::Activate(activation)).await
}

async fn reidentify(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
    JsonBody(identification): JsonBody<Activation>,
) -> Result<Json<CardView>, ApiError> {
    change(state, &caller, serial, Change::Reidentify(identification)).await
}

async fn suspend(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Json<CardView>, ApiError> {
    let r = reason(&body)?;
    change(state, &caller, serial, Change::Suspend(r)).await
}

async fn reactivate(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
) -> Result<Json<CardView>, ApiError> {
    change(state, &caller, serial, Change::Reactivate).await
}

async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(serial): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Json<CardView>, ApiError> {
    let r = reason(&body)?;
    change(state, &caller, serial, Change::Revoke(r)).await
}
