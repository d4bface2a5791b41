//! Key rotation, owner side (threats R1/R2): a provider handed a device's working key keeps
//! it when its contract ends; with it, it could still command the device and forge frames
//! other holders would take. So the owner tracks whom it handed each device's working key
//! (`handed`) and, once the ledger says one of them no longer provides for the device, moves
//! the device to a new epoch: it hands the next epoch's working key to the providers that
//! remain (`RadioRpc::KeyUpdate`), then sends the device a rekey sealed under its root key,
//! until the device answers or shows in a frame that it moved. From then on the old working
//! key opens nothing: the device refuses requests under it and every holder refuses frames
//! sealed with it.
//!
//! The decisions are here, without I/O but the state file (`radio-rotation.json`, 0600): the
//! radio task carries out the steps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::keys::{read_private_json, write_private};

/// Providers a device's working key is handed to at most (each one a provider of a contract
/// for the device on the ledger: staked, not free to mint).
pub(crate) const MAX_HANDED_PER_DEVICE: usize = 64;
/// How soon a rotation's steps are retried at first, ms.
pub(crate) const RETRY_MS: u64 = 2_000;
/// How long a rotation waits for the remaining providers to take the next key before it moves
/// the device anyway (a provider that missed it asks again when the device's frames stop
/// verifying), ms.
pub(crate) const PUSH_GRACE_MS: u64 = 10_000;
/// Largest rotation file read back.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// One owned device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Owned {
    /// Epoch of the device's current working key.
    pub(crate) epoch: u32,
    /// Providers that hold the current (or next) working key.
    #[serde(default)]
    pub(crate) handed: BTreeSet<NodeId>,
    /// The epoch a rotation under way moves the device to.
    #[serde(default)]
    pub(crate) pending: Option<u32>,
    #[serde(skip)]
    run: Run,
}

/// A rotation's progress (not persisted: a restarted owner starts the steps over).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Run {
    started: Option<Timestamp>,
    next_at: Timestamp,
    acked: BTreeSet<NodeId>,
    /// Rounds so far (the retry interval doubles, up to 32 × [`RETRY_MS`]: a device that
    /// has no endpoint never answers).
    tries: u32,
}

/// What the radio task does next for a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Hand the next epoch's working key of `device` to `to`.
    Push {
        device: u32,
        epoch: u32,
        to: Vec<NodeId>,
    },
    /// Send `device` a rekey to `epoch` sealed under its root.
    Rekey { device: u32, epoch: u32 },
}

/// A rotation asked for by the operator (`POST /v1/devices/{id}/rotate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The device.
    pub device: u32,
    /// The epoch it moves to.
    pub epoch: u32,
    /// False when a rotation to `epoch` was already under way (nothing new started).
    pub fresh: bool,
    /// Holders of the key the ledger no longer names: they are not handed the next one.
    pub revoked: Vec<NodeId>,
}

/// Why a rotation was not started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RotateRefused {
    /// The root key of the device is not in this node's sensor keys.
    #[error(
        "device {device} is not this node's: only the node holding its root key (sensor-keys.json) rotates it"
    )]
    NotOwned { device: u32 },
    /// The epoch counter is exhausted.
    #[error(
        "device {device}'s key is at the last epoch and cannot be rotated; provision a new root key"
    )]
    LastEpoch { device: u32 },
    /// The radio task is not running.
    #[error("this node's radio is not running")]
    NoRadio,
}

/// The owner's rotation state of every device it owns.
#[derive(Default)]
pub(crate) struct Rotations {
    devices: BTreeMap<u32, Owned>,
    /// Who may hold each device's key now, from the ledger; `None` until the orchestrator
    /// said (no rotation starts before: a node still loading its ledger revokes no one).
    holders: Option<BTreeMap<u32, BTreeSet<NodeId>>>,
    file: Option<PathBuf>,
}

impl Rotations {
    /// The state of the devices in `owned` from `file` (others' entries are dropped).
    pub(crate) fn load(file: Option<PathBuf>, owned: impl Iterator<Item = u32>) -> Self {
        let stored: BTreeMap<u32, Owned> = file
            .as_deref()
            .and_then(|p| read_private_json(p, MAX_FILE_BYTES))
            .unwrap_or_default();
        let devices = owned
            .map(|d| {
                let mut o = stored.get(&d).cloned().unwrap_or_default();
                o.pending = o.pending.filter(|p| *p > o.epoch);
                if o.handed.len() > MAX_HANDED_PER_DEVICE {
                    o.handed = o.handed.into_iter().take(MAX_HANDED_PER_DEVICE).collect();
                }
                (d, o)
            })
            .collect();
        Rotations {
            devices,
            holders: None,
            file,
        }
    }

