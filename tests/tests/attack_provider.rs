//! A hosted provider that runs nothing (issue #13.10, THREATS P1) on a 7-node devnet of real
//! processes: node 0 runs the test crate's `agora-byzantine --host-nothing=…` (the real node,
//! whose service host stages the contract's image but never starts it, while its orchestrator
//! activates the contract and claims uptime in every heartbeat); nodes 1–5 run
//! `agora-byzantine --no-bid` (honest arbitrators that do not bid, so node 0 is the only
//! bidder); node 6 is the customer A, a plain `agora` process.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora` (cargo builds
//! `agora-byzantine` itself for this test), then
//! `nice cargo test -p agora-tests --test attack_provider`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use agora_api::ledger::{BalanceReply, TransferRequest};
use agora_contracts::{ContractRecord, ContractStatus};
use agora_devnet::demo::story::wait_for;
use agora_devnet::demo::{Story, module_bytes};
use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::{ByzantineLauncher, TestLauncher};
use agora_tests::{agora_bin, agora_json, alive};

/// One devnet at a time: each test runs seven nodes on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The provider that runs nothing.
const BAD: usize = 0;
/// The device the hosted contract's image names (not one of A's own service's).
const DEVICE: u32 = agora_devnet::sensor_keys::KEYED_SENSORS[3];
/// How long the hosted contract lasts: many probe intervals (one per heartbeat interval).
const DURATION_MS: u64 = 30_000;

/// Node `BAD` runs nothing with `args`; the others but A (the last) do not bid.
fn launcher(args: &[&str]) -> ByzantineLauncher {
    let mut bad: Vec<(usize, Vec<String>)> =
        vec![(BAD, args.iter().map(|a| a.to_string()).collect())];
    for i in 1..CONTRACT_NODES - 1 {
        bad.push((i, vec!["--no-bid".into()]));
    }
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad,
    }
}

/// The `byzantine:` lines node `dir` printed to its log.
fn byzantine_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("node.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("byzantine: "))
        .map(String::from)
        .collect()
}

/// `agora contract show ID --json` on `dir`, as an operator reads it.
fn cli_contract(dir: &Path, id: &str) -> ContractRecord {
    let dir = dir.display().to_string();
    let v = agora_json(&["contract", "show", id, "--data-dir", &dir]);
    serde_json::from_value(v).expect("contract JSON")
}

/// `agora balance WHO --json` on `dir`.
fn cli_balance(dir: &Path, who: &str) -> BalanceReply {
    let dir = dir.display().to_string();
    let v = agora_json(&["balance", who, "--data-dir", &dir]);
    serde_json::from_value(v).expect("balance JSON")
}

