//! Multi-arbitrator scenarios on the simulated network.

use super::sim::{Sim, assert_consistent};
use crate::{ConsensusError, ConsensusMessage, Misbehavior, WalEntry};

fn live(sim: &Sim) -> Vec<usize> {
    (0..sim.nodes.len())
        .filter(|&i| !sim.nodes[i].crashed)
        .collect()
}

fn no_rejections(sim: &Sim, who: &[usize]) {
    for &i in who {
        let r = &sim.nodes[i].rejected;
        assert!(r.is_empty(), "node {i} rejected honest input: {r:?}");
    }
}

#[test]
fn four_arbitrators_decide_the_same_blocks_over_many_heights() {
    for seed in 1..=3 {
        let mut sim = Sim::new(4, seed);
        let all = [0, 1, 2, 3];
        assert!(
            sim.run_until(60_000, |s| s.all_reached(&all, 12)),
            "seed {seed}: stalled at {:?}",
            all.map(|i| sim.nodes[i].tip().0)
        );
        assert_consistent(&sim, &all);
        no_rejections(&sim, &all);
        for i in all {
            assert!(sim.nodes[i].evidence.is_empty(), "no one equivocated");
        }
        // Every arbitrator got to propose: blocks carry their proposer.
        let proposers: std::collections::BTreeSet<_> = sim.nodes[0]
            .decided
            .iter()
            .map(|(_, b, _)| b.proposer)
            .collect();
        assert_eq!(proposers.len(), 4, "round-robin proposers");
        // Transactions from the mempool made it into blocks, in order.
        let (_, block, _) = &sim.nodes[0].decided[0];
        assert_eq!(block.transactions.len(), 3);
        assert!(block.transactions[0].ends_with(b"-0"));
    }
}

#[test]
fn same_seed_gives_the_same_chain() {
    let run = |seed| {
        let mut sim = Sim::new(4, seed);
        assert!(sim.run_until(60_000, |s| s.all_reached(&[0, 1, 2, 3], 5)));
        sim.nodes[0]
            .decided
            .iter()
            .take(5)
            .map(|(_, b, _)| b.id())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(9), run(9));
}

#[test]
fn three_of_four_decide_while_one_is_crashed() {
    let mut sim = Sim::new(4, 11);
    sim.crash(2);
    let up = live(&sim);
    assert!(
        sim.run_until(120_000, |s| s.all_reached(&up, 8)),
        "stalled without one arbitrator"
    );
    assert_consistent(&sim, &up);
    no_rejections(&sim, &up);
    assert!(sim.nodes[2].decided.is_empty());
    // The crashed arbitrator's turns as proposer time out, so some blocks were decided in
    // a later round, proposed by someone else.
    let crashed = sim.nodes[2].id();
    assert!(
        sim.nodes[0]
            .decided
            .iter()
            .all(|(_, b, _)| b.proposer != crashed)
    );
}

#[test]
fn a_proposer_thirty_days_ahead_is_not_voted_for_and_ledger_time_does_not_move() {
    const DAY_MS: u64 = 24 * 60 * 60 * 1_000;
    let mut sim = Sim::new(4, 21);
    sim.nodes[3].driver.byzantine_proposal_skew(30 * DAY_MS);
    let all = [0, 1, 2, 3];
    assert!(
        sim.run_until(120_000, |s| s.all_reached(&all, 12)),
        "stalled with a proposer whose clock is 30 days ahead: {:?}",
        all.map(|i| sim.nodes[i].tip().0)
    );
    assert_consistent(&sim, &all);
    let skewed = sim.nodes[3].id();
    // Its turns came (round robin) but none of its blocks was decided; every decided time is
    // within the simulation's clock, after its parent.
    let decided = &sim.nodes[0].decided;
    assert!(decided.iter().all(|(_, b, _)| b.proposer != skewed));
    let mut parent = 0;
    for (h, b, _) in decided {
        assert!(b.timestamp > parent, "height {h}: time goes forward");
        assert!(
            b.timestamp <= sim.now + 2_000,
            "height {h}: time did not jump"
        );
        parent = b.timestamp;
    }
    // The honest ones said why.
    for i in 0..3 {
        assert!(
            sim.nodes[i].rejected.iter().any(|(_, e)| matches!(
                e,
                ConsensusError::BlockTime { proposer, .. } if *proposer == skewed
            )),
            "node {i} refused the skewed proposals"
        );
    }
}

