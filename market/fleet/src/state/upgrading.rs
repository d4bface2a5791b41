//! The deployer side of `agora deploy upgrade`: the fleet machine drives one
//! [`Upgrade`](crate::upgrade::Upgrade) per deployment from its tick.
//!
//! `Start { target, which }` becomes a [`Effect::Place`] of that image on the target (a second
//! contract beside the running one), `Stop { target, which }` a [`Effect::Release`] of that
//! image's contract. Observations come from the same paths as a target's phase (its contract
//! on the ledger, its own reports, health included), routed by image. While an upgrade is under
//! way the plan leaves the deployment's targets alone; when it rolls back, the deployer signs
//! the next version with the old image again, so the targets' desired state (and their reports)
//! follow it. A deployment with variants upgrades some variants' images: each target of a
//! changed variant moves from its variant's image to the new one, and a rollback signs the old
//! variants again; on success each target's variant is given its new image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Effect, FleetState, OwnDeployment};
use crate::FleetError;
use crate::message::FleetMessage;
use crate::plan::{ReleaseReason, TargetPhase, TargetStatus};
use crate::record::{Deployment, upgraded, with_variants};
use crate::upgrade::{Outcome, Step, Upgrade, UpgradeAction, UpgradeConfig, UpgradeTo, Which};
use agora_market::identity::{NodeId, Signer, Timestamp};
use agora_market::ids::DeploymentId;

/// The last upgrade of a deployment as `agora deploy status` shows it (`--json` prints this).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeView {
    /// The image being replaced.
    pub from: String,
    /// The image being rolled out.
    pub to: String,
    /// `in-progress`, `succeeded`, `rolling-back` or `rolled-back`.
    pub state: String,
    /// Why it rolls back (the first failing target and its reason).
    pub reason: Option<String>,
    /// Most targets mid-upgrade at once.
    pub max_unavailable: u32,
    /// How long a new instance has to be healthy, ms.
    pub health_timeout_ms: u64,
    /// The failure budget: targets whose new instance may fail without a rollback.
    #[serde(default)]
    pub max_failed: u32,
    /// Per target: its step and both instances' phases.
    pub targets: Vec<UpgradeTargetView>,
}

/// One target's line of an upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeTargetView {
    /// The provider.
    pub node: NodeId,
    /// `waiting`, `starting`, `upgraded`, `held` (failed within the failure budget),
    /// `reverting` or `reverted`.
    pub step: String,
    /// The old image's instance: its last phase (with the reason, if any), or
    /// `released (was …)` once the upgrade released it.
    pub old: Option<String>,
    /// The new image's instance: its last phase (with the reason, if any), or
    /// `released (was …)` once a rollback released it.
    pub new: Option<String>,
    /// Why its new instance failed, when it failed within the failure budget (held on
    /// its old image; placed elsewhere once the upgrade succeeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl UpgradeView {
    pub(super) fn of(up: &Upgrade) -> UpgradeView {
        let (state, reason) = match up.outcome() {
            Outcome::InProgress => ("in-progress", None),
            Outcome::Succeeded => ("succeeded", None),
            Outcome::RollingBack { reason, .. } => ("rolling-back", Some(reason.clone())),
            Outcome::RolledBack { reason, .. } => ("rolled-back", Some(reason.clone())),
        };
        let shown = |t: NodeId, which: Which, released: bool| {
            up.phase(t, which).map(|(p, r)| {
                let phase = match r {
                    Some(r) if !r.is_empty() => format!("{}: {r}", p.as_str()),
                    _ => p.as_str().to_string(),
                };
                // The machine released that instance: say so, with what it last was.
                if released {
                    format!("released (was {phase})")
                } else {
                    phase
                }
            })
        };
        UpgradeView {
            from: up.from.clone(),
            to: up.to.clone(),
            state: state.into(),
            reason,
            max_unavailable: up.config().max_unavailable,
            health_timeout_ms: up.config().health_timeout_ms,
            max_failed: up.config().max_failed,
            targets: up
                .steps()
                .iter()
                .map(|(t, step)| UpgradeTargetView {
                    node: *t,
                    step: step_name(step).into(),
                    old: shown(
                        *t,
                        Which::Old,
                        *step == Step::Upgraded
                            || (*step == Step::Held && *up.outcome() == Outcome::Succeeded),
                    ),
                    new: shown(*t, Which::New, *step == Step::Reverted),
                    failed: up.failed().get(t).cloned(),
                })
                .collect(),
        }
    }

    /// True once the upgrade will do nothing more.
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "rolled-back")
    }
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Waiting => "waiting",
        Step::Starting { .. } => "starting",
        Step::Upgraded => "upgraded",
        Step::Held => "held",
        Step::Reverting { .. } => "reverting",
        Step::Reverted => "reverted",
    }
}

