//! Variants in the fleet machine: the deployer places each target's variant, rebalances after a
//! join or a leave (release the old variant, place the new one), shows it, and refuses what it
//! cannot do; a provider fetches early only when one variant fits it and reports its variant's
//! image.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use super::super::*;
use crate::record::{Replicas, Strategy, encode_deployment};
use crate::selector::Selector;
use crate::upgrade::{Outcome, UpgradeConfig, UpgradeTo};
use crate::variant::Variant;
use agora_market::identity::KeySigner;
use agora_market::resources::Interface;
use agora_market::test_utils::signer;

const T0: Timestamp = 1_000_000;
const A: &str = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bafkreibbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn facts(seed: u64, ble: bool, now: Timestamp) -> ProviderFacts {
    let mut cap = Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        ..Resources::default()
    }
    .with_interface(Interface::LoRa, 1);
    if ble {
        cap = cap.with_interface(Interface::Ble, 1);
    }
    ProviderFacts {
        node: signer(seed).node_id(),
        region: Some("eu".into()),
        labels: BTreeMap::from([("site".to_string(), "a".to_string())]),
        free: cap.clone(),
        capacity: cap,
        last_seen: now,
    }
}

fn variants() -> Vec<Variant> {
    vec![
        Variant::parse(&format!("a={A}")).unwrap(),
        Variant::parse(&format!("b={B}:iface=ble")).unwrap(),
    ]
}

fn spec() -> DeploymentSpec {
    DeploymentSpec {
        name: "gw".into(),
        image: A.into(),
        selector: Selector::parse("site=a").unwrap(),
        variants: variants(),
        needs: Resources {
            cpu_millis: 100,
            ..Resources::default()
        },
        replicas: Replicas::All,
        strategy: Strategy::Push,
        max_price_per_replica: 50,
        duration_ms: 3_600_000,
        valid_for_ms: 600_000,
        after: Vec::new(),
    }
}

fn id(seed: u64) -> NodeId {
    signer(seed).node_id()
}

/// Applies placements and releases to the set of live (target, image) contracts, in order,
/// and checks no target ever holds two images of the deployment.
fn apply(live: &mut BTreeSet<(NodeId, String)>, effects: &[Effect]) {
    apply_to(live, effects, false);
}

/// [`apply`]; with `two_at_once` a target may hold a second image (never the same twice).
fn apply_to(live: &mut BTreeSet<(NodeId, String)>, effects: &[Effect], two_at_once: bool) {
    for e in effects {
        match e {
            Effect::Release { target, image, .. } => {
                assert!(
                    live.remove(&(*target, image.clone())),
                    "released what was not placed"
                );
            }
            Effect::Place { target, image, .. } => {
                assert!(
                    two_at_once || live.iter().all(|(t, _)| t != target),
                    "a target would run two variants"
                );
                assert!(live.insert((*target, image.clone())), "placed twice");
            }
            _ => {}
        }
    }
}

fn count(live: &BTreeSet<(NodeId, String)>, image: &str) -> usize {
    live.iter().filter(|(_, i)| i == image).count()
}

/// The deployer (seed 1) once `providers` (`(seed, BLE)`) offered themselves at `T0`, it
/// created `spec` and its first tick placed the targets: the machine and the live
/// `(target, image)` pairs.
fn placed(
    providers: &[(u64, bool)],
    spec: DeploymentSpec,
) -> (FleetState<KeySigner>, BTreeSet<(NodeId, String)>) {
    let mut d = FleetState::new(signer(1), FleetConfig::default());
    for &(seed, ble) in providers {
        d.handle(T0, Input::Provider(facts(seed, ble, T0))).unwrap();
    }
    d.handle(T0, Input::Create(spec)).unwrap();
    let mut live = BTreeSet::new();
    apply(&mut live, &d.handle(T0 + 1, Input::Tick).unwrap());
    (d, live)
}

