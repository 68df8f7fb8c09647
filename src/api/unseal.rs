//! `POST /v1/sys/unseal`: custodians submit their shares one at a time, or reset the
//! progress.
//!
//! Body `{"share": "<one share line>"}` or `{"reset": true}`; answer
//! `{"sealed": bool, "progress": k, "threshold": m}`. A refused share is `400 share_refused`
//! and leaves the shares already submitted in place.
//!
//! The share is held as a `SecretString` from parsing on, and is never logged. As a last guard
//! the provider's refusal message is checked not to contain the share before it is returned.
//!
//! The route is public: custodians are not accounts, and the share is the credential. So it is
//! rate-limited by client address ([`UnsealRate`]: `[limits] unseal_per_minute_per_address`),
//! under a global ceiling far above what custodians need (`[limits] unseal_per_minute`): a
//! flood from one address is refused (`429`) without delaying a custodian at another. Refusals
//! for the rate are logged with the address (once a minute per address), and once the service
//! is unsealed they are audit events too (`hsm.unseal_rate_limited`, at the same pace).
//!
//! Every submission is an audit event (`hsm.unseal_share`, outcome ok or refused, with the progress
//! or the refusal's reason — never share content), and so is a reset. When a share completes
//! the unseal, the audit key is installed ([`AppState::unsealed`], which records
//! `hsm.unseal`). If a submission cannot be recorded it does not count: the progress is reset,
//! or the HSM sealed again; an HSM unsealed without a working audit chain would be an
//! unaudited service. Submissions are serialised so the audit key is installed exactly once.

use super::extract::{ClientAddr, JsonBody};
use super::{blocking, ApiError, Endpoint, RequestId};
use crate::AppState;
use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use vault::Actor;
use vault::UnsealProgress;
use vault::{NewEvent, Outcome};

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::POST, "/v1/sys/unseal", post(unseal)).public()]
}

/// The unseal route's rate limits (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsealLimits {
    /// Submissions (shares and resets) a minute from one client address.
    pub per_address_per_minute: NonZeroU32,
    /// Submissions a minute from everyone together.
    pub per_minute: NonZeroU32,
}

/// Submissions a minute from one address when nothing says otherwise: a custodian types one
/// share, maybe a few after typos.
pub const DEFAULT_UNSEAL_PER_ADDRESS_PER_MINUTE: NonZeroU32 = match NonZeroU32::new(20) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// Submissions a minute from everyone when nothing says otherwise: far above a quorum of
/// custodians, far below what would flood the audit chain.
pub const DEFAULT_UNSEAL_PER_MINUTE: NonZeroU32 = match NonZeroU32::new(600) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

impl Default for UnsealLimits {
    fn default() -> Self {
        UnsealLimits {
            per_address_per_minute: DEFAULT_UNSEAL_PER_ADDRESS_PER_MINUTE,
            per_minute: DEFAULT_UNSEAL_PER_MINUTE,
        }
    }
}

/// Addresses remembered by the per-address limiters before the ones with a full bucket again
/// are forgotten.
const REMEMBERED_ADDRESSES: usize = 4096;

/// The unseal route's limiters: per client address first (so a flood spends only its own
/// bucket), then the global ceiling; and a once-a-minute pace per address for logging and
/// auditing the refusals.
pub struct UnsealRate {
    limits: UnsealLimits,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    global: DefaultDirectRateLimiter,
    report: DefaultKeyedRateLimiter<IpAddr>,
}

impl fmt::Debug for UnsealRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnsealRate({:?})", self.limits)
    }
}

/// A refusal for the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRefusal {
    /// Whole seconds (at least 1) until a submission would be allowed.
    pub retry_after: u64,
    /// Whether the refusal is the first from this address in a minute (to be reported).
    pub report: bool,
}

