//! The handover rule: when "customer unreachable" becomes a ledger fact.
//!
//! Only committee arbitrators' observations count, one (the latest) per arbitrator. Handover is
//! attested when at least a BFT quorum (`⌊2n/3⌋ + 1`, i.e. `2f+1` for `n = 3f+1`) of the
//! contract's committee currently report the customer unreachable, each report was recorded
//! within the window, and the quorum agrees it has been unreachable for the required time. The
//! provider is never on the committee, so it can never trigger handover alone; a partition
//! between customer and provider only leaves the arbitrators reporting "reachable".

use std::collections::BTreeMap;

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

/// What an arbitrator observed about a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// The subject has not answered since this time.
    Unreachable {
        /// First failed probe, by the arbitrator's clock (ms).
        since: Timestamp,
    },
    /// The subject answered.
    Reachable,
}

/// One arbitrator's latest observation of one subject, as recorded by the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// What was observed.
    pub liveness: Liveness,
    /// Ledger time at which the attestation was applied.
    pub recorded_at: Timestamp,
}

/// A positive handover decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverDecision {
    /// Arbitrators whose observations make up the quorum (sorted).
    pub agreeing: Vec<NodeId>,
    /// The time since which the quorum agrees the subject is unreachable.
    pub unreachable_since: Timestamp,
}

/// Votes needed among `n` arbitrators: more than two thirds.
pub fn quorum(n: usize) -> usize {
    n * 2 / 3 + 1
}

/// Applies the handover rule for one contract's committee.
pub fn evaluate(
    committee: &[NodeId],
    observations: &BTreeMap<NodeId, Observation>,
    now: Timestamp,
    window_ms: u64,
    unreachable_for_ms: u64,
) -> Option<HandoverDecision> {
    let fresh = |obs: &Observation| obs.recorded_at.saturating_add(window_ms) >= now;
    let (since, votes) = quorum_since(committee, observations, fresh)?;
    if now < since.saturating_add(unreachable_for_ms) {
        return None;
    }
    let mut agreeing: Vec<NodeId> = votes
        .iter()
        .filter(|(s, _)| *s <= since)
        .map(|(_, m)| *m)
        .collect();
    agreeing.sort();
    Some(HandoverDecision {
        agreeing,
        unreachable_since: since,
    })
}

/// The earliest time at which [`evaluate`] can decide with the observations recorded so far:
/// a quorum already reports the subject unreachable, and the required time has not run yet.
/// `None` when no quorum reports it (only new attestations can change that, and those are
/// transactions that make a block anyway) or when a vote would be stale by then. A proposer
/// uses this to time the block that carries the decision instead of waiting for its regular
/// interval, which over slow links cost up to one interval of extra outage.
pub fn decidable_at(
    committee: &[NodeId],
    observations: &BTreeMap<NodeId, Observation>,
    window_ms: u64,
    unreachable_for_ms: u64,
) -> Option<Timestamp> {
    let (since, votes) = quorum_since(committee, observations, |_| true)?;
    let due = since.saturating_add(unreachable_for_ms);
    // Every vote that makes up the quorum must still be fresh when the block is due.
    let stale = votes.iter().filter(|(s, _)| *s <= since).any(|(_, m)| {
        observations
            .get(m)
            .is_none_or(|o| o.recorded_at.saturating_add(window_ms) < due)
    });
    (!stale).then_some(due)
}