/// A started story on the devnet `launcher` makes, node `BAD` misbehaving as `word` says;
/// `None` (after saying skipped) when the lora-gateway module cannot be built here.
async fn story(
    test: &str,
    launcher: ByzantineLauncher,
    word: &str,
) -> Option<(tempfile::TempDir, Story)> {
    let module = match module_bytes(None) {
        Ok(m) => m,
        Err(e) => {
            agora_devnet::skipped(
                test,
                &format!("no lora-gateway module ({e:#}); rustup target add wasm32-wasip1"),
            );
            return None;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let s = Story::start(
        &tmp.path().join("net"),
        CONTRACT_NODES,
        &module,
        Arc::new(launcher),
        true,
    )
    .await
    .expect("story starts");
    let dir = s.m.nodes[BAD].data_dir.clone();
    let want = format!("byzantine: host-nothing={word}");
    wait_for("the provider to run nothing", 30, async || {
        byzantine_lines(&dir)
            .iter()
            .any(|l| *l == want)
            .then_some(())
    })
    .await
    .unwrap();
    Some((tmp, s))
}

/// A transfer between two honest nodes is applied on every honest replica.
async fn honest_transfer_finalises(s: &Story, from: usize, to: usize) {
    let who = s.m.nodes[to].node_id.clone();
    let mut was = Vec::new();
    for i in 1..CONTRACT_NODES {
        was.push(s.account(i, &who).await.unwrap().balance);
    }
    let req = TransferRequest {
        to: who.clone(),
        amount: 3,
    };
    let c = agora_api::client::ApiClient::for_data_dir(&s.m.nodes[from].data_dir).unwrap();
    let _: agora_api::ledger::SubmittedReply = c.post("/v1/ledger/transfer", &req).await.unwrap();
    for (k, i) in (1..CONTRACT_NODES).enumerate() {
        let want = was[k] + req.amount;
        wait_for(&format!("node{i} to apply the transfer"), 60, async || {
            let b = s.account(i, &who).await?.balance;
            (b >= want).then_some(())
        })
        .await
        .unwrap();
    }
}

/// P1 (b): the provider of a hosted contract stages its image but never runs it, activates the
/// contract and claims uptime in every heartbeat; asked by the arbitrators' probes, it says
/// its service does not run. No interval is confirmed up, a quorum confirms them down: the
/// contract is slashed at its end on every honest replica, the provider is paid nothing and
/// its balance does not grow, and the honest nodes keep trading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_running_nothing_that_says_so_to_the_probes_is_paid_nothing() {
    let _serial = SERIAL.lock().await;
    let test =
        "attack_provider::a_provider_running_nothing_that_says_so_to_the_probes_is_paid_nothing";
    let Some((_tmp, s)) = story(test, launcher(&["--host-nothing=honest"]), "honest").await else {
        return;
    };
    let hosted = s.hosted(&[DEVICE], DURATION_MS).await.unwrap();
    assert_eq!(hosted.b, BAD, "the only bidder won");
    let bad_dir = s.m.nodes[BAD].data_dir.clone();
    let provider = hosted.rec.contract.provider.to_string();
    assert_eq!(provider, s.m.nodes[BAD].node_id);
    let payment = hosted.rec.contract.payment;
    assert!(payment > 0, "{:?}", hosted.rec);
    let obs = 1;
    let before = cli_balance(&s.m.nodes[obs].data_dir, &provider);
    // It ran nothing: it only pretended to start the contract's service.
    let pretended = format!(
        "byzantine: host-nothing pretends to start service={}",
        hosted.id
    );
    assert!(
        byzantine_lines(&bad_dir).contains(&pretended),
        "{:?}",
        byzantine_lines(&bad_dir)
    );

    let done = s
        .wait_contract(
            obs,
            &hosted.id,
            "settlement",
            DURATION_MS / 1000 + 90,
            |r| r.status.is_final(),
        )
        .await
        .unwrap();
    let answered = byzantine_lines(&bad_dir)
        .iter()
        .filter(|l| {
            l.starts_with(&format!(
                "byzantine: probe answered service={} running=false",
                hosted.id
            ))
        })
        .count();
    assert!(answered > 0, "the provider answered probes (not silent)");
    for i in 1..CONTRACT_NODES {
        s.wait_contract(i, &hosted.id, "settlement here too", 30, |r| {
            r.status.is_final()
        })
        .await
        .unwrap();
        let r = cli_contract(&s.m.nodes[i].data_dir, &hosted.id);
        assert_eq!(r.status, ContractStatus::Slashed, "node{i}: {r:?}");
        assert_eq!(r.paid_to_provider, 0, "node{i}: paid nothing: {r:?}");
        assert_eq!(
            r.confirmed_up_ms, 0,
            "node{i}: no interval confirmed up: {r:?}"
        );
        assert!(
            r.confirmed_down_ms > 0,
            "node{i}: intervals confirmed down: {r:?}"
        );
        assert!(
            r.uptime_ms > 0,
            "node{i}: the provider did claim uptime: {r:?}"
        );
    }
    let after = cli_balance(&s.m.nodes[obs].data_dir, &provider);
    assert!(
        after.balance <= before.balance,
        "the provider's balance did not grow: {} -> {}",
        before.balance,
        after.balance
    );
    assert!(
        after.reputation < before.reputation,
        "{before:?} -> {after:?}"
    );

    // The honest nodes keep trading.
    honest_transfer_finalises(&s, 2, 3).await;
    for (i, n) in s.m.nodes.iter().enumerate() {
        assert!(alive(u64::from(n.pid.unwrap())), "node{i} still runs");
    }
    eprintln!(
        "{answered} probes answered \"not running\"; claimed uptime {} ms, confirmed down {} ms; \
         paid {} of {payment}; provider balance {} -> {}",
        done.uptime_ms,
        done.confirmed_down_ms,
        done.paid_to_provider,
        before.balance,
        after.balance
    );
    s.down(true).await.unwrap();
}
