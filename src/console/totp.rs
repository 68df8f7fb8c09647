//! The second factor in the console: the code after the password, enrolment, and an admin's
//! reset.
//!
//! ```text
//! POST /login (password right, TOTP enrolled) ─▶ session AwaitingCode ─▶ GET|POST /login/code
//!      right code ─▶ session Full, auth.login (factor totp)
//!      wrong code ─▶ auth.login_failed (wrong_code), counted by the login guard: the lockout
//!                    ends the session and the login page says what it says for a password
//! GET /totp ─▶ POST /totp/new (a fresh secret, shown once) ─▶ POST /totp/confirm (a code)
//! POST /accounts/{id}/totp-reset (admin)
//! ```
//!
//! - The secret is made, checked and sealed by the vault (`vault::TotpSecret`,
//!   `Accounts::enrol_totp`); this module keeps a secret shown and not yet confirmed in memory
//!   only ([`Pending`], ten minutes, zeroized), and never puts one in a URL or a log.
//! - The enrolment page shows the `otpauth://` URI as a QR code too: inline SVG rendered by the
//!   `qrcode` crate, attributes only, so the CSP (no inline style or script) holds.
//! - Enrolling again needs an admin's reset first: a borrowed session cannot replace the
//!   second factor of its account.
//! - Tokens (machine accounts) never reach these pages: the console does not read them.

use super::admin::Admins;
use super::login::{append, auth_event, login_form, CsrfForm};
use super::messages::Lang;
use super::session::Stage;
use super::{me_at, see_other, Gate, Me, PeerIp, Posted, Roles, WithCsrf};
use crate::api::{blocking, RequestId};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use minijinja::{context, Value};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vault::{Outcome, Role, TotpSecret};

/// How long a secret shown for enrolment waits for its confirming code.
const PENDING_FOR: Duration = Duration::from_secs(10 * 60);

/// The second factor's routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/login/code", get(code_page).post(code))
        .route("/totp", get(enrol_page))
        .route("/totp/new", post(enrol_new))
        .route("/totp/confirm", post(enrol_confirm))
        .route("/accounts/{id}/totp-reset", post(reset))
}

/// Secrets shown for enrolment and not yet confirmed, by account id: in memory only.
#[derive(Default)]
pub(super) struct Pending(Mutex<HashMap<String, (TotpSecret, Instant)>>);

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pending(<redacted>)")
    }
}

impl Pending {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (TotpSecret, Instant)>> {
        vault::lock(&self.0)
    }

    fn put(&self, account: &str, secret: TotpSecret) {
        let now = Instant::now();
        let mut map = self.map();
        map.retain(|_, (_, at)| now.saturating_duration_since(*at) < PENDING_FOR);
        map.insert(account.to_owned(), (secret, now));
    }

    fn get(&self, account: &str) -> Option<TotpSecret> {
        let map = self.map();
        let (secret, at) = map.get(account)?;
        (at.elapsed() < PENDING_FOR).then(|| secret.clone())
    }

    fn remove(&self, account: &str) {
        self.map().remove(account);
    }
}

/// A form with a code. No `Debug`: it holds a code.
#[derive(Deserialize)]
pub(super) struct CodeForm {
    #[serde(default)]
    code: String,
    csrf: Option<String>,
}

impl WithCsrf for CodeForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// A session awaiting its second-factor code: the code form.
struct AwaitingCode;

impl Roles for AwaitingCode {
    const ROLES: &'static [Role] = &[];
    const GATE: Gate = Gate::Code;
}

/// Any role, also with a second factor still to enrol: the enrolment forms.
struct Enrolling;

impl Roles for Enrolling {
    const ROLES: &'static [Role] = &[];
    const GATE: Gate = Gate::Enrol;
}

/// The code page of a session awaiting its code (no menu: nothing else is open to it).
fn code_form(state: &AppState, me: &Me, status: StatusCode, error: Option<&str>) -> Response {
    let ctx = context! { error => error, csrf => me.session.csrf.clone() };
    state
        .console
        .render(status, "totp_code.html", me.lang, None, ctx)
}