#[test]
fn two_crashed_of_four_stall_without_deciding_anything_wrong() {
    let mut sim = Sim::new(4, 12);
    sim.crash(1);
    sim.crash(3);
    let decided = sim.run_until(10_000, |s| s.all_reached(&[0, 2], 1));
    assert!(
        !decided,
        "2 of 4 is below the 2f+1 quorum and must not decide"
    );
    assert!(sim.nodes[0].decided.is_empty() && sim.nodes[2].decided.is_empty());
}

#[test]
fn one_withholding_arbitrator_of_four_cannot_stop_the_chain_two_can_until_one_votes_again() {
    let mut sim = Sim::new(4, 31);
    let all = [0, 1, 2, 3];
    // f = 1 of 4 sends no prevote and no precommit: the other three are a quorum.
    sim.nodes[3].driver.byzantine_withhold_votes(true);
    assert!(
        sim.run_until(120_000, |s| s.all_reached(&all, 6)),
        "stalled with one withholding arbitrator: {:?}",
        all.map(|i| sim.nodes[i].tip().0)
    );
    assert_consistent(&sim, &all);
    no_rejections(&sim, &all);
    // No certificate carries a vote of the withholder.
    let withholder = sim.nodes[3].id();
    for (h, _, cert) in &sim.nodes[0].decided {
        assert!(
            cert.signatures.iter().all(|s| s.validator != withholder),
            "height {h}: the withholder's vote is in a certificate"
        );
    }
    // f + 1 = 2 withholding: below the 2f + 1 quorum, nothing more is decided.
    sim.nodes[2].driver.byzantine_withhold_votes(true);
    let tips: Vec<_> = all.iter().map(|&i| sim.nodes[i].tip()).collect();
    let top = tips.iter().map(|t| t.0).max().unwrap_or(0);
    let moved = sim.run_until(sim.now + 60_000, |s| s.all_reached(&all, top + 2));
    assert!(!moved, "2 of 4 withholding must stop the chain");
    let stalled: Vec<_> = all.iter().map(|&i| sim.nodes[i].tip().0).collect();
    assert!(
        stalled.iter().all(|h| *h <= top + 1),
        "at most the height in flight when the second one stopped voting: {stalled:?}"
    );
    assert_consistent(&sim, &all);
    // One of them votes again: the chain resumes, and everyone agrees on every height.
    sim.nodes[2].driver.byzantine_withhold_votes(false);
    assert!(
        sim.run_until(sim.now + 300_000, |s| s.all_reached(&all, top + 4)),
        "did not resume once 3 of 4 vote: {:?}",
        all.map(|i| sim.nodes[i].tip().0)
    );
    assert_consistent(&sim, &all);
    no_rejections(&sim, &all);
}

#[test]
fn equivocating_arbitrator_is_detected_and_honest_ones_agree() {
    for seed in 21..=26 {
        let mut sim = Sim::new(4, seed);
        sim.nodes[3].byzantine = true;
        let honest = [0, 1, 2];
        let ok = sim.run_until(120_000, |s| s.all_reached(&honest, 8));
        if !ok {
            for (i, n) in sim.nodes.iter().enumerate() {
                eprintln!(
                    "node {i}: tip {:?} height {} round {:?} rejected {:?} syncreq {} now {}",
                    n.tip().0,
                    n.driver.height(),
                    n.driver.round(),
                    n.rejected,
                    n.sync_requests,
                    sim.now
                );
            }
        }
        assert!(ok, "seed {seed}: stalled");
        assert_consistent(&sim, &[0, 1, 2, 3]);
        let cheater = sim.nodes[3].id();
        let evidence: Vec<&Misbehavior> = honest
            .iter()
            .flat_map(|&i| sim.nodes[i].evidence.iter())
            .collect();
        assert!(
            !evidence.is_empty(),
            "seed {seed}: double votes went unnoticed"
        );
        for e in &evidence {
            assert_eq!(e.validator(), cheater, "only the cheater is blamed");
            if let Misbehavior::DoubleVote { first, second, .. } = e {
                assert_ne!(first.vote, second.vote);
                first.verify(&sim.validators).unwrap();
                second.verify(&sim.validators).unwrap();
                // What the node submits as `ReportEquivocation` convinces the ledger.
                let report = e.ledger_evidence().expect("a double vote is reportable");
                assert_eq!(
                    report.verify(sim.validators.chain()),
                    Ok(cheater),
                    "seed {seed}"
                );
            }
        }
    }
}

