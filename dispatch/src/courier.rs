//! Couriers: the delivery channels that take a rendered message to a peer (an SMTP relay, an
//! SMS gateway, a spool directory) and report whether the peer accepted it.
//!
//! - [`Courier`]: the seam, held as `Arc<dyn Courier>`; `send` is async (tokio, no rayon).
//! - [`smtp::SmtpCourier`]: lettre's SMTP client over this crate's own connection pool
//!   (TCP_NODELAY, a semaphore capping concurrent connections, idle reuse).
//! - [`sms::KannelCourier`]: Kannel's `sendsms` HTTP interface with a delivery-report URL.
//! - [`spool::InsecureSpoolCourier`]: `--dev` only; writes messages, codes in clear, to files.
//! - [`retry`]: exponential backoff with full jitter, and [`retry::Throttled`], a per-channel
//!   rate limit (governor) around any courier.
//!
//! A courier sends once: it neither retries nor records state. The caller (the service's
//! workers, driven by the vault's outbox) decides from [`SendError::Temporary`] or
//! [`SendError::Permanent`] whether to try again, with the same [`IdempotencyKey`], so a peer
//! that sees a message twice can tell (SMTP `Message-ID`, Kannel's `dlr-url`).
//!
//! # Security
//! The codes stay inside the rendered message's zeroizing buffers until a courier writes them
//! to its peer; a [`SendError`]'s reason is written by this crate from status codes and error
//! kinds, never from a peer's text or a request URL, so it cannot carry a code. [`Outgoing`]'s
//! `Debug` shows neither the destination nor the message.

use crate::plan::Channel;
use crate::render::email::EmailMessage;
use crate::render::sms::SmsMessage;
use std::fmt;
use std::time::SystemTime;

pub mod retry;
pub mod sms;
pub mod smtp;
pub mod spool;

/// A delivery channel's sender.
///
/// # Errors
/// `send` returns [`SendError::Temporary`] when the same message may succeed later (peer busy,
/// 4xx, timeouts, connection refused) and [`SendError::Permanent`] when it will not (5xx, bad
/// address, bad credentials, a message the courier cannot carry).
#[async_trait::async_trait]
pub trait Courier: Send + Sync + fmt::Debug {
    /// The channel this courier carries (`Email` or `Sms`).
    fn channel(&self) -> Channel;

    /// Hands one message to the peer; `Ok` once the peer accepted it (not yet delivered).
    async fn send(&self, message: &Outgoing) -> Result<Sent, SendError>;
}

/// A job's idempotency key: the same for every attempt at the same part and channel.
///
/// It names the job, never a code or a number (the outbox builds it from ids); couriers put it
/// (or a hash of it) where the peer shows it back: `Message-ID`, `dlr-url`, spool file name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// A key from 1 to 128 characters of `[A-Za-z0-9._:-]` (safe in a URL, a header and a
    /// file name).
    ///
    /// # Errors
    /// [`SendError::Permanent`] naming the length or the position of the bad character.
    pub fn new(key: impl Into<String>) -> Result<IdempotencyKey, SendError> {
        let key = key.into();
        if key.is_empty() || key.len() > 128 {
            return Err(SendError::permanent(format!(
                "idempotency key: 1 to 128 characters, got {}",
                key.len()
            )));
        }
        if let Some(at) = key
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')))
        {
            return Err(SendError::permanent(format!(
                "idempotency key: character {at} is not one of A-Z a-z 0-9 . _ : -"
            )));
        }
        Ok(IdempotencyKey(key))
    }

    /// The key as text (no secret).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the key, hex: a stable name for files and `Message-ID`s.
    pub fn digest_hex(&self) -> String {
        hex::encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.as_bytes()).as_ref(),
        )
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", self.0)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a message goes: an e-mail address or an E.164 mobile number.
///
/// # Security
/// Personal data: `Debug` is redacted; no `Display`. Read it with [`Destination::expose`].
#[derive(Clone, PartialEq, Eq)]
pub enum Destination {
    /// An e-mail address (`local@domain`).
    Email(String),
    /// A mobile number in E.164 form (`+` and 8 to 15 digits).
    Phone(String),
}

