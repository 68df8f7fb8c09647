//! The card registry as key ceremonies see it: the seam that lets a forced shred revoke the
//! cards that lose their codes and cancel their unsent dispatch jobs in the destroying write,
//! and lets a proposal's impact count cards by state — without the vault knowing the
//! card-management domain (the `cards` crate implements [`CardRegistry`]; the vault does not
//! depend on it).
//!
//! Everything a registry adds goes into the caller's store [`Batch`], with its audit events
//! handed back, so the shred, the revocations and the cancellations stay one atomic write.

use super::impact::JobRef;
use crate::account::Actor;
use crate::audit::NewEvent;
use crate::error::Result;
use crate::store::Batch;
use std::fmt;

/// A card's state as far as its codes go. The names are those of the card records and of
/// [`super::CardGroup::state`] (persisted in proposals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardStanding {
    /// Issued, not yet active: will need its codes.
    Issued,
    /// Active: needs its codes.
    Active,
    /// Suspended: may come back, so still needs its codes.
    Suspended,
    /// Revoked: its codes are no longer needed.
    Revoked,
}

impl CardStanding {
    /// The state's name: `issued`, `active`, `suspended` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            CardStanding::Issued => "issued",
            CardStanding::Active => "active",
            CardStanding::Suspended => "suspended",
            CardStanding::Revoked => "revoked",
        }
    }
}

impl fmt::Display for CardStanding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A held lock of the registry; dropping it releases the lock.
pub trait RegistryGuard {}

impl<T> RegistryGuard for T {}

/// What key ceremonies need of the card registry. Implemented by the `cards` crate; given to
/// [`super::Ceremonies::with_cards`].
pub trait CardRegistry: Send + Sync + fmt::Debug {
    /// The lock that serialises card changes, held by a shred from reading the batch's cards
    /// to its commit so that no card of the batch changes meanwhile.
    fn hold(&self) -> Box<dyn RegistryGuard + '_>;

    /// The state of the card `serial`, `None` if the registry does not know it.
    ///
    /// # Errors
    /// Store errors; a card record that does not decode.
    fn standing(&self, serial: &str) -> Result<Option<CardStanding>>;

    /// The dispatch jobs of card `serial` that a shred would cancel (not gone out yet).
    ///
    /// # Errors
    /// Store errors; a job record that does not decode.
    fn cancellable_jobs(&self, serial: &str) -> Result<Vec<JobRef>>;

    /// Adds to `b` the revocation of card `serial` with reason `codes_destroyed`, made by
    /// `actor` at `now_ms`, and returns its `card.revoke` event; `None` (nothing added) for
    /// a card the registry does not know or that is revoked already. The caller holds
    /// [`CardRegistry::hold`].
    ///
    /// # Errors
    /// Store errors; a card record that does not decode or encode.
    fn revoke_codes_destroyed_into(
        &self,
        serial: &str,
        now_ms: u64,
        actor: &Actor,
        b: &mut Batch,
    ) -> Result<Option<NewEvent>>;

    /// Adds to `b` the cancellation of every cancellable dispatch job of card `serial`
    /// (because `why`) and returns one event a job. The caller holds [`CardRegistry::hold`].
    ///
    /// # Errors
    /// Store errors; a job record that does not decode or encode.
    fn cancel_jobs_into(
        &self,
        serial: &str,
        why: &str,
        now_ms: u64,
        b: &mut Batch,
    ) -> Result<Vec<NewEvent>>;
}
