//! `ApiError`: the single mapping from domain errors to HTTP status and a stable error code.
//!
//! Every error response has the body `{"error": {"code": "<stable_code>", "message": "..."}}`.
//! The code is part of the API contract and never changes meaning; the message is for people.
//! A `409 wrong_state` (a card or report whose state does not allow the change) also carries
//! the subject's current state, for programs: `{"error": {"code": "wrong_state", "message":
//! "...", "state": "suspended"}}`. A typed refusal or denial of the vault names its variant in
//! `error.reason` (`{"code": "refused", "reason": "dispatch_in_force", ...}`): programs and
//! tests branch on `code` and `reason`, never on the message.
//!
//! What a client may learn is decided here. Storage and provider failures are logged in full
//! and answered with a plain `internal` message; a store that refuses writes (no space, an
//! I/O error) is `503 storage_unavailable` with `Retry-After` and a plain message (the path
//! and the cause stay in the log); an integrity failure says only that a check failed. No variant carries a share, a code or key bytes: vault errors are built not to, and
//! handlers that hold a secret check the message before it gets here (see the unseal handler).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// Declares [`ErrorCode`]: each variant with its wire name and HTTP status, and the list of
/// all of them ([`ErrorCode::ALL`]), from one table so that they cannot drift apart.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $status:ident;)*) => {
        /// Every stable error code the API emits, in `error.code` of an error answer.
        ///
        /// The serialized names are part of the API contract (clients branch on them) and
        /// never change meaning; `docs/api.md` lists each with its status and meaning, and a
        /// test keeps that list and this enum equal.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum ErrorCode {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $name)]
                $variant,
            )*
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code as it appears on the wire (`wrong_state`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }

            /// The HTTP status an answer with this code has (a bare status rewritten by
            /// [`ApiError::from_status`] keeps its own).
            pub const fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

