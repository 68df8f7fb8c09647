//! `POST /v1/sys/unseal`: custodians submit their shares one at a time, or reset the
//! progress.
//!
//! Body `{"share": "<one share line>"}` or `{"reset": true}`; answer
//! `{"sealed": bool, "progress": k, "threshold": m}`. A refused share is `400 share_refused`
//! and leaves the shares already submitted in place.
//!
//! The share is held as a `SecretString` from parsing on, and is never logged. As a last guard
//! the provider's refusal message is checked not to contain the share before it is returned.

use super::extract::JsonBody;
use super::{blocking, Access, ApiError, Endpoint};
use crate::AppState;
use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use vault::UnsealProgress;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(
        Method::POST,
        "/v1/sys/unseal",
        Access::Public,
        post(unseal),
    )]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsealRequest {
    #[serde(default)]
    share: Option<SecretString>,
    #[serde(default)]
    reset: bool,
}

async fn unseal(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<UnsealRequest>,
) -> Result<Json<UnsealProgress>, ApiError> {
    let hsm = state.hsm.clone();
    let progress = match (req.share, req.reset) {
        (Some(share), false) => blocking(move || submit(&*hsm, &share)).await?,
        (None, true) => {
            blocking(move || {
                hsm.reset_unseal();
                let s = hsm.status();
                tracing::info!("unseal progress reset");
                Ok(UnsealProgress {
                    sealed: s.sealed,
                    progress: s.progress,
                    threshold: s.threshold,
                })
            })
            .await?
        }
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                "request body: send either `share` or `reset`, not both",
            ))
        }
        (None, false) => {
            return Err(ApiError::bad_request(
                "request body: missing field `share` (or `reset: true`)",
            ))
        }
    };
    Ok(Json(progress))
}

fn submit(hsm: &dyn vault::Hsm, share: &SecretString) -> vault::Result<UnsealProgress> {
    match hsm.unseal(share) {
        Ok(p) => {
            if p.sealed {
                tracing::info!(
                    progress = p.progress,
                    threshold = p.threshold,
                    "share accepted"
                );
            } else {
                tracing::info!("share accepted; hsm unsealed");
            }
            Ok(p)
        }
        Err(vault::Error::Share(why)) => {
            let why = if echoes(&why, share) {
                "the share is not valid".to_owned()
            } else {
                why
            };
            tracing::info!(reason = %why, "share refused");
            Err(vault::Error::Share(why))
        }
        Err(e) => Err(e),
    }
}

/// True if `message` repeats the share, or a long enough piece of it to matter.
///
/// The window is longer than any public part of a share (its prefix, its set id), which the
/// provider's messages may legitimately name.
fn echoes(message: &str, share: &SecretString) -> bool {
    const WINDOW: usize = 24;
    const WHOLE: usize = 8;
    let share = share.expose_secret().trim();
    if share.len() >= WHOLE && message.contains(share) {
        return true;
    }
    let starts: Vec<usize> = share.char_indices().map(|(i, _)| i).collect();
    starts.iter().enumerate().any(|(n, &start)| {
        starts
            .get(n + WINDOW)
            .is_some_and(|&end| message.contains(&share[start..end]))
            || (n + WINDOW == starts.len() && message.contains(&share[start..]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_guard() {
        let share = SecretString::from(
            "plico-share:v1:0011223344556677:1:2:3:00112233445566778899aabbccddeeff:0badc0de",
        );
        assert!(echoes(&format!("bad {}", share.expose_secret()), &share));
        assert!(echoes("near 33445566778899aabbccddee here", &share));
        assert!(echoes("tail 778899aabbccddeeff:0badc0de", &share));
        // Public parts of a share may be named.
        assert!(!echoes(
            "not a plico share (expected text starting with \"plico-share:v1:\")",
            &share
        ));
        assert!(!echoes(
            "share set 0011223344556677 is not this hsm's",
            &share
        ));
        assert!(!echoes("anything", &SecretString::from("  ")));
    }
}
