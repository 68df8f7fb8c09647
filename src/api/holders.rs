//! Holder search over HTTP: how the counter, the CMS and the service centre identify a holder.
//!
//! | method and path             | roles                  | answer         |
//! |-----------------------------|------------------------|----------------|
//! | `POST /v1/holders/search`   | operator, cms, support | [`HolderPage`] |
//!
//! The body names one exact key: `{"codice_fiscale": "…"}`, or `{"surname": "…",
//! "birth_date": "YYYY-MM-DD"}`; and optionally `after` (a holder id: the `next` of the
//! previous page) and `limit` (1 to 50, default 10). The search is a POST so that the key
//! travels in the body, never in a URL that proxies and access logs keep. The vault looks the
//! key up in its keyed blind index (exact match on the normalised value) and audits every
//! search (`holder.search`, the key only as an HMAC, and the number found).
//!
//! The answer holds personal data — it is how the counter checks an identity document
//! against the registry — so the route is rate-limited per account like the other
//! sensitive routes (`[limits] sensitive_per_minute`), the answer says `Cache-Control:
//! no-store`, and nothing of the key or the answer is logged. A key that is not well formed
//! (a codice fiscale with a wrong check character, a date that does not exist) gets a `400`
//! naming the field and what is wrong, never quoting the value.

use super::extract::{page_limit, JsonBody};
use super::{blocking, ApiError, Caller, Endpoint};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use cards::normalise_name;
use cards::Date;
use cards::MAX_SEARCH;
use cards::{normalise_codice_fiscale, CardState, HolderView, PersonalData, SearchKey};
use serde::{Deserialize, Serialize};
use vault::Role;

const SEARCH: &[Role] = &[Role::Operator, Role::Cms, Role::Support];

/// Holders per page when the caller does not say.
pub const DEFAULT_PAGE: usize = 10;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::POST, "/v1/holders/search", post(search))
            .roles(SEARCH)
            .sensitive(),
    ]
}

/// The body of a search. No `Debug`: it holds personal data.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchBody {
    codice_fiscale: Option<String>,
    surname: Option<String>,
    birth_date: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// One of a holder's cards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderCard {
    /// The card serial.
    pub serial: String,
    /// Its state.
    pub state: CardState,
}

/// A holder found. Personal data: `Debug` shows none of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderMatch {
    /// The holder id (`h000042`).
    pub id: String,
    /// Codice fiscale, names, birth date, contacts.
    #[serde(flatten)]
    pub personal: PersonalData,
    /// Marked deceased by the registry.
    pub deceased: bool,
    /// The holder's cards and their states.
    pub cards: Vec<HolderCard>,
}

impl From<HolderView> for HolderMatch {
    fn from(v: HolderView) -> Self {
        HolderMatch {
            id: v.id,
            personal: v.personal,
            deceased: v.deceased,
            cards: v
                .cards
                .into_iter()
                .map(|(serial, state)| HolderCard { serial, state })
                .collect(),
        }
    }
}

/// A page of holders found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderPage {
    /// The holders, by ascending id.
    pub holders: Vec<HolderMatch>,
    /// The `after` of the next page; absent when this page is not full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A holder id as a paging cursor: `h` and 1 to 20 digits.
fn holder_id(text: &str) -> Result<&str, ApiError> {
    let ok = text
        .strip_prefix('h')
        .is_some_and(|d| !d.is_empty() && d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(text)
    } else {
        Err(ApiError::bad_request(
            "after: a holder id, h followed by digits (the `next` of the previous page)",
        ))
    }
}

/// The search key of a body, checked. Errors name the field, never its value.
pub(super) fn search_key(body: &SearchBody) -> Result<SearchKey, ApiError> {
    search_key_of(
        body.codice_fiscale.as_deref(),
        body.surname.as_deref(),
        body.birth_date.as_deref(),
    )
}

/// The search key of a codice fiscale, or a surname and a birth date (`YYYY-MM-DD`), checked
/// (the API and the console). Errors name the field, never its value.
pub(crate) fn search_key_of(
    codice_fiscale: Option<&str>,
    surname: Option<&str>,
    birth_date: Option<&str>,
) -> Result<SearchKey, ApiError> {
    match (codice_fiscale, surname, birth_date) {
        (Some(cf), None, None) => {
            let cf = normalise_codice_fiscale(cf)
                .map_err(|e| ApiError::bad_request(format!("codice_fiscale: {e}")))?;
            Ok(SearchKey::CodiceFiscale(cf))
        }
        (None, Some(surname), Some(birth_date)) => {
            let surname = normalise_name(surname)
                .map_err(|e| ApiError::bad_request(format!("surname: {e}")))?;
            let birth_date = Date::parse(birth_date.trim())
                .map_err(|e| ApiError::bad_request(format!("birth_date: {e}")))?;
            Ok(SearchKey::SurnameBirth {
                surname,
                birth_date,
            })
        }
        _ => Err(ApiError::bad_request(
            "request body: give either `codice_fiscale`, or `surname` and `birth_date`",
        )),
    }
}

async fn search(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<SearchBody>,
) -> Result<Response, ApiError> {
    let key = search_key(&body)?;
    let limit = page_limit(body.limit, DEFAULT_PAGE, MAX_SEARCH)?;
    let after = body.after.as_deref().map(holder_id).transpose()?;
    let after = after.map(str::to_owned);
    let page = search_holders(state, &caller, key, after, limit).await?;
    let mut res = Json(page).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// A page of the holders matching `key` after the holder id `after`, at most `limit`
/// (checked by the caller), audited by the vault as `holder.search` (the API and the
/// console).
pub(crate) async fn search_holders(
    state: AppState,
    caller: &Caller,
    key: SearchKey,
    after: Option<String>,
    limit: usize,
) -> Result<HolderPage, ApiError> {
    let s = state.clone();
    let actor = caller.actor();
    let found = blocking(move || {
        s.cms
            .search(&*s.hsm, &s.audit, &key, after.as_deref(), limit, &actor)
    })
    .await?;
    let next = if found.len() == limit {
        found.last().map(|h| h.id.clone())
    } else {
        None
    };
    tracing::info!(found = found.len(), by = %caller.account.id, "holder search");
    Ok(HolderPage {
        holders: found.into_iter().map(HolderMatch::from).collect(),
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_ids_as_cursors() {
        assert!(holder_id("h000042").is_ok());
        assert!(holder_id("h").is_err());
        assert!(holder_id("000042").is_err());
        assert!(holder_id("h12a").is_err());
    }
}