#[test]
fn variants_are_placed_balanced_and_rebalanced_after_a_join_one_per_target() {
    // Providers 2, 3, 4 have BLE, 5 has not: 2/2, b only on BLE.
    let (mut d, mut live) = placed(&[(2, true), (3, true), (4, true), (5, false)], spec());
    let dep = deployment_id(&id(1), "gw");
    assert_eq!((count(&live, A), count(&live, B)), (2, 2));
    assert!(live.contains(&(id(5), A.to_string())), "no BLE: a");
    let view = d.status(&dep).unwrap();
    assert_eq!(
        view.variant_counts,
        BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
    );
    assert_eq!(view.variants.len(), 2);
    for t in &view.targets {
        let image = if t.variant.as_deref() == Some("b") {
            B
        } else {
            A
        };
        assert!(live.contains(&(t.node, image.to_string())));
    }
    // Progress counts only for the target's own variant's image.
    let (b_target, _) = live.iter().find(|(_, i)| i == B).cloned().unwrap();
    let progress = |image: &str, phase| Input::TargetProgress {
        deployment: dep,
        target: b_target,
        image: image.into(),
        phase,
        reason: None,
    };
    d.handle(T0 + 2, progress(A, TargetPhase::Failed)).unwrap();
    assert_eq!(
        d.target_phase(&dep, &b_target, B),
        Some(TargetPhase::Contracting)
    );
    d.handle(T0 + 2, progress(B, TargetPhase::Running)).unwrap();
    assert_eq!(
        d.target_phase(&dep, &b_target, B),
        Some(TargetPhase::Running)
    );
    assert_eq!(d.target_phase(&dep, &b_target, A), None);
    // Stable: nothing changes, nothing moves.
    assert!(
        d.handle(T0 + 3, Input::Tick)
            .unwrap()
            .iter()
            .all(|e| !matches!(e, Effect::Place { .. } | Effect::Release { .. }))
    );

    // Two providers without BLE join: 3/3, so the BLE target that ran a moves to b: its a
    // contract is released and b placed, and nothing else moves.
    for seed in [6, 7] {
        d.handle(T0 + 4, Input::Provider(facts(seed, false, T0 + 4)))
            .unwrap();
    }
    let out = d.handle(T0 + 5, Input::Tick).unwrap();
    let released = releases(&out);
    assert_eq!(released.len(), 1, "{out:?}");
    let (moved, image, reason) = released[0].clone();
    assert_eq!((image.as_str(), reason), (A, ReleaseReason::Rebalanced));
    assert!([id(2), id(3), id(4)].contains(&moved));
    apply(&mut live, &out);
    assert!(live.contains(&(moved, B.to_string())));
    assert_eq!((count(&live, A), count(&live, B)), (3, 3));
    for (t, i) in &live {
        if i == B {
            assert!([id(2), id(3), id(4)].contains(t), "b only on BLE");
        }
    }
    let view = d.status(&dep).unwrap();
    assert_eq!(
        view.variant_counts,
        BTreeMap::from([("a".into(), 3), ("b".into(), 3)])
    );

    // Switching between one image and variants is refused, with what to do.
    let plain = DeploymentSpec {
        variants: Vec::new(),
        ..spec()
    };
    assert!(matches!(
        d.handle(T0 + 6, Input::Create(plain)),
        Err(FleetError::VariantsChanged { .. })
    ));
    let up = Input::Upgrade {
        deployment: dep,
        to: UpgradeTo::Image("bafkreicccc".into()),
        config: UpgradeConfig {
            max_unavailable: 1,
            health_timeout_ms: 1000,
            max_failed: 0,
        },
    };
    assert!(matches!(
        d.handle(T0 + 6, up),
        Err(FleetError::NotUpgradable { .. })
    ));

    // Delete releases each target's own variant.
    let out = d.handle(T0 + 7, Input::Delete(dep)).unwrap();
    apply(&mut live, &out);
    assert!(live.is_empty(), "{live:?}");
}

