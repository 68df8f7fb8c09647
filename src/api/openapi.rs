//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of the API, built from the route table
//! ([`super::endpoints`]) and [`ErrorCode::ALL`], so it cannot drift from the code.
//!
//! The document is made with utoipa's builders, not by annotating handlers: the route table is
//! the single source of what exists and who may call it. Each operation carries:
//!
//! - `x-roles`: the roles of the row (empty for a route without an account), and `x-access`
//!   (`public`, `roles` or `scrape_token`), with `security` to match (the bearer token of an
//!   account, the scrape token, or none);
//! - `x-limits`: `sensitive` (rate-limited per account) and `bulk` (streamed body, own limits);
//! - its path parameters, and the error answers the route's rule can produce, each referring
//!   to the one `Error` schema whose `code` is the enum of every [`ErrorCode`].
//!
//! Request and answer bodies are not described (the handlers own them, and `docs/api.md`
//! says what each route takes). The document holds no data, only the shape of the API, so it
//! is public: a client can read it before it has a token. No browsing UI is served.

use super::{Access, BodyClass, Endpoint, ErrorCode, RateClass};
use axum::http::{header, Method};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use std::sync::OnceLock;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::{ComponentsBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, Required};

/// Where the document is served.
pub const PATH: &str = "/v1/openapi.json";

/// The security scheme of accounts' bearer tokens.
const ACCOUNT_SCHEME: &str = "account_token";
/// The security scheme of the metrics scrape token.
const SCRAPE_SCHEME: &str = "scrape_token";

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::GET, PATH, get(serve)).public()]
}

async fn serve() -> impl IntoResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    let body = DOC.get_or_init(|| {
        document(&super::endpoints()).to_json().unwrap_or_else(|e| {
            // Serializing a tree of strings and maps cannot fail; answer an empty object
            // rather than panic if it ever does.
            tracing::error!(error = %e, "cannot serialize the OpenAPI document");
            "{}".to_owned()
        })
    });
    ([(header::CONTENT_TYPE, "application/json")], body.clone())
}

/// The `x-access` value of a rule.
pub(crate) fn access_name(access: Access) -> &'static str {
    match access {
        Access::Public => "public",
        Access::Roles(_) => "roles",
        Access::ScrapeToken => "scrape_token",
        Access::Undeclared => "undeclared",
    }
}

/// The role names of a rule (empty for a rule without accounts).
pub(crate) fn role_names(access: Access) -> Vec<&'static str> {
    match access {
        Access::Roles(roles) => roles.iter().map(|r| r.as_str()).collect(),
        _ => Vec::new(),
    }
}

/// The OpenAPI document of `endpoints`.
pub fn document(endpoints: &[Endpoint]) -> OpenApi {
    // One item per path, with every method of the table on it.
    let mut paths = Paths::new();
    for e in endpoints {
        if let Some(method) = http_method(&e.method) {
            paths.add_path_operation(e.path, vec![method], operation(e));
        }
    }
    let error_schema = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("every error answer: `{\"error\": {…}}`"))
        .property(
            "error",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(
                    "code",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("stable: clients branch on it"))
                        .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str()))),
                )
                .required("code")
                .property(
                    "message",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("for people; never a code, a share or key bytes")),
                )
                .required("message")
                .property(
                    "state",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("the subject's current state (wrong_state only)")),
                )
                .property(
                    "reason",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some(
                        "a refusal's cause in snake_case (dispatch_in_force…), stable like code",
                    )),
                ),
        )
        .required("error")
        .build();
    let components = ComponentsBuilder::new()
        .schema("Error", error_schema)
        .response(
            "Error",
            ResponseBuilder::new()
                .description("an error answer (see `error.code`)")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Error")))
                        .build(),
                )
                .build(),
        )
        .security_scheme(
            ACCOUNT_SCHEME,
            bearer("the bearer token of an enabled account whose role the route lists (`x-roles`)"),
        )
        .security_scheme(
            SCRAPE_SCHEME,
            bearer("the metrics scrape token (`[metrics] token_file`); works while sealed"),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("plico")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "PIN/PUK vault and dispatcher. Generated from the route table; \
                     `docs/api.md` describes each route.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

fn bearer(description: &str) -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(description))
            .build(),
    )
}

fn http_method(m: &Method) -> Option<HttpMethod> {
    Some(match *m {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        _ => return None,
    })
}

