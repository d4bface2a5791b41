//! The fleet machine between several nodes, messages delivered by a tiny in-memory network.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;
use crate::record::{Replicas, Strategy};
use crate::selector::Selector;
use crate::upgrade::UpgradeTo;
use agora_market::identity::KeySigner;
use agora_market::resources::Interface;
use agora_market::test_utils::signer;

const T0: Timestamp = 1_000_000;
const IMAGE: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

fn facts(seed: u64, site: &str, now: Timestamp) -> ProviderFacts {
    let cap = Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        ..Resources::default()
    }
    .with_interface(Interface::LoRa, 1);
    ProviderFacts {
        node: signer(seed).node_id(),
        region: Some("eu".into()),
        labels: BTreeMap::from([("site".to_string(), site.to_string())]),
        free: cap.clone(),
        capacity: cap,
        last_seen: now,
    }
}

fn spec(strategy: Strategy, replicas: Replicas) -> DeploymentSpec {
    DeploymentSpec {
        name: "gw".into(),
        image: IMAGE.into(),
        selector: Selector::parse("site=a").unwrap(),
        variants: Vec::new(),
        needs: Resources {
            cpu_millis: 100,
            ..Resources::default()
        },
        replicas,
        strategy,
        max_price_per_replica: 50,
        duration_ms: 3_600_000,
        valid_for_ms: 600_000,
        after: Vec::new(),
    }
}

/// Node 1 deploys; nodes 2..=4 are `site=a`, node 5 is `site=b`.
struct Net {
    nodes: BTreeMap<NodeId, FleetState<KeySigner>>,
    /// Every effect a node had to carry out itself, with who.
    done: Vec<(NodeId, Effect)>,
}

impl Net {
    fn new(config: FleetConfig) -> Net {
        let mut net = Net::silent(config);
        for seed in 2..=5 {
            let site = if seed == 5 { "b" } else { "a" };
            net.input(T0, 1, Input::Provider(facts(seed, site, T0)))
                .unwrap();
        }
        net
    }

    /// Five nodes; the deployer knows nothing of the providers yet.
    fn silent(config: FleetConfig) -> Net {
        let mut nodes = BTreeMap::new();
        for seed in 1..=5 {
            let site = if seed == 5 { "b" } else { "a" };
            let mut m = FleetState::new(signer(seed), config);
            m.handle(T0, Input::SelfFacts(facts(seed, site, T0)))
                .unwrap();
            // The node feeds a deployer's balance before its records: node 1 is funded.
            m.handle(
                T0,
                Input::DeployerBalance {
                    deployer: signer(1).node_id(),
                    balance: 1_000,
                },
            )
            .unwrap();
            nodes.insert(signer(seed).node_id(), m);
        }
        Net {
            nodes,
            done: Vec::new(),
        }
    }

    fn join(&mut self, seed: u64, site: &str, now: Timestamp) {
        let mut m = FleetState::new(signer(seed), FleetConfig::default());
        m.handle(now, Input::SelfFacts(facts(seed, site, now)))
            .unwrap();
        self.nodes.insert(signer(seed).node_id(), m);
    }

    fn id(seed: u64) -> NodeId {
        signer(seed).node_id()
    }

    /// Feeds `input` to node `seed` and delivers every message that follows, in order.
    fn input(&mut self, now: Timestamp, seed: u64, input: Input) -> Result<(), FleetError> {
        let first = self
            .nodes
            .get_mut(&Net::id(seed))
            .unwrap()
            .handle(now, input)?;
        let mut queue: VecDeque<(NodeId, Effect)> =
            first.into_iter().map(|e| (Net::id(seed), e)).collect();
        while let Some((from, effect)) = queue.pop_front() {
            let deliveries: Vec<(NodeId, bool, FleetMessage)> = match &effect {
                Effect::Broadcast(msg) => self
                    .nodes
                    .keys()
                    .filter(|n| **n != from)
                    .map(|n| (*n, true, msg.clone()))
                    .collect(),
                Effect::Send { to, msg } => vec![(*to, false, msg.clone())],
                _ => {
                    self.done.push((from, effect));
                    continue;
                }
            };
            for (to, gossip, msg) in deliveries {
                let Some(node) = self.nodes.get_mut(&to) else {
                    continue;
                };
                let more = node.handle(now, Input::Remote { from, gossip, msg })?;
                queue.extend(more.into_iter().map(|e| (to, e)));
            }
        }
        Ok(())
    }

    fn tick_all(&mut self, now: Timestamp) {
        for seed in 1..=5 {
            self.input(now, seed, Input::Tick).unwrap();
        }
    }

    fn take(&mut self) -> Vec<(NodeId, Effect)> {
        std::mem::take(&mut self.done)
    }

    fn deployer(&self) -> &FleetState<KeySigner> {
        self.nodes.get(&Net::id(1)).unwrap()
    }

    fn deployer_mut(&mut self) -> &mut FleetState<KeySigner> {
        self.nodes.get_mut(&Net::id(1)).unwrap()
    }
}

fn prefetchers(done: &[(NodeId, Effect)]) -> Vec<NodeId> {
    done.iter()
        .filter(|(_, e)| matches!(e, Effect::Prefetch { image, .. } if image == IMAGE))
        .map(|(n, _)| *n)
        .collect()
}

#[test]
fn push_rollout_reports_and_delete() {
    let mut net = Net::new(FleetConfig::default());
    net.input(T0, 1, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    // Push: the matching providers fetch the image on the announcement, before any contract.
    let mut fetch = prefetchers(&net.take());
    fetch.sort();
    let mut want = vec![Net::id(2), Net::id(3), Net::id(4)];
    want.sort();
    assert_eq!(fetch, want);
    net.input(T0 + 10, 1, Input::Tick).unwrap();
    let placed: Vec<NodeId> = net
        .take()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Effect::Place { target, image, .. } if image == IMAGE => Some(target),
            _ => None,
        })
        .collect();
    assert_eq!(placed.len(), 3);
    for seed in 2..=4 {
        let phase = Input::LocalPhase {
            deployment: id,
            image: None,
            phase: TargetPhase::Running,
            reason: None,
        };
        net.input(T0 + 20, seed, phase.clone()).unwrap();
        net.input(T0 + 21, seed, phase).unwrap(); // reported once
    }
    let own = net.deployer().own(&id).unwrap();
    assert!(
        own.targets
            .values()
            .all(|s| s.phase == TargetPhase::Running)
    );
    assert_eq!(own.targets.len(), 3);
    net.input(T0 + 30, 1, Input::Delete(id)).unwrap();
    let done = net.take();
    let released = done
        .iter()
        .filter(|(n, e)| *n == Net::id(1) && matches!(e, Effect::Release { .. }))
        .count();
    let stopped = done
        .iter()
        .filter(|(_, e)| matches!(e, Effect::Stop { deployment } if *deployment == id))
        .count();
    assert_eq!((released, stopped), (3, 3));
    net.tick_all(T0 + 40);
    assert!(
        net.deployer().own(&id).is_none(),
        "deleted and released: forgotten"
    );
}

#[test]
fn targets_report_health_and_the_deployer_shows_it() {
    let mut net = Net::new(FleetConfig::default());
    net.input(T0, 1, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    net.input(T0 + 10, 1, Input::Tick).unwrap();
    let local = |phase, reason: Option<&str>| Input::LocalPhase {
        deployment: id,
        image: None,
        phase,
        reason: reason.map(str::to_string),
    };
    net.input(T0 + 20, 2, local(TargetPhase::Healthy, None))
        .unwrap();
    net.input(
        T0 + 20,
        3,
        local(
            TargetPhase::Unhealthy,
            Some("the guest's health export returned 2"),
        ),
    )
    .unwrap();
    let view = net.deployer().status(&id).unwrap();
    let of = |seed| {
        view.targets
            .iter()
            .find(|t| t.node == Net::id(seed))
            .map(|t| (t.phase.clone(), t.reason.clone()))
    };
    assert_eq!(of(2), Some(("healthy".into(), None)));
    assert_eq!(
        of(3),
        Some((
            "unhealthy".into(),
            Some("the guest's health export returned 2".into())
        ))
    );
    assert_eq!(view.summary.get("healthy"), Some(&1));
    assert_eq!(view.summary.get("unhealthy"), Some(&1));
    // The ledger's coarser "running" does not hide a target's own verdict, and an unhealthy
    // target is not released by the plan (it is not failed).
    net.input(
        T0 + 30,
        1,
        Input::TargetProgress {
            deployment: id,
            target: Net::id(3),
            image: IMAGE.into(),
            phase: TargetPhase::Running,
            reason: None,
        },
    )
    .unwrap();
    // (The deployer's driver applies ledger facts only when they advance: `TargetProgress`
    // itself overwrites, so the node's `advances` rule is what keeps the verdict.)
    net.input(
        T0 + 40,
        3,
        local(TargetPhase::Unhealthy, Some("not answering")),
    )
    .unwrap();
    net.input(T0 + 50, 1, Input::Tick).unwrap();
    assert!(
        !net.take()
            .iter()
            .any(|(_, e)| matches!(e, Effect::Release { .. })),
        "an unhealthy target is reported, not released"
    );
    let own = net.deployer().own(&id).unwrap();
    assert_eq!(own.targets[&Net::id(3)].phase, TargetPhase::Unhealthy);
    // Recovery is reported too.
    net.input(T0 + 60, 3, local(TargetPhase::Healthy, None))
        .unwrap();
    let own = net.deployer().own(&id).unwrap();
    assert_eq!(own.targets[&Net::id(3)].phase, TargetPhase::Healthy);
    assert_eq!(own.targets[&Net::id(3)].reason, None);
}

#[test]
fn pull_targets_act_when_they_poll_not_on_gossip() {
    let mut net = Net::new(FleetConfig::default());
    net.input(T0, 1, Input::Create(spec(Strategy::Pull, Replicas::All)))
        .unwrap();
    assert!(prefetchers(&net.take()).is_empty(), "pull ignores the push");
    for seed in 2..=5 {
        net.input(T0 + 1000, seed, Input::Tick).unwrap();
    }
    let mut fetch = prefetchers(&net.take());
    fetch.sort();
    let mut want = vec![Net::id(2), Net::id(3), Net::id(4)];
    want.sort();
    assert_eq!(fetch, want, "fetched on the deployer's answer");
    assert_eq!(net.deployer().counters().polls_answered, 3);
    // Next poll: up to date, nothing to fetch; within the interval, no poll at all.
    net.tick_all(T0 + 1500);
    assert_eq!(net.deployer().counters().polls_answered, 3);
    net.tick_all(T0 + 2000);
    assert!(prefetchers(&net.take()).is_empty());
    assert_eq!(net.deployer().counters().polls_answered, 6);
}

#[test]
fn a_strangers_pull_records_make_no_polls_and_unknown_polls_get_no_answer() {
    let mut p2 = FleetState::new(signer(2), FleetConfig::default());
    p2.handle(T0, Input::SelfFacts(facts(2, "a", T0))).unwrap();
    // A pull record from a key with no funded balance, selecting node 2: stored (there is
    // room), but node 2 does not poll its deployer.
    let record = DeploymentSpec {
        name: "stranger".into(),
        ..spec(Strategy::Pull, Replicas::All)
    }
    .sign(&signer(77), T0, 1, 1)
    .unwrap();
    let from = signer(77).node_id();
    p2.handle(
        T0,
        Input::Remote {
            from,
            gossip: true,
            msg: FleetMessage::Announce(Box::new(record)),
        },
    )
    .unwrap();
    let polls = |out: &[Effect]| {
        out.iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Send {
                        msg: FleetMessage::Poll { .. },
                        ..
                    }
                )
            })
            .count()
    };
    for t in 1..5 {
        let out = p2.handle(T0 + t * 1_000, Input::Tick).unwrap();
        assert_eq!(polls(&out), 0, "polled a stranger's deployer");
    }
    // Funded, the same record is polled.
    p2.handle(
        T0 + 5_000,
        Input::DeployerBalance {
            deployer: from,
            balance: 1_000,
        },
    )
    .unwrap();
    let out = p2.handle(T0 + 6_000, Input::Tick).unwrap();
    assert_eq!(polls(&out), 1);
    // A poll about a deployment node 2 neither deploys nor holds: no answer, counted.
    let out = p2
        .handle(
            T0 + 7_000,
            Input::Remote {
                from: signer(78).node_id(),
                gossip: false,
                msg: FleetMessage::Poll {
                    deployment: deployment_id(&signer(78).node_id(), "nothing"),
                    have_version: 0,
                    facts: facts(78, "a", T0).candidate(),
                },
            },
        )
        .unwrap();
    assert!(
        out.iter().all(|e| !matches!(e, Effect::Send { .. })),
        "{out:?}"
    );
    assert_eq!(p2.counters().polls_unknown, 1);
    assert_eq!(p2.counters().polls_answered, 0);
}

