//! The fleet state machine a node drives: `handle(now, input) -> Result<Vec<Effect>, _>`.
//!
//! One machine plays both roles. As **deployer** it keeps its own deployments, a bounded table of
//! provider facts and, per deployment, the targets and their phases; every `Tick` it re-signs
//! records close to expiry and runs [`plan`](crate::plan) to place and release targets.
//! As **provider** it keeps the records it hears in a bounded [`DeploymentStore`], fetches the
//! image at once when a push record wants it, polls the deployer at an interval for pull
//! records, tells the deployer its replica's phase, and stops a replica no longer wanted.
//! The driver in the node turns gossip, requests, presence and contracts into inputs and
//! carries out the effects (auctions and contracts per target through the existing market).

mod order;
mod provider;
mod saved;
mod upgrading;
mod variants;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::FleetError;
use crate::message::FleetMessage;
use crate::plan::{Action, PlanConfig, ReleaseReason, TargetPhase, TargetStatus, plan_parts};
use crate::record::{Deployment, DeploymentSpec, deployment_id, next_version, tombstone};
use crate::selector::ProviderFacts;
use crate::store::{DeploymentStore, StoreLimits};
use crate::upgrade::{Upgrade, UpgradeConfig};
use agora_market::identity::{NodeId, Signer, Timestamp};
use agora_market::ids::DeploymentId;
use agora_market::resources::Resources;

pub use provider::LocalReplica;
pub use saved::{LiveContract, RESTORE_GRACE_MS, RestoreReport, SavedDeployment, SavedFleet};
pub use upgrading::{UpgradeTargetView, UpgradeView};
pub use variants::Assigned;

/// Most deployers' balances kept ([`Input::DeployerBalance`]; the lowest id goes first).
pub const MAX_BALANCES: usize = 4096;

/// Most live contracts kept as backing ([`Input::Backing`]): a node provides for at most as many
/// contracts as its capacity holds, far fewer than this.
pub const MAX_BACKING: usize = 1024;

/// How long a deployer's balance counts as fresh: the node looks it up again only after this
/// ([`FleetState::balance_is_fresh`]), ms.
pub const BALANCE_TTL_MS: u64 = 5_000;

/// Tuning of the fleet machine (`[fleet]` in the node's config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetConfig {
    /// Reconcile rules.
    pub plan: PlanConfig,
    /// How often a pull target asks its deployer for the newest version, ms.
    pub pull_interval_ms: u64,
    /// How long a signed version stays valid, ms.
    pub valid_for_ms: u64,
    /// Re-sign a version this long before it expires, ms.
    pub resign_before_ms: u64,
    /// How often a push target offers itself again to its deployer (keeps it "online"), ms.
    pub candidate_refresh_ms: u64,
    /// How long a failed target is not chosen again, ms.
    pub avoid_for_ms: u64,
    /// Most deployments this node deploys itself.
    pub max_own: usize,
    /// Most providers whose facts are kept (oldest heard evicted first).
    pub max_providers: usize,
    /// Bounds of the store of records heard from others.
    pub store: StoreLimits,
    /// Least ledger balance a stranger's deployer must hold for its record to evict another
    /// from a full store (and at least its price for the replicas it asks for): keys are free,
    /// balances are not.
    pub min_deployer_balance: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            plan: PlanConfig::default(),
            pull_interval_ms: 1_000,
            valid_for_ms: 600_000,
            resign_before_ms: 120_000,
            candidate_refresh_ms: 10_000,
            avoid_for_ms: 60_000,
            max_own: 64,
            max_providers: 2048,
            store: StoreLimits::default(),
            min_deployer_balance: 100,
        }
    }
}

