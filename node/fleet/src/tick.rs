//! Every tick: the machine's own rules (reconcile, re-sign, poll), then progress: the deployer
//! follows its targets' auctions and contracts, a target reports its own replica's phase.

use std::collections::BTreeMap;

use agora_contracts::{ContractId, ContractStatus};
use agora_fleet_core::{Input, ReleaseReason, TargetPhase};
use agora_market::{AuctionId, DeploymentId, NodeId};
use agora_runtime::ServiceState;
use agora_wire::now_ms;
use tracing::debug;

use super::progress::{advances, ended, ledger_phase, local_phase};
use super::{FleetTask, PlacementKey};

/// A placement without a contract after this long failed (no bid from the target, no deal).
pub const PLACE_TIMEOUT_MS: u64 = 120_000;

/// A contract as the fleet task needs it: (provider or customer, image, status).
type ContractFacts = Vec<(ContractId, NodeId, String, ContractStatus)>;

impl FleetTask {
    pub(super) async fn tick(&mut self) {
        let _ = self.apply(Input::Tick).await;
        let mut inputs = self.auction_closures();
        inputs.extend(self.deployer_progress().await);
        inputs.extend(self.provider_progress().await);
        for input in inputs {
            let _ = self.apply(input).await;
        }
        self.recheck_ending().await;
    }

    /// Placements whose auction closed without the target's bid failed.
    fn auction_closures(&mut self) -> Vec<Input> {
        let events = self.parts.market.events_after(self.market_seq);
        if let Some(last) = events.last() {
            self.market_seq = Some(last.seq);
        }
        if self.placements.is_empty() {
            return Vec::new();
        }
        let by_auction: BTreeMap<AuctionId, &PlacementKey> = self
            .placements
            .iter()
            .filter_map(|(key, p)| p.auction.map(|a| (a, key)))
            .collect();
        events
            .iter()
            .filter(|e| e.kind == "auction-closed" && e.data["winner"].is_null())
            .filter_map(|e| e.data["auction"].as_str()?.parse::<AuctionId>().ok())
            .filter_map(|a| by_auction.get(&a).copied())
            .map(|(deployment, target, image)| Input::TargetProgress {
                deployment: *deployment,
                target: *target,
                image: image.clone(),
                phase: TargetPhase::Failed,
                reason: Some(
                    "the auction closed without the target's bid (no room, or its price is \
                     above --max-price)"
                        .into(),
                ),
            })
            .collect()
    }

