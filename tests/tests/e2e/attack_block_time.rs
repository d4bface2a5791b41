//! An arbitrator that stamps the blocks it proposes behind the clock (THREATS A6: a slow clock,
//! or early stamps on purpose) on a 7-node devnet of real processes: node 1 runs the test
//! crate's `agora-byzantine --no-bid --lag-proposals 1500ms` (each block it proposes is stamped
//! 1.5 s behind its clock, never before its parent); nodes 2–5 run `agora-byzantine --no-bid`
//! (honest arbitrators that do not bid), so node 0, a plain `agora` process, is the provider of
//! the customer A's (node 6, plain `agora`) hosted contract.
//!
//! A block stamped behind the provider's clock clips the heartbeat batch it carries to the
//! block's time. Before session 43 the provider started its next batch at its own end of the
//! last one, so every clipped batch left a gap that settlement counts against it.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora` (cargo builds
//! `agora-byzantine` itself for this test), then
//! `nice cargo test -p agora-tests --test e2e attack_block_time::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agora_contracts::ContractStatus;
use agora_devnet::demo::story::wait_for;
use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::{ByzantineLauncher, TestLauncher, byzantine_lines, log_lines};
use agora_tests::{agora_bin, alive};

/// The honest provider: the only node that bids.
const PROVIDER: usize = 0;
/// The arbitrator whose proposals lag.
const LAGGARD: usize = 1;
/// The device the hosted contract's image names (not one of A's own service's).
const DEVICE: u32 = agora_devnet::sensor_keys::KEYED_SENSORS[3];
/// The hosted contract's term: ten heartbeat batches or so.
const DURATION_MS: u64 = 20_000;

fn launcher() -> ByzantineLauncher {
    let bad = (1..CONTRACT_NODES - 1)
        .map(|i| {
            let mut a = vec!["--no-bid".to_string()];
            if i == LAGGARD {
                a.extend(["--lag-proposals".to_string(), "1500ms".to_string()]);
            }
            (i, a)
        })
        .collect();
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad,
        tune: None,
    }
}

/// A hosted contract runs its whole term while one arbitrator's blocks lag the clock: on every
/// honest replica it settles (not slashed), and the provider's claimed uptime covers exactly
/// the span its heartbeats spoke for (activation to the ledger's uptime cursor), with no gap
/// between batches, though some of them landed in blocks stamped behind the provider's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_stamped_behind_the_clock_cost_an_honest_provider_no_uptime() {
    let test =
        "attack_block_time::blocks_stamped_behind_the_clock_cost_an_honest_provider_no_uptime";
    let Some((_tmp, s)) = agora_tests::story(test, Arc::new(launcher())).await else {
        return;
    };
    let laggard = s.m.nodes[LAGGARD].data_dir.clone();
    wait_for("the laggard to lag", 30, async || {
        byzantine_lines(&laggard)
            .iter()
            .any(|l| l.starts_with("byzantine: lag-proposals"))
            .then_some(())
    })
    .await
    .unwrap();
    let hosted = s.hosted(&[DEVICE], DURATION_MS).await.unwrap();
    assert_eq!(hosted.b, PROVIDER, "the only bidder won");
    let mut gaps = Vec::new();
    for i in 1..CONTRACT_NODES - 1 {
        let r = s
            .wait_contract(i, &hosted.id, "settlement", DURATION_MS / 1000 + 90, |r| {
                r.status.is_final()
            })
            .await
            .unwrap();
        assert_eq!(r.status, ContractStatus::Settled, "node{i}: {r:?}");
        let spoken = r.last_uptime_end.unwrap() - r.activated_at.unwrap();
        assert!(spoken > DURATION_MS / 2, "node{i}: heartbeats came: {r:?}");
        gaps.push(spoken - r.uptime_ms);
        assert_eq!(
            r.uptime_ms, spoken,
            "node{i}: no gap between heartbeat batches: {r:?}"
        );
    }
    // The laggard's log: each of its proposals and how far behind its clock it was stamped.
    let behind: Vec<u64> = log_lines(&laggard)
        .iter()
        .filter(|l| l.contains("test hook: proposal stamped behind the clock"))
        .filter_map(|l| {
            let v = l.split("behind_ms=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect();
    assert!(
        behind.iter().any(|ms| *ms >= 200),
        "the laggard proposed blocks stamped behind its clock: {behind:?}"
    );
    for (i, n) in s.m.nodes.iter().enumerate() {
        assert!(alive(u64::from(n.pid.unwrap())), "node{i} still runs");
    }
    eprintln!(
        "the laggard's proposals were stamped {behind:?} ms behind its clock; uptime gaps per \
         honest replica {gaps:?} ms"
    );
    s.down(true).await.unwrap();
}
