//! Stateful services (issue #15): a guest's key-value state travels to the standby provider of
//! its contract, coupled with the readings it reflects, so the provider restores exactly the
//! state that matches the readings it replays. Pure: the sender (an envelope's signer), who the
//! contract's customer is and which devices it covers (this node's ledger) are passed in.
//!
//! The customer's edge takes a snapshot of its service's key-value store only while the service
//! is quiescent (no reading queued, no guest call running), so the snapshot reflects exactly the
//! readings fed to it so far: its `coverage` (the highest sequence number per device). It sends
//! the snapshot to the provider and gossips the readings checkpoint covering the same readings
//! only after the provider answered (or gave up), so a provider's newest snapshot covers at least
//! as far as the customer's last checkpoint it heard.
//!
//! Rules, each with a unit test below:
//! - A snapshot is bounded: at most [`MAX_STATE_ENTRIES`] entries, [`MAX_STATE_BYTES`] of keys
//!   and values together, keys and values within the runtime's limits, keys strictly ascending
//!   (no key twice), at most [`MAX_STATE_DEVICES`] devices in its coverage, ascending, each one
//!   of the contract's devices ([`StateSnapshot::check`]).
//! - A provider keeps a snapshot only for a contract its own ledger names it the provider of,
//!   only from that contract's customer, and only when it is newer (`seq` higher, no device's
//!   coverage going back) than the one it keeps; everything else is refused and counted
//!   ([`StateStore::receive`]).
//! - One snapshot per contract; at most [`MAX_KEPT_STATES`] contracts ([`StateStore::allow`]
//!   refuses more).
//! - At takeover the readings resume after the later of the snapshot's coverage and the peers'
//!   checkpoints, per device ([`resume_after`]); a device whose checkpoints run past the
//!   snapshot is reported (its state misses those readings: the snapshot did not reach here).

pub mod lineage;

use std::collections::BTreeMap;

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::ContractId;

/// Most key and value bytes one snapshot may carry (1 MiB).
pub const MAX_STATE_BYTES: usize = 1 << 20;
/// Most entries one snapshot may carry (the node's per-service key bound).
pub const MAX_STATE_ENTRIES: usize = 1024;
/// Longest key (the runtime's `MAX_KV_KEY_BYTES`).
pub const MAX_STATE_KEY_BYTES: usize = 256;
/// Longest value (the runtime's `MAX_KV_VALUE_BYTES`).
pub const MAX_STATE_VALUE_BYTES: usize = 16 << 10;
/// Most devices in a snapshot's coverage.
pub const MAX_STATE_DEVICES: usize = 1024;
/// Contracts a provider keeps a snapshot for.
pub const MAX_KEPT_STATES: usize = 64;

/// One key-value pair of a guest's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    /// Key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// A guest's key-value state and the readings it reflects. Travels inside an envelope signed
/// by the contract's customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// The standby contract the state is for.
    pub contract: ContractId,
    /// Rises with every snapshot the customer takes (also across its restarts).
    pub seq: u64,
    /// When it was taken (the customer's clock, ms).
    pub taken_at: Timestamp,
    /// `(device, highest sequence number)` whose reading the state reflects, ascending.
    pub coverage: Vec<(u32, u32)>,
    /// The entries, keys ascending.
    pub entries: Vec<StateEntry>,
}