impl Destination {
    /// An e-mail destination; checked only loosely here (one `@`, no blank, no control
    /// character): the SMTP courier parses it fully.
    ///
    /// # Errors
    /// [`SendError::Permanent`] without the address.
    pub fn email(address: impl Into<String>) -> Result<Destination, SendError> {
        let address = address.into();
        let ok = address.matches('@').count() == 1
            && !address.starts_with('@')
            && !address.ends_with('@')
            && address.len() <= 254
            && !address.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Destination::Email(address))
        } else {
            Err(SendError::permanent("bad e-mail address"))
        }
    }

    /// A phone destination in E.164 form (`+393331234567`).
    ///
    /// # Errors
    /// [`SendError::Permanent`] without the number.
    pub fn phone(number: impl Into<String>) -> Result<Destination, SendError> {
        let number = number.into();
        let digits = number.strip_prefix('+').unwrap_or("");
        if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Destination::Phone(number))
        } else {
            Err(SendError::permanent("bad phone number (E.164 expected)"))
        }
    }

    /// The address or number, for the courier that consumes it.
    pub fn expose(&self) -> &str {
        match self {
            Destination::Email(s) | Destination::Phone(s) => s,
        }
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Email(_) => f.write_str("Destination::Email(<redacted>)"),
            Destination::Phone(_) => f.write_str("Destination::Phone(<redacted>)"),
        }
    }
}

/// A rendered message, as the renderers made it.
#[derive(Debug)]
pub enum Message {
    /// An e-mail (subject, text and HTML bodies).
    Email(EmailMessage),
    /// An SMS (GSM-7 text).
    Sms(SmsMessage),
}

/// One message to send: what, to whom, and the job's idempotency key.
///
/// # Security
/// Holds codes (inside the message's zeroizing buffers) and personal data (the destination);
/// `Debug` shows neither.
#[derive(Debug)]
pub struct Outgoing {
    /// The job's key, the same for every attempt.
    pub key: IdempotencyKey,
    /// Where it goes.
    pub destination: Destination,
    /// The rendered message.
    pub message: Message,
}

impl Outgoing {
    /// An e-mail to `destination`.
    ///
    /// # Errors
    /// [`SendError::Permanent`] if the destination is not an e-mail address.
    pub fn email(
        key: IdempotencyKey,
        destination: Destination,
        message: EmailMessage,
    ) -> Result<Outgoing, SendError> {
        match destination {
            Destination::Email(_) => Ok(Outgoing {
                key,
                destination,
                message: Message::Email(message),
            }),
            Destination::Phone(_) => Err(SendError::permanent("an e-mail needs an e-mail address")),
        }
    }

    /// An SMS to `destination`.
    ///
    /// # Errors
    /// [`SendError::Permanent`] if the destination is not a phone number.
    pub fn sms(
        key: IdempotencyKey,
        destination: Destination,
        message: SmsMessage,
    ) -> Result<Outgoing, SendError> {
        match destination {
            Destination::Phone(_) => Ok(Outgoing {
                key,
                destination,
                message: Message::Sms(message),
            }),
            Destination::Email(_) => Err(SendError::permanent("an sms needs a phone number")),
        }
    }

    /// The channel, from the message's kind.
    pub fn channel(&self) -> Channel {
        match self.message {
            Message::Email(_) => Channel::Email,
            Message::Sms(_) => Channel::Sms,
        }
    }
}

/// Proof that a peer accepted a message (a receipt, not yet a delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The peer's answer: the SMTP server's reply to the data (its queue id), Kannel's reply
    /// body, or the spool file's name. Never holds a code.
    pub peer_id: String,
    /// When the peer accepted it.
    pub at: SystemTime,
}

/// What a failure says about the job: try it again, give it up, or pause the whole lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureScope {
    /// This job may succeed later: retry it with backoff (an attempt is spent).
    Retry,
    /// This job will not succeed as is: it ends (`dead`, then the policy's fallback).
    Final,
    /// The relay or gateway is broken or misconfigured for every job (TLS, credentials,
    /// connection, a missing capability): not a verdict on this job. The lane pauses with
    /// backoff, the job goes back to the queue with its attempt given back, nothing falls back.
    Lane,
}