/// Whether `own` has an upgrade under way (not yet succeeded or rolled back).
pub(super) fn under_way(own: &OwnDeployment) -> bool {
    own.upgrade
        .as_ref()
        .is_some_and(|u| !u.outcome().is_final())
}

/// The deployment is deleted: release the instances of the image the record no longer names
/// (the plan releases the record's own), and forget the upgrade.
pub(super) fn abandon(id: DeploymentId, own: &mut OwnDeployment, out: &mut Vec<Effect>) {
    let Some(up) = own.upgrade.take() else {
        return;
    };
    if up.outcome().is_final() {
        return;
    }
    // The instances of the images the record (new, or old again after a rollback) does not
    // name.
    let on_new = if up.of_variants() {
        own.record.body.variants == up.to_variants
    } else {
        own.record.body.image == up.to
    };
    let other = if on_new { Which::Old } else { Which::New };
    for target in up.steps().keys() {
        out.push(Effect::Release {
            deployment: id,
            target: *target,
            image: up.image_of(target, other).to_string(),
            reason: ReleaseReason::Deleted,
        });
    }
}

/// One tick of `own`'s upgrade: step the machine, turn its actions into placements and
/// releases, sign the old image again when it starts rolling back, and hand the targets back
/// to the plan (with the phases of the image they ended on) when it ends.
pub(super) fn drive(
    id: DeploymentId,
    own: &mut OwnDeployment,
    now: Timestamp,
    signer: &dyn Signer,
    valid_for_ms: u64,
    out: &mut Vec<Effect>,
) -> Result<(), FleetError> {
    let Some(up) = own.upgrade.as_mut() else {
        return Ok(());
    };
    let was_rolling_back = !matches!(up.outcome(), Outcome::InProgress | Outcome::Succeeded);
    let body = &own.record.body;
    for action in up.step(now) {
        match action {
            UpgradeAction::Start { target, which } => out.push(Effect::Place {
                deployment: id,
                target,
                image: up.image_of(&target, which).to_string(),
                needs: body.needs.clone(),
                max_price: body.max_price_per_replica,
                duration_ms: body.duration_ms,
            }),
            UpgradeAction::Stop { target, which } => out.push(Effect::Release {
                deployment: id,
                target,
                image: up.image_of(&target, which).to_string(),
                reason: match which {
                    Which::Old => ReleaseReason::Upgraded,
                    Which::New => ReleaseReason::RolledBack,
                },
            }),
        }
    }
    let rolling_back = matches!(
        up.outcome(),
        Outcome::RollingBack { .. } | Outcome::RolledBack { .. }
    );
    if rolling_back && !was_rolling_back {
        // The desired state is the old image (or variants) again: targets follow it and
        // report it.
        let record = if up.of_variants() {
            (own.record.body.variants == up.to_variants)
                .then(|| {
                    with_variants(
                        &own.record.body,
                        up.from_variants.clone(),
                        signer,
                        now,
                        valid_for_ms,
                    )
                })
                .transpose()?
        } else {
            (own.record.body.image == up.to)
                .then(|| upgraded(&own.record.body, up.from.clone(), signer, now, valid_for_ms))
                .transpose()?
        };
        if let Some(record) = record {
            out.push(Effect::Broadcast(FleetMessage::Announce(Box::new(
                record.clone(),
            ))));
            own.record = record;
        }
    }
    if up.outcome().is_final() {
        let which = if *up.outcome() == Outcome::Succeeded {
            Which::New
        } else {
            Which::Old
        };
        if which == Which::New {
            // Each target's variant now has its new image.
            for (target, (_, new)) in up.target_images() {
                if let Some(assigned) = own.variants.get_mut(target) {
                    assigned.image = new.clone();
                }
            }
        }
        for target in up.steps().keys() {
            if which == Which::New
                && let Some(why) = up.failed().get(target)
            {
                // Held within the failure budget: its new replica failed, so the plan releases
                // it and places it elsewhere (an unhealthy one would be kept for good).
                own.targets.insert(
                    *target,
                    TargetStatus {
                        phase: TargetPhase::Failed,
                        reason: Some(why.clone()),
                    },
                );
                continue;
            }
            if let Some((phase, reason)) = up.phase(*target, which) {
                own.targets.insert(
                    *target,
                    TargetStatus {
                        phase: *phase,
                        reason: reason.clone(),
                    },
                );
            }
        }
    }
    Ok(())
}