/// THREATS D1: a target that flips its facts (here its BLE interface) moves nobody until the
/// change has held for `VARIANT_SETTLE_MS`; a flip undone within it moves nobody at all.
#[test]
fn a_target_flipping_its_facts_moves_nobody_until_the_change_holds() {
    use super::super::variants::VARIANT_SETTLE_MS;
    let mut d = FleetState::new(signer(1), FleetConfig::default());
    let dep = deployment_id(&id(1), "gw");
    // Providers 2, 3, 4 have BLE, 5 has not: 2/2, b on two of the BLE ones.
    let seen = |d: &mut FleetState<KeySigner>, now, flipper: Option<NodeId>| {
        for (seed, ble) in [(2, true), (3, true), (4, true), (5, false)] {
            let ble = ble && flipper != Some(id(seed));
            d.handle(now, Input::Provider(facts(seed, ble, now)))
                .unwrap();
        }
    };
    seen(&mut d, T0, None);
    d.handle(T0, Input::Create(spec())).unwrap();
    let mut live = BTreeSet::new();
    apply(&mut live, &d.handle(T0 + 1, Input::Tick).unwrap());
    assert_eq!((count(&live, A), count(&live, B)), (2, 2));
    let x = live.iter().find(|(_, i)| i == B).map(|(t, _)| *t).unwrap();
    let moves = |out: &[Effect]| {
        out.iter()
            .filter(|e| matches!(e, Effect::Place { .. } | Effect::Release { .. }))
            .count()
    };
    // X drops BLE for a while, then has it again: nobody moves.
    let mut now = T0 + 1_000;
    seen(&mut d, now, Some(x));
    assert_eq!(moves(&d.handle(now + 1, Input::Tick).unwrap()), 0);
    now += VARIANT_SETTLE_MS / 2;
    seen(&mut d, now, Some(x));
    assert_eq!(moves(&d.handle(now + 1, Input::Tick).unwrap()), 0);
    now += 1_000;
    seen(&mut d, now, None);
    assert_eq!(moves(&d.handle(now + 1, Input::Tick).unwrap()), 0);
    // X drops it again and for good: moves only once that held for `VARIANT_SETTLE_MS`.
    let dropped = now + 1_000;
    now = dropped;
    while now < dropped + VARIANT_SETTLE_MS {
        seen(&mut d, now, Some(x));
        let out = d.handle(now + 1, Input::Tick).unwrap();
        assert_eq!(
            moves(&out),
            0,
            "a move {} ms after the flip: {out:?}",
            now - dropped
        );
        now += 5_000;
    }
    seen(&mut d, now, Some(x));
    let out = d.handle(now + 1, Input::Tick).unwrap();
    apply(&mut live, &out);
    assert!(live.contains(&(x, A.to_string())), "X runs a now: {live:?}");
    assert_eq!((count(&live, A), count(&live, B)), (2, 2), "balanced again");
    assert_eq!(d.status(&dep).unwrap().variant_counts.len(), 2);
}

#[test]
fn a_provider_fetches_early_only_when_one_variant_fits_and_reports_its_variant() {
    let deployer = signer(1);
    let record = spec().sign(&deployer, T0, 1, 1).unwrap();
    assert!(encode_deployment(&record).is_ok());
    let heard = |seed: u64, ble: bool| {
        let mut p: FleetState<KeySigner> = FleetState::new(signer(seed), FleetConfig::default());
        p.handle(T0, Input::SelfFacts(facts(seed, ble, T0)))
            .unwrap();
        let out = p
            .handle(
                T0,
                Input::Remote {
                    from: id(1),
                    gossip: true,
                    msg: FleetMessage::Announce(Box::new(record.clone())),
                },
            )
            .unwrap();
        let prefetched: Vec<String> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Prefetch { image, .. } => Some(image.clone()),
                _ => None,
            })
            .collect();
        (p, prefetched)
    };
    let (_, none) = heard(2, true);
    assert!(
        none.is_empty(),
        "a and b both fit a BLE provider: wait for the contract"
    );
    let (mut p, only_a) = heard(5, false);
    assert_eq!(only_a, vec![A.to_string()]);

    // A BLE provider given b reports b's image; an image of no variant is not reported.
    let (mut ble, _) = heard(3, true);
    let dep = record.body.id();
    let report = |p: &mut FleetState<KeySigner>, image: Option<&str>| {
        p.handle(
            T0 + 1,
            Input::LocalPhase {
                deployment: dep,
                image: image.map(str::to_string),
                phase: TargetPhase::Running,
                reason: None,
            },
        )
        .unwrap()
        .into_iter()
        .find_map(|e| match e {
            Effect::Send {
                msg: FleetMessage::Report { image, .. },
                ..
            } => Some(image),
            _ => None,
        })
    };
    assert_eq!(report(&mut ble, Some("bafkreinotavariant")), None);
    assert_eq!(report(&mut ble, Some(B)), Some(Some(B.to_string())));
    assert_eq!(
        report(&mut p, None),
        Some(Some(A.to_string())),
        "the prefetched one"
    );
}