/// `get_v1_cards_serial_history` for `GET /v1/cards/{serial}/history`.
fn operation_id(e: &Endpoint) -> String {
    let mut id = e.method.as_str().to_ascii_lowercase();
    for segment in e.path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            segment
                .trim_matches(|c| c == '{' || c == '}')
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

/// The path parameters of `path` (`{serial}` → `serial`).
fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// The error codes the rule and limits of `e` can produce, beside those every route can.
fn error_codes(e: &Endpoint) -> Vec<ErrorCode> {
    let mut codes = vec![
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Internal,
    ];
    match e.access {
        // A caller's route can write (its change, or the audit event of a read).
        Access::Roles(_) => codes.extend([
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::Sealed,
            ErrorCode::StorageUnavailable,
        ]),
        Access::ScrapeToken => codes.push(ErrorCode::Unauthorized),
        Access::Undeclared => codes.push(ErrorCode::NoAccessRule),
        Access::Public => {}
    }
    if matches!(e.path, "/healthz" | "/readyz") {
        // The probes report a store that refuses writes (and `/readyz` a sealed HSM).
        codes.extend([ErrorCode::Sealed, ErrorCode::StorageUnavailable]);
    }
    if e.rate == RateClass::Sensitive {
        codes.push(ErrorCode::RateLimited);
    }
    codes.extend([ErrorCode::Timeout, ErrorCode::BodyTooLarge]);
    if e.body == BodyClass::Bulk {
        codes.push(ErrorCode::Busy);
    }
    codes
}

fn operation(e: &Endpoint) -> utoipa::openapi::path::Operation {
    let mut limits = Vec::new();
    if e.rate == RateClass::Sensitive {
        limits.push("sensitive");
    }
    if e.body == BodyClass::Bulk {
        limits.push("bulk");
    }
    let tag = e
        .path
        .split('/')
        .find(|s| !s.is_empty() && *s != "v1")
        .unwrap_or("probes");
    // `/healthz`, `/readyz`: the probes.
    let tag = if tag.ends_with('z') { "probes" } else { tag };
    let mut responses = ResponsesBuilder::new().response(
        "2XX",
        ResponseBuilder::new()
            .description("done: the route's answer (see docs/api.md)")
            .build(),
    );
    let mut statuses: Vec<u16> = error_codes(e).iter().map(|c| c.status().as_u16()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        responses = responses.response(status.to_string(), Ref::from_response_name("Error"));
    }
    responses = responses.response("default", Ref::from_response_name("Error"));
    let codes: Vec<&str> = error_codes(e).iter().map(|c| c.as_str()).collect();
    let extensions = ExtensionsBuilder::new()
        .add("x-roles", json!(role_names(e.access)))
        .add("x-access", json!(access_name(e.access)))
        .add("x-limits", json!(limits))
        .add("x-error-codes", json!(codes))
        .build();
    let security = match e.access {
        Access::Roles(_) => vec![SecurityRequirement::new::<_, [&str; 0], &str>(
            ACCOUNT_SCHEME,
            [],
        )],
        Access::ScrapeToken => vec![SecurityRequirement::new::<_, [&str; 0], &str>(
            SCRAPE_SCHEME,
            [],
        )],
        Access::Public | Access::Undeclared => vec![SecurityRequirement::default()],
    };
    let mut op = OperationBuilder::new()
        .operation_id(Some(operation_id(e)))
        .tag(tag)
        .responses(responses.build())
        .securities(Some(security))
        .extensions(Some(extensions));
    for name in path_params(e.path) {
        op = op.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
        );
    }
    if e.method == Method::POST && e.body == BodyClass::Small {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .description(Some("a JSON object (see docs/api.md); at most 64 KiB"))
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                        .build(),
                )
                .build(),
        ));
    }
    op.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        let text = document(&super::super::endpoints()).to_json().unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn every_route_is_described_with_its_roles_access_and_limits() {
        let doc = doc();
        assert_eq!(doc["openapi"].as_str().unwrap().get(..3), Some("3.1"));
        let endpoints = super::super::endpoints();
        let mut described = 0;
        for e in &endpoints {
            let op = &doc["paths"][e.path][e.method.as_str().to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{} {} is not in the document",
                e.method,
                e.path
            );
            let roles: Vec<&str> = op["x-roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            assert_eq!(roles, role_names(e.access), "{} {}", e.method, e.path);
            assert_eq!(
                op["x-access"],
                access_name(e.access),
                "{} {}",
                e.method,
                e.path
            );
            let limits = op["x-limits"].as_array().unwrap();
            assert_eq!(
                limits.iter().any(|l| l == "sensitive"),
                e.rate == RateClass::Sensitive
            );
            assert_eq!(
                limits.iter().any(|l| l == "bulk"),
                e.body == BodyClass::Bulk
            );
            for p in path_params(e.path) {
                assert!(
                    op["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|q| q["name"] == p && q["in"] == "path"),
                    "{} {}: no parameter {p}",
                    e.method,
                    e.path
                );
            }
            described += 1;
        }
        // Nothing more than the table either.
        let operations: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(operations, described);
        assert_eq!(described, endpoints.len());
    }

    #[test]
    fn the_error_schema_lists_every_error_code() {
        let doc = doc();
        let codes: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
            ["properties"]["code"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes, all);
        // Role-protected routes answer 401, 403 and 503 from the one Error response.
        let op = &doc["paths"]["/v1/audit"]["get"];
        for status in ["401", "403", "503"] {
            assert_eq!(
                op["responses"][status]["$ref"], "#/components/responses/Error",
                "{status}"
            );
        }
    }
}
