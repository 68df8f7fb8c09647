//! Delivery status notifications (RFC 3464): the bounces a relay sends back to the envelope
//! sender when a message it accepted cannot be delivered.
//!
//! [`parse`] reads a whole DSN message: a `multipart/report; report-type=delivery-status`
//! whose `message/delivery-status` part holds one per-message block (`Reporting-MTA`,
//! `Original-Envelope-Id`, …) and one block per recipient (`Final-Recipient`, `Action`,
//! `Status`, `Diagnostic-Code`), and whose third part returns the original message — only its
//! header (`text/rfc822-headers`, what `RET=HDRS` asks for) or the whole message
//! (`message/rfc822`). From the returned message only the `Message-ID` is read:
//! [`plico_message_digest`] tells whether it is one of plico's (`<32 hex.plico@domain>`, see
//! [`crate::courier::smtp::message_id`]) and gives the part that names the job.
//!
//! It does not decide what a bounce does to a job (the outbox does), nor parse any MIME beyond
//! what a DSN needs: one level of multipart, 7bit/8bit parts, folded header fields.
//!
//! # Security
//! A DSN with `RET=FULL` returns the whole message, codes included. The parser reads the
//! returned message's header section only, never its body, and copies no body bytes; errors
//! ([`DsnError`]) are fixed texts with field names and positions, never a value from the
//! message. `Final-Recipient` and `Diagnostic-Code` are personal data (an address):
//! [`RecipientStatus`]'s `Debug` leaves them out.

use std::fmt;

/// A parsed DSN: what the relay says about each recipient of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// `Original-Envelope-Id` (the `ENVID` of `MAIL FROM`), if the relay returned one.
    pub envelope_id: Option<String>,
    /// One entry per recipient block, in order (at least one).
    pub recipients: Vec<RecipientStatus>,
    /// The returned message's `Message-ID` (angle brackets included), if it was returned.
    pub message_id: Option<String>,
}

/// One recipient's block of a `message/delivery-status` part.
#[derive(Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// `Final-Recipient`, without its address type (`rfc822;`).
    pub final_recipient: String,
    /// `Action`.
    pub action: Action,
    /// `Status`.
    pub status: Status,
    /// `Diagnostic-Code` (e.g. `smtp; 550 5.1.1 …`), unfolded; may name the recipient.
    pub diagnostic_code: Option<String>,
}

impl fmt::Debug for RecipientStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientStatus")
            .field("final_recipient", &"<redacted>")
            .field("action", &self.action)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A recipient block's `Action` (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The message could not be delivered and will not be retried.
    Failed,
    /// Not delivered yet; the relay keeps trying (a warning, not a verdict).
    Delayed,
    /// Delivered.
    Delivered,
    /// Relayed to a system that sends no DSN.
    Relayed,
    /// Delivered and forwarded to more recipients.
    Expanded,
}

impl Action {
    /// The field's value as RFC 3464 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }
}

/// An enhanced status code (RFC 3463): `class.subject.detail`, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// 0 to 999.
    pub subject: u16,
    /// 0 to 999.
    pub detail: u16,
}