#[test]
fn with_a_replica_count_the_targets_are_chosen_so_the_variants_can_balance() {
    // One provider with BLE among five, each in turn (so rendezvous order alone would miss it
    // for most): two replicas must include it, so a and b run 1/1.
    for ble_seed in 2..=6 {
        let providers: Vec<(u64, bool)> = (2..=6).map(|seed| (seed, seed == ble_seed)).collect();
        let two = DeploymentSpec {
            replicas: Replicas::Count(2),
            ..spec()
        };
        let (_, live) = placed(&providers, two);
        assert_eq!(live.len(), 2, "{live:?}");
        assert!(live.contains(&(id(ble_seed), B.to_string())), "{live:?}");
        assert_eq!((count(&live, A), count(&live, B)), (1, 1));
    }
}

const C: &str = "bafkreicccccccccccccccccccccccccccccccccccccccccccccccccccc";

/// `(target, image)` pairs.
type Pairs = Vec<(NodeId, String)>;

/// Releases and placements of `out`, as `(target, image)` each.
fn moves(out: &[Effect]) -> (Pairs, Pairs) {
    let mut released = Vec::new();
    let mut placed = Vec::new();
    for e in out {
        match e {
            Effect::Release { target, image, .. } => released.push((*target, image.clone())),
            Effect::Place { target, image, .. } => placed.push((*target, image.clone())),
            _ => {}
        }
    }
    (released, placed)
}

#[test]
fn a_live_deployment_is_given_other_variants_and_only_the_changed_ones_move() {
    // BLE on 2 and 3, not on 4 and 5: a on 4, 5; b on 2, 3.
    let (mut d, mut live) = placed(&[(2, true), (3, true), (4, false), (5, false)], spec());
    let dep = deployment_id(&id(1), "gw");
    let version = d.status(&dep).unwrap().version;

    // b gets a new image (C): b's two targets are replaced, a's are not touched.
    let new_b = DeploymentSpec {
        variants: vec![
            variants()[0].clone(),
            Variant::parse(&format!("b={C}:iface=ble")).unwrap(),
        ],
        ..spec()
    };
    let out = d.handle(T0 + 2, Input::Create(new_b)).unwrap();
    assert!(
        out.iter().any(|e| matches!(e, Effect::Broadcast(_))),
        "the new version is announced: {out:?}"
    );
    assert!(d.status(&dep).unwrap().version > version);
    let out = d.handle(T0 + 3, Input::Tick).unwrap();
    let (mut released, mut placed) = moves(&out);
    released.sort();
    placed.sort();
    let mut want_released = vec![(id(2), B.to_string()), (id(3), B.to_string())];
    want_released.sort();
    let mut want_placed = vec![(id(2), C.to_string()), (id(3), C.to_string())];
    want_placed.sort();
    assert_eq!(released, want_released, "{out:?}");
    assert_eq!(placed, want_placed, "{out:?}");
    apply(&mut live, &out);
    let view = d.status(&dep).unwrap();
    assert_eq!(
        view.variant_counts,
        BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
    );
    // Stable afterwards.
    let (r, p) = moves(&d.handle(T0 + 4, Input::Tick).unwrap());
    assert!(r.is_empty() && p.is_empty(), "{r:?} {p:?}");

    // A third variant for BLE targets: balance 2 a / 1 b / 1 c wants one BLE target moved
    // (the fewest moves), and never a target with two images.
    let three = DeploymentSpec {
        variants: vec![
            variants()[0].clone(),
            Variant::parse(&format!("b={C}:iface=ble")).unwrap(),
            Variant::parse(&format!("c={B}:iface=ble")).unwrap(),
        ],
        ..spec()
    };
    d.handle(T0 + 5, Input::Create(three)).unwrap();
    let out = d.handle(T0 + 6, Input::Tick).unwrap();
    let (released, placed) = moves(&out);
    assert_eq!(released.len(), 1, "{out:?}");
    assert_eq!(placed.len(), 1, "{out:?}");
    assert_eq!(released[0].1, C);
    assert_eq!(placed[0], (released[0].0, B.to_string()));
    apply(&mut live, &out);
    assert_eq!(
        (count(&live, A), count(&live, B), count(&live, C)),
        (2, 1, 1)
    );
    for (t, image) in &live {
        if image != A {
            assert!([id(2), id(3)].contains(t), "b and c only on BLE: {live:?}");
        }
    }

    // A variant dropped: its target goes back to what remains.
    let two = DeploymentSpec {
        variants: vec![
            variants()[0].clone(),
            Variant::parse(&format!("b={C}:iface=ble")).unwrap(),
        ],
        ..spec()
    };
    d.handle(T0 + 7, Input::Create(two)).unwrap();
    let out = d.handle(T0 + 8, Input::Tick).unwrap();
    apply(&mut live, &out);
    assert_eq!(
        (count(&live, A), count(&live, B), count(&live, C)),
        (2, 0, 2)
    );
    // Upgrading a deployment with variants still names the way that works.
    let up = Input::Upgrade {
        deployment: dep,
        to: UpgradeTo::Image("bafkreidddd".into()),
        config: UpgradeConfig {
            max_unavailable: 1,
            health_timeout_ms: 1000,
            max_failed: 0,
        },
    };
    let err = d.handle(T0 + 9, up).unwrap_err();
    assert!(err.to_string().contains("--variant"), "{err}");
}

