//! The counter's and the service centre's pages: holder search, a card with its parts and
//! dispatches, and the actions on it (identify and activate, choose the delivery, part A as a
//! PDF, suspend / reactivate / revoke after a confirmation step, resend a part, the card's
//! history, a problem report), and for a card at the counter the printable consent form (a PDF
//! for the citizen to sign) and the re-identification after a contact change.
//!
//! Each action calls the API's own function for it ([`crate::api::cards::change`],
//! [`crate::api::dispatch::request_dispatch`], [`crate::api::mailers::counter_pdf`], …) with
//! the session's account as the [`crate::api::Caller`], so the checks, the audit events and
//! the errors are the API's. The roles are the API's too; the rate limit of sensitive calls
//! (search, dispatch, resend, part A) is the same per-account quota.

use super::{me, see_other, Me, Posted, Roles, WithCsrf};
use crate::api::{self, blocking, ApiError, ErrorCode, RateClass, RequestId};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use cards::{Activation, Change, ConsentPurpose, Reason};
use dispatch::{ConsentForm, FormLang, FormPurpose, Identified};
use minijinja::context;
use serde::Deserialize;
use vault::Role;

/// Who may search holders and read a card (the API's `holders` and `cards` readers, less
/// the CMS, which has no console).
const READ: &[Role] = &[Role::Operator, Role::Support];
/// Who may work a card at the counter.
const COUNTER: &[Role] = &[Role::Operator];

/// The plans offered at the counter.
const PLANS: &[&str] = &[
    "counter(2)+sms",
    "counter(2)+email",
    "mailer",
    "sms",
    "email",
];

/// The reasons a person may give (`expired` is the service's own).
const REASONS: &[&str] = &[
    "lost",
    "stolen",
    "damaged",
    "malfunction",
    "code_compromised",
    "puk_blocked",
    "data_error",
    "deceased",
    "replaced",
    "other",
];

/// The notices a card page may show after an action (`?done=`).
const DONE: &[&str] = &[
    "done_activated",
    "done_reidentified",
    "done_dispatched",
    "done_changed",
    "done_resent",
    "done_reported",
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/search", post(search))
        .route("/cards", post(open_card))
        .route("/cards/{serial}", get(card))
        .route("/cards/{serial}/activate", post(activate))
        .route("/cards/{serial}/dispatch", post(dispatch))
        .route("/cards/{serial}/part-a", post(part_a))
        .route("/cards/{serial}/change", post(change))
        .route("/cards/{serial}/resend", post(resend))
        .route("/cards/{serial}/report", post(report))
        .route("/cards/{serial}/history", get(history))
        // consent, re-identify
        .route("/cards/{serial}/consent-form", post(consent_form))
        .route("/cards/{serial}/reidentify", post(reidentify))
}

/// A form's fields, all optional text. No `Debug`: they hold personal data.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Fields {
    csrf: Option<String>,
    codice_fiscale: Option<String>,
    surname: Option<String>,
    birth_date: Option<String>,
    serial: Option<String>,
    by: Option<String>,
    document_type: Option<String>,
    document_number: Option<String>,
    consent_ref: Option<String>,
    d_given_names: Option<String>,
    d_surname: Option<String>,
    d_codice_fiscale: Option<String>,
    delegation_ref: Option<String>,
    plan: Option<String>,
    replace: Option<String>,
    replace_reason: Option<String>,
    reprint: Option<String>,
    action: Option<String>,
    reason: Option<String>,
    confirmed: Option<String>,
    part: Option<String>,
    title: Option<String>,
    text: Option<String>,
}

