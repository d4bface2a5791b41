//! Unit and property tests of the fleet rules.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::Strategy as Gen;

use super::Strategy;
use super::*;
use agora_market::identity::Signer;
use agora_market::resources::{Interface, Resources};
use agora_market::test_utils::signer;

const NOW: Timestamp = 1_000_000;

fn needs() -> Resources {
    Resources {
        cpu_millis: 500,
        memory_bytes: 64 << 20,
        ..Resources::default()
    }
}

fn spec(selector: &str, replicas: Replicas) -> DeploymentSpec {
    DeploymentSpec {
        name: "gw".into(),
        image: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into(),
        selector: Selector::parse(selector).unwrap(),
        variants: Vec::new(),
        needs: needs(),
        replicas,
        strategy: Strategy::Push,
        max_price_per_replica: 100,
        duration_ms: 3_600_000,
        valid_for_ms: 600_000,
        after: Vec::new(),
    }
}

fn desired(selector: &str, replicas: Replicas) -> Deployment {
    spec(selector, replicas)
        .sign(&signer(1), NOW, 1, 1)
        .unwrap()
}

fn provider(seed: u64, site: &str, cpu: u64, last_seen: Timestamp) -> ProviderFacts {
    let cap = Resources {
        cpu_millis: cpu,
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
        last_seen,
    }
}

fn observed(providers: Vec<ProviderFacts>) -> Observed {
    Observed {
        providers: providers.into_iter().map(|p| (p.node, p)).collect(),
        ..Observed::default()
    }
}

fn running() -> TargetStatus {
    TargetStatus {
        phase: TargetPhase::Running,
        reason: None,
    }
}

/// Applies `actions` as the node would once they succeed; returns the next observed state.
fn apply(obs: &mut Observed, actions: &[Action], needs: &Resources) {
    for a in actions {
        match a {
            Action::Place { target } => {
                assert!(
                    obs.targets.insert(*target, running()).is_none(),
                    "placed twice"
                );
                if let Some(p) = obs.providers.get_mut(target) {
                    p.free = p.free.checked_sub(needs).unwrap();
                }
            }
            Action::Release { target, reason } => {
                assert!(
                    obs.targets.remove(target).is_some(),
                    "released a non-target"
                );
                if let Some(p) = obs.providers.get_mut(target)
                    && let Ok(free) = p.free.checked_add(needs)
                {
                    p.free = free;
                }
                if *reason == ReleaseReason::Failed {
                    obs.avoid.insert(*target);
                }
            }
        }
    }
}

#[test]
fn record_signs_encodes_and_decodes() {
    let d = desired("region=eu,site=a", Replicas::Count(3));
    let bytes = encode_deployment(&d).unwrap();
    let (back, id) = decode_deployment(&bytes, NOW).unwrap();
    assert_eq!(back, d);
    assert_eq!(id, deployment_id(&signer(1).node_id(), "gw"));
    let next = spec("region=eu,site=a", Replicas::Count(3))
        .sign(&signer(1), NOW + 5, 2, 2)
        .unwrap();
    assert_eq!(next.body.id(), id, "the id is stable across versions");
    assert_ne!(next.id().unwrap(), d.id().unwrap());
}