async fn code_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(rid): Extension<RequestId>,
) -> Response {
    match me_at(&state, &headers, &rid, &[], Gate::Code).await {
        Ok(me) => code_form(&state, &me, StatusCode::OK, None),
        Err(res) => res,
    }
}

/// The login page again after a session awaiting its code was ended (lockout), its cookie
/// cleared.
fn back_to_login(state: &AppState, lang: Lang) -> Response {
    let console = &state.console;
    let mut res = login_form(
        state,
        StatusCode::UNAUTHORIZED,
        lang,
        Some("err_login"),
        false,
        "",
    );
    res.headers_mut().append(
        header::SET_COOKIE,
        console.cookie(console.cookie_name(), "", true),
    );
    res
}

async fn code(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerIp>,
    Extension(rid): Extension<RequestId>,
    Posted { me, form, .. }: Posted<CodeForm, AwaitingCode>,
) -> Response {
    let console = state.console.clone();
    if !console.guard.address_ok(peer.0) {
        tracing::warn!("console: login attempts from one address over the limit");
        return code_form(
            &state,
            &me,
            StatusCode::TOO_MANY_REQUESTS,
            Some("err_login_rate"),
        );
    }
    let id = me.account.id.clone();
    let role = me.account.role.as_str();
    let failed = |reason: &'static str| {
        let event = auth_event("auth.login_failed", &id, role, &rid)
            .outcome(Outcome::Refused)
            .detail("reason", reason)
            .detail("factor", "totp");
        let state = state.clone();
        async move {
            if let Err(e) = append(&state, event).await {
                tracing::error!(code = e.code().as_str(), "could not audit a failed login");
            }
        }
    };
    if console.guard.locked(&id) {
        console.guard.failed(&id);
        console.sessions.end(&me.sid);
        failed("locked").await;
        return back_to_login(&state, me.lang);
    }
    let accounts = state.accounts.clone();
    let who = id.clone();
    let typed = form.code;
    match blocking(move || accounts.verify_totp(&who, &typed)).await {
        Ok(true) => {}
        Ok(false) => {
            if console.guard.failed(&id) {
                console.sessions.end(&me.sid);
                failed("wrong_code_now_locked").await;
                return back_to_login(&state, me.lang);
            }
            failed("wrong_code").await;
            return code_form(&state, &me, StatusCode::UNAUTHORIZED, Some("err_code"));
        }
        Err(e) => {
            tracing::error!(account = %id, code = e.code().as_str(), "second factor unreadable");
            return console.message(e.status(), me.lang, None, "err_internal", None, "/login");
        }
    }
    let event = auth_event("auth.login", &id, role, &rid).detail("factor", "totp");
    if let Err(e) = append(&state, event).await {
        // No audit, no session.
        console.sessions.end(&me.sid);
        return console.message(e.status(), me.lang, None, "err_internal", None, "/login");
    }
    if !console.sessions.promote(&me.sid) {
        return see_other("/login?expired=1");
    }
    console.guard.clear(&id);
    tracing::info!(account = %id, "console login with a second factor");
    if me.account.password_change_required {
        see_other("/password")
    } else {
        see_other("/")
    }
}

/// The enrolment page: `shown` is a fresh secret to show (this once).
fn enrol_form(
    state: &AppState,
    me: &Me,
    status: StatusCode,
    shown: Option<&TotpSecret>,
    error: Option<&str>,
) -> Response {
    let pending = shown.is_some() || state.console.totp.get(&me.account.id).is_some();
    let uri = shown.map(|s| s.expose_uri(&me.account.name));
    let ctx = context! {
        qr => uri.as_deref().and_then(|u| qr_svg(u)).map(Value::from_safe_string),
        enrolled => me.account.totp.is_some(),
        required => state.console.settings.require_totp,
        pending => pending,
        secret => shown.map(|s| s.expose_base32().to_string()),
        uri => uri.as_deref().map(String::as_str),
        error => error,
    };
    state
        .console
        .render(status, "totp.html", me.lang, Some(me), ctx)
}

