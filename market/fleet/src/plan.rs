//! Reconciling a deployment: `plan(desired, observed, now)` says which targets to place and
//! which to release so that the observed state moves to the desired one.
//!
//! The rules, in order: a deleted or expired deployment releases every target; a target whose
//! provider is unknown, no longer matches the selector, failed, or has been offline too long
//! (with a replica count `offline_after_ms`, with `--all` [`ALL_OFFLINE_SPANS`] times that) is
//! released; surplus targets beyond the replica count are released,
//! least advanced first; then new targets are placed among online providers that match and have
//! room, chosen by rendezvous hashing on (deployment, provider) so that different deployments
//! spread over different providers and the choice is stable from one round to the next.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::record::{DeploymentBody, Replicas};
use crate::selector::ProviderFacts;
use crate::variant::{Mask, choose, eligibility};
use agora_market::identity::{NodeId, Timestamp};
use agora_market::ids::DeploymentId;

/// Where one target is in its rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TargetPhase {
    /// Auction or contract for this target under way.
    Contracting,
    /// Contract signed; the target is fetching the image.
    Fetching,
    /// Image staged on the target.
    Staged,
    /// Service running (started; not yet answering or no health verdict yet).
    Running,
    /// Running but unhealthy: the guest's health export reports a failure, or the service
    /// stopped answering (no poll within three ticks); `reason` says which. Ordered after
    /// `Running` so the ledger's coarser "active" never hides a target's own verdict.
    Unhealthy,
    /// Running and reporting healthy.
    Healthy,
    /// Something failed; `reason` says what.
    Failed,
}

impl TargetPhase {
    /// Lower-case name for tables and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetPhase::Contracting => "contracting",
            TargetPhase::Fetching => "fetching",
            TargetPhase::Staged => "staged",
            TargetPhase::Running => "running",
            TargetPhase::Unhealthy => "unhealthy",
            TargetPhase::Healthy => "healthy",
            TargetPhase::Failed => "failed",
        }
    }
}

/// One target's observed state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// Its phase.
    pub phase: TargetPhase,
    /// Why it is in that phase (failures, waits), for `deploy status`.
    pub reason: Option<String>,
}

/// What the reconciler sees: every provider it knows and the deployment's current targets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Known providers (bounded by the node's presence table).
    pub providers: BTreeMap<NodeId, ProviderFacts>,
    /// The deployment's targets (at most [`crate::limits::MAX_REPLICAS`]).
    pub targets: BTreeMap<NodeId, TargetStatus>,
    /// Providers not to place on now (failed recently); the node ages them out.
    pub avoid: BTreeSet<NodeId>,
}

/// Tuning of the reconcile rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanConfig {
    /// A provider not heard from for this long is offline: never chosen as a new target, and a
    /// counted target on it is released and replaced (with `--all` it is kept for
    /// [`ALL_OFFLINE_SPANS`] times this, and converges if it returns within that).
    pub offline_after_ms: u64,
}

/// With `--all`, how many `offline_after_ms` spans a target stays offline before it is released
/// (5 minutes by default). Long, so that a provider restarting or unreachable for a while keeps
/// its contract and converges when it returns (nothing replaces it meanwhile), and a target
/// that drops out and back (THREATS D1) moves honest targets between variants at most once per
/// span; bounded, so that a target gone for good no longer counts in the variants' balance.
pub const ALL_OFFLINE_SPANS: u64 = 10;

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            offline_after_ms: 30_000,
        }
    }
}

/// Why a target is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReleaseReason {
    /// The deployment was deleted.
    Deleted,
    /// The deployment's record expired.
    Expired,
    /// The provider is no longer known.
    Unknown,
    /// The provider no longer matches the selector (labels, region, interfaces, capacity).
    NoLongerMatches,
    /// The target failed.
    Failed,
    /// The provider has been offline too long (`offline_after_ms`; with `--all`
    /// [`ALL_OFFLINE_SPANS`] times that).
    Offline,
    /// More targets than replicas.
    Surplus,
    /// Upgrade: the old image's instance, once the new one on that target is healthy.
    Upgraded,
    /// Upgrade halted: the new image's instance, withdrawn (rollback).
    RolledBack,
    /// Variants: the target runs another variant now (a rebalance after targets joined or
    /// left); this variant's instance ends and the other one is placed.
    Rebalanced,
}

/// One step towards the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Contract this provider to host a replica (an auction restricted to it and the selector).
    Place {
        /// The chosen provider.
        target: NodeId,
    },
    /// Stop the replica on this provider and end its contract.
    Release {
        /// The target.
        target: NodeId,
        /// Why.
        reason: ReleaseReason,
    },
}

fn online(p: &ProviderFacts, now: Timestamp, cfg: &PlanConfig) -> bool {
    now.saturating_sub(p.last_seen) <= cfg.offline_after_ms
}