/// The next record and the machine of a one-image upgrade of `own` to `image`.
fn image_upgrade(
    id: DeploymentId,
    own: &OwnDeployment,
    image: String,
    config: UpgradeConfig,
    signer: &dyn Signer,
    now: Timestamp,
    valid_for_ms: u64,
) -> Result<(Deployment, Upgrade), FleetError> {
    let not = |reason| FleetError::NotUpgradable {
        deployment: id,
        reason,
    };
    if own.record.body.image == image {
        return Err(not("it already runs that image"));
    }
    if !own.record.body.variants.is_empty() {
        return Err(not(
            "it has variants: name the new image of each variant that changes \
             (`agora deploy upgrade ID --variant NAME=CID`)",
        ));
    }
    let from = own.record.body.image.clone();
    let record = upgraded(&own.record.body, image.clone(), signer, now, valid_for_ms)?;
    let up = Upgrade::new(from, image, own.targets.keys().copied(), config);
    Ok((record, up))
}

/// The next record and the machine of an upgrade of some of `own`'s variants to the `images`
/// named: each target of a changed variant moves from its variant's image to the new one.
fn variants_upgrade(
    id: DeploymentId,
    own: &OwnDeployment,
    images: BTreeMap<String, String>,
    config: UpgradeConfig,
    signer: &dyn Signer,
    now: Timestamp,
    valid_for_ms: u64,
) -> Result<(Deployment, Upgrade), FleetError> {
    let not = |reason| FleetError::NotUpgradable {
        deployment: id,
        reason,
    };
    let from_variants = own.record.body.variants.clone();
    if from_variants.is_empty() {
        return Err(not(
            "it has no variants: give the new image with `agora deploy upgrade ID --image CID`",
        ));
    }
    if let Some(name) = images
        .keys()
        .find(|n| !from_variants.iter().any(|v| v.name == **n))
    {
        return Err(FleetError::UnknownVariant {
            deployment: id,
            name: name.clone(),
        });
    }
    let to_variants: Vec<crate::Variant> = from_variants
        .iter()
        .map(|v| crate::Variant {
            image: images
                .get(&v.name)
                .cloned()
                .unwrap_or_else(|| v.image.clone()),
            ..v.clone()
        })
        .collect();
    if to_variants == from_variants {
        return Err(not("its variants already run those images"));
    }
    // Signed first: a new image another variant already has is refused here, before any
    // target moves.
    let record = with_variants(
        &own.record.body,
        to_variants.clone(),
        signer,
        now,
        valid_for_ms,
    )?;
    let moves: BTreeMap<NodeId, (String, String)> = own
        .targets
        .keys()
        .filter_map(|t| {
            let given = own.variants.get(t)?;
            let new = &to_variants.iter().find(|v| v.name == given.variant)?.image;
            (*new != given.image).then(|| (*t, (given.image.clone(), new.clone())))
        })
        .collect();
    let up = Upgrade::with_images(from_variants, to_variants, moves, config);
    Ok((record, up))
}

impl<S: Signer> FleetState<S> {
    /// `agora deploy upgrade`: sign the next version with the new image (naming the one it
    /// replaces), or with the variants' new images, and start the machine over the
    /// deployment's current targets (with variants: those of the variants that change).
    pub(super) fn start_upgrade(
        &mut self,
        now: Timestamp,
        id: DeploymentId,
        to: UpgradeTo,
        config: UpgradeConfig,
        out: &mut Vec<Effect>,
    ) -> Result<(), FleetError> {
        let valid_for_ms = self.config.valid_for_ms;
        let own = self
            .own
            .get_mut(&id)
            .ok_or(FleetError::NotMine { deployment: id })?;
        if under_way(own) {
            return Err(FleetError::UpgradeUnderWay { deployment: id });
        }
        if own.record.body.deleted {
            return Err(FleetError::NotUpgradable {
                deployment: id,
                reason: "it is deleted",
            });
        }
        let signer: &dyn Signer = &self.signer;
        let (record, mut up) = match to {
            UpgradeTo::Image(image) => {
                image_upgrade(id, own, image, config, signer, now, valid_for_ms)?
            }
            UpgradeTo::Variants(images) => {
                variants_upgrade(id, own, images, config, signer, now, valid_for_ms)?
            }
        };
        // The old instances are where the targets are now (the machine keeps only its own).
        for (target, status) in &own.targets {
            up.observe(*target, Which::Old, status.phase, status.reason.clone());
        }
        out.push(Effect::Broadcast(FleetMessage::Announce(Box::new(
            record.clone(),
        ))));
        own.record = record;
        own.upgrade = Some(up);
        // The first wave starts now rather than at the next tick.
        drive(id, own, now, signer, valid_for_ms, out)
    }