#[test]
fn an_upgraded_record_names_the_image_it_replaces_signed_and_bounded() {
    let d = desired("site=a", Replicas::All);
    assert_eq!(d.body.previous_image, None);
    let new_image = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    let up = record::upgraded(&d.body, new_image.into(), &signer(1), NOW + 10, 600_000).unwrap();
    assert_eq!(up.body.image, new_image);
    assert_eq!(
        up.body.previous_image.as_deref(),
        Some(d.body.image.as_str())
    );
    assert!(up.body.version > d.body.version);
    assert_eq!(up.body.id(), d.body.id(), "same deployment, next version");
    let bytes = encode_deployment(&up).unwrap();
    assert_eq!(decode_deployment(&bytes, NOW + 20).unwrap().0, up);
    // Signed: a peer cannot change what the targets roll back to.
    let mut forged = up.clone();
    forged.body.previous_image = Some("bafkreiother".into());
    let bytes = serde_cbor::to_vec(&forged).unwrap();
    assert!(matches!(
        decode_deployment(&bytes, NOW + 20),
        Err(FleetError::BadRecord { .. })
    ));
    // Bounded like the image, and never the image itself.
    for bad in ["x".repeat(200), "not a cid".into(), new_image.into()] {
        let mut body = up.body.clone();
        body.previous_image = Some(bad);
        assert!(
            matches!(
                body.check(NOW + 20),
                Err(FleetError::Absurd {
                    field: "previous_image",
                    ..
                })
            ),
            "{:?}",
            body.previous_image
        );
    }
    // Without an upgrade the field is not encoded at all, so the signed bytes (and every
    // record nodes without this field sign and verify) are unchanged.
    let plain = encode_deployment(&d).unwrap();
    assert!(!plain.windows(14).any(|w| w == b"previous_image"));
    assert!(bytes.windows(14).any(|w| w == b"previous_image"));
}

#[test]
fn tampered_oversized_expired_and_absurd_records_are_refused() {
    let d = desired("site=a", Replicas::All);
    let mut forged = d.clone();
    forged.body.image = "bafkreiother".into();
    let bytes = serde_cbor::to_vec(&forged).unwrap();
    assert!(matches!(
        decode_deployment(&bytes, NOW),
        Err(FleetError::BadRecord { .. })
    ));
    let huge = vec![0u8; limits::MAX_RECORD_BYTES + 1];
    assert!(matches!(
        decode_deployment(&huge, NOW),
        Err(FleetError::TooLarge { .. })
    ));
    assert!(matches!(
        decode_deployment(b"\xff\x00garbage", NOW),
        Err(FleetError::Decode(_))
    ));
    let bytes = encode_deployment(&d).unwrap();
    assert!(matches!(
        decode_deployment(&bytes, d.body.expires_at),
        Err(FleetError::Expired { .. })
    ));
    for bad in [
        DeploymentSpec {
            replicas: Replicas::Count(0),
            ..spec("", Replicas::All)
        },
        DeploymentSpec {
            replicas: Replicas::Count(5000),
            ..spec("", Replicas::All)
        },
        DeploymentSpec {
            name: "Bad Name".into(),
            ..spec("", Replicas::All)
        },
        DeploymentSpec {
            image: "x".repeat(200),
            ..spec("", Replicas::All)
        },
        DeploymentSpec {
            image: "../etc".into(),
            ..spec("", Replicas::All)
        },
    ] {
        assert!(matches!(
            bad.sign(&signer(1), NOW, 1, 1),
            Err(FleetError::Absurd { .. })
        ));
    }
    // A peer signing an absurd record by hand is refused on decode too.
    let mut body = d.body.clone();
    body.version = 0;
    let signed = agora_market::signed::Signed::sign(body, &signer(1)).unwrap();
    let bytes = serde_cbor::to_vec(&signed).unwrap();
    assert!(matches!(
        decode_deployment(&bytes, NOW),
        Err(FleetError::Absurd {
            field: "version",
            ..
        })
    ));
}