/// What the node feeds the machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Create (or change the selector/count of) one of this node's deployments.
    Create(DeploymentSpec),
    /// Delete one of this node's deployments: tombstone it and release every target.
    Delete(DeploymentId),
    /// Upgrade one of this node's deployments to a new image (or its variants to new images),
    /// start-first in waves ([`crate::upgrade`]): signs the next version.
    Upgrade {
        /// The deployment.
        deployment: DeploymentId,
        /// The new image, or the variants' new images.
        to: crate::upgrade::UpgradeTo,
        /// Wave size and health timeout.
        config: UpgradeConfig,
    },
    /// This node's own facts as a provider (labels, region, capacity, free).
    SelfFacts(ProviderFacts),
    /// What a provider advertises (presence, offers, its config's labels).
    Provider(ProviderFacts),
    /// A deployer's ledger balance as this node's ledger shows it (the node feeds it before a
    /// record of that deployer; see [`FleetConfig::min_deployer_balance`]).
    DeployerBalance {
        /// The deployer.
        deployer: NodeId,
        /// Its balance.
        balance: u64,
    },
    /// Provider side: the live contracts this node provides for, as `(customer, image)` (the
    /// node feeds them every tick from its ledger; at most [`MAX_BACKING`] are kept). A record
    /// whose deployer has a live contract here for one of its images is pinned when it arrives
    /// (no stranger's record evicts it), however it arrives.
    Backing(Vec<(NodeId, String)>),
    /// A peer became reachable: a deployer sends it its live records (late joiners and
    /// restarted targets learn them without waiting for the next version), and counts it seen.
    PeerUp(NodeId),
    /// A fleet message from peer `from` (authenticated by the transport).
    Remote {
        /// The sender (for gossip: the peer that forwarded it).
        from: NodeId,
        /// True for gossip, false for a request or its answer.
        gossip: bool,
        /// The message.
        msg: FleetMessage,
    },
    /// Deployer side: how the placement of `image` on `target` is going (auction, contract,
    /// ledger).
    TargetProgress {
        /// The deployment.
        deployment: DeploymentId,
        /// The target.
        target: NodeId,
        /// The image of that placement (during an upgrade a target holds two).
        image: String,
        /// Its phase.
        phase: TargetPhase,
        /// Why, for failures.
        reason: Option<String>,
    },
    /// Provider side: the phase of this node's replica of `deployment` (staging, hosting).
    LocalPhase {
        /// The deployment.
        deployment: DeploymentId,
        /// The image of the replica (its variant's, from its contract); `None`: the record's.
        image: Option<String>,
        /// The phase.
        phase: TargetPhase,
        /// Why, for failures.
        reason: Option<String>,
    },
    /// Provider side: the runtime restarted this node's replica of `deployment` `restarts`
    /// times in all (its metering); a change is reported with the next `LocalPhase`.
    LocalRestarts {
        /// The deployment.
        deployment: DeploymentId,
        /// Restarts so far.
        restarts: u32,
        /// Why the runtime last restarted it (bounded to [`MAX_REASON_LEN`] when reported).
        last_failure: Option<String>,
    },
    /// Time passed; reconcile, re-sign, poll.
    Tick,
}

/// What the node must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Publish on [`crate::FLEET_TOPIC`].
    Broadcast(FleetMessage),
    /// Send to one peer over request-response.
    Send {
        /// Recipient.
        to: NodeId,
        /// Message.
        msg: FleetMessage,
    },
    /// Deployer: contract `target` to host a replica: a hosted auction for `image` that only
    /// the target's bid may win (`agora_market::Input::CreateAuctionFor`).
    Place {
        /// The deployment.
        deployment: DeploymentId,
        /// The provider.
        target: NodeId,
        /// Image CID text.
        image: String,
        /// One replica's needs.
        needs: Resources,
        /// Highest price.
        max_price: u64,
        /// Contract duration, ms.
        duration_ms: u64,
    },
    /// Deployer: end the contract of `target`'s replica of `image`.
    Release {
        /// The deployment.
        deployment: DeploymentId,
        /// The target.
        target: NodeId,
        /// The image whose replica ends.
        image: String,
        /// Why.
        reason: ReleaseReason,
    },
    /// Provider: fetch `image` now (bitswap, from every peer that holds it), ready for the
    /// contract.
    Prefetch {
        /// The deployment.
        deployment: DeploymentId,
        /// Image CID text.
        image: String,
    },
    /// Provider: this node's replica of `deployment` is no longer wanted; stop it.
    Stop {
        /// The deployment.
        deployment: DeploymentId,
    },
}