#[test]
fn crashed_arbitrator_catches_up_through_sync_with_verified_certificates() {
    for seed in 31..=33 {
        let mut sim = Sim::new(4, seed);
        let all = [0, 1, 2, 3];
        assert!(sim.run_until(60_000, |s| s.all_reached(&all, 3)));
        sim.crash(1);
        let others = [0, 2, 3];
        assert!(sim.run_until(200_000, |s| s.all_reached(&others, 12)));
        let behind = sim.nodes[1].tip().0;
        assert!(behind < 12);
        sim.restart(1);
        assert!(
            sim.run_until(400_000, |s| s.all_reached(&all, 16)),
            "restarted arbitrator stuck at {}",
            sim.nodes[1].tip().0
        );
        assert!(sim.nodes[1].sync_requests > 0, "catch-up went through sync");
        assert_consistent(&sim, &all);
        no_rejections(&sim, &all);
        for i in all {
            assert!(
                sim.nodes[i].evidence.is_empty(),
                "restart must not look like equivocation"
            );
        }
    }
}

#[test]
fn arbitrator_restarted_mid_height_replays_its_wal_without_equivocating() {
    for seed in 41..=43 {
        let mut sim = Sim::new(4, seed);
        let all = [0, 1, 2, 3];
        assert!(sim.run_until(60_000, |s| s.all_reached(&all, 2)));
        // Crash node 0 as soon as it has voted at its current height.
        let mut crashed = false;
        for _ in 0..10_000 {
            let has_own_vote = sim.nodes[0]
                .wal
                .iter()
                .any(|e| matches!(e, WalEntry::Vote(v) if v.vote.voter() == sim.nodes[0].id()));
            if has_own_vote {
                sim.crash(0);
                crashed = true;
                break;
            }
            let t = sim.now + 1;
            sim.run_until(t, |_| false);
        }
        assert!(crashed, "node 0 never voted");
        let t = sim.now + 50;
        sim.run_until(t, |_| false);
        let me = sim.nodes[0].id();
        let logged: Vec<_> = sim.nodes[0]
            .wal
            .iter()
            .filter_map(|e| match e {
                WalEntry::Vote(v) if v.vote.voter() == me => Some(v.clone()),
                _ => None,
            })
            .collect();
        let resent = sim.restart(0);
        // Replay re-derived the logged votes and re-sent exactly those signatures.
        for vote in &logged {
            assert!(
                resent.contains(&ConsensusMessage::Vote(vote.clone())),
                "logged vote {vote:?} not re-sent after replay: {resent:?}"
            );
        }
        assert!(sim.run_until(200_000, |s| s.all_reached(&all, 8)));
        assert_consistent(&sim, &all);
        for i in all {
            assert!(
                sim.nodes[i].evidence.is_empty(),
                "replayed votes must equal the logged ones"
            );
            let engine_errors: Vec<_> = sim.nodes[i]
                .rejected
                .iter()
                .filter(|(_, e)| matches!(e, ConsensusError::Engine { .. }))
                .collect();
            assert!(engine_errors.is_empty(), "node {i}: {engine_errors:?}");
        }
    }
}

#[test]
fn seven_arbitrators_decide_even_with_two_crashed() {
    let mut sim = Sim::new(7, 51);
    let all: Vec<usize> = (0..7).collect();
    assert!(sim.run_until(60_000, |s| s.all_reached(&all, 6)));
    assert_consistent(&sim, &all);
    sim.crash(4);
    sim.crash(6);
    let up = live(&sim);
    assert!(sim.run_until(200_000, |s| s.all_reached(&up, 12)));
    assert_consistent(&sim, &up);
    no_rejections(&sim, &up);
}

#[test]
fn arbitrators_agree_over_a_lossy_network() {
    for seed in 61..=63 {
        let mut sim = Sim::new(4, seed);
        sim.loss = 0.2;
        let all = [0, 1, 2, 3];
        assert!(
            sim.run_until(600_000, |s| s.all_reached(&all, 8)),
            "seed {seed}: stalled at {:?}",
            all.map(|i| sim.nodes[i].tip().0)
        );
        assert_consistent(&sim, &all);
        no_rejections(&sim, &all);
        // Lost proposals and votes forced extra rounds somewhere.
        let max_round = sim.nodes[0].decided.iter().map(|(_, _, c)| c.round).max();
        assert!(
            max_round > Some(0),
            "seed {seed}: 20% loss never forced a second round"
        );
    }
}

