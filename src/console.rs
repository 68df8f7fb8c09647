//! The browser console: the counter (operator), the service centre (support) and the other
//! people's pages, served by plico itself under `/` beside the API (`/v1`).
//!
//! ```text
//! GET  /login  POST /login  POST /logout  GET|POST /password  GET /lang/{it|en}   login.rs
//! GET  /                     the home page of the logged-in role                   login.rs
//! POST /search               holders by codice fiscale, or surname + birth date    operator.rs
//! GET  /cards/{serial}       a card: state, parts, dispatches, the actions allowed  operator.rs
//! POST /cards/{serial}/…     activate, dispatch, part-a (PDF), change, resend,     operator.rs
//!                            report; GET …/history
//! GET  /login/code  POST /login/code      the second factor's code after the password  totp.rs
//! GET  /totp  POST /totp/new  POST /totp/confirm   enrol a second factor (TOTP)      totp.rs
//! POST /accounts/{id}/totp-reset          an admin removes an account's second factor totp.rs
//! GET  /static/console.css   the one style sheet (no script at all)
//! ```
//!
//! - People log in with their account name (or id) and password (argon2id, [`vault::account`]);
//!   a session is kept server-side ([`session`]), its cookie is `HttpOnly`, `SameSite=Strict`,
//!   `Secure` (and named `__Host-…`) when the listener speaks TLS. Failed logins are counted
//!   ([`guard`]). A password set by someone else must be changed before anything else.
//! - An account with a second factor (TOTP) gives its code after the password; until then its
//!   session reaches the code page and logout only. With `[console] require_totp`, an account
//!   without one is sent to enrolment (after any password change) and can do nothing else.
//! - The console never reads a bearer token and the API never reads the session cookie: a
//!   session cannot call `/v1`, a token cannot open a page.
//! - Every form carries the session's CSRF token (the login form a double-submit one); a POST
//!   without it is refused and changes nothing.
//! - Every answer says `Content-Security-Policy: default-src 'self'; frame-ancestors 'none'`
//!   (so no inline script or style), `Referrer-Policy: no-referrer`, `Cache-Control: no-store`.
//! - Pages are minijinja templates embedded in the binary, auto-escaped; every text comes from
//!   the catalogue ([`messages`]), Italian by default, English by a switch (a cookie).
//! - No personal data in URLs (searches are POSTs) and never a code in a page: part A of a
//!   split delivery is a PDF download.
//! - Every action calls the same functions as the API's handlers, with a [`crate::api::Caller`]
//!   made from the session, so it writes the same audit events; the console adds
//!   `auth.login`, `auth.login_failed`, `auth.logout` and `auth.password_change`.

mod admin;
pub mod guard;
mod login;
pub mod messages;
mod operator;
mod oversight;
pub mod refusals;
pub mod session;
mod support;
mod totp;

use crate::api::{ApiError, Caller, RequestId, BODY_LIMIT, REQUEST_TIMEOUT};
use crate::AppState;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use guard::LoginGuard;
use messages::Lang;
use minijinja::{context, Environment, Value};
use secrecy::SecretString;
use session::{Session, Sessions};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use vault::Account;
use vault::Role;

/// How the console's sessions and logins behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// A session ends after this long without a request (15 minutes).
    pub idle: Duration,
    /// A session ends this long after login (8 hours).
    pub absolute: Duration,
    /// Failed logins in a row that lock an account (5).
    pub max_failures: u32,
    /// How long a locked account stays locked (15 minutes).
    pub lockout: Duration,
    /// Login attempts per minute and client address (20).
    pub logins_per_minute: NonZeroU32,
    /// Cookies are `Secure` (the listener speaks TLS).
    pub secure_cookies: bool,
    /// Every account must log in with a second factor (TOTP): one without it is sent to
    /// enrolment right after its password (false).
    pub require_totp: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            idle: Duration::from_secs(15 * 60),
            absolute: Duration::from_secs(8 * 3600),
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            logins_per_minute: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            secure_cookies: false,
            require_totp: false,
        }
    }
}