#[test]
fn all_places_every_matching_online_provider_but_the_deployer() {
    let d = desired("site=a", Replicas::All);
    let obs = observed(vec![
        provider(1, "a", 1000, NOW), // the deployer itself
        provider(2, "a", 1000, NOW),
        provider(3, "a", 1000, NOW),
        provider(4, "b", 1000, NOW),
        provider(5, "a", 100, NOW), // no room
        provider(6, "a", 1000, 0),  // offline
    ]);
    let actions = plan(&d.body, &obs, NOW, &PlanConfig::default());
    let placed: BTreeSet<NodeId> = actions
        .iter()
        .map(|a| match a {
            Action::Place { target } => *target,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        placed,
        BTreeSet::from([signer(2).node_id(), signer(3).node_id()])
    );
}

#[test]
fn a_target_that_stops_matching_is_released_and_replaced() {
    let d = desired("site=a", Replicas::Count(2));
    let mut obs = observed((2..6).map(|s| provider(s, "a", 1000, NOW)).collect());
    let cfg = PlanConfig::default();
    let first = plan(&d.body, &obs, NOW, &cfg);
    assert_eq!(first.len(), 2);
    apply(&mut obs, &first, &d.body.needs);
    assert!(plan(&d.body, &obs, NOW, &cfg).is_empty(), "a fixpoint");
    let moved = *obs.targets.keys().next().unwrap();
    obs.providers
        .get_mut(&moved)
        .unwrap()
        .labels
        .insert("site".into(), "b".into());
    let second = plan(&d.body, &obs, NOW, &cfg);
    assert!(second.contains(&Action::Release {
        target: moved,
        reason: ReleaseReason::NoLongerMatches
    }));
    assert_eq!(
        second
            .iter()
            .filter(|a| matches!(a, Action::Place { .. }))
            .count(),
        1
    );
    apply(&mut obs, &second, &d.body.needs);
    assert_eq!(obs.targets.len(), 2);
    assert!(!obs.targets.contains_key(&moved));
}

#[test]
fn offline_targets_are_replaced_when_counted_and_kept_with_all_for_ten_spans() {
    let cfg = PlanConfig::default();
    let late = NOW + cfg.offline_after_ms + 1;
    let mut obs = observed(vec![
        provider(2, "a", 1000, NOW),
        provider(3, "a", 1000, late),
    ]);
    obs.targets.insert(signer(2).node_id(), running());
    let counted = desired("site=a", Replicas::Count(1));
    assert_eq!(
        plan(&counted.body, &obs, late, &cfg),
        vec![
            Action::Release {
                target: signer(2).node_id(),
                reason: ReleaseReason::Offline
            },
            Action::Place {
                target: signer(3).node_id()
            }
        ]
    );
    let all = desired("site=a", Replicas::All);
    assert_eq!(
        plan(&all.body, &obs, late, &cfg),
        vec![Action::Place {
            target: signer(3).node_id()
        }],
        "with --all the offline target is kept and converges when it returns"
    );
    // With --all, kept for ten offline spans, then released (no longer counted, and with
    // variants the rest rebalanced); nothing is placed on a provider still offline.
    let bound = NOW + ALL_OFFLINE_SPANS * cfg.offline_after_ms;
    obs.providers
        .get_mut(&signer(3).node_id())
        .unwrap()
        .last_seen = bound + 1;
    assert_eq!(
        plan(&all.body, &obs, bound, &cfg),
        vec![Action::Place {
            target: signer(3).node_id()
        }],
        "kept up to the bound"
    );
    assert_eq!(
        plan(&all.body, &obs, bound + 1, &cfg),
        vec![
            Action::Release {
                target: signer(2).node_id(),
                reason: ReleaseReason::Offline
            },
            Action::Place {
                target: signer(3).node_id()
            }
        ],
        "released past it"
    );
}

#[test]
fn delete_failure_and_surplus_release() {
    let cfg = PlanConfig::default();
    let mut obs = observed((2..6).map(|s| provider(s, "a", 1000, NOW)).collect());
    for s in 2..5 {
        obs.targets.insert(signer(s).node_id(), running());
    }
    let d = desired("site=a", Replicas::All);
    let gone = tombstone(&d.body, &signer(1), NOW, 60_000).unwrap();
    assert!(gone.body.deleted && gone.body.version > d.body.version);
    let actions = plan(&gone.body, &obs, NOW, &cfg);
    assert_eq!(actions.len(), 3);
    assert!(actions.iter().all(|a| matches!(
        a,
        Action::Release {
            reason: ReleaseReason::Deleted,
            ..
        }
    )));
    let one = desired("site=a", Replicas::Count(1));
    obs.targets.get_mut(&signer(3).node_id()).unwrap().phase = TargetPhase::Healthy;
    let actions = plan(&one.body, &obs, NOW, &cfg);
    assert_eq!(actions.len(), 2);
    assert!(actions.iter().all(|a| matches!(
        a,
        Action::Release { target, reason: ReleaseReason::Surplus } if *target != signer(3).node_id()
    )), "the most advanced target is kept");
    obs.targets.get_mut(&signer(3).node_id()).unwrap().phase = TargetPhase::Failed;
    obs.avoid.insert(signer(3).node_id());
    let actions = plan(&d.body, &obs, NOW, &cfg);
    assert!(actions.contains(&Action::Release {
        target: signer(3).node_id(),
        reason: ReleaseReason::Failed
    }));
    assert!(!actions.contains(&Action::Place {
        target: signer(3).node_id()
    }));
    let sum = summarize(&obs.targets);
    assert_eq!(sum.get(&TargetPhase::Running), Some(&2));
    assert_eq!(sum.get(&TargetPhase::Failed), Some(&1));
}

#[test]
fn providers_know_whether_they_are_wanted() {
    let d = desired("site=a", Replicas::All);
    assert!(wants(&d.body, &provider(2, "a", 1000, NOW), NOW));
    assert!(!wants(&d.body, &provider(2, "b", 1000, NOW), NOW));
    assert!(
        !wants(&d.body, &provider(1, "a", 1000, NOW), NOW),
        "not the deployer"
    );
    assert!(!wants(
        &d.body,
        &provider(2, "a", 1000, NOW),
        d.body.expires_at
    ));
}

#[test]
fn store_keeps_latest_version_and_bounds_strangers() {
    let me = signer(99).node_id();
    let limits = StoreLimits {
        max_records: 3,
        max_per_deployer: 2,
    };
    let mut store = DeploymentStore::new(me, limits);
    let named = |seed: u64, name: &str, version: u64, valid: u64| {
        DeploymentSpec {
            name: name.into(),
            valid_for_ms: valid,
            ..spec("", Replicas::All)
        }
        .sign(&signer(seed), NOW, version, version)
        .unwrap()
    };
    assert_eq!(store.insert(named(1, "a", 1, 1000), true), Ok(Stored::New));
    assert_eq!(
        store.insert(named(1, "a", 1, 1000), true),
        Ok(Stored::Stale)
    );
    assert_eq!(
        store.insert(named(1, "a", 2, 1000), true),
        Ok(Stored::Replaced)
    );
    assert_eq!(store.insert(named(1, "b", 1, 1000), false), Ok(Stored::New));
    assert!(matches!(
        store.insert(named(1, "c", 1, 1000), true),
        Err(FleetError::DeployerQuota { .. })
    ));
    assert_eq!(store.insert(named(2, "a", 1, 2000), true), Ok(Stored::New));
    // Full: a record that does not select us is refused rather than evicting anything...
    assert!(matches!(
        store.insert(named(3, "a", 1, 5000), false),
        Err(FleetError::StoreFull { .. })
    ));
    // ...one that does evicts an irrelevant one first, then the relevant one expiring soonest,
    // and our own always fits.
    assert_eq!(store.insert(named(5, "a", 1, 5000), true), Ok(Stored::New));
    assert!(
        store
            .get(&deployment_id(&signer(1).node_id(), "b"))
            .is_none()
    );
    assert_eq!(
        store.insert(named(99, "mine", 1, 9000), false),
        Ok(Stored::New)
    );
    assert!(
        store
            .get(&deployment_id(&signer(1).node_id(), "a"))
            .is_none()
    );
    assert_eq!(store.len(), 3);
    assert!(store.get(&deployment_id(&me, "mine")).is_some());
    let c = store.counters();
    assert_eq!((c.stale, c.refused, c.evicted), (1, 2, 2));
    assert_eq!(store.prune(NOW + 5000), 2);
    assert_eq!(store.len(), 1);
}

#[test]
fn pinned_records_are_never_evicted_and_at_most_half_the_store_is_pinned() {
    let me = signer(99).node_id();
    let limits = StoreLimits {
        max_records: 4,
        max_per_deployer: 8,
    };
    let mut store = DeploymentStore::new(me, limits);
    let named = |seed: u64, name: &str, valid: u64| {
        DeploymentSpec {
            name: name.into(),
            valid_for_ms: valid,
            ..spec("", Replicas::All)
        }
        .sign(&signer(seed), NOW, 1, 1)
        .unwrap()
    };
    let id = |seed: u64, name: &str| deployment_id(&signer(seed).node_id(), name);
    assert!(!store.pin(id(1, "a")), "only held records are pinned");
    for (seed, name) in [(1, "a"), (1, "b"), (1, "c")] {
        store.insert(named(seed, name, 1000), true).unwrap();
    }
    assert!(store.pin(id(1, "a")) && store.pin(id(1, "b")));
    assert!(!store.pin(id(1, "c")), "half the store is pinned already");
    assert_eq!(store.pinned(), 2);
    store.insert(named(2, "x", 50_000), true).unwrap();
    // Full: every wanted record from now on evicts the unpinned one expiring soonest; the
    // pinned ones expire sooner than all of them and stay.
    for n in 0..20 {
        store
            .insert(named(3 + n, "flood", 60_000 + n), true)
            .unwrap();
    }
    assert_eq!(store.len(), 4);
    assert!(store.get(&id(1, "a")).is_some() && store.get(&id(1, "b")).is_some());
    assert!(store.get(&id(1, "c")).is_none());
    // A new version replaces a pinned record in place and stays pinned.
    store
        .insert(
            DeploymentSpec {
                name: "a".into(),
                valid_for_ms: 1000,
                ..spec("", Replicas::All)
            }
            .sign(&signer(1), NOW, 2, 2)
            .unwrap(),
            true,
        )
        .unwrap();
    assert!(store.is_pinned(&id(1, "a")));
    store.unpin(&id(1, "b"));
    store.insert(named(40, "flood", 70_000), true).unwrap();
    assert!(
        store.get(&id(1, "b")).is_none(),
        "unpinned: evictable again"
    );
    // Expiry drops pinned records too (the deployer re-signs before it).
    assert_eq!(store.prune(NOW + 1000), 1);
    assert_eq!(store.pinned(), 0);
}

#[test]
fn records_valid_for_more_than_a_day_are_absurd() {
    let long = DeploymentSpec {
        valid_for_ms: limits::MAX_VALID_FOR_MS + 1,
        ..spec("", Replicas::All)
    };
    assert!(matches!(
        long.sign(&signer(1), NOW, 1, 1),
        Err(FleetError::Absurd {
            field: "expires_at",
            ..
        })
    ));
    let day = DeploymentSpec {
        valid_for_ms: limits::MAX_VALID_FOR_MS,
        ..spec("", Replicas::All)
    };
    assert!(day.sign(&signer(1), NOW, 1, 1).is_ok());
}

fn arb_provider() -> impl Gen<Value = (u64, bool, u64, bool)> {
    // (seed, site matches, cpu, online)
    (
        2u64..40,
        any::<bool>(),
        prop_oneof![Just(100u64), Just(1000), Just(2000)],
        any::<bool>(),
    )
}

proptest! {
    /// From any start, applying the plan's actions reaches a fixpoint in one round: no more
    /// targets than replicas, every target admitted, and no eligible provider left out while
    /// below the count. Changing one provider's labels afterwards releases and replaces it.
    #[test]
    fn plan_converges_and_respects_the_count(
        providers in proptest::collection::vec(arb_provider(), 0..25),
        initial in proptest::collection::btree_set(2u64..40, 0..10),
        count in prop_oneof![Just(None), (1u32..8).prop_map(Some)],
        flip in 0usize..25,
    ) {
        let cfg = PlanConfig::default();
        let replicas = count.map_or(Replicas::All, Replicas::Count);
        let d = desired("site=a", replicas);
        let late = NOW + 10 * cfg.offline_after_ms;
        let facts: Vec<ProviderFacts> = providers
            .iter()
            .map(|(seed, ok, cpu, up)| {
                provider(*seed, if *ok { "a" } else { "b" }, *cpu, if *up { late } else { 0 })
            })
            .collect();
        let mut obs = observed(facts);
        for seed in initial {
            obs.targets.insert(signer(seed).node_id(), running());
        }
        let actions = plan(&d.body, &obs, late, &cfg);
        apply(&mut obs, &actions, &d.body.needs);
        prop_assert!(plan(&d.body, &obs, late, &cfg).is_empty(), "one round reaches a fixpoint");
        prop_assert!(obs.targets.len() <= replicas.ceiling());
        for t in obs.targets.keys() {
            let p = obs.providers.get(t).unwrap();
            prop_assert!(d.body.selector.admits(p, &d.body.needs));
        }
        let eligible = obs
            .providers
            .values()
            .filter(|p| p.node != d.body.deployer
                && d.body.selector.admits(p, &d.body.needs)
                && (obs.targets.contains_key(&p.node) || d.body.selector.can_take(p, &d.body.needs))
                && (p.last_seen == late || obs.targets.contains_key(&p.node)))
            .count();
        prop_assert_eq!(obs.targets.len(), eligible.min(replicas.ceiling()));

        // A target that stops matching is released and (if possible) replaced.
        if let Some(moved) = obs.targets.keys().nth(flip % obs.targets.len().max(1)).copied() {
            obs.providers.get_mut(&moved).unwrap().labels.insert("site".into(), "b".into());
            let actions = plan(&d.body, &obs, late, &cfg);
            let released = Action::Release {
                target: moved,
                reason: ReleaseReason::NoLongerMatches,
            };
            prop_assert!(actions.contains(&released), "the moved target is released");
            apply(&mut obs, &actions, &d.body.needs);
            prop_assert!(!obs.targets.contains_key(&moved));
            prop_assert!(plan(&d.body, &obs, late, &cfg).is_empty());
            prop_assert!(obs.targets.len() <= replicas.ceiling());
        }

        // Deleting releases everything.
        let gone = tombstone(&d.body, &signer(1), late, 60_000).unwrap();
        let actions = plan(&gone.body, &obs, late, &cfg);
        apply(&mut obs, &actions, &d.body.needs);
        prop_assert!(obs.targets.is_empty());
    }
}

#[test]
fn fleet_messages_round_trip_and_hostile_ones_are_refused() {
    let d = desired("site=a", Replicas::All);
    let msg = FleetMessage::Announce(Box::new(d));
    assert_eq!(FleetMessage::decode(&msg.encode().unwrap()).unwrap(), msg);
    let long = FleetMessage::Report {
        deployment: deployment_id(&signer(1).node_id(), "gw"),
        version: 1,
        phase: TargetPhase::Failed,
        reason: Some("x".repeat(limits::MAX_REASON_LEN + 1)),
        image: None,
        restarts: None,
        last_failure: None,
    };
    assert!(matches!(
        FleetMessage::decode(&long.encode().unwrap()),
        Err(FleetError::TooLarge { .. })
    ));
    // The same bound holds for the last restart's reason.
    let long_failure = FleetMessage::Report {
        deployment: deployment_id(&signer(1).node_id(), "gw"),
        version: 1,
        phase: TargetPhase::Running,
        reason: None,
        image: None,
        restarts: Some(1),
        last_failure: Some("x".repeat(limits::MAX_REASON_LEN + 1)),
    };
    assert!(matches!(
        FleetMessage::decode(&long_failure.encode().unwrap()),
        Err(FleetError::TooLarge { .. })
    ));
    let huge = vec![0u8; message::MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        FleetMessage::decode(&huge),
        Err(FleetError::TooLarge { .. })
    ));
    assert!(matches!(
        FleetMessage::decode(b"\x9f\x9f\x9f"),
        Err(FleetError::Decode(_))
    ));
}

