//! Authentication, authorisation, request ids and per-account rate limits: the checks that
//! [`super::router`] puts in front of each route, from its row of the route table.
//!
//! ```text
//! every request      request_id: a fresh random id in the extensions and in `x-request-id`
//! Access::Roles      authorize:  Authorization: Bearer <token> → enabled account?   else 401
//!                                no second factor enrolled (not a person's)?          else 401
//!                                its role in the row's roles?                         else 403
//!                                the audit key installed (HSM unsealed)?              else 503
//!                                RateClass::Sensitive: within the account's quota?   else 429
//!                                → the handler gets a `Caller`
//! Access::ScrapeToken  crate::metrics::authorize_scrape: Bearer <scrape token>?    else 401
//! no usable rule     no_rule:    403 no_access_rule, to everyone
//! ```
//!
//! A 401 says nothing about why (missing, malformed, unknown, replaced or disabled token look
//! the same), except for the valid token of an account with a second factor (TOTP): a person
//! who logs in with a second factor cannot skip it with a token, so the API refuses that token
//! with `reason: token_of_person`; programs use machine accounts (a token, no password). The token is never logged: the `Authorization` header is removed from the
//! request once it has been checked, and tracing records no headers. A 403 is an audit event
//! (`auth.forbidden`: an account tried something outside its role).
//!
//! The request id is always made here, never taken from the client: it goes into the audit
//! chain, which should hold no text a caller chose.

use super::{blocking, ApiError, RateClass};
use crate::AppState;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::SecretString;
use std::fmt;
use std::num::NonZeroU32;
use vault::Role;
use vault::{Account, Actor};
use vault::{NewEvent, Outcome};

/// The id of one request: written into its audit events and returned as `x-request-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .ok_or_else(ApiError::internal)
    }
}

/// The authenticated caller of a role-protected route.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The account (hashes included: never serialize it; use `account.view()`).
    pub account: Account,
    /// This request's id.
    pub request_id: String,
}

impl Caller {
    /// The actor of this caller's audit events.
    pub fn actor(&self) -> Actor {
        Actor::account(&self.account, self.request_id.clone())
    }

    /// An audit event by this caller.
    pub fn event(&self, action: &str, subject: impl Into<String>) -> NewEvent {
        NewEvent::new(action, subject).by_actor(&self.actor())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Present on every role-protected route; a handler on a public route that asks for
        // it is a programming error, answered as an internal error rather than a bypass.
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            tracing::error!("a handler asked for a caller on a route without authentication");
            ApiError::internal()
        })
    }
}

/// Per-account rate limits (governor, keyed by account id). The public unseal route has its
/// own, per client address (`api::UnsealRate`).
pub struct RateLimits {
    sensitive: DefaultKeyedRateLimiter<String>,
    per_minute: NonZeroU32,
}

fn wait_secs(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RateLimits(sensitive: {}/min)", self.per_minute)
    }
}

impl RateLimits {
    /// Limits allowing `per_minute` sensitive calls per account and minute (as a burst, then
    /// refilled evenly over the minute).
    pub fn new(per_minute: NonZeroU32) -> Self {
        RateLimits {
            sensitive: RateLimiter::keyed(Quota::per_minute(per_minute)),
            per_minute,
        }
    }

    /// `Ok` if `account` may make one more call of `class` now, else the seconds to wait.
    ///
    /// # Errors
    /// The whole seconds (at least 1) until the next call would be allowed.
    pub fn check(&self, class: RateClass, account: &str) -> Result<(), u64> {
        match class {
            RateClass::Normal => Ok(()),
            RateClass::Sensitive => {
                let key = account.to_owned();
                self.sensitive.check_key(&key).map_err(|n| wait_secs(&n))
            }
        }
    }
}

/// The middleware state of one role-protected route.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) state: AppState,
    pub(super) roles: &'static [Role],
    pub(super) rate: RateClass,
    pub(super) path: &'static str,
}