impl Status {
    /// Parses `5.1.1` (a trailing comment, `5.1.1 (bad mailbox)`, is ignored).
    fn parse(value: &str) -> Option<Status> {
        let code = value.split_whitespace().next()?;
        let mut it = code.split('.');
        let (class, subject, detail) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        let num = |s: &str, max: usize| -> Option<u16> {
            if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let class = match num(class, 1)? {
            c @ (2 | 4 | 5) => u8::try_from(c).ok()?,
            _ => return None,
        };
        Some(Status {
            class,
            subject: num(subject, 3)?,
            detail: num(detail, 3)?,
        })
    }

    /// True for class 5: the relay will not try again.
    pub fn is_permanent(self) -> bool {
        self.class == 5
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Why a message is not a DSN this module can read. The texts name the part, the field and the
/// recipient block (1-based), never a value from the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DsnError {
    /// The message has no header section ending in a blank line.
    #[error("not a mail message: no header section ending in a blank line")]
    NoHeader,
    /// The top-level `Content-Type` is not `multipart/report; report-type=delivery-status`.
    #[error("not a delivery status notification: content-type is not multipart/report with report-type=delivery-status")]
    NotReport,
    /// The `multipart/report` has no usable `boundary` parameter.
    #[error("multipart/report: no boundary parameter")]
    NoBoundary,
    /// The multipart body does not end with its closing delimiter.
    #[error("multipart/report: no closing boundary")]
    Unterminated,
    /// No `message/delivery-status` part.
    #[error("multipart/report: no message/delivery-status part")]
    NoStatusPart,
    /// The status part is encoded (base64, quoted-printable), which DSNs never need.
    #[error("message/delivery-status: content-transfer-encoding other than 7bit/8bit")]
    EncodedStatus,
    /// The status part has no recipient block.
    #[error("message/delivery-status: no per-recipient block")]
    NoRecipient,
    /// A recipient block lacks a required field.
    #[error("message/delivery-status: recipient block {block}: no {field} field")]
    Missing {
        /// The block, 1-based.
        block: usize,
        /// `Final-Recipient`, `Action` or `Status`.
        field: &'static str,
    },
    /// A recipient block's field does not parse.
    #[error("message/delivery-status: recipient block {block}: {field} is not valid")]
    Invalid {
        /// The block, 1-based.
        block: usize,
        /// `Final-Recipient`, `Action` or `Status`.
        field: &'static str,
    },
}

/// Parses a DSN message (the whole message, header and body, as received).
///
/// # Errors
/// [`DsnError`] naming what is missing or malformed.
pub fn parse(raw: &[u8]) -> Result<Dsn, DsnError> {
    let (header, body) = split_header(raw).ok_or(DsnError::NoHeader)?;
    let content_type = field(&header, "content-type").ok_or(DsnError::NotReport)?;
    let (mime, params) = parse_content_type(&content_type);
    let report_type = param(&params, "report-type");
    let is_report = mime == "multipart/report"
        && report_type.is_some_and(|r| {
            r.eq_ignore_ascii_case("delivery-status")
                || r.eq_ignore_ascii_case("global-delivery-status")
        });
    if !is_report {
        return Err(DsnError::NotReport);
    }
    let boundary = param(&params, "boundary")
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or(DsnError::NoBoundary)?;
    let parts = split_multipart(body, boundary.as_bytes())?;
    let mut status_part = None;
    let mut message_id = None;
    for part in parts {
        let Some((part_header, part_body)) = split_header(part) else {
            continue;
        };
        let (mime, _) = field(&part_header, "content-type")
            .map(|ct| parse_content_type(&ct))
            .unwrap_or_else(|| ("text/plain".to_owned(), Vec::new()));
        match mime.as_str() {
            "message/delivery-status" | "message/global-delivery-status"
                if status_part.is_none() =>
            {
                let cte = field(&part_header, "content-transfer-encoding")
                    .map(|c| c.trim().to_ascii_lowercase());
                if cte.as_deref().is_some_and(|c| c != "7bit" && c != "8bit") {
                    return Err(DsnError::EncodedStatus);
                }
                status_part = Some(part_body);
            }
            "text/rfc822-headers"
            | "message/rfc822"
            | "message/global"
            | "message/global-headers"
                if message_id.is_none() =>
            {
                // Only the returned message's header section; its body (codes, with
                // RET=FULL) is never read.
                let returned = split_header(part_body).map_or_else(
                    || header_fields(part_body),
                    |(returned_header, _)| returned_header,
                );
                message_id = field(&returned, "message-id").map(|m| m.trim().to_owned());
            }
            _ => {}
        }
    }
    let status_part = status_part.ok_or(DsnError::NoStatusPart)?;
    let mut blocks = field_blocks(status_part).into_iter();
    let per_message = blocks.next().unwrap_or_default();
    let envelope_id = field(&per_message, "original-envelope-id").map(|e| e.trim().to_owned());
    let recipients = blocks
        .enumerate()
        .map(|(i, block)| recipient(&block, i + 1))
        .collect::<Result<Vec<_>, _>>()?;
    if recipients.is_empty() {
        return Err(DsnError::NoRecipient);
    }
    Ok(Dsn {
        envelope_id,
        recipients,
        message_id,
    })
}

/// The job part of one of plico's `Message-ID`s: the 32 lower-case hex digits of
/// `<32 hex.plico@domain>`, or `None` for any other `Message-ID`.
pub fn plico_message_digest(message_id: &str) -> Option<String> {
    let inner = message_id.trim().strip_prefix('<')?.strip_suffix('>')?;
    let (local, domain) = inner.split_once('@')?;
    let digest = local.strip_suffix(".plico")?;
    if domain.is_empty() || digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(digest.to_ascii_lowercase())
}

/// One recipient block.
fn recipient(block: &[(String, String)], n: usize) -> Result<RecipientStatus, DsnError> {
    let get = |name: &'static str| {
        field(block, &name.to_ascii_lowercase()).ok_or(DsnError::Missing {
            block: n,
            field: name,
        })
    };
    let invalid = |field: &'static str| DsnError::Invalid { block: n, field };
    let final_recipient = get("Final-Recipient")?;
    // `address-type ; address`
    let final_recipient = final_recipient
        .split_once(';')
        .map(|(_, a)| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| invalid("Final-Recipient"))?;
    let action = match get("Action")?
        .split_whitespace()
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("failed") => Action::Failed,
        Some("delayed") => Action::Delayed,
        Some("delivered") => Action::Delivered,
        Some("relayed") => Action::Relayed,
        Some("expanded") => Action::Expanded,
        _ => return Err(invalid("Action")),
    };
    let status = Status::parse(&get("Status")?).ok_or_else(|| invalid("Status"))?;
    Ok(RecipientStatus {
        final_recipient,
        action,
        status,
        diagnostic_code: field(block, "diagnostic-code").map(|d| d.trim().to_owned()),
    })
}