error_codes! {
    /// The request is malformed; the message says what and where.
    BadRequest = "bad_request", BAD_REQUEST;
    /// A custodian share was refused (corrupted, foreign, duplicate…).
    ShareRefused = "share_refused", BAD_REQUEST;
    /// A PIN or PUK does not satisfy the code policy.
    InvalidCode = "invalid_code", BAD_REQUEST;
    /// No bearer token, or one that is unknown, wrong or of a disabled account.
    Unauthorized = "unauthorized", UNAUTHORIZED;
    /// The account's role may not do this, or an officer approves their own proposal.
    Forbidden = "forbidden", FORBIDDEN;
    /// The route declares no access rule and is refused to everyone.
    NoAccessRule = "no_access_rule", FORBIDDEN;
    /// No such endpoint, or no such resource (or one the caller may not see).
    NotFound = "not_found", NOT_FOUND;
    /// The method is not allowed on this endpoint.
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED;
    /// The request took too long, or an upload stalled.
    Timeout = "timeout", REQUEST_TIMEOUT;
    /// The operation is not allowed in the current state (a term in use, a limit reached…).
    Refused = "refused", CONFLICT;
    /// A card or report is in a state that does not allow the change; `error.state` names it.
    WrongState = "wrong_state", CONFLICT;
    /// A registry file contradicts what the vault holds; nothing was applied.
    RegistryConflict = "registry_conflict", CONFLICT;
    /// A batch upload holds serials already in the vault: held back, nothing overwritten.
    Quarantined = "quarantined", CONFLICT;
    /// The request body or upload is larger than its limit.
    BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE;
    /// The content type is not one the endpoint reads.
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE;
    /// Well-formed but impossible (a plan or part that does not parse or split).
    Invalid = "invalid", UNPROCESSABLE_ENTITY;
    /// A batch or registry file with bad lines (or count/hash mismatch): nothing was stored.
    Rejected = "rejected", UNPROCESSABLE_ENTITY;
    /// A counter page that cannot be laid out.
    Unprintable = "unprintable", UNPROCESSABLE_ENTITY;
    /// Too many requests from this account or address; see `Retry-After`.
    RateLimited = "rate_limited", TOO_MANY_REQUESTS;
    /// An internal failure; details are in the server log.
    Internal = "internal", INTERNAL_SERVER_ERROR;
    /// Stored data did not verify; deliberately says nothing more.
    Integrity = "integrity", INTERNAL_SERVER_ERROR;
    /// The HSM is sealed: unseal it with custodian shares first.
    Sealed = "sealed", SERVICE_UNAVAILABLE;
    /// As many connections or bulk jobs as allowed are running; see `Retry-After`.
    Busy = "busy", SERVICE_UNAVAILABLE;
    /// A facility the request needs is not configured on the server.
    NotConfigured = "not_configured", SERVICE_UNAVAILABLE;
    /// The store refuses writes (disk full or failing): the change was not acknowledged; see
    /// `Retry-After`, and the server log for the operators.
    StorageUnavailable = "storage_unavailable", SERVICE_UNAVAILABLE;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// `Retry-After` of `storage_unavailable`: freeing space or replacing a disk takes minutes.
pub const STORAGE_RETRY_AFTER_SECS: u64 = 30;

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// Seconds for `Retry-After` (rate limits).
    retry_after: Option<u64>,
    /// The subject's current state, for `wrong_state`.
    state: Option<String>,
    /// The refusal's or denial's variant in snake_case (`dispatch_in_force`).
    reason: Option<&'static str>,
    /// The typed refusal itself, for the console's texts in the reader's language.
    refusal: Option<Box<vault::Refusal>>,
    /// The `wrong_state` facts (subject, wanted), for the console's texts.
    wanted: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl ApiError {
    /// An error with a stable code (which sets the status) and a message for people.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: code.status(),
            code,
            message: message.into(),
            retry_after: None,
            state: None,
            reason: None,
            refusal: None,
            wanted: None,
        }
    }

    /// The answer to a typed refusal: `code` (409 `refused`, or another the refusal maps to)
    /// with the refusal's text, its variant in `error.reason`, and the refusal kept for the
    /// console.
    pub fn refusal(code: ErrorCode, message: impl Into<String>, why: vault::Refusal) -> Self {
        let mut e = Self::new(code, message);
        e.reason = Some(why.reason());
        e.refusal = Some(Box::new(why));
        e
    }

    /// `409 wrong_state`: `subject` is in `state`, and the change needs one of `wanted`. The
    /// answer names the current state in `error.state`.
    pub fn wrong_state(subject: &str, state: &str, wanted: &str) -> Self {
        let mut e = Self::new(
            ErrorCode::WrongState,
            format!("{subject} is {state}; this needs {wanted}"),
        );
        e.state = Some(state.to_owned());
        e.wanted = Some(wanted.to_owned());
        e
    }

    /// `401 unauthorized` (with `WWW-Authenticate: Bearer`): no token, or one that is unknown,
    /// wrong or of a disabled account. The message does not say which.
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
    }

    /// `403 forbidden`: the account's role may not call this endpoint.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `429 rate_limited`, with `Retry-After` in whole seconds (at least 1).
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let secs = retry_after_secs.max(1);
        let mut e = Self::new(
            ErrorCode::RateLimited,
            format!("too many requests; retry in {secs} s"),
        );
        e.retry_after = Some(secs);
        e
    }

    /// Adds `Retry-After` (whole seconds, at least 1) to the answer.
    pub fn set_retry_after(&mut self, secs: u64) {
        self.retry_after = Some(secs.max(1));
    }

    /// `413 body_too_large`: the body is larger than `limit` bytes (a bulk route's own limit).
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::BodyTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// `400 bad_request`: the request is malformed; the message says what and where.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `422 invalid`: the request is well-formed but asks for something impossible (a
    /// delivery plan or a part that does not parse, a plan the code policy cannot split).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    /// `500 internal`, with details left to the server log.
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }

    /// `503 storage_unavailable` with `Retry-After`: the store refuses writes (disk full or
    /// failing). Whether it comes back by itself or needs a restart is in `/readyz` and
    /// `/healthz`; the cause and the path are in the server log only.
    pub fn storage_unavailable() -> Self {
        let mut e = Self::new(
            ErrorCode::StorageUnavailable,
            "the vault cannot write to its store (disk full or failing), so this change was \
             not acknowledged; retry later. Operators: see the server log",
        );
        e.retry_after = Some(STORAGE_RETRY_AFTER_SECS);
        e
    }

    /// The error for a bare status produced outside a handler (a limit, the router).
    pub fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::PAYLOAD_TOO_LARGE => (
                ErrorCode::BodyTooLarge,
                format!("request body is larger than {} bytes", super::BODY_LIMIT),
            ),
            StatusCode::REQUEST_TIMEOUT => (
                ErrorCode::Timeout,
                format!(
                    "request took longer than {} seconds",
                    super::REQUEST_TIMEOUT.as_secs()
                ),
            ),
            StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such endpoint".to_owned()),
            StatusCode::UNAUTHORIZED => (
                ErrorCode::Unauthorized,
                "a valid bearer token is required".to_owned(),
            ),
            StatusCode::FORBIDDEN => (ErrorCode::Forbidden, "not allowed".to_owned()),
            StatusCode::METHOD_NOT_ALLOWED => (
                ErrorCode::MethodNotAllowed,
                "method not allowed on this endpoint".to_owned(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                ErrorCode::UnsupportedMediaType,
                "expected content-type application/json".to_owned(),
            ),
            s if s.is_server_error() => (
                ErrorCode::Internal,
                "internal error; see the server log".into(),
            ),
            s => (
                ErrorCode::BadRequest,
                s.canonical_reason().unwrap_or("bad request").to_lowercase(),
            ),
        };
        let mut e = Self::new(code, message);
        // A bare status keeps its own number (a 411 is still a 411, a 502 a 502).
        e.status = status;
        e
    }

    /// The same error with another message (the code and status stay).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message shown to the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The current state a `wrong_state` error names.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The states a `wrong_state` change starts from (`active`, `issued or suspended`).
    pub fn wanted(&self) -> Option<&str> {
        self.wanted.as_deref()
    }

    /// The refusal's or denial's variant in snake_case, as `error.reason` says it.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason
    }

    /// The typed refusal this answer was made from, if any.
    pub fn refused(&self) -> Option<&vault::Refusal> {
        self.refusal.as_deref()
    }
}