proptest! {
    /// Hostile bytes never panic the decoders; a mutated valid record is refused or decodes to
    /// a record that verifies.
    #[test]
    fn decoders_survive_hostile_bytes(
        junk in proptest::collection::vec(any::<u8>(), 0..6000),
        flip in 0usize..4096,
        bit in 0u8..8,
    ) {
        let _ = FleetMessage::decode(&junk);
        let _ = decode_deployment(&junk, NOW);
        let mut bytes = encode_deployment(&desired("site=a", Replicas::All)).unwrap();
        let i = flip % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok((record, _)) = decode_deployment(&bytes, NOW) {
            prop_assert!(record.verify().is_ok());
        }
    }
}

fn arb_phase() -> impl Gen<Value = TargetPhase> {
    prop_oneof![
        Just(TargetPhase::Contracting),
        Just(TargetPhase::Fetching),
        Just(TargetPhase::Staged),
        Just(TargetPhase::Running),
        Just(TargetPhase::Unhealthy),
        Just(TargetPhase::Healthy),
        Just(TargetPhase::Failed),
    ]
}

proptest! {
    /// Reports of every phase (healthy, unhealthy with a reason, …) round-trip; a reason over
    /// the bound is refused whatever the phase; a truncated report never panics the decoder.
    #[test]
    fn health_reports_round_trip_and_are_bounded(
        phase in arb_phase(),
        reason in proptest::option::of("[a-z :0-9]{0,260}"),
        version in any::<u64>(),
        cut in 0usize..64,
        restarts in proptest::option::of(any::<u32>()),
    ) {
        let msg = FleetMessage::Report {
            deployment: deployment_id(&signer(1).node_id(), "gw"),
            version,
            phase,
            reason: reason.clone(),
            image: None,
            restarts,
            last_failure: None,
        };
        let bytes = msg.encode().unwrap();
        let decoded = FleetMessage::decode(&bytes);
        if reason.as_ref().is_some_and(|r| r.len() > limits::MAX_REASON_LEN) {
            let refused = matches!(decoded, Err(FleetError::TooLarge { .. }));
            prop_assert!(refused);
        } else {
            prop_assert_eq!(decoded.unwrap(), msg);
        }
        let _ = FleetMessage::decode(&bytes[..bytes.len().saturating_sub(cut)]);
    }
}

