//! Who owns each device, as far as this edge may act for it: the node itself for its own
//! service's devices, or the customer of a live contract this edge provides that names them.
//!
//! A device id is only a number in a customer's manifest; nothing on the ledger ties it to
//! one customer. Before session 50 the last contract staged here naming a device made its
//! customer the owner, for good: any customer could name another's device in a cheap contract
//! with the same provider and then hand that provider firmware jobs or key updates for it,
//! sealed with the real owner's key (found by a read-only audit in session 50). Now the first
//! live claim holds: a contract naming a device that another party's live contract here
//! already names is refused ([`Owners::claim`]), this node's own devices are never a
//! customer's, and a claim ends with the last contract behind it ([`Owners::release`]), when
//! the received frame keys of its devices are forgotten too.
//!
//! The claims outlive a restart ([`Owners::saved`], [`Owners::restore`],
//! `crate::owners_file`): kept in memory only, the first contract to finish staging after a
//! restart claimed the devices, so a customer's cheap contract naming another's device could
//! win it there and the other's contract was refused (THREATS R8). And one customer holds at
//! most its share of the table (`radio.max_devices_per_customer`, one manifest's worth by
//! default), so its contracts cannot fill the table against the others (THREATS R9).

use std::collections::{BTreeMap, BTreeSet};

use agora_contracts::ContractId;
use agora_market::NodeId;
use agora_wire::radio::MAX_KEYS_PER_MESSAGE;
use serde::{Deserialize, Serialize};

/// Most saved claims taken back at start: far more contracts than a provider hosts at once.
pub(crate) const MAX_SAVED_CLAIMS: usize = 4096;

/// One device's owner here and the contracts behind the claim (none for this node's own).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Claim {
    owner: NodeId,
    contracts: BTreeSet<ContractId>,
    /// This node's own device: never released (until this node's service stops naming it),
    /// never counted against the caps.
    own: bool,
}

/// How many customers' devices the table records: in all, and of one customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Customers' devices in all (`radio.max_devices`); past it new devices are not recorded.
    pub(crate) total: usize,
    /// One customer's devices (`radio.max_devices_per_customer`); a claim past it is refused.
    pub(crate) per_customer: usize,
}

/// Device owners (see the module docs), bounded by [`Caps`].
#[derive(Debug, Default)]
pub(crate) struct Owners {
    claims: BTreeMap<u32, Claim>,
    /// A customer's claim changed since [`Owners::take_dirty`]: the file is written again.
    dirty: bool,
}

/// A contract's claim refused; the contract is not served here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimRefused {
    /// `device` belongs to `holder` here (threat R8).
    #[error(
        "device {device} is another party's here ({holder}): a live contract of it names the device"
    )]
    Taken {
        /// The device.
        device: u32,
        /// Its owner here.
        holder: NodeId,
    },
    /// The claim would give `customer` more devices here than its share (threat R9).
    #[error(
        "customer {customer} would own {would_hold} devices here, more than its share of {max}; \
         end one of its contracts here first (the provider's operator may raise \
         radio.max_devices_per_customer)"
    )]
    OverShare {
        /// The customer.
        customer: NodeId,
        /// Its devices here had the claim been made.
        would_hold: usize,
        /// Its share.
        max: usize,
    },
}

/// One contract's claim as saved across a restart: the devices it names that are its
/// customer's here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SavedClaim {
    pub(crate) contract: ContractId,
    pub(crate) customer: NodeId,
    pub(crate) devices: Vec<u32>,
}

impl Owners {
    /// The owner of `device`, if any.
    pub(crate) fn get(&self, device: u32) -> Option<NodeId> {
        self.claims.get(&device).map(|c| c.owner)
    }

    /// Devices with an owner.
    pub(crate) fn len(&self) -> usize {
        self.claims.len()
    }

    /// This node's own devices (`me`): owned for good, whatever a contract said before, and
    /// whatever the customers' claims fill (the caps bound what strangers add, and the
    /// node's own devices are its config's).
    pub(crate) fn own(&mut self, devices: &[u32], me: NodeId) {
        // The set is replaced: devices this node's service no longer names are free again.
        self.claims.retain(|d, c| !c.own || devices.contains(d));
        for &d in devices {
            let before = self.claims.insert(
                d,
                Claim {
                    owner: me,
                    contracts: BTreeSet::new(),
                    own: true,
                },
            );
            // A customer's claim overridden: the saved table must lose it too.
            self.dirty |= before.is_some_and(|c| !c.own);
        }
    }

