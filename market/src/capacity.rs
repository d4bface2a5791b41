//! Provider capacity accounting: reserve/release per auction or contract; never over-commit.
//!
//! Every reservation is checked against `capacity - sum(reservations)` with checked arithmetic,
//! so the sum of live reservations always fits in the capacity, exclusive interfaces included.
//! Tentative holds (for open bids) carry an expiry and are pruned by `prune`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::Timestamp;
use crate::ids::{AuctionId, AwardId};
use crate::resources::{ResourceError, Resources};

/// What a reservation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReservationKey {
    /// Held for a bid or award in this auction.
    Auction(AuctionId),
    /// Held for an award of a taken standing offer.
    Award(AwardId),
    /// Held for a signed contract (id owned by the contracts crate).
    Contract([u8; 32]),
}

/// Why a reservation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// The request does not fit in what is left.
    #[error(
        "not enough free capacity for {key:?}; release other reservations or raise the advertised capacity"
    )]
    Insufficient {
        /// The reservation that failed.
        key: ReservationKey,
    },
    /// The key already holds a reservation.
    #[error("{key:?} already holds a reservation; release it first")]
    AlreadyReserved {
        /// The duplicate key.
        key: ReservationKey,
    },
    /// Arithmetic on resources failed.
    #[error("resource arithmetic failed: {0}")]
    Arithmetic(#[from] ResourceError),
}

/// One live reservation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    /// What is held.
    pub resources: Resources,
    /// `Some(t)`: a tentative hold dropped at `t`; `None`: firm until released.
    pub expires_at: Option<Timestamp>,
}

/// A provider's capacity and the reservations against it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacityLedger {
    capacity: Resources,
    reservations: BTreeMap<ReservationKey, Reservation>,
    free: Resources,
}

impl CapacityLedger {
    /// A ledger for `capacity` with nothing reserved.
    pub fn new(capacity: Resources) -> Self {
        CapacityLedger {
            free: capacity.clone(),
            capacity,
            reservations: BTreeMap::new(),
        }
    }

    /// The advertised capacity.
    pub fn capacity(&self) -> &Resources {
        &self.capacity
    }

    /// What is still free (capacity qualities kept).
    pub fn available(&self) -> &Resources {
        &self.free
    }

    /// All live reservations.
    pub fn reservations(&self) -> &BTreeMap<ReservationKey, Reservation> {
        &self.reservations
    }

    /// True when `need` would fit now.
    pub fn can_reserve(&self, need: &Resources) -> bool {
        need.fits_in(&self.free)
    }

    /// Reserves `need` under `key`; a tentative hold if `expires_at` is set.
    pub fn reserve(
        &mut self,
        key: ReservationKey,
        need: Resources,
        expires_at: Option<Timestamp>,
    ) -> Result<(), CapacityError> {
        if self.reservations.contains_key(&key) {
            return Err(CapacityError::AlreadyReserved { key });
        }
        if !need.fits_in(&self.free) {
            return Err(CapacityError::Insufficient { key });
        }
        let free = self.free.checked_sub(&need)?;
        self.free = free;
        self.reservations.insert(
            key,
            Reservation {
                resources: need,
                expires_at,
            },
        );
        Ok(())
    }

    /// Reserves under `key` as much of `need` as is free, dimension by dimension (all of it
    /// when it fits), and returns what was reserved. For the running contracts of a restarted
    /// provider (THREATS C35): they are held even when they add up to more than the capacity
    /// advertised now (lowered across the restart), which then leaves nothing free instead of
    /// leaving the overflow unheld.
    pub fn reserve_within(
        &mut self,
        key: ReservationKey,
        need: &Resources,
        expires_at: Option<Timestamp>,
    ) -> Result<Resources, CapacityError> {
        let held = at_most(need, &self.free);
        self.reserve(key, held.clone(), expires_at)?;
        Ok(held)
    }

    /// Turns a tentative hold into a firm reservation; false if `key` holds nothing.
    pub fn confirm(&mut self, key: &ReservationKey) -> bool {
        match self.reservations.get_mut(key) {
            Some(r) => {
                r.expires_at = None;
                true
            }
            None => false,
        }
    }

    /// Makes `key`'s reservation end at `until`; false when `key` holds none.
    pub fn hold_until(&mut self, key: &ReservationKey, until: Timestamp) -> bool {
        match self.reservations.get_mut(key) {
            Some(r) => {
                r.expires_at = Some(until);
                true
            }
            None => false,
        }
    }

    /// Releases `key`, returning what it held.
    pub fn release(&mut self, key: &ReservationKey) -> Option<Resources> {
        let r = self.reservations.remove(key)?;
        // Cannot overflow: free + held <= capacity by construction; fall back to a recount.
        match self.free.checked_add(&r.resources) {
            Ok(free) => self.free = free,
            Err(_) => self.recount(),
        }
        Some(r.resources)
    }

