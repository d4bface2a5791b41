//! What a deployer keeps of its own deployments across a restart (issue #15): the newest signed
//! record of each, its targets with their last phase, the variants given, the upgrade (under
//! way or finished) and the facts of the providers it targets. The node writes this to its data
//! dir whenever it changes and hands it back through [`FleetState::restore`] at start, together
//! with the contracts the ledger still shows open for this node as customer.
//!
//! The file is the node's own, but it is read as if it came from outside: every record must
//! verify, be signed by this node and pass the checks of a received record (an expired one is
//! kept and re-signed at the next tick: the deployer is its author); every table is bounded;
//! a bad entry is dropped and counted, never trusted.
//!
//! An upgrade under way at the restart **resumes**: the machine's steps and what it saw are
//! saved with it, its deadlines are wall-clock times, and the placements of both images are
//! rebuilt from the ledger, so the next tick carries on (a health timeout that passed while the
//! deployer was down rolls it back, as it would have).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Assigned, Effect, FleetState, OwnDeployment};
use crate::FleetError;
use crate::limits::{MAX_REASON_LEN, MAX_REPLICAS};
use crate::message::FleetMessage;
use crate::plan::{TargetPhase, TargetStatus};
use crate::record::{Deployment, encode_deployment};
use crate::selector::ProviderFacts;
use crate::upgrade::Upgrade;
use agora_market::identity::{NodeId, Signer, Timestamp};
use agora_market::ids::DeploymentId;

/// One of the deployer's deployments as saved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedDeployment {
    /// The newest signed version.
    pub record: Deployment,
    /// Its targets and their last known phase.
    #[serde(default)]
    pub targets: Vec<(NodeId, TargetStatus)>,
    /// With variants: the variant each target was given.
    #[serde(default)]
    pub variants: Vec<(NodeId, Assigned)>,
    /// The last upgrade (under way or finished).
    #[serde(default)]
    pub upgrade: Option<Upgrade>,
    /// Each target's own count of its replica's restarts, as it last reported it (a target
    /// reports only when the count changes, so a deployer that forgot it would show 0).
    #[serde(default)]
    pub restarts: Vec<(NodeId, u32)>,
    /// Why each target's runtime last restarted its replica, as the target reported it.
    #[serde(default)]
    pub failures: Vec<(NodeId, String)>,
}

/// Everything the deployer saves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedFleet {
    /// Its deployments.
    #[serde(default)]
    pub deployments: Vec<SavedDeployment>,
    /// The facts of the providers its deployments target (`last_seen` is not saved: a
    /// restored provider counts as seen at the restart).
    #[serde(default)]
    pub providers: Vec<ProviderFacts>,
}

/// A contract the ledger shows open for this node as customer, as the restore needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveContract {
    /// The provider hosting it.
    pub target: NodeId,
    /// The image it carries.
    pub image: String,
    /// The phase the ledger shows.
    pub phase: TargetPhase,
}

/// What a restore kept and dropped (logged by the node, and shown by its tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Deployments restored.
    pub kept: usize,
    /// Deployments dropped: bad signature, another deployer, out of bounds, duplicate, or over
    /// the `max_own` bound.
    pub dropped: usize,
    /// Targets restored from the file.
    pub targets: usize,
    /// Targets found only on the ledger (an open contract of the deployment's image) and
    /// adopted.
    pub adopted: usize,
    /// Targets of the file with no open contract any more, forgotten (the plan places again).
    pub gone: usize,
    /// Entries dropped inside kept deployments (targets, variants, an implausible upgrade,
    /// provider facts out of bounds).
    pub bad_entries: usize,
    /// Upgrades still under way, resumed.
    pub upgrades_resumed: usize,
}

/// How long after a restore the plan waits for a target whose provider facts were not saved
/// to offer itself again, ms (a push target offers every `candidate_refresh_ms`, a pull target
/// at every poll), rather than releasing it as unknown.
pub const RESTORE_GRACE_MS: u64 = 30_000;

fn reason_ok(reason: &Option<String>) -> bool {
    reason.as_ref().is_none_or(|r| r.len() <= MAX_REASON_LEN)
}

/// An upgrade read back is resumed only if it is about this record's images and within bounds.
fn plausible(up: &Upgrade, record: &Deployment) -> bool {
    let body = &record.body;
    let images = if up.of_variants() {
        // The record names the variants before or after, and each target moves between the
        // images of one variant of both lists.
        let lists = up.from_variants.len() == up.to_variants.len()
            && up.to_variants.len() <= crate::MAX_VARIANTS
            && (body.variants == up.from_variants || body.variants == up.to_variants);
        lists
            && up.target_images().len() == up.steps().len()
            && up.target_images().values().all(|(old, new)| {
                up.from_variants
                    .iter()
                    .zip(&up.to_variants)
                    .any(|(f, t)| f.name == t.name && f.image == *old && t.image == *new)
            })
    } else {
        match &body.previous_image {
            Some(prev) => {
                (up.to == body.image && up.from == *prev)
                    || (up.from == body.image && up.to == *prev)
            }
            None => false,
        }
    };
    images
        && up.steps().len() <= MAX_REPLICAS
        && up.seen_len() <= 2 * MAX_REPLICAS
        && up.longest_reason() <= MAX_REASON_LEN
        && up.failed_within_budget()
}