    /// Each owned device's epoch.
    pub(crate) fn epochs(&self) -> BTreeMap<u32, u32> {
        self.devices.iter().map(|(d, o)| (*d, o.epoch)).collect()
    }

    /// Rotations under way: `(device, epoch)`.
    pub(crate) fn pending(&self) -> Vec<(u32, u32)> {
        self.devices
            .iter()
            .filter_map(|(d, o)| Some((*d, o.pending?)))
            .collect()
    }

    /// The epoch a rotation under way moves `device` to.
    pub(crate) fn pending_epoch(&self, device: u32) -> Option<u32> {
        self.devices.get(&device)?.pending
    }

    /// Whether `asker` may be handed `device`'s working key: the ledger names it a provider
    /// of the device now.
    pub(crate) fn may_hold(&self, device: u32, asker: &NodeId) -> bool {
        self.devices.contains_key(&device)
            && self
                .holders
                .as_ref()
                .and_then(|h| h.get(&device))
                .is_some_and(|h| h.contains(asker))
    }

    /// The providers of this node's open contracts whose images name `device`, as the ledger
    /// says now (none before it spoke), keyed device or not: who is handed the owner's
    /// firmware jobs over it (and, for a device whose root is here, who may hold its key).
    pub(crate) fn holders_of(&self, device: u32) -> BTreeSet<NodeId> {
        self.holders
            .as_ref()
            .and_then(|h| h.get(&device))
            .cloned()
            .unwrap_or_default()
    }

    /// Records that `to` was handed `device`'s working key; false (not handed) past
    /// [`MAX_HANDED_PER_DEVICE`].
    pub(crate) fn handed(&mut self, device: u32, to: NodeId) -> bool {
        let Some(o) = self.devices.get_mut(&device) else {
            return false;
        };
        if o.handed.contains(&to) {
            return true;
        }
        if o.handed.len() >= MAX_HANDED_PER_DEVICE {
            warn!(
                device,
                max = MAX_HANDED_PER_DEVICE,
                "device key not handed: it is held by as many providers as allowed"
            );
            return false;
        }
        o.handed.insert(to);
        self.save();
        true
    }

    /// The ledger's holders now (the whole map); returns the rotations this starts.
    pub(crate) fn set_holders(
        &mut self,
        holders: BTreeMap<u32, BTreeSet<NodeId>>,
        now: Timestamp,
    ) -> Vec<(u32, u32, Vec<NodeId>)> {
        self.holders = Some(holders);
        self.start_due(now)
    }

    /// Starts a rotation for each owned device, not rotating already, whose key went to a
    /// provider the ledger no longer names: `(device, new epoch, revoked)`.
    pub(crate) fn start_due(&mut self, now: Timestamp) -> Vec<(u32, u32, Vec<NodeId>)> {
        let Some(holders) = &self.holders else {
            return Vec::new();
        };
        let mut started = Vec::new();
        for (device, o) in &mut self.devices {
            if o.pending.is_some() {
                continue;
            }
            let now_holding = holders.get(device).cloned().unwrap_or_default();
            let revoked: Vec<NodeId> = o.handed.difference(&now_holding).copied().collect();
            if revoked.is_empty() {
                continue;
            }
            let Some(epoch) = o.epoch.checked_add(1) else {
                warn!(
                    device,
                    "device key at the last epoch: it cannot be rotated; provision a new root key"
                );
                continue;
            };
            o.handed.retain(|h| now_holding.contains(h));
            o.pending = Some(epoch);
            o.run = Run {
                started: Some(now),
                ..Run::default()
            };
            started.push((*device, epoch, revoked));
        }
        if !started.is_empty() {
            self.save();
        }
        started
    }

    /// Starts a rotation of `device` on the operator's word (`agora device rotate`): a key
    /// thought leaked, or a routine change. The next key goes to the providers the ledger
    /// names now (all it was handed to while the ledger has not spoken yet). A rotation under
    /// way is that one (`fresh` false): one at a time.
    pub(crate) fn start_now(
        &mut self,
        device: u32,
        now: Timestamp,
    ) -> Result<Started, RotateRefused> {
        let Some(o) = self.devices.get_mut(&device) else {
            return Err(RotateRefused::NotOwned { device });
        };
        if let Some(epoch) = o.pending {
            return Ok(Started {
                device,
                epoch,
                fresh: false,
                revoked: Vec::new(),
            });
        }
        let epoch = o
            .epoch
            .checked_add(1)
            .ok_or(RotateRefused::LastEpoch { device })?;
        let revoked: Vec<NodeId> = match self.holders.as_ref() {
            Some(h) => {
                let now_holding = h.get(&device).cloned().unwrap_or_default();
                let gone = o.handed.difference(&now_holding).copied().collect();
                o.handed.retain(|n| now_holding.contains(n));
                gone
            }
            None => Vec::new(),
        };
        o.pending = Some(epoch);
        o.run = Run {
            started: Some(now),
            ..Run::default()
        };
        self.save();
        Ok(Started {
            device,
            epoch,
            fresh: true,
            revoked,
        })
    }