    /// Deployer: each placed target's contract on the ledger moves it forward; a contract that
    /// ended, or none after [`PLACE_TIMEOUT_MS`], fails it (the plan then places another).
    async fn deployer_progress(&mut self) -> Vec<Input> {
        let Some(ledger) = self.parts.ledger.clone() else {
            return Vec::new();
        };
        if self.placements.is_empty() && self.orphans.is_empty() {
            return Vec::new();
        }
        let me = self.me;
        let contracts: ContractFacts = match ledger
            .query(move |v| {
                v.ledger
                    .contracts()
                    .iter()
                    .filter(|(_, r)| r.contract.customer == me)
                    .map(|(id, r)| {
                        (
                            *id,
                            r.contract.provider,
                            r.contract.service_image.to_string(),
                            r.status,
                        )
                    })
                    .collect()
            })
            .await
        {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "fleet: ledger not readable");
                return Vec::new();
            }
        };
        let now = now_ms();
        self.end_orphans(&contracts, now).await;
        let mut out = Vec::new();
        for ((deployment, target, image), placement) in self.placements.iter_mut() {
            if self.state.own(deployment).is_none() {
                continue;
            }
            let current = self.state.target_phase(deployment, target, image);
            let live = contracts.iter().find(|(id, provider, img, status)| {
                provider == target
                    && img == image
                    && !ended(*status)
                    && placement.contract.is_none_or(|c| c == *id)
            });
            let failed = |reason: String| Input::TargetProgress {
                deployment: *deployment,
                target: *target,
                image: image.clone(),
                phase: TargetPhase::Failed,
                reason: Some(reason),
            };
            match (live, placement.contract) {
                (Some((id, _, _, status)), _) => {
                    placement.contract = Some(*id);
                    if let Some(phase) = ledger_phase(*status)
                        && advances(current, phase)
                    {
                        out.push(Input::TargetProgress {
                            deployment: *deployment,
                            target: *target,
                            image: image.clone(),
                            phase,
                            reason: None,
                        });
                    }
                }
                (None, Some(c)) if current != Some(TargetPhase::Failed) => {
                    let status = contracts
                        .iter()
                        .find(|(id, ..)| *id == c)
                        .map(|(.., s)| format!("{s:?}").to_lowercase())
                        .unwrap_or_else(|| "unknown".into());
                    out.push(failed(format!("contract {} ended ({status})", c.short())));
                }
                (None, None)
                    if current != Some(TargetPhase::Failed)
                        && now.saturating_sub(placement.placed_at) > PLACE_TIMEOUT_MS =>
                {
                    out.push(failed(format!(
                        "no contract within {} s of the auction (the target did not bid, or the \
                         deal was not signed)",
                        PLACE_TIMEOUT_MS / 1000
                    )));
                }
                _ => {}
            }
        }
        out
    }

    /// Placements released while their auction was open: a contract that appeared for one
    /// since is ended at once; one with none after [`PLACE_TIMEOUT_MS`] is forgotten. A key
    /// placed again meanwhile is left to that placement (its contract is wanted).
    async fn end_orphans(&mut self, contracts: &ContractFacts, now: u64) {
        if self.orphans.is_empty() {
            return;
        }
        let placements = &self.placements;
        self.orphans.retain(|key, (at, _)| {
            !placements.contains_key(key) && now.saturating_sub(*at) <= PLACE_TIMEOUT_MS
        });
        let found: Vec<(PlacementKey, ContractId, ReleaseReason)> = self
            .orphans
            .iter()
            .filter_map(|(key, (_, reason))| {
                let (_, target, image) = key;
                contracts
                    .iter()
                    .find(|(_, provider, img, status)| {
                        provider == target && img == image && !ended(*status)
                    })
                    .map(|(id, ..)| (key.clone(), *id, *reason))
            })
            .collect();
        for (key, contract, reason) in found {
            self.orphans.remove(&key);
            self.end_contract(key, contract, reason).await;
        }
    }

    /// Target: the phase of each replica this node holds, from its contract and its service;
    /// the machine reports a change to the deployer once.
    async fn provider_progress(&mut self) -> Vec<Input> {
        // Every image the replica may run: the record's, or with variants each variant's (the
        // deployer's contract says which one this node was given).
        let replicas: Vec<(DeploymentId, NodeId, Vec<String>)> = self
            .state
            .local_replicas()
            .filter_map(|(id, local)| {
                let body = &self.state.store().get(id)?.body;
                let images = body.images().into_iter().map(str::to_string).collect();
                Some((*id, local.deployer, images))
            })
            .collect();
        let me = self.me;
        let contracts: ContractFacts = match &self.parts.ledger {
            Some(ledger) => ledger
                .query(move |v| {
                    v.ledger
                        .contracts()
                        .iter()
                        .filter(|(_, r)| r.contract.provider == me && !ended(r.status))
                        .map(|(id, r)| {
                            (
                                *id,
                                r.contract.customer,
                                r.contract.service_image.to_string(),
                                r.status,
                            )
                        })
                        .collect()
                })
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        // The machine pins a record a live contract here backs the moment it arrives (a flood
        // of strangers' records may have evicted it before the contract; its deployer sends it
        // again).
        let mut out = vec![Input::Backing(
            contracts
                .iter()
                .map(|(_, customer, image, _)| (*customer, image.clone()))
                .collect(),
        )];
        if replicas.is_empty() {
            return out;
        }
        // State, restarts (the runtime's metering: restarts made by the restart policy) and why
        // the last one happened.
        let services: BTreeMap<String, (ServiceState, u32, Option<String>)> = self
            .parts
            .services
            .list()
            .into_iter()
            .map(|s| {
                let failure = s.last_failure.map(|r| r.to_string());
                (s.id, (s.state, s.metering.restarts, failure))
            })
            .collect();
        for (deployment, deployer, images) in replicas {
            let contract = contracts
                .iter()
                .find(|(_, customer, img, _)| *customer == deployer && images.contains(img));
            let service_id = contract.map(|(id, ..)| id.to_string());
            let service = service_id.as_ref().and_then(|id| services.get(id));
            if let Some((_, restarts, failure)) = service {
                out.push(Input::LocalRestarts {
                    deployment,
                    restarts: *restarts,
                    last_failure: failure.clone(),
                });
            }
            let service = service.map(|(state, ..)| state);
            let health = match (&service_id, service) {
                (Some(id), Some(ServiceState::Active)) => self.parts.services.health(id).ok(),
                _ => None,
            };
            let fetching = self.fetching.contains(&deployment);
            if let Some((phase, reason)) = local_phase(
                contract.map(|(.., s)| *s),
                service,
                health.as_ref(),
                fetching,
            ) {
                out.push(Input::LocalPhase {
                    deployment,
                    image: contract.map(|(_, _, img, _)| img.clone()),
                    phase,
                    reason,
                });
            }
        }
        out
    }
}