/// The reason code of a failed send: stable, lower-case `snake_case` names that are recorded on
/// the job, logged, shown by `plico cards show` and the console, and counted in the metrics.
/// The code, not the free-text detail, decides the [`FailureScope`].
///
/// Adding a code is fine; renaming one is not (it is persisted on jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FailureReason {
    /// SMTP: the relay's certificate does not chain to a trusted CA, or names another host.
    TlsUntrusted,
    /// SMTP: `tls = "starttls"` and the relay does not offer STARTTLS.
    TlsUnavailable,
    /// SMTP: the TLS handshake failed for another reason (protocol, alert).
    TlsFailed,
    /// SMTP: the relay refused the login (535), or offers no usable mechanism.
    AuthFailed,
    /// The TCP connection was refused or the host is unreachable.
    ConnectRefused,
    /// The connection broke during an exchange.
    ConnectionLost,
    /// Connect, handshake or exchange took longer than its limit.
    Timeout,
    /// SMTP: a 4xx other than on `RCPT` (421 service not available, 451 local error…).
    RelayBusy,
    /// SMTP: a 5xx on `RCPT`: this recipient is refused for good.
    RejectedRecipient,
    /// SMTP: a 4xx on `RCPT` (mailbox busy, greylisting): try this recipient later.
    RecipientDeferred,
    /// SMTP: a 5xx on `MAIL`: the relay refuses the envelope sender (a setting, not the job).
    RejectedSender,
    /// SMTP: a 5xx after the data (message refused: size, content, policy).
    RejectedMessage,
    /// SMTP: the relay lacks a needed extension (8BITMIME / SMTPUTF8) for this message.
    No8bitmime,
    /// The address or number cannot be used (refused before anything was sent).
    BadAddress,
    /// The message cannot be made (rendering, a header or line the protocol cannot carry).
    BadMessage,
    /// SMS: the gateway refused the credentials (Kannel 403).
    GatewayAuth,
    /// SMS: the gateway refused this number for good.
    RejectedNumber,
    /// SMS: the gateway is busy or failing (429, 5xx): try later.
    GatewayBusy,
    /// A temporary failure without a finer code.
    OtherTemporary,
    /// A permanent failure without a finer code.
    OtherPermanent,
}

impl FailureReason {
    /// Every code, for tables and metrics.
    pub const ALL: [FailureReason; 20] = [
        FailureReason::TlsUntrusted,
        FailureReason::TlsUnavailable,
        FailureReason::TlsFailed,
        FailureReason::AuthFailed,
        FailureReason::ConnectRefused,
        FailureReason::ConnectionLost,
        FailureReason::Timeout,
        FailureReason::RelayBusy,
        FailureReason::RejectedRecipient,
        FailureReason::RecipientDeferred,
        FailureReason::RejectedSender,
        FailureReason::RejectedMessage,
        FailureReason::No8bitmime,
        FailureReason::BadAddress,
        FailureReason::BadMessage,
        FailureReason::GatewayAuth,
        FailureReason::RejectedNumber,
        FailureReason::GatewayBusy,
        FailureReason::OtherTemporary,
        FailureReason::OtherPermanent,
    ];

