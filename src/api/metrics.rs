//! `GET /metrics`: every metric of the service ([`crate::metrics`]) in the OpenMetrics text
//! format, for a scraper holding the scrape token (`[metrics] token_file`; see
//! [`super::Access::ScrapeToken`]). Answers while sealed: that is when the `sealed` alert needs it.

use super::{ApiError, Endpoint};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, Method};
use axum::response::IntoResponse;
use axum::routing::get;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::GET, "/metrics", get(metrics)).scrape_token()]
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = crate::metrics::render(&state).await?;
    Ok((
        [
            (header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    ))
}