/// One of this node's own deployments and its targets.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnDeployment {
    /// The newest signed version.
    pub record: Deployment,
    /// Targets and their phases.
    pub targets: BTreeMap<NodeId, TargetStatus>,
    /// Providers not to choose again until the given time.
    pub avoid: BTreeMap<NodeId, Timestamp>,
    /// The last upgrade (under way, or how it ended); the plan waits while one is under way.
    pub upgrade: Option<Upgrade>,
    /// With variants: the variant each target was given (empty otherwise).
    pub variants: BTreeMap<NodeId, Assigned>,
    /// With variants: the targets and the variants each may run when they were last assigned
    /// (the assignment runs again only when this changes).
    pub assigned_over: BTreeMap<NodeId, crate::variant::Mask>,
    /// With variants: targets whose variants changed since they were last assigned over, with
    /// what they admit now and since when (a change counts once it held for
    /// [`variants::VARIANT_SETTLE_MS`]: THREATS D1, a target flipping its labels).
    pub mask_changes: BTreeMap<NodeId, (crate::variant::Mask, Timestamp)>,
    /// Restarts of each target's replica, as the target itself last reported them (current
    /// targets only; saved with the deployment: a target reports only a change).
    pub restarts: BTreeMap<NodeId, u32>,
    /// Why each target's runtime last restarted its replica, as the target reported it (with
    /// its count; current targets only; saved).
    pub failures: BTreeMap<NodeId, String>,
    /// The version each target last said it acts on (its reports; current targets only; not
    /// saved). A target behind the current version is sent the record directly
    /// ([`FleetConfig::candidate_refresh_ms`] apart): gossip may not have reached it, or a
    /// flood may have evicted the record from its store before its contract pinned it.
    pub acted: BTreeMap<NodeId, u64>,
    /// Per target, the version it was last given and when: first seen as a target or a new
    /// version signed (gossip carries it), or sent directly since (not saved).
    pub sent: BTreeMap<NodeId, (u64, Timestamp)>,
}

impl OwnDeployment {
    /// The image `target` runs: its variant's, or the record's.
    pub fn image_of(&self, target: &NodeId) -> &str {
        self.variants
            .get(target)
            .map_or(self.record.body.image.as_str(), |a| a.image.as_str())
    }
}

/// One deployment as the CLI and API show it (`--json` prints this).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentView {
    /// Stable id (hex).
    pub id: String,
    /// Name.
    pub name: String,
    /// Image CID.
    pub image: String,
    /// The image an upgrade replaced (what a rollback returns to), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_image: Option<String>,
    /// Selector, as `--to` takes it.
    pub selector: String,
    /// Replica count, or `None` for all.
    pub replicas: Option<u32>,
    /// `push` or `pull`.
    pub strategy: String,
    /// Current version.
    pub version: u64,
    /// Deleted (targets being released).
    pub deleted: bool,
    /// The variants (empty: every target runs `image`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<crate::Variant>,
    /// Per target: node id, phase, reason (and its variant).
    pub targets: Vec<TargetView>,
    /// Targets per phase.
    pub summary: BTreeMap<String, usize>,
    /// With variants: targets per variant name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variant_counts: BTreeMap<String, usize>,
    /// The last upgrade: under way, succeeded or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeView>,
    /// The deployments it waits for (`--after`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Why it places no target yet: each deployment it waits for that is not healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
}

/// One target's line in `deploy status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetView {
    /// The provider.
    pub node: NodeId,
    /// contracting / fetching / staged / running / healthy / failed.
    pub phase: String,
    /// Why, for failures.
    pub reason: Option<String>,
    /// The variant it runs (deployments with variants only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// How many times the target's runtime restarted its replica (its manifest's restart
    /// policy), as the target reports it; 0 from targets that do not report it.
    #[serde(default)]
    pub restarts: u32,
    /// Why its runtime last restarted it, as the target reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

