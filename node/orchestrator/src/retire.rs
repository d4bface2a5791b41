//! Provider: what an ended contract leaves behind goes (THREATS C4). A hosted contract's
//! service and its key-value state are removed from the hosting layer some time after it
//! stopped — the radio sends the service's state back to the customer from it first — and with
//! it goes the service's hold on its image (unpinned unless something else here holds or keeps
//! it; its blocks go at the next collection, `agora_exchange::gc`). A contract that ended
//! before it ever ran here (a standby never activated, one cancelled while staging) is
//! forgotten the same way, and the radio stops buffering its devices for a takeover; a storage
//! contract's custody that never ran to a stop is let go of. Before this, every
//! contract a node ever provided for stayed staged and pinned for as long as the process ran,
//! and its image stayed pinned for good.

use agora_contracts::{ContractId, ContractKind, ContractRecord, ContractStatus};
use agora_market::{NodeId, Timestamp};
use tracing::{debug, warn};

use super::Orchestrator;

/// How long an ended contract's stopped service stays before it is removed (the way back of
/// its state takes at most a few seconds).
pub(super) const RETIRE_AFTER_MS: u64 = 10_000;
/// How often hosted contracts are checked against the ledger for an end they never ran to.
const SWEEP_EVERY_MS: u64 = 5_000;

/// Whether `rec`'s status change to `to` ends a contract `me` provides: only then, or once the
/// node has caught up, can a device claim or a kept chunk tree here (both only of contracts it
/// provides) have outlived its contract ([`Orchestrator::let_go_of_ended`]).
pub(super) fn ends_a_provided_contract(
    me: NodeId,
    rec: &ContractRecord,
    to: ContractStatus,
) -> bool {
    to.is_final() && rec.contract.provider == me
}

impl Orchestrator {
    /// `contract`'s service is removed [`RETIRE_AFTER_MS`] from `now`, unless it is staged
    /// again meanwhile.
    pub(super) fn retire(&mut self, contract: ContractId, now: Timestamp) {
        self.retiring
            .entry(contract)
            .or_insert(now.saturating_add(RETIRE_AFTER_MS));
    }

    /// Removes the services whose time came, and forgets hosted contracts that ended without
    /// running to their stop here.
    pub(super) async fn retire_due(&mut self, now: Timestamp) {
        if now >= self.last_retire_sweep.saturating_add(SWEEP_EVERY_MS) {
            self.last_retire_sweep = now;
            self.sweep_ended(now).await;
        }
        for contract in super::take_due(&mut self.retiring, now) {
            if self.hosted.contains_key(&contract) || self.staging.contains(&contract) {
                continue;
            }
            let id = Self::service_id(&contract);
            match self.services.forget(&id).await {
                Ok(()) => self.timeline.push(
                    "retired",
                    Some(&contract),
                    "ended contract's service and its state removed; its image let go of",
                ),
                Err(e) => {
                    debug!(contract = %contract.short(), error = %e, "ended service not removed")
                }
            }
        }
    }

    /// After a block that ended a contract this node provides ([`ends_a_provided_contract`]),
    /// once the node has caught up (a block, a tick, or the rescan of a start or a lagged
    /// block channel) and after every such rescan: the device claims and kept chunk trees of
    /// contracts that ended go. Both were checked every 5 s (a radio round trip, two ledger
    /// queries and a listing of `custody-trees/` each time), although what they find changes
    /// only then. The call after a block is tested on a devnet (`storage_contract`: a stray
    /// tree goes with the slashing block); the one after a rescan is not.
    pub(super) async fn let_go_of_ended(&self) {
        self.release_ended_claims().await;
        self.retain_custody_trees().await;
    }

    /// Once caught up: the storage layer keeps on disk only the chunk trees of the files of
    /// storage contracts this node provides that have not ended (THREATS C25: a custody that
    /// ended while this node was down never let go of its tree).
    async fn retain_custody_trees(&self) {
        if !self.roles.synced() {
            return;
        }
        let me = self.me;
        let Ok(files) = self
            .ledger
            .query(move |v| {
                v.ledger
                    .contracts()
                    .values()
                    .filter(|r| {
                        r.contract.provider == me
                            && r.contract.kind == ContractKind::Storage
                            && !r.status.is_final()
                    })
                    .map(|r| r.contract.service_image)
                    .collect::<std::collections::BTreeSet<_>>()
            })
            .await
        else {
            return;
        };
        let removed = self.storage.retain_custody_trees(files).await;
        if removed > 0 {
            debug!(removed, "chunk trees of custodies that ended let go of");
        }
    }