/// Variants travel signed in the record and are bounded when a record is decoded: a peer that
/// signs nine variants, a duplicate name or an image that is not its first variant's by hand is
/// refused; a record without variants does not encode the field (it signs as before).
#[test]
fn variants_are_signed_and_bounded_when_a_record_is_decoded() {
    use crate::variant::Variant;
    let plain = desired("site=a", Replicas::All);
    let bytes = encode_deployment(&plain).unwrap();
    assert!(!bytes.windows(8).any(|w| w == b"variants"));
    let image = plain.body.image.clone();
    let variant = |name: &str, img: &str| Variant {
        name: name.into(),
        image: img.into(),
        selector: Selector::parse("iface=ble").unwrap(),
    };
    let mut with = plain.body.clone();
    with.variants = vec![variant("a", &image), variant("b", "bafkreib")];
    let signed = agora_market::signed::Signed::sign(with.clone(), &signer(1)).unwrap();
    let (back, _) = decode_deployment(&encode_deployment(&signed).unwrap(), NOW).unwrap();
    assert_eq!(back.body.variants, with.variants);
    let hostile = |variants: Vec<Variant>| {
        let mut body = plain.body.clone();
        body.variants = variants;
        let signed = agora_market::signed::Signed::sign(body, &signer(1)).unwrap();
        decode_deployment(&serde_cbor::to_vec(&signed).unwrap(), NOW)
    };
    let mut nine = vec![variant("v0", &image)];
    nine.extend((1..9).map(|i| variant(&format!("v{i}"), &format!("bafkreiv{i}"))));
    for bad in [
        nine,
        vec![variant("a", &image), variant("a", "bafkreib")],
        vec![variant("a", "bafkreinotthefirst")],
        vec![variant("Not A Token", &image)],
    ] {
        assert!(
            matches!(
                hostile(bad.clone()),
                Err(FleetError::Absurd {
                    field: "variants",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
}