/// Like [`apply`], but a target may hold two images at once (an upgrade is start-first).
fn apply_start_first(live: &mut BTreeSet<(NodeId, String)>, effects: &[Effect]) {
    apply_to(live, effects, true);
}

fn announced(effects: &[Effect]) -> Vec<Vec<Variant>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Broadcast(FleetMessage::Announce(r)) => Some(r.body.variants.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_upgrade_of_variants_moves_their_targets_start_first_and_a_sick_one_rolls_back() {
    const B2: &str = "bafkreib2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
    const A2: &str = "bafkreia2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
    let (mut d, mut live) = placed(&[(2, true), (3, true), (4, true), (5, false)], spec());
    let dep = deployment_id(&id(1), "gw");
    let on = |live: &BTreeSet<(NodeId, String)>, image: &str| -> Vec<NodeId> {
        live.iter()
            .filter(|(_, i)| i == image)
            .map(|(t, _)| *t)
            .collect()
    };
    let (a_targets, b_targets) = (on(&live, A), on(&live, B));
    assert_eq!((a_targets.len(), b_targets.len()), (2, 2));
    let progress = |target: NodeId, image: &str, phase| Input::TargetProgress {
        deployment: dep,
        target,
        image: image.into(),
        phase,
        reason: Some("probe".into()).filter(|_| phase == TargetPhase::Unhealthy),
    };
    for (t, i) in live.clone() {
        d.handle(T0 + 2, progress(t, &i, TargetPhase::Healthy))
            .unwrap();
    }
    let config = UpgradeConfig {
        max_unavailable: 1,
        health_timeout_ms: 10_000,
        max_failed: 0,
    };
    let upgrade = |images: &[(&str, &str)]| Input::Upgrade {
        deployment: dep,
        to: UpgradeTo::Variants(
            images
                .iter()
                .map(|(n, i)| (n.to_string(), i.to_string()))
                .collect(),
        ),
        config,
    };
    // Refused with a reason: a variant it does not have, the images it already runs, a new
    // image another variant has.
    assert!(matches!(
        d.handle(T0 + 3, upgrade(&[("c", B2)])),
        Err(FleetError::UnknownVariant { ref name, .. }) if name == "c"
    ));
    assert!(matches!(
        d.handle(T0 + 3, upgrade(&[("b", B)])),
        Err(FleetError::NotUpgradable { .. })
    ));
    assert!(d.handle(T0 + 3, upgrade(&[("b", A)])).is_err());

    // b moves to B2, one target at a time, each new instance started beside the old one.
    let out = d.handle(T0 + 4, upgrade(&[("b", B2)])).unwrap();
    let signed = announced(&out);
    assert_eq!(signed.len(), 1);
    assert_eq!(signed[0][1].image, B2, "the record names b's new image");
    assert_eq!(signed[0][0].image, A, "and a's unchanged one");
    apply_start_first(&mut live, &out);
    assert_eq!(on(&live, B2).len(), 1);
    assert_eq!(on(&live, B).len(), 2, "no old instance stopped yet");
    let view = d.status(&dep).unwrap().upgrade.unwrap();
    assert_eq!(
        (view.from.as_str(), view.to.as_str()),
        (&*format!("b={B}"), &*format!("b={B2}"))
    );
    assert_eq!(view.targets.len(), 2, "only b's targets move");
    // A report of a's targets still counts while b moves.
    d.handle(T0 + 5, progress(a_targets[0], A, TargetPhase::Running))
        .unwrap();
    assert_eq!(
        d.target_phase(&dep, &a_targets[0], A),
        Some(TargetPhase::Running)
    );
    d.handle(T0 + 5, progress(a_targets[0], A, TargetPhase::Healthy))
        .unwrap();
    let mut now = T0 + 6;
    while d
        .status(&dep)
        .unwrap()
        .upgrade
        .is_some_and(|u| !u.is_final())
    {
        for t in on(&live, B2) {
            d.handle(now, progress(t, B2, TargetPhase::Healthy))
                .unwrap();
        }
        apply_start_first(&mut live, &d.handle(now, Input::Tick).unwrap());
        now += 1;
        assert!(now < T0 + 100, "the upgrade never ended");
    }
    assert_eq!(
        d.own[&dep].upgrade.as_ref().unwrap().outcome(),
        &Outcome::Succeeded
    );
    assert_eq!(on(&live, B2).len(), 2);
    assert!(on(&live, B).is_empty());
    assert_eq!(on(&live, A), a_targets, "a's targets untouched");
    for t in &b_targets {
        assert_eq!(
            d.own[&dep].image_of(t),
            B2,
            "b's targets were given the new image"
        );
    }
    // The plan takes over again and moves nothing.
    let out = d.handle(now + 1, Input::Tick).unwrap();
    assert!(
        !out.iter()
            .any(|e| matches!(e, Effect::Place { .. } | Effect::Release { .. })),
        "{out:?}"
    );

    // a moves to A2, and its first new instance is sick: the rollout halts, the new instance
    // goes, the old variants are signed again, every target keeps its old image.
    let now = now + 2;
    let out = d.handle(now, upgrade(&[("a", A2)])).unwrap();
    apply_start_first(&mut live, &out);
    let sick = on(&live, A2);
    assert_eq!(sick.len(), 1);
    d.handle(now + 1, progress(sick[0], A2, TargetPhase::Unhealthy))
        .unwrap();
    let out = d.handle(now + 2, Input::Tick).unwrap();
    apply_start_first(&mut live, &out);
    let signed = announced(&out);
    assert_eq!(signed.len(), 1, "{out:?}");
    assert_eq!(
        (signed[0][0].image.as_str(), signed[0][1].image.as_str()),
        (A, B2),
        "the old variants signed again"
    );
    assert!(matches!(
        d.own[&dep].upgrade.as_ref().unwrap().outcome(),
        Outcome::RolledBack { .. }
    ));
    assert!(on(&live, A2).is_empty());
    assert_eq!(on(&live, A), a_targets);
    for t in &a_targets {
        assert_eq!(d.own[&dep].image_of(t), A);
    }
}

/// Releases of `out`, as `(target, image, reason)` each, in order.
fn releases(out: &[Effect]) -> Vec<(NodeId, String, ReleaseReason)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Release {
                target,
                image,
                reason,
                ..
            } => Some((*target, image.clone(), *reason)),
            _ => None,
        })
        .collect()
}

