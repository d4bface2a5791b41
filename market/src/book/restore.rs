//! The capacity of a restarted provider's running contracts (THREATS C35). The book starts with
//! no reservation, so until the node's ledger says which contracts it still provides, all of
//! its capacity looks free. A book made with [`MarketState::awaiting_contracts`] therefore takes
//! no work (auto-bids deferred and counted, manual bids and taken offers refused) until
//! [`Input::RestoreCapacity`](super::Input::RestoreCapacity) holds what each of them uses; it
//! then bids on the open auctions it passed over meanwhile, so a restart costs no placement
//! whose window is still open.

use serde::{Deserialize, Serialize};

use super::{AuctionStatus, Effect, MarketState};
use crate::capacity::ReservationKey;
use crate::error::MarketError;
use crate::identity::{Signer, Timestamp};
use crate::ids::AuctionId;
use crate::resources::Resources;

/// Most contract holds one restore takes (the rest are dropped): a provider runs only what it
/// countersigned, far fewer than this.
pub const MAX_RESTORED_HOLDS: usize = 4_096;

/// A contract this node still provides, whose capacity it holds from a restart on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContractHold {
    /// The contract's id (`agora_contracts::ContractId`).
    pub contract: [u8; 32],
    /// What it uses of this node.
    pub resources: Resources,
    /// When the hold ends: the contract's end and a margin.
    pub until: Timestamp,
}

impl<S: Signer + Clone> MarketState<S> {
    /// Whether the capacity of the contracts this node still runs is held, so that it may
    /// take work ([`MarketState::awaiting_contracts`]).
    pub fn capacity_restored(&self) -> bool {
        self.restored
    }

    /// Refuses work until the capacity of the running contracts is held.
    pub(super) fn require_restored(&self) -> Result<(), MarketError> {
        if self.restored {
            Ok(())
        } else {
            Err(MarketError::CapacityNotRestored)
        }
    }

    /// Holds each contract's resources until its `until` (as much as is free: contracts that
    /// add up to more than the capacity leave nothing free), then takes work again.
    pub(super) fn restore_capacity(
        &mut self,
        now: Timestamp,
        holds: Vec<ContractHold>,
        out: &mut Vec<Effect>,
    ) {
        let mut held = 0usize;
        for h in holds.into_iter().take(MAX_RESTORED_HOLDS) {
            if h.until <= now {
                continue;
            }
            let key = ReservationKey::Contract(h.contract);
            // A hold already there (the same restore twice) stays as it is.
            let Ok(got) = self.ledger.reserve_within(key, &h.resources, Some(h.until)) else {
                continue;
            };
            if !h.resources.fits_in(&got) {
                tracing::warn!(
                    ?key,
                    "running contracts use more than the advertised capacity; none of it is free"
                );
            }
            held += 1;
            out.push(Effect::ScheduleTimeout { at: h.until });
        }
        if !self.restored {
            self.restored = true;
            tracing::info!(
                contracts = held,
                "capacity of the running contracts held; taking work again"
            );
            self.bid_on_deferred(now, out);
        }
    }

    /// Auto-bids on the open auctions that came in while the capacity was not restored, as on
    /// their arrival (the strangers' budgets too, THREATS C31).
    fn bid_on_deferred(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let open: Vec<AuctionId> = self
            .auctions
            .iter()
            .filter(|(_, e)| e.status == AuctionStatus::Open)
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            if let Some(req) = self.auctions.get(&id).map(|e| e.request.clone()) {
                self.auto_bid(now, id, &req, out);
            }
        }
    }
}