fn new_request_id() -> String {
    let mut buf = [0u8; 16];
    if SystemRandom::new().fill(&mut buf).is_err() {
        // Not a secret: uniqueness is what matters, and a failing RNG is reported elsewhere.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        buf = nanos.to_be_bytes();
    }
    hex::encode(buf)
}

/// Gives every request a fresh id (replacing any `x-request-id` the client sent) and returns
/// it in the response.
pub(crate) async fn request_id(mut req: Request, next: Next) -> Response {
    let id = new_request_id();
    req.headers_mut().remove("x-request-id");
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(req: &Request) -> Option<SecretString> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
        .then(|| SecretString::from(token.to_owned()))
}

/// The checks of a role-protected route (see the module docs).
pub(super) async fn authorize(State(rule): State<Rule>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let Some(token) = bearer(&req) else {
        return ApiError::unauthorized().into_response();
    };
    req.headers_mut().remove(header::AUTHORIZATION);
    let accounts = rule.state.accounts.clone();
    // Known accounts answer from memory; the store is read (off the async threads) only for
    // one not seen since the last change of any account.
    let authenticated = match accounts.authenticate_in_memory(&token) {
        Some(answer) => Ok(answer),
        None => blocking(move || accounts.authenticate(&token)).await,
    };
    let account = match authenticated {
        Ok(Some(account)) => account,
        Ok(None) => {
            tracing::info!(path = rule.path, "refused: no valid bearer token");
            return ApiError::unauthorized().into_response();
        }
        Err(e) => return e.into_response(),
    };
    if account.totp.is_some() {
        // A person who logs in with a second factor: a bearer token would skip it. Such an
        // account works in the console only (docs/console.md, "Tokens and people").
        tracing::warn!(
            account = %account.id,
            path = rule.path,
            "refused: bearer token of an account with a second factor"
        );
        return ApiError::from(vault::Refusal::TokenOfPerson {
            account: account.id,
        })
        .into_response();
    }
    if !rule.roles.contains(&account.role) {
        tracing::warn!(
            account = %account.id,
            role = %account.role,
            path = rule.path,
            "refused: role not allowed"
        );
        let audit = rule.state.audit.clone();
        let event = NewEvent::new("auth.forbidden", rule.path)
            .by_actor(&Actor::account(&account, request_id.clone()))
            .outcome(Outcome::Refused)
            .detail("method", req.method().as_str());
        if let Err(e) = blocking(move || audit.append(event)).await {
            // The call is refused either way; the failure itself is logged by the mapping.
            tracing::error!(code = e.code().as_str(), "could not audit a refused call");
        }
        let allowed: Vec<&str> = rule.roles.iter().map(|r| r.as_str()).collect();
        return ApiError::forbidden(format!(
            "role {} may not call this endpoint (allowed: {})",
            account.role,
            allowed.join(", ")
        ))
        .into_response();
    }
    if !rule.state.audit.has_key() {
        return ApiError::from(vault::Error::Sealed).into_response();
    }
    if let Err(secs) = rule.state.limits.check(rule.rate, &account.id) {
        tracing::warn!(account = %account.id, path = rule.path, "rate limited");
        return ApiError::rate_limited(secs).into_response();
    }
    req.extensions_mut().insert(Caller {
        account,
        request_id,
    });
    next.run(req).await
}

/// The answer of a route whose row declares no usable rule: refused to everyone.
pub(super) async fn no_rule(_req: Request, _next: Next) -> Response {
    tracing::error!("refused: the endpoint declares no access rule");
    ApiError::new(
        super::ErrorCode::NoAccessRule,
        "this endpoint declares no access rule and is refused to everyone",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_calls_are_limited_per_account() {
        let limits = RateLimits::new(NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN));
        for _ in 0..3 {
            assert!(limits.check(RateClass::Sensitive, "a").is_ok());
        }
        let wait = limits.check(RateClass::Sensitive, "a").unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(limits.check(RateClass::Sensitive, "b").is_ok());
        assert!(limits.check(RateClass::Normal, "a").is_ok());
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
        assert_eq!(new_request_id().len(), 32);
    }
}
