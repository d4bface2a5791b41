//! Variants of a deployment's service (issue #16, "variants and diversity"): different images
//! for the same job, each with a constraint (`b` only where `iface=ble`), and the pure
//! assignment of one variant to every target.
//!
//! [`assign`] picks, per target, one variant whose constraint admits it, so that the counts per
//! variant are as equal as the constraints allow (the sum of squared counts is minimal, which
//! also makes the largest count as small and the smallest as large as they can be), and, among
//! those balanced assignments, the one that changes the variant of the fewest targets that
//! already had one. It is a min-cost flow (targets → variants → sink, a convex cost per
//! variant's count and a unit cost per moved target) solved by successive shortest paths on
//! the graph of at most [`MAX_VARIANTS`] variants, so a round costs O(targets² × variants).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::FleetError;
use crate::limits::MAX_CID_LEN;
use crate::record::is_token;
use crate::selector::{ProviderFacts, Selector};
use agora_market::identity::NodeId;
use agora_market::resources::Resources;

/// Most variants one deployment may name (checked when a record is decoded).
pub const MAX_VARIANTS: usize = 8;
/// Longest variant name.
pub const MAX_VARIANT_NAME_LEN: usize = 32;

/// One variant of a deployment's service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Variant {
    /// Its name (1..=32 of `a-z 0-9 - _ .`), unique in the deployment.
    pub name: String,
    /// CID text of its image; no two variants share one.
    pub image: String,
    /// Which of the deployment's targets may run it (empty: every one).
    #[serde(default)]
    pub selector: Selector,
}

/// Which variants a target may run: bit `i` for variant `i`.
pub type Mask = u8;

impl Variant {
    /// Parses `NAME=CID[:SELECTOR]`, e.g. `b=bafy…:iface=ble` or `a=bafy…`.
    pub fn parse(text: &str) -> Result<Variant, FleetError> {
        let bad = |hint: &'static str| FleetError::BadVariant {
            text: text.chars().take(80).collect(),
            hint,
        };
        let (name, rest) = text
            .split_once('=')
            .ok_or_else(|| bad("write NAME=CID or NAME=CID:SELECTOR, e.g. b=bafy…:iface=ble"))?;
        let (image, selector) = match rest.split_once(':') {
            Some((image, sel)) => (image, Selector::parse(sel)?),
            None => (rest, Selector::default()),
        };
        let variant = Variant {
            name: name.trim().to_ascii_lowercase(),
            image: image.trim().to_string(),
            selector,
        };
        variant.check().map_err(bad)?;
        Ok(variant)
    }

    /// Checks one variant's bounds; `Err` carries the accepted form.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.name.is_empty() || self.name.len() > MAX_VARIANT_NAME_LEN || !is_token(&self.name) {
            return Err("variant names: 1 to 32 characters of a-z, 0-9, '-', '_' or '.'");
        }
        if self.image.is_empty()
            || self.image.len() > MAX_CID_LEN
            || !self.image.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err("a variant's image: a CID in text form (base32 or base58)");
        }
        self.selector.check()
    }
}

/// Checks a deployment's variants (from outside): at most [`MAX_VARIANTS`], each bounded,
/// names and images unique, and the record's `image` the first variant's (readers that know no
/// variants see that one).
pub fn check_variants(variants: &[Variant], image: &str) -> Result<(), &'static str> {
    if variants.is_empty() {
        return Ok(());
    }
    if variants.len() > MAX_VARIANTS {
        return Err("at most 8 variants");
    }
    for (i, v) in variants.iter().enumerate() {
        v.check()?;
        if variants[..i].iter().any(|w| w.name == v.name) {
            return Err("variant names are unique");
        }
        if variants[..i].iter().any(|w| w.image == v.image) {
            return Err("each variant has its own image");
        }
    }
    if variants[0].image != image {
        return Err("the record's image is its first variant's");
    }
    Ok(())
}

/// The variants whose constraint admits provider `p` for a replica needing `needs`.
pub fn eligibility(variants: &[Variant], p: &ProviderFacts, needs: &Resources) -> Mask {
    variants
        .iter()
        .take(MAX_VARIANTS)
        .enumerate()
        .filter(|(_, v)| v.selector.admits(p, needs))
        .fold(0, |m, (i, _)| m | (1 << i))
}

/// Assigns one of `variants` (at most [`MAX_VARIANTS`]) to every target of `eligible` whose mask
/// admits one (the others get none): counts as equal as the masks allow, then as few targets
/// as possible moved off their `previous` variant. Pure and deterministic.
pub fn assign(
    eligible: &BTreeMap<NodeId, Mask>,
    previous: &BTreeMap<NodeId, usize>,
    variants: usize,
) -> BTreeMap<NodeId, usize> {
    let k = variants.min(MAX_VARIANTS);
    let nodes: Vec<FlowNode> = eligible
        .iter()
        .map(|(n, m)| FlowNode {
            node: *n,
            mask: *m & full_mask(k),
            previous: previous.get(n).copied().filter(|v| *v < k),
            must: true,
        })
        .filter(|f| f.mask != 0)
        .collect();
    let rounds = nodes.len();
    flow(&nodes, k, rounds)
        .into_iter()
        .zip(&nodes)
        .filter_map(|(v, f)| v.map(|v| (f.node, v)))
        .collect()
}