/// Header fields: `(lower-case name, unfolded value)`, in order.
type Fields = Vec<(String, String)>;

/// Lines of `bytes`, without their `\n` or `\r\n`.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// The header section (unfolded fields) and the body after the first blank line.
fn split_header(bytes: &[u8]) -> Option<(Fields, &[u8])> {
    let mut at = 0;
    while at < bytes.len() {
        let end = bytes[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| at + p + 1);
        let line = &bytes[at..end];
        if line == b"\n" || line == b"\r\n" {
            return Some((header_fields(&bytes[..at]), &bytes[end..]));
        }
        at = end;
    }
    None
}

/// Header fields `(lower-case name, unfolded value)` of a header section (or of a block of the
/// delivery-status part, which has the same syntax). Lines that are not fields are skipped.
fn header_fields(bytes: &[u8]) -> Fields {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in lines(bytes) {
        let text = String::from_utf8_lossy(line);
        if text.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(text.trim());
            }
            continue;
        }
        if let Some((name, value)) = text.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) {
                fields.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
    }
    fields
}

/// The blocks of a delivery-status body: field groups separated by blank lines.
fn field_blocks(body: &[u8]) -> Vec<Fields> {
    let mut blocks = Vec::new();
    let mut start: Option<usize> = None;
    let mut at = 0;
    for line in body.split_inclusive(|&b| b == b'\n') {
        let blank = line.iter().all(|b| b.is_ascii_whitespace());
        match (blank, start) {
            (true, Some(s)) => {
                blocks.push(header_fields(&body[s..at]));
                start = None;
            }
            (false, None) => start = Some(at),
            _ => {}
        }
        at += line.len();
    }
    if let Some(s) = start {
        blocks.push(header_fields(&body[s..]));
    }
    blocks
}

/// The first field named `name` (lower-case).
fn field(fields: &[(String, String)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// `type/subtype` (lower-case) and its parameters (lower-case names, unquoted values).
fn parse_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = split_params(value).into_iter();
    let mime = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .map_or_else(|| v.to_owned(), |q| q.replace("\\\"", "\""));
            Some((k.trim().to_ascii_lowercase(), v))
        })
        .collect();
    (mime, params)
}