fn wait_secs(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl UnsealRate {
    /// Limiters for `limits`.
    pub fn new(limits: UnsealLimits) -> Self {
        UnsealRate {
            limits,
            per_address: RateLimiter::keyed(Quota::per_minute(limits.per_address_per_minute)),
            global: RateLimiter::direct(Quota::per_minute(limits.per_minute)),
            report: RateLimiter::keyed(Quota::per_minute(NonZeroU32::MIN)),
        }
    }

    /// `Ok` if one more submission from `addr` is allowed now. A request without a known
    /// address (only in tests without a socket) counts against the global ceiling alone.
    ///
    /// # Errors
    /// A [`RateRefusal`] with the seconds to wait.
    pub fn check(&self, addr: Option<IpAddr>) -> Result<(), RateRefusal> {
        if let Some(ip) = addr {
            if self.per_address.len() > REMEMBERED_ADDRESSES {
                self.per_address.retain_recent();
                self.report.retain_recent();
            }
            if let Err(n) = self.per_address.check_key(&ip) {
                return Err(RateRefusal {
                    retry_after: wait_secs(&n),
                    report: self.report.check_key(&ip).is_ok(),
                });
            }
        }
        self.global.check().map_err(|n| RateRefusal {
            retry_after: wait_secs(&n),
            report: addr.is_none_or(|ip| self.report.check_key(&ip).is_ok()),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnsealRequest {
    #[serde(default)]
    share: Option<SecretString>,
    #[serde(default)]
    reset: bool,
}

/// The actor of unseal events: custodians have no accounts.
fn custodian(request_id: &str) -> Actor {
    Actor {
        id: "custodian".to_owned(),
        role: "custodian".to_owned(),
        request_id: request_id.to_owned(),
    }
}

fn event(actor: &Actor, action: &str, outcome: Outcome) -> NewEvent {
    actor.event(action, "hsm").outcome(outcome)
}

/// The address as written into logs and audit events.
fn address(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// Logs (and audits, once unsealed) a refusal for the rate, at most once a minute per address.
async fn report_rate_refusal(state: &AppState, actor: &Actor, addr: Option<IpAddr>) {
    let address = address(addr);
    tracing::warn!(
        %address,
        "unseal submissions refused for the rate; further refusals from this address are not \
         logged for a minute"
    );
    if !state.audit.has_key() {
        return;
    }
    let audit = state.audit.clone();
    let event =
        event(actor, "hsm.unseal_rate_limited", Outcome::Refused).detail("address", address);
    if let Err(e) = blocking(move || audit.append(event).map(|_| ())).await {
        tracing::error!(
            code = e.code().as_str(),
            "a rate-limited unseal submission could not be audited"
        );
    }
}

async fn unseal(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    ClientAddr(addr): ClientAddr,
    JsonBody(req): JsonBody<UnsealRequest>,
) -> Result<Json<UnsealProgress>, ApiError> {
    let actor = custodian(&request_id);
    if let Err(refusal) = state.unseal_rate.check(addr) {
        if refusal.report {
            report_rate_refusal(&state, &actor, addr).await;
        }
        return Err(ApiError::rate_limited(refusal.retry_after));
    }
    let progress = match (req.share, req.reset) {
        (Some(share), false) => {
            blocking(move || {
                state.with_unseal_lock(|| submit_audited(&state, &share, &actor, addr))
            })
            .await?
        }
        (None, true) => {
            blocking(move || {
                state.with_unseal_lock(|| {
                    let hsm = &state.hsm;
                    let s = hsm.status();
                    if !s.sealed {
                        // Nothing to reset: no event, no change.
                        return Ok(already_unsealed(s.threshold));
                    }
                    hsm.reset_unseal();
                    tracing::info!("unseal progress reset");
                    state
                        .audit
                        .append(event(&actor, "hsm.unseal_reset", Outcome::Ok))?;
                    Ok(UnsealProgress {
                        sealed: true,
                        progress: 0,
                        threshold: s.threshold,
                    })
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

fn already_unsealed(threshold: u8) -> UnsealProgress {
    UnsealProgress {
        sealed: false,
        progress: 0,
        threshold,
    }
}

/// Submits a share and records it; installs the audit key when the HSM becomes unsealed.
fn submit_audited(
    state: &AppState,
    share: &SecretString,
    actor: &Actor,
    addr: Option<IpAddr>,
) -> vault::Result<UnsealProgress> {
    let status = state.hsm.status();
    if !status.sealed {
        // Already unsealed: the text is not looked at and nothing is recorded, so a share
        // sent late (or any text at all) leaves no misleading "accepted" event.
        return Ok(already_unsealed(status.threshold));
    }
    match submit(&*state.hsm, share) {
        Ok(p) => {
            let recorded = state.audit.append(
                event(actor, "hsm.unseal_share", Outcome::Ok)
                    .detail("progress", p.progress.to_string())
                    .detail("threshold", p.threshold.to_string())
                    .detail("sealed", p.sealed.to_string()),
            );
            let installed = recorded.and_then(|_| {
                if p.sealed || state.audit.has_key() {
                    Ok(())
                } else {
                    state.unsealed(actor, "custodian shares")
                }
            });
            if let Err(e) = installed {
                tracing::error!("an unseal share could not be audited; it does not count");
                if p.sealed {
                    state.hsm.reset_unseal();
                } else if !state.audit.has_key() {
                    state.seal();
                }
                return Err(e);
            }
            Ok(p)
        }
        Err(vault::Error::Share(why)) => {
            // `why` has been checked by `submit` not to echo the share.
            let address = address(addr);
            tracing::warn!(%address, reason = %why, "unseal share refused");
            state.audit.append(
                event(actor, "hsm.unseal_share", Outcome::Refused)
                    .detail("reason", why.to_string())
                    .detail("address", address),
            )?;
            Err(vault::Error::Share(why))
        }
        Err(e) => Err(e),
    }
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
            let why = if echoes(&why.to_string(), share) {
                vault::ShareRefusal::Malformed("the share is not valid".to_owned())
            } else {
                why
            };
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
