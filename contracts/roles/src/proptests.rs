//! Property tests over random fault schedules (see `sim.rs` for the model): a device never has
//! two managers at once, every reading is processed exactly once, a contract settles at most
//! once, the honest provider is never slashed and is paid for the uptime a quorum of its
//! committee confirmed, the committee confirms what really happened (`probes.rs`) even with
//! one lying arbitrator — and, at the end of a calm period, the customer feeds its own sensors
//! again.

mod probes;

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::sim::{A, B, DEVICES, Fault, NODES, Record, STEP_MS, Sim, T0};
use agora_contracts::contract::ContractId;
use agora_contracts::ledger::LedgerEvent;

/// Faults happen during this window.
const FAULT_WINDOW_MS: u64 = 40_000;
/// Then everything is healed and restarted, and the world runs calm this long.
const CALM_MS: u64 = 30_000;
/// Readings sent this close to the end may still be in flight.
const IN_FLIGHT_MS: u64 = 2_000;

/// Runs `faults` (times relative to the start), then a calm period.
pub(super) fn run(sim: &mut Sim, faults: &[(u64, Fault)]) {
    let mut faults: Vec<(u64, Fault)> = faults.to_vec();
    faults.sort_by_key(|(t, _)| *t);
    let mut next = 0;
    sim.insure_until = T0 + FAULT_WINDOW_MS;
    while sim.now < T0 + FAULT_WINDOW_MS {
        while let Some((t, f)) = faults.get(next)
            && T0 + t <= sim.now
        {
            sim.fault(*f);
            next += 1;
        }
        sim.step();
    }
    sim.calm();
    while sim.now < T0 + FAULT_WINDOW_MS + CALM_MS {
        sim.step();
    }
}

