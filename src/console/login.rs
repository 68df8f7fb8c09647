//! Login, logout, the password change and the language switch.
//!
//! A login names an account (its name, or its id) and its password. The answer never tells a
//! wrong password from an unknown or locked account; the audit event does (`auth.login_failed`
//! with `reason`), naming the account only when it exists — a name typed by mistake could be
//! a password, so an unknown one is not recorded. The login form carries a double-submit
//! token (a random cookie repeated in a hidden field) since there is no session yet.
//!
//! An account with a second factor gets, for its right password, a session that reaches only
//! the code page (`totp.rs`); `auth.login` is written when the code is right too, and the
//! failed-login count is forgotten only then, so a known password does not reset the count of
//! wrong codes.

use super::messages::Lang;
use super::session::Stage;
use super::{cookie, lang_of, me, see_other, Gate, Me, PeerIp, Posted, Roles, WithCsrf};
use crate::api::{blocking, RequestId};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use minijinja::context;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use vault::Actor;
use vault::Role;
use vault::{NewEvent, Outcome};

/// The cookie of the login form's double-submit token.
const LOGIN_COOKIE: &str = "plico_login";

/// `?expired=1` after a session ended.
#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    expired: Option<String>,
}

/// The login form. No `Debug`: it holds a password.
#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    login: String,
    password: Option<SecretString>,
    #[serde(default)]
    csrf: String,
}

/// The password form. No `Debug`: it holds passwords.
#[derive(Deserialize)]
pub(super) struct PasswordForm {
    current: Option<SecretString>,
    new: Option<SecretString>,
    repeat: Option<SecretString>,
    csrf: Option<String>,
}

impl WithCsrf for PasswordForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// A form with only the CSRF token (logout).
#[derive(Debug, Deserialize)]
pub(super) struct CsrfForm {
    pub(super) csrf: Option<String>,
}

impl WithCsrf for CsrfForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// Any live session, one awaiting its code too: the logout form.
pub(super) struct AnySession;

impl Roles for AnySession {
    const ROLES: &'static [Role] = &[];
    const GATE: Gate = Gate::Any;
}

/// Any role, also with a password to change or a second factor to enrol: the password form.
pub(super) struct PasswordPage;

impl Roles for PasswordPage {
    const ROLES: &'static [Role] = &[];
    const GATE: Gate = Gate::Password;
}

/// The login page, with a fresh double-submit token.
pub(super) fn login_form(
    state: &AppState,
    status: StatusCode,
    lang: Lang,
    error: Option<&str>,
    expired: bool,
    login: &str,
) -> Response {
    let console = &state.console;
    let token = super::session::random_hex(&aws_lc_rs::rand::SystemRandom::new())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let ctx = context! { error => error, expired => expired, login => login, login_csrf => token };
    let mut res = console.render(status, "login.html", lang, None, ctx);
    res.headers_mut().append(
        header::SET_COOKIE,
        console.cookie(LOGIN_COOKIE, &token, false),
    );
    res
}

pub(super) async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let lang = lang_of(&headers);
    login_form(&state, StatusCode::OK, lang, None, q.expired.is_some(), "")
}

/// An audit event of the console's login flow, by `who` (an account id, or `unknown`).
pub(super) fn auth_event(action: &str, who: &str, role: &str, request_id: &RequestId) -> NewEvent {
    let actor = Actor {
        id: who.to_owned(),
        role: role.to_owned(),
        request_id: request_id.0.clone(),
    };
    NewEvent::new(action, who)
        .by_actor(&actor)
        .detail("via", "console")
}

pub(super) async fn append(state: &AppState, event: NewEvent) -> Result<(), crate::api::ApiError> {
    let audit = state.audit.clone();
    blocking(move || audit.append(event).map(|_| ())).await
}

pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(peer): Extension<PeerIp>,
    Extension(request_id): Extension<RequestId>,
    Form(form): Form<LoginForm>,
) -> Response {
    let console = state.console.clone();
    let lang = lang_of(&headers);
    let login = form.login.trim().to_owned();
    // Only a plausible account name goes back into the form.
    let echo = if login.len() <= 64 && login.chars().all(|c| !c.is_control()) {
        login.as_str()
    } else {
        ""
    };
    let double_ok = cookie(&headers, LOGIN_COOKIE).is_some_and(|c| {
        !c.is_empty()
            && aws_lc_rs::constant_time::verify_slices_are_equal(c.as_bytes(), form.csrf.as_bytes())
                .is_ok()
    });
    if !double_ok {
        return login_form(
            &state,
            StatusCode::FORBIDDEN,
            lang,
            Some("err_csrf"),
            false,
            echo,
        );
    }
    if !state.audit.has_key() {
        return login_form(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            lang,
            Some("err_sealed"),
            false,
            echo,
        );
    }
    if !console.guard.address_ok(peer.0) {
        tracing::warn!("console: login attempts from one address over the limit");
        return login_form(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            lang,
            Some("err_login_rate"),
            false,
            echo,
        );
    }
    let password = form
        .password
        .unwrap_or_else(|| SecretString::from(String::new()));
    let accounts = state.accounts.clone();
    let found = {
        let login = login.clone();
        blocking(move || accounts.find_login(&login)).await
    };
    let account = match found {
        Ok(a) => a,
        Err(e) => return console.message(e.status(), lang, None, "err_internal", None, "/login"),
    };
    let failed = |who: String, role: String, reason: &'static str| {
        let state = state.clone();
        let request_id = request_id.clone();
        async move {
            let event = auth_event("auth.login_failed", &who, &role, &request_id)
                .outcome(Outcome::Refused)
                .detail("reason", reason);
            if let Err(e) = append(&state, event).await {
                tracing::error!(code = e.code().as_str(), "could not audit a failed login");
            }
        }
    };
    // One answer for an unknown account, a locked one and a wrong password.
    let refused = || {
        login_form(
            &state,
            StatusCode::UNAUTHORIZED,
            lang,
            Some("err_login"),
            false,
            echo,
        )
    };
    let Some(account) = account else {
        failed("unknown".to_owned(), "-".to_owned(), "unknown_account").await;
        return refused();
    };
    let role = account.role.as_str().to_owned();
    if console.guard.locked(&account.id) {
        console.guard.failed(&account.id);
        failed(account.id.clone(), role, "locked").await;
        return refused();
    }
    let accounts = state.accounts.clone();
    let id = account.id.clone();
    let ok = blocking(move || accounts.verify_password(&id, &password)).await;
    match ok {
        Ok(true) => {}
        Ok(false) => {
            let locked = console.guard.failed(&account.id);
            let reason = if locked {
                "wrong_password_now_locked"
            } else {
                "wrong_password"
            };
            failed(account.id.clone(), role, reason).await;
            return refused();
        }
        Err(e) => return console.message(e.status(), lang, None, "err_internal", None, "/login"),
    }
    // With a second factor the password opens only the code page; the failures are
    // forgotten, and `auth.login` written, once the code is right too.
    let stage = if account.totp.is_some() {
        Stage::AwaitingCode
    } else {
        console.guard.clear(&account.id);
        Stage::Full
    };
    let Some((sid, _session)) = console
        .sessions
        .start_stage(&account.id, account.role, stage)
    else {
        return console.message(
            StatusCode::INTERNAL_SERVER_ERROR,
            lang,
            None,
            "err_internal",
            None,
            "/login",
        );
    };
    let to = if stage == Stage::AwaitingCode {
        "/login/code"
    } else {
        let event =
            auth_event("auth.login", &account.id, &role, &request_id).detail("factor", "password");
        if let Err(e) = append(&state, event).await {
            // No audit, no session.
            console.sessions.end(&sid);
            return console.message(e.status(), lang, None, "err_internal", None, "/login");
        }
        tracing::info!(account = %account.id, "console login");
        if account.password_change_required {
            "/password"
        } else {
            "/"
        }
    };
    let mut res = see_other(to);
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        console.cookie(console.cookie_name(), sid.expose_secret(), false),
    );
    h.append(header::SET_COOKIE, console.cookie(LOGIN_COOKIE, "", true));
    res
}

