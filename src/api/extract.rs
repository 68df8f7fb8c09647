//! `JsonBody`: the JSON request extractor of the API; [`query`], the reading of query
//! strings with errors in the API's shape; and [`ClientAddr`], the client's address.
//!
//! It differs from `axum::Json` in what it says when a body is refused: its errors are
//! [`ApiError`]s in the API's JSON shape, and they never quote the body. serde's own messages
//! can repeat a value from the input ("invalid type: string \"…\""), and the input may be a
//! custodian share; so a malformed body is described by its line and column only.
//!
//! The raw body buffer is zeroized after parsing (best effort: the HTTP stack may have held
//! other copies while reading it).

use super::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use zeroize::Zeroize;

/// The client's IP address, as the listener accepted it (`None` for a request that did not come
/// through a socket, as in tests that call the router directly).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// A request body parsed from JSON.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE)
            } else {
                ApiError::bad_request("could not read the request body")
            }
        })?;
        let mut buf: Vec<u8> = bytes.into();
        let parsed = from_json::<T>(&buf);
        buf.zeroize();
        parsed.map(JsonBody)
    }
}

/// A body parsed from JSON, or `400 bad_request` describing what is wrong by position, never
/// quoting the body: the one parse of [`JsonBody`] and [`parse_json`].
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<T>(bytes).map_err(|e| ApiError::bad_request(describe(&e)))
}

/// An id from a path segment, a query parameter or a body field named `field` (a card serial,
/// a report or account id: [`crate::ids`]), or `400 bad_request` saying `field` and what it
/// should look like, never the text given.
pub(crate) fn id<T>(field: &str, text: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr<Err = crate::ids::BadId>,
{
    text.parse()
        .map_err(|e: crate::ids::BadId| ApiError::bad_request(format!("{field}: {e}")))
}

/// The `limit` of a page: `default` when not asked, else 1 to `max`, or `400 bad_request`
/// naming the range.
pub(crate) fn page_limit(
    asked: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match asked {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit: between 1 and {max}, got {n}"
        ))),
    }
}

/// The parameters of a query string, or `400 bad_request` naming what is wrong with it.
pub(crate) fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|axum::extract::Query(t)| t).map_err(|e| {
        ApiError::bad_request(format!(
            "query string: {}",
            e.body_text()
                .trim_start_matches("Failed to deserialize query string: ")
        ))
    })
}

/// Parses a JSON body already read (by a bulk route, under its own limit), with the same
/// errors as [`JsonBody`]: by position, never quoting the body.
pub(crate) fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<T, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    from_json(bytes)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .map(str::to_ascii_lowercase)
        .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"))
}

/// Says what is wrong with a body without quoting it. Only messages that name one of our own
/// field names (never a value from the input) are passed through.
fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {}, column {}", e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Eof => format!("request body is not valid json ({at})"),
        Category::Data => {
            let msg = e.to_string();
            if msg.starts_with("missing field `") || msg.starts_with("duplicate field `") {
                // serde appends " at line L column C" itself.
                format!("request body: {msg}")
            } else {
                format!("request body does not have the expected fields and types ({at})")
            }
        }
        Category::Io => "could not read the request body".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Req {
        flag: bool,
    }

    #[test]
    fn data_errors_do_not_quote_values() {
        let e = serde_json::from_str::<Req>(r#"{"flag": "sensitive-value"}"#).unwrap_err();
        let msg = describe(&e);
        assert!(!msg.contains("sensitive-value"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn missing_fields_are_named() {
        let e = serde_json::from_str::<Req>("{}").unwrap_err();
        assert!(describe(&e).contains("missing field `flag`"));
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/problem+json".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }
}
