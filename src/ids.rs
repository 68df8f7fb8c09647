//! The ids a client names in a path or a query, checked once: the API parses its path
//! segments with them and the CLI checks its arguments with them before building a URL.
//!
//! Each is a `FromStr` newtype. A refusal ([`BadId`]) says what a valid one looks like and
//! never repeats the text it was given, so the caller adds the name of its field or option
//! (`serial: 1 to 64 letters, digits, '-' or '_'`). Batch and proposal ids are vault types
//! ([`vault::BatchId`], [`vault::ProposalId`]) and parse with their own
//! `FromStr`; [`batch_id`] and [`proposal_id`] add the same refusal as here.

use std::fmt;
use std::str::FromStr;
use vault::BatchId;
use vault::ProposalId;

/// An id that does not have its form; `Display` says what the form is (lower-case, no
/// field name, never the text given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadId {
    expected: &'static str,
}

impl BadId {
    /// What a valid id of the kind looks like.
    pub fn expected(&self) -> &'static str {
        self.expected
    }
}

impl fmt::Display for BadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }
}

impl std::error::Error for BadId {}

/// A card serial as it may appear in a path: 1 to 64 ASCII letters, digits, `-` or `_`
/// (safe in a URL path segment without escaping).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial(String);

impl Serial {
    /// What a serial looks like, for messages.
    pub const EXPECTED: &'static str = "1 to 64 letters, digits, '-' or '_'";

    /// The serial as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Serial {
    type Err = BadId;

    fn from_str(text: &str) -> Result<Self, BadId> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Serial(text.to_owned()))
        } else {
            Err(BadId {
                expected: Self::EXPECTED,
            })
        }
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Serial> for String {
    fn from(serial: Serial) -> String {
        serial.0
    }
}

impl std::ops::Deref for Serial {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Serial {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An account id: ASCII letters and digits only (ids are hex), so safe in a path segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AccountId {
    type Err = BadId;

    fn from_str(text: &str) -> Result<Self, BadId> {
        if !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(AccountId(text.to_owned()))
        } else {
            Err(BadId {
                expected: "an account id (hex digits)",
            })
        }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A problem report's number: a positive number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportId(pub u64);

impl FromStr for ReportId {
    type Err = BadId;

    fn from_str(text: &str) -> Result<Self, BadId> {
        text.parse::<u64>()
            .ok()
            .filter(|n| *n > 0 && text.len() <= 20)
            .map(ReportId)
            .ok_or(BadId {
                expected: "a positive number",
            })
    }
}

impl fmt::Display for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A batch id (`b000042`, or `b42`, or `42`).
///
/// # Errors
/// [`BadId`] for anything else (the vault's own message would repeat the text).
pub fn batch_id(text: &str) -> Result<BatchId, BadId> {
    text.parse::<BatchId>().map_err(|_| BadId {
        expected: "b followed by digits, e.g. b000042",
    })
}

/// A key proposal id (`kp000007`, or `kp7`, or `7`).
///
/// # Errors
/// [`BadId`] for anything else.
pub fn proposal_id(text: &str) -> Result<ProposalId, BadId> {
    text.parse::<ProposalId>().map_err(|_| BadId {
        expected: "kp followed by digits, e.g. kp000007",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials() {
        assert_eq!("8039-a_1".parse::<Serial>().unwrap().as_str(), "8039-a_1");
        for bad in ["", "a/b", "a b", "..", "è", &"9".repeat(65)] {
            let e = bad.parse::<Serial>().unwrap_err();
            assert_eq!(e.expected(), Serial::EXPECTED);
        }
        assert!("9".repeat(64).parse::<Serial>().is_ok());
    }

    #[test]
    fn account_ids() {
        assert!("00ff".parse::<AccountId>().is_ok());
        for bad in ["", "a/b", "../x", "a-b"] {
            assert!(bad.parse::<AccountId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn report_ids() {
        assert_eq!("7".parse::<ReportId>(), Ok(ReportId(7)));
        for bad in ["0", "-1", "x", "", "007x", &"1".repeat(21)] {
            assert!(bad.parse::<ReportId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn batch_and_proposal_ids() {
        assert_eq!(batch_id("b000042"), Ok(BatchId(42)));
        assert_eq!(batch_id("42"), Ok(BatchId(42)));
        assert!(batch_id("b4x2").is_err());
        assert!(batch_id(&"1".repeat(30)).is_err());
        assert_eq!(proposal_id("kp7"), Ok(ProposalId(7)));
        assert!(proposal_id("k7").is_err());
        // The refusal never repeats the text.
        let e = batch_id("b<script>").unwrap_err();
        assert!(!e.to_string().contains("script"));
    }
}