#[test]
fn forged_records_and_stray_reports_are_counted_and_ignored() {
    let mut net = Net::new(FleetConfig::default());
    let mut forged = spec(Strategy::Push, Replicas::All)
        .sign(&signer(1), T0, T0, T0)
        .unwrap();
    forged.body.image = "bafkreievil".into();
    net.input(T0, 5, Input::Tick).unwrap();
    let p2 = net.nodes.get_mut(&Net::id(2)).unwrap();
    let out = p2
        .handle(
            T0,
            Input::Remote {
                from: Net::id(5),
                gossip: true,
                msg: FleetMessage::Announce(Box::new(forged)),
            },
        )
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(p2.counters().bad_records, 1);
    assert!(p2.store().is_empty());
    net.input(
        T0,
        1,
        Input::Create(spec(Strategy::Push, Replicas::Count(1))),
    )
    .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    let d = net.nodes.get_mut(&Net::id(1)).unwrap();
    d.handle(
        T0,
        Input::Remote {
            from: Net::id(5),
            gossip: false,
            msg: FleetMessage::Report {
                deployment: id,
                version: 1,
                phase: TargetPhase::Running,
                reason: Some("x".repeat(10_000)),
                image: None,
                restarts: Some(7),
                last_failure: None,
            },
        },
    )
    .unwrap();
    assert_eq!(d.counters().stray_reports, 1);
}

