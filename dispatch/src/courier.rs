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

/// Why a send failed, and whether trying again may help.
///
/// # Security
/// Reasons are built by this crate from status codes and error kinds; they never quote a
/// peer's free text, a request URL or a message, so they hold no code and no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// May succeed later: retry with backoff, same idempotency key.
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// Will not succeed as is: do not retry; fall back to another channel or flag the part.
    #[error("permanent failure: {0}")]
    Permanent(String),
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

    /// True for [`SendError::Temporary`].
    pub fn is_temporary(&self) -> bool {
        matches!(self, SendError::Temporary(_))
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        match self {
            SendError::Temporary(r) | SendError::Permanent(r) => r,
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