/// The console's state: sessions, failed-login counts and the templates.
pub struct Console {
    /// The settings it was made with.
    pub settings: ConsoleSettings,
    /// The live sessions.
    pub sessions: Sessions,
    /// Failed-login counts and the per-address login rate.
    pub guard: LoginGuard,
    /// Second-factor secrets shown for enrolment and not yet confirmed.
    totp: totp::Pending,
    env: Environment<'static>,
    /// The HSM whose seal every page shows (a banner while it is sealed): the state's, set
    /// by [`router`].
    sealed_probe: std::sync::OnceLock<std::sync::Arc<dyn vault::Hsm>>,
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("settings", &self.settings)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

/// A template embedded in the binary, by its file name under `console/templates/`.
macro_rules! template {
    ($name:literal) => {
        ($name, include_str!(concat!("console/templates/", $name)))
    };
}

/// The templates, embedded in the binary: `(name, source)`.
const TEMPLATES: &[(&str, &str)] = &[
    template!("base.html"),
    template!("login.html"),
    template!("password.html"),
    template!("home.html"),
    template!("holders.html"),
    template!("card.html"),
    template!("confirm.html"),
    template!("history.html"),
    template!("message.html"),
    template!("reports.html"),
    template!("overdue.html"),
    template!("accounts.html"),
    template!("secret.html"),
    template!("audit.html"),
    template!("verify.html"),
    template!("keys.html"),
    template!("totp.html"),
    template!("totp_code.html"),
];

const STYLE: &str = include_str!("console/static/console.css");

impl Console {
    /// A console with no session yet, its sessions timed by `clock` (the state's).
    ///
    /// # Errors
    /// A template that does not parse (a bug caught by the tests).
    pub fn new(
        settings: ConsoleSettings,
        clock: std::sync::Arc<dyn vault::Clock>,
    ) -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        // `.html` templates are auto-escaped: every value a page shows is text.
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        Ok(Console {
            settings,
            sessions: Sessions::new(settings.idle, settings.absolute, clock),
            guard: LoginGuard::new(
                settings.max_failures,
                settings.lockout,
                settings.logins_per_minute,
            ),
            totp: totp::Pending::default(),
            env,
            sealed_probe: std::sync::OnceLock::new(),
        })
    }