    /// What is heard of `target`'s instance of `image` (its contract's progress or its own
    /// report): during an upgrade it goes to the machine, else to the target's status if it is
    /// about the record's image. `image: None` (a report from before reports named it) counts
    /// as the record's image outside an upgrade. Returns false if `target` is not one of the
    /// deployment's targets.
    pub(super) fn observe(
        &mut self,
        deployment: DeploymentId,
        target: NodeId,
        image: Option<&str>,
        phase: TargetPhase,
        reason: Option<String>,
    ) -> bool {
        let Some(own) = self.own.get_mut(&deployment) else {
            return false;
        };
        // A target outside the upgrade (with variants: one whose variant keeps its image) is
        // followed as usual.
        if let Some(up) = own
            .upgrade
            .as_mut()
            .filter(|u| !u.outcome().is_final() && u.steps().contains_key(&target))
        {
            if let Some(which) = image.and_then(|i| up.which_of(&target, i)) {
                up.observe(target, which, phase, reason);
                self.dirty = true;
            }
            return true;
        }
        // With variants, only observations of the target's own variant's image count (a late
        // report about the variant it was moved off changes nothing).
        let current = image.is_none_or(|i| i == own.image_of(&target));
        // A target held within the failure budget of the upgrade that just succeeded stays
        // failed until the plan releases it: its own report (a hostile target's on purpose)
        // must not keep its failed replica.
        let held = own.upgrade.as_ref().is_some_and(|u| {
            *u.outcome() == Outcome::Succeeded && u.failed().contains_key(&target)
        });
        let Some(status) = own.targets.get_mut(&target) else {
            return false;
        };
        if held && status.phase == TargetPhase::Failed {
            return true;
        }
        if current && (status.phase != phase || status.reason != reason) {
            *status = TargetStatus { phase, reason };
            self.dirty = true;
        }
        true
    }

    /// A target's own count of its replica's restarts (from its report; the caller checked it
    /// is a target). During an upgrade a target runs two instances: the count kept is the one
    /// of the image the record names for it.
    pub(super) fn note_restarts(
        &mut self,
        deployment: DeploymentId,
        target: NodeId,
        image: Option<&str>,
        restarts: u32,
        last_failure: Option<String>,
    ) {
        let Some(own) = self.own.get_mut(&deployment) else {
            return;
        };
        if !own.targets.contains_key(&target) || image.is_some_and(|i| i != own.image_of(&target)) {
            return;
        }
        let mut changed = if restarts == 0 {
            own.restarts.remove(&target).is_some()
        } else {
            own.restarts.insert(target, restarts) != Some(restarts)
        };
        changed |= match last_failure.filter(|_| restarts > 0) {
            Some(f) => own.failures.insert(target, f.clone()) != Some(f),
            None => own.failures.remove(&target).is_some(),
        };
        // Saved with the deployment: a target reports its count only when it changes.
        self.dirty |= changed;
    }

    /// The phase last known of `target`'s instance of `image` in `deployment` (the node applies
    /// ledger facts only when they move it forward).
    pub fn target_phase(
        &self,
        deployment: &DeploymentId,
        target: &NodeId,
        image: &str,
    ) -> Option<TargetPhase> {
        let own = self.own.get(deployment)?;
        match own
            .upgrade
            .as_ref()
            .filter(|u| !u.outcome().is_final() && u.steps().contains_key(target))
        {
            Some(up) => up
                .which_of(target, image)
                .and_then(|which| up.phase(*target, which))
                .map(|(p, _)| *p),
            None if own.image_of(target) == image => own.targets.get(target).map(|s| s.phase),
            None => None,
        }
    }
}
