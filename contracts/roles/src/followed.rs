//! The devices a provider keeps following after its own turn is over.
//!
//! An edge that once provided for a customer's sensors keeps hearing them and keeps checking the
//! checkpoints that account for their readings. Those checkpoints count only from a manager of
//! the devices (threat R1), and this edge learnt the managers from its own contracts. Without
//! more, every later provider of the same customer was "not a manager" here, and this edge's
//! account of who processed which reading had holes (the demo, observing from an earlier
//! provider, reported readings missing that had been processed).
//!
//! So a provider remembers, per customer, the devices it staged a contract for
//! ([`FollowedDevices::follow`]) and, when any later contract of that customer changes status on
//! the ledger, names that contract's provider a manager of them ([`FollowedDevices::manager_of`]).
//! Both tables are bounded: a stranger cannot make an edge follow without limit (a contract is
//! staged only after this node agreed to it, and the oldest customer is forgotten first).

use std::collections::BTreeMap;

use agora_market::NodeId;

use agora_contracts::contract::{Contract, ContractKind};

/// Customers whose devices a provider keeps following.
pub const MAX_FOLLOWED_OWNERS: usize = 256;
/// Devices followed per customer (a service manifest names far fewer).
pub const MAX_FOLLOWED_DEVICES: usize = 1024;

/// Per customer, the devices this node staged a contract for (bounded, see the module comment).
#[derive(Debug, Clone, Default)]
pub struct FollowedDevices {
    owners: BTreeMap<NodeId, Vec<u32>>,
}

impl FollowedDevices {
    /// Remembers `customer`'s `devices` (added to what is known of it). A new customer past
    /// [`MAX_FOLLOWED_OWNERS`] evicts the lowest id; past [`MAX_FOLLOWED_DEVICES`] a customer's
    /// oldest devices are forgotten first.
    pub fn follow(&mut self, customer: NodeId, devices: &[u32]) {
        if !self.owners.contains_key(&customer) && self.owners.len() >= MAX_FOLLOWED_OWNERS {
            self.owners.pop_first();
        }
        let known = self.owners.entry(customer).or_default();
        for d in devices {
            if !known.contains(d) {
                known.push(*d);
            }
        }
        let excess = known.len().saturating_sub(MAX_FOLLOWED_DEVICES);
        known.drain(..excess);
    }

    /// The followed devices `contract`'s provider now manages, seen from node `me`: the
    /// customer's devices this node follows, when `contract` is a hosted or standby contract of
    /// that customer with another provider. `None` for storage contracts (no devices), for
    /// `me`'s own contracts as provider (its radio knows them already) and for customers this
    /// node does not follow.
    pub fn manager_of(&self, me: NodeId, contract: &Contract) -> Option<(Vec<u32>, NodeId)> {
        if contract.kind == ContractKind::Storage || contract.provider == me {
            return None;
        }
        let devices = self.owners.get(&contract.customer)?;
        if devices.is_empty() {
            return None;
        }
        Some((devices.clone(), contract.provider))
    }

    /// How many customers are followed.
    pub fn owners(&self) -> usize {
        self.owners.len()
    }

    /// The devices followed for `customer`.
    pub fn devices_of(&self, customer: &NodeId) -> &[u32] {
        self.owners.get(customer).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_contracts::test_utils::{ContractBuilder, node};

    const ME: u64 = 2;

    fn hosted(customer: u64, provider: u64) -> Contract {
        ContractBuilder::new(customer, provider).build()
    }

    #[test]
    fn a_later_provider_of_a_followed_customer_manages_its_devices_here() {
        let mut f = FollowedDevices::default();
        // This node (seed 2) staged a standby contract of customer 1 for devices 101..=103.
        f.follow(node(1), &[101, 102, 103]);
        // The customer's next contract went to node 3: its checkpoints count here.
        let later = ContractBuilder::new(1, 3).standby(1_000).build();
        assert_eq!(
            f.manager_of(node(ME), &later),
            Some((vec![101, 102, 103], node(3)))
        );
        let hosted_later = hosted(1, 4);
        assert_eq!(
            f.manager_of(node(ME), &hosted_later).map(|(_, p)| p),
            Some(node(4))
        );
    }

    #[test]
    fn own_storage_and_unfollowed_contracts_name_no_one() {
        let mut f = FollowedDevices::default();
        f.follow(node(1), &[101]);
        // Our own contract: the radio knows it already.
        assert_eq!(f.manager_of(node(ME), &hosted(1, ME)), None);
        // A storage contract names no devices.
        let storage = ContractBuilder::new(1, 3).storage().build();
        assert_eq!(f.manager_of(node(ME), &storage), None);
        // Another customer's contract: its devices are not followed here.
        assert_eq!(f.manager_of(node(ME), &hosted(5, 3)), None);
    }

    #[test]
    fn following_again_adds_devices_once() {
        let mut f = FollowedDevices::default();
        f.follow(node(1), &[101, 102]);
        f.follow(node(1), &[102, 103]);
        assert_eq!(f.devices_of(&node(1)), &[101, 102, 103]);
        assert_eq!(f.owners(), 1);
    }

    #[test]
    fn both_tables_stay_bounded() {
        let mut f = FollowedDevices::default();
        for seed in 0..(MAX_FOLLOWED_OWNERS as u64 + 50) {
            f.follow(node(1_000 + seed), &[1]);
        }
        assert_eq!(f.owners(), MAX_FOLLOWED_OWNERS);
        let many: Vec<u32> = (0..(MAX_FOLLOWED_DEVICES as u32 + 10)).collect();
        f.follow(node(1), &many);
        let kept = f.devices_of(&node(1));
        assert_eq!(kept.len(), MAX_FOLLOWED_DEVICES);
        // The oldest are forgotten first.
        assert_eq!(kept.first(), Some(&10));
        assert_eq!(f.owners(), MAX_FOLLOWED_OWNERS);
    }
}
