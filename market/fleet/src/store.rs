//! A bounded store of deployment records heard from peers (latest version per deployment).
//!
//! Strangers can sign as many records as they like, so the store has a total cap and a cap per
//! deployer. When full, a record that selects this node (or is the node's own) evicts the record
//! that matters least: first records that do not select this node, then those that do, soonest
//! expiry first; the node's own records are never evicted, and a record that does not select
//! this node is refused rather than evicting anything. Every drop is counted.
//!
//! Keys are free, so a flood of validly signed records from throwaway deployers would evict
//! every honest record. Only a **funded** record (its deployer's ledger balance covers what it
//! asks for, [`crate::FleetConfig::min_deployer_balance`]) may evict another, and
//! unfunded records are evicted first. Records this node runs a replica of under a live contract are
//! **pinned** ([`DeploymentStore::pin`]): a contract on the ledger costs its deployer money, so
//! pinned records are never evicted by anyone's (at most half the store is pinned).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::FleetError;
use crate::record::Deployment;
use agora_market::identity::{NodeId, Timestamp};
use agora_market::ids::DeploymentId;

/// Store bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreLimits {
    /// Records held in total.
    pub max_records: usize,
    /// Records held per deployer (the node's own deployments are exempt).
    pub max_per_deployer: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_records: 256,
            max_per_deployer: 8,
        }
    }
}

/// What the store did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// A deployment not seen before.
    New,
    /// A higher version of a known deployment replaced the old one.
    Replaced,
    /// Not newer than what is held; ignored.
    Stale,
}

/// Counters of what the store did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounters {
    /// Records stored (new or replacing).
    pub stored: u64,
    /// Records ignored as not newer.
    pub stale: u64,
    /// Records refused: the deployer's quota or the whole store was full.
    pub refused: u64,
    /// Records evicted to make room.
    pub evicted: u64,
    /// Records dropped on expiry.
    pub expired: u64,
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    record: Deployment,
    wants_me: bool,
    funded: bool,
}

/// The latest known version of each deployment, bounded.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentStore {
    me: NodeId,
    limits: StoreLimits,
    entries: BTreeMap<DeploymentId, Entry>,
    /// Held records backed by a live contract on this node: never evicted.
    pinned: BTreeSet<DeploymentId>,
    /// Records evicted since [`DeploymentStore::take_evicted`] was last called.
    evicted: Vec<DeploymentId>,
    counters: StoreCounters,
}

impl DeploymentStore {
    /// An empty store for node `me`.
    pub fn new(me: NodeId, limits: StoreLimits) -> Self {
        DeploymentStore {
            me,
            limits,
            entries: BTreeMap::new(),
            pinned: BTreeSet::new(),
            evicted: Vec::new(),
            counters: StoreCounters::default(),
        }
    }

    /// Stores `record` (already verified and checked, see
    /// [`crate::decode_deployment`]); `wants_me` says whether it selects this node. The
    /// record counts as funded ([`DeploymentStore::insert_funded`]).
    pub fn insert(&mut self, record: Deployment, wants_me: bool) -> Result<Stored, FleetError> {
        self.insert_funded(record, wants_me, true)
    }

    /// [`DeploymentStore::insert`], saying whether the deployer's balance covers the record
    /// (`funded`): only a funded record (or the node's own) may evict another when the store is
    /// full, and unfunded records are evicted first.
    pub fn insert_funded(
        &mut self,
        record: Deployment,
        wants_me: bool,
        funded: bool,
    ) -> Result<Stored, FleetError> {
        let id = record.body.id();
        let deployer = record.body.deployer;
        if let Some(held) = self.entries.get_mut(&id) {
            if record.body.version <= held.record.body.version {
                self.counters.stale += 1;
                return Ok(Stored::Stale);
            }
            *held = Entry {
                record,
                wants_me,
                funded,
            };
            self.counters.stored += 1;
            return Ok(Stored::Replaced);
        }
        if deployer != self.me {
            let from_deployer = self
                .entries
                .values()
                .filter(|e| e.record.body.deployer == deployer)
                .count();
            if from_deployer >= self.limits.max_per_deployer {
                self.counters.refused += 1;
                return Err(FleetError::DeployerQuota {
                    deployer,
                    max: self.limits.max_per_deployer,
                });
            }
        }
        if self.entries.len() >= self.limits.max_records
            && !self.evict_for(deployer, wants_me && funded)
        {
            self.counters.refused += 1;
            return Err(FleetError::StoreFull {
                max: self.limits.max_records,
            });
        }
        self.entries.insert(
            id,
            Entry {
                record,
                wants_me,
                funded,
            },
        );
        self.counters.stored += 1;
        Ok(Stored::New)
    }

    /// Evicts one stranger's record to make room for a funded one that selects this node, or
    /// the node's own; any other record never evicts anything. Unfunded records go first, then
    /// those that do not select this node, then the soonest to expire.
    fn evict_for(&mut self, incoming: NodeId, incoming_may_evict: bool) -> bool {
        if incoming != self.me && !incoming_may_evict {
            return false;
        }
        let victim = self
            .entries
            .iter()
            .filter(|(id, e)| e.record.body.deployer != self.me && !self.pinned.contains(*id))
            .min_by_key(|(id, e)| (e.funded, e.wants_me, e.record.body.expires_at, **id))
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                self.entries.remove(&id);
                self.evicted.push(id);
                self.counters.evicted += 1;
                tracing::debug!(deployment = %id.short(), "deployment store full: evicted a record");
                true
            }
            None => false,
        }
    }

    /// Drops every record expired at `now`; returns how many.
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.record.body.expires_at > now);
        let entries = &self.entries;
        self.pinned.retain(|id| entries.contains_key(id));
        let dropped = before - self.entries.len();
        self.counters.expired += dropped as u64;
        dropped
    }

    /// The records evicted since the last call (at most one per insert), so the caller lets
    /// go of what it kept for them at once.
    pub fn take_evicted(&mut self) -> Vec<DeploymentId> {
        std::mem::take(&mut self.evicted)
    }

    /// Pins held record `id`: this node runs a replica of it under a live contract, so no
    /// stranger's record evicts it. False when it is not held or half the store is pinned
    /// already (it stays evictable then).
    pub fn pin(&mut self, id: DeploymentId) -> bool {
        if self.pinned.contains(&id) {
            return true;
        }
        if !self.entries.contains_key(&id) || self.pinned.len() >= self.limits.max_records / 2 {
            return false;
        }
        self.pinned.insert(id)
    }

    /// Unpins `id` (its contract here ended, or the replica is gone).
    pub fn unpin(&mut self, id: &DeploymentId) {
        self.pinned.remove(id);
    }

    /// True when `id` is pinned.
    pub fn is_pinned(&self, id: &DeploymentId) -> bool {
        self.pinned.contains(id)
    }

    /// How many records are pinned.
    pub fn pinned(&self) -> usize {
        self.pinned.len()
    }

    /// The latest version of deployment `id`.
    pub fn get(&self, id: &DeploymentId) -> Option<&Deployment> {
        self.entries.get(id).map(|e| &e.record)
    }

    /// Every held record, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&DeploymentId, &Deployment)> {
        self.entries.iter().map(|(id, e)| (id, &e.record))
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the store did so far.
    pub fn counters(&self) -> StoreCounters {
        self.counters
    }
}
