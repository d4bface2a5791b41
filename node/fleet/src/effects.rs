//! Carrying out the fleet machine's effects: gossip, requests, placements through the market,
//! releases through the ledger, prefetches through storage.

use std::collections::BTreeSet;

use agora_contracts::{SettleReason, TxKind};
use agora_fleet_core::{Effect, FLEET_TOPIC, FleetMessage, Input, ReleaseReason, TargetPhase};
use agora_market::{AuctionKind, AuctionSpec, DeploymentId, MarketMessage, NodeId, Resources};
use agora_network::keys::peer_id_of;
use agora_network::retry;
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;
use tracing::{Instrument, debug, info, warn};

use cid::Cid;

use super::{
    Done, FleetTask, MAX_PLACEMENTS, MAX_SENDS_IN_FLIGHT, MAX_SENDS_PER_PEER,
    MAX_STRANGER_SENDS_IN_FLIGHT, MAX_UNBACKED_PREFETCHES, Placement,
};

/// Bidding window of a placement's auction. The auction is open to its target only and closes
/// as soon as the target has bid (`agora_market` closes such an auction early), so the window
/// costs nothing when the bid arrives at once; it is long so that a bid slowed by a loaded
/// machine or a slow link still counts (at 2 s, 37 processes on 2 cores lost placements to bids
/// arriving 0.2-3.5 s after the window, each then waiting a minute to be placed again).
const PLACE_WINDOW_MS: u64 = 10_000;
/// Time after the window to award it.
const PLACE_AWARD_GRACE_MS: u64 = 30_000;
/// Attempts to deliver one fleet message.
const SEND_ATTEMPTS: u32 = 4;
/// Delay before the first retry, doubled each time.
const SEND_RETRY_MS: u64 = 1_000;
/// How long one delivery attempt waits for the peer's acknowledgement (the fleet task answers
/// at once; the network's own request timeout is 30 s, which a peer that accepts a stream and
/// never answers would make each of four attempts wait).
const SEND_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Fleet messages being delivered, per recipient (an entry only while one is).
#[derive(Clone, Debug, Default)]
pub(crate) struct PerPeer(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<NodeId, usize>>>,
);

/// One message being delivered to a peer; dropping it frees the place.
pub(crate) struct PeerSlot(PerPeer, NodeId);

