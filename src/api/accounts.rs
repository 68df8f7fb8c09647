//! `/v1/accounts`: the admin's view of accounts.
//!
//! | method and path                        | body            | answer                 |
//! |----------------------------------------|-----------------|------------------------|
//! | `POST /v1/accounts`                    | `{name, role}`  | `201 {account, token}` |
//! | `GET /v1/accounts`                     |                 | `{accounts: [...]}`    |
//! | `POST /v1/accounts/{id}/disable`       |                 | `{account}`            |
//! | `POST /v1/accounts/{id}/rotate-token`  |                 | `{token}`              |
//! | `POST /v1/accounts/{id}/password`      | `{password}`    | `{account}`            |
//!
//! All for `admin` only. A token appears in an answer exactly once — when it is made — with
//! `Cache-Control: no-store`; listing shows no token and no hash. Creating and rotating reveal
//! a token, so they are rate-limited per account ([`super::RateClass::Sensitive`]). Every
//! change is audited by the vault in the same write as the change.

use super::extract::JsonBody;
use super::{blocking, ApiError, Caller, Endpoint};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use vault::AccountView;
use vault::Role;

use crate::AppState;

const ADMIN: &[Role] = &[Role::Admin];

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::POST, "/v1/accounts", post(create))
            .roles(ADMIN)
            .sensitive(),
        Endpoint::new(Method::GET, "/v1/accounts", get(list)).roles(ADMIN),
        Endpoint::new(Method::POST, "/v1/accounts/{id}/disable", post(disable)).roles(ADMIN),
        Endpoint::new(
            Method::POST,
            "/v1/accounts/{id}/rotate-token",
            post(rotate_token),
        )
        .roles(ADMIN)
        .sensitive(),
        Endpoint::new(
            Method::POST,
            "/v1/accounts/{id}/password",
            post(set_password),
        )
        .roles(ADMIN),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRequest {
    name: String,
    role: String,
}

#[derive(Serialize)]
struct Created {
    account: AccountView,
    token: String,
}

#[derive(Serialize)]
struct One {
    account: AccountView,
}

#[derive(Serialize)]
struct List {
    accounts: Vec<AccountView>,
}

#[derive(Serialize)]
struct NewToken {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordRequest {
    password: SecretString,
}

/// A JSON answer that carries a secret: never cached by anyone on the way.
fn no_store(status: StatusCode, body: impl Serialize) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let role: Role = req
        .role
        .parse()
        .map_err(|e: vault::UnknownRole| ApiError::bad_request(format!("role: {e}")))?;
    let accounts = state.accounts.clone();
    let actor = caller.actor();
    let (account, token) = blocking(move || accounts.create(&req.name, role, &actor)).await?;
    tracing::info!(account = %account.id, role = %role, by = %caller.account.id, "account created");
    Ok(no_store(
        StatusCode::CREATED,
        Created {
            account: account.view(),
            token: token.expose_secret().to_owned(),
        },
    ))
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<List>, ApiError> {
    let accounts = state.accounts.clone();
    let audit = state.audit.clone();
    let event = caller.event("account.list", "accounts");
    let accounts = blocking(move || {
        audit.append(event)?;
        accounts.list()
    })
    .await?;
    Ok(Json(List { accounts }))
}

async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<One>, ApiError> {
    let accounts = state.accounts.clone();
    let actor = caller.actor();
    let account = blocking(move || accounts.disable(&id, &actor)).await?;
    tracing::info!(account = %account.id, by = %caller.account.id, "account disabled");
    Ok(Json(One { account }))
}

async fn rotate_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let accounts = state.accounts.clone();
    let actor = caller.actor();
    let token = blocking(move || accounts.rotate_token(&id, &actor)).await?;
    tracing::info!(by = %caller.account.id, "account token rotated");
    Ok(no_store(
        StatusCode::OK,
        NewToken {
            token: token.expose_secret().to_owned(),
        },
    ))
}

async fn set_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PasswordRequest>,
) -> Result<Json<One>, ApiError> {
    let accounts = state.accounts.clone();
    let actor = caller.actor();
    let account = blocking(move || {
        accounts.set_password(&id, &req.password, &actor)?;
        accounts
            .get(&id)?
            .ok_or_else(|| vault::Error::Missing(vault::Missing::Account(Some(id.to_string()))))
    })
    .await?;
    Ok(Json(One {
        account: account.view(),
    }))
}