/// Why a snapshot was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Too many entries.
    #[error("state snapshot has {0} entries, at most {MAX_STATE_ENTRIES} travel")]
    TooManyEntries(usize),
    /// Too many bytes.
    #[error("state snapshot holds {0} bytes of keys and values, at most {MAX_STATE_BYTES} travel")]
    TooLarge(usize),
    /// A key or value over the runtime's limits.
    #[error(
        "state snapshot entry over the key ({MAX_STATE_KEY_BYTES}) or value ({MAX_STATE_VALUE_BYTES}) limit"
    )]
    EntryTooLarge,
    /// Keys not strictly ascending (or a key twice).
    #[error("state snapshot keys are not strictly ascending")]
    KeysUnordered,
    /// Coverage malformed: too many devices, not ascending, or a device twice.
    #[error(
        "state snapshot coverage is malformed (more than {MAX_STATE_DEVICES} devices, or not strictly ascending)"
    )]
    BadCoverage,
    /// Coverage names a device the contract does not cover.
    #[error("state snapshot covers device {0}, which the contract's service does not take over")]
    ForeignDevice(u32),
    /// No contract here for which this node accepts state.
    #[error("no contract {0} here for which this node is the provider")]
    UnknownContract(String),
    /// Sender is not the contract's customer.
    #[error("state snapshot from {sender}, but the contract's customer is {customer}")]
    NotCustomer {
        /// Signer of the envelope.
        sender: String,
        /// The contract's customer.
        customer: String,
    },
    /// Not newer than the kept one (a replay or an older snapshot).
    #[error("state snapshot {got} is not newer than the kept {kept}")]
    NotNewer {
        /// The offered `seq`.
        got: u64,
        /// The kept `seq`.
        kept: u64,
    },
    /// A device's coverage went back (an older snapshot with a forged higher `seq`).
    #[error("state snapshot covers device {device} only to {got}, the kept one to {kept}")]
    CoverageBackwards {
        /// Device.
        device: u32,
        /// Offered coverage.
        got: u32,
        /// Kept coverage.
        kept: u32,
    },
    /// The store is full of contracts.
    #[error("state snapshots kept for {MAX_KEPT_STATES} contracts already")]
    Full,
}

impl StateSnapshot {
    /// Bytes of keys and values.
    pub fn size_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.key.len().saturating_add(e.value.len()))
            .fold(0usize, usize::saturating_add)
    }

    /// Checks the bounds and the shape, and that every covered device is one of `devices`
    /// (the contract's).
    pub fn check(&self, devices: &[u32]) -> Result<(), StateError> {
        if self.entries.len() > MAX_STATE_ENTRIES {
            return Err(StateError::TooManyEntries(self.entries.len()));
        }
        let size = self.size_bytes();
        if size > MAX_STATE_BYTES {
            return Err(StateError::TooLarge(size));
        }
        if self
            .entries
            .iter()
            .any(|e| e.key.len() > MAX_STATE_KEY_BYTES || e.value.len() > MAX_STATE_VALUE_BYTES)
        {
            return Err(StateError::EntryTooLarge);
        }
        if self.entries.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(StateError::KeysUnordered);
        }
        if self.coverage.len() > MAX_STATE_DEVICES
            || self.coverage.windows(2).any(|w| w[0].0 >= w[1].0)
        {
            return Err(StateError::BadCoverage);
        }
        if let Some((d, _)) = self.coverage.iter().find(|(d, _)| !devices.contains(d)) {
            return Err(StateError::ForeignDevice(*d));
        }
        Ok(())
    }

    /// Whether this snapshot may replace `kept`: a higher `seq` and no device covered less.
    pub fn newer_than(&self, kept: &StateSnapshot) -> Result<(), StateError> {
        if self.seq <= kept.seq {
            return Err(StateError::NotNewer {
                got: self.seq,
                kept: kept.seq,
            });
        }
        let mine: BTreeMap<u32, u32> = self.coverage.iter().copied().collect();
        for (device, k) in &kept.coverage {
            let got = mine.get(device).copied();
            if got.is_none_or(|g| g < *k) {
                return Err(StateError::CoverageBackwards {
                    device: *device,
                    got: got.unwrap_or(0),
                    kept: *k,
                });
            }
        }
        Ok(())
    }
}

/// A device whose checkpoints run past the restored state: `(device, the snapshot's coverage,
/// the checkpoints' coverage)`.
pub type Behind = (u32, Option<u32>, u32);

/// Where readings resume at a takeover that restores `snapshot`: per device, after the later of
/// the snapshot's coverage and `peer_covered` (the peers' checkpoints). Also returns the devices
/// whose checkpoints run past the snapshot, `(device, snapshot coverage, checkpoint)`: the
/// restored state misses the readings in between (the newer snapshot never arrived).
pub fn resume_after(
    snapshot: Option<&StateSnapshot>,
    peer_covered: &BTreeMap<u32, u32>,
) -> (BTreeMap<u32, u32>, Vec<Behind>) {
    let mut resume = peer_covered.clone();
    let Some(s) = snapshot else {
        return (resume, Vec::new());
    };
    let covered: BTreeMap<u32, u32> = s.coverage.iter().copied().collect();
    for (d, c) in &covered {
        let r = resume.entry(*d).or_insert(*c);
        *r = (*r).max(*c);
    }
    let behind = peer_covered
        .iter()
        .filter(|(d, p)| covered.get(d).is_none_or(|c| c < p))
        .map(|(d, p)| (*d, covered.get(d).copied(), *p))
        .collect();
    (resume, behind)
}

