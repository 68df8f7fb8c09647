//! The account manager's pages: accounts with role and state; create one (a person gets an
//! initial password, shown once and to be changed at the first login; a machine account gets
//! its bearer token, shown once), disable, rotate a token, reset a password.
//!
//! Each action calls the same [`vault::Accounts`] method as the API's handler, with
//! the admin's actor, so the audit events are the same; creating and rotating are rate-limited
//! like the API's. A disabled account's sessions end at once, and so do those of an account
//! whose password is reset.

use super::{initial_password, me, Me, Posted, Roles, WithCsrf};
use crate::api::{blocking, ApiError, RateClass, RequestId};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use minijinja::context;
use secrecy::ExposeSecret;
use serde::Deserialize;
use vault::Role;

const ADMIN: &[Role] = &[Role::Admin];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/accounts", get(list).post(create))
        .route("/accounts/{id}/disable", post(disable))
        .route("/accounts/{id}/rotate-token", post(rotate_token))
        .route("/accounts/{id}/reset-password", post(reset_password))
}

/// An account form.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct AccountForm {
    csrf: Option<String>,
    name: Option<String>,
    role: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(rid): Extension<RequestId>,
) -> Response {
    let me = match me(&state, &headers, &rid, ADMIN, false).await {
        Ok(me) => me,
        Err(res) => return res,
    };
    let accounts = state.accounts.clone();
    let audit = state.audit.clone();
    let event = me.caller.event("account.list", "accounts");
    let listed = blocking(move || {
        audit.append(event)?;
        accounts.list()
    })
    .await;
    match listed {
        Ok(accounts) => {
            let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            let ctx = context! { accounts => accounts, roles => roles };
            state
                .console
                .render(StatusCode::OK, "accounts.html", me.lang, Some(&me), ctx)
        }
        Err(e) => state.console.error(&me, &e, "/"),
    }
}

/// Administrators: [`Posted`] forms of the account pages.
pub(super) struct Admins;

impl Roles for Admins {
    const ROLES: &'static [Role] = ADMIN;
}

impl WithCsrf for AccountForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// A secret shown once: an initial password or a token.
fn shown_once(state: &AppState, me: &Me, account: &str, kind: &str, secret: &str) -> Response {
    let ctx = context! { account => account, kind => kind, secret => secret };
    state
        .console
        .render(StatusCode::OK, "secret.html", me.lang, Some(me), ctx)
}

fn sensitive(state: &AppState, me: &Me) -> Result<(), ApiError> {
    state
        .limits
        .check(RateClass::Sensitive, &me.account.id)
        .map_err(ApiError::rate_limited)
}

async fn create(
    State(state): State<AppState>,
    Posted { me, form: f, .. }: Posted<AccountForm, Admins>,
) -> Response {
    let made = async {
        let role: Role = f
            .role
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e: vault::UnknownRole| ApiError::bad_request(format!("role: {e}")))?;
        sensitive(&state, &me)?;
        let name = f.name.clone().unwrap_or_default();
        let password = if role.may_have_password() {
            Some(initial_password().ok_or_else(ApiError::internal)?)
        } else {
            None
        };
        let accounts = state.accounts.clone();
        let actor = me.caller.actor();
        blocking(move || {
            let (account, token) = accounts.create(&name, role, &actor)?;
            if let Some(p) = &password {
                accounts.set_password(&account.id, p, &actor)?;
            }
            Ok((account, token, password))
        })
        .await
    }
    .await;
    match made {
        Ok((account, _token, Some(password))) => {
            tracing::info!(account = %account.id, by = %me.account.id, "account created (console)");
            shown_once(
                &state,
                &me,
                &account.id,
                "password",
                password.expose_secret(),
            )
        }
        Ok((account, token, None)) => {
            tracing::info!(account = %account.id, by = %me.account.id, "account created (console)");
            shown_once(&state, &me, &account.id, "token", token.expose_secret())
        }
        Err(e) => state.console.error(&me, &e, "/accounts"),
    }
}

async fn disable(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { me, .. }: Posted<AccountForm, Admins>,
) -> Response {
    let accounts = state.accounts.clone();
    let actor = me.caller.actor();
    let who = id.clone();
    match blocking(move || accounts.disable(&who, &actor)).await {
        Ok(_) => {
            state.console.sessions.end_others(&id, None);
            super::see_other("/accounts")
        }
        Err(e) => state.console.error(&me, &e, "/accounts"),
    }
}

async fn rotate_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { me, .. }: Posted<AccountForm, Admins>,
) -> Response {
    let accounts = state.accounts.clone();
    let actor = me.caller.actor();
    let who = id.clone();
    let rotated = match sensitive(&state, &me) {
        Ok(()) => blocking(move || accounts.rotate_token(&who, &actor)).await,
        Err(e) => Err(e),
    };
    match rotated {
        Ok(token) => shown_once(&state, &me, &id, "token", token.expose_secret()),
        Err(e) => state.console.error(&me, &e, "/accounts"),
    }
}

async fn reset_password(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { me, .. }: Posted<AccountForm, Admins>,
) -> Response {
    let Some(password) = initial_password() else {
        return state.console.error(&me, &ApiError::internal(), "/accounts");
    };
    let accounts = state.accounts.clone();
    let actor = me.caller.actor();
    let who = id.clone();
    let p = password.clone();
    match blocking(move || accounts.set_password(&who, &p, &actor)).await {
        Ok(()) => {
            // Whoever held the old password is out, and a lockout ends.
            state.console.sessions.end_others(&id, None);
            state.console.guard.clear(&id);
            shown_once(&state, &me, &id, "password", password.expose_secret())
        }
        Err(e) => state.console.error(&me, &e, "/accounts"),
    }
}