#[test]
fn records_are_resigned_before_expiry_and_upgrades_refused() {
    let config = FleetConfig::default();
    let mut d = FleetState::new(signer(1), config);
    d.handle(T0, Input::Create(spec(Strategy::Push, Replicas::Count(2))))
        .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    let v1 = d.own(&id).unwrap().record.body.clone();
    let before = v1.expires_at - config.resign_before_ms - 1;
    assert!(
        !d.handle(before, Input::Tick)
            .unwrap()
            .iter()
            .any(|e| matches!(e, Effect::Broadcast(_)))
    );
    let out = d.handle(before + 1, Input::Tick).unwrap();
    assert!(out.iter().any(|e| matches!(e, Effect::Broadcast(_))));
    let v2 = d.own(&id).unwrap().record.body.clone();
    assert!(v2.version > v1.version && v2.expires_at > v1.expires_at);
    let other = DeploymentSpec {
        image: "bafkreiother".into(),
        ..spec(Strategy::Push, Replicas::Count(2))
    };
    assert!(matches!(
        d.handle(before + 2, Input::Create(other)),
        Err(FleetError::UpgradeNotSupported { .. })
    ));
    let stranger = deployment_id(&Net::id(2), "gw");
    assert!(matches!(
        d.handle(before + 2, Input::Delete(stranger)),
        Err(FleetError::NotMine { .. })
    ));
    let small = FleetConfig {
        max_own: 1,
        max_providers: 2,
        ..config
    };
    let mut d = FleetState::new(signer(1), small);
    d.handle(T0, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    let second = DeploymentSpec {
        name: "other".into(),
        ..spec(Strategy::Push, Replicas::All)
    };
    assert!(matches!(
        d.handle(T0, Input::Create(second)),
        Err(FleetError::TooManyOwn { max: 1 })
    ));
    for seed in 2..=4 {
        d.handle(T0 + seed, Input::Provider(facts(seed, "a", T0 + seed)))
            .unwrap();
    }
    assert_eq!(d.providers().len(), 2);
    assert!(!d.providers().contains_key(&Net::id(2)), "the oldest went");
    assert_eq!(d.counters().providers_evicted, 1);
}

#[test]
fn a_provider_whose_labels_change_stops_and_is_replaced() {
    let mut net = Net::new(FleetConfig::default());
    net.input(
        T0,
        1,
        Input::Create(spec(Strategy::Push, Replicas::Count(2))),
    )
    .unwrap();
    net.input(T0 + 1, 1, Input::Tick).unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    let targets: Vec<NodeId> = net
        .deployer()
        .own(&id)
        .unwrap()
        .targets
        .keys()
        .copied()
        .collect();
    assert_eq!(targets.len(), 2);
    let moved = targets[0];
    let seed = (2..=4).find(|s| Net::id(*s) == moved).unwrap();
    net.take();
    // The provider's operator relabels it: it stops its replica and, since it no longer
    // offers itself, sends the deployer its new facts once (no node feeds `Input::Provider`);
    // the deployer releases it and places a replacement.
    net.input(T0 + 2, seed, Input::SelfFacts(facts(seed, "b", T0 + 2)))
        .unwrap();
    net.input(T0 + 2, seed, Input::Tick).unwrap();
    net.input(T0 + 3, 1, Input::Tick).unwrap();
    let done = net.take();
    assert!(done.contains(&(moved, Effect::Stop { deployment: id })));
    assert_eq!(net.nodes[&moved].counters().unmatched_told, 1);
    assert!(done.iter().any(|(_, e)| matches!(e,
        Effect::Release { target, reason: ReleaseReason::NoLongerMatches, .. } if *target == moved)));
    let now: Vec<NodeId> = net
        .deployer()
        .own(&id)
        .unwrap()
        .targets
        .keys()
        .copied()
        .collect();
    assert_eq!(now.len(), 2);
    assert!(!now.contains(&moved));
}

/// Issue #15 (found by reading in session 54): a target that restarts without the label its
/// deployment selects tracks no replica of it, so it neither polls nor offers itself; its
/// contract still stands. It tells the deployer its new facts as soon as its node shows that
/// contract, and the deployer releases it as `NoLongerMatches` (not as `Offline` 30 s later)
/// and places a replacement, keeping the other target. The word is repeated only every
/// `candidate_refresh_ms` while the contract stands, and not at all once it ended.
#[test]
fn a_restarted_target_that_no_longer_matches_tells_its_deployer_and_is_replaced() {
    let refresh = FleetConfig::default().candidate_refresh_ms;
    let mut net = Net::new(FleetConfig::default());
    net.input(
        T0,
        1,
        Input::Create(spec(Strategy::Pull, Replicas::Count(2))),
    )
    .unwrap();
    net.input(T0 + 1, 1, Input::Tick).unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    let targets: Vec<NodeId> = net
        .deployer()
        .own(&id)
        .unwrap()
        .targets
        .keys()
        .copied()
        .collect();
    assert_eq!(targets.len(), 2);
    let (moved, kept) = (targets[0], targets[1]);
    let seed = (2..=4).find(|s| Net::id(*s) == moved).unwrap();
    let kept_facts = net.deployer().providers()[&kept].clone();

    // Restarted from its data dir with the label gone: it remembers no record. The deployer
    // sends it its records on seeing it again; before its ledger shows the contract it says
    // nothing (a provider that never hosted it is nobody's target).
    net.join(seed, "b", T0 + 2);
    net.input(T0 + 2, 1, Input::PeerUp(moved)).unwrap();
    assert!(net.nodes[&moved].store().get(&id).is_some());
    assert_eq!(net.nodes[&moved].counters().unmatched_told, 0);
    // Its node feeds the contract the ledger shows, then ticks: it tells the deployer.
    let contract = Input::Backing(vec![(Net::id(1), IMAGE.to_string())]);
    net.input(T0 + 3, seed, contract).unwrap();
    net.input(T0 + 3, seed, Input::Tick).unwrap();
    assert_eq!(net.nodes[&moved].counters().unmatched_told, 1);
    net.take();

    net.input(T0 + 4, 1, Input::Tick).unwrap();
    let done = net.take();
    let released: Vec<(NodeId, ReleaseReason)> = done
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Release { target, reason, .. } => Some((*target, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(released, vec![(moved, ReleaseReason::NoLongerMatches)]);
    let replacement = placed(&done);
    assert_eq!(replacement.len(), 1, "{done:?}");
    assert!(replacement[0] != moved && replacement[0] != kept);
    let now: BTreeSet<NodeId> = net
        .deployer()
        .own(&id)
        .unwrap()
        .targets
        .keys()
        .copied()
        .collect();
    assert_eq!(now, BTreeSet::from([kept, replacement[0]]));
    // Its word changed its own facts only.
    assert_eq!(net.deployer().providers()[&kept], kept_facts);

    // Told again only after `candidate_refresh_ms` while the contract stands, never after.
    net.input(T0 + 5, seed, Input::Tick).unwrap();
    assert_eq!(net.nodes[&moved].counters().unmatched_told, 1);
    net.input(T0 + 3 + refresh, seed, Input::Tick).unwrap();
    assert_eq!(net.nodes[&moved].counters().unmatched_told, 2);
    net.input(T0 + 4 + refresh, seed, Input::Backing(Vec::new()))
        .unwrap();
    net.input(T0 + 3 + 2 * refresh, seed, Input::Tick).unwrap();
    assert_eq!(net.nodes[&moved].counters().unmatched_told, 2);
}

/// A deployer with one contract on a provider cannot make it send more than one `Candidate`
/// per record it holds per `candidate_refresh_ms`, however many records that no longer
/// select it the deployer signs: the store holds 8 per deployer, and the word goes only to
/// the record's own deployer.
#[test]
fn records_that_no_longer_select_a_backed_provider_are_answered_within_bounds() {
    let refresh = FleetConfig::default().candidate_refresh_ms;
    let deployer = signer(9);
    let mut p2 = FleetState::new(signer(2), FleetConfig::default());
    p2.handle(T0, Input::SelfFacts(facts(2, "a", T0))).unwrap();
    p2.handle(T0, Input::Backing(vec![(deployer.node_id(), IMAGE.into())]))
        .unwrap();
    let records: Vec<Deployment> = (0..20u64)
        .map(|n| {
            DeploymentSpec {
                name: format!("elsewhere-{n}"),
                selector: Selector::parse("site=z").unwrap(),
                ..spec(Strategy::Push, Replicas::Count(1))
            }
            .sign(&deployer, T0, 1, n + 1)
            .unwrap()
        })
        .collect();
    // How many `Candidate`s `out` sends, each to the records' deployer.
    let told = |out: &[Effect]| {
        let to: Vec<NodeId> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Send {
                    to,
                    msg: FleetMessage::Candidate { .. },
                } => Some(*to),
                _ => None,
            })
            .collect();
        assert!(to.iter().all(|t| *t == deployer.node_id()), "{out:?}");
        to.len()
    };
    let announce_all = |p2: &mut FleetState<KeySigner>, now: Timestamp| {
        let mut n = 0;
        for record in &records {
            let msg = FleetMessage::Announce(Box::new(record.clone()));
            let input = Input::Remote {
                from: deployer.node_id(),
                gossip: false,
                msg,
            };
            n += told(&p2.handle(now, input).unwrap());
        }
        n
    };
    let per_deployer = FleetConfig::default().store.max_per_deployer;
    assert_eq!(announce_all(&mut p2, T0), per_deployer);
    assert_eq!(announce_all(&mut p2, T0 + 1), 0, "the same records again");
    assert_eq!(told(&p2.handle(T0 + 2, Input::Tick).unwrap()), 0);
    assert_eq!(
        told(&p2.handle(T0 + refresh, Input::Tick).unwrap()),
        per_deployer
    );
    p2.handle(T0 + refresh, Input::Backing(Vec::new())).unwrap();
    assert_eq!(told(&p2.handle(T0 + 3 * refresh, Input::Tick).unwrap()), 0);
    assert_eq!(p2.counters().unmatched_told, 2 * per_deployer as u64);
}

/// THREATS D1: fresh providers flooding a full table (any key may offer itself as a
/// candidate) never evict a target's facts, so the plan releases none of the targets; the
/// flood's newcomers evict each other or are not kept.
#[test]
fn a_flood_of_candidates_never_evicts_a_targets_facts_nor_releases_it() {
    let config = FleetConfig {
        max_providers: 4,
        ..FleetConfig::default()
    };
    let mut net = Net::new(config);
    net.input(
        T0,
        1,
        Input::Create(spec(Strategy::Push, Replicas::Count(2))),
    )
    .unwrap();
    net.input(T0 + 1, 1, Input::Tick).unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    let targets: Vec<NodeId> = net
        .deployer()
        .own(&id)
        .unwrap()
        .targets
        .keys()
        .copied()
        .collect();
    assert_eq!(targets.len(), 2);
    net.take();
    // Hundreds of fresh `site=a` providers, each newer than every target's last word.
    for seed in 100..400 {
        net.input(T0 + seed, 1, Input::Provider(facts(seed, "a", T0 + seed)))
            .unwrap();
    }
    let d = net.deployer();
    assert_eq!(d.providers().len(), 4, "the table stays bounded");
    for t in &targets {
        assert!(
            d.providers().contains_key(t),
            "a target's facts were evicted"
        );
    }
    assert!(d.counters().providers_evicted > 0);
    net.input(T0 + 500, 1, Input::Tick).unwrap();
    let done = net.take();
    assert!(
        !done
            .iter()
            .any(|(_, e)| matches!(e, Effect::Release { .. })),
        "a target was released: {done:?}"
    );
    let now: Vec<NodeId> = net
        .deployer()
        .own(&id)
        .unwrap()
        .targets
        .keys()
        .copied()
        .collect();
    assert_eq!(now, targets);

    // A table full of targets keeps them and refuses the newcomer.
    let config = FleetConfig {
        max_providers: 2,
        ..FleetConfig::default()
    };
    let mut net = Net::new(config);
    net.input(
        T0,
        1,
        Input::Create(spec(Strategy::Push, Replicas::Count(2))),
    )
    .unwrap();
    net.input(T0 + 1, 1, Input::Tick).unwrap();
    let before: Vec<NodeId> = net.deployer().providers().keys().copied().collect();
    net.input(T0 + 2, 1, Input::Provider(facts(99, "a", T0 + 2)))
        .unwrap();
    let d = net.deployer();
    let after: Vec<NodeId> = d.providers().keys().copied().collect();
    assert_eq!(
        d.own(&id).unwrap().targets.len(),
        2,
        "both kept are targets"
    );
    assert_eq!(before, after);
    assert_eq!(d.counters().providers_refused, 1);
}

/// THREATS D1: a deployer that did not tick for eleven `--all` spans (suspended, stopped,
/// stalled) heard nobody meanwhile, so its first tick back releases no target as offline,
/// neither of `--all` nor counted; the gap does not count, the clock does not stop: a target
/// still silent while the deployer ticks is released after its span(s) as before, not one tick
/// earlier (mutants: the shift in `pause_offline_clocks` left out — every target released on
/// the return; the shift on every tick — never released).
#[test]
fn a_deployer_away_for_longer_than_a_span_releases_no_target_on_its_return() {
    use crate::plan::ALL_OFFLINE_SPANS;
    let span = FleetConfig::default().plan.offline_after_ms;
    for (replicas, spans, targets) in [
        (Replicas::All, ALL_OFFLINE_SPANS, 3),
        (Replicas::Count(2), 1, 2),
    ] {
        let mut d = FleetState::new(signer(1), FleetConfig::default());
        for seed in 2..=4 {
            d.handle(T0, Input::Provider(facts(seed, "a", T0))).unwrap();
        }
        d.handle(T0, Input::Create(spec(Strategy::Push, replicas)))
            .unwrap();
        let out = d.handle(T0, Input::Tick).unwrap();
        let placed = out
            .iter()
            .filter(|e| matches!(e, Effect::Place { .. }))
            .count();
        assert_eq!(placed, targets, "{replicas:?}: {out:?}");
        let released = |out: &[Effect]| {
            out.iter()
                .filter(|e| {
                    matches!(
                        e,
                        Effect::Release {
                            reason: ReleaseReason::Offline,
                            ..
                        }
                    )
                })
                .count()
        };
        let back = T0 + (ALL_OFFLINE_SPANS + 1) * span;
        let out = d.handle(back, Input::Tick).unwrap();
        assert_eq!(
            released(&out),
            0,
            "{replicas:?}: released on the return: {out:?}"
        );
        // Nobody is heard from then on: kept up to `spans` spans after the return, released
        // at the next tick past it.
        let due = back + spans * span;
        for now in (back + 5_000..=due).step_by(5_000) {
            let out = d.handle(now, Input::Tick).unwrap();
            assert_eq!(
                released(&out),
                0,
                "{replicas:?}: {} ms after the return: {out:?}",
                now - back
            );
        }
        let out = d.handle(due + 5_000, Input::Tick).unwrap();
        assert_eq!(released(&out), targets, "{replicas:?}: {out:?}");
    }
}

fn placed(done: &[(NodeId, Effect)]) -> Vec<NodeId> {
    let mut out: Vec<NodeId> = done
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::Place { target, .. } => Some(*target),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_deployer_learns_targets_from_candidates_and_late_joiners() {
    let mut net = Net::silent(FleetConfig::default());
    assert!(net.deployer().providers().is_empty());
    net.input(T0, 1, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    // Push: every selected provider offers itself; the one that is not selected stays silent.
    let known: Vec<NodeId> = net.deployer().providers().keys().copied().collect();
    let mut want = vec![Net::id(2), Net::id(3), Net::id(4)];
    want.sort();
    assert_eq!(known, want);
    net.take();
    net.input(T0 + 1, 1, Input::Tick).unwrap();
    assert_eq!(placed(&net.take()), want);
    // Node 6 (site=a) was down during the rollout: when it comes up, the deployer hands it the
    // record, it fetches the image and offers itself, and the next round places it.
    net.join(6, "a", T0 + 5_000);
    net.input(T0 + 5_000, 1, Input::PeerUp(Net::id(6))).unwrap();
    assert_eq!(prefetchers(&net.take()), vec![Net::id(6)]);
    net.input(T0 + 5_001, 1, Input::Tick).unwrap();
    assert_eq!(placed(&net.take()), vec![Net::id(6)]);
    // Candidates refresh their offer (which keeps them online for the deployer).
    let refresh = T0 + FleetConfig::default().candidate_refresh_ms;
    net.input(refresh, 2, Input::Tick).unwrap();
    assert_eq!(
        net.deployer()
            .providers()
            .get(&Net::id(2))
            .unwrap()
            .last_seen,
        refresh
    );
}

#[test]
fn pull_polls_carry_the_facts_the_deployer_chooses_from() {
    let mut net = Net::silent(FleetConfig::default());
    net.input(
        T0,
        1,
        Input::Create(spec(Strategy::Pull, Replicas::Count(2))),
    )
    .unwrap();
    assert!(
        net.deployer().providers().is_empty(),
        "pull: no candidate on the gossip"
    );
    for seed in 2..=5 {
        net.input(T0 + 1_000, seed, Input::Tick).unwrap();
    }
    assert_eq!(net.deployer().providers().len(), 3);
    net.take();
    net.input(T0 + 1_001, 1, Input::Tick).unwrap();
    assert_eq!(placed(&net.take()).len(), 2);
}

const NEW: &str = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq";
const SICK: &str = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4";

/// What node 1 (the deployer) placed and released, as (target seed, image, what).
fn deployer_moves(done: &[(NodeId, Effect)]) -> Vec<(u64, String, &'static str)> {
    let seed = |n: &NodeId| (2..=5).find(|s| Net::id(*s) == *n).unwrap_or(0);
    done.iter()
        .filter(|(n, _)| *n == Net::id(1))
        .filter_map(|(_, e)| match e {
            Effect::Place { target, image, .. } => Some((seed(target), image.clone(), "place")),
            Effect::Release { target, image, .. } => Some((seed(target), image.clone(), "release")),
            _ => None,
        })
        .collect()
}

/// A target's own report of its replica of deployment `id` (no image named).
fn local_phase(id: DeploymentId, phase: TargetPhase, reason: Option<&str>) -> Input {
    Input::LocalPhase {
        deployment: id,
        image: None,
        phase,
        reason: reason.map(str::to_string),
    }
}

/// Node 1's push deployment `gw` to every provider (nodes 2–4), each reporting its replica
/// healthy: where the upgrade tests start.
fn running_everywhere() -> (Net, DeploymentId) {
    let mut net = Net::new(FleetConfig::default());
    net.input(T0, 1, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    net.input(T0 + 10, 1, Input::Tick).unwrap();
    net.take();
    for seed in 2..=4 {
        net.input(T0 + 20, seed, local_phase(id, TargetPhase::Healthy, None))
            .unwrap();
    }
    (net, id)
}

#[test]
fn an_upgrade_goes_in_waves_over_the_network_and_a_sick_one_rolls_back() {
    let (mut net, id) = running_everywhere();
    let local = |phase, reason: Option<&str>| local_phase(id, phase, reason);
    let config = UpgradeConfig {
        max_unavailable: 1,
        health_timeout_ms: 60_000,
        max_failed: 0,
    };
    let upgrade = |image: &str| Input::Upgrade {
        deployment: id,
        to: UpgradeTo::Image(image.into()),
        config,
    };
    // The image it already runs: refused with a reason.
    assert!(matches!(
        net.input(T0 + 25, 1, upgrade(IMAGE)),
        Err(FleetError::NotUpgradable { .. })
    ));

    // Healthy upgrade, one target at a time: start the new image beside the old one, release
    // the old one once the new one reports healthy (its report names the new image).
    net.input(T0 + 30, 1, upgrade(NEW)).unwrap();
    let done = net.take();
    let first = deployer_moves(&done);
    assert_eq!(first.len(), 1, "one wave of one: {first:?}");
    assert_eq!((first[0].1.as_str(), first[0].2), (NEW, "place"));
    // Every target heard the new record (push) and fetches the new image.
    assert_eq!(
        done.iter()
            .filter(|(_, e)| matches!(e, Effect::Prefetch { image, .. } if image == NEW))
            .count(),
        3
    );
    assert!(matches!(
        net.input(T0 + 31, 1, upgrade(SICK)),
        Err(FleetError::UpgradeUnderWay { .. })
    ));
    let mut upgraded = Vec::new();
    let mut now = T0 + 40;
    let mut wave = first[0].0;
    for _ in 0..3 {
        // Still starting: the plan does not touch the other targets meanwhile.
        net.input(now, 1, Input::Tick).unwrap();
        assert!(deployer_moves(&net.take()).is_empty());
        net.input(now + 1, wave, local(TargetPhase::Healthy, None))
            .unwrap();
        net.input(now + 2, 1, Input::Tick).unwrap();
        let moves = deployer_moves(&net.take());
        assert!(
            moves.contains(&(wave, IMAGE.to_string(), "release")),
            "old released once the new is healthy: {moves:?}"
        );
        upgraded.push(wave);
        if let Some(next) = moves.iter().find(|m| m.2 == "place") {
            assert_eq!(next.1, NEW);
            assert!(!upgraded.contains(&next.0));
            wave = next.0;
        }
        now += 10;
    }
    upgraded.sort();
    assert_eq!(upgraded, vec![2, 3, 4]);
    let view = net.deployer().status(&id).unwrap();
    let up = view.upgrade.clone().unwrap();
    assert_eq!(up.state, "succeeded");
    assert!(up.is_final());
    assert_eq!(
        (view.image.as_str(), view.previous_image.as_deref()),
        (NEW, Some(IMAGE))
    );
    assert!(
        view.targets.iter().all(|t| t.phase == "healthy"),
        "{view:?}"
    );
    // The plan is back and has nothing to do.
    net.input(now, 1, Input::Tick).unwrap();
    assert!(deployer_moves(&net.take()).is_empty());

    // A sick image: the first new instance reports unhealthy; it is released, no other target
    // is touched, and the record names the running image again.
    net.input(now + 10, 1, upgrade(SICK)).unwrap();
    let moves = deployer_moves(&net.take());
    assert_eq!(moves.len(), 1);
    let (sick_on, ..) = moves[0].clone();
    net.input(
        now + 11,
        sick_on,
        local(
            TargetPhase::Unhealthy,
            Some("the guest's health export returned 1"),
        ),
    )
    .unwrap();
    net.input(now + 12, 1, Input::Tick).unwrap();
    let done = net.take();
    assert_eq!(
        deployer_moves(&done),
        vec![(sick_on, SICK.to_string(), "release")]
    );
    let view = net.deployer().status(&id).unwrap();
    let up = view.upgrade.clone().unwrap();
    assert_eq!(up.state, "rolled-back");
    assert!(
        up.reason.as_deref().unwrap_or("").contains("returned 1"),
        "{up:?}"
    );
    let line = up
        .targets
        .iter()
        .find(|t| t.node == Net::id(sick_on))
        .unwrap();
    assert_eq!(line.step, "reverted");
    assert_eq!(
        line.new.as_deref(),
        Some("released (was unhealthy: the guest's health export returned 1)")
    );
    assert_eq!(
        (view.image.as_str(), view.previous_image.as_deref()),
        (NEW, Some(SICK))
    );
    // Targets heard the record that names NEW again.
    for seed in 2..=4 {
        let node = net.nodes.get(&Net::id(seed)).unwrap();
        assert_eq!(node.store().get(&id).unwrap().body.image, NEW);
    }
    assert!(
        view.targets.iter().all(|t| t.phase == "healthy"),
        "{view:?}"
    );
    net.input(now + 20, 1, Input::Tick).unwrap();
    assert!(deployer_moves(&net.take()).is_empty());
}

/// THREATS D1: with `--max-failed 1` a target whose new instance reports unhealthy is held
/// (nothing released, its old instance keeps running) while the others upgrade; at success
/// its old instance is released and its replica counts as failed, so the plan releases the new
/// one too (and would place it elsewhere).
#[test]
fn a_target_failing_within_the_budget_is_held_then_counted_failed() {
    let (mut net, id) = running_everywhere();
    let local = |phase, reason: Option<&str>| local_phase(id, phase, reason);
    let config = UpgradeConfig {
        max_unavailable: 1,
        health_timeout_ms: 60_000,
        max_failed: 1,
    };
    net.input(
        T0 + 30,
        1,
        Input::Upgrade {
            deployment: id,
            to: UpgradeTo::Image(NEW.into()),
            config,
        },
    )
    .unwrap();
    let first = deployer_moves(&net.take());
    assert_eq!(first.len(), 1, "{first:?}");
    let held = first[0].0;
    // The first target's new instance is sick: held, nothing released, the next one placed.
    net.input(
        T0 + 31,
        held,
        local(
            TargetPhase::Unhealthy,
            Some("the guest's health export returned 1"),
        ),
    )
    .unwrap();
    net.input(T0 + 32, 1, Input::Tick).unwrap();
    let moves = deployer_moves(&net.take());
    assert!(
        moves.iter().all(|m| m.2 == "place" && m.0 != held),
        "held: nothing released, the rollout goes on: {moves:?}"
    );
    let mut wave = moves[0].0;
    let mut now = T0 + 40;
    let mut at_success = Vec::new();
    for _ in 0..2 {
        net.input(now + 1, wave, local(TargetPhase::Healthy, None))
            .unwrap();
        net.input(now + 2, 1, Input::Tick).unwrap();
        let moves = deployer_moves(&net.take());
        if let Some(next) = moves.iter().find(|m| m.2 == "place") {
            wave = next.0;
        } else {
            at_success = moves;
        }
        now += 10;
    }
    assert!(
        at_success.contains(&(held, IMAGE.to_string(), "release")),
        "the held target's old instance goes at success: {at_success:?}"
    );
    let view = net.deployer().status(&id).unwrap();
    let up = view.upgrade.clone().unwrap();
    assert_eq!(up.state, "succeeded", "{up:?}");
    let line = up.targets.iter().find(|t| t.node == Net::id(held)).unwrap();
    assert_eq!(line.step, "held");
    assert!(
        line.failed.as_deref().unwrap_or("").contains("returned 1"),
        "{line:?}"
    );
    let target = view
        .targets
        .iter()
        .find(|t| t.node == Net::id(held))
        .unwrap();
    assert_eq!(target.phase, "failed", "{view:?}");
    // Its own report before the deployer's next tick (a hostile target's on purpose) does
    // not keep the failed replica: the plan releases the held target's new replica.
    net.input(now + 5, held, local(TargetPhase::Healthy, None))
        .unwrap();
    net.input(now + 10, 1, Input::Tick).unwrap();
    let after = deployer_moves(&net.take());
    assert!(
        after.contains(&(held, NEW.to_string(), "release")),
        "{after:?}"
    );
}

#[test]
fn a_rollback_restarts_the_old_image_where_it_was_replaced_before_stopping_the_new() {
    let (mut net, id) = running_everywhere();
    let local = |phase| local_phase(id, phase, None);
    let config = UpgradeConfig {
        max_unavailable: 1,
        health_timeout_ms: 60_000,
        max_failed: 0,
    };
    net.input(
        T0 + 30,
        1,
        Input::Upgrade {
            deployment: id,
            to: UpgradeTo::Image(NEW.into()),
            config,
        },
    )
    .unwrap();
    let first = deployer_moves(&net.take())[0].0;
    net.input(T0 + 31, first, local(TargetPhase::Healthy))
        .unwrap();
    net.input(T0 + 32, 1, Input::Tick).unwrap();
    let second = deployer_moves(&net.take())
        .into_iter()
        .find(|m| m.2 == "place")
        .unwrap()
        .0;
    // The second target's new instance fails (its contract ended, from the ledger).
    net.input(
        T0 + 33,
        1,
        Input::TargetProgress {
            deployment: id,
            target: Net::id(second),
            image: NEW.into(),
            phase: TargetPhase::Failed,
            reason: Some("contract ended".into()),
        },
    )
    .unwrap();
    net.input(T0 + 34, 1, Input::Tick).unwrap();
    let moves = deployer_moves(&net.take());
    // The first (already upgraded) target gets the old image again; the second's new instance
    // goes; nobody releases the first's new instance yet.
    assert!(
        moves.contains(&(first, IMAGE.to_string(), "place")),
        "{moves:?}"
    );
    assert!(
        moves.contains(&(second, NEW.to_string(), "release")),
        "{moves:?}"
    );
    assert!(
        !moves.contains(&(first, NEW.to_string(), "release")),
        "{moves:?}"
    );
    let view = net.deployer().status(&id).unwrap();
    assert_eq!(view.upgrade.as_ref().unwrap().state, "rolling-back");
    assert_eq!(view.image, IMAGE, "the record names the old image again");
    // The old image's instance on the first target reports healthy (its report names it):
    // only then is the new one released.
    net.input(T0 + 40, first, local(TargetPhase::Healthy))
        .unwrap();
    net.input(T0 + 41, 1, Input::Tick).unwrap();
    assert_eq!(
        deployer_moves(&net.take()),
        vec![(first, NEW.to_string(), "release")]
    );
    let view = net.deployer().status(&id).unwrap();
    let up = view.upgrade.unwrap();
    assert_eq!(up.state, "rolled-back");
    assert!(up.reason.unwrap().contains("contract ended"));
}

/// The deployer (node 1) restarts: a fresh machine with the same key takes back what the old
/// one saved, with the contracts the ledger still shows open.
fn restart_deployer(net: &mut Net, now: Timestamp, live: &[LiveContract]) -> RestoreReport {
    let saved = net.deployer().saved();
    let mut fresh = FleetState::new(signer(1), FleetConfig::default());
    fresh
        .handle(now, Input::SelfFacts(facts(1, "a", now)))
        .unwrap();
    let (report, effects) = fresh.restore(now, saved, live);
    assert!(
        effects
            .iter()
            .all(|e| matches!(e, Effect::Broadcast(FleetMessage::Announce(_)))),
        "a restore only announces: {effects:?}"
    );
    net.nodes.insert(Net::id(1), fresh);
    report
}

fn live(seed: u64, image: &str, phase: TargetPhase) -> LiveContract {
    LiveContract {
        target: Net::id(seed),
        image: image.into(),
        phase,
    }
}

#[test]
fn a_restarted_deployer_keeps_its_deployments_and_places_no_second_replica() {
    let mut net = Net::new(FleetConfig::default());
    net.input(T0, 1, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    net.input(T0 + 10, 1, Input::Tick).unwrap();
    assert_eq!(placed(&net.take()).len(), 3);
    targets_healthy(&mut net, id, T0 + 20);
    let before = net.deployer().status(&id).unwrap();
    // Node 2's and 3's contracts are open; node 4's ended while the deployer was down.
    let report = restart_deployer(
        &mut net,
        T0 + 100,
        &[
            live(2, IMAGE, TargetPhase::Running),
            live(3, IMAGE, TargetPhase::Running),
        ],
    );
    assert_eq!((report.kept, report.targets, report.gone), (1, 2, 1));
    let after = net.deployer().status(&id).unwrap();
    assert_eq!(after.version, before.version);
    let phases: Vec<(NodeId, String)> = after
        .targets
        .iter()
        .map(|t| (t.node, t.phase.clone()))
        .collect();
    let mut want: Vec<(NodeId, String)> = vec![
        (Net::id(2), "healthy".into()),
        (Net::id(3), "healthy".into()),
    ];
    want.sort();
    assert_eq!(
        phases, want,
        "saved phases kept where a contract is open; node 4's target forgotten"
    );
    // The first tick places only the target whose contract ended, never a second replica.
    net.input(T0 + 110, 1, Input::Tick).unwrap();
    assert_eq!(placed(&net.take()), vec![Net::id(4)]);
    // Delete still releases every target.
    net.input(T0 + 120, 1, Input::Delete(id)).unwrap();
    let released = net
        .take()
        .iter()
        .filter(|(n, e)| *n == Net::id(1) && matches!(e, Effect::Release { .. }))
        .count();
    assert_eq!(released, 3);
}

#[test]
fn a_restore_adopts_open_contracts_and_waits_for_unknown_targets() {
    let mut net = Net::new(FleetConfig::default());
    net.input(
        T0,
        1,
        Input::Create(spec(Strategy::Push, Replicas::Count(2))),
    )
    .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    // Saved before any tick: no target yet, no provider facts. The ledger shows a contract of
    // the image on node 3 (an auction that ended in a contract as the deployer went down) and
    // one of another image on node 2 (not this deployment's).
    let report = restart_deployer(
        &mut net,
        T0 + 100,
        &[
            live(3, IMAGE, TargetPhase::Fetching),
            live(2, "bafkreiotherimage", TargetPhase::Running),
        ],
    );
    assert_eq!((report.kept, report.adopted), (1, 1));
    let view = net.deployer().status(&id).unwrap();
    assert_eq!(view.targets.len(), 1);
    assert_eq!(view.targets[0].node, Net::id(3));
    // Node 3's facts are unknown: the plan waits rather than releasing it as unknown.
    net.input(T0 + 110, 1, Input::Tick).unwrap();
    assert!(
        deployer_moves(&net.take()).is_empty(),
        "nothing placed or released within the grace"
    );
    // Once it (and the others) offer themselves, the plan tops up to two without touching it.
    for seed in 2..=4 {
        net.input(T0 + 120, 1, Input::Provider(facts(seed, "a", T0 + 120)))
            .unwrap();
    }
    net.input(T0 + 130, 1, Input::Tick).unwrap();
    let moves = deployer_moves(&net.take());
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(moves[0].2, "place");
    assert_eq!(net.deployer().status(&id).unwrap().targets.len(), 2);
}

#[test]
fn an_upgrade_under_way_resumes_after_a_restart() {
    let mut net = Net::new(FleetConfig::default());
    net.input(T0, 1, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    net.input(T0 + 10, 1, Input::Tick).unwrap();
    targets_healthy(&mut net, id, T0 + 20);
    net.take();
    let config = UpgradeConfig {
        max_unavailable: 1,
        health_timeout_ms: 60_000,
        max_failed: 0,
    };
    net.input(
        T0 + 30,
        1,
        Input::Upgrade {
            deployment: id,
            to: UpgradeTo::Image(NEW.into()),
            config,
        },
    )
    .unwrap();
    let first = deployer_moves(&net.take());
    assert_eq!(first.len(), 1);
    let wave = first[0].0;
    let mut contracts: Vec<LiveContract> = (2..=4)
        .map(|s| live(s, IMAGE, TargetPhase::Running))
        .collect();
    contracts.push(live(wave, NEW, TargetPhase::Running));
    let report = restart_deployer(&mut net, T0 + 40, &contracts);
    assert_eq!(report.upgrades_resumed, 1);
    let view = net.deployer().status(&id).unwrap();
    assert_eq!(view.upgrade.as_ref().unwrap().state, "in-progress");
    // The new instance of the first wave reports healthy: the restored machine releases the
    // old one there and starts the next wave, as it would have without the restart.
    net.input(
        T0 + 50,
        wave,
        Input::LocalPhase {
            deployment: id,
            image: Some(NEW.into()),
            phase: TargetPhase::Healthy,
            reason: None,
        },
    )
    .unwrap();
    net.input(T0 + 60, 1, Input::Tick).unwrap();
    let moves = deployer_moves(&net.take());
    assert!(
        moves.contains(&(wave, IMAGE.to_string(), "release")),
        "{moves:?}"
    );
    assert_eq!(
        moves
            .iter()
            .filter(|(s, img, m)| *s != wave && img == NEW && *m == "place")
            .count(),
        1,
        "the next wave: {moves:?}"
    );
}

/// A target's report that its replica of `id` (the record's image) is healthy.
fn healthy_report(id: DeploymentId) -> Input {
    Input::LocalPhase {
        deployment: id,
        image: None,
        phase: TargetPhase::Healthy,
        reason: None,
    }
}

/// Nodes 2, 3 and 4 (the three targets of a push to every provider) report their replicas of
/// `id` healthy at `at`.
fn targets_healthy(net: &mut Net, id: DeploymentId, at: Timestamp) {
    for seed in 2..=4 {
        net.input(at, seed, healthy_report(id)).unwrap();
    }
}

/// The deployer's view of `seed`'s restart count for `id`.
fn restarts_shown(net: &Net, id: &DeploymentId, seed: u64) -> Option<u32> {
    net.deployer()
        .status(id)
        .unwrap()
        .targets
        .iter()
        .find(|t| t.node == Net::id(seed))
        .map(|t| t.restarts)
}

#[test]
fn targets_report_restarts_once_per_change_and_only_for_themselves() {
    let mut net = Net::new(FleetConfig::default());
    net.input(T0, 1, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    net.input(T0 + 10, 1, Input::Tick).unwrap();
    targets_healthy(&mut net, id, T0 + 20);
    let healthy = healthy_report(id);
    assert_eq!(restarts_shown(&net, &id, 2), Some(0));
    // Node 2's runtime restarted its replica twice; the phase is the same, the count is news.
    let reports = |net: &mut Net, seed: u64, now: Timestamp, input: Input| {
        let out = net
            .nodes
            .get_mut(&Net::id(seed))
            .unwrap()
            .handle(now, input)
            .unwrap();
        for e in &out {
            if let Effect::Send { to, msg } = e {
                net.nodes
                    .get_mut(to)
                    .unwrap()
                    .handle(
                        now,
                        Input::Remote {
                            from: Net::id(seed),
                            gossip: false,
                            msg: msg.clone(),
                        },
                    )
                    .unwrap();
            }
        }
        out.iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Send {
                        msg: FleetMessage::Report { .. },
                        ..
                    }
                )
            })
            .count()
    };
    let restarted = Input::LocalRestarts {
        deployment: id,
        restarts: 2,
        last_failure: Some("trap: wasm `unreachable` instruction executed".into()),
    };
    assert_eq!(reports(&mut net, 2, T0 + 30, restarted.clone()), 0);
    assert_eq!(reports(&mut net, 2, T0 + 30, healthy.clone()), 1);
    assert_eq!(restarts_shown(&net, &id, 2), Some(2));
    assert_eq!(restarts_shown(&net, &id, 3), Some(0));
    // Once per change: the same count and phase again send nothing.
    assert_eq!(reports(&mut net, 2, T0 + 40, restarted), 0);
    assert_eq!(reports(&mut net, 2, T0 + 40, healthy), 0);
    // A peer that is not a target cannot set a count, for itself or anyone.
    let stray = FleetMessage::Report {
        deployment: id,
        version: 1,
        phase: TargetPhase::Healthy,
        reason: None,
        image: None,
        restarts: Some(99),
        last_failure: Some("forged".into()),
    };
    net.nodes
        .get_mut(&Net::id(1))
        .unwrap()
        .handle(
            T0 + 50,
            Input::Remote {
                from: Net::id(5),
                gossip: false,
                msg: stray,
            },
        )
        .unwrap();
    assert_eq!(restarts_shown(&net, &id, 5), None);
    assert_eq!(restarts_shown(&net, &id, 2), Some(2));
    let two = net
        .deployer()
        .status(&id)
        .unwrap()
        .targets
        .into_iter()
        .find(|t| t.node == Net::id(2))
        .unwrap();
    assert_eq!(
        two.last_failure.as_deref(),
        Some("trap: wasm `unreachable` instruction executed"),
        "the reason comes with the count, from the target only"
    );
    assert_eq!(net.deployer().counters().stray_reports, 1);
}

/// A target reports its restart count only when it changes, so the deployer saves the counts
/// with the deployment: after its own restart it still shows them, and a saved count for a
/// node that is no longer a target is not restored.
#[test]
fn restart_counts_survive_a_deployer_restart() {
    let mut net = Net::new(FleetConfig::default());
    net.input(T0, 1, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    net.input(T0 + 10, 1, Input::Tick).unwrap();
    targets_healthy(&mut net, id, T0 + 20);
    net.deployer_mut().take_dirty();
    for (seed, restarts) in [(2, 3), (4, 1)] {
        let restarted = Input::LocalRestarts {
            deployment: id,
            restarts,
            last_failure: Some(format!("exited with {restarts}")),
        };
        net.input(T0 + 30, seed, restarted).unwrap();
        net.input(T0 + 31, seed, healthy_report(id)).unwrap();
    }
    assert_eq!(restarts_shown(&net, &id, 2), Some(3));
    assert!(
        net.deployer_mut().take_dirty(),
        "a new count is saved state"
    );
    // Node 4's contract ended while the deployer was down.
    let report = restart_deployer(
        &mut net,
        T0 + 100,
        &[
            live(2, IMAGE, TargetPhase::Running),
            live(3, IMAGE, TargetPhase::Running),
        ],
    );
    assert_eq!(report.bad_entries, 0);
    assert_eq!(restarts_shown(&net, &id, 2), Some(3));
    assert_eq!(restarts_shown(&net, &id, 3), Some(0));
    assert_eq!(restarts_shown(&net, &id, 4), None);
    let saved = net.deployer().saved();
    assert_eq!(saved.deployments[0].restarts, vec![(Net::id(2), 3)]);
    // The reason of the last restart travels and survives with the count.
    let shown = net.deployer().status(&id).unwrap();
    let two = shown.targets.iter().find(|t| t.node == Net::id(2)).unwrap();
    assert_eq!(two.last_failure.as_deref(), Some("exited with 3"));
    assert_eq!(
        saved.deployments[0].failures,
        vec![(Net::id(2), "exited with 3".to_string())]
    );
}

#[test]
fn only_a_change_of_what_is_saved_marks_the_state_dirty() {
    let mut net = Net::new(FleetConfig::default());
    let dirty = |net: &mut Net| net.nodes.get_mut(&Net::id(1)).unwrap().take_dirty();
    let saved = |net: &Net| net.deployer().saved();
    // Every step below: if the saved state changed, it is marked dirty.
    let mut last = saved(&net);
    let mut step = |net: &mut Net, what: &str| -> bool {
        let now = saved(net);
        let d = dirty(net);
        assert!(
            d || now == last,
            "{what}: the saved state changed but is not dirty"
        );
        last = now;
        d
    };
    step(&mut net, "providers known, nothing deployed");
    net.input(T0, 1, Input::Create(spec(Strategy::Push, Replicas::All)))
        .unwrap();
    assert!(step(&mut net, "create"), "a create is a change");
    net.input(T0 + 10, 1, Input::Tick).unwrap();
    assert!(
        step(&mut net, "first tick places"),
        "placements are a change"
    );
    let id = deployment_id(&Net::id(1), "gw");
    targets_healthy(&mut net, id, T0 + 20);
    assert!(
        step(&mut net, "reports"),
        "a target's new phase is a change"
    );
    // Quiet ticks (targets offering themselves again, nothing new): not dirty.
    for k in 0..5 {
        net.tick_all(T0 + 1_000 + k * 1_000);
        assert!(!step(&mut net, "quiet tick"), "tick {k} changed nothing");
    }
    // The same report again, a candidate refresh with the same facts: not dirty.
    net.input(
        T0 + 20_000,
        1,
        Input::Remote {
            from: Net::id(2),
            gossip: false,
            msg: FleetMessage::Candidate {
                deployment: id,
                facts: facts(2, "a", T0).candidate(),
            },
        },
    )
    .unwrap();
    assert!(!step(&mut net, "same facts again"));
    // A target's phase changes: dirty.
    net.input(
        T0 + 21_000,
        3,
        Input::LocalPhase {
            deployment: id,
            image: None,
            phase: TargetPhase::Unhealthy,
            reason: Some("the guest's health export returned 1".into()),
        },
    )
    .unwrap();
    assert!(step(&mut net, "unhealthy"));
    // Re-signing before expiry: dirty.
    let expires = net.deployer().own(&id).unwrap().record.body.expires_at;
    net.input(
        expires - FleetConfig::default().resign_before_ms,
        1,
        Input::Tick,
    )
    .unwrap();
    assert!(step(&mut net, "re-signed"));
    net.input(expires, 1, Input::Delete(id)).unwrap();
    assert!(step(&mut net, "delete"));
}

/// Flood record `n` from one of 100 throwaway keys (seeds 1000..1100): selects site=a, valid
/// for 23 hours, signed at `now`.
fn flood_record(n: u64, now: Timestamp) -> Deployment {
    DeploymentSpec {
        name: format!("flood-{n}"),
        valid_for_ms: 23 * 3_600_000,
        ..spec(Strategy::Push, Replicas::All)
    }
    .sign(&signer(1_000 + n % 100), now, 1, n)
    .unwrap()
}

/// Node 2 as a target (`site=a`), with the balances of deployer 1 and of the flood's 100 keys
/// fed (1,000 each: funded).
fn flooded_target() -> FleetState<KeySigner> {
    let mut p2 = FleetState::new(signer(2), FleetConfig::default());
    p2.handle(T0, Input::SelfFacts(facts(2, "a", T0))).unwrap();
    for seed in std::iter::once(1).chain(1_000..1_100) {
        p2.handle(
            T0,
            Input::DeployerBalance {
                deployer: signer(seed).node_id(),
                balance: 1_000,
            },
        )
        .unwrap();
    }
    p2
}

/// The node tells `p2` its replica of `id` (version 1, deployer 1) runs healthy under its
/// contract: `p2` reports that to the deployer.
fn reports_healthy(p2: &mut FleetState<KeySigner>, now: Timestamp, id: DeploymentId) {
    let out = p2
        .handle(
            now,
            Input::LocalPhase {
                deployment: id,
                image: Some(IMAGE.into()),
                phase: TargetPhase::Healthy,
                reason: None,
            },
        )
        .unwrap();
    assert!(
        out.iter().any(|e| matches!(e,
            Effect::Send {
                to,
                msg: FleetMessage::Report { deployment, version: 1, phase: TargetPhase::Healthy, .. },
            } if *to == Net::id(1) && *deployment == id)),
        "{out:?}"
    );
}

/// The node tells `p2` its replica of `id` has no contract any more: the record is unpinned.
fn contract_ends(p2: &mut FleetState<KeySigner>, now: Timestamp, id: DeploymentId) {
    p2.handle(
        now,
        Input::LocalPhase {
            deployment: id,
            image: None,
            phase: TargetPhase::Failed,
            reason: Some("contract ended".into()),
        },
    )
    .unwrap();
    assert!(!p2.store().is_pinned(&id));
}

/// A target that runs a replica under a contract keeps its record, its replica and its reports
/// through a flood of validly signed records from throwaway deployers that all select it; a
/// record no contract backs yet is evictable (THREATS N8).
#[test]
fn a_flood_of_strangers_records_never_evicts_a_replica_a_contract_backs() {
    // The flood's keys are funded (the adversary paid for them): what protects the honest
    // replica here is the pin (an unfunded flood: the next test).
    let mut p2 = flooded_target();
    let announce = |record: Deployment| Input::Remote {
        from: Net::id(7),
        gossip: true,
        msg: FleetMessage::Announce(Box::new(record)),
    };
    let honest = spec(Strategy::Push, Replicas::Count(1))
        .sign(&signer(1), T0, 1, 1)
        .unwrap();
    let id = honest.body.id();
    let unbacked = DeploymentSpec {
        name: "unbacked".into(),
        ..spec(Strategy::Push, Replicas::Count(1))
    }
    .sign(&signer(1), T0, 1, 2)
    .unwrap();
    let unbacked_id = unbacked.body.id();
    p2.handle(T0, announce(honest)).unwrap();
    p2.handle(T0, announce(unbacked)).unwrap();
    assert_eq!(p2.local_replicas().count(), 2);
    // The contract's image runs here: the node names it, and the record is pinned.
    p2.handle(
        T0 + 1,
        Input::LocalPhase {
            deployment: id,
            image: Some(IMAGE.into()),
            phase: TargetPhase::Running,
            reason: None,
        },
    )
    .unwrap();
    assert!(p2.store().is_pinned(&id) && !p2.store().is_pinned(&unbacked_id));

    // 600 records from 100 funded throwaway keys, all selecting site=a and valid for 23 hours
    // (the honest one expires in 10 minutes: the soonest).
    let mut now = T0 + 2;
    for n in 0..600u64 {
        p2.handle(now, announce(flood_record(n, now))).unwrap();
        if n % 50 == 0 {
            p2.handle(now, Input::Tick).unwrap();
        }
        assert!(
            p2.local_replicas().count() <= p2.store().len(),
            "a replica outlived its record"
        );
        now += 10;
    }
    p2.handle(now, Input::Tick).unwrap();
    let limits = FleetConfig::default().store;
    assert_eq!(
        p2.store().len(),
        limits.max_records,
        "the store stays bounded"
    );
    assert!(
        p2.store().counters().evicted >= 300,
        "{:?}",
        p2.store().counters()
    );
    assert!(
        p2.store().get(&id).is_some(),
        "the backed record was evicted"
    );
    assert!(p2.store().is_pinned(&id));
    assert!(
        p2.local_replicas().any(|(d, _)| *d == id),
        "the backed replica was dropped"
    );
    assert!(
        p2.store().get(&unbacked_id).is_none(),
        "the unbacked record expires soonest: a flood evicts it (its deployer sends it again: \
         a_record_evicted_before_its_contract_comes_back_pinned)"
    );
    assert!(!p2.local_replicas().any(|(d, _)| *d == unbacked_id));
    // The backed replica still reports to its deployer.
    reports_healthy(&mut p2, now, id);
    // Its contract ended: no longer pinned, evictable again.
    contract_ends(&mut p2, now, id);
}

/// An unfunded flood (throwaway keys with no balance on the ledger) evicts nothing: not even a
/// record no contract backs yet; the store fills and refuses the rest.
#[test]
fn records_of_unfunded_deployers_never_evict() {
    let mut p2 = FleetState::new(signer(2), FleetConfig::default());
    p2.handle(T0, Input::SelfFacts(facts(2, "a", T0))).unwrap();
    p2.handle(
        T0,
        Input::DeployerBalance {
            deployer: signer(1).node_id(),
            balance: 100,
        },
    )
    .unwrap();
    let announce = |record: Deployment| Input::Remote {
        from: Net::id(7),
        gossip: true,
        msg: FleetMessage::Announce(Box::new(record)),
    };
    let mut now = T0;
    for n in 0..400u64 {
        p2.handle(now, announce(flood_record(n, now))).unwrap();
        now += 10;
    }
    let c = p2.store().counters();
    assert_eq!((p2.store().len(), c.evicted), (256, 0), "{c:?}");
    assert_eq!(c.refused, 144);
    // A new deployment of a funded deployer (balance 100 >= max(100, 50 x 1)) still gets in,
    // evicting one of the flood's, and stays through more of it.
    let honest = spec(Strategy::Push, Replicas::Count(1))
        .sign(&signer(1), now, 1, 1)
        .unwrap();
    let id = honest.body.id();
    p2.handle(now, announce(honest)).unwrap();
    assert!(p2.store().get(&id).is_some());
    assert!(p2.local_replicas().any(|(d, _)| *d == id));
    for n in 400..800u64 {
        p2.handle(now, announce(flood_record(n, now))).unwrap();
        now += 10;
    }
    p2.handle(now, Input::Tick).unwrap();
    assert!(
        p2.store().get(&id).is_some(),
        "an unfunded record evicted it"
    );
    assert!(p2.local_replicas().any(|(d, _)| *d == id));
    assert_eq!(p2.store().counters().evicted, 1);
    // Below the price of what it asks for, a deployer is not funded.
    let greedy = DeploymentSpec {
        name: "greedy".into(),
        replicas: Replicas::Count(3),
        ..spec(Strategy::Push, Replicas::Count(3))
    }
    .sign(&signer(1), now, 1, 2)
    .unwrap();
    let greedy_id = greedy.body.id();
    p2.handle(now, announce(greedy)).unwrap();
    assert!(
        p2.store().get(&greedy_id).is_none(),
        "150 > balance 100: may not evict"
    );
}

/// The direct sends of one deployer's record to `target` among `out`.
fn direct_to(out: &[Effect], target: NodeId, version: u64) -> usize {
    out.iter()
        .filter(|e| {
            matches!(e,
            Effect::Send { to, msg: FleetMessage::Announce(r) }
                if *to == target && r.body.version == version)
        })
        .count()
}

/// A deployer sends its record directly to a target that has not said it acts on the current
/// version ten seconds after it was chosen or the version was signed, and again every ten
/// seconds, until the target's report says it does (THREATS N8: the record a flood evicted
/// before the contract comes back).
#[test]
fn the_deployer_sends_its_record_again_to_a_target_behind() {
    let every = FleetConfig::default().candidate_refresh_ms;
    let mut d = FleetState::new(signer(1), FleetConfig::default());
    d.handle(T0, Input::Provider(facts(2, "a", T0))).unwrap();
    d.handle(T0, Input::Create(spec(Strategy::Push, Replicas::Count(1))))
        .unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    let version = d.own(&id).unwrap().record.body.version;
    let target = Net::id(2);
    // The target stays online (it offers itself every few seconds).
    let tick = |d: &mut FleetState<KeySigner>, now: Timestamp| {
        d.handle(now, Input::Provider(facts(2, "a", now))).unwrap();
        d.handle(now, Input::Tick).unwrap()
    };
    let out = tick(&mut d, T0 + 10);
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::Place { target: t, .. } if *t == target))
    );
    assert_eq!(direct_to(&out, target, version), 0, "gossip gets its time");
    let out = tick(&mut d, T0 + 10 + every / 2);
    assert_eq!(direct_to(&out, target, version), 0);
    let out = tick(&mut d, T0 + 10 + every);
    assert_eq!(direct_to(&out, target, version), 1, "still behind: sent");
    let out = tick(&mut d, T0 + 10 + every + 1);
    assert_eq!(direct_to(&out, target, version), 0, "not twice at once");
    let out = tick(&mut d, T0 + 10 + 2 * every);
    assert_eq!(direct_to(&out, target, version), 1, "and again");
    // The target reports it acts on an older version (a stranger cannot report for it: the
    // report counts only from the target): still behind.
    let report = |version: u64, phase: TargetPhase| Input::Remote {
        from: target,
        gossip: false,
        msg: FleetMessage::Report {
            deployment: id,
            version,
            phase,
            reason: None,
            image: Some(IMAGE.into()),
            restarts: None,
            last_failure: None,
        },
    };
    d.handle(
        T0 + 20 + 2 * every,
        report(version - 1, TargetPhase::Staged),
    )
    .unwrap();
    let out = tick(&mut d, T0 + 10 + 3 * every);
    assert_eq!(direct_to(&out, target, version), 1);
    // Fetching the current version: its record may be unpinned there (no live contract yet),
    // and a flood may evict it before the contract is: still sent (found by attack_fleet, an
    // upgrade's record evicted right after the target's "fetching" report).
    d.handle(T0 + 20 + 3 * every, report(version, TargetPhase::Fetching))
        .unwrap();
    let out = tick(&mut d, T0 + 10 + 4 * every);
    assert_eq!(direct_to(&out, target, version), 1, "fetching: sent");
    d.handle(T0 + 20 + 4 * every, report(version, TargetPhase::Staged))
        .unwrap();
    for k in 5..11 {
        let out = tick(&mut d, T0 + 10 + k * every);
        assert_eq!(direct_to(&out, target, version), 0, "acts on it: no more");
    }
    // Re-signed: gossiped at once, sent directly only if the target is still behind later.
    let expires = d.own(&id).unwrap().record.body.expires_at;
    let at = expires - FleetConfig::default().resign_before_ms;
    let out = tick(&mut d, at);
    let next = d.own(&id).unwrap().record.body.version;
    assert!(next > version);
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::Broadcast(FleetMessage::Announce(_))))
    );
    assert_eq!(direct_to(&out, target, next), 0);
    let out = tick(&mut d, at + every);
    assert_eq!(direct_to(&out, target, next), 1);
}