/// The invariants, as a description of the first violation; `strict`: no partitions happened,
/// so every reading must be covered by exactly one checkpoint.
pub(super) fn check(sim: &Sim, strict: bool) -> Result<(), String> {
    let r: &Record = &sim.record;
    if let Some((t, d, nodes)) = r.overlaps.first() {
        return Err(format!(
            "two managers: device {d} could be fed by nodes {nodes:?} at {t} ({} moments)",
            r.overlaps.len()
        ));
    }
    let end = sim.now.saturating_sub(IN_FLIGHT_MS);
    let mut lost = Vec::new();
    let mut twice = Vec::new();
    for (d, c, t) in &r.emitted {
        if *t > end {
            continue;
        }
        let by = r.processed.get(&(*d, *c)).cloned().unwrap_or_default();
        let mut nodes: Vec<usize> = by.iter().map(|(n, _)| *n).collect();
        nodes.sort();
        let repeats = nodes
            .windows(2)
            .any(|w| w[0] == w[1] && !r.killed.contains(&w[0]));
        let published = by.iter().filter(|(_, p)| *p).count();
        let ok = match strict {
            // Exactly one checkpoint covers it.
            true => by.len() == 1,
            // A manager cut off from the network processes readings its successor cannot
            // know of (and forgets them itself if it is then killed before it could tell
            // anyone): besides those, exactly once.
            false => published <= 1 && !repeats,
        };
        if by.is_empty() {
            lost.push((*d, *c, *t));
        } else if !ok {
            twice.push((*d, *c, *t, by));
        }
    }
    if !twice.is_empty() {
        return Err(format!(
            "{} readings processed more than once, first {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        ));
    }
    if !lost.is_empty() {
        return Err(format!(
            "{} readings never processed, first {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    let mut finals: BTreeMap<ContractId, u32> = BTreeMap::new();
    for (_, e) in &r.events {
        if let LedgerEvent::StatusChanged { contract, to, .. } = e
            && to.is_final()
        {
            *finals.entry(*contract).or_default() += 1;
        }
    }
    if let Some((c, n)) = finals.iter().find(|(_, n)| **n > 1) {
        return Err(format!("contract {c:?} reached a final state {n} times"));
    }
    // A node asks to settle a contract at most once per `SETTLE_RETRY_MS` (the ledger refuses
    // a second request while the first is pending, so more would only fill blocks).
    let mut last: BTreeMap<(usize, ContractId), agora_market::Timestamp> = BTreeMap::new();
    for (t, node, c) in &r.settle_log {
        if let Some(prev) = last.insert((*node, *c), *t)
            && t.saturating_sub(prev) < crate::SETTLE_RETRY_MS
        {
            return Err(format!(
                "node {node} asked to settle {c:?} at {prev} and again at {t}"
            ));
        }
    }
    let honest_b = !r.faulty.contains(&B) && r.max_delay.get(&B).copied().unwrap_or(0) <= 2_000;
    if honest_b {
        for (t, e) in &r.events {
            if let LedgerEvent::Slashed { reason, .. } = e {
                return Err(format!("honest provider slashed at {t}: {reason:?}"));
            }
        }
    }
    probes::check(sim)?;
    for d in DEVICES {
        if !sim.feeds(A, d) {
            return Err(format!(
                "after {CALM_MS} ms of calm the customer does not feed device {d}; contracts {:?}",
                sim.statuses()
            ));
        }
    }
    Ok(())
}

fn fault(partitions: bool) -> BoxedStrategy<Fault> {
    // Arbitrators 4 and 5 stay up and connected: some edge always hears and buffers.
    let node = prop_oneof![3 => Just(A), 2 => Just(B), 1 => Just(2usize), 1 => Just(3usize)];
    let any_node = 0..NODES;
    let cuts = if partitions { 2 } else { 0 };
    prop_oneof![
        3 => node.clone().prop_map(Fault::Kill),
        3 => node.clone().prop_map(Fault::Restart),
        cuts => node.clone().prop_map(Fault::Partition),
        cuts => node.prop_map(Fault::Heal),
        2 => (any_node.clone(), 0u64..2_000).prop_map(|(n, ms)| Fault::Delay(n, ms)),
        1 => (any_node.clone(), 1usize..6).prop_map(|(n, back)| Fault::Stale(n, back)),
        1 => any_node.prop_map(Fault::Repeat),
    ]
    .boxed()
}

/// No liar, or one of the two arbitrators the schedules may also crash or cut off: at most two
/// of the four are ever wrong at once (the liar, and one cut off that may time a probe out
/// just as it reconnects), and two cannot decide an interval (a quorum is three). A liar among
/// the two that always stay connected while both others are cut off in the same interval would
/// be three wrong of four, beyond the f = 1 a committee of four tolerates (such a schedule is
/// rare: 64 cases with the liar at node 5 found none).
fn liar() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![Just(None), Just(Some(2usize)), Just(Some(3usize))]
}

fn schedule(partitions: bool) -> impl Strategy<Value = Vec<(u64, Fault)>> {
    prop::collection::vec(
        (
            (0..FAULT_WINDOW_MS / STEP_MS).prop_map(|s| s * STEP_MS),
            fault(partitions),
        ),
        0..24,
    )
}

#[test]
fn without_faults_the_customer_keeps_its_sensors_and_nothing_is_lost() {
    let mut sim = Sim::new();
    run(&mut sim, &[]);
    check(&sim, true).unwrap();
    assert!(
        sim.record
            .events
            .iter()
            .all(|(_, e)| !matches!(e, LedgerEvent::HandoverAttested { .. }))
    );
}

#[test]
fn a_killed_customer_is_served_by_the_provider_and_takes_over_again() {
    let mut sim = Sim::new();
    run(
        &mut sim,
        &[(5_000, Fault::Kill(A)), (15_000, Fault::Restart(A))],
    );
    check(&sim, true).unwrap();
    let handovers = sim
        .record
        .events
        .iter()
        .filter(|(_, e)| matches!(e, LedgerEvent::HandoverAttested { .. }))
        .count();
    assert_eq!(handovers, 1);
    let by_b = sim
        .record
        .processed
        .values()
        .filter(|by| by.as_slice() == [(B, true)])
        .count();
    assert!(by_b > 50, "B processed {by_b} readings");
}

/// Intervals of `sim`'s contracts decided up and down, and what the provider was paid beyond
/// its coverage before activation (one token per ms).
fn probe_outcomes(sim: &Sim) -> (usize, usize, u64) {
    let (mut up, mut down, mut paid) = (0, 0, 0);
    for (_, e) in &sim.record.events {
        match e {
            LedgerEvent::UptimeConfirmed { up: true, .. } => up += 1,
            LedgerEvent::UptimeConfirmed { up: false, .. } => down += 1,
            LedgerEvent::Paid { amount, .. } => paid += amount,
            _ => {}
        }
    }
    let standing_by: u64 = sim
        .ledger()
        .contracts()
        .values()
        .filter(|r| r.status == agora_contracts::lifecycle::ContractStatus::Settled)
        .map(|r| {
            let end = r.closed_at.unwrap_or(sim.now);
            r.activated_at.unwrap_or(end).min(end) - r.registered_at
        })
        .sum();
    (up, down, paid.saturating_sub(standing_by))
}

#[test]
fn one_lying_arbitrator_costs_the_honest_provider_nothing() {
    let mut sim = Sim::new();
    // An arbitrator that is never cut off, so the three others must carry every decision.
    sim.liar = Some(5);
    run(
        &mut sim,
        &[(5_000, Fault::Kill(A)), (15_000, Fault::Restart(A))],
    );
    check(&sim, true).unwrap();
    let (up, down, paid_for_service) = probe_outcomes(&sim);
    assert_eq!(down, 0, "the liar alone decided an interval down");
    assert!(up >= 3, "{up} intervals confirmed up");
    assert!(
        paid_for_service >= 2_000,
        "paid {paid_for_service} ms of service"
    );
}

#[test]
fn a_provider_that_stops_serving_is_confirmed_down_and_not_paid_for_it() {
    let mut sim = Sim::new();
    run(
        &mut sim,
        &[
            (5_000, Fault::Kill(A)),
            (12_000, Fault::Kill(B)),
            (20_000, Fault::Restart(B)),
            (26_000, Fault::Restart(A)),
        ],
    );
    check(&sim, true).unwrap();
    let (up, down, _) = probe_outcomes(&sim);
    assert!(up >= 1, "{up} intervals confirmed up");
    assert!(down >= 2, "{down} intervals confirmed down");
}

/// 24 cases by default (each simulates 70 s on six nodes); `PROPTEST_CASES` overrides.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Kills, restarts, late, stale and repeated blocks, perhaps a lying arbitrator: every
    /// reading is processed exactly once, and the other invariants hold.
    #[test]
    fn crashes_and_late_blocks_keep_every_invariant(faults in schedule(false), liar in liar()) {
        let mut sim = Sim::new();
        sim.liar = liar;
        run(&mut sim, &faults);
        if let Err(e) = check(&sim, true) {
            return Err(TestCaseError::fail(e));
        }
    }

    /// Partitions too: nothing is lost and no reading is processed twice except by a manager
    /// cut off from the network (whose checkpoints could reach nobody).
    #[test]
    fn partitions_keep_the_invariants(faults in schedule(true), liar in liar()) {
        let mut sim = Sim::new();
        sim.liar = liar;
        run(&mut sim, &faults);
        if let Err(e) = check(&sim, false) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// Schedules the property tests found during development, kept as named cases (each failed on
/// an earlier version of the machines; the comment says what was wrong).
mod found {
    use super::*;

    fn runs(faults: &[(u64, Fault)], strict: bool) {
        let mut sim = Sim::new();
        run(&mut sim, faults);
        if let Err(e) = check(&sim, strict) {
            panic!("{faults:?}: {e}");
        }
    }

    /// Cut off before its first block: catching up on the backlog, it must not start its own
    /// service on the first (stale) block it applies.
    #[test]
    fn a_customer_catching_up_on_its_backlog_does_not_act_on_stale_blocks() {
        runs(&[(0, Fault::Partition(A))], false);
        runs(&[(20, Fault::Partition(A))], false);
    }

    /// The provider fed the sensors before the ledger recorded its activation: the customer
    /// reclaiming them must still wait for it and trust its release.
    #[test]
    fn a_provider_that_fed_before_reporting_activation_is_waited_for() {
        runs(
            &[(0, Fault::Partition(A)), (280, Fault::Partition(B))],
            false,
        );
    }

    /// A restarted provider learns the customer's last checkpoint from the peers that relay
    /// it, though the customer's authority over the sensors ended long ago.
    #[test]
    fn a_restarted_provider_resumes_after_the_customers_relayed_checkpoint() {
        runs(&[(33_980, Fault::Kill(A)), (280, Fault::Kill(B))], true);
    }

    /// A provider cut off while the customer kept checkpointing has a stale watermark even
    /// though its buffer continues from it: the takeover asks peers anyway.
    #[test]
    fn a_provider_with_a_stale_watermark_asks_its_peers_before_feeding() {
        runs(
            &[(4_100, Fault::Kill(A)), (300, Fault::Partition(B))],
            false,
        );
    }

    /// The customer is cut off before the provider armed: it must already watch its committee
    /// and stop feeding before the provider takes over.
    #[test]
    fn a_customer_cut_off_before_arming_stops_feeding_in_time() {
        runs(&[(20, Fault::Partition(A))], false);
    }

    /// Refused transactions while cut off must not be resubmitted in the same instant (the
    /// effects never settled).
    #[test]
    fn a_provider_cut_off_while_migrating_does_not_spin() {
        runs(&[(280, Fault::Partition(B))], false);
    }

    /// A stale block handed to the provider after the handback must not bring it back.
    #[test]
    fn a_stale_block_after_the_handback_does_not_bring_the_provider_back() {
        for back in 1..6 {
            runs(
                &[
                    (5_000, Fault::Kill(A)),
                    (15_000, Fault::Restart(A)),
                    (20_000, Fault::Stale(B, back)),
                    (20_000, Fault::Stale(A, back)),
                ],
                true,
            );
        }
    }
}