/// Issue #17: over links of 450–550 ms one way, with the proposer answering as a node does for
/// an empty block (1 s after the round starts), the chain's fixed timeouts lose round 0 of some
/// heights (2 to 5 of 10 with these seeds; 32–42 simulated seconds for 10 heights); timeouts
/// stretched for the measured round trip decide every height in round 0, and sooner (25 s).
#[test]
fn timeouts_that_follow_the_round_trip_keep_slow_links_in_round_zero() {
    use std::time::Duration;

    use super::sim::{SimSetup, test_config};
    use crate::ConsensusTimeouts;

    const HEIGHTS: u64 = 10;
    let run = |timeouts: ConsensusTimeouts, seed: u64| {
        let setup = SimSetup {
            config: crate::ConsensusConfig {
                timeouts,
                ..test_config()
            },
            links_ms: (450, 550),
            empty_block_ms: Some(1_000),
        };
        let mut sim = Sim::with(4, seed, setup);
        let all = [0, 1, 2, 3];
        assert!(
            sim.run_until(600_000, |s| s.all_reached(&all, HEIGHTS)),
            "seed {seed}: stalled at {:?}",
            all.map(|i| sim.nodes[i].tip().0)
        );
        assert_consistent(&sim, &all);
        no_rejections(&sim, &all);
        let later_rounds = sim.nodes[0].decided[..HEIGHTS as usize]
            .iter()
            .filter(|(_, _, c)| c.round > 0)
            .count();
        (later_rounds, sim.now)
    };
    // The round trip a node measures over these links: at most 2 × 550 ms.
    let rtt = Duration::from_millis(1_100);
    for seed in 1..=3 {
        let (fixed_later, fixed_ms) = run(ConsensusTimeouts::CHAIN, seed);
        let (paced_later, paced_ms) = run(ConsensusTimeouts::CHAIN.for_round_trip(rtt), seed);
        assert!(
            fixed_later >= 2,
            "seed {seed}: with fixed timeouts only {fixed_later} of {HEIGHTS} heights needed a \
             later round (the scenario no longer shows the problem)"
        );
        assert_eq!(
            paced_later, 0,
            "seed {seed}: {paced_later} heights needed a later round with paced timeouts"
        );
        assert!(
            paced_ms < fixed_ms,
            "seed {seed}: paced {paced_ms} ms vs fixed {fixed_ms} ms for {HEIGHTS} heights"
        );
    }
}

/// THREATS A12: with every delivery judged first, as the ledger task does (only what the judge
/// forwards or finds far ahead reaches the driver, checked), the judge never refuses honest
/// traffic (early votes for the next height, a restarted arbitrator's catch-up from votes far
/// ahead, later rounds' proposals and votes over a lossy network) and the chain decides as
/// without it.
#[test]
fn judged_gossip_refuses_no_honest_traffic() {
    let all = [0, 1, 2, 3];
    let none_invalid = |sim: &Sim| {
        for i in all {
            let invalid = &sim.nodes[i].judged_invalid;
            assert!(
                invalid.is_empty(),
                "node {i} judged honest gossip invalid: {invalid:?}"
            );
        }
    };
    for seed in 31..=32 {
        let mut sim = Sim::new(4, seed);
        sim.judged = true;
        assert!(sim.run_until(60_000, |s| s.all_reached(&all, 3)));
        sim.crash(1);
        assert!(sim.run_until(200_000, |s| s.all_reached(&[0, 2, 3], 12)));
        sim.restart(1);
        assert!(
            sim.run_until(400_000, |s| s.all_reached(&all, 16)),
            "seed {seed}: restarted arbitrator stuck at {}",
            sim.nodes[1].tip().0
        );
        assert!(sim.nodes[1].sync_requests > 0, "catch-up went through sync");
        assert_consistent(&sim, &all);
        no_rejections(&sim, &all);
        none_invalid(&sim);
    }
    for seed in 61..=62 {
        let mut sim = Sim::new(4, seed);
        sim.judged = true;
        sim.loss = 0.2;
        assert!(
            sim.run_until(600_000, |s| s.all_reached(&all, 8)),
            "seed {seed}: stalled at {:?}",
            all.map(|i| sim.nodes[i].tip().0)
        );
        assert_consistent(&sim, &all);
        no_rejections(&sim, &all);
        none_invalid(&sim);
        let max_round = sim.nodes[0].decided.iter().map(|(_, _, c)| c.round).max();
        assert!(
            max_round > Some(0),
            "seed {seed}: no later round was exercised"
        );
    }
}