    /// `customer`'s `contract`, provided here, names `devices`: all of them become its, or
    /// none if one is another party's (this node's, or another customer's with a live
    /// contract here) or the customer would hold more than `caps.per_customer` of them here.
    /// Devices past `caps.total` customers' devices in all are not recorded (counted).
    pub(crate) fn claim(
        &mut self,
        contract: ContractId,
        customer: NodeId,
        devices: &[u32],
        caps: Caps,
    ) -> Result<usize, ClaimRefused> {
        for &device in devices {
            if let Some(c) = self.claims.get(&device)
                && c.owner != customer
            {
                return Err(ClaimRefused::Taken {
                    device,
                    holder: c.owner,
                });
            }
        }
        // Its share: the devices it holds here and those this claim adds. A claim adding none
        // is taken even past the share (a lowered cap, or its contracts sharing devices).
        let fresh: BTreeSet<u32> = devices
            .iter()
            .copied()
            .filter(|d| !self.claims.contains_key(d))
            .collect();
        let held = self
            .claims
            .values()
            .filter(|c| !c.own && c.owner == customer)
            .count();
        let would_hold = held.saturating_add(fresh.len());
        if !fresh.is_empty() && would_hold > caps.per_customer {
            return Err(ClaimRefused::OverShare {
                customer,
                would_hold,
                max: caps.per_customer,
            });
        }
        let mut dropped = 0;
        // Customers' claims (this node's own take no room), counted once, not per device.
        let mut customers = self.claims.values().filter(|c| !c.own).count();
        for &device in devices {
            match self.claims.get_mut(&device) {
                Some(c) if c.own => {} // a contract of this node's own: the claim stays its
                Some(c) => {
                    self.dirty |= c.contracts.insert(contract);
                }
                None if customers >= caps.total => dropped += 1,
                None => {
                    customers += 1;
                    self.dirty = true;
                    self.claims.insert(
                        device,
                        Claim {
                            owner: customer,
                            contracts: BTreeSet::from([contract]),
                            own: false,
                        },
                    );
                }
            }
        }
        Ok(dropped)
    }

    /// `contract` ended here: the devices it alone claimed have no owner any more (returned,
    /// so their received keys can be forgotten). This node's own devices stay.
    pub(crate) fn release(&mut self, contract: &ContractId) -> Vec<u32> {
        let mut freed = Vec::new();
        let mut changed = false;
        self.claims.retain(|device, c| {
            if c.own || !c.contracts.remove(contract) {
                return true;
            }
            changed = true;
            if !c.contracts.is_empty() {
                return true;
            }
            freed.push(*device);
            false
        });
        self.dirty |= changed;
        freed
    }

    /// The contracts behind customers' claims (the orchestrator releases those the ledger
    /// shows ended: a restarted node may hold claims of contracts that ended while it was
    /// down).
    pub(crate) fn contracts(&self) -> BTreeSet<ContractId> {
        self.claims
            .values()
            .flat_map(|c| c.contracts.iter().copied())
            .collect()
    }

    /// Customers' claims, one entry per contract, as [`Owners::restore`] takes them back.
    /// This node's own devices are not saved: they come from its config at every start.
    pub(crate) fn saved(&self) -> Vec<SavedClaim> {
        let mut by_contract: BTreeMap<ContractId, SavedClaim> = BTreeMap::new();
        for (&device, c) in self.claims.iter().filter(|(_, c)| !c.own) {
            for &contract in &c.contracts {
                by_contract
                    .entry(contract)
                    .or_insert_with(|| SavedClaim {
                        contract,
                        customer: c.owner,
                        devices: Vec::new(),
                    })
                    .devices
                    .push(device);
            }
        }
        by_contract.into_values().collect()
    }

    /// Claims saved before a restart, checked as if they came from outside: each is made
    /// again through [`Owners::claim`] (another party's device, a share or table overrun
    /// refuse or trim it as they would a new claim; at most [`MAX_KEYS_PER_MESSAGE`] devices
    /// each, at most [`MAX_SAVED_CLAIMS`] claims). Returns how many were refused or left out.
    pub(crate) fn restore(&mut self, saved: Vec<SavedClaim>, caps: Caps) -> usize {
        let left_out = saved.len().saturating_sub(MAX_SAVED_CLAIMS);
        let mut refused = 0;
        for s in saved.into_iter().take(MAX_SAVED_CLAIMS) {
            let devices: Vec<u32> = s.devices.into_iter().take(MAX_KEYS_PER_MESSAGE).collect();
            if self.claim(s.contract, s.customer, &devices, caps).is_err() {
                refused += 1;
            }
        }
        // What was refused on the way is written back at the next change.
        self.dirty = refused > 0 || left_out > 0;
        refused + left_out
    }