impl DeploymentView {
    fn of(id: DeploymentId, own: &OwnDeployment) -> DeploymentView {
        let b = &own.record.body;
        DeploymentView {
            id: id.to_string(),
            name: b.name.clone(),
            image: b.image.clone(),
            previous_image: b.previous_image.clone(),
            selector: b.selector.to_string(),
            replicas: match b.replicas {
                crate::record::Replicas::Count(n) => Some(n),
                crate::record::Replicas::All => None,
            },
            strategy: match b.strategy {
                crate::record::Strategy::Push => "push".into(),
                crate::record::Strategy::Pull => "pull".into(),
            },
            version: b.version,
            deleted: b.deleted,
            targets: own
                .targets
                .iter()
                .map(|(node, s)| TargetView {
                    node: *node,
                    phase: s.phase.as_str().into(),
                    reason: s.reason.clone(),
                    variant: own.variants.get(node).map(|a| a.variant.clone()),
                    restarts: own.restarts.get(node).copied().unwrap_or(0),
                    last_failure: own.failures.get(node).cloned(),
                })
                .collect(),
            variants: b.variants.clone(),
            variant_counts: own.targets.keys().filter_map(|t| own.variants.get(t)).fold(
                BTreeMap::new(),
                |mut m, a| {
                    *m.entry(a.variant.clone()).or_insert(0) += 1;
                    m
                },
            ),
            summary: crate::plan::summarize(&own.targets)
                .into_iter()
                .map(|(p, n)| (p.as_str().to_string(), n))
                .collect(),
            upgrade: own.upgrade.as_ref().map(UpgradeView::of),
            after: b.after.clone(),
            waiting_for: Vec::new(),
        }
    }
}

/// What the machine counted (for metrics and `agora deploy status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetCounters {
    /// Records refused: bad signature, bounds, expiry, size.
    pub bad_records: u64,
    /// Reports from peers that are not a target of that deployment.
    pub stray_reports: u64,
    /// Provider facts evicted from the full table (never a target's).
    pub providers_evicted: u64,
    /// New providers not kept: the table was full of targets.
    pub providers_refused: u64,
    /// Polls answered.
    pub polls_answered: u64,
    /// Polls about deployments this node neither deploys nor holds: not answered (an answer
    /// is a request of its own, so a stranger's polls would make this node send).
    pub polls_unknown: u64,
    /// Provider: `Candidate`s sent to tell a deployer that its record no longer selects this
    /// node while this node may still count as its target (a replica tracked here until then,
    /// or a live contract of that deployer's).
    pub unmatched_told: u64,
}

/// The fleet state of one node.
pub struct FleetState<S: Signer> {
    signer: S,
    me: NodeId,
    config: FleetConfig,
    own: BTreeMap<DeploymentId, OwnDeployment>,
    providers: BTreeMap<NodeId, ProviderFacts>,
    self_facts: Option<ProviderFacts>,
    store: DeploymentStore,
    local: BTreeMap<DeploymentId, LocalReplica>,
    counters: FleetCounters,
    /// Deployers' balances the node fed ([`Input::DeployerBalance`]) and when, bounded.
    balances: BTreeMap<NodeId, (u64, Timestamp)>,
    /// The live contracts this node provides for: images per customer ([`Input::Backing`]).
    backing: BTreeMap<NodeId, BTreeSet<String>>,
    /// Provider: held records that no longer select this node and whose deployer was told so,
    /// and when ([`FleetState::tell_unmatched`]); only ids the store holds (an evicted or
    /// expired one is forgotten with it), so bounded by the store.
    told_unmatched: BTreeMap<DeploymentId, Timestamp>,
    /// When this node's deployments were restored after a restart ([`FleetState::restore`]).
    restored_at: Option<Timestamp>,
    /// When this node last ticked ([`FleetState::pause_offline_clocks`]).
    last_tick: Option<Timestamp>,
    /// Something [`FleetState::saved`] returns changed since [`FleetState::take_dirty`] was
    /// last called (the node writes its state file only then).
    dirty: bool,
}

impl<S: Signer> FleetState<S> {
    /// True when `node`'s balance, as the node last fed it, holds at least
    /// [`FleetConfig::min_deployer_balance`] (a funded peer, as far as this machine knows).
    pub fn is_funded(&self, node: &NodeId) -> bool {
        self.balances
            .get(node)
            .is_some_and(|(balance, _)| *balance >= self.config.min_deployer_balance)
    }

    /// True when `deployer`'s balance was fed less than [`BALANCE_TTL_MS`] before `now` (the
    /// node need not look it up again).
    pub fn balance_is_fresh(&self, deployer: &NodeId, now: Timestamp) -> bool {
        self.balances
            .get(deployer)
            .is_some_and(|(_, at)| now.saturating_sub(*at) < BALANCE_TTL_MS)
    }

