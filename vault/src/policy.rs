//! The code policy: which PINs and PUKs are acceptable.
//!
//! A code is digits only, with a length inside the bounds configured for its kind. The CNS
//! default is PIN 5 digits and PUK 8; a CIE-like card uses 8 and 8. Errors name the field and
//! what is wrong with it — never the code itself.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest code any policy may ask for; secret code buffers are this size.
pub const MAX_CODE_DIGITS: usize = 16;

/// Which code a policy rule or an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    /// The card's PIN.
    Pin,
    /// The card's PUK (unblocking key).
    Puk,
}

impl fmt::Display for CodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodeKind::Pin => "pin",
            CodeKind::Puk => "puk",
        })
    }
}

/// Inclusive bounds on the number of digits of one kind of code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LengthBounds {
    /// Fewest digits allowed.
    pub min: u8,
    /// Most digits allowed.
    pub max: u8,
}

impl LengthBounds {
    /// Exactly `n` digits.
    pub const fn exactly(n: u8) -> Self {
        LengthBounds { min: n, max: n }
    }

    fn describe(&self) -> String {
        if self.min == self.max {
            format!("{}", self.min)
        } else {
            format!("{} to {}", self.min, self.max)
        }
    }
}

/// Length bounds for PIN and PUK. Built from configuration; checked by [`CodePolicy::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodePolicy {
    /// Bounds for PINs.
    pub pin: LengthBounds,
    /// Bounds for PUKs.
    pub puk: LengthBounds,
}

impl CodePolicy {
    /// The CNS / CRS default: PIN 5 digits, PUK 8 digits.
    pub const CNS: CodePolicy = CodePolicy {
        pin: LengthBounds::exactly(5),
        puk: LengthBounds::exactly(8),
    };

    /// A CIE-like policy: PIN 8 digits, PUK 8 digits.
    pub const CIE: CodePolicy = CodePolicy {
        pin: LengthBounds::exactly(8),
        puk: LengthBounds::exactly(8),
    };

    /// Checks that the bounds themselves make sense (1 ≤ min ≤ max ≤ [`MAX_CODE_DIGITS`]).
    ///
    /// # Errors
    /// A [`CodeError::Policy`] naming the kind whose bounds are wrong.
    pub fn validate(&self) -> Result<(), CodeError> {
        for (kind, b) in [(CodeKind::Pin, self.pin), (CodeKind::Puk, self.puk)] {
            if b.min == 0 || b.min > b.max || usize::from(b.max) > MAX_CODE_DIGITS {
                return Err(CodeError::Policy {
                    kind,
                    min: b.min,
                    max: b.max,
                });
            }
        }
        Ok(())
    }

    /// The bounds for one kind of code.
    pub fn bounds(&self, kind: CodeKind) -> LengthBounds {
        match kind {
            CodeKind::Pin => self.pin,
            CodeKind::Puk => self.puk,
        }
    }
}

impl Default for CodePolicy {
    fn default() -> Self {
        CodePolicy::CNS
    }
}

/// Why a code was refused. Never carries the code or any of its digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// Wrong number of digits.
    #[error("{kind} has {got} digits, policy wants {}", .bounds.describe())]
    Length {
        /// Which code.
        kind: CodeKind,
        /// How many characters it had.
        got: usize,
        /// What the policy allows.
        bounds: LengthBounds,
    },
    /// A character that is not an ASCII digit (its 1-based position, not its value).
    #[error("{kind} has a non-digit character at position {position}")]
    NonDigit {
        /// Which code.
        kind: CodeKind,
        /// 1-based position of the first offending character.
        position: usize,
    },
    /// The policy's own bounds are unusable.
    #[error(
        "code policy for {kind} is invalid: min {min}, max {max} (need 1 <= min <= max <= 16)"
    )]
    Policy {
        /// Which code.
        kind: CodeKind,
        /// Configured minimum.
        min: u8,
        /// Configured maximum.
        max: u8,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_field_and_bounds() {
        let e = CodeError::Length {
            kind: CodeKind::Puk,
            got: 7,
            bounds: LengthBounds::exactly(8),
        };
        assert_eq!(e.to_string(), "puk has 7 digits, policy wants 8");
        let e = CodeError::Length {
            kind: CodeKind::Pin,
            got: 3,
            bounds: LengthBounds { min: 5, max: 8 },
        };
        assert_eq!(e.to_string(), "pin has 3 digits, policy wants 5 to 8");
    }

    #[test]
    fn policy_bounds_are_checked() {
        assert!(CodePolicy::CNS.validate().is_ok());
        assert!(CodePolicy::CIE.validate().is_ok());
        let bad = CodePolicy {
            pin: LengthBounds { min: 6, max: 5 },
            ..CodePolicy::CNS
        };
        assert!(matches!(
            bad.validate(),
            Err(CodeError::Policy {
                kind: CodeKind::Pin,
                ..
            })
        ));
        let bad = CodePolicy {
            puk: LengthBounds { min: 1, max: 17 },
            ..CodePolicy::CNS
        };
        assert!(bad.validate().is_err());
    }
}