pub(super) async fn logout(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Posted { me, .. }: Posted<CsrfForm, AnySession>,
) -> Response {
    // Any live session may log out, one awaiting its code too.
    state.console.sessions.end(&me.sid);
    let event = auth_event(
        "auth.logout",
        &me.account.id,
        me.account.role.as_str(),
        &request_id,
    );
    if let Err(e) = append(&state, event).await {
        tracing::error!(code = e.code().as_str(), "could not audit a logout");
    }
    let console = &state.console;
    let mut res = see_other("/login");
    res.headers_mut().append(
        header::SET_COOKIE,
        console.cookie(console.cookie_name(), "", true),
    );
    res
}

fn password_form(
    state: &AppState,
    me: &Me,
    status: StatusCode,
    error: Option<(&str, String)>,
) -> Response {
    let (error, detail) = match error {
        Some((e, d)) => (Some(e), Some(d).filter(|d| !d.is_empty())),
        None => (None, None),
    };
    let ctx = context! {
        required => me.account.password_change_required,
        error => error,
        detail => detail,
    };
    state
        .console
        .render(status, "password.html", me.lang, Some(me), ctx)
}

pub(super) async fn password_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(request_id): Extension<RequestId>,
) -> Response {
    match me(&state, &headers, &request_id, &[], true).await {
        Ok(me) => password_form(&state, &me, StatusCode::OK, None),
        Err(res) => res,
    }
}

pub(super) async fn change_password(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Posted { me, form, .. }: Posted<PasswordForm, PasswordPage>,
) -> Response {
    let empty = || SecretString::from(String::new());
    let current = form.current.unwrap_or_else(empty);
    let new = form.new.unwrap_or_else(empty);
    let repeat = form.repeat.unwrap_or_else(empty);
    if new.expose_secret() != repeat.expose_secret() {
        let e = Some(("err_password_mismatch", String::new()));
        return password_form(&state, &me, StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    let accounts = state.accounts.clone();
    let id = me.account.id.clone();
    let actor = Actor::account(&me.account, request_id.0.clone());
    let changed = blocking(move || accounts.change_own_password(&id, &current, &new, &actor)).await;
    match changed {
        Ok(()) => {
            // Every other session of the account ends: whoever knew the old password is out.
            state
                .console
                .sessions
                .end_others(&me.account.id, Some(&me.sid));
            tracing::info!(account = %me.account.id, "console password changed");
            let mut me = me;
            me.account.password_change_required = false;
            state.console.message(
                StatusCode::OK,
                me.lang,
                Some(&me),
                "done_password",
                None,
                "/",
            )
        }
        Err(e) => {
            if e.code().as_str() == "refused" {
                // A wrong current password counts as a failed login: a borrowed session
                // cannot be used to guess the password.
                if state.console.guard.failed(&me.account.id) {
                    state.console.sessions.end_others(&me.account.id, None);
                    return see_other("/login");
                }
            }
            // By the refusal's variant, never its text.
            let (key, detail) = match e.refused() {
                Some(vault::Refusal::CurrentPasswordMismatch { .. }) => {
                    ("err_password_current", String::new())
                }
                Some(r) => (
                    "err_password_invalid",
                    super::refusals::text(me.lang, r).unwrap_or_else(|| e.message().to_owned()),
                ),
                None => ("err_password_invalid", e.message().to_owned()),
            };
            password_form(&state, &me, e.status(), Some((key, detail)))
        }
    }
}

pub(super) async fn home(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(request_id): Extension<RequestId>,
) -> Response {
    match me(&state, &headers, &request_id, &[], false).await {
        Ok(me) => {
            state
                .console
                .render(StatusCode::OK, "home.html", me.lang, Some(&me), context! {})
        }
        Err(res) => res,
    }
}

/// Sets the language cookie (`it` or `en`) and goes to the home page.
pub(super) async fn set_lang(State(state): State<AppState>, Path(code): Path<String>) -> Response {
    let lang = Lang::parse(&code);
    let mut res = see_other("/");
    res.headers_mut().append(
        header::SET_COOKIE,
        state.console.cookie("plico_lang", lang.code(), false),
    );
    res.into_response()
}