/// What a provider refused and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateStats {
    /// Snapshots kept (replacing the previous one of their contract).
    pub kept: u64,
    /// Refused: no contract here for which this node accepts state.
    pub refused_unknown: u64,
    /// Refused: the sender is not the contract's customer.
    pub refused_not_customer: u64,
    /// Refused: over the bounds or malformed.
    pub refused_malformed: u64,
    /// Refused: not newer than the kept one (replayed or older).
    pub refused_older: u64,
    /// Contracts refused because the store was full.
    pub refused_full: u64,
    /// Snapshots restored at a takeover.
    pub restored: u64,
}

/// A contract this node accepts state for: its customer and devices, as this node's ledger says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Allowed {
    customer: NodeId,
    devices: Vec<u32>,
}

/// The provider's newest snapshot per contract.
#[derive(Clone, Debug, Default)]
pub struct StateStore {
    allowed: BTreeMap<ContractId, Allowed>,
    kept: BTreeMap<ContractId, StateSnapshot>,
    /// Counters.
    pub stats: StateStats,
}

impl StateStore {
    /// Accepts state for `contract` from `customer` covering `devices` (this node is its
    /// provider, as its ledger says). Returns false, counted, when [`MAX_KEPT_STATES`] other
    /// contracts are allowed already.
    pub fn allow(&mut self, contract: ContractId, customer: NodeId, devices: Vec<u32>) -> bool {
        if !self.allowed.contains_key(&contract) && self.allowed.len() >= MAX_KEPT_STATES {
            self.stats.refused_full += 1;
            return false;
        }
        self.allowed.insert(contract, Allowed { customer, devices });
        true
    }

    /// Stops accepting state for `contract` and drops what is kept for it.
    pub fn forget(&mut self, contract: &ContractId) {
        self.allowed.remove(contract);
        self.kept.remove(contract);
    }

    /// A snapshot signed by `sender`: kept if it passes every rule (see the module doc);
    /// refused and counted otherwise.
    pub fn receive(&mut self, sender: NodeId, snap: StateSnapshot) -> Result<(), StateError> {
        let r = self.judge(sender, &snap);
        match &r {
            Ok(()) => {
                self.stats.kept += 1;
                self.kept.insert(snap.contract, snap);
            }
            Err(StateError::UnknownContract(_)) => self.stats.refused_unknown += 1,
            Err(StateError::NotCustomer { .. }) => self.stats.refused_not_customer += 1,
            Err(StateError::NotNewer { .. } | StateError::CoverageBackwards { .. }) => {
                self.stats.refused_older += 1;
            }
            Err(_) => self.stats.refused_malformed += 1,
        }
        r
    }

    fn judge(&self, sender: NodeId, snap: &StateSnapshot) -> Result<(), StateError> {
        let Some(a) = self.allowed.get(&snap.contract) else {
            return Err(StateError::UnknownContract(snap.contract.short()));
        };
        if a.customer != sender {
            return Err(StateError::NotCustomer {
                sender: sender.short(),
                customer: a.customer.short(),
            });
        }
        snap.check(&a.devices)?;
        match self.kept.get(&snap.contract) {
            Some(kept) => snap.newer_than(kept),
            None => Ok(()),
        }
    }

    /// Puts back a snapshot this node kept before a restart (read from its own disk, bounds
    /// checked again); returns whether it was taken. The contract must be allowed again for a
    /// newer one to replace it.
    pub fn restore(&mut self, snap: StateSnapshot) -> bool {
        if snap
            .check(&snap.coverage.iter().map(|(d, _)| *d).collect::<Vec<_>>())
            .is_err()
            || (self.kept.len() >= MAX_KEPT_STATES && !self.kept.contains_key(&snap.contract))
        {
            return false;
        }
        if self
            .kept
            .get(&snap.contract)
            .is_some_and(|k| snap.newer_than(k).is_err())
        {
            return false;
        }
        self.kept.insert(snap.contract, snap);
        true
    }

    /// The kept snapshot of `contract`, removed (a takeover restores it once; the service's own
    /// store carries on from there).
    pub fn take(&mut self, contract: &ContractId) -> Option<StateSnapshot> {
        let s = self.kept.remove(contract)?;
        self.stats.restored += 1;
        Some(s)
    }