/// A field's text, trimmed; `None` when empty.
fn text(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn owned(field: &Option<String>) -> String {
    text(field).unwrap_or_default().to_owned()
}

/// The session and the CSRF check of a POST.
/// The counter's operators: [`Posted`] forms of the counter's actions.
struct Counter;

impl Roles for Counter {
    const ROLES: &'static [Role] = COUNTER;
}

/// Operators and the service centre: [`Posted`] forms that look cards up or change their state.
struct Readers;

impl Roles for Readers {
    const ROLES: &'static [Role] = READ;
}

impl WithCsrf for Fields {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// The per-account quota of sensitive calls, shared with the API.
fn sensitive(state: &AppState, me: &Me) -> Result<(), ApiError> {
    state
        .limits
        .check(RateClass::Sensitive, &me.account.id)
        .map_err(ApiError::rate_limited)
}

fn card_url(serial: &str) -> String {
    format!("/cards/{serial}")
}

async fn search(
    State(state): State<AppState>,
    Posted { me, form: f, .. }: Posted<Fields, Readers>,
) -> Response {
    let console = &state.console;
    let found = async {
        let key = api::holders::search_key_of(
            text(&f.codice_fiscale),
            text(&f.surname),
            text(&f.birth_date),
        )?;
        sensitive(&state, &me)?;
        api::holders::search_holders(
            state.clone(),
            &me.caller,
            key,
            None,
            api::holders::DEFAULT_PAGE,
        )
        .await
    }
    .await;
    match found {
        Ok(page) => console.render(
            StatusCode::OK,
            "holders.html",
            me.lang,
            Some(&me),
            context! { holders => page.holders },
        ),
        Err(e) => console.error(&me, &e, "/"),
    }
}

async fn open_card(
    State(state): State<AppState>,
    Posted { me, form: f, .. }: Posted<Fields, Readers>,
) -> Response {
    let serial = owned(&f.serial);
    match api::audit::check_serial(&serial) {
        Ok(()) => see_other(&card_url(&serial)),
        Err(e) => state.console.error(&me, &e, "/"),
    }
}

/// The name (given names and surname) of the holder of card `serial`, or `None` for a card
/// without a holder record.
async fn holder_name(state: &AppState, serial: &str) -> Result<Option<String>, ApiError> {
    let s = state.clone();
    let serial = serial.to_owned();
    let found = blocking(move || s.cms.addressee_of(&*s.hsm, &serial)).await?;
    Ok(found.map(|(name, _address)| name))
}

/// `?done=` on a card page.
#[derive(Debug, Deserialize)]
pub(super) struct CardQuery {
    done: Option<String>,
}

async fn card(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(rid): Extension<RequestId>,
    Path(serial): Path<String>,
    Query(q): Query<CardQuery>,
) -> Response {
    let me = match me(&state, &headers, &rid, READ, false).await {
        Ok(me) => me,
        Err(res) => return res,
    };
    let console = &state.console;
    let view = match api::cards::card_status(state.clone(), &me.caller, serial).await {
        Ok(v) => v.0,
        Err(e) => return console.error(&me, &e, "/"),
    };
    // The holder by name, as the holder page shows them (the card view is audited above).
    // Sealed, the name cannot be decrypted: the page says so and shows the rest.
    let (holder_name, name_sealed) = match holder_name(&state, &view.serial).await {
        Ok(name) => (name, false),
        Err(e) if e.code() == ErrorCode::Sealed => (None, true),
        Err(e) => return console.error(&me, &e, "/"),
    };
    let in_force = view
        .dispatches
        .iter()
        .rev()
        .find(|d| d.superseded_by.is_none())
        .map(|d| d.plan.clone());
    let split = in_force
        .as_deref()
        .is_some_and(|p| p.starts_with("counter("));
    let actions: &[&str] = if me.account.role == Role::Operator {
        &["suspend", "reactivate", "revoke"]
    } else {
        &["suspend"]
    };
    let done = q
        .done
        .as_deref()
        .and_then(|d| DONE.iter().find(|k| **k == d).copied());
    let ctx = context! {
        card => view,
        holder_name => holder_name,
        name_sealed => name_sealed,
        plan => in_force,
        split => split,
        plans => PLANS,
        actions => actions,
        reasons => REASONS,
        done => done,
    };
    console.render(StatusCode::OK, "card.html", me.lang, Some(&me), ctx)
}

/// The activation of a form: by the holder, or by a delegate.
fn activation(f: &Fields) -> Activation {
    let document_type = owned(&f.document_type);
    let document_number = owned(&f.document_number);
    let consent_ref = owned(&f.consent_ref);
    if text(&f.by) == Some("delegate") {
        Activation::Delegate {
            given_names: owned(&f.d_given_names),
            surname: owned(&f.d_surname),
            codice_fiscale: owned(&f.d_codice_fiscale),
            document_type,
            document_number,
            delegation_ref: owned(&f.delegation_ref),
            consent_ref,
        }
    } else {
        Activation::Holder {
            document_type,
            document_number,
            consent_ref,
        }
    }
}

/// After an action: back to the card with a notice, or its error as a page.
fn after(
    state: &AppState,
    me: &Me,
    serial: &str,
    done: Result<(), ApiError>,
    key: &str,
) -> Response {
    match done {
        Ok(()) => see_other(&format!("{}?done={key}", card_url(serial))),
        Err(e) => state.console.error(me, &e, &card_url(serial)),
    }
}

async fn activate(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    Posted { me, form: f, .. }: Posted<Fields, Counter>,
) -> Response {
    let change = Change::Activate(activation(&f));
    let done = api::cards::change(state.clone(), &me.caller, serial.clone(), change)
        .await
        .map(|_| ());
    after(&state, &me, &serial, done, "done_activated")
}

async fn dispatch(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    Posted { me, form: f, .. }: Posted<Fields, Counter>,
) -> Response {
    let body = api::dispatch::DispatchBody {
        plan: owned(&f.plan),
        replace: text(&f.replace) == Some("yes"),
        reason: text(&f.replace_reason).map(str::to_owned),
    };
    let done = match sensitive(&state, &me) {
        Ok(()) => api::dispatch::request_dispatch(state.clone(), &me.caller, serial.clone(), body)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    after(&state, &me, &serial, done, "done_dispatched")
}

async fn part_a(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    Posted { me, form: f, .. }: Posted<Fields, Counter>,
) -> Response {
    let reprint = text(&f.reprint) == Some("yes");
    let pdf = match sensitive(&state, &me) {
        Ok(()) => {
            api::mailers::counter_pdf(state.clone(), &me.caller, serial.clone(), None, reprint)
                .await
        }
        Err(e) => Err(e),
    };
    match pdf {
        Ok(res) => res,
        Err(e) => state.console.error(&me, &e, &card_url(&serial)),
    }
}

async fn change(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    Posted { me, form: f, .. }: Posted<Fields, Readers>,
) -> Response {
    let console = &state.console;
    let back = card_url(&serial);
    let action = text(&f.action).unwrap_or_default();
    let reason =
        || -> Result<Reason, ApiError> { Ok(Reason::parse(text(&f.reason).unwrap_or_default())?) };
    // Support may only suspend (the API's rule); the API function checks no role itself.
    let allowed = me.account.role == Role::Operator || action == "suspend";
    if !allowed {
        let e = ApiError::forbidden(format!("role {} may not {action} a card", me.account.role));
        return console.error(&me, &e, &back);
    }
    let change = match action {
        "suspend" => reason().map(Change::Suspend),
        "revoke" => reason().map(Change::Revoke),
        "reactivate" => Ok(Change::Reactivate),
        _ => Err(ApiError::bad_request(
            "action: one of suspend, reactivate, revoke",
        )),
    };
    let change = match change {
        Ok(c) => c,
        Err(e) => return console.error(&me, &e, &back),
    };
    if text(&f.confirmed) != Some("yes") {
        let reason = match action {
            "reactivate" => None,
            _ => text(&f.reason),
        };
        let ctx = context! { serial => serial, action => action, reason => reason };
        return console.render(StatusCode::OK, "confirm.html", me.lang, Some(&me), ctx);
    }
    let done = api::cards::change(state.clone(), &me.caller, serial.clone(), change)
        .await
        .map(|_| ());
    after(&state, &me, &serial, done, "done_changed")
}

async fn resend(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    Posted { me, form: f, .. }: Posted<Fields, Counter>,
) -> Response {
    let part = owned(&f.part);
    let done = match sensitive(&state, &me) {
        Ok(()) => api::dispatch::resend_part(state.clone(), &me.caller, serial.clone(), &part)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    after(&state, &me, &serial, done, "done_resent")
}

async fn report(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    Posted { me, form: f, .. }: Posted<Fields, Counter>,
) -> Response {
    let done = api::reports::open_report(
        state.clone(),
        &me.caller,
        Some(serial.clone()),
        owned(&f.title),
        owned(&f.text),
    )
    .await
    .map(|_| ());
    after(&state, &me, &serial, done, "done_reported")
}

/// One audit event as the history page shows it.
#[derive(Debug, serde::Serialize)]
struct EventRow {
    seq: u64,
    when: String,
    action: String,
    actor: String,
    role: String,
    outcome: String,
    details: std::collections::BTreeMap<String, String>,
}

async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(rid): Extension<RequestId>,
    Path(serial): Path<String>,
) -> Response {
    let me = match me(&state, &headers, &rid, READ, false).await {
        Ok(me) => me,
        Err(res) => return res,
    };
    let page =
        api::audit::card_events(state.clone(), &me.caller, serial.clone(), 0, Some(100)).await;
    match page {
        Ok(page) => {
            let events: Vec<EventRow> = page
                .0
                .events
                .into_iter()
                .map(|e| EventRow {
                    seq: e.seq,
                    when: super::utc(e.time_ms),
                    action: e.action,
                    actor: e.actor,
                    role: e.role,
                    outcome: format!("{:?}", e.outcome).to_lowercase(),
                    details: e.details,
                })
                .collect();
            let ctx = context! { serial => serial, events => events };
            state
                .console
                .render(StatusCode::OK, "history.html", me.lang, Some(&me), ctx)
        }
        Err(e) => state.console.error(&me, &e, &card_url(&serial)),
    }
}

/// A new consent reference, for a form printed without one: `consenso-YYYYMMDD-` and six
/// random hex digits (`None` if the random generator failed).
fn new_consent_ref(today: cards::Date) -> Option<String> {
    use aws_lc_rs::rand::SecureRandom;
    let mut r = [0u8; 3];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut r).ok()?;
    Some(format!(
        "consenso-{:04}{:02}{:02}-{}",
        today.year(),
        today.month(),
        today.day(),
        hex::encode(r)
    ))
}

/// The consent form's file name: never the whole serial.
fn consent_file_name(serial: &str) -> String {
    format!("consenso-{}.pdf", api::mailers::serial_tail(serial))
}

/// `POST /cards/{serial}/consent-form`: the consent form for the identification typed into
/// the card's form, as a PDF download (`card.consent_form` audited by the cards domain). A
/// form without a consent reference gets a new one, printed on it and recorded in the event.
async fn consent_form(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    Posted { me, form: f, .. }: Posted<Fields, Counter>,
) -> Response {
    match consent_pdf(&state, &me, &serial, &f).await {
        Ok(pdf) => {
            let mut res = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/pdf")],
                pdf,
            )
                .into_response();
            let h = res.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            let name = consent_file_name(&serial);
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            res
        }
        Err(e) => state.console.error(&me, &e, &card_url(&serial)),
    }
}

/// The consent form's PDF (see [`consent_form`]).
async fn consent_pdf(
    state: &AppState,
    me: &Me,
    serial: &str,
    f: &Fields,
) -> Result<Vec<u8>, ApiError> {
    api::audit::check_serial(serial)?;
    let serial = serial.to_owned();
    let today = state.cms.today();
    let mut who = activation(f);
    let (Activation::Holder { consent_ref, .. } | Activation::Delegate { consent_ref, .. }) =
        &mut who;
    if consent_ref.is_empty() {
        *consent_ref = new_consent_ref(today).ok_or_else(ApiError::internal)?;
    }
    let lang = match me.lang {
        super::messages::Lang::It => FormLang::It,
        super::messages::Lang::En => FormLang::En,
    };
    let date = match lang {
        FormLang::It => format!(
            "{:02}/{:02}/{:04}",
            today.day(),
            today.month(),
            today.year()
        ),
        FormLang::En => today.to_string(),
    };
    let operator = me.account.name.clone();
    let s = state.clone();
    let actor = me.caller.actor();
    let made = blocking(move || {
        s.cms
            .print_consent_form(&*s.hsm, &s.audit, &serial, &who, today, &actor, |subject| {
                let identified = match &who {
                    Activation::Holder {
                        document_type,
                        document_number,
                        ..
                    } => Identified::InPerson {
                        document_type,
                        document_number,
                    },
                    Activation::Delegate {
                        given_names,
                        surname,
                        codice_fiscale,
                        document_type,
                        document_number,
                        delegation_ref,
                        ..
                    } => Identified::Delegate {
                        given_names,
                        surname,
                        codice_fiscale,
                        document_type,
                        document_number,
                        delegation_ref,
                    },
                };
                let (Activation::Holder { consent_ref, .. }
                | Activation::Delegate { consent_ref, .. }) = &who;
                dispatch::render_consent_form(&ConsentForm {
                    lang,
                    purpose: match subject.purpose {
                        ConsentPurpose::Activation => FormPurpose::Activation,
                        ConsentPurpose::Reidentification => FormPurpose::Reidentification,
                    },
                    issuer: &s.print.issuer,
                    holder_name: &subject.holder_name,
                    codice_fiscale: &subject.codice_fiscale,
                    card_serial: &subject.serial,
                    identified,
                    consent_ref,
                    date: &date,
                    operator: &operator,
                })
            })
    })
    .await?;
    made.map_err(|e| match e.layout() {
        // Names the field and the character's code, never the text.
        Some(layout) => ApiError::new(
            ErrorCode::Unprintable,
            format!("the consent form cannot be laid out: {layout}"),
        ),
        None => {
            tracing::error!(error = %e, "consent form could not be rendered");
            ApiError::internal()
        }
    })
}

/// `POST /cards/{serial}/reidentify`: the holder (or a delegate) identified again at the
/// counter, through the API's own change ([`api::cards::change`], `card.reidentify`).
async fn reidentify(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    Posted { me, form: f, .. }: Posted<Fields, Counter>,
) -> Response {
    let change = Change::Reidentify(activation(&f));
    let done = api::cards::change(state.clone(), &me.caller, serial.clone(), change)
        .await
        .map(|_| ());
    after(&state, &me, &serial, done, "done_reidentified")
}