impl From<vault::Error> for ApiError {
    fn from(e: vault::Error) -> Self {
        use vault::Error as E;
        let e = match registry_import(e) {
            Ok(api) => return api,
            Err(e) => e,
        };
        match e {
            E::WrongState {
                subject,
                state,
                wanted,
            } => Self::wrong_state(&subject.to_string(), &state, &wanted),
            E::Sealed => Self::new(ErrorCode::Sealed, "the hsm is sealed"),
            E::Share(why) => {
                let mut e = Self::new(ErrorCode::ShareRefused, format!("share refused: {why}"));
                e.reason = Some(why.reason());
                e
            }
            E::Invalid(why) => Self::bad_request(why),
            E::Quorum(why) => Self::bad_request(format!("rekey: {why}")),
            E::Refusal(why) => match refusal_code(&why) {
                ErrorCode::Refused => {
                    Self::refusal(ErrorCode::Refused, format!("refused: {why}"), why)
                }
                code => Self::refusal(code, why.to_string(), why),
            },
            // A non-officer asking for a key operation, or an officer approving their own
            // proposal.
            E::Denied(why) => {
                let mut e = Self::forbidden(why.to_string());
                e.reason = Some(why.reason());
                e
            }
            E::Missing(what) => Self::new(ErrorCode::NotFound, format!("not found: {what}")),
            E::Code(why) => Self::new(ErrorCode::InvalidCode, why.to_string()),
            E::Integrity => {
                tracing::warn!("integrity check failed");
                Self::new(ErrorCode::Integrity, "integrity check failed")
            }
            E::Unwritable(_) => {
                tracing::error!(error = %e, "the store refused a write");
                Self::storage_unavailable()
            }
            other => {
                // Storage and provider failures (and any variant added later): the details
                // name files and libraries, which is for operators, not clients.
                tracing::error!(error = %other, "vault error");
                Self::internal()
            }
        }
    }
}

impl From<vault::Refusal> for ApiError {
    fn from(why: vault::Refusal) -> Self {
        vault::Error::from(why).into()
    }
}

impl From<vault::Missing> for ApiError {
    fn from(what: vault::Missing) -> Self {
        vault::Error::from(what).into()
    }
}

/// The stable code of a refusal: `refused` (409), except a mailer outcome that names no
/// outstanding mailer, which is an impossible request (`invalid`, 422), and the token of a
/// person's account with a second factor (`unauthorized`, 401).
fn refusal_code(why: &vault::Refusal) -> ErrorCode {
    use vault::Refusal as R;
    match why {
        R::MailerRepeats { .. } | R::MailerUnknown { .. } | R::MailerNotOutstanding { .. } => {
            ErrorCode::Invalid
        }
        R::TokenOfPerson { .. } => ErrorCode::Unauthorized,
        _ => ErrorCode::Refused,
    }
}