impl<S: Signer> FleetState<S> {
    /// What to save of this node's own deployments (the node writes it when it changes).
    pub fn saved(&self) -> SavedFleet {
        let mut wanted = BTreeSet::new();
        let deployments = self
            .own
            .values()
            .map(|own| {
                wanted.extend(own.targets.keys().copied());
                if let Some(up) = &own.upgrade {
                    wanted.extend(up.steps().keys().copied());
                }
                SavedDeployment {
                    record: own.record.clone(),
                    targets: own.targets.iter().map(|(t, s)| (*t, s.clone())).collect(),
                    variants: own.variants.iter().map(|(t, a)| (*t, a.clone())).collect(),
                    upgrade: own.upgrade.clone(),
                    restarts: own.restarts.iter().map(|(t, n)| (*t, *n)).collect(),
                    failures: own.failures.iter().map(|(t, f)| (*t, f.clone())).collect(),
                }
            })
            .collect();
        let providers = wanted
            .iter()
            .filter_map(|n| self.providers.get(n))
            .map(|p| ProviderFacts {
                last_seen: 0,
                ..p.clone()
            })
            .collect();
        SavedFleet {
            deployments,
            providers,
        }
    }

    /// Takes back what [`FleetState::saved`] returned before a restart, checking every entry
    /// (see the module docs), and rebuilds each deployment's targets with `live`, the contracts
    /// the ledger shows open for this node: a saved target with an open contract of its image
    /// keeps its saved phase (or the ledger's, if further), one whose contract is gone is
    /// forgotten (unless its placement was still contracting: its auction may yet end in a
    /// contract), and an open contract of the deployment's image on a provider not saved is
    /// adopted as a target. Returns the announcements of the restored records (push targets
    /// and pollers hear them again) and what was kept and dropped.
    pub fn restore(
        &mut self,
        now: Timestamp,
        saved: SavedFleet,
        live: &[LiveContract],
    ) -> (RestoreReport, Vec<Effect>) {
        let mut report = RestoreReport::default();
        let mut out = Vec::new();
        // The newest valid version of each deployment.
        let mut best: BTreeMap<DeploymentId, SavedDeployment> = BTreeMap::new();
        for sd in saved.deployments {
            match self.check_saved(now, &sd.record) {
                Ok(id) => {
                    // Two entries for one deployment: the older version is dropped.
                    let older = best
                        .get(&id)
                        .is_some_and(|b| b.record.body.version >= sd.record.body.version);
                    if best.contains_key(&id) {
                        report.dropped += 1;
                    }
                    if !older {
                        best.insert(id, sd);
                    }
                }
                Err(e) => {
                    report.dropped += 1;
                    tracing::warn!(error = %e, "saved deployment refused");
                }
            }
        }
        // Provider facts are taken back only for the targets the file names.
        let mut targeted: BTreeSet<NodeId> = BTreeSet::new();
        for sd in best.values() {
            targeted.extend(sd.targets.iter().map(|(t, _)| *t));
            if let Some(up) = &sd.upgrade {
                targeted.extend(up.steps().keys().copied());
            }
        }
        for (id, sd) in best {
            if self.own.contains_key(&id) || self.own.len() >= self.config.max_own {
                report.dropped += 1;
                tracing::warn!(deployment = %id.short(), max = self.config.max_own,
                    "saved deployment not restored: already known or over the max_own bound");
                continue;
            }
            let own = restore_one(sd, live, &mut report);
            if !own.record.body.deleted && own.record.body.expires_at > now {
                out.push(Effect::Broadcast(FleetMessage::Announce(Box::new(
                    own.record.clone(),
                ))));
            }
            self.own.insert(id, own);
            report.kept += 1;
        }
        for facts in saved.providers {
            if !targeted.contains(&facts.node)
                || facts.candidate().check().is_err()
                || self.providers.contains_key(&facts.node)
            {
                report.bad_entries += 1;
                continue;
            }
            self.provider_seen(ProviderFacts {
                last_seen: now,
                ..facts
            });
        }
        if report.kept > 0 {
            self.restored_at = Some(now);
            self.dirty = true;
        }
        (report, out)
    }

    /// The checks of a received record, for one of this node's own: signature, author, bounds
    /// and size; an expired record is accepted (re-signed at the next tick).
    fn check_saved(&self, now: Timestamp, record: &Deployment) -> Result<DeploymentId, FleetError> {
        let id = record.body.id();
        record.verify().map_err(|e| FleetError::BadRecord {
            deployment: id,
            reason: e.to_string(),
        })?;
        if record.body.deployer != self.me {
            return Err(FleetError::BadRecord {
                deployment: id,
                reason: "signed by another node".into(),
            });
        }
        match record.body.check(now) {
            Ok(()) | Err(FleetError::Expired { .. }) => {}
            Err(e) => return Err(e),
        }
        encode_deployment(record)?;
        Ok(id)
    }
}