    /// The name of the session cookie: `__Host-` prefixed when it is `Secure`.
    pub fn cookie_name(&self) -> &'static str {
        if self.settings.secure_cookies {
            "__Host-plico_session"
        } else {
            "plico_session"
        }
    }

    /// `Set-Cookie` for a cookie of this console (empty value and `Max-Age=0` to clear it).
    fn cookie(&self, name: &str, value: &str, clear: bool) -> HeaderValue {
        let secure = if self.settings.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        let age = if clear { "; Max-Age=0" } else { "" };
        let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}");
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Renders `template` with `ctx`, the catalogue of `lang` (`m`) and who is logged in.
    fn render(
        &self,
        status: StatusCode,
        template: &str,
        lang: Lang,
        me: Option<&Me>,
        ctx: Value,
    ) -> Response {
        let who = me.map(|me| {
            context! {
                name => me.account.name.clone(),
                id => me.account.id.clone(),
                role => me.account.role.as_str(),
                csrf => me.session.csrf.clone(),
                roles => RoleFlags::of(me.account.role),
            }
        });
        let full = context! {
            m => messages::catalogue(lang),
            lang => lang.code(),
            me => who,
            sealed => self.sealed(),
            ..ctx
        };
        let html = self.env.get_template(template).and_then(|t| t.render(full));
        match html {
            Ok(html) => (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(template, error = %e, "console page could not be rendered");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }

    /// Whether the HSM the pages watch is sealed (no HSM watched yet: not sealed).
    pub fn sealed(&self) -> bool {
        self.sealed_probe.get().is_some_and(|h| h.status().sealed)
    }

    /// Watches `hsm`'s seal for the banner of every page (the first HSM given stays).
    pub fn watch_seal(&self, hsm: std::sync::Arc<dyn vault::Hsm>) {
        let _ = self.sealed_probe.set(hsm);
    }

    /// A page with a headline (a catalogue key) and an optional detail, and a link back.
    fn message(
        &self,
        status: StatusCode,
        lang: Lang,
        me: Option<&Me>,
        title: &str,
        detail: Option<String>,
        back: &str,
    ) -> Response {
        let ctx = context! { title => title, detail => detail, back => back };
        self.render(status, "message.html", lang, me, ctx)
    }

    /// An API error as a page: the catalogue's text for its code, its message as detail, and
    /// for a conflict the subject's current state.
    fn error(&self, me: &Me, e: &ApiError, back: &str) -> Response {
        // A typed refusal in the reader's language, from its facts; a change the state does
        // not allow shows the current state (below the headline) and nothing in English;
        // anything else the API's message (a field and what is wrong with it).
        let detail = match (e.refused(), e.state()) {
            (Some(r), _) => refusals::text(me.lang, r).unwrap_or_else(|| e.message().to_owned()),
            (None, Some(_)) => String::new(),
            (None, None) => e.message().to_owned(),
        };
        let ctx = context! {
            title => messages::error_key(e.code().as_str()),
            detail => detail,
            state => e.state(),
            back => back,
        };
        self.render(e.status(), "message.html", me.lang, Some(me), ctx)
    }
}

/// Which role a page is shown to, for the templates' menus.
#[derive(Debug, serde::Serialize)]
struct RoleFlags {
    counter: bool,
    support: bool,
    admin: bool,
    auditor: bool,
    officer: bool,
}

impl RoleFlags {
    fn of(role: Role) -> Self {
        RoleFlags {
            counter: role == Role::Operator,
            support: role == Role::Support,
            admin: role == Role::Admin,
            auditor: role == Role::Auditor,
            officer: role == Role::Officer,
        }
    }
}

/// The logged-in person of a request.
pub(crate) struct Me {
    /// The session's id, from the cookie.
    sid: SecretString,
    session: Session,
    account: Account,
    /// The same account as the API's caller, for the shared functions.
    caller: Caller,
    lang: Lang,
}

impl fmt::Debug for Me {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Me")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// The client's address, when the request came through a socket.
#[derive(Debug, Clone, Copy)]
struct PeerIp(Option<IpAddr>);

/// The value of cookie `name` in the request, if any.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The language of the request: the `plico_lang` cookie, Italian without it.
fn lang_of(headers: &HeaderMap) -> Lang {
    Lang::parse(cookie(headers, "plico_lang").unwrap_or(""))
}

/// A redirect after a POST (303: the browser follows with a GET).
fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The logged-in person of this request, or the answer to give instead: the login page (no
/// session, an expired one, a disabled account), the password page (a password that must be
/// changed, unless `for_password` is set), a sealed-service page, or a refusal for a role not
/// in `roles` (an empty list: any role).
#[allow(clippy::result_large_err)] // a page, built once per refused request
async fn me(
    state: &AppState,
    headers: &HeaderMap,
    request_id: &RequestId,
    roles: &[Role],
    for_password: bool,
) -> Result<Me, Response> {
    let gate = if for_password {
        Gate::Password
    } else {
        Gate::Page
    };
    me_at(state, headers, request_id, roles, gate).await
}

/// Which sessions a route accepts besides fully logged-in ones with nothing pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Any page: a session awaiting its code goes to the code page, a password to change
    /// to the password page, a required second factor to enrolment.
    Page,
    /// The password pages: also with a password to change, or a second factor to enrol.
    Password,
    /// The enrolment pages: also with a second factor still to enrol.
    Enrol,
    /// The code page: only a session awaiting its code.
    Code,
    /// Logout: any live session.
    Any,
}

/// [`me`] for a route of `gate`.
#[allow(clippy::result_large_err)] // a page, built once per refused request
async fn me_at(
    state: &AppState,
    headers: &HeaderMap,
    request_id: &RequestId,
    roles: &[Role],
    gate: Gate,
) -> Result<Me, Response> {
    me_checked(state, headers, request_id, roles, gate, true).await
}

/// [`me_at`], for a page that also opens before the first unseal (`audit_key: false`, the
/// officer's key status page): without the audit key only such pages open.
#[allow(clippy::result_large_err)] // a page, built once per refused request
async fn me_checked(
    state: &AppState,
    headers: &HeaderMap,
    request_id: &RequestId,
    roles: &[Role],
    gate: Gate,
    audit_key: bool,
) -> Result<Me, Response> {
    let console = &state.console;
    let lang = lang_of(headers);
    let Some(raw) = cookie(headers, console.cookie_name()) else {
        return Err(see_other("/login"));
    };
    let sid = SecretString::from(raw.to_owned());
    let Some(session) = console.sessions.get(&sid) else {
        return Err(see_other("/login?expired=1"));
    };
    let accounts = state.accounts.clone();
    let id = session.account.clone();
    let account = match crate::api::blocking(move || accounts.get(&id)).await {
        Ok(Some(a)) if !a.disabled && a.role == session.role => a,
        Ok(_) => {
            console.sessions.end(&sid);
            return Err(see_other("/login?expired=1"));
        }
        Err(e) => {
            return Err(console.message(
                e.status(),
                lang,
                None,
                messages::error_key(e.code().as_str()),
                None,
                "/",
            ))
        }
    };
    let caller = Caller {
        account: account.clone(),
        request_id: request_id.0.clone(),
    };
    let me = Me {
        sid,
        session,
        account,
        caller,
        lang,
    };
    if audit_key && !state.audit.has_key() {
        return Err(console.message(
            StatusCode::SERVICE_UNAVAILABLE,
            lang,
            Some(&me),
            "err_sealed",
            None,
            "/",
        ));
    }
    let awaiting = me.session.stage == session::Stage::AwaitingCode;
    match gate {
        Gate::Any => return Ok(me),
        Gate::Code if awaiting => return Ok(me),
        Gate::Code => return Err(see_other("/")),
        _ if awaiting => return Err(see_other("/login/code")),
        _ => {}
    }
    if me.account.password_change_required && gate != Gate::Password {
        return Err(see_other("/password"));
    }
    let must_enrol = console.settings.require_totp && me.account.totp.is_none();
    if must_enrol && gate == Gate::Page {
        return Err(see_other("/totp"));
    }
    if !roles.is_empty() && !roles.contains(&me.account.role) {
        return Err(console.message(
            StatusCode::FORBIDDEN,
            lang,
            Some(&me),
            "err_forbidden",
            None,
            "/",
        ));
    }
    Ok(me)
}

/// Who a [`Posted`] form is accepted from (a marker type per set of roles and gate).
pub(crate) trait Roles: Send {
    /// The roles (empty: any role).
    const ROLES: &'static [Role];
    /// Which sessions besides fully logged-in ones (see [`Gate`]).
    const GATE: Gate = Gate::Page;
}

/// A console form that carries the session's CSRF token.
pub(crate) trait WithCsrf {
    /// The token the form presented, if any.
    fn csrf(&self) -> Option<&str>;
}

/// A form posted by a logged-in account of one of `R`'s roles, with its session's CSRF token:
/// the account and the form. Anything else is answered by the rejection (the login page, a
/// refused or forbidden page; a body that is not the form, as axum's `Form` answers it).
pub(crate) struct Posted<F, R> {
    /// Who posted it.
    pub me: Me,
    /// The form.
    pub form: F,
    roles: std::marker::PhantomData<R>,
}

impl<F, R> axum::extract::FromRequest<AppState> for Posted<F, R>
where
    F: serde::de::DeserializeOwned + WithCsrf + Send,
    R: Roles,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let Some(rid) = req.extensions().get::<RequestId>().cloned() else {
            return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        };
        let axum::Form(form) = axum::Form::<F>::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let me = me_at(state, &headers, &rid, R::ROLES, R::GATE).await?;
        check_csrf(state, &me, form.csrf())?;
        Ok(Posted {
            me,
            form,
            roles: std::marker::PhantomData,
        })
    }
}