    /// A machine for the node whose key is `signer`.
    pub fn new(signer: S, config: FleetConfig) -> Self {
        let me = signer.node_id();
        FleetState {
            store: DeploymentStore::new(me, config.store),
            signer,
            me,
            config,
            own: BTreeMap::new(),
            providers: BTreeMap::new(),
            self_facts: None,
            local: BTreeMap::new(),
            counters: FleetCounters::default(),
            balances: BTreeMap::new(),
            backing: BTreeMap::new(),
            told_unmatched: BTreeMap::new(),
            restored_at: None,
            last_tick: None,
            dirty: false,
        }
    }

    /// Feeds one input; local commands that cannot be done return an error.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Result<Vec<Effect>, FleetError> {
        let mut out = Vec::new();
        match input {
            Input::Create(spec) => {
                self.create(now, spec, &mut out)?;
                self.dirty = true;
            }
            Input::Delete(id) => {
                self.delete(now, id, &mut out)?;
                self.dirty = true;
            }
            Input::Upgrade {
                deployment,
                to,
                config,
            } => {
                self.start_upgrade(now, deployment, to, config, &mut out)?;
                self.dirty = true;
            }
            Input::SelfFacts(facts) => self.self_facts = Some(facts),
            Input::Provider(facts) => self.provider_seen(facts),
            Input::Backing(live) => {
                self.backing.clear();
                for (customer, image) in live.into_iter().take(MAX_BACKING) {
                    self.backing.entry(customer).or_default().insert(image);
                }
            }
            Input::PeerUp(node) => self.peer_up(now, node, &mut out),
            Input::DeployerBalance { deployer, balance } => {
                if self.balances.len() >= MAX_BALANCES && !self.balances.contains_key(&deployer) {
                    self.balances.pop_first();
                }
                self.balances.insert(deployer, (balance, now));
            }
            Input::Remote { from, gossip, msg } => self.remote(now, from, gossip, msg, &mut out),
            Input::TargetProgress {
                deployment,
                target,
                image,
                phase,
                reason,
            } => {
                self.observe(deployment, target, Some(&image), phase, reason);
            }
            Input::LocalPhase {
                deployment,
                image,
                phase,
                reason,
            } => self.local_phase(deployment, image, phase, reason, &mut out),
            Input::LocalRestarts {
                deployment,
                restarts,
                last_failure,
            } => self.local_restarts(deployment, restarts, last_failure),
            Input::Tick => {
                self.pause_offline_clocks(now);
                self.reconcile(now, &mut out)?;
                self.provider_tick(now, &mut out);
            }
        }
        Ok(out)
    }

    fn create(
        &mut self,
        now: Timestamp,
        spec: DeploymentSpec,
        out: &mut Vec<Effect>,
    ) -> Result<(), FleetError> {
        let id = deployment_id(&self.me, &spec.name);
        if self.own.get(&id).is_some_and(upgrading::under_way) {
            return Err(FleetError::UpgradeUnderWay { deployment: id });
        }
        let previous = self.own.get(&id).map(|o| &o.record.body);
        let live = previous.filter(|p| !p.deleted);
        // A live deployment with variants may be given other variants (the targets whose
        // variant went or changed its image are replaced, stop-first; `variants.rs`); switching
        // between one image and variants is a new deployment.
        let variants_changed = live.is_some_and(|p| p.variants != spec.variants);
        if let Some(prev) = live
            && variants_changed
            && (prev.variants.is_empty() || spec.variants.is_empty())
        {
            return Err(FleetError::VariantsChanged { deployment: id });
        }
        if let Some(prev) = live
            && spec.variants.is_empty()
            && prev.image != spec.image
        {
            return Err(FleetError::UpgradeNotSupported { deployment: id });
        }
        if previous.is_none() && self.own.len() >= self.config.max_own {
            return Err(FleetError::TooManyOwn {
                max: self.config.max_own,
            });
        }
        let version = previous.map_or(now, |p| next_version(p.version, now));
        let record = spec.sign(&self.signer, now, version, version)?;
        let body = &record.body;
        if let Some(cycle) = order::cycle(&self.own, &self.me, &body.name, &body.after) {
            return Err(FleetError::AfterCycle { cycle });
        }
        out.push(Effect::Broadcast(FleetMessage::Announce(Box::new(
            record.clone(),
        ))));
        let entry = self.own.entry(id).or_insert_with(|| OwnDeployment {
            record: record.clone(),
            targets: BTreeMap::new(),
            avoid: BTreeMap::new(),
            upgrade: None,
            variants: BTreeMap::new(),
            assigned_over: BTreeMap::new(),
            mask_changes: BTreeMap::new(),
            restarts: BTreeMap::new(),
            failures: BTreeMap::new(),
            acted: BTreeMap::new(),
            sent: BTreeMap::new(),
        });
        if entry.record.body.deleted {
            // A new deployment under the old name: no upgrade history, no variants given.
            entry.upgrade = None;
            entry.variants.clear();
            entry.assigned_over.clear();
        } else if variants_changed {
            // Assign again on the next tick: targets keep a variant that is still there
            // (same name and image) when balance allows; the others are moved.
            entry.assigned_over.clear();
        }
        entry.record = record;
        Ok(())
    }

    fn delete(
        &mut self,
        now: Timestamp,
        id: DeploymentId,
        out: &mut Vec<Effect>,
    ) -> Result<(), FleetError> {
        let own = self
            .own
            .get(&id)
            .ok_or(FleetError::NotMine { deployment: id })?;
        if own.record.body.deleted {
            return Ok(());
        }
        let name = own.record.body.name.clone();
        let dependents = order::needed_by(&self.own, &name);
        if !dependents.is_empty() {
            return Err(FleetError::NeededBy { name, dependents });
        }
        let Some(own) = self.own.get_mut(&id) else {
            return Ok(());
        };
        let record = tombstone(
            &own.record.body,
            &self.signer,
            now,
            self.config.valid_for_ms,
        )?;
        own.record = record.clone();
        out.push(Effect::Broadcast(FleetMessage::Announce(Box::new(record))));
        upgrading::abandon(id, own, out);
        // Release at once rather than waiting for the next tick.
        self.reconcile(now, out)
    }

    fn provider_seen(&mut self, facts: ProviderFacts) {
        // The facts of targets are saved (without `last_seen`): a change of them is a change.
        let changed = self.providers.get(&facts.node).is_none_or(|old| {
            ProviderFacts {
                last_seen: facts.last_seen,
                ..old.clone()
            } != facts
        });
        if changed && self.own.values().any(|o| targets_node(o, &facts.node)) {
            self.dirty = true;
        }
        if !self.providers.contains_key(&facts.node)
            && self.providers.len() >= self.config.max_providers
        {
            // A target's facts are never evicted: a flood of candidates (any key may offer
            // itself) evicted them, and the plan released a target whose facts it no longer
            // had (THREATS D1). The stalest other provider goes; with none, the newcomer.
            let own = &self.own;
            let oldest = self
                .providers
                .values()
                .filter(|p| !own.values().any(|o| targets_node(o, &p.node)))
                .min_by_key(|p| (p.last_seen, p.node))
                .map(|p| p.node);
            let Some(node) = oldest else {
                self.counters.providers_refused += 1;
                tracing::debug!(provider = %facts.node.short(), "fleet provider table full of targets: a new provider is not kept");
                return;
            };
            self.providers.remove(&node);
            self.counters.providers_evicted += 1;
            self.dirty = true;
            tracing::debug!(provider = %node.short(), "fleet provider table full: evicted the oldest");
        }
        self.providers.insert(facts.node, facts);
    }

    fn peer_up(&mut self, now: Timestamp, node: NodeId, out: &mut Vec<Effect>) {
        if let Some(p) = self.providers.get_mut(&node) {
            p.last_seen = p.last_seen.max(now);
        }
        for own in self.own.values() {
            if !own.record.body.deleted && own.record.body.expires_at > now {
                out.push(Effect::Send {
                    to: node,
                    msg: FleetMessage::Announce(Box::new(own.record.clone())),
                });
            }
        }
    }

    /// Deployer: a gap of more than `offline_after_ms` between two of this node's own ticks
    /// (the machine suspended, the process stopped or stalled) is nobody's silence, since this
    /// node heard no one meanwhile: every target's `last_seen` moves forward by the gap (at
    /// most to `now`), so a target is offline only for what it missed while this node ticked.
    /// Without it the first tick after a deployer was away for 5 minutes released every target
    /// of `--all` at once, and every counted one after 30 s (THREATS D1). Only targets: a
    /// provider that is not one is placed on only once it is heard again.
    fn pause_offline_clocks(&mut self, now: Timestamp) {
        let Some(last) = self.last_tick.replace(now) else {
            return;
        };
        let gap = now.saturating_sub(last);
        if gap <= self.config.plan.offline_after_ms {
            return;
        }
        let own = &self.own;
        for p in self.providers.values_mut() {
            if own.values().any(|o| targets_node(o, &p.node)) {
                p.last_seen = p.last_seen.saturating_add(gap).min(now);
            }
        }
        tracing::info!(
            gap_ms = gap,
            "fleet ticks paused past offline_after_ms: not counted as the targets' silence"
        );
    }

    /// Deployer: re-sign what is close to expiry, forget deleted deployments with no targets
    /// left, and run the plan for every deployment.
    fn reconcile(&mut self, now: Timestamp, out: &mut Vec<Effect>) -> Result<(), FleetError> {
        let before = self.own.len();
        self.own
            .retain(|_, o| !(o.record.body.deleted && o.targets.is_empty()));
        if self.own.len() != before {
            self.dirty = true;
        }
        let ids: Vec<DeploymentId> = self.own.keys().copied().collect();
        for id in ids {
            let Some(own) = self.own.get(&id) else {
                continue;
            };
            // What is saved changes only with an effect (a re-signed record, a placement, a
            // release, an upgrade's start or stop) or in the upgrade or the variants given,
            // compared here; a quiet tick leaves the state file alone.
            let effects_before = out.len();
            let upgrade_before = own.upgrade.clone();
            let variants_before = own.variants.clone();
            self.reconcile_one(id, now, out)?;
            if let Some(own) = self.own.get(&id)
                && (out.len() != effects_before
                    || own.upgrade != upgrade_before
                    || own.variants != variants_before)
            {
                self.dirty = true;
            }
        }
        self.resend_to_targets_behind(now, out);
        Ok(())
    }

    /// Deployer: sends the current record directly to every target that still has not said it
    /// acts on it [`FleetConfig::candidate_refresh_ms`] after the version was signed or the
    /// target chosen (and again that often). Gossip reaches most targets first; this covers the
    /// one it missed, and the one whose store a flood of strangers' records emptied of ours
    /// before its contract pinned it: once its contract is live, the record arriving again is
    /// pinned there ([`Input::Backing`]). Not saved, and not a change of what is saved.
    fn resend_to_targets_behind(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let every = self.config.candidate_refresh_ms;
        for own in self.own.values_mut() {
            let body = &own.record.body;
            let current: BTreeSet<NodeId> = own
                .targets
                .keys()
                .copied()
                .chain(own.upgrade.iter().flat_map(|u| u.steps().keys().copied()))
                .collect();
            own.acted.retain(|t, _| current.contains(t));
            own.sent.retain(|t, _| current.contains(t));
            if body.deleted || body.expires_at <= now {
                continue;
            }
            for target in current {
                let behind = own.acted.get(&target).is_none_or(|v| *v < body.version);
                let due = match own.sent.get(&target) {
                    Some((version, at)) if *version == body.version => {
                        now.saturating_sub(*at) >= every
                    }
                    // Just chosen, or a new version gossiped: give gossip its time.
                    _ => {
                        own.sent.insert(target, (body.version, now));
                        false
                    }
                };
                if behind && due {
                    own.sent.insert(target, (body.version, now));
                    out.push(Effect::Send {
                        to: target,
                        msg: FleetMessage::Announce(Box::new(own.record.clone())),
                    });
                }
            }
        }
    }

    fn reconcile_one(
        &mut self,
        id: DeploymentId,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) -> Result<(), FleetError> {
        let cfg = self.config;
        // Dependency order across nodes: no new target while a deployment it waits for is
        // not healthy (targets placed before are kept).
        let waiting = self
            .own
            .get(&id)
            .filter(|o| !o.record.body.after.is_empty())
            .map(|o| order::waiting_for(&self.own, &self.me, &o.record.body))
            .unwrap_or_default();
        let Some(own) = self.own.get_mut(&id) else {
            return Ok(());
        };
        let body = &own.record.body;
        if !body.deleted && now.saturating_add(cfg.resign_before_ms) >= body.expires_at {
            let mut next = body.clone();
            next.version = next_version(next.version, now);
            next.nonce = next.version;
            next.created_at = now;
            next.expires_at = now.saturating_add(cfg.valid_for_ms);
            own.record = agora_market::signed::Signed::sign(next, &self.signer)
                .map_err(|e| FleetError::Sign(e.to_string()))?;
            out.push(Effect::Broadcast(FleetMessage::Announce(Box::new(
                own.record.clone(),
            ))));
        }
        if upgrading::under_way(own) {
            // The upgrade owns the targets until it ends; the plan resumes then.
            return upgrading::drive(id, own, now, &self.signer, cfg.valid_for_ms, out);
        }
        if saved::in_grace(self.restored_at, &self.providers, own, now) {
            // Restored after a restart: wait for its targets to offer themselves again
            // rather than releasing them as unknown.
            return Ok(());
        }
        own.avoid.retain(|_, until| *until > now);
        let avoid: BTreeSet<NodeId> = own.avoid.keys().copied().collect();
        let body = &own.record.body;
        let with_variants = !body.variants.is_empty();
        for action in plan_parts(body, &self.providers, &own.targets, &avoid, now, &cfg.plan) {
            match action {
                Action::Place { .. } if !waiting.is_empty() => {}
                Action::Place { target } => {
                    own.targets.insert(
                        target,
                        TargetStatus {
                            phase: TargetPhase::Contracting,
                            reason: None,
                        },
                    );
                    own.restarts.remove(&target);
                    own.failures.remove(&target);
                    if with_variants {
                        // Placed below, once the assignment gave it a variant.
                        continue;
                    }
                    out.push(Effect::Place {
                        deployment: id,
                        target,
                        image: body.image.clone(),
                        needs: body.needs.clone(),
                        max_price: body.max_price_per_replica,
                        duration_ms: body.duration_ms,
                    });
                }
                Action::Release { target, reason } => {
                    own.targets.remove(&target);
                    own.restarts.remove(&target);
                    own.failures.remove(&target);
                    let image = own.image_of(&target).to_string();
                    own.variants.remove(&target);
                    if reason == ReleaseReason::Failed {
                        own.avoid
                            .insert(target, now.saturating_add(cfg.avoid_for_ms));
                    }
                    out.push(Effect::Release {
                        deployment: id,
                        target,
                        image,
                        reason,
                    });
                }
            }
        }
        if with_variants {
            variants::rebalance(id, own, &self.providers, now, out);
        }
        Ok(())
    }

    /// What `agora deploy status ID` shows for one of this node's deployments.
    pub fn status(&self, id: &DeploymentId) -> Option<DeploymentView> {
        self.own.get(id).map(|own| self.view_of(*id, own))
    }

    /// What `agora deploy list` shows: every deployment this node deploys.
    pub fn list(&self) -> Vec<DeploymentView> {
        self.own
            .iter()
            .map(|(id, own)| self.view_of(*id, own))
            .collect()
    }

    fn view_of(&self, id: DeploymentId, own: &OwnDeployment) -> DeploymentView {
        let mut view = DeploymentView::of(id, own);
        if !own.record.body.deleted {
            view.waiting_for = order::waiting_for(&self.own, &self.me, &own.record.body);
        }
        view
    }

    /// This node's own deployment `id`.
    pub fn own(&self, id: &DeploymentId) -> Option<&OwnDeployment> {
        self.own.get(id)
    }

    /// Every deployment this node deploys.
    pub fn own_deployments(&self) -> impl Iterator<Item = (&DeploymentId, &OwnDeployment)> {
        self.own.iter()
    }

    /// Records heard from others.
    pub fn store(&self) -> &DeploymentStore {
        &self.store
    }

    /// Providers whose facts are known.
    pub fn providers(&self) -> &BTreeMap<NodeId, ProviderFacts> {
        &self.providers
    }

    /// What was counted.
    pub fn counters(&self) -> FleetCounters {
        self.counters
    }

    /// True if what [`FleetState::saved`] returns may have changed since the last call (the
    /// node writes its state file only then, instead of encoding it every tick); clears it.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
}

/// True when `node` is one of `own`'s targets (or of its upgrade).
fn targets_node(own: &OwnDeployment, node: &NodeId) -> bool {
    own.targets.contains_key(node)
        || own
            .upgrade
            .as_ref()
            .is_some_and(|u| u.steps().contains_key(node))
}

#[cfg(test)]
mod tests;