    /// Whether a customer's claim changed since the last call (the file is written then).
    pub(crate) fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn contract(b: u8) -> ContractId {
        ContractId([b; 32])
    }

    /// Room enough: only the rule under test refuses.
    const WIDE: Caps = Caps {
        total: 100,
        per_customer: 100,
    };

    #[test]
    fn the_first_live_claim_holds_until_its_last_contract_ends() {
        let mut o = Owners::default();
        let (a, x) = (node(1), node(2));
        assert_eq!(o.claim(contract(1), a, &[101, 102], WIDE), Ok(0));
        // Another customer naming one of them is refused, and takes nothing.
        assert_eq!(
            o.claim(contract(2), x, &[103, 101], WIDE),
            Err(ClaimRefused::Taken {
                device: 101,
                holder: a
            })
        );
        assert_eq!(o.get(103), None);
        assert_eq!(o.get(101), Some(a));
        // The same customer's second contract shares the claim.
        assert_eq!(o.claim(contract(3), a, &[101], WIDE), Ok(0));
        assert_eq!(o.release(&contract(1)), vec![102]);
        assert_eq!(o.get(101), Some(a), "contract 3 still names it");
        assert_eq!(o.release(&contract(3)), vec![101]);
        assert_eq!(o.len(), 0);
        // Free again: the other customer may claim it now.
        assert_eq!(o.claim(contract(2), x, &[101], WIDE), Ok(0));
        assert_eq!(o.get(101), Some(x));
    }

    #[test]
    fn own_devices_are_never_a_customers_and_outlive_releases() {
        let mut o = Owners::default();
        let (me, a) = (node(9), node(1));
        assert_eq!(o.claim(contract(1), a, &[7], WIDE), Ok(0));
        assert!(o.take_dirty());
        o.own(&[7, 8], me);
        assert_eq!(
            o.get(7),
            Some(me),
            "this node's word about its own devices wins"
        );
        assert!(
            o.take_dirty(),
            "the customer's claim it overrode leaves the file"
        );
        assert!(o.saved().is_empty());
        assert!(o.claim(contract(2), a, &[8], WIDE).is_err());
        assert!(o.release(&contract(1)).is_empty());
        assert_eq!(o.get(7), Some(me));
        // A contract this node is the customer of names its own device: released, the
        // device stays its own.
        assert_eq!(o.claim(contract(3), me, &[7], WIDE), Ok(0));
        assert!(o.release(&contract(3)).is_empty());
        assert_eq!(o.get(7), Some(me));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut o = Owners::default();
        let caps = Caps {
            total: 4,
            per_customer: 100,
        };
        let devices: Vec<u32> = (0..10).collect();
        assert_eq!(o.claim(contract(1), node(1), &devices, caps), Ok(6));
        assert_eq!(o.len(), 4);
        // This node's own devices are recorded whatever the customers filled.
        o.own(&[50, 51], node(9));
        assert_eq!(o.get(50), Some(node(9)));
        assert_eq!(o.release(&contract(1)).len(), 4);
        assert_eq!(o.len(), 2);
        // Nor do they take the customers' room.
        assert_eq!(o.claim(contract(2), node(1), &devices, caps), Ok(6));
        assert_eq!(o.len(), 6);
        // A new own set replaces the old one: 51 is free again.
        o.own(&[50], node(9));
        assert_eq!(o.get(51), None);
        assert_eq!(o.get(50), Some(node(9)));
    }