/// Every `b` of `live` runs on a BLE provider (seeds 2, 3, 4).
fn b_only_on_ble(live: &BTreeSet<(NodeId, String)>) -> bool {
    live.iter()
        .all(|(t, i)| i != B || [id(2), id(3), id(4)].contains(t))
}

/// `--all` over providers 2, 3, 4 (BLE) and 5 (none) at 2/2, then 6 (no BLE) joins: 3 a / 2 b,
/// the join moving nobody. Returns the machine, the live `(target, image)` pairs and the BLE
/// target that runs a.
fn three_a_two_b() -> (FleetState<KeySigner>, BTreeSet<(NodeId, String)>, NodeId) {
    let (mut d, mut live) = placed(&[(2, true), (3, true), (4, true), (5, false)], spec());
    d.handle(T0 + 2, Input::Provider(facts(6, false, T0 + 2)))
        .unwrap();
    let out = d.handle(T0 + 3, Input::Tick).unwrap();
    assert!(releases(&out).is_empty(), "{out:?}");
    apply(&mut live, &out);
    assert_eq!((count(&live, A), count(&live, B)), (3, 2), "{live:?}");
    let x = live
        .iter()
        .find(|(t, i)| i == A && ![id(5), id(6)].contains(t))
        .map(|(t, _)| *t)
        .unwrap();
    (d, live, x)
}