// registry import
/// The errors of a registry import, each to its one code; any other error comes back.
fn registry_import(e: vault::Error) -> Result<ApiError, vault::Error> {
    use vault::Error as E;
    Ok(match e {
        E::Refusal(why @ vault::Refusal::CardOfAnotherHolder { .. }) => ApiError::refusal(
            ErrorCode::RegistryConflict,
            format!("the registry file contradicts the vault: {why}; nothing was applied"),
            why,
        ),
        E::RegistryRejected { .. } => ApiError::new(ErrorCode::Rejected, e.to_string()),
        E::SearchLimit { .. } => ApiError::bad_request(e.to_string()),
        E::RegistryDamaged { .. } => {
            tracing::error!(error = %e, "registry record damaged");
            ApiError::internal()
        }
        other => return Err(other),
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                state: self.state.as_deref(),
                reason: self.reason,
            },
        };
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"plico\""),
            );
        }
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_errors_map_to_status_and_code() {
        let cases = [
            (vault::Error::Sealed, 503, "sealed"),
            (
                vault::Error::Share(vault::ShareRefusal::GivenTwice { x: 2 }),
                400,
                "share_refused",
            ),
            (
                vault::Error::Refusal(vault::Refusal::HsmExists {
                    place: "/x/hsm-state.json".into(),
                }),
                409,
                "refused",
            ),
            (
                vault::Error::Missing(vault::Missing::Token("plico".into())),
                404,
                "not_found",
            ),
            (
                vault::Error::Denied(vault::Denial::OwnProposal {
                    proposal: vault::ProposalId(7),
                    account: "a1".into(),
                }),
                403,
                "forbidden",
            ),
            (
                vault::Error::Refusal(vault::Refusal::TermActive {
                    term: vault::TermId(2),
                }),
                409,
                "refused",
            ),
            (
                vault::Error::Missing(vault::Missing::Term(vault::TermId(2))),
                404,
                "not_found",
            ),
            (vault::Error::Integrity, 500, "integrity"),
            (
                vault::Error::Storage("/x/hsm-state.json: eio".into()),
                500,
                "internal",
            ),
            (vault::Error::Provider("rng"), 500, "internal"),
            (
                vault::Error::Unwritable("store /x/store: flush failed: no space".into()),
                503,
                "storage_unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!(api.status().as_u16(), status);
            assert_eq!(api.code(), code);
        }
    }

    #[test]
    fn card_refusals_keep_their_status_and_code() {
        let card = || "80390001".to_owned();
        let conflict = [
            vault::Refusal::DispatchInForce {
                card: card(),
                dispatch: 3,
                plan: "email".into(),
                under_way: true,
            },
            vault::Refusal::NoSplitDispatch { card: card() },
            vault::Refusal::PrintRunGoing,
        ];
        for r in conflict {
            let api = ApiError::from(vault::Error::Refusal(r));
            assert_eq!(
                (api.status(), api.code()),
                (StatusCode::CONFLICT, ErrorCode::Refused)
            );
        }
        // A mailer outcome that names no outstanding mailer stays a 422, without a prefix.
        let api = ApiError::from(vault::Error::Refusal(vault::Refusal::MailerUnknown {
            outcome: 1,
            mailer: 99,
        }));
        assert_eq!(
            (api.status(), api.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Invalid)
        );
        assert_eq!(api.message(), "outcome 1 (mailer 99): no such mailer");
        let api = ApiError::from(vault::Error::Missing(vault::Missing::Job(7)));
        assert_eq!(
            (api.status(), api.code()),
            (StatusCode::NOT_FOUND, ErrorCode::NotFound)
        );
    }

    #[test]
    fn registry_import_errors_map_to_one_code_each() {
        let cases = [
            (
                vault::Error::Refusal(vault::Refusal::CardOfAnotherHolder { line: 3 }),
                409,
                "registry_conflict",
                "the registry file contradicts the vault: line 3: the card belongs to another \
                 holder; nothing was applied",
            ),
            (
                vault::Error::RegistryRejected {
                    problems: 1,
                    first_line: 0,
                    first_field: "file".into(),
                    report: "the file is empty".into(),
                },
                422,
                "rejected",
                "invalid: registry file rejected: the file is empty",
            ),
            (
                vault::Error::SearchLimit { max: 50 },
                400,
                "bad_request",
                "invalid: limit: 1 to 50",
            ),
            (
                vault::Error::RegistryDamaged {
                    what: "indexed but missing",
                    holder: Some("h000007".into()),
                },
                500,
                "internal",
                "internal error; see the server log",
            ),
        ];
        for (e, status, code, message) in cases {
            let api = ApiError::from(e);
            assert_eq!(api.status().as_u16(), status, "{code}");
            assert_eq!(api.code(), code);
            assert_eq!(api.message(), message);
        }
    }

    #[test]
    fn wrong_state_names_the_current_state() {
        let api = ApiError::from(vault::Error::WrongState {
            subject: vault::Subject::Card("8039".into()),
            state: "suspended".into(),
            wanted: "active".into(),
        });
        assert_eq!(api.status(), StatusCode::CONFLICT);
        assert_eq!(api.code(), "wrong_state");
        assert_eq!(api.state(), Some("suspended"));
        assert_eq!(api.message(), "card 8039 is suspended; this needs active");
    }

    /// The body of an answer, as JSON.
    fn body(e: ApiError) -> serde_json::Value {
        let res = e.into_response();
        let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            res.into_body(),
            usize::MAX,
        ))
        .unwrap()
        .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn refusals_and_denials_name_their_variant_in_error_reason() {
        let cases = [
            (
                vault::Error::Refusal(vault::Refusal::TermInUse {
                    term: vault::TermId(2),
                    data_keys: 5,
                }),
                "refused",
                "term_in_use",
            ),
            (
                vault::Error::Refusal(vault::Refusal::MailerUnknown {
                    outcome: 1,
                    mailer: 9,
                }),
                "invalid",
                "mailer_unknown",
            ),
            (
                vault::Error::Refusal(vault::Refusal::CardOfAnotherHolder { line: 3 }),
                "registry_conflict",
                "card_of_another_holder",
            ),
            (
                vault::Error::Denied(vault::Denial::OwnProposal {
                    proposal: vault::ProposalId(7),
                    account: "a1".into(),
                }),
                "forbidden",
                "own_proposal",
            ),
            (
                vault::Error::Share(vault::ShareRefusal::ForeignSet {
                    got: "aa".into(),
                    held: "bb".into(),
                }),
                "share_refused",
                "foreign_set",
            ),
        ];
        for (e, code, reason) in cases {
            let api = ApiError::from(e);
            assert_eq!(api.reason(), Some(reason));
            let v = body(api);
            assert_eq!(v["error"]["code"], code, "{v}");
            assert_eq!(v["error"]["reason"], reason, "{v}");
        }
        // The typed refusal stays with the answer (the console words it from its facts).
        let api = ApiError::from(vault::Refusal::TermActive {
            term: vault::TermId(4),
        });
        assert!(matches!(
            api.refused(),
            Some(vault::Refusal::TermActive {
                term: vault::TermId(4)
            })
        ));
        // Answers that are not refusals have no reason at all.
        let v = body(ApiError::from(vault::Error::Sealed));
        assert!(v["error"].get("reason").is_none(), "{v}");
        let v = body(ApiError::from(vault::Error::Quorum(vault::Quorum::Zero)));
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        assert_eq!(
            v["error"]["message"],
            "rekey: shares and threshold must be at least 1"
        );
    }

    #[test]
    fn storage_details_stay_in_the_log() {
        let api = ApiError::from(vault::Error::Storage("/secret/path: eio".into()));
        assert!(!api.message().contains("/secret/path"));
    }

    #[test]
    fn a_refused_write_is_a_503_with_retry_after_and_no_detail() {
        let api = ApiError::from(vault::Error::Unwritable(
            "store /var/lib/plico/store: batch failed: No space left on device (os error 28)"
                .into(),
        ));
        let res = api.into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.headers()[header::RETRY_AFTER],
            STORAGE_RETRY_AFTER_SECS.to_string().as_str()
        );
        let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            res.into_body(),
            usize::MAX,
        ))
        .unwrap()
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "storage_unavailable", "{v}");
        let text = v.to_string();
        for leak in ["/var", "plico/store", "space", "os error", "28"] {
            assert!(!text.contains(leak), "{leak}: {text}");
        }
    }
}