    /// THREATS R9: one customer's live contracts cannot fill the table; past its share its
    /// next contract is refused whole, and the others keep their room.
    #[test]
    fn one_customer_holds_at_most_its_share() {
        let mut o = Owners::default();
        let caps = Caps {
            total: 10,
            per_customer: 4,
        };
        let (me, a, x) = (node(9), node(1), node(2));
        o.own(&[50, 51, 52, 53, 54], me);
        assert_eq!(o.claim(contract(1), x, &[1, 2, 3], caps), Ok(0));
        // Past the share: refused, and takes nothing.
        assert_eq!(
            o.claim(contract(2), x, &[3, 4, 5], caps),
            Err(ClaimRefused::OverShare {
                customer: x,
                would_hold: 5,
                max: 4
            })
        );
        assert_eq!((o.get(4), o.get(5)), (None, None));
        // Up to the share, devices it holds counted once.
        assert_eq!(o.claim(contract(3), x, &[1, 2, 3, 4], caps), Ok(0));
        // At its share, or past a share lowered since, a contract naming only devices it
        // holds is still served: it adds none.
        assert_eq!(o.claim(contract(4), x, &[4, 1], caps), Ok(0));
        let lowered = Caps {
            per_customer: 2,
            ..caps
        };
        assert_eq!(o.claim(contract(6), x, &[2], lowered), Ok(0));
        assert_eq!(o.release(&contract(6)), Vec::<u32>::new());
        // Another customer's room is its own (the node's own devices take none of it).
        assert_eq!(o.claim(contract(5), a, &[6, 7, 8, 9], caps), Ok(0));
        assert_eq!(o.get(9), Some(a));
        // Its share comes back as its contracts end.
        assert_eq!(o.release(&contract(1)), Vec::<u32>::new());
        assert_eq!(o.release(&contract(3)), vec![2, 3]);
        assert_eq!(o.claim(contract(2), x, &[3, 4, 5], caps), Ok(0));
    }

    /// THREATS R8: the claims come back after a restart, before any contract is staged
    /// again, so the first live claim still holds there; each contract still ends its own.
    #[test]
    fn claims_survive_a_restart_and_the_first_still_holds() {
        let (me, a, x) = (node(9), node(1), node(2));
        let mut before = Owners::default();
        assert!(!before.take_dirty());
        assert_eq!(before.claim(contract(1), a, &[101, 102], WIDE), Ok(0));
        assert_eq!(before.claim(contract(2), a, &[101], WIDE), Ok(0));
        before.own(&[7], me);
        assert_eq!(before.claim(contract(3), me, &[7], WIDE), Ok(0));
        assert!(before.take_dirty(), "the claims are to be saved");
        assert_eq!(
            before.contracts(),
            BTreeSet::from([contract(1), contract(2)])
        );
        let saved = before.saved();
        assert_eq!(
            saved.len(),
            2,
            "this node's own devices are not saved: {saved:?}"
        );
        // The restart: the table comes back from the file, then the node's own devices.
        let mut after = Owners::default();
        assert_eq!(after.restore(saved, WIDE), 0);
        assert!(!after.take_dirty(), "nothing to write back");
        after.own(&[7], me);
        // X's contract, staged first after the restart, is refused as it was before.
        assert_eq!(
            after.claim(contract(4), x, &[101], WIDE),
            Err(ClaimRefused::Taken {
                device: 101,
                holder: a
            })
        );
        // A's contracts, staged again, share their claim; each still ends its part.
        assert_eq!(after.claim(contract(1), a, &[101, 102], WIDE), Ok(0));
        assert!(!after.take_dirty(), "staged again: nothing changed");
        assert_eq!(after.release(&contract(1)), vec![102]);
        assert!(after.take_dirty(), "a release is saved too");
        assert_eq!(after.release(&contract(2)), vec![101]);
        assert_eq!(after.get(7), Some(me));
    }

    /// A saved table is taken back as new claims would be: the file is this node's, but a
    /// claim it holds must not outrank the rules (another party's device, the caps).
    #[test]
    fn a_saved_table_is_checked_like_new_claims() {
        let saved = |contract_b: u8, customer: u8, devices: Vec<u32>| SavedClaim {
            contract: contract(contract_b),
            customer: node(customer),
            devices,
        };
        let mut o = Owners::default();
        let caps = Caps {
            total: 100,
            per_customer: 3,
        };
        let refused = o.restore(
            vec![
                saved(1, 1, vec![1, 2]),
                saved(2, 2, vec![2, 3]), // another customer's device 2
                saved(3, 1, vec![4, 5]), // past customer 1's share of 3
                saved(4, 1, vec![2]),    // shares a claim: taken
            ],
            caps,
        );
        assert_eq!(refused, 2);
        assert_eq!((o.get(1), o.get(2)), (Some(node(1)), Some(node(1))));
        assert_eq!((o.get(3), o.get(4)), (None, None));
        assert_eq!(o.release(&contract(1)), vec![1]);
        assert!(o.take_dirty(), "the refused claims leave the file");
        let many: Vec<SavedClaim> = (0..=MAX_SAVED_CLAIMS as u32)
            .map(|i| SavedClaim {
                contract: ContractId([0; 32]),
                customer: node(1),
                devices: vec![i % 4],
            })
            .collect();
        assert_eq!(Owners::default().restore(many, WIDE), 1, "one left out");
    }
}