    /// Drops tentative holds that expired at or before `now`; returns their keys.
    pub fn prune(&mut self, now: Timestamp) -> Vec<ReservationKey> {
        let expired: Vec<ReservationKey> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires_at.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in &expired {
            self.release(k);
        }
        expired
    }

    /// Total held by all reservations.
    pub fn reserved_total(&self) -> Result<Resources, ResourceError> {
        self.reservations
            .values()
            .try_fold(Resources::default(), |acc, r| acc.checked_add(&r.resources))
    }

    fn recount(&mut self) {
        let mut free = self.capacity.clone();
        for r in self.reservations.values() {
            if let Ok(f) = free.checked_sub(&r.resources) {
                free = f;
            }
        }
        self.free = free;
    }
}

/// `need` cut down to what `free` has in each additive dimension. Without qualities: a hold
/// is amounts, and a quality `free` lacks would make it not fit at all.
fn at_most(need: &Resources, free: &Resources) -> Resources {
    Resources {
        cpu_millis: need.cpu_millis.min(free.cpu_millis),
        memory_bytes: need.memory_bytes.min(free.memory_bytes),
        storage_bytes: need.storage_bytes.min(free.storage_bytes),
        bandwidth_bps: need.bandwidth_bps.min(free.bandwidth_bps),
        interfaces: need
            .interfaces
            .iter()
            .map(|(i, n)| (*i, (*n).min(free.interface_count(*i))))
            .filter(|(_, n)| *n > 0)
            .collect(),
        uptime: None,
        battery: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::resources::Interface;

    fn key(n: u8) -> ReservationKey {
        ReservationKey::Auction(AuctionId([n; 32]))
    }

    #[test]
    fn exclusive_interface_is_held_by_one_customer_at_a_time() {
        let cap = Resources {
            cpu_millis: 1000,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1);
        let mut ledger = CapacityLedger::new(cap);
        let need = Resources::default().with_interface(Interface::LoRa, 1);
        ledger.reserve(key(1), need.clone(), None).unwrap();
        let err = ledger.reserve(key(2), need.clone(), None).unwrap_err();
        assert_eq!(err, CapacityError::Insufficient { key: key(2) });
        assert!(ledger.release(&key(1)).is_some());
        ledger.reserve(key(2), need, None).unwrap();
    }

    #[test]
    fn tentative_holds_expire_and_firm_ones_stay() {
        let cap = Resources {
            cpu_millis: 1000,
            ..Resources::default()
        };
        let mut ledger = CapacityLedger::new(cap.clone());
        let half = Resources {
            cpu_millis: 500,
            ..Resources::default()
        };
        ledger.reserve(key(1), half.clone(), Some(10)).unwrap();
        ledger.reserve(key(2), half.clone(), Some(10)).unwrap();
        assert!(ledger.confirm(&key(2)));
        assert!(matches!(
            ledger.reserve(key(1), half.clone(), None),
            Err(CapacityError::AlreadyReserved { .. })
        ));
        assert_eq!(ledger.prune(10), vec![key(1)]);
        assert_eq!(ledger.available().cpu_millis, 500);
        assert_eq!(ledger.reserved_total().unwrap().cpu_millis, 500);
    }

    #[test]
    fn a_hold_within_takes_what_is_free_and_no_more() {
        let cap = Resources {
            cpu_millis: 1000,
            memory_bytes: 100,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1);
        let mut ledger = CapacityLedger::new(cap);
        let need = Resources {
            cpu_millis: 600,
            memory_bytes: 10,
            ..Resources::default()
        };
        assert_eq!(ledger.reserve_within(key(1), &need, None).unwrap(), need);
        // More than is left (and an interface the capacity lacks): what is free is held.
        let more = need
            .clone()
            .with_interface(Interface::LoRa, 2)
            .with_interface(Interface::Ble, 1);
        let held = ledger.reserve_within(key(2), &more, Some(5)).unwrap();
        assert_eq!(held.cpu_millis, 400);
        assert_eq!(held.memory_bytes, 10);
        assert_eq!(held.interface_count(Interface::LoRa), 1);
        assert_eq!(held.interface_count(Interface::Ble), 0);
        assert_eq!(ledger.available().cpu_millis, 0);
        assert!(matches!(
            ledger.reserve_within(key(2), &need, None),
            Err(CapacityError::AlreadyReserved { .. })
        ));
        assert_eq!(ledger.release(&key(2)), Some(held));
        assert_eq!(ledger.available().cpu_millis, 400);
    }
}
