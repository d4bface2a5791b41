//! The upgrade machine against a small simulated fleet: instances start after a delay and
//! report what their image does (healthy, unhealthy, or nothing at all).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use agora_market::identity::Signer;
use agora_market::test_utils::signer;

const TICK: u64 = 100;
const TIMEOUT: u64 = 1_000;

/// What the new image does on one target.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Healthy after this many ticks.
    Good(u64),
    /// Unhealthy after this many ticks.
    Sick(u64),
    /// Never says anything (times out).
    Silent,
}

/// One target's instances: `Some(ready_at)` while running (healthy from `ready_at` for the old
/// image; for the new one as its behaviour says).
#[derive(Clone, Debug, Default)]
struct Host {
    old: Option<u64>,
    new: Option<u64>,
}

struct World {
    now: u64,
    hosts: BTreeMap<NodeId, Host>,
    behaviour: BTreeMap<NodeId, Behaviour>,
    old_delay: u64,
}

impl World {
    fn new(behaviours: &[Behaviour], old_delay: u64) -> World {
        let mut hosts = BTreeMap::new();
        let mut behaviour = BTreeMap::new();
        for (i, b) in behaviours.iter().enumerate() {
            let node = signer(10 + i as u64).node_id();
            hosts.insert(
                node,
                Host {
                    old: Some(0),
                    new: None,
                },
            );
            behaviour.insert(node, *b);
        }
        World {
            now: 1_000_000,
            hosts,
            behaviour,
            old_delay,
        }
    }

    fn old_healthy(&self, t: &NodeId) -> bool {
        self.hosts[t].old.is_some_and(|at| self.now >= at)
    }

    fn new_phase(&self, t: &NodeId) -> Option<TargetPhase> {
        let at = self.hosts[t].new?;
        match self.behaviour[t] {
            Behaviour::Good(d) if self.now >= at + d * TICK => Some(TargetPhase::Healthy),
            Behaviour::Sick(d) if self.now >= at + d * TICK => Some(TargetPhase::Unhealthy),
            _ => Some(TargetPhase::Running),
        }
    }

    fn new_healthy(&self, t: &NodeId) -> bool {
        self.new_phase(t) == Some(TargetPhase::Healthy)
    }

    /// Feeds what every running instance reports.
    fn report(&self, up: &mut Upgrade) {
        for t in self.hosts.keys() {
            if let Some(phase) = self.new_phase(t) {
                let reason = (phase == TargetPhase::Unhealthy)
                    .then(|| "the guest's health export returned 1".to_string());
                up.observe(*t, Which::New, phase, reason);
            }
            if self.hosts[t].old.is_some() {
                let phase = if self.old_healthy(t) {
                    TargetPhase::Healthy
                } else {
                    TargetPhase::Running
                };
                up.observe(*t, Which::Old, phase, None);
            }
        }
    }

    /// Carries out the machine's actions, checking the safety rule: an old instance is stopped
    /// only when the new one on that target is healthy (or the target failed within the
    /// failure budget, `failed`), and a new one only when the old is.
    fn apply(
        &mut self,
        actions: &[UpgradeAction],
        failed: &BTreeMap<NodeId, String>,
    ) -> Result<(), String> {
        for a in actions {
            match a {
                UpgradeAction::Start { target, which } => {
                    let now = self.now;
                    let delay = self.old_delay * TICK;
                    let h = self.hosts.get_mut(target).ok_or("unknown target")?;
                    match which {
                        Which::Old => h.old = Some(now + delay),
                        Which::New => h.new = Some(now),
                    }
                }
                UpgradeAction::Stop { target, which } => {
                    match which {
                        Which::Old if !self.new_healthy(target) && !failed.contains_key(target) => {
                            return Err(format!(
                                "old stopped on {target:?} before the new was healthy"
                            ));
                        }
                        Which::New if self.hosts[target].old.is_none() => {
                            return Err(format!("new stopped on {target:?} with no old instance"));
                        }
                        _ => {}
                    }
                    let h = self.hosts.get_mut(target).ok_or("unknown target")?;
                    match which {
                        Which::Old => h.old = None,
                        Which::New => h.new = None,
                    }
                }
            }
        }
        Ok(())
    }

    /// Targets with no healthy instance now, but those failed within the budget (`failed`).
    fn unavailable(&self, failed: &BTreeMap<NodeId, String>) -> usize {
        self.hosts
            .keys()
            .filter(|t| !self.old_healthy(t) && !self.new_healthy(t) && !failed.contains_key(*t))
            .count()
    }
}

fn run(behaviours: &[Behaviour], k: u32, old_delay: u64) -> Result<(Upgrade, World), String> {
    run_with_budget(behaviours, k, old_delay, 0)
}