/// Refuses a POST whose form does not carry the session's CSRF token (403; nothing changes).
#[allow(clippy::result_large_err)] // a page, built once per refused request
fn check_csrf(state: &AppState, me: &Me, presented: Option<&str>) -> Result<(), Response> {
    if presented.is_some_and(|p| me.session.csrf_ok(p)) {
        return Ok(());
    }
    tracing::warn!(account = %me.account.id, "console: a form without a valid csrf token");
    Err(state.console.message(
        StatusCode::FORBIDDEN,
        me.lang,
        Some(me),
        "err_csrf",
        None,
        "/",
    ))
}

/// The console's routes, with the request id, body limit, timeout and headers every page
/// gets.
pub fn router(state: AppState) -> Router {
    state.console.watch_seal(state.hsm.clone());
    Router::new()
        .route("/", get(login::home))
        .route("/login", get(login::login_page).post(login::login))
        .route("/logout", post(login::logout))
        .route(
            "/password",
            get(login::password_page).post(login::change_password),
        )
        .route("/lang/{code}", get(login::set_lang))
        // second factor
        .merge(totp::routes())
        .route("/static/console.css", get(style))
        .merge(operator::routes())
        .merge(support::routes())
        .merge(admin::routes())
        .merge(oversight::routes())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::from_fn(headers))
        .layer(axum::middleware::from_fn(crate::api::auth::request_id))
        .with_state(state)
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// The security headers of every console answer, and the client's address for the login
/// guard.
async fn headers(mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    req.extensions_mut().insert(PeerIp(peer));
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a time in ms since the Unix epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let d = cards::Date::from_days_since_epoch(days);
    let s = secs % 86_400;
    format!("{d} {:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Now, in ms since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Letters and digits of a generated initial password: no `0`/`O`, `1`/`l`/`I`, so that it
/// can be read out and typed without mistakes.
const PASSWORD_ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A random initial password of 16 characters (about 93 bits), by rejection sampling.
/// `None` if the random generator failed.
fn initial_password() -> Option<SecretString> {
    use aws_lc_rs::rand::SecureRandom;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let n = PASSWORD_ALPHABET.len();
    // The largest multiple of the alphabet's size below 256: bytes at or above it are drawn
    // again, so every character is equally likely.
    let limit = 256 - 256 % n;
    let mut out = zeroize::Zeroizing::new(String::with_capacity(16));
    let mut buf = zeroize::Zeroizing::new([0u8; 64]);
    while out.len() < 16 {
        rng.fill(&mut *buf).ok()?;
        for b in buf.iter().map(|b| usize::from(*b)).filter(|b| *b < limit) {
            if out.len() == 16 {
                break;
            }
            out.push(char::from(PASSWORD_ALPHABET[b % n]));
        }
    }
    Some(SecretString::from(out.as_str().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn times_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(86_400_000 + 3_723_000), "1970-01-02 01:02:03");
    }

    #[test]
    fn initial_passwords_are_random_and_readable() {
        let a = initial_password().unwrap_or_else(|| SecretString::from(String::new()));
        let b = initial_password().unwrap_or_else(|| SecretString::from(String::new()));
        assert_eq!(a.expose_secret().len(), 16);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a
            .expose_secret()
            .bytes()
            .all(|c| PASSWORD_ALPHABET.contains(&c)));
    }

    #[test]
    fn the_report_queue_renders() {
        let c = Console::new(ConsoleSettings::default(), vault::system_clock())
            .unwrap_or_else(|e| panic!("{e}"));
        let ctx = context! {
            m => messages::catalogue(Lang::It),
            me => context! { csrf => "x", id => "a1", roles => RoleFlags::of(Role::Support) },
            reports => vec![context! { id => 1, state => "open", title => "t", text => "x",
                opened_by => "o", comments => Vec::<String>::new() }],
        };
        let html = c
            .env
            .get_template("reports.html")
            .and_then(|t| t.render(ctx));
        assert!(html.is_ok(), "{html:?}");
    }

    #[test]
    fn templates_parse() {
        assert!(Console::new(ConsoleSettings::default(), vault::system_clock()).is_ok());
    }
}
