//! Dependency order across nodes: a deployment created with `after` (`agora deploy create
//! … --after NAME`) names other deployments of the same deployer that must be healthy before
//! it places a target, wherever their targets run. Like compose's `depends_on` with
//! `condition: service_healthy`, the condition holds at placement: a target placed once is
//! kept when a dependency later turns unhealthy. The reverse holds at deletion: a deployment
//! that live deployments wait for is not deleted until they are (the operator deletes the
//! dependents first), so nothing is left running without what it needs. A cycle is refused
//! when the deployment that would close it is created.

use std::collections::BTreeMap;

use super::OwnDeployment;
use crate::plan::TargetPhase;
use crate::record::{DeploymentBody, Replicas, deployment_id};
use agora_market::identity::NodeId;
use agora_market::ids::DeploymentId;

/// Why `body` may not place targets yet: one line per deployment in its `after` that is not
/// ready (empty: it may). Ready means deployed by `me`, not deleted, at least one target (with
/// a replica count, that many) and every target healthy.
pub(super) fn waiting_for(
    own: &BTreeMap<DeploymentId, OwnDeployment>,
    me: &NodeId,
    body: &DeploymentBody,
) -> Vec<String> {
    body.after
        .iter()
        .filter_map(|name| {
            let Some(dep) = own.get(&deployment_id(me, name)) else {
                return Some(format!("{name}: not deployed by this node"));
            };
            if dep.record.body.deleted {
                return Some(format!("{name}: deleted"));
            }
            let want = match dep.record.body.replicas {
                Replicas::Count(_) => dep.record.body.replicas.ceiling(),
                Replicas::All => 1,
            }
            .max(dep.targets.len());
            let healthy = dep
                .targets
                .values()
                .filter(|t| t.phase == TargetPhase::Healthy)
                .count();
            (healthy < want).then(|| format!("{name}: {healthy} of {want} targets healthy"))
        })
        .collect()
}

/// The live deployments of `own` that wait for the one called `name`, by name.
pub(super) fn needed_by(own: &BTreeMap<DeploymentId, OwnDeployment>, name: &str) -> Vec<String> {
    own.values()
        .map(|o| &o.record.body)
        .filter(|b| !b.deleted && b.after.iter().any(|a| a == name))
        .map(|b| b.name.clone())
        .collect()
}

/// The cycle that a deployment called `name` waiting for `after` would close among the live
/// deployments of `own` (`me`'s), as names from `name` back to it; `None` if it closes none.
pub(super) fn cycle(
    own: &BTreeMap<DeploymentId, OwnDeployment>,
    me: &NodeId,
    name: &str,
    after: &[String],
) -> Option<Vec<String>> {
    let edges = |n: &str| -> Vec<String> {
        if n == name {
            return after.to_vec();
        }
        own.get(&deployment_id(me, n))
            .filter(|o| !o.record.body.deleted)
            .map(|o| o.record.body.after.clone())
            .unwrap_or_default()
    };
    // Depth-first from `name` with an explicit stack of (node, its edges left); the path is
    // the stack's nodes. Each deployment is expanded once (at most `max_own` of them).
    let mut path: Vec<(String, Vec<String>)> = vec![(name.to_string(), edges(name))];
    let mut seen = std::collections::BTreeSet::from([name.to_string()]);
    while let Some((_, left)) = path.last_mut() {
        let Some(next) = left.pop() else {
            path.pop();
            continue;
        };
        if next == name {
            let mut cycle: Vec<String> = path.iter().map(|(n, _)| n.clone()).collect();
            cycle.push(next);
            return Some(cycle);
        }
        if seen.insert(next.clone()) {
            let e = edges(&next);
            path.push((next, e));
        }
    }
    None
}