/// A record a flood of funded strangers' records evicted before its contract (it expires
/// soonest) comes back when its deployer sends it again once the contract is live, and is then
/// pinned on arrival: the flood no longer evicts it, and the replica reports (THREATS N8).
#[test]
fn a_record_evicted_before_its_contract_comes_back_pinned() {
    let mut p2 = flooded_target();
    let from = |n: u64, gossip: bool, record: Deployment| Input::Remote {
        from: Net::id(n),
        gossip,
        msg: FleetMessage::Announce(Box::new(record)),
    };
    let honest = spec(Strategy::Push, Replicas::Count(1))
        .sign(&signer(1), T0, 1, 1)
        .unwrap();
    let id = honest.body.id();
    p2.handle(T0, from(7, true, honest.clone())).unwrap();
    let mut now = T0 + 1;
    let flood = |p2: &mut FleetState<KeySigner>, now: &mut Timestamp, from_n: u64| {
        for n in from_n..from_n + 300 {
            p2.handle(*now, from(7, true, flood_record(n, *now)))
                .unwrap();
            *now += 10;
        }
    };
    flood(&mut p2, &mut now, 0);
    assert!(p2.store().get(&id).is_none(), "the flood evicts it first");
    assert!(!p2.local_replicas().any(|(d, _)| *d == id));
    // Its contract is on the ledger now; the deployer sends the record again.
    p2.handle(now, Input::Backing(vec![(Net::id(1), IMAGE.into())]))
        .unwrap();
    // A stranger's copy (gossip, forwarded) of a record naming the same image but another
    // deployer is not backed by that contract.
    let other = DeploymentSpec {
        name: "copycat".into(),
        ..spec(Strategy::Push, Replicas::Count(1))
    }
    .sign(&signer(1_000), now, 1, 1)
    .unwrap();
    p2.handle(now, from(7, true, other.clone())).unwrap();
    assert!(!p2.store().is_pinned(&other.body.id()));
    p2.handle(now, from(1, false, honest)).unwrap();
    assert!(p2.store().get(&id).is_some() && p2.store().is_pinned(&id));
    assert!(p2.local_replicas().any(|(d, _)| *d == id));
    flood(&mut p2, &mut now, 300);
    p2.handle(now, Input::Tick).unwrap();
    assert!(p2.store().get(&id).is_some(), "evicted again");
    reports_healthy(&mut p2, now, id);
    // Its contract ended: the next copy is not pinned.
    p2.handle(now, Input::Backing(Vec::new())).unwrap();
    contract_ends(&mut p2, now, id);
}