    /// The persisted, logged name (`tls_untrusted`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::TlsUntrusted => "tls_untrusted",
            FailureReason::TlsUnavailable => "tls_unavailable",
            FailureReason::TlsFailed => "tls_failed",
            FailureReason::AuthFailed => "auth_failed",
            FailureReason::ConnectRefused => "connect_refused",
            FailureReason::ConnectionLost => "connection_lost",
            FailureReason::Timeout => "timeout",
            FailureReason::RelayBusy => "relay_busy",
            FailureReason::RejectedRecipient => "rejected_recipient",
            FailureReason::RecipientDeferred => "recipient_deferred",
            FailureReason::RejectedSender => "rejected_sender",
            FailureReason::RejectedMessage => "rejected_message",
            FailureReason::No8bitmime => "no_8bitmime",
            FailureReason::BadAddress => "bad_address",
            FailureReason::BadMessage => "bad_message",
            FailureReason::GatewayAuth => "gateway_auth",
            FailureReason::RejectedNumber => "rejected_number",
            FailureReason::GatewayBusy => "gateway_busy",
            FailureReason::OtherTemporary => "other_temporary",
            FailureReason::OtherPermanent => "other_permanent",
        }
    }

    /// The code named `name`, if any.
    pub fn parse(name: &str) -> Option<FailureReason> {
        FailureReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether the job is retried, ended, or the lane paused.
    pub fn scope(self) -> FailureScope {
        match self {
            FailureReason::TlsUntrusted
            | FailureReason::TlsUnavailable
            | FailureReason::TlsFailed
            | FailureReason::AuthFailed
            | FailureReason::ConnectRefused
            | FailureReason::ConnectionLost
            | FailureReason::Timeout
            | FailureReason::No8bitmime
            | FailureReason::RejectedSender
            | FailureReason::GatewayAuth => FailureScope::Lane,
            FailureReason::RelayBusy
            | FailureReason::RecipientDeferred
            | FailureReason::GatewayBusy
            | FailureReason::OtherTemporary => FailureScope::Retry,
            FailureReason::RejectedRecipient
            | FailureReason::RejectedMessage
            | FailureReason::BadAddress
            | FailureReason::BadMessage
            | FailureReason::RejectedNumber
            | FailureReason::OtherPermanent => FailureScope::Final,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a send failed, and whether trying again may help.
///
/// # Security
/// Reasons are built by this crate from status codes and error kinds; they never quote a
/// peer's free text, a request URL or a message, so they hold no code and no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// May succeed later: retry with backoff, same idempotency key (code `other_temporary`).
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// Will not succeed as is: do not retry; fall back to another channel or flag the part
    /// (code `other_permanent`).
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// A classified failure: its code decides the [`FailureScope`].
    #[error("{reason}: {detail}")]
    Failed {
        /// The reason code.
        reason: FailureReason,
        /// What happened, from status codes and error kinds (never a peer's text).
        detail: String,
    },
}

impl SendError {
    /// A temporary failure with this reason (which must hold no secret).
    pub fn temporary(reason: impl Into<String>) -> SendError {
        SendError::Temporary(reason.into())
    }

    /// A permanent failure with this reason (which must hold no secret).
    pub fn permanent(reason: impl Into<String>) -> SendError {
        SendError::Permanent(reason.into())
    }

    /// A failure with reason code `reason` and a `detail` (which must hold no secret).
    pub fn failed(reason: FailureReason, detail: impl Into<String>) -> SendError {
        SendError::Failed {
            reason,
            detail: detail.into(),
        }
    }

    /// The reason code.
    pub fn code(&self) -> FailureReason {
        match self {
            SendError::Temporary(_) => FailureReason::OtherTemporary,
            SendError::Permanent(_) => FailureReason::OtherPermanent,
            SendError::Failed { reason, .. } => *reason,
        }
    }

    /// Retry, end the job, or pause the lane.
    pub fn scope(&self) -> FailureScope {
        self.code().scope()
    }

    /// True unless the failure ends the job ([`FailureScope::Final`]): a lane-wide failure is
    /// temporary for the job.
    pub fn is_temporary(&self) -> bool {
        self.scope() != FailureScope::Final
    }

    /// True for a failure of the relay or gateway as a whole ([`FailureScope::Lane`]).
    pub fn is_lane_wide(&self) -> bool {
        self.scope() == FailureScope::Lane
    }

    /// The reason text.
    pub fn reason(&self) -> &str {
        match self {
            SendError::Temporary(r) | SendError::Permanent(r) => r,
            SendError::Failed { detail, .. } => detail,
        }
    }
}

/// A courier's configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("courier config {field}: {reason}")]
pub struct ConfigError {
    /// The setting (e.g. `smtp.from`).
    pub field: &'static str,
    /// What is wrong with it (never its value when it is a secret).
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(IdempotencyKey::new("job-42:sms.1").is_ok());
        assert!(IdempotencyKey::new("").is_err());
        assert!(IdempotencyKey::new("a/b").is_err());
        assert!(IdempotencyKey::new("a b").is_err());
        assert!(IdempotencyKey::new("x".repeat(129)).is_err());
        let k = IdempotencyKey::new("job-42").unwrap();
        assert_eq!(k.digest_hex().len(), 64);
        assert_eq!(
            k.digest_hex(),
            IdempotencyKey::new("job-42").unwrap().digest_hex()
        );
    }

    #[test]
    fn reason_codes_round_trip_and_decide_the_scope() {
        for r in FailureReason::ALL {
            assert_eq!(FailureReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(FailureReason::parse("nope"), None);
        let e = SendError::failed(FailureReason::TlsUntrusted, "smtp starttls: unknown ca");
        assert!(e.is_lane_wide() && e.is_temporary());
        assert_eq!(e.code().as_str(), "tls_untrusted");
        let e = SendError::failed(FailureReason::RejectedRecipient, "smtp rcpt: 550");
        assert!(!e.is_temporary() && !e.is_lane_wide());
        let e = SendError::failed(FailureReason::RelayBusy, "smtp mail: 421");
        assert!(e.is_temporary() && !e.is_lane_wide());
        assert_eq!(
            SendError::temporary("x").code(),
            FailureReason::OtherTemporary
        );
        assert_eq!(
            SendError::permanent("x").code(),
            FailureReason::OtherPermanent
        );
        assert_eq!(
            FailureReason::GatewayAuth.scope(),
            FailureScope::Lane,
            "a gateway password mismatch is not a verdict on one job"
        );
    }

    #[test]
    fn destinations_are_redacted() {
        let e = Destination::email("mario.rossi@example.it").unwrap();
        let p = Destination::phone("+393331234567").unwrap();
        assert!(!format!("{e:?}").contains("rossi"));
        assert!(!format!("{p:?}").contains("333"));
        assert!(Destination::phone("3331234567").is_err());
        assert!(Destination::phone("+39 333").is_err());
        assert!(Destination::email("no-at").is_err());
        assert!(Destination::email("a b@c").is_err());
        let err = Destination::email("secret@@x").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}