    /// The steps due at `now`: the next key to the holders that have not taken it, then (once
    /// all took it, or after [`PUSH_GRACE_MS`]) the rekey, every [`RETRY_MS`] until the device
    /// confirms.
    pub(crate) fn due(&mut self, now: Timestamp) -> Vec<Step> {
        let mut steps = Vec::new();
        for (device, o) in &mut self.devices {
            let Some(epoch) = o.pending else {
                continue;
            };
            if now < o.run.next_at {
                continue;
            }
            let started = *o.run.started.get_or_insert(now);
            o.run.next_at = now.saturating_add(RETRY_MS << o.run.tries.min(5));
            o.run.tries = o.run.tries.saturating_add(1);
            let to: Vec<NodeId> = o.handed.difference(&o.run.acked).copied().collect();
            let all_took = to.is_empty();
            if !all_took {
                steps.push(Step::Push {
                    device: *device,
                    epoch,
                    to,
                });
            }
            if all_took || now.saturating_sub(started) >= PUSH_GRACE_MS {
                steps.push(Step::Rekey {
                    device: *device,
                    epoch,
                });
            }
        }
        steps
    }

    /// `peer` took `device`'s key of `epoch`.
    pub(crate) fn acked(&mut self, device: u32, epoch: u32, peer: NodeId) {
        if let Some(o) = self.devices.get_mut(&device)
            && o.pending == Some(epoch)
        {
            o.run.acked.insert(peer);
            // The rekey goes out at once once everyone has it.
            if o.handed.is_subset(&o.run.acked) {
                o.run.next_at = 0;
            }
        }
    }

    /// The device is at `epoch` now (its answer, or a frame under that epoch's key): whether
    /// that ends the rotation under way (then persisted).
    pub(crate) fn confirmed(&mut self, device: u32, epoch: u32) -> bool {
        let Some(o) = self.devices.get_mut(&device) else {
            return false;
        };
        if o.pending != Some(epoch) {
            return false;
        }
        o.epoch = epoch;
        o.pending = None;
        o.run = Run::default();
        self.save();
        true
    }