/// A target that acts on a new version reports it even when its phase did not change, so its
/// deployer stops sending the record.
#[test]
fn a_target_reports_a_new_version_it_acts_on() {
    let mut p2 = FleetState::new(signer(2), FleetConfig::default());
    p2.handle(T0, Input::SelfFacts(facts(2, "a", T0))).unwrap();
    let deliver = |version: u64, at: Timestamp| Input::Remote {
        from: Net::id(1),
        gossip: false,
        msg: FleetMessage::Announce(Box::new(
            spec(Strategy::Push, Replicas::Count(1))
                .sign(&signer(1), at, version, version)
                .unwrap(),
        )),
    };
    p2.handle(
        T0,
        Input::DeployerBalance {
            deployer: Net::id(1),
            balance: 1_000,
        },
    )
    .unwrap();
    p2.handle(T0, deliver(1, T0)).unwrap();
    let id = deployment_id(&Net::id(1), "gw");
    let healthy = Input::LocalPhase {
        deployment: id,
        image: Some(IMAGE.into()),
        phase: TargetPhase::Healthy,
        reason: None,
    };
    let reports = |out: &[Effect]| -> Vec<u64> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Send {
                    msg: FleetMessage::Report { version, .. },
                    ..
                } => Some(*version),
                _ => None,
            })
            .collect()
    };
    assert_eq!(reports(&p2.handle(T0, healthy.clone()).unwrap()), vec![1]);
    assert!(reports(&p2.handle(T0 + 1, healthy.clone()).unwrap()).is_empty());
    p2.handle(T0 + 2, deliver(2, T0 + 2)).unwrap();
    assert_eq!(
        reports(&p2.handle(T0 + 3, healthy.clone()).unwrap()),
        vec![2]
    );
    assert!(reports(&p2.handle(T0 + 4, healthy).unwrap()).is_empty());
}