    /// The radio's device claims (THREATS R8) of contracts the ledger shows ended: released,
    /// so their devices are free and their received keys forgotten. Claims outlive a restart
    /// (`radio-owners.json`), and a contract that ended while this node was down is in no
    /// table here that would release it otherwise.
    pub(super) async fn release_ended_claims(&self) {
        let claimed = self.radio.claimed_contracts().await;
        if claimed.is_empty() {
            return;
        }
        // Caught up, a replica that lacks a claimed contract pruned it (a claim is made only
        // for a contract this replica had, and the ledger forgets closed contracts an hour
        // after they closed): it ended while this node was down.
        let synced = self.roles.synced();
        let Ok(ended) = self
            .ledger
            .query(move |v| {
                claimed
                    .into_iter()
                    .filter(|c| match v.ledger.contracts().get(c) {
                        Some(r) => r.status.is_final(),
                        // Before it caught up, a contract this replica does not have (yet)
                        // keeps its claim rather than lose it, and its keys, to a lagging view.
                        None => synced,
                    })
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for contract in ended {
            debug!(contract = %contract.short(), "device claim of an ended contract released");
            self.radio.release_devices(contract).await;
        }
    }

    /// Contracts the ledger shows ended (or no longer has) that never reached their stop here:
    /// hosted ones that never ran (their service and its image hold go, and the radio stops
    /// buffering their devices for a takeover unless another contract here still names them),
    /// hosted ones started here that ended without ever being active on the ledger (a
    /// customer's cancel that landed before the activation report: the service stops instead
    /// of running unpaid for the whole term, THREATS C13) and storage contracts whose custody
    /// was taken but that never ran to a stop (the file and its commitment are let go of).
    async fn sweep_ended(&mut self, now: Timestamp) {
        let waiting: Vec<ContractId> = self
            .hosted
            .keys()
            .copied()
            .chain(self.stored.keys().copied())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let Ok(ended) = self
            .ledger
            .query(move |v| {
                waiting
                    .into_iter()
                    .filter(|c| {
                        v.ledger
                            .contracts()
                            .get(c)
                            .is_none_or(|r| r.status.is_final())
                    })
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for contract in ended {
            if self
                .hosted
                .get(&contract)
                .is_some_and(|h| h.active_since.is_some())
            {
                warn!(contract = %contract.short(), "contract ended before it was active on the ledger; stopping the service started for it");
                self.stop_hosted(contract).await;
                continue;
            }
            self.end_custody(contract).await;
            let Some(h) = self.hosted.remove(&contract) else {
                continue;
            };
            self.radio.release_devices(contract).await;
            self.serving.remove(&contract);
            self.scheduled.remove(&contract);
            self.radio.forget_state(contract).await;
            let needed: std::collections::BTreeSet<u32> = self
                .hosted
                .values()
                .flat_map(|o| o.devices.iter().copied())
                .collect();
            let unheard: Vec<u32> = h
                .devices
                .into_iter()
                .filter(|d| !needed.contains(d))
                .collect();
            if !unheard.is_empty() {
                self.radio.listen(unheard.clone(), false).await;
            }
            self.timeline.push(
                "ended-unused",
                Some(&contract),
                format!("ended before it ran here; no longer listening for devices {unheard:?}"),
            );
            self.retire(contract, now);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use agora_contracts::ContractRecord;
    use agora_contracts::ContractStatus as S;
    use agora_contracts::test_utils::ContractBuilder;

    use super::ends_a_provided_contract;

    /// Claims and kept trees are let go of after a block that ends a contract this node
    /// provides, not after every status change, nor after another provider's contract ends
    /// (mutants: `to.is_final()` as always; the provider check left out).
    #[test]
    fn only_the_end_of_a_provided_contract_lets_go_of_what_it_left() {
        let rec = ContractRecord::new(ContractBuilder::new(1, 2).build(), 1_000).unwrap();
        let (me, other) = (rec.contract.provider, rec.contract.customer);
        for end in [S::Settled, S::Slashed, S::Cancelled, S::Expired] {
            assert!(ends_a_provided_contract(me, &rec, end), "{end:?}");
            assert!(!ends_a_provided_contract(other, &rec, end), "{end:?}");
        }
        for not_yet in [S::Migrated, S::Armed, S::Active] {
            assert!(!ends_a_provided_contract(me, &rec, not_yet), "{not_yet:?}");
        }
    }
}
