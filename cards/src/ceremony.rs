//! The registry as key ceremonies see it: [`Cards`] implements the vault's
//! [`vault::CardRegistry`], so that a forced shred revokes the cards that lose their
//! codes (reason `codes_destroyed`) and cancels their unsent jobs in the destroying write, and a
//! proposal's impact counts the batch's cards by state.

use crate::card::{CardState, Reason};
use crate::registry::{encode, Cards};
use vault::Actor;
use vault::NewEvent;
use vault::Result;
use vault::{Batch, Tree};
use vault::{CardRegistry, CardStanding, JobRef, RegistryGuard};

fn standing(s: CardState) -> CardStanding {
    match s {
        CardState::Issued => CardStanding::Issued,
        CardState::Active => CardStanding::Active,
        CardState::Suspended => CardStanding::Suspended,
        CardState::Revoked => CardStanding::Revoked,
    }
}

impl CardRegistry for Cards {
    fn hold(&self) -> Box<dyn RegistryGuard + '_> {
        Box::new(self.ops_lock())
    }

    fn standing(&self, serial: &str) -> Result<Option<CardStanding>> {
        Ok(self.card(serial)?.map(|c| standing(c.state)))
    }

    fn cancellable_jobs(&self, serial: &str) -> Result<Vec<JobRef>> {
        Ok(self
            .jobs_of(serial)?
            .into_iter()
            .filter(|j| j.cancellable())
            .map(|j| JobRef {
                job: j.id,
                serial: j.serial.clone(),
                part: j.part.as_str().to_owned(),
                channel: j.channel.as_str().to_owned(),
                state: j.state.as_str().to_owned(),
            })
            .collect())
    }

    fn revoke_codes_destroyed_into(
        &self,
        serial: &str,
        now_ms: u64,
        actor: &Actor,
        b: &mut Batch,
    ) -> Result<Option<NewEvent>> {
        let Some(card) = self.card(serial)? else {
            return Ok(None);
        };
        if card.state == CardState::Revoked {
            return Ok(None);
        }
        let (card, event) = self.revoked(card, Reason::CodesDestroyed, now_ms, actor);
        b.put(Tree::Cards, card.serial.as_bytes().to_vec(), encode(&card)?);
        Ok(Some(event))
    }

    fn cancel_jobs_into(
        &self,
        serial: &str,
        why: &str,
        now_ms: u64,
        b: &mut Batch,
    ) -> Result<Vec<NewEvent>> {
        Ok(Cards::cancel_jobs_into(self, serial, why, now_ms, b)?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }
}