    /// The kept snapshot of `contract`.
    pub fn get(&self, contract: &ContractId) -> Option<&StateSnapshot> {
        self.kept.get(contract)
    }

    /// The kept snapshots, by contract.
    pub fn snapshots(&self) -> impl Iterator<Item = &StateSnapshot> {
        self.kept.values()
    }

    /// Contracts with a kept snapshot.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether no snapshot is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn snap(contract: u8, seq: u64, coverage: &[(u32, u32)], count: u64) -> StateSnapshot {
        StateSnapshot {
            contract: ContractId([contract; 32]),
            seq,
            taken_at: seq,
            coverage: coverage.to_vec(),
            entries: vec![StateEntry {
                key: b"count".to_vec(),
                value: count.to_le_bytes().to_vec(),
            }],
        }
    }

    fn store() -> StateStore {
        let mut s = StateStore::default();
        assert!(s.allow(ContractId([1; 32]), node(7), vec![101, 102]));
        s
    }

    #[test]
    fn bounds_and_shape_are_checked() {
        let devices = [101, 102];
        assert_eq!(snap(1, 1, &[(101, 5)], 5).check(&devices), Ok(()));
        let mut s = snap(1, 1, &[(101, 5)], 5);
        s.entries = (0..=MAX_STATE_ENTRIES as u32)
            .map(|i| StateEntry {
                key: i.to_be_bytes().to_vec(),
                value: Vec::new(),
            })
            .collect();
        assert_eq!(
            s.check(&devices),
            Err(StateError::TooManyEntries(MAX_STATE_ENTRIES + 1))
        );
        // 80 values of 16 KiB: 1.25 MiB, each within the value limit.
        s.entries = (0..80u32)
            .map(|i| StateEntry {
                key: i.to_be_bytes().to_vec(),
                value: vec![0; MAX_STATE_VALUE_BYTES],
            })
            .collect();
        assert!(matches!(s.check(&devices), Err(StateError::TooLarge(_))));
        s.entries = vec![StateEntry {
            key: vec![0; MAX_STATE_KEY_BYTES + 1],
            value: Vec::new(),
        }];
        assert_eq!(s.check(&devices), Err(StateError::EntryTooLarge));
        s.entries = vec![
            StateEntry {
                key: b"b".to_vec(),
                value: Vec::new(),
            },
            StateEntry {
                key: b"b".to_vec(),
                value: Vec::new(),
            },
        ];
        assert_eq!(s.check(&devices), Err(StateError::KeysUnordered));
        let s = snap(1, 1, &[(102, 5), (101, 5)], 5);
        assert_eq!(s.check(&devices), Err(StateError::BadCoverage));
        let s = snap(1, 1, &[(101, 5), (999, 5)], 5);
        assert_eq!(s.check(&devices), Err(StateError::ForeignDevice(999)));
    }

    #[test]
    fn only_the_contracts_customer_is_kept_and_counted_otherwise() {
        let mut s = store();
        assert!(matches!(
            s.receive(node(9), snap(1, 1, &[(101, 3)], 3)),
            Err(StateError::NotCustomer { .. })
        ));
        assert!(matches!(
            s.receive(node(7), snap(2, 1, &[(101, 3)], 3)),
            Err(StateError::UnknownContract(_))
        ));
        assert!(matches!(
            s.receive(node(7), snap(1, 1, &[(103, 3)], 3)),
            Err(StateError::ForeignDevice(103))
        ));
        assert!(s.is_empty());
        assert_eq!(s.stats.refused_not_customer, 1);
        assert_eq!(s.stats.refused_unknown, 1);
        assert_eq!(s.stats.refused_malformed, 1);
        assert_eq!(s.receive(node(7), snap(1, 1, &[(101, 3)], 3)), Ok(()));
        assert_eq!(s.stats.kept, 1);
    }

    #[test]
    fn the_newest_is_kept_and_replays_or_older_ones_are_refused() {
        let mut s = store();
        s.receive(node(7), snap(1, 5, &[(101, 10), (102, 4)], 14))
            .unwrap();
        // The same snapshot again (a replay), and an older one.
        assert!(matches!(
            s.receive(node(7), snap(1, 5, &[(101, 10), (102, 4)], 14)),
            Err(StateError::NotNewer { got: 5, kept: 5 })
        ));
        assert!(matches!(
            s.receive(node(7), snap(1, 4, &[(101, 9)], 9)),
            Err(StateError::NotNewer { .. })
        ));
        // A higher seq but a device's coverage going back, or dropped.
        assert!(matches!(
            s.receive(node(7), snap(1, 6, &[(101, 9), (102, 4)], 13)),
            Err(StateError::CoverageBackwards {
                device: 101,
                got: 9,
                kept: 10
            })
        ));
        assert!(matches!(
            s.receive(node(7), snap(1, 6, &[(101, 11)], 13)),
            Err(StateError::CoverageBackwards { device: 102, .. })
        ));
        assert_eq!(s.stats.refused_older, 4);
        assert_eq!(s.get(&ContractId([1; 32])).unwrap().seq, 5);
        s.receive(node(7), snap(1, 6, &[(101, 11), (102, 4)], 15))
            .unwrap();
        assert_eq!(s.get(&ContractId([1; 32])).unwrap().seq, 6);
        assert_eq!(s.len(), 1, "one per contract");
        // Taken once at the takeover.
        assert_eq!(s.take(&ContractId([1; 32])).unwrap().seq, 6);
        assert!(s.take(&ContractId([1; 32])).is_none());
        assert_eq!(s.stats.restored, 1);
    }

    #[test]
    fn contracts_are_bounded_and_forgotten() {
        let mut s = StateStore::default();
        for i in 0..MAX_KEPT_STATES {
            assert!(s.allow(ContractId([i as u8; 32]), node(7), vec![1]));
        }
        assert!(!s.allow(ContractId([250; 32]), node(7), vec![1]));
        assert_eq!(s.stats.refused_full, 1);
        assert!(
            s.allow(ContractId([0; 32]), node(7), vec![1, 2]),
            "an allowed contract may be named again"
        );
        s.receive(node(7), snap(0, 1, &[(1, 1)], 1)).unwrap();
        s.forget(&ContractId([0; 32]));
        assert!(s.get(&ContractId([0; 32])).is_none());
        assert!(s.allow(ContractId([250; 32]), node(7), vec![1]));
    }

    #[test]
    fn restored_snapshots_survive_a_restart_but_not_over_newer_ones() {
        let mut s = StateStore::default();
        assert!(s.restore(snap(1, 5, &[(101, 10)], 10)));
        assert!(!s.restore(snap(1, 4, &[(101, 9)], 9)), "older one on disk");
        let mut bad = snap(1, 9, &[(101, 10)], 10);
        bad.entries.push(bad.entries[0].clone());
        assert!(!s.restore(bad));
        assert!(s.allow(ContractId([1; 32]), node(7), vec![101]));
        assert!(matches!(
            s.receive(node(7), snap(1, 5, &[(101, 10)], 10)),
            Err(StateError::NotNewer { .. })
        ));
        assert_eq!(s.take(&ContractId([1; 32])).unwrap().seq, 5);
    }

    #[test]
    fn readings_resume_after_the_later_of_snapshot_and_checkpoints() {
        let peer: BTreeMap<u32, u32> = [(101, 10), (102, 20)].into_iter().collect();
        let (r, behind) = resume_after(None, &peer);
        assert_eq!(r, peer);
        assert!(behind.is_empty());
        // The snapshot covers more than the last checkpoint heard here (the customer died after
        // the provider kept it, before gossiping the checkpoint): those readings are in the
        // state and must not be replayed.
        let s = snap(1, 1, &[(101, 12), (102, 20), (103, 4)], 0);
        let (r, behind) = resume_after(Some(&s), &peer);
        assert_eq!(r, [(101, 12), (102, 20), (103, 4)].into_iter().collect());
        assert!(behind.is_empty());
        // A checkpoint past the snapshot: reported.
        let s = snap(1, 1, &[(101, 8)], 0);
        let (r, behind) = resume_after(Some(&s), &peer);
        assert_eq!(r, peer);
        assert_eq!(behind, vec![(101, Some(8), 10), (102, None, 20)]);
    }

    #[test]
    fn snapshots_round_trip_through_cbor() {
        let s = snap(1, 3, &[(101, 10)], 10);
        let bytes = serde_cbor::to_vec(&s).unwrap();
        assert_eq!(serde_cbor::from_slice::<StateSnapshot>(&bytes).unwrap(), s);
    }
}