/// The quorum's agreed start of the outage (`needed` members saw the subject down since at
/// least this) and every counted vote (sorted by `since`), among members whose observation
/// passes `fresh`.
fn quorum_since(
    committee: &[NodeId],
    observations: &BTreeMap<NodeId, Observation>,
    fresh: impl Fn(&Observation) -> bool,
) -> Option<(Timestamp, Vec<(Timestamp, NodeId)>)> {
    let mut members: Vec<NodeId> = committee.to_vec();
    members.sort();
    members.dedup();
    let needed = quorum(members.len());
    let mut votes: Vec<(Timestamp, NodeId)> = members
        .iter()
        .filter_map(|m| {
            let obs = observations.get(m)?;
            match obs.liveness {
                Liveness::Unreachable { since } if fresh(obs) => Some((since, *m)),
                _ => None,
            }
        })
        .collect();
    if votes.len() < needed {
        return None;
    }
    votes.sort();
    let (since, _) = *votes.get(needed.checked_sub(1)?)?;
    Some((since, votes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_market::{KeySigner, Signer};

    fn ids(n: u64) -> Vec<NodeId> {
        (0..n)
            .map(|i| KeySigner::from_seed(100 + i).node_id())
            .collect()
    }

    fn down(since: Timestamp, at: Timestamp) -> Observation {
        Observation {
            liveness: Liveness::Unreachable { since },
            recorded_at: at,
        }
    }

    #[test]
    fn quorum_is_two_f_plus_one() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(7), 5);
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 3);
    }

    #[test]
    fn two_of_four_is_not_enough_three_is() {
        let c = ids(4);
        let mut obs = BTreeMap::new();
        obs.insert(c[0], down(1_000, 2_000));
        obs.insert(c[1], down(1_000, 2_000));
        assert_eq!(evaluate(&c, &obs, 10_000, 60_000, 5_000), None);
        obs.insert(c[2], down(1_500, 2_000));
        let d = evaluate(&c, &obs, 10_000, 60_000, 5_000).unwrap();
        assert_eq!(d.unreachable_since, 1_500);
        assert_eq!(d.agreeing.len(), 3);
    }

    #[test]
    fn the_decision_is_due_when_the_quorums_outage_has_lasted_long_enough() {
        let c = ids(4);
        let mut obs = BTreeMap::new();
        obs.insert(c[0], down(1_000, 1_050));
        obs.insert(c[1], down(1_020, 1_100));
        assert_eq!(decidable_at(&c, &obs, 60_000, 1_000), None, "2 of 4");
        obs.insert(c[2], down(1_040, 1_100));
        assert_eq!(decidable_at(&c, &obs, 60_000, 1_000), Some(2_040));
        // Exactly then (and not a millisecond earlier) the rule decides.
        assert_eq!(evaluate(&c, &obs, 2_039, 60_000, 1_000), None);
        assert!(evaluate(&c, &obs, 2_040, 60_000, 1_000).is_some());
        // A vote that would be stale by then makes nothing due.
        assert_eq!(decidable_at(&c, &obs, 900, 1_000), None);
        // A reachable report among the quorum: nothing due.
        obs.insert(
            c[2],
            Observation {
                liveness: Liveness::Reachable,
                recorded_at: 1_100,
            },
        );
        assert_eq!(decidable_at(&c, &obs, 60_000, 1_000), None);
    }

    #[test]
    fn reachable_reports_block_handover() {
        let c = ids(4);
        let mut obs = BTreeMap::new();
        obs.insert(c[0], down(1_000, 2_000));
        obs.insert(c[1], down(1_000, 2_000));
        for m in &c[2..] {
            let reachable = Observation {
                liveness: Liveness::Reachable,
                recorded_at: 2_000,
            };
            obs.insert(*m, reachable);
        }
        assert_eq!(evaluate(&c, &obs, 10_000, 60_000, 5_000), None);
    }

    #[test]
    fn stale_reports_and_short_outages_do_not_count() {
        let c = ids(4);
        let mut obs = BTreeMap::new();
        for m in &c[..3] {
            obs.insert(*m, down(1_000, 2_000));
        }
        // Outage too short.
        assert_eq!(evaluate(&c, &obs, 5_000, 60_000, 5_000), None);
        // Reports older than the window.
        assert_eq!(evaluate(&c, &obs, 70_000, 60_000, 5_000), None);
        assert!(evaluate(&c, &obs, 6_000, 60_000, 5_000).is_some());
    }

    #[test]
    fn outsiders_do_not_count() {
        let c = ids(4);
        let outsiders = (0..10).map(|i| KeySigner::from_seed(900 + i).node_id());
        let obs: BTreeMap<_, _> = outsiders.map(|o| (o, down(0, 1_000))).collect();
        assert_eq!(evaluate(&c, &obs, 10_000, 60_000, 0), None);
    }

    /// f = (n - 1) / 3 colluding members attesting a live subject down since forever never
    /// trigger a handover, whatever the others say; with them, a handover needs at least
    /// quorum - f honest members seeing the subject down (threat A4/A5).
    #[test]
    fn f_colluding_liars_never_reach_the_quorum() {
        for n in 1..=31u64 {
            let c = ids(n);
            let n = c.len();
            let f = (n - 1) / 3;
            let liars: BTreeMap<_, _> = c[..f].iter().map(|m| (*m, down(0, 9_000))).collect();
            let mut obs = liars.clone();
            for m in &c[f..] {
                obs.insert(
                    *m,
                    Observation {
                        liveness: Liveness::Reachable,
                        recorded_at: 9_000,
                    },
                );
            }
            assert_eq!(evaluate(&c, &liars, 10_000, 60_000, 0), None, "n={n}");
            assert_eq!(evaluate(&c, &obs, 10_000, 60_000, 0), None, "n={n}");
            let honest_needed = quorum(n) - f;
            let mut obs = liars.clone();
            for m in &c[f..f + honest_needed - 1] {
                obs.insert(*m, down(0, 9_000));
            }
            assert_eq!(evaluate(&c, &obs, 10_000, 60_000, 0), None, "n={n}");
            obs.insert(c[f + honest_needed - 1], down(0, 9_000));
            assert!(evaluate(&c, &obs, 10_000, 60_000, 0).is_some(), "n={n}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Below quorum, any mix of down reports, reachable reports and outsiders never
            /// triggers; at or above quorum of fresh, old-enough down reports it always does.
            #[test]
            fn handover_iff_fresh_quorum(
                n in 1usize..10,
                down in 0usize..10,
                outsiders in 0usize..6,
                reachable in 0usize..10,
            ) {
                let c = ids(n as u64);
                let down = down.min(n);
                let mut obs = BTreeMap::new();
                for m in &c[..down] {
                    obs.insert(*m, down_at(100, 1_000));
                }
                for m in c[down..].iter().take(reachable) {
                    obs.insert(*m, Observation { liveness: Liveness::Reachable, recorded_at: 1_000 });
                }
                for i in 0..outsiders {
                    obs.insert(KeySigner::from_seed(500 + i as u64).node_id(), down_at(0, 1_000));
                }
                let decision = evaluate(&c, &obs, 2_000, 60_000, 500);
                prop_assert_eq!(decision.is_some(), down >= quorum(n));
                if let Some(d) = decision {
                    prop_assert!(d.agreeing.iter().all(|a| c.contains(a)));
                    prop_assert!(d.agreeing.len() >= quorum(n));
                }
            }
        }

        fn down_at(since: Timestamp, at: Timestamp) -> Observation {
            Observation {
                liveness: Liveness::Unreachable { since },
                recorded_at: at,
            }
        }
    }
}