fn run_with_budget(
    behaviours: &[Behaviour],
    k: u32,
    old_delay: u64,
    max_failed: u32,
) -> Result<(Upgrade, World), String> {
    let mut world = World::new(behaviours, old_delay);
    let cfg = UpgradeConfig {
        max_unavailable: k,
        health_timeout_ms: TIMEOUT,
        max_failed,
    };
    let mut up = Upgrade::new("old".into(), "new".into(), world.hosts.keys().copied(), cfg);
    for _ in 0..2_000 {
        world.report(&mut up);
        let actions = up.step(world.now);
        // A held target's old instance may go (and the target be without a healthy one) only
        // once the upgrade succeeded.
        let none = BTreeMap::new();
        let exempt = if *up.outcome() == Outcome::Succeeded {
            up.failed()
        } else {
            &none
        };
        world.apply(&actions, exempt)?;
        let starting = up
            .steps()
            .values()
            .filter(|s| matches!(s, Step::Starting { .. }))
            .count();
        if starting > k.max(1) as usize {
            return Err(format!("{starting} targets mid-upgrade with K = {k}"));
        }
        if world.unavailable(exempt) > k.max(1) as usize {
            return Err(format!(
                "{} targets without a healthy instance",
                world.unavailable(exempt)
            ));
        }
        if up.outcome().is_final() {
            return Ok((up, world));
        }
        world.now += TICK;
    }
    Err(format!("no outcome after 2000 ticks: {:?}", up.outcome()))
}

#[test]
fn a_healthy_upgrade_goes_in_waves_and_ends_on_the_new_image() {
    let good = [Behaviour::Good(2); 5];
    let (up, world) = run(&good, 2, 1).unwrap();
    assert_eq!(up.outcome(), &Outcome::Succeeded);
    for h in world.hosts.values() {
        assert!(h.old.is_none() && h.new.is_some(), "{h:?}");
    }
    // The first step starts exactly K new instances.
    let w = World::new(&good, 1);
    let mut up = Upgrade::new(
        "old".into(),
        "new".into(),
        w.hosts.keys().copied(),
        UpgradeConfig {
            max_unavailable: 2,
            health_timeout_ms: TIMEOUT,
            max_failed: 0,
        },
    );
    w.report(&mut up);
    let first = up.step(w.now);
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|a| matches!(
        a,
        UpgradeAction::Start {
            which: Which::New,
            ..
        }
    )));
}