/// A BLE target leaves — its contract failed, or (with a replica count) it went offline — and
/// is released; a free provider replaces it, and the variants are rebalanced over who is left:
/// b only on BLE, the counts balanced, never two variants on one target.
#[test]
fn a_ble_target_that_leaves_is_replaced_and_the_counts_rebalanced() {
    let dep = deployment_id(&id(1), "gw");
    let failed = |target: NodeId| Input::TargetProgress {
        deployment: dep,
        target,
        image: B.into(),
        phase: TargetPhase::Failed,
        reason: Some("the contract ended".into()),
    };
    // `--all` at 3 a / 2 b: a b target's contract fails. No provider is free, so 3 a / 1 b is
    // rebalanced: the BLE target that ran a moves to b (a released, b placed), nobody else.
    let (mut d, mut live, x) = three_a_two_b();
    let y = live.iter().find(|(_, i)| i == B).map(|(t, _)| *t).unwrap();
    d.handle(T0 + 4, failed(y)).unwrap();
    let out = d.handle(T0 + 5, Input::Tick).unwrap();
    assert_eq!(
        releases(&out),
        vec![
            (y, B.to_string(), ReleaseReason::Failed),
            (x, A.to_string(), ReleaseReason::Rebalanced)
        ],
        "{out:?}"
    );
    assert_eq!(moves(&out).1, vec![(x, B.to_string())], "{out:?}");
    apply(&mut live, &out);
    assert_eq!((count(&live, A), count(&live, B)), (2, 2), "{live:?}");
    assert!(b_only_on_ble(&live), "{live:?}");
    assert_eq!(
        d.status(&dep).unwrap().variant_counts,
        BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
    );
    // Stable: the failed provider is avoided, nobody moves.
    let (r, p) = moves(&d.handle(T0 + 6, Input::Tick).unwrap());
    assert!(r.is_empty() && p.is_empty(), "{r:?} {p:?}");

    // `--replicas 4` among five providers (BLE on 2, 3, 4): 2 / 2 and one provider free. A b
    // target leaves (failed, or offline beyond `offline_after_ms`): the free provider replaces
    // it, and if it cannot run b the BLE target that ran a moves to b.
    let providers = [(2, true), (3, true), (4, true), (5, false), (6, false)];
    for leave in [ReleaseReason::Failed, ReleaseReason::Offline] {
        let four = DeploymentSpec {
            replicas: Replicas::Count(4),
            ..spec()
        };
        let (mut d, mut live) = placed(&providers, four);
        assert_eq!((count(&live, A), count(&live, B)), (2, 2), "{live:?}");
        let free = providers
            .iter()
            .map(|(seed, _)| id(*seed))
            .find(|n| live.iter().all(|(t, _)| t != n))
            .unwrap();
        let y = live.iter().find(|(_, i)| i == B).map(|(t, _)| *t).unwrap();
        let now = if leave == ReleaseReason::Failed {
            d.handle(T0 + 2, failed(y)).unwrap();
            T0 + 3
        } else {
            // Everyone but Y offers itself again; Y was last heard at T0. The deployer ticks
            // meanwhile (a longer gap in its own ticks would not count as Y's silence).
            let span = FleetConfig::default().plan.offline_after_ms;
            let (r, p) = moves(&d.handle(T0 + span / 2, Input::Tick).unwrap());
            assert!(r.is_empty() && p.is_empty(), "{r:?} {p:?}");
            let now = T0 + span + 1_000;
            for (seed, ble) in providers.into_iter().filter(|(s, _)| id(*s) != y) {
                d.handle(now, Input::Provider(facts(seed, ble, now)))
                    .unwrap();
            }
            now
        };
        let out = d.handle(now, Input::Tick).unwrap();
        let released = releases(&out);
        assert!(
            released.contains(&(y, B.to_string(), leave)),
            "{leave:?}: {out:?}"
        );
        assert!(
            released
                .iter()
                .all(|(t, _, r)| *t == y || *r == ReleaseReason::Rebalanced),
            "{leave:?}: {out:?}"
        );
        assert!(
            moves(&out).1.iter().any(|(t, _)| *t == free),
            "{leave:?}: the free provider replaces it: {out:?}"
        );
        apply(&mut live, &out);
        assert_eq!(live.len(), 4, "{leave:?}: {live:?}");
        assert!(live.iter().all(|(t, _)| *t != y), "{leave:?}: {live:?}");
        assert_eq!(
            (count(&live, A), count(&live, B)),
            (2, 2),
            "{leave:?}: {live:?}"
        );
        assert!(b_only_on_ble(&live), "{leave:?}: {live:?}");
    }
}