/// The `otpauth://` URI as a QR code: an inline SVG made of attributes only (no style, no
/// script, so the page's CSP holds), with nothing taken from input but the URI's modules.
/// `None` if the URI does not fit a QR code (it always does: a name is at most 100 characters).
fn qr_svg(uri: &str) -> Option<String> {
    let code =
        qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    // Inline in HTML: without the XML declaration.
    svg.find("<svg").map(|at| svg[at..].to_owned())
}

async fn enrol_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(rid): Extension<RequestId>,
) -> Response {
    match me_at(&state, &headers, &rid, &[], Gate::Enrol).await {
        Ok(me) => enrol_form(&state, &me, StatusCode::OK, None, None),
        Err(res) => res,
    }
}

async fn enrol_new(
    State(state): State<AppState>,
    Posted { me, .. }: Posted<CsrfForm, Enrolling>,
) -> Response {
    if me.account.totp.is_some() {
        return see_other("/totp");
    }
    let secret = match TotpSecret::generate() {
        Ok(s) => s,
        Err(_) => {
            return state
                .console
                .error(&me, &crate::api::ApiError::internal(), "/totp");
        }
    };
    state.console.totp.put(&me.account.id, secret.clone());
    enrol_form(&state, &me, StatusCode::OK, Some(&secret), None)
}

async fn enrol_confirm(
    State(state): State<AppState>,
    Posted { me, form, .. }: Posted<CodeForm, Enrolling>,
) -> Response {
    if me.account.totp.is_some() {
        return see_other("/totp");
    }
    let Some(secret) = state.console.totp.get(&me.account.id) else {
        return enrol_form(
            &state,
            &me,
            StatusCode::CONFLICT,
            None,
            Some("err_totp_expired"),
        );
    };
    let accounts = state.accounts.clone();
    let id = me.account.id.clone();
    let actor = me.caller.actor();
    let typed = form.code;
    match blocking(move || accounts.enrol_totp(&id, &secret, &typed, &actor)).await {
        Ok(true) => {
            state.console.totp.remove(&me.account.id);
            // Sessions opened with the password alone end; this one goes on.
            state
                .console
                .sessions
                .end_others(&me.account.id, Some(&me.sid));
            tracing::info!(account = %me.account.id, "console second factor enrolled");
            state
                .console
                .message(StatusCode::OK, me.lang, Some(&me), "done_totp", None, "/")
        }
        Ok(false) => enrol_form(
            &state,
            &me,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            Some("err_totp_code"),
        ),
        Err(e) => state.console.error(&me, &e, "/totp"),
    }
}

async fn reset(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { me, .. }: Posted<CsrfForm, Admins>,
) -> Response {
    let accounts = state.accounts.clone();
    let actor = me.caller.actor();
    let who = id.clone();
    match blocking(move || accounts.reset_totp(&who, &actor)).await {
        Ok(done) => {
            // A session waiting for a code of the removed factor cannot give one: it ends.
            state.console.sessions.end_stage(&id, Stage::AwaitingCode);
            let title = if done { "done_totp_reset" } else { "totp_none" };
            state.console.message(
                StatusCode::OK,
                me.lang,
                Some(&me),
                title,
                Some(id),
                "/accounts",
            )
        }
        Err(e) => state.console.error(&me, &e, "/accounts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qr_code_is_inline_svg_without_style_or_script() {
        let uri = "otpauth://totp/plico:Mario%20Rossi?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=plico";
        let svg = qr_svg(uri).unwrap_or_default();
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"), "{svg}");
        for bad in ["style", "script", "<?xml", "secret", "href"] {
            assert!(!svg.contains(bad), "{bad} in {svg}");
        }
    }
}