#[test]
fn an_unhealthy_new_image_halts_and_rolls_every_target_back() {
    // Two good targets upgrade first (K = 2), then the third's new image is sick.
    let (up, world) = run(
        &[Behaviour::Good(1), Behaviour::Good(1), Behaviour::Sick(2)],
        2,
        2,
    )
    .unwrap();
    match up.outcome() {
        Outcome::RolledBack { reason, .. } => {
            assert!(reason.contains("unhealthy"), "{reason}");
            assert!(reason.contains("health export returned 1"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    for h in world.hosts.values() {
        assert!(h.old.is_some() && h.new.is_none(), "{h:?}");
    }
}

#[test]
fn a_silent_new_image_times_out_and_rolls_back() {
    let (up, world) = run(&[Behaviour::Silent, Behaviour::Good(1)], 1, 0).unwrap();
    match up.outcome() {
        Outcome::RolledBack { reason, .. } => {
            assert!(reason.contains("--health-timeout"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        world
            .hosts
            .values()
            .all(|h| h.old.is_some() && h.new.is_none())
    );
}

#[test]
fn no_targets_is_done_and_strangers_are_ignored() {
    let mut up = Upgrade::new("a".into(), "b".into(), [], UpgradeConfig::default());
    assert_eq!(up.outcome(), &Outcome::Succeeded);
    up.observe(signer(1).node_id(), Which::New, TargetPhase::Failed, None);
    assert!(up.step(5).is_empty());
    let cfg = UpgradeConfig {
        max_unavailable: 0,
        health_timeout_ms: 1,
        max_failed: 0,
    };
    let up = Upgrade::new("a".into(), "b".into(), [signer(1).node_id()], cfg);
    assert_eq!(up.config().max_unavailable, 1, "a wave of 0 is read as 1");
}

/// THREATS D1: with `--max-failed 1` one target whose new image is sick (a hostile target
/// that reports it so) no longer rolls everyone back: it is held and named, the
/// others end on the new image, the upgrade succeeds; a second sick target is past the budget
/// and rolls every target back.
#[test]
fn a_failure_within_the_budget_does_not_veto_the_upgrade() {
    let one_sick = [
        Behaviour::Good(1),
        Behaviour::Sick(1),
        Behaviour::Good(1),
        Behaviour::Silent,
    ];
    let (up, world) = run_with_budget(&one_sick[..3], 1, 1, 1).unwrap();
    assert_eq!(up.outcome(), &Outcome::Succeeded);
    assert_eq!(up.failed().len(), 1);
    let (sick, why) = up.failed().iter().next().unwrap();
    assert!(
        matches!(world.behaviour[sick], Behaviour::Sick(_)),
        "the sick one"
    );
    assert!(why.contains("health export returned 1"), "{why}");
    for h in world.hosts.values() {
        assert!(h.old.is_none() && h.new.is_some(), "{h:?}");
    }
    // Without a budget the same fleet rolls back (the veto).
    let (up, _) = run(&one_sick[..3], 1, 1).unwrap();
    assert!(matches!(up.outcome(), Outcome::RolledBack { .. }));
    // The budget never covers every target: one sick target alone rolls back.
    let (up, _) = run_with_budget(&[Behaviour::Sick(1)], 1, 1, 5).unwrap();
    assert!(matches!(up.outcome(), Outcome::RolledBack { .. }));
    // Two failures (a sick and a silent one) are past a budget of 1.
    let (up, world) = run_with_budget(&one_sick, 1, 1, 1).unwrap();
    assert!(
        matches!(up.outcome(), Outcome::RolledBack { .. }),
        "{:?}",
        up.outcome()
    );
    for h in world.hosts.values() {
        assert!(h.old.is_some() && h.new.is_none(), "{h:?}");
    }
}

/// THREATS D1: without a budget given, one sick target (or a hostile one saying so) is held and
/// the rest upgrade, in a fleet of two as of three; a second failure still rolls every target
/// back.
#[test]
fn one_sick_target_is_held_by_default_a_second_rolls_back() {
    let budget = UpgradeConfig::default().max_failed;
    for fleet in [
        &[Behaviour::Sick(1), Behaviour::Good(1)][..],
        &[Behaviour::Good(1), Behaviour::Sick(1), Behaviour::Good(1)][..],
    ] {
        let (up, world) = run_with_budget(fleet, 1, 1, budget).unwrap();
        assert_eq!(up.outcome(), &Outcome::Succeeded, "{fleet:?}");
        assert_eq!(up.failed().len(), 1, "{fleet:?}");
        for h in world.hosts.values() {
            assert!(h.old.is_none() && h.new.is_some(), "{h:?}");
        }
    }
    // Both targets of two sick (the process test `fleet_upgrade`): the second rolls back.
    let (up, world) = run_with_budget(&[Behaviour::Sick(1); 2], 1, 1, budget).unwrap();
    assert!(
        matches!(up.outcome(), Outcome::RolledBack { .. }),
        "{:?}",
        up.outcome()
    );
    assert!(
        world
            .hosts
            .values()
            .all(|h| h.old.is_some() && h.new.is_none())
    );
}

fn arb_behaviour() -> impl proptest::strategy::Strategy<Value = Behaviour> {
    prop_oneof![
        6 => (0u64..8).prop_map(Behaviour::Good),
        1 => (0u64..8).prop_map(Behaviour::Sick),
        1 => Just(Behaviour::Silent),
    ]
}

proptest! {
    /// Whatever the images do: never more than K targets mid-upgrade or without a healthy
    /// instance (but those failed within the budget), an old instance never stopped before
    /// the new one is healthy (but on those); no more failures than the budget ends with every
    /// target on the new image only and the failed ones named, more end with every target on
    /// the old image only.
    #[test]
    fn waves_respect_k_and_failures_end_on_the_old_image(
        behaviours in proptest::collection::vec(arb_behaviour(), 1..9),
        k in 0u32..4,
        old_delay in 0u64..15,
        max_failed in 0u32..3,
    ) {
        let (up, world) =
            run_with_budget(&behaviours, k, old_delay, max_failed).map_err(TestCaseError::fail)?;
        let bad = behaviours.iter().filter(|b| !matches!(b, Behaviour::Good(_))).count();
        // The budget never covers every target.
        let all_good = bad <= max_failed as usize && bad < behaviours.len();
        match up.outcome() {
            Outcome::Succeeded => {
                prop_assert!(all_good);
                prop_assert_eq!(up.failed().len(), bad);
                prop_assert!(world.hosts.values().all(|h| h.old.is_none() && h.new.is_some()));
            }
            Outcome::RolledBack { .. } => {
                prop_assert!(!all_good);
                prop_assert!(world.hosts.values().all(|h| h.old.is_some() && h.new.is_none()));
            }
            other => prop_assert!(false, "not final: {other:?}"),
        }
    }
}