/// One saved deployment, its targets rebuilt with the ledger's open contracts.
fn restore_one(
    sd: SavedDeployment,
    live: &[LiveContract],
    report: &mut RestoreReport,
) -> OwnDeployment {
    let body = &sd.record.body;
    let upgrade = sd.upgrade.filter(|up| {
        let ok = plausible(up, &sd.record);
        if !ok {
            report.bad_entries += 1;
        }
        ok
    });
    let under_way = upgrade.as_ref().is_some_and(|u| !u.outcome().is_final());
    if under_way {
        report.upgrades_resumed += 1;
    }
    let images: BTreeSet<&str> = body.images().into_iter().collect();
    let mut variants = BTreeMap::new();
    for (t, a) in sd.variants.into_iter().take(MAX_REPLICAS) {
        let known = body
            .variants
            .iter()
            .any(|v| v.name == a.variant && v.image == a.image);
        if known {
            variants.insert(t, a);
        } else {
            report.bad_entries += 1;
        }
    }
    let image_of = |t: &NodeId, variants: &BTreeMap<NodeId, Assigned>| {
        variants
            .get(t)
            .map_or(body.image.clone(), |a| a.image.clone())
    };
    let open = |t: &NodeId, image: &str| {
        live.iter()
            .find(|c| c.target == *t && c.image == image)
            .map(|c| c.phase)
    };
    let mut targets = BTreeMap::new();
    for (t, status) in sd.targets {
        if targets.len() >= MAX_REPLICAS || !reason_ok(&status.reason) {
            report.bad_entries += 1;
            continue;
        }
        if under_way {
            // The upgrade owns the targets until it ends; its own steps say what runs.
            targets.insert(t, status);
            report.targets += 1;
            continue;
        }
        match open(&t, &image_of(&t, &variants)) {
            Some(phase) => {
                let phase = if status.phase == TargetPhase::Failed {
                    TargetPhase::Failed
                } else {
                    status.phase.max(phase)
                };
                targets.insert(
                    t,
                    TargetStatus {
                        phase,
                        reason: status.reason,
                    },
                );
                report.targets += 1;
            }
            None if status.phase == TargetPhase::Contracting => {
                targets.insert(t, status);
                report.targets += 1;
            }
            None => {
                variants.remove(&t);
                report.gone += 1;
            }
        }
    }
    if !under_way && !body.deleted {
        for c in live {
            if targets.len() >= MAX_REPLICAS || targets.contains_key(&c.target) {
                continue;
            }
            let fits = match body.variants.iter().find(|v| v.image == c.image) {
                Some(v) => {
                    variants.insert(
                        c.target,
                        Assigned {
                            variant: v.name.clone(),
                            image: v.image.clone(),
                        },
                    );
                    true
                }
                None => body.variants.is_empty() && images.contains(c.image.as_str()),
            };
            if fits {
                targets.insert(
                    c.target,
                    TargetStatus {
                        phase: c.phase,
                        reason: None,
                    },
                );
                report.adopted += 1;
            }
        }
    }
    variants.retain(|t, _| targets.contains_key(t));
    // Counts only of targets kept; a count of 0 is never saved, so one is a bad entry.
    let mut restarts = BTreeMap::new();
    for (t, n) in sd.restarts.into_iter().take(MAX_REPLICAS) {
        if n > 0 && targets.contains_key(&t) {
            restarts.insert(t, n);
        } else if n == 0 {
            report.bad_entries += 1;
        }
    }
    let mut failures = BTreeMap::new();
    for (t, f) in sd.failures.into_iter().take(MAX_REPLICAS) {
        if !restarts.contains_key(&t) {
            continue;
        }
        if f.len() <= MAX_REASON_LEN {
            failures.insert(t, f);
        } else {
            report.bad_entries += 1;
        }
    }
    OwnDeployment {
        record: sd.record,
        targets,
        avoid: BTreeMap::new(),
        upgrade,
        variants,
        assigned_over: BTreeMap::new(),
        mask_changes: BTreeMap::new(),
        restarts,
        failures,
        acted: BTreeMap::new(),
        sent: BTreeMap::new(),
    }
}

/// True while a restored deployment waits for a target whose facts are unknown to offer
/// itself again ([`RESTORE_GRACE_MS`]): the plan would release it as unknown.
pub(super) fn in_grace(
    restored_at: Option<Timestamp>,
    providers: &BTreeMap<NodeId, ProviderFacts>,
    own: &OwnDeployment,
    now: Timestamp,
) -> bool {
    restored_at.is_some_and(|at| now < at.saturating_add(RESTORE_GRACE_MS))
        && own.targets.keys().any(|t| !providers.contains_key(t))
}