/// Chooses up to `want` new targets among `candidates` (in order of preference) to join the
/// `kept` ones so that the variants can be as balanced as the constraints allow (a deployment
/// with a replica count and variants: which providers to add matters, not only which variant
/// each runs). Among equally good choices the earlier candidates win.
pub fn choose(
    kept: &BTreeMap<NodeId, Mask>,
    candidates: &[(NodeId, Mask)],
    want: usize,
    variants: usize,
) -> Vec<NodeId> {
    let k = variants.min(MAX_VARIANTS);
    let full = full_mask(k);
    let mut nodes: Vec<FlowNode> = kept
        .iter()
        .filter(|(_, m)| **m & full != 0)
        .map(|(n, m)| FlowNode {
            node: *n,
            mask: *m & full,
            previous: None,
            must: true,
        })
        .collect();
    let must = nodes.len();
    nodes.extend(
        candidates
            .iter()
            .filter(|(n, m)| *m & full != 0 && !kept.contains_key(n))
            .map(|(n, m)| FlowNode {
                node: *n,
                mask: *m & full,
                previous: None,
                must: false,
            }),
    );
    flow(&nodes, k, must.saturating_add(want))
        .into_iter()
        .zip(&nodes)
        .filter(|(v, f)| v.is_some() && !f.must)
        .map(|(_, f)| f.node)
        .collect()
}

fn full_mask(k: usize) -> Mask {
    if k >= 8 { Mask::MAX } else { (1 << k) - 1 }
}

/// One target (or candidate) in the flow.
struct FlowNode {
    node: NodeId,
    mask: Mask,
    previous: Option<usize>,
    /// Must be assigned (a kept target) rather than may be (a candidate).
    must: bool,
}

/// The min-cost flow of `rounds` units: every `must` node first, then candidates; counts as
/// balanced as the masks allow; then the fewest nodes moved off their previous variant.
fn flow(nodes: &[FlowNode], k: usize, rounds: usize) -> Vec<Option<usize>> {
    let n = nodes.len();
    // A balance step (the sum of squares changes by an even number) outweighs every move, and
    // taking a `must` node outweighs any balance (a path's sink cost is at most (2n+1)·big).
    let big = i64::try_from(n).unwrap_or(i64::MAX / 64).saturating_add(1);
    let must = big.saturating_mul(2 * big + 2);
    let cost = |i: usize, v: usize| -> i64 { i64::from(nodes[i].previous.is_some_and(|p| p != v)) };
    let mut at: Vec<Option<usize>> = vec![None; n];
    let mut count = [0i64; MAX_VARIANTS];
    let (source, sink) = (k, k + 1);
    for _ in 0..rounds.min(n) {
        // Edges of the residual graph over variants: source → v (an unassigned target takes
        // v), u → v (a target on u moves to v), v → sink (v's count grows: convex cost).
        let mut edge: Vec<Vec<Option<(i64, usize)>>> = vec![vec![None; k + 2]; k + 2];
        for (i, f) in nodes.iter().enumerate() {
            let from = at[i].unwrap_or(source);
            for v in (0..k).filter(|v| f.mask & (1 << v) != 0 && Some(*v) != at[i]) {
                let c = match at[i] {
                    Some(u) => cost(i, v) - cost(i, u),
                    None if f.must => cost(i, v) - must,
                    None => cost(i, v),
                };
                if edge[from][v].is_none_or(|(best, _)| c < best) {
                    edge[from][v] = Some((c, i));
                }
            }
        }
        for (v, c) in count.iter().enumerate().take(k) {
            edge[v][sink] = Some(((2 * c + 1) * big, usize::MAX));
        }
        // Bellman-Ford from the source (no negative cycle: every round is a shortest path).
        let mut dist: Vec<Option<i64>> = vec![None; k + 2];
        let mut pred = vec![usize::MAX; k + 2];
        dist[source] = Some(0);
        for _ in 0..k + 2 {
            let mut changed = false;
            for u in 0..k + 2 {
                let Some(du) = dist[u] else { continue };
                for v in 0..k + 2 {
                    if let Some((c, _)) = edge[u][v]
                        && dist[v].is_none_or(|dv| du + c < dv)
                    {
                        dist[v] = Some(du + c);
                        pred[v] = u;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        if dist[sink].is_none() {
            break;
        }
        // Walk back from the sink, moving one target along each edge.
        let mut path = Vec::new();
        let mut v = sink;
        while v != source && path.len() <= k + 1 {
            let u = pred[v];
            if u == usize::MAX {
                break;
            }
            path.push((u, v));
            v = u;
        }
        if v != source {
            break; // Not reached: a bug guard, never a panic.
        }
        for (u, v) in path {
            if v == sink {
                count[u] += 1;
            } else if let Some((_, i)) = edge[u][v] {
                at[i] = Some(v);
            }
        }
    }
    at
}

/// Targets per variant of an assignment (index → count), for tests and views.
pub fn counts(assignment: &BTreeMap<NodeId, usize>, variants: usize) -> Vec<usize> {
    let mut out = vec![0; variants];
    for v in assignment.values() {
        if let Some(c) = out.get_mut(*v) {
            *c += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;