/// Splits at `;` outside double quotes.
fn split_params(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if let Some(cur) = out.last_mut() {
            match c {
                _ if escaped => {
                    escaped = false;
                    cur.push(c);
                }
                '\\' if quoted => {
                    escaped = true;
                    cur.push(c);
                }
                '"' => {
                    quoted = !quoted;
                    cur.push(c);
                }
                ';' if !quoted => out.push(String::new()),
                _ => cur.push(c),
            }
        }
    }
    out
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The body parts of a multipart body (RFC 2046 §5.1.1), preamble and epilogue dropped.
fn split_multipart<'a>(body: &'a [u8], boundary: &[u8]) -> Result<Vec<&'a [u8]>, DsnError> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut at = 0;
    for line in body.split_inclusive(|&b| b == b'\n') {
        let bare = line.trim_ascii_end();
        if let Some(rest) = bare.strip_prefix(delimiter.as_slice()) {
            let closing = rest == b"--";
            if rest.is_empty() || closing {
                if let Some(start) = current {
                    // The CRLF before a delimiter belongs to the delimiter.
                    let part = &body[start..at];
                    let part = part.strip_suffix(b"\n").unwrap_or(part);
                    parts.push(part.strip_suffix(b"\r").unwrap_or(part));
                }
                if closing {
                    return Ok(parts);
                }
                current = Some(at + line.len());
            }
        }
        at += line.len();
    }
    Err(DsnError::Unterminated)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const POSTFIX_RCPT: &[u8] = include_bytes!("../tests/fixtures/dsn/postfix-user-unknown.eml");
    const POSTFIX_DELAYED: &[u8] = include_bytes!("../tests/fixtures/dsn/postfix-delayed.eml");
    const RFC3464_FULL: &[u8] = include_bytes!("../tests/fixtures/dsn/rfc3464-full-message.eml");

    #[test]
    fn a_postfix_bounce_for_an_unknown_user() {
        let dsn = parse(POSTFIX_RCPT).unwrap();
        assert_eq!(dsn.recipients.len(), 1);
        let r = &dsn.recipients[0];
        assert_eq!(r.action, Action::Failed);
        assert_eq!(r.status.to_string(), "5.1.1");
        assert!(r.status.is_permanent());
        assert_eq!(r.final_recipient, "mario.rossi@example.it");
        let diag = r.diagnostic_code.as_deref().unwrap();
        assert!(diag.starts_with("smtp; 550 5.1.1"), "{diag}");
        // Folded in the fixture, unfolded here.
        assert!(
            diag.contains("Recipient address rejected: User unknown"),
            "{diag}"
        );
        let id = dsn.message_id.unwrap();
        assert_eq!(
            plico_message_digest(&id).as_deref(),
            Some("0f5c2b7e9a1d4c3b8e6f0a2d4c6e8a0b")
        );
        assert!(!format!("{r:?}").contains("rossi"));
    }

    #[test]
    fn a_delay_warning_is_read_as_delayed() {
        let dsn = parse(POSTFIX_DELAYED).unwrap();
        let r = &dsn.recipients[0];
        assert_eq!(
            (r.action, r.status.to_string()),
            (Action::Delayed, "4.4.1".into())
        );
        assert!(!r.status.is_permanent());
        assert!(dsn.message_id.is_some());
    }

    /// RFC 3464's shape with the whole message returned (`RET=FULL`) and two recipients: the
    /// `Message-ID` comes from the returned header, and nothing of its body is kept.
    #[test]
    fn a_full_returned_message_and_two_recipients() {
        let dsn = parse(RFC3464_FULL).unwrap();
        let got: Vec<(Action, String)> = dsn
            .recipients
            .iter()
            .map(|r| (r.action, r.status.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Action::Failed, "5.2.2".to_owned()),
                (Action::Delivered, "2.0.0".to_owned())
            ]
        );
        assert_eq!(dsn.envelope_id.as_deref(), Some("QQ314159"));
        assert_eq!(
            dsn.message_id.as_deref(),
            Some("<199407021710.RAA14100@CS.UTK.EDU>")
        );
        assert!(plico_message_digest(dsn.message_id.as_deref().unwrap()).is_none());
        assert!(!format!("{dsn:?}").contains("PIN"));
    }

    #[test]
    fn crlf_and_lf_read_alike() {
        let crlf: Vec<u8> = String::from_utf8(POSTFIX_RCPT.to_vec())
            .unwrap()
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes();
        assert_eq!(parse(&crlf).unwrap(), parse(POSTFIX_RCPT).unwrap());
    }

    #[test]
    fn what_is_not_a_dsn_is_named() {
        let text = |s: &str| parse(s.as_bytes()).unwrap_err();
        assert_eq!(text("no header at all"), DsnError::NoHeader);
        assert_eq!(
            text("Content-Type: text/plain\n\nPIN 12345\n"),
            DsnError::NotReport
        );
        assert_eq!(
            text("Content-Type: multipart/report; report-type=disposition-notification; boundary=b\n\n--b--\n"),
            DsnError::NotReport
        );
        assert_eq!(
            text("Content-Type: multipart/report; report-type=delivery-status\n\n"),
            DsnError::NoBoundary
        );
        assert_eq!(
            text("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\n\nx\n"),
            DsnError::Unterminated
        );
        assert_eq!(
            text("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: text/plain\n\nPIN 12345\n--b--\n"),
            DsnError::NoStatusPart
        );
        assert_eq!(
            text("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n--b--\n"),
            DsnError::NoRecipient
        );
        let missing = text("Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\nFinal-Recipient: rfc822; a@b\nAction: failed\n--b--\n");
        assert_eq!(
            missing,
            DsnError::Missing {
                block: 1,
                field: "Status"
            }
        );
        assert_eq!(
            missing.to_string(),
            "message/delivery-status: recipient block 1: no Status field"
        );
        let bad = text("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\nFinal-Recipient: rfc822; a@b\nAction: failed\nStatus: 55.1.1234\n--b--\n");
        assert_eq!(
            bad,
            DsnError::Invalid {
                block: 1,
                field: "Status"
            }
        );
        assert!(!bad.to_string().contains("1234"));
    }

    /// Untrusted bytes: every truncation of the fixtures, and each with one byte changed at
    /// every third position, parses or is refused, never panics.
    #[test]
    fn damaged_messages_never_panic() {
        for fixture in [POSTFIX_RCPT, POSTFIX_DELAYED, RFC3464_FULL] {
            for end in 0..fixture.len() {
                let _ = parse(&fixture[..end]);
            }
            let mut damaged = fixture.to_vec();
            for at in (0..damaged.len()).step_by(3) {
                let keep = damaged[at];
                for b in [b'\n', b':', b'-', 0xff] {
                    damaged[at] = b;
                    let _ = parse(&damaged);
                }
                damaged[at] = keep;
            }
        }
    }

    #[test]
    fn status_codes() {
        assert_eq!(Status::parse("5.1.1").unwrap().to_string(), "5.1.1");
        assert_eq!(
            Status::parse("4.7.0 (delivery temporarily suspended)")
                .unwrap()
                .to_string(),
            "4.7.0"
        );
        for bad in [
            "", "5", "5.1", "6.1.1", "5.1.1.1", "5.x.1", "5.1000.1", "+5.1.1",
        ] {
            assert!(Status::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn plico_message_ids() {
        let key = crate::IdempotencyKey::new("00112233445566778899aabbccddeeff").unwrap();
        let id = crate::courier::smtp::message_id(&key, "example.it");
        assert_eq!(
            plico_message_digest(&id).unwrap(),
            key.digest_hex()[..32].to_owned()
        );
        for other in [
            "<abc@example.it>",
            "0f5c2b7e9a1d4c3b8e6f0a2d4c6e8a0b.plico@x",
            "<0f5c2b7e9a1d4c3b8e6f0a2d4c6e8a0.plico@x>",
            "<0f5c2b7e9a1d4c3b8e6f0a2d4c6e8a0b.plico@>",
        ] {
            assert!(plico_message_digest(other).is_none(), "{other}");
        }
    }
}