/// Dependency order across nodes (`after`): a deployment places nothing until the deployments
/// it waits for have every target healthy; those cannot be deleted while it is live; a cycle
/// is refused.
#[test]
fn a_deployment_after_another_waits_for_it_to_be_healthy_and_outlives_it() {
    let mut net = Net::new(FleetConfig::default());
    let named = |name: &str, after: &[&str], replicas| DeploymentSpec {
        name: name.into(),
        after: after.iter().map(|a| a.to_string()).collect(),
        ..spec(Strategy::Push, replicas)
    };
    let placed = |done: Vec<(NodeId, Effect)>, want: DeploymentId| -> Vec<NodeId> {
        done.into_iter()
            .filter_map(|(_, e)| match e {
                Effect::Place {
                    deployment, target, ..
                } if deployment == want => Some(target),
                _ => None,
            })
            .collect()
    };
    let (db, web) = (
        deployment_id(&Net::id(1), "db"),
        deployment_id(&Net::id(1), "web"),
    );
    // The dependent first: it waits for a deployment that does not exist yet.
    net.input(
        T0,
        1,
        Input::Create(named("web", &["db"], Replicas::Count(1))),
    )
    .unwrap();
    net.input(T0 + 1, 1, Input::Tick).unwrap();
    assert_eq!(placed(net.take(), web), Vec::<NodeId>::new());
    assert_eq!(
        net.deployer().status(&web).unwrap().waiting_for,
        vec!["db: not deployed by this node".to_string()]
    );
    net.input(
        T0 + 2,
        1,
        Input::Create(named("db", &[], Replicas::Count(2))),
    )
    .unwrap();
    net.input(T0 + 3, 1, Input::Tick).unwrap();
    let done = net.take();
    let db_targets = placed(done.clone(), db);
    assert_eq!(db_targets.len(), 2);
    assert_eq!(
        placed(done, web),
        Vec::<NodeId>::new(),
        "db is not healthy yet"
    );
    let seed_of = |n: &NodeId| (2..=5).find(|s| Net::id(*s) == *n).unwrap();
    let phase = |phase| Input::LocalPhase {
        deployment: db,
        image: None,
        phase,
        reason: None,
    };
    // One healthy, one running: still waiting.
    net.input(T0 + 4, seed_of(&db_targets[0]), phase(TargetPhase::Healthy))
        .unwrap();
    net.input(T0 + 4, seed_of(&db_targets[1]), phase(TargetPhase::Running))
        .unwrap();
    net.input(T0 + 5, 1, Input::Tick).unwrap();
    assert_eq!(placed(net.take(), web), Vec::<NodeId>::new());
    assert_eq!(
        net.deployer().status(&web).unwrap().waiting_for,
        vec!["db: 1 of 2 targets healthy".to_string()]
    );
    net.input(T0 + 6, seed_of(&db_targets[1]), phase(TargetPhase::Healthy))
        .unwrap();
    net.input(T0 + 7, 1, Input::Tick).unwrap();
    assert_eq!(placed(net.take(), web).len(), 1, "db healthy: web placed");
    let view = net.deployer().status(&web).unwrap();
    assert!(view.waiting_for.is_empty());
    assert_eq!(view.after, vec!["db".to_string()]);
    // A dependency turning unhealthy later does not take the dependent's targets away.
    net.input(
        T0 + 8,
        seed_of(&db_targets[0]),
        phase(TargetPhase::Unhealthy),
    )
    .unwrap();
    net.input(T0 + 9, 1, Input::Tick).unwrap();
    assert!(!net.take().iter().any(|(_, e)| matches!(
        e,
        Effect::Release { deployment, .. } if *deployment == web
    )));
    assert_eq!(net.deployer().own(&web).unwrap().targets.len(), 1);

    // A cycle is refused, naming it; so is waiting for itself (the record's bounds).
    let cycle = net
        .input(
            T0 + 10,
            1,
            Input::Create(named("db", &["web"], Replicas::Count(2))),
        )
        .unwrap_err();
    assert_eq!(
        cycle,
        FleetError::AfterCycle {
            cycle: vec!["db".into(), "web".into(), "db".into()]
        }
    );
    assert!(cycle.to_string().contains("db -> web -> db"), "{cycle}");
    let own_name = net
        .input(
            T0 + 10,
            1,
            Input::Create(named("cache", &["cache"], Replicas::Count(1))),
        )
        .unwrap_err();
    assert!(
        matches!(own_name, FleetError::Absurd { field: "after", .. }),
        "{own_name}"
    );

    // Stop in reverse: db is needed while web is live.
    let needed = net.input(T0 + 11, 1, Input::Delete(db)).unwrap_err();
    assert_eq!(
        needed,
        FleetError::NeededBy {
            name: "db".into(),
            dependents: vec!["web".into()]
        }
    );
    assert!(needed.to_string().contains("delete it first"), "{needed}");
    assert!(!net.deployer().own(&db).unwrap().record.body.deleted);
    net.input(T0 + 12, 1, Input::Delete(web)).unwrap();
    net.input(T0 + 13, 1, Input::Delete(db)).unwrap();
    assert!(net.deployer().own(&db).unwrap().record.body.deleted);
}

#[test]
fn cycles_through_several_deployments_are_found_and_deleted_ones_do_not_count() {
    let mut net = Net::new(FleetConfig::default());
    let named = |name: &str, after: &[&str]| DeploymentSpec {
        name: name.into(),
        after: after.iter().map(|a| a.to_string()).collect(),
        ..spec(Strategy::Push, Replicas::Count(1))
    };
    net.input(T0, 1, Input::Create(named("a", &["b", "x"])))
        .unwrap();
    net.input(T0, 1, Input::Create(named("b", &["c"]))).unwrap();
    let e = net
        .input(T0, 1, Input::Create(named("c", &["d", "a"])))
        .unwrap_err();
    assert_eq!(
        e,
        FleetError::AfterCycle {
            cycle: vec!["c".into(), "a".into(), "b".into(), "c".into()]
        }
    );
    // Without the back edge it is accepted; a deleted deployment's edges no longer count.
    net.input(T0, 1, Input::Create(named("c", &["d"]))).unwrap();
    net.input(T0 + 1, 1, Input::Delete(deployment_id(&Net::id(1), "a")))
        .unwrap();
    net.input(T0 + 2, 1, Input::Create(named("x", &["a"])))
        .unwrap();
}