/// True when a target on `p` has been offline too long to keep: a counted target as soon as it
/// is offline (a replacement can take its place), a target of `--all` only after
/// [`ALL_OFFLINE_SPANS`] (nothing replaces it; it converges if it returns before).
fn offline_too_long(
    p: &ProviderFacts,
    now: Timestamp,
    cfg: &PlanConfig,
    replicas: Replicas,
) -> bool {
    let spans = match replicas {
        Replicas::Count(_) => 1,
        Replicas::All => ALL_OFFLINE_SPANS,
    };
    now.saturating_sub(p.last_seen) > cfg.offline_after_ms.saturating_mul(spans)
}

/// Rendezvous weight of `node` for deployment `id`: the highest weights are chosen.
fn weight(id: &DeploymentId, node: &NodeId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&id.0);
    h.update(&node.0);
    *h.finalize().as_bytes()
}

/// The actions that move `observed` towards `desired` at `now`. Pure and deterministic.
pub fn plan(
    desired: &DeploymentBody,
    observed: &Observed,
    now: Timestamp,
    cfg: &PlanConfig,
) -> Vec<Action> {
    plan_parts(
        desired,
        &observed.providers,
        &observed.targets,
        &observed.avoid,
        now,
        cfg,
    )
}

/// [`plan`] over borrowed parts (the node's provider table is shared by every deployment).
pub fn plan_parts(
    desired: &DeploymentBody,
    providers: &BTreeMap<NodeId, ProviderFacts>,
    targets: &BTreeMap<NodeId, TargetStatus>,
    avoid: &BTreeSet<NodeId>,
    now: Timestamp,
    cfg: &PlanConfig,
) -> Vec<Action> {
    let release_all = |reason| {
        targets
            .keys()
            .map(|t| Action::Release { target: *t, reason })
            .collect()
    };
    if desired.deleted {
        return release_all(ReleaseReason::Deleted);
    }
    if now >= desired.expires_at {
        return release_all(ReleaseReason::Expired);
    }
    let mut actions = Vec::new();
    let mut kept: Vec<(&NodeId, &TargetStatus)> = Vec::new();
    for (target, status) in targets {
        let reason = match providers.get(target) {
            None => Some(ReleaseReason::Unknown),
            Some(p) if !desired.admits(p) => Some(ReleaseReason::NoLongerMatches),
            Some(_) if status.phase == TargetPhase::Failed => Some(ReleaseReason::Failed),
            Some(p) if offline_too_long(p, now, cfg, desired.replicas) => {
                Some(ReleaseReason::Offline)
            }
            Some(_) => None,
        };
        match reason {
            Some(reason) => actions.push(Action::Release {
                target: *target,
                reason,
            }),
            None => kept.push((target, status)),
        }
    }
    let ceiling = desired.replicas.ceiling();
    if kept.len() > ceiling {
        // Keep the most advanced targets; release the rest (ties: lower node id kept).
        kept.sort_by(|a, b| b.1.phase.cmp(&a.1.phase).then(a.0.cmp(b.0)));
        for (target, _) in kept.split_off(ceiling) {
            actions.push(Action::Release {
                target: *target,
                reason: ReleaseReason::Surplus,
            });
        }
    }
    let want = ceiling.saturating_sub(kept.len());
    if want == 0 {
        return actions;
    }
    let id = desired.id();
    let mut candidates: Vec<(&NodeId, [u8; 32])> = providers
        .values()
        .filter(|p| {
            p.node != desired.deployer
                && !targets.contains_key(&p.node)
                && !avoid.contains(&p.node)
                && online(p, now, cfg)
                && desired.can_take(p)
        })
        .map(|p| (&p.node, weight(&id, &p.node)))
        .collect();
    candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if !desired.variants.is_empty() && matches!(desired.replicas, Replicas::Count(_)) {
        // Which providers join decides how balanced the variants can be: choose them for it
        // (rendezvous order breaks ties).
        let mask = |node: &NodeId| {
            providers
                .get(node)
                .map_or(0, |p| eligibility(&desired.variants, p, &desired.needs))
        };
        let kept: BTreeMap<NodeId, Mask> = kept.iter().map(|(t, _)| (**t, mask(t))).collect();
        let ranked: Vec<(NodeId, Mask)> = candidates.iter().map(|(n, _)| (**n, mask(n))).collect();
        let chosen = choose(&kept, &ranked, want, desired.variants.len());
        actions.extend(chosen.into_iter().map(|target| Action::Place { target }));
        return actions;
    }
    actions.extend(
        candidates
            .into_iter()
            .take(want)
            .map(|(target, _)| Action::Place { target: *target }),
    );
    actions
}

/// Provider-side rule: does `desired` want `me` (so a push should make it fetch the image now,
/// and a pull should keep polling it)? A provider that already hosts it stays wanted while the
/// selector admits it.
pub fn wants(desired: &DeploymentBody, me: &ProviderFacts, now: Timestamp) -> bool {
    !desired.deleted
        && now < desired.expires_at
        && me.node != desired.deployer
        && desired.admits(me)
}

/// Counts of targets per phase, for `deploy status` and `deploy list`.
pub fn summarize(targets: &BTreeMap<NodeId, TargetStatus>) -> BTreeMap<TargetPhase, usize> {
    let mut out = BTreeMap::new();
    for status in targets.values() {
        *out.entry(status.phase).or_insert(0) += 1;
    }
    out
}