/// With `--all`, a target offline beyond `offline_after_ms` is kept (a provider restarting
/// converges when it returns, nothing replaces it meanwhile) for `ALL_OFFLINE_SPANS` of them;
/// past that it is released and the variants are rebalanced over the rest. When it comes back
/// it is placed again and nobody moves.
#[test]
fn an_offline_target_of_all_is_kept_ten_spans_then_released_and_the_counts_rebalanced() {
    use crate::plan::ALL_OFFLINE_SPANS;
    let dep = deployment_id(&id(1), "gw");
    let (mut d, mut live, x) = three_a_two_b();
    let y = live.iter().find(|(_, i)| i == B).map(|(t, _)| *t).unwrap();
    let providers = [(2, true), (3, true), (4, true), (5, false), (6, false)];
    let seen = |d: &mut FleetState<KeySigner>, now: Timestamp, with_y: bool| {
        for (seed, ble) in providers {
            if with_y || id(seed) != y {
                d.handle(now, Input::Provider(facts(seed, ble, now)))
                    .unwrap();
            }
        }
    };
    // Y was last heard at T0; everyone else keeps offering itself, and the deployer ticks every
    // 10 s (a gap of more than a span in its own ticks would not count as Y's silence).
    let span = FleetConfig::default().plan.offline_after_ms;
    let bound = T0 + ALL_OFFLINE_SPANS * span;
    for now in (T0 + 10_000..=bound).step_by(10_000) {
        seen(&mut d, now, false);
        let out = d.handle(now, Input::Tick).unwrap();
        let (r, p) = moves(&out);
        assert!(
            r.is_empty() && p.is_empty(),
            "{} ms offline: {out:?}",
            now - T0
        );
        let view = d.status(&dep).unwrap();
        assert!(view.targets.iter().any(|t| t.node == y), "Y is kept");
    }
    seen(&mut d, bound + 1, false);
    let out = d.handle(bound + 1, Input::Tick).unwrap();
    assert_eq!(
        releases(&out),
        vec![
            (y, B.to_string(), ReleaseReason::Offline),
            (x, A.to_string(), ReleaseReason::Rebalanced)
        ],
        "{out:?}"
    );
    assert_eq!(moves(&out).1, vec![(x, B.to_string())], "{out:?}");
    apply(&mut live, &out);
    assert_eq!((count(&live, A), count(&live, B)), (2, 2), "{live:?}");
    assert!(b_only_on_ble(&live), "{live:?}");
    // Y comes back: placed again (not avoided), with whichever variant keeps the counts within
    // one; nobody else moves.
    let back = bound + 2_000;
    seen(&mut d, back, true);
    let out = d.handle(back, Input::Tick).unwrap();
    let (r, p) = moves(&out);
    assert!(r.is_empty(), "{out:?}");
    assert_eq!(p.len(), 1, "{out:?}");
    assert_eq!(p[0].0, y);
    apply(&mut live, &out);
    let (a, b) = (count(&live, A), count(&live, B));
    assert!(a + b == 5 && a.abs_diff(b) == 1, "{live:?}");
    assert!(b_only_on_ble(&live), "{live:?}");
}
