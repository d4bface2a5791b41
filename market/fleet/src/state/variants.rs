//! The deployer side of variants: after the plan has chosen the targets, give each target one
//! variant ([`crate::variant::assign`]) and turn the changes into placements and
//! releases. A target that is given a variant for the first time is placed with its image; a
//! target moved to another variant (a rebalance after targets joined or left) has its old
//! variant's contract released and the new one placed in the same tick: the release is one
//! ledger transaction, the new contract an auction (its window alone is 2 s), a contract and a
//! migration, so the old instance ends first (an ordering of latencies, not a handshake: the
//! process test `fleet_variants` checks at every poll that no node runs two variants).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Effect, OwnDeployment};
use crate::plan::{ReleaseReason, TargetPhase, TargetStatus};
use crate::selector::ProviderFacts;
use crate::variant::{Mask, assign, eligibility};
use agora_market::Timestamp;
use agora_market::identity::NodeId;
use agora_market::ids::DeploymentId;

/// How long a change in the variants a known target may run must hold before the assignment
/// follows it (THREATS D1): a target that flips its labels (or its facts) would otherwise move
/// itself and, to keep the balance, honest targets between variants at each flip. A target
/// joining, one leaving, and a change of the deployment's variants count at once.
pub const VARIANT_SETTLE_MS: u64 = 30_000;

/// The variant a target was given, and that variant's image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// The variant's name.
    pub variant: String,
    /// Its image (what the target's contract carries).
    pub image: String,
}

/// Gives every target of `own` a variant and emits the placements and releases that follow.
pub(super) fn rebalance(
    id: DeploymentId,
    own: &mut OwnDeployment,
    providers: &BTreeMap<NodeId, ProviderFacts>,
    now: Timestamp,
    out: &mut Vec<Effect>,
) {
    let body = &own.record.body;
    let seen: BTreeMap<NodeId, Mask> = own
        .targets
        .keys()
        .filter_map(|t| {
            let p = providers.get(t)?;
            Some((*t, eligibility(&body.variants, p, &body.needs)))
        })
        .collect();
    // A known target's change counts once it held for `VARIANT_SETTLE_MS`; until then it is
    // assigned over what it admitted before.
    own.mask_changes.retain(|t, _| seen.contains_key(t));
    let mut eligible = BTreeMap::new();
    for (t, mask) in seen {
        let Some(&before) = own.assigned_over.get(&t).filter(|b| **b != mask) else {
            own.mask_changes.remove(&t);
            eligible.insert(t, mask);
            continue;
        };
        let since = match own.mask_changes.get(&t) {
            Some(&(m, since)) if m == mask => since,
            _ => {
                own.mask_changes.insert(t, (mask, now));
                now
            }
        };
        if now >= since.saturating_add(VARIANT_SETTLE_MS) {
            own.mask_changes.remove(&t);
            eligible.insert(t, mask);
        } else {
            eligible.insert(t, before);
        }
    }
    // Nothing changed since the last assignment (the same targets, each admitting the same
    // variants, each given one): it would give the same answer, so skip its cost.
    if eligible == own.assigned_over && eligible.keys().all(|t| own.variants.contains_key(t)) {
        return;
    }
    let previous: BTreeMap<NodeId, usize> = own
        .variants
        .iter()
        .filter_map(|(t, a)| {
            let i = body
                .variants
                .iter()
                .position(|v| v.name == a.variant && v.image == a.image)?;
            Some((*t, i))
        })
        .collect();
    let assignment = assign(&eligible, &previous, body.variants.len());
    own.assigned_over = eligible;
    for (target, index) in assignment {
        let Some(variant) = body.variants.get(index) else {
            continue;
        };
        let given = Assigned {
            variant: variant.name.clone(),
            image: variant.image.clone(),
        };
        match own.variants.get(&target) {
            Some(a) if *a == given => continue,
            Some(a) => {
                tracing::debug!(deployment = %id.short(), target = %target.short(),
                    from = %a.variant, to = %given.variant, "fleet variant rebalanced");
                out.push(Effect::Release {
                    deployment: id,
                    target,
                    image: a.image.clone(),
                    reason: ReleaseReason::Rebalanced,
                });
            }
            None => {}
        }
        own.targets.insert(
            target,
            TargetStatus {
                phase: TargetPhase::Contracting,
                reason: None,
            },
        );
        out.push(Effect::Place {
            deployment: id,
            target,
            image: given.image.clone(),
            needs: body.needs.clone(),
            max_price: body.max_price_per_replica,
            duration_ms: body.duration_ms,
        });
        own.variants.insert(target, given);
    }
}

#[cfg(test)]
mod tests;