    fn save(&self) {
        let Some(path) = &self.file else {
            return;
        };
        if let Err(e) = write_private(path, &self.devices) {
            warn!(path = %path.display(), error = %e, "key rotation state not saved; a restart rotates again");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn holders(d: u32, ns: &[u8]) -> BTreeMap<u32, BTreeSet<NodeId>> {
        BTreeMap::from([(d, ns.iter().map(|b| node(*b)).collect())])
    }

    #[test]
    fn a_provider_dropped_by_the_ledger_starts_a_rotation_once() {
        let mut r = Rotations::load(None, [7].into_iter());
        // Before the ledger spoke, nothing starts, and no one may hold the key.
        assert!(r.start_due(0).is_empty());
        assert!(!r.may_hold(7, &node(1)));
        assert!(r.set_holders(holders(7, &[1, 2]), 0).is_empty());
        assert!(r.may_hold(7, &node(1)) && !r.may_hold(7, &node(3)));
        assert!(!r.may_hold(8, &node(1)), "not this node's device");
        assert_eq!(r.holders_of(7), BTreeSet::from([node(1), node(2)]));
        assert!(r.holders_of(8).is_empty());
        assert!(r.handed(7, node(1)) && r.handed(7, node(2)));
        // Provider 1's contract ended: it is no holder any more (no key, no job hand-off).
        let started = r.set_holders(holders(7, &[2]), 100);
        assert_eq!(r.holders_of(7), BTreeSet::from([node(2)]));
        assert_eq!(started, vec![(7, 1, vec![node(1)])]);
        assert_eq!(r.pending(), vec![(7, 1)]);
        assert!(
            r.set_holders(holders(7, &[]), 200).is_empty(),
            "one rotation at a time"
        );
        // The remaining holder gets the next key first; the rekey waits for it.
        assert_eq!(
            r.due(100),
            vec![Step::Push {
                device: 7,
                epoch: 1,
                to: vec![node(2)]
            }]
        );
        assert!(r.due(101).is_empty(), "retried after RETRY_MS");
        r.acked(7, 1, node(2));
        assert_eq!(
            r.due(102),
            vec![Step::Rekey {
                device: 7,
                epoch: 1
            }]
        );
        // Unanswered, the rekey is retried less and less often.
        assert!(r.due(102 + 2 * RETRY_MS - 1).is_empty());
        assert_eq!(r.due(102 + 2 * RETRY_MS).len(), 1);
        assert!(r.due(102 + 5 * RETRY_MS).is_empty());
        assert_eq!(r.due(102 + 6 * RETRY_MS).len(), 1);
        assert!(!r.confirmed(7, 2), "not the epoch under way");
        assert!(r.confirmed(7, 1));
        assert_eq!(r.epochs()[&7], 1);
        assert!(r.due(10_000).is_empty());
        // Provider 2 left meanwhile: the next rotation starts now.
        assert_eq!(r.start_due(300), vec![(7, 2, vec![node(2)])]);
    }

    #[test]
    fn an_unresponsive_holder_delays_the_rekey_only_for_the_grace() {
        let mut r = Rotations::load(None, [7].into_iter());
        r.set_holders(holders(7, &[1, 2]), 0);
        r.handed(7, node(1));
        r.handed(7, node(2));
        r.set_holders(holders(7, &[2]), 0);
        assert!(matches!(r.due(0)[..], [Step::Push { .. }]));
        let late = r.due(PUSH_GRACE_MS);
        assert_eq!(late.len(), 2, "{late:?}");
        assert_eq!(
            late[1],
            Step::Rekey {
                device: 7,
                epoch: 1
            }
        );
    }

    #[test]
    fn the_operator_rotates_a_device_it_owns_once_at_a_time() {
        let mut r = Rotations::load(None, [7].into_iter());
        assert_eq!(
            r.start_now(8, 0),
            Err(RotateRefused::NotOwned { device: 8 })
        );
        // Before the ledger spoke: every holder keeps its place.
        r.handed(7, node(1));
        let s = r.start_now(7, 0).unwrap();
        assert_eq!((s.epoch, s.fresh, s.revoked.clone()), (1, true, vec![]));
        assert_eq!(
            r.due(0),
            vec![Step::Push {
                device: 7,
                epoch: 1,
                to: vec![node(1)]
            }]
        );
        // Asked again while it runs: the same rotation.
        let again = r.start_now(7, 10).unwrap();
        assert_eq!((again.epoch, again.fresh), (1, false));
        assert!(r.confirmed(7, 1));
        // With the ledger's holders known, one it no longer names is not handed the next key.
        r.set_holders(holders(7, &[1, 2]), 20);
        r.handed(7, node(2));
        // (Set directly: set_holders would start the rotation itself.)
        r.holders = Some(holders(7, &[2]));
        let s = r.start_now(7, 30).unwrap();
        assert_eq!((s.epoch, s.revoked), (2, vec![node(1)]));
        assert!(matches!(&r.due(30)[..], [Step::Push { to, .. }] if *to == vec![node(2)]));
        // The last epoch cannot be left.
        let mut last = Rotations::load(None, [9].into_iter());
        last.devices.get_mut(&9).unwrap().epoch = u32::MAX;
        assert_eq!(
            last.start_now(9, 0),
            Err(RotateRefused::LastEpoch { device: 9 })
        );
    }

    #[test]
    fn the_state_survives_a_restart_0600_and_stays_bounded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("radio-rotation.json");
        let mut r = Rotations::load(Some(path.clone()), [7, 8].into_iter());
        r.set_holders(holders(7, &[1]), 0);
        r.handed(7, node(1));
        r.set_holders(holders(7, &[]), 0);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Rotations::load(Some(path.clone()), [7].into_iter());
        assert_eq!(
            again.pending(),
            vec![(7, 1)],
            "a rotation under way resumes"
        );
        assert_eq!(
            again.epochs(),
            BTreeMap::from([(7, 0)]),
            "device 8 not owned now"
        );
        let mut full = Rotations::load(None, [7].into_iter());
        full.set_holders(holders(7, &[]), 0);
        for b in 0..=u8::try_from(MAX_HANDED_PER_DEVICE).unwrap() {
            full.handed(7, node(b));
        }
        assert_eq!(full.devices[&7].handed.len(), MAX_HANDED_PER_DEVICE);
    }
}
