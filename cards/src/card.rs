//! A card's lifecycle: its states, the reasons for suspension and revocation, and which
//! transitions are allowed.
//!
//! ```text
//! issued ──activate──▶ active ──suspend──▶ suspended
//!   │                   ▲  │                  │
//!   │                   └──┼───reactivate─────┘
//!   └──────revoke──────────┴──────revoke──────┴──▶ revoked (terminal)
//! ```
//!
//! `reidentify` keeps an active card active: it records that the holder was identified again
//! (rule 13: a changed contact needs a new identification before codes go to it).

use serde::{Deserialize, Serialize};
use std::fmt;
use vault::{Error, Result};

/// Where a card is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardState {
    /// Known to the registry, not yet handed over.
    Issued,
    /// Handed over and activated: its codes may be delivered.
    Active,
    /// Temporarily blocked.
    Suspended,
    /// Gone for good; its codes are deleted.
    Revoked,
}

impl fmt::Display for CardState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CardState::Issued => "issued",
            CardState::Active => "active",
            CardState::Suspended => "suspended",
            CardState::Revoked => "revoked",
        })
    }
}

/// Why a card was suspended or revoked. A fixed list, so reports can count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Lost by the holder.
    Lost,
    /// Stolen.
    Stolen,
    /// Physically damaged.
    Damaged,
    /// Does not work.
    Malfunction,
    /// Its codes may be known to someone else.
    CodeCompromised,
    /// The PUK is blocked.
    PukBlocked,
    /// Registry data was wrong.
    DataError,
    /// The holder died (registry).
    Deceased,
    /// A new card replaces it (registry).
    Replaced,
    /// Past its expiry date.
    Expired,
    /// Anything else.
    Other,
    /// Its codes were destroyed: a key officer shredded its batch (with `force`).
    CodesDestroyed,
}

impl Reason {
    /// Every reason a caller may give, in a fixed order (`codes_destroyed` is not among them:
    /// only a shred of the card's batch gives it).
    pub const ALL: [Reason; 11] = [
        Reason::Lost,
        Reason::Stolen,
        Reason::Damaged,
        Reason::Malfunction,
        Reason::CodeCompromised,
        Reason::PukBlocked,
        Reason::DataError,
        Reason::Deceased,
        Reason::Replaced,
        Reason::Expired,
        Reason::Other,
    ];

    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Lost => "lost",
            Reason::Stolen => "stolen",
            Reason::Damaged => "damaged",
            Reason::Malfunction => "malfunction",
            Reason::CodeCompromised => "code_compromised",
            Reason::PukBlocked => "puk_blocked",
            Reason::DataError => "data_error",
            Reason::Deceased => "deceased",
            Reason::Replaced => "replaced",
            Reason::Expired => "expired",
            Reason::Other => "other",
            Reason::CodesDestroyed => "codes_destroyed",
        }
    }

    /// Parses a reason name.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing the allowed names.
    pub fn parse(text: &str) -> Result<Reason> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| {
                let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                Error::Invalid(format!("reason: expected one of {}", all.join(", ")))
            })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// issued → active.
    Activate,
    /// active → suspended.
    Suspend,
    /// suspended → active.
    Reactivate,
    /// any but revoked → revoked.
    Revoke,
    /// active → active: the holder identified again (documents seen at the counter).
    Reidentify,
}

impl Move {
    /// The action name in audit events (`card.activate`, …).
    pub fn action(self) -> &'static str {
        match self {
            Move::Activate => "card.activate",
            Move::Suspend => "card.suspend",
            Move::Reactivate => "card.reactivate",
            Move::Revoke => "card.revoke",
            Move::Reidentify => "card.reidentify",
        }
    }

    /// The state after the move, if it is allowed from `from`.
    pub fn from(self, from: CardState) -> Option<CardState> {
        use CardState::*;
        match (self, from) {
            (Move::Activate, Issued) => Some(Active),
            (Move::Suspend, Active) => Some(Suspended),
            (Move::Reactivate, Suspended) => Some(Active),
            (Move::Revoke, Issued | Active | Suspended) => Some(Revoked),
            (Move::Reidentify, Active) => Some(Active),
            _ => None,
        }
    }

    /// The states the move starts from, for the refusal message.
    pub fn needs(self) -> &'static str {
        match self {
            Move::Activate => "issued",
            Move::Suspend => "active",
            Move::Reactivate => "suspended",
            Move::Revoke => "issued, active or suspended",
            Move::Reidentify => "active",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_drawn_transitions_are_allowed() {
        use CardState::*;
        let states = [Issued, Active, Suspended, Revoked];
        let mut allowed = Vec::new();
        for m in [
            Move::Activate,
            Move::Suspend,
            Move::Reactivate,
            Move::Revoke,
        ] {
            for s in states {
                if let Some(t) = m.from(s) {
                    allowed.push((s, t));
                }
            }
        }
        assert_eq!(
            allowed,
            vec![
                (Issued, Active),
                (Active, Suspended),
                (Suspended, Active),
                (Issued, Revoked),
                (Active, Revoked),
                (Suspended, Revoked)
            ]
        );
    }

    #[test]
    fn reasons_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()).unwrap(), r);
        }
        assert!(Reason::parse("bored").is_err());
        assert!(Reason::parse(Reason::CodesDestroyed.as_str()).is_err());
    }
}
