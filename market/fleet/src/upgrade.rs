//! A start-first rolling upgrade of one deployment's targets, as a pure machine.
//!
//! Per target: start the new image beside the old one, wait until the new instance reports
//! healthy (within `health_timeout_ms`), then stop the old one. At most `max_unavailable`
//! targets are mid-upgrade at once (the wave). A new instance that reports unhealthy or failed,
//! or is not healthy in time, halts the rollout: targets still starting have their new
//! instance stopped (the old one never stopped), and every target already upgraded is rolled
//! back start-first too (the old image started again beside the new one, the new one stopped
//! once the old one is healthy). The machine never stops an old instance before the new one on
//! that target is healthy, so a target is never left without a running instance by it — but on
//! a target held within the failure budget ([`UpgradeConfig::max_failed`]), once every other
//! target is upgraded and the upgrade succeeds.
//!
//! The driver turns each [`UpgradeAction`] into a placement or release of the target's
//! contract for that image and feeds back what each instance reports ([`Upgrade::observe`]).
//! Not in this slice: moving devices, readings and the guest's key-value state across the
//! switch (issue #15's "none lost, none twice").
//!
//! A deployment with variants upgrades the same way, each target from its variant's image to
//! that variant's new one ([`Upgrade::with_images`]): `from` and `to` then only name the change
//! (`a=CID,b=CID`) and the images are per target.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::TargetPhase;
use crate::variant::Variant;
use agora_market::identity::{NodeId, Timestamp};

/// Most targets one wave may take at once (`--max-unavailable`).
pub const MAX_WAVE: u32 = 1024;

/// How one upgrade runs (`--max-unavailable K --health-timeout T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeConfig {
    /// At most this many targets mid-upgrade at once (1..=[`MAX_WAVE`]; 0 is read as 1).
    pub max_unavailable: u32,
    /// How long a new instance has to report healthy, ms.
    pub health_timeout_ms: u64,
    /// The failure budget (`--max-failed`): up to this many targets whose new instance fails
    /// are held (their old instance keeps running) and the rollout goes on; the next failure
    /// rolls every target back. When the others are upgraded the upgrade succeeds: each held
    /// target's old instance is released then, and the deployer counts its replica failed (the
    /// plan releases it and places it elsewhere). The budget never covers every target: the
    /// failure of the last one not held rolls back. 1 by default, so one target (a hostile one
    /// among them) cannot veto the upgrade (THREATS D1); with 0 the first failure rolls back.
    /// A machine saved before the budget existed reads back as 0, the way it ran.
    #[serde(default)]
    pub max_failed: u32,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            max_unavailable: 1,
            health_timeout_ms: 60_000,
            max_failed: 1,
        }
    }
}

/// What an upgrade rolls out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpgradeTo {
    /// A new image for every target (a deployment without variants).
    Image(String),
    /// New images for some of the deployment's variants, by name (the others, and every
    /// variant's selector, stay as they are).
    Variants(BTreeMap<String, String>),
}

/// Which of a target's two instances an observation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Which {
    /// The instance of the image being replaced.
    Old,
    /// The instance of the new image.
    New,
}

/// Where one target is in the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Still on the old image, not started yet.
    Waiting,
    /// New instance started beside the old one at `since`; waiting for it to be healthy.
    Starting {
        /// When the new instance was asked for.
        since: Timestamp,
    },
    /// New instance healthy, old one stopped.
    Upgraded,
    /// New instance failed within the failure budget: the old one keeps running until the
    /// upgrade succeeds (then it is stopped) or rolls back (then the new one is).
    Held,
    /// Rolling back: the old image started again beside the new one at `since`.
    Reverting {
        /// When the old instance was asked for again.
        since: Timestamp,
    },
    /// Back on the old image (or never left it), the new instance stopped.
    Reverted,
}

/// What the driver must do for one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpgradeAction {
    /// Start an instance of `which` image on `target` (beside the running one).
    Start {
        /// The target.
        target: NodeId,
        /// Old (rollback) or new (upgrade).
        which: Which,
    },
    /// Stop the instance of `which` image on `target`.
    Stop {
        /// The target.
        target: NodeId,
        /// Old (after the new one is healthy) or new (halt or rollback).
        which: Which,
    },
}

