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

use std::collections::{BTreeMap, BTreeSet};

use agora_contracts::ContractId;
use agora_market::NodeId;

/// One device's owner here and the contracts behind the claim (none for this node's own).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Claim {
    owner: NodeId,
    contracts: BTreeSet<ContractId>,
    /// This node's own device: never released (until this node's service stops naming it),
    /// never counted against the cap.
    own: bool,
}

/// Device owners (see the module docs), bounded: at most `max` devices in all.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    claims: BTreeMap<u32, Claim>,
}

/// A contract's claim refused: `device` belongs to `holder` here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "device {device} is another party's here ({holder}): a live contract of it names the device"
)]
pub struct DeviceTaken {
    /// The device.
    pub device: u32,
    /// Its owner here.
    pub holder: NodeId,
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
    /// whatever the customers' claims fill (the cap `max` bounds what strangers add, and the
    /// node's own devices are its config's).
    pub(crate) fn own(&mut self, devices: &[u32], me: NodeId) {
        // The set is replaced: devices this node's service no longer names are free again.
        self.claims.retain(|d, c| !c.own || devices.contains(d));
        for &d in devices {
            self.claims.insert(
                d,
                Claim {
                    owner: me,
                    contracts: BTreeSet::new(),
                    own: true,
                },
            );
        }
    }

    /// `customer`'s `contract`, provided here, names `devices`: all of them become its, or
    /// none if one is another party's (this node's, or another customer's with a live
    /// contract here). Devices past `max` owners in all are not recorded (counted).
    pub(crate) fn claim(
        &mut self,
        contract: ContractId,
        customer: NodeId,
        devices: &[u32],
        max: usize,
    ) -> Result<usize, DeviceTaken> {
        for &device in devices {
            if let Some(c) = self.claims.get(&device)
                && c.owner != customer
            {
                return Err(DeviceTaken {
                    device,
                    holder: c.owner,
                });
            }
        }
        let mut dropped = 0;
        // Customers' claims (this node's own take no room), counted once, not per device.
        let mut customers = self.claims.values().filter(|c| !c.own).count();
        for &device in devices {
            match self.claims.get_mut(&device) {
                Some(c) if c.own => {} // a contract of this node's own: the claim stays its
                Some(c) => {
                    c.contracts.insert(contract);
                }
                None if customers >= max => dropped += 1,
                None => {
                    customers += 1;
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
        self.claims.retain(|device, c| {
            if c.own || !c.contracts.remove(contract) || !c.contracts.is_empty() {
                return true;
            }
            freed.push(*device);
            false
        });
        freed
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

    #[test]
    fn the_first_live_claim_holds_until_its_last_contract_ends() {
        let mut o = Owners::default();
        let (a, x) = (node(1), node(2));
        assert_eq!(o.claim(contract(1), a, &[101, 102], 100), Ok(0));
        // Another customer naming one of them is refused, and takes nothing.
        assert_eq!(
            o.claim(contract(2), x, &[103, 101], 100),
            Err(DeviceTaken {
                device: 101,
                holder: a
            })
        );
        assert_eq!(o.get(103), None);
        assert_eq!(o.get(101), Some(a));
        // The same customer's second contract shares the claim.
        assert_eq!(o.claim(contract(3), a, &[101], 100), Ok(0));
        assert_eq!(o.release(&contract(1)), vec![102]);
        assert_eq!(o.get(101), Some(a), "contract 3 still names it");
        assert_eq!(o.release(&contract(3)), vec![101]);
        assert_eq!(o.len(), 0);
        // Free again: the other customer may claim it now.
        assert_eq!(o.claim(contract(2), x, &[101], 100), Ok(0));
        assert_eq!(o.get(101), Some(x));
    }

    #[test]
    fn own_devices_are_never_a_customers_and_outlive_releases() {
        let mut o = Owners::default();
        let (me, a) = (node(9), node(1));
        assert_eq!(o.claim(contract(1), a, &[7], 100), Ok(0));
        o.own(&[7, 8], me);
        assert_eq!(
            o.get(7),
            Some(me),
            "this node's word about its own devices wins"
        );
        assert!(o.claim(contract(2), a, &[8], 100).is_err());
        assert!(o.release(&contract(1)).is_empty());
        assert_eq!(o.get(7), Some(me));
        // A contract this node is the customer of names its own device: released, the
        // device stays its own.
        assert_eq!(o.claim(contract(3), me, &[7], 100), Ok(0));
        assert!(o.release(&contract(3)).is_empty());
        assert_eq!(o.get(7), Some(me));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut o = Owners::default();
        let devices: Vec<u32> = (0..10).collect();
        assert_eq!(o.claim(contract(1), node(1), &devices, 4), Ok(6));
        assert_eq!(o.len(), 4);
        // This node's own devices are recorded whatever the customers filled.
        o.own(&[50, 51], node(9));
        assert_eq!(o.get(50), Some(node(9)));
        assert_eq!(o.release(&contract(1)).len(), 4);
        assert_eq!(o.len(), 2);
        // Nor do they take the customers' room.
        assert_eq!(o.claim(contract(2), node(1), &devices, 4), Ok(6));
        assert_eq!(o.len(), 6);
        // A new own set replaces the old one: 51 is free again.
        o.own(&[50], node(9));
        assert_eq!(o.get(51), None);
        assert_eq!(o.get(50), Some(node(9)));
    }
}