impl PerPeer {
    fn take(&self, peer: NodeId, max: usize) -> Option<PeerSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(peer).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot(self.clone(), peer))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Largest image a prefetch pins (the hosting layer's own limit for staging).
const PREFETCH_MAX_BYTES: u64 = 64 << 20;

impl FleetTask {
    /// Carries out one effect; returns the inputs it leads to (a placement that failed at once).
    pub(super) async fn execute(&mut self, effect: Effect) -> Vec<Input> {
        match effect {
            Effect::Broadcast(msg) => {
                match msg.encode() {
                    Ok(bytes) => {
                        if let Err(e) = self
                            .parts
                            .network
                            .broadcast(FLEET_TOPIC, Kind::Fleet, bytes)
                            .await
                        {
                            // No peer on the topic yet: pull targets and PeerUp still reach them.
                            debug!(error = %e, "fleet broadcast not published");
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot encode a fleet message"),
                }
                Vec::new()
            }
            Effect::Send { to, msg } => {
                self.send(to, &msg);
                Vec::new()
            }
            Effect::Place {
                deployment,
                target,
                image,
                needs,
                max_price,
                duration_ms,
            } => {
                self.place(deployment, target, image, needs, max_price, duration_ms)
                    .await
            }
            Effect::Release {
                deployment,
                target,
                image,
                reason,
            } => {
                self.release(deployment, target, image, reason).await;
                Vec::new()
            }
            Effect::Prefetch { deployment, image } => {
                self.prefetch(deployment, image).await;
                Vec::new()
            }
            Effect::Stop { deployment } => {
                // The replica's service runs under its contract: the deployer's release settles
                // it and the orchestrator stops the service then (stopping it here first would
                // fail the committee's probes of a contract still in force).
                self.fetching.remove(&deployment);
                info!(deployment = %deployment.short(), "fleet replica no longer wanted here; its contract's settlement stops it");
                self.drop_prefetch(deployment).await;
                Vec::new()
            }
        }
    }

    fn send(&mut self, to: NodeId, msg: &FleetMessage) {
        let Some(peer) = peer_id_of(&to) else {
            warn!(to = %to.short(), "cannot address fleet peer");
            return;
        };
        let bytes = match msg.encode() {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode a fleet message");
                return;
            }
        };
        // Each send may live for 7 s of retries: bounded, so a flood of records that each ask
        // for an answer (a candidate offer, a report) cannot pile up tasks.
        // Messages to the deployers of replicas a contract backs here, and to the targets of
        // this node's own deployments, are not counted against it: contracts bound them.
        // Others get a place in the pool, at most a quarter of it each, and peers this node
        // does not know to be funded share half of it.
        let slot = if self.trusted(&to) {
            None
        } else {
            let Some(mine) = self.sends_per_peer.take(to, MAX_SENDS_PER_PEER) else {
                self.stats.sends_dropped += 1;
                debug!(to = %to.short(), "fleet message dropped: a quarter of the pool already being delivered to this peer");
                return;
            };
            let stranger = if self.state.is_funded(&to) {
                None
            } else {
                let Some(s) = self
                    .stranger_sends_in_flight
                    .take(MAX_STRANGER_SENDS_IN_FLIGHT)
                else {
                    self.stats.sends_dropped += 1;
                    debug!(to = %to.short(), "fleet message dropped: too many being delivered to unfunded peers");
                    return;
                };
                Some(s)
            };
            let Some(slot) = self.sends_in_flight.take(MAX_SENDS_IN_FLIGHT) else {
                self.stats.sends_dropped += 1;
                debug!(to = %to.short(), "fleet message dropped: too many being delivered");
                return;
            };
            Some((slot, stranger, mine))
        };
        // A peer that just came up may not listen for fleet requests yet (its fleet task
        // starts after the network): retry a few times, each a fresh envelope.
        let first_seq = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(u64::from(SEND_ATTEMPTS));
        let network = self.parts.network.clone();
        let signer = self.signer.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                let sent = retry::with_retries(SEND_ATTEMPTS, SEND_RETRY_MS, |n| {
                    let seq = first_seq.wrapping_add(u64::from(n));
                    let env = Envelope::seal(&signer, Kind::Fleet, now_ms(), seq, bytes.clone());
                    let network = network.clone();
                    async move {
                        match tokio::time::timeout(
                            SEND_ATTEMPT_TIMEOUT,
                            network.request(peer, &env),
                        )
                        .await
                        {
                            Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
                            Err(_) => Err("no acknowledgement within 5 s".to_string()),
                        }
                    }
                })
                .await;
                if let Err(e) = sent {
                    debug!(to = %to.short(), error = %e, "fleet message not delivered");
                }
            }
            .in_current_span(),
        );
    }

    /// A hosted auction for `image` that only `target` may win.
    async fn place(
        &mut self,
        deployment: DeploymentId,
        target: NodeId,
        image: String,
        needs: Resources,
        max_price: u64,
        duration_ms: u64,
    ) -> Vec<Input> {
        let key = (deployment, target, image.clone());
        let failed = |reason: String| {
            vec![Input::TargetProgress {
                deployment,
                target,
                image: image.clone(),
                phase: TargetPhase::Failed,
                reason: Some(reason),
            }]
        };
        if !self.placements.contains_key(&key) && self.placements.len() >= MAX_PLACEMENTS {
            self.stats.placements_dropped += 1;
            warn!(deployment = %deployment.short(), target = %target.short(), "fleet placement table full: not placed");
            return failed(format!(
                "this node already follows {MAX_PLACEMENTS} placements; retried later"
            ));
        }
        let spec = AuctionSpec {
            region: self.parts.region.clone(),
            resources: needs,
            duration_ms,
            max_price,
            window_ms: PLACE_WINDOW_MS,
            kind: AuctionKind::Hosted,
            near: None,
            award_grace_ms: PLACE_AWARD_GRACE_MS,
            service: Some(image.clone()),
            start_at: None,
        };
        let input = agora_market::Input::CreateAuctionFor {
            spec,
            only: BTreeSet::from([target]),
        };
        let effects = match self.parts.market.input(input).await {
            Ok(e) => e,
            Err(e) => return failed(e.to_string()),
        };
        let mut auction = None;
        for e in &effects {
            match e {
                agora_market::Effect::Broadcast {
                    msg: MarketMessage::Auction(req),
                    ..
                } => auction = req.id().ok(),
                agora_market::Effect::Rejected { from: None, error } => {
                    return failed(format!("auction refused: {error}"));
                }
                _ => {}
            }
        }
        info!(deployment = %deployment.short(), target = %target.short(), %image,
            auction = ?auction.map(|a| a.short()), "fleet replica placed: auction open to the target only");
        self.placements.insert(
            key,
            Placement {
                auction,
                placed_at: now_ms(),
                contract: None,
            },
        );
        Vec::new()
    }

    /// Ends the contract of the target's replica of `image`: cancel before activation, settle
    /// pro rata after.
    async fn release(
        &mut self,
        deployment: DeploymentId,
        target: NodeId,
        image: String,
        reason: ReleaseReason,
    ) {
        let key = (deployment, target, image.clone());
        let placement = self.placements.remove(&key);
        if self.parts.ledger.is_none() {
            return;
        }
        let contract = match placement.as_ref().and_then(|p| p.contract) {
            Some(c) => Some(c),
            None => self.find_contract(target, image.clone()).await,
        };
        let Some(contract) = contract else {
            if placement.is_some_and(|p| p.auction.is_some()) {
                // Its auction may still end in a contract: end that one when it appears.
                self.orphan(key, reason);
            }
            return;
        };
        self.end_contract(key, contract, reason).await;
    }

    /// Remembers a placement released before it had a contract (bounded, oldest dropped).
    fn orphan(&mut self, key: super::PlacementKey, reason: ReleaseReason) {
        if self.orphans.len() >= MAX_PLACEMENTS
            && let Some(oldest) = self
                .orphans
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            self.orphans.remove(&oldest);
            self.stats.placements_dropped += 1;
        }
        self.orphans.insert(key, (now_ms(), reason));
    }

    /// Cancels `contract` before activation or settles it pro rata after (nothing if it ended).
    pub(super) async fn end_contract(
        &mut self,
        (deployment, target, image): super::PlacementKey,
        contract: agora_contracts::ContractId,
        reason: ReleaseReason,
    ) {
        let Some(ledger) = self.parts.ledger.clone() else {
            return;
        };
        let Ok(Some(status)) = ledger
            .query(move |v| v.ledger.contracts().get(&contract).map(|r| r.status))
            .await
        else {
            return;
        };
        let Some(by) = super::ending::end_by(status) else {
            return;
        };
        match self.submit_end(contract, by).await {
            Ok(()) => info!(deployment = %deployment.short(), target = %target.short(), %image,
                contract = %contract.short(), ?reason, "fleet target released: its contract ends"),
            Err(e) => warn!(deployment = %deployment.short(), target = %target.short(),
                contract = %contract.short(), error = %e, "fleet release not submitted (checked again)"),
        }
    }

    /// Submits the transaction that ends `contract`, and checks it again a few seconds later
    /// ([`super::ending`]): a block may refuse it (a cancel that met an activation).
    pub(super) async fn submit_end(
        &mut self,
        contract: agora_contracts::ContractId,
        by: super::ending::EndBy,
    ) -> Result<(), String> {
        self.ending.submitted(contract, now_ms());
        let Some(ledger) = self.parts.ledger.clone() else {
            return Err("no ledger".into());
        };
        let tx = match by {
            super::ending::EndBy::Settle => TxKind::Settle {
                contract,
                reason: SettleReason::CustomerBack,
            },
            super::ending::EndBy::Cancel => TxKind::Cancel(contract),
        };
        ledger
            .submit(tx)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Checks the contracts being ended that are due: ended ones are forgotten, live ones get
    /// their end transaction again (a settlement now if a cancel met an activation).
    pub(super) async fn recheck_ending(&mut self) {
        let due = self.ending.due(now_ms());
        if due.is_empty() {
            return;
        }
        let Some(ledger) = self.parts.ledger.clone() else {
            return;
        };
        for contract in due {
            let Ok(status) = ledger
                .query(move |v| v.ledger.contracts().get(&contract).map(|r| r.status))
                .await
            else {
                return;
            };
            match self.ending.recheck(contract, status) {
                super::ending::Recheck::Ended => {}
                super::ending::Recheck::Submit(by) => {
                    info!(contract = %contract.short(), ?status, ?by,
                        "fleet: a released contract is still live; ending it again");
                    if let Err(e) = self.submit_end(contract, by).await {
                        warn!(contract = %contract.short(), error = %e, "fleet release not submitted (checked again)");
                    }
                }
                super::ending::Recheck::GiveUp => {
                    warn!(contract = %contract.short(), ?status, attempts = super::ending::MAX_ATTEMPTS,
                        "fleet: a released contract is still live after every attempt to end it");
                }
            }
        }
    }

    /// The live contract of this node (the customer) carrying `image` on `target`, from the
    /// ledger.
    async fn find_contract(
        &self,
        target: NodeId,
        image: String,
    ) -> Option<agora_contracts::ContractId> {
        let ledger = self.parts.ledger.clone()?;
        let me = self.me;
        ledger
            .query(move |v| {
                v.ledger
                    .contracts()
                    .iter()
                    .find(|(_, r)| {
                        r.contract.customer == me
                            && r.contract.provider == target
                            && r.contract.service_image.to_string() == image
                            && !super::progress::ended(r.status)
                    })
                    .map(|(id, _)| *id)
            })
            .await
            .ok()
            .flatten()
    }

    async fn prefetch(&mut self, deployment: DeploymentId, image: String) {
        let cid = match agora_exchange::parse_cid(&image) {
            Ok(c) => c,
            Err(e) => {
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    let _ = done
                        .send(Done::Prefetched {
                            deployment,
                            image: None,
                            result: Err(e.to_string()),
                        })
                        .await;
                });
                return;
            }
        };
        if self.fetching.contains(&deployment) {
            return;
        }
        // Pins made before any contract are a stranger's to ask for: only so many are held
        // for replicas no contract backs (a backed one's contract holds its image).
        let store = self.state.store();
        let backed: Vec<DeploymentId> = self
            .prefetched
            .keys()
            .filter(|d| store.is_pinned(d))
            .copied()
            .collect();
        for d in backed {
            self.drop_prefetch(d).await;
        }
        if self.prefetches_in_flight >= MAX_UNBACKED_PREFETCHES
            || (!self.prefetched.contains_key(&deployment)
                && self.prefetched.len() >= MAX_UNBACKED_PREFETCHES)
        {
            self.stats.prefetch_skipped += 1;
            debug!(deployment = %deployment.short(), image = %cid,
                "early image fetch skipped: {MAX_UNBACKED_PREFETCHES} held for replicas without a contract");
            return;
        }
        if let Some(old) = self.prefetched.insert(deployment, cid)
            && old != cid
        {
            // The record moved on to another image: the early copy of the old one may go.
            self.release_prefetch(deployment, old).await;
        }
        self.fetching.insert(deployment);
        self.prefetches_in_flight += 1;
        let storage = self.parts.storage.clone();
        let done = self.done_tx.clone();
        tokio::spawn(
            async move {
                let result = storage
                    .hold(cid, &prefetch_holder(&deployment), Some(PREFETCH_MAX_BYTES))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                match &result {
                    Ok(()) => info!(deployment = %deployment.short(), image = %cid, "fleet image prefetched"),
                    Err(e) => warn!(deployment = %deployment.short(), image = %cid, error = %e, "fleet image prefetch failed"),
                }
                let _ = done
                    .send(Done::Prefetched {
                        deployment,
                        image: Some(cid),
                        result,
                    })
                    .await;
            }
            .in_current_span(),
        );
    }

    /// True when `peer` deploys a replica a live contract backs here (its record is pinned) or
    /// is a target of one of this node's own deployments.
    fn trusted(&self, peer: &NodeId) -> bool {
        let store = self.state.store();
        store
            .iter()
            .any(|(id, r)| r.body.deployer == *peer && store.is_pinned(id))
            || self
                .state
                .own_deployments()
                .any(|(_, own)| own.targets.contains_key(peer))
    }

    /// The replica of `deployment` went away, or a contract backs it now: an image fetched
    /// early for it lets go of its hold (unpinned unless a contract's service or anything else
    /// here holds or keeps it; the blocks go at the next garbage collection). A fetch under way
    /// lets go when it is done.
    async fn drop_prefetch(&mut self, deployment: DeploymentId) {
        let Some(cid) = self.prefetched.remove(&deployment) else {
            return;
        };
        if self.fetching.contains(&deployment) {
            return;
        }
        self.release_prefetch(deployment, cid).await;
    }

    /// `deployment`'s early fetch lets go of `cid` ([`agora_exchange::holds`]).
    pub(super) async fn release_prefetch(&mut self, deployment: DeploymentId, cid: Cid) {
        match self
            .parts
            .storage
            .release(cid, &prefetch_holder(&deployment))
            .await
        {
            Ok(agora_exchange::holds::Released::Unpin) => {
                self.stats.prefetch_unpinned += 1;
                debug!(image = %cid, "early-fetched image unpinned: its replica went away");
            }
            Ok(_) => {}
            Err(e) => debug!(image = %cid, error = %e, "early-fetched image not let go of"),
        }
    }
}

/// The name an early fetch holds its image under.
fn prefetch_holder(deployment: &DeploymentId) -> String {
    format!("prefetch:{deployment}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod per_peer_tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_places_and_frees_them_on_drop() {
        let per = PerPeer::default();
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        let a1 = per.take(a, 2).unwrap();
        let _a2 = per.take(a, 2).unwrap();
        assert!(per.take(a, 2).is_none());
        let _b1 = per.take(b, 2).unwrap();
        drop(a1);
        assert!(per.take(a, 2).is_some());
        drop(_b1);
        let held = per.0.lock().unwrap().len();
        assert_eq!(held, 1, "b's entry goes with its last place");
    }
}