/// How the upgrade ended (or that it has not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Waves still under way.
    InProgress,
    /// Every target runs the new image (but those held within the failure budget, whose
    /// replicas the deployer then counts failed).
    Succeeded,
    /// The new image failed on `target`; rolling back (until every target is `Reverted`).
    RollingBack {
        /// The first target whose new instance failed.
        target: NodeId,
        /// Why (unhealthy with its reason, failed, or timed out).
        reason: String,
    },
    /// Every target is back on the old image; the upgrade failed for `reason`.
    RolledBack {
        /// The first target whose new instance failed.
        target: NodeId,
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// True once nothing more will happen.
    pub fn is_final(&self) -> bool {
        matches!(self, Outcome::Succeeded | Outcome::RolledBack { .. })
    }
}

/// One upgrade from `from` to `to` over a fixed set of targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrade {
    /// Image CID being replaced.
    pub from: String,
    /// Image CID being rolled out.
    pub to: String,
    config: UpgradeConfig,
    steps: BTreeMap<NodeId, Step>,
    /// Last phase heard of each target's instances.
    seen: BTreeMap<(NodeId, Which), (TargetPhase, Option<String>)>,
    outcome: Outcome,
    /// With variants: each target's old and new image (its variant's, before and after).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    images: BTreeMap<NodeId, (String, String)>,
    /// With variants: the deployment's variants before the upgrade (what a rollback signs
    /// again) and after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_variants: Vec<Variant>,
    /// With variants: the variants being rolled out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_variants: Vec<Variant>,
    /// Targets whose new instance failed within the failure budget, and why (at most
    /// `max_failed`, each a target of `steps`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    failed: BTreeMap<NodeId, String>,
}

impl Upgrade {
    /// An upgrade of `targets` (at most [`crate::limits::MAX_REPLICAS`], the
    /// deployment's own bound) from `from` to `to`.
    pub fn new(
        from: String,
        to: String,
        targets: impl IntoIterator<Item = NodeId>,
        config: UpgradeConfig,
    ) -> Upgrade {
        let config = UpgradeConfig {
            max_unavailable: config.max_unavailable.clamp(1, MAX_WAVE),
            ..config
        };
        let steps: BTreeMap<NodeId, Step> = targets
            .into_iter()
            .take(crate::limits::MAX_REPLICAS)
            .map(|t| (t, Step::Waiting))
            .collect();
        let outcome = if steps.is_empty() {
            Outcome::Succeeded
        } else {
            Outcome::InProgress
        };
        Upgrade {
            from,
            to,
            config,
            steps,
            seen: BTreeMap::new(),
            outcome,
            images: BTreeMap::new(),
            from_variants: Vec::new(),
            to_variants: Vec::new(),
            failed: BTreeMap::new(),
        }
    }

    /// An upgrade of a deployment with variants from `from_variants` to `to_variants`: each
    /// target of `images` moves from the first image of its pair to the second (targets whose
    /// variant keeps its image are not part of it).
    pub fn with_images(
        from_variants: Vec<Variant>,
        to_variants: Vec<Variant>,
        images: BTreeMap<NodeId, (String, String)>,
        config: UpgradeConfig,
    ) -> Upgrade {
        let label = |vs: &[Variant], other: &[Variant]| {
            vs.iter()
                .zip(other)
                .filter(|(v, o)| v.image != o.image)
                .map(|(v, _)| format!("{}={}", v.name, v.image))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut up = Upgrade::new(
            label(&from_variants, &to_variants),
            label(&to_variants, &from_variants),
            images.keys().copied(),
            config,
        );
        up.images = images
            .into_iter()
            .filter(|(t, _)| up.steps.contains_key(t))
            .collect();
        up.from_variants = from_variants;
        up.to_variants = to_variants;
        up
    }

    /// True for an upgrade of a deployment's variants.
    pub fn of_variants(&self) -> bool {
        !self.to_variants.is_empty()
    }

    /// Each target's old and new image (upgrades of variants; empty otherwise).
    pub fn target_images(&self) -> &BTreeMap<NodeId, (String, String)> {
        &self.images
    }

    /// The image of `target`'s instance of `which`.
    pub fn image_of(&self, target: &NodeId, which: Which) -> &str {
        match (self.images.get(target), which) {
            (Some((old, _)), Which::Old) => old,
            (Some((_, new)), Which::New) => new,
            (None, which) => self.image(which),
        }
    }

    /// Which of `target`'s instances runs `image`, if it is one of its two.
    pub fn which_of(&self, target: &NodeId, image: &str) -> Option<Which> {
        match self.images.get(target) {
            Some((_, new)) if image == new => Some(Which::New),
            Some((old, _)) if image == old => Some(Which::Old),
            Some(_) => None,
            None => self.which(image),
        }
    }

    /// What an instance on a target reports (its own report or its contract's progress).
    /// Observations about targets outside the upgrade are ignored.
    pub fn observe(
        &mut self,
        target: NodeId,
        which: Which,
        phase: TargetPhase,
        reason: Option<String>,
    ) {
        if self.steps.contains_key(&target) {
            self.seen.insert((target, which), (phase, reason));
        }
    }

    /// How many instances' phases the machine holds (bounds a saved machine read back).
    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    /// The longest reason the machine holds, bytes (bounds a saved machine read back).
    pub fn longest_reason(&self) -> usize {
        let outcome = match &self.outcome {
            Outcome::RollingBack { reason, .. } | Outcome::RolledBack { reason, .. } => {
                reason.len()
            }
            _ => 0,
        };
        self.seen
            .values()
            .filter_map(|(_, r)| r.as_ref().map(String::len))
            .chain(self.failed.values().map(String::len))
            .fold(outcome, usize::max)
    }

    /// Whether every target failed within the budget is one of the upgrade's, and no more
    /// of them than the budget (bounds a saved machine read back).
    pub fn failed_within_budget(&self) -> bool {
        self.failed.len() <= usize::try_from(self.config.max_failed).unwrap_or(usize::MAX)
            && (self.failed.is_empty() || self.failed.len() < self.steps.len())
            && self
                .failed
                .keys()
                .all(|t| matches!(self.steps.get(t), Some(Step::Held | Step::Reverted)))
            && self
                .steps
                .iter()
                .all(|(t, s)| *s != Step::Held || self.failed.contains_key(t))
    }

    /// The last phase (and reason) heard of `target`'s instance of `which` image.
    pub fn phase(&self, target: NodeId, which: Which) -> Option<&(TargetPhase, Option<String>)> {
        self.seen.get(&(target, which))
    }

    /// The image of `which` instance.
    pub fn image(&self, which: Which) -> &str {
        match which {
            Which::Old => &self.from,
            Which::New => &self.to,
        }
    }

    /// Which instance runs `image`, if it is one of this upgrade's two.
    pub fn which(&self, image: &str) -> Option<Which> {
        if image == self.to {
            Some(Which::New)
        } else if image == self.from {
            Some(Which::Old)
        } else {
            None
        }
    }

    fn healthy(&self, target: NodeId, which: Which) -> bool {
        self.phase(target, which)
            .is_some_and(|(p, _)| *p == TargetPhase::Healthy)
    }

    /// Moves every target as far as the observations allow; returns what to do now.
    pub fn step(&mut self, now: Timestamp) -> Vec<UpgradeAction> {
        let mut out = Vec::new();
        if matches!(self.outcome, Outcome::InProgress) {
            self.advance(now, &mut out);
        }
        if let Outcome::RollingBack { target, reason } = &self.outcome {
            let (target, reason) = (*target, reason.clone());
            self.roll_back(now, &mut out);
            if self.steps.values().all(|s| *s == Step::Reverted) {
                self.outcome = Outcome::RolledBack { target, reason };
            }
        }
        out
    }

    fn advance(&mut self, now: Timestamp, out: &mut Vec<UpgradeAction>) {
        let targets: Vec<NodeId> = self.steps.keys().copied().collect();
        for target in &targets {
            let Some(Step::Starting { since }) = self.steps.get(target).copied() else {
                continue;
            };
            if self.healthy(*target, Which::New) {
                self.steps.insert(*target, Step::Upgraded);
                out.push(UpgradeAction::Stop {
                    target: *target,
                    which: Which::Old,
                });
                continue;
            }
            let failure = match self.phase(*target, Which::New) {
                Some((TargetPhase::Unhealthy, r)) => Some(format!(
                    "new image unhealthy on {}: {}",
                    target.short(),
                    r.as_deref().unwrap_or("no reason given")
                )),
                Some((TargetPhase::Failed, r)) => Some(format!(
                    "new image failed on {}: {}",
                    target.short(),
                    r.as_deref().unwrap_or("no reason given")
                )),
                _ if now.saturating_sub(since) > self.config.health_timeout_ms => Some(format!(
                    "new image not healthy on {} within {} ms (--health-timeout)",
                    target.short(),
                    self.config.health_timeout_ms
                )),
                _ => None,
            };
            if let Some(mut reason) = failure {
                // A target's reason is at most `MAX_REASON_LEN`; with the prefix it could be
                // longer, and a saved machine read back must stay within the bound.
                clip(&mut reason, crate::limits::MAX_REASON_LEN);
                let budget = usize::try_from(self.config.max_failed).unwrap_or(0);
                // Within the budget, and never the last target not held: held, the rollout
                // goes on.
                if self.failed.len() < budget && self.failed.len() + 1 < self.steps.len() {
                    self.failed.insert(*target, reason);
                    self.steps.insert(*target, Step::Held);
                    continue;
                }
                self.outcome = Outcome::RollingBack {
                    target: *target,
                    reason,
                };
                return;
            }
        }
        let mut in_flight = self
            .steps
            .values()
            .filter(|s| matches!(s, Step::Starting { .. }))
            .count();
        let wave = usize::try_from(self.config.max_unavailable).unwrap_or(1);
        for target in &targets {
            if in_flight >= wave {
                break;
            }
            if self.steps.get(target) == Some(&Step::Waiting) {
                self.steps.insert(*target, Step::Starting { since: now });
                out.push(UpgradeAction::Start {
                    target: *target,
                    which: Which::New,
                });
                in_flight += 1;
            }
        }
        if self
            .steps
            .values()
            .all(|s| matches!(s, Step::Upgraded | Step::Held))
        {
            // The held targets' old instances go now: the deployment runs the new image.
            for (target, step) in &self.steps {
                if *step == Step::Held {
                    out.push(UpgradeAction::Stop {
                        target: *target,
                        which: Which::Old,
                    });
                }
            }
            self.outcome = Outcome::Succeeded;
        }
    }

    /// Rollback: a target still on the old image stops its new instance (if any); an upgraded
    /// one starts the old image again and stops the new one once the old is healthy.
    fn roll_back(&mut self, now: Timestamp, out: &mut Vec<UpgradeAction>) {
        let targets: Vec<NodeId> = self.steps.keys().copied().collect();
        for target in targets {
            match self.steps.get(&target).copied() {
                Some(Step::Waiting) => {
                    self.steps.insert(target, Step::Reverted);
                }
                Some(Step::Starting { .. } | Step::Held) => {
                    self.steps.insert(target, Step::Reverted);
                    out.push(UpgradeAction::Stop {
                        target,
                        which: Which::New,
                    });
                }
                Some(Step::Upgraded) => {
                    // The old instance's last phase is stale: it was stopped.
                    self.seen.remove(&(target, Which::Old));
                    self.steps.insert(target, Step::Reverting { since: now });
                    out.push(UpgradeAction::Start {
                        target,
                        which: Which::Old,
                    });
                }
                Some(Step::Reverting { .. }) => {
                    // Never stop the new one before the old one is back (however long that
                    // takes: the outcome stays `RollingBack` and says so).
                    if self.healthy(target, Which::Old) {
                        self.steps.insert(target, Step::Reverted);
                        out.push(UpgradeAction::Stop {
                            target,
                            which: Which::New,
                        });
                    }
                }
                Some(Step::Reverted) | None => {}
            }
        }
    }

    /// How it ended, or that it has not.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Each target's step.
    pub fn steps(&self) -> &BTreeMap<NodeId, Step> {
        &self.steps
    }

    /// The targets whose new instance failed within the failure budget (held), and why.
    pub fn failed(&self) -> &BTreeMap<NodeId, String> {
        &self.failed
    }

    /// The configuration in force (the wave clamped to 1..=[`MAX_WAVE`]).
    pub fn config(&self) -> UpgradeConfig {
        self.config
    }
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
fn clip(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests;
