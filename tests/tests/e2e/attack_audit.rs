//! A stranger against storage audits (#13.7, threat A3), on seven real `agora` processes: while
//! the committee audits an honest provider, a peer that is no arbitrator of the contract floods
//! the provider with challenges for the contract's file. Every one is refused as "not an
//! arbitrator" before it takes an answer slot or a disk read, the provider counts them
//! (`agora storage stats --json`, `challenges`), the committee's audit rounds keep reaching
//! their quorum as "passed", and the honest provider is never judged failed.
//!
//! A provider that keeps nothing while its customer is offline (THREATS P4): the test crate's
//! `agora-byzantine --keep-nothing` wins a storage contract, claims custody without fetching
//! the file or the customer's commitment block, and reports the contract active; the customer
//! dies as soon as the contract is on the ledger, before any arbitrator could fetch the
//! commitment from it. The arbitrators ask the provider to show it, it cannot, every round
//! fails, and the contract ends slashed with nothing paid (before, an arbitrator fetched the
//! commitment from any peer, the rounds went unjudged while none served it, and the provider
//! was paid in full).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use agora_contracts::{ContractRecord, ContractStatus};
use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::challenge::{self, ChallengeFloodReport};
use agora_tests::adversary::{
    Adversary, ByzantineLauncher, HostileDevnet, TestLauncher, byzantine_lines,
};
use agora_tests::{agora, agora_bin, agora_json, try_agora_json};

const WAIT: Duration = Duration::from_secs(90);

/// One devnet at a time: each test runs seven nodes on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Adds a 700 kB file (three 256 KiB chunks) to the node at `data_dir`; returns its CID.
fn add_file(data_dir: &str, dir: &std::path::Path) -> String {
    let input = dir.join("data.bin");
    let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let added = agora_json(&[
        "storage",
        "add",
        &input.display().to_string(),
        "--data-dir",
        data_dir,
    ]);
    added["cid"].as_str().unwrap().to_string()
}

/// `agora auction create` for keeping `file` with 2 MiB for `duration` (`5m`, `20s`).
fn auction_storage(data_dir: &str, file: &str, duration: &str) {
    let created = agora(&[
        "auction",
        "create",
        "--kind",
        "storage",
        "--storage",
        "2MiB",
        "--duration",
        duration,
        "--max-price",
        "100",
        "--window",
        "1s",
        "--service",
        file,
        "--json",
        "--data-dir",
        data_dir,
    ]);
    assert!(created.status.success(), "{created:?}");
}

/// The customer's storage contract as `agora contract show --json` prints it, once `ok`.
async fn wait_contract(
    net: &HostileDevnet,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let node0 = net.data_dir(0);
    let me = net.node_id(0).to_string();
    let deadline = Instant::now() + WAIT;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        let shown = try_agora_json(&["contract", "list", "--data-dir", &node0]).and_then(|l| {
            let c = l
                .as_array()?
                .iter()
                .find(|c| c["kind"] == "storage" && c["customer"].as_str() == Some(me.as_str()))?;
            try_agora_json(&["contract", "show", c["id"].as_str()?, "--data-dir", &node0])
        });
        if let Some(r) = shown {
            if ok(&r) {
                return r;
            }
            last = r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} never happened; the contract is {last}");
}

fn count(r: &serde_json::Value, key: &str) -> u64 {
    r[key].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_flooding_challenges_is_refused_and_the_committee_still_audits() {
    let _serial = SERIAL.lock().await;
    let net = HostileDevnet::up(CONTRACT_NODES).await.unwrap();
    let node0 = net.data_dir(0);

    // node0 keeps a file (three 256 KiB chunks) with a storage contract.
    let tmp = tempfile::tempdir().unwrap();
    let file = add_file(&node0, tmp.path());
    auction_storage(&node0, &file, "5m");
    let active = wait_contract(&net, "an audited, active storage contract", |r| {
        r["status"] == "Active" && count(r, "storage_passed") >= 1
    })
    .await;
    let provider_id = active["contract"]["provider"].as_str().unwrap().to_string();
    let provider = (0..net.len())
        .find(|i| net.node_id(*i).to_string() == provider_id)
        .unwrap();
    let passed_before = count(&active, "storage_passed");
    eprintln!(
        "contract active; provider node{provider}, {passed_before} audit rounds passed so far"
    );

    // A stranger floods the provider with challenges for the contract's file, in waves, for
    // several audit rounds.
    let adv = Adversary::join(&net).await.unwrap();
    let cid = file.parse().unwrap();
    let mut total = ChallengeFloodReport::default();
    let flood_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < flood_until {
        let r =
            challenge::flood(&adv, net.peer_id(provider), cid, 50, Duration::from_secs(5)).await;
        total.proofs += r.proofs;
        total.busy += r.busy;
        total.unanswered += r.unanswered;
        for (k, v) in r.refused {
            *total.refused.entry(k).or_default() += v;
        }
    }
    eprintln!("stranger's flood: {total:?}");
    assert_eq!(
        total.proofs, 0,
        "the provider proved chunks to a stranger: {total:?}"
    );
    assert_eq!(total.busy, 0, "a stranger took answer slots: {total:?}");
    let refused = total.refused.get("not an arbitrator").copied().unwrap_or(0);
    assert!(
        refused >= 50,
        "the stranger was not refused as such: {total:?}"
    );
    assert_eq!(
        refused,
        total.refused_total(),
        "refused for another reason: {total:?}"
    );

    // The provider counted every refusal where its operator sees it, and kept answering the
    // committee.
    let stats = agora_json(&["storage", "stats", "--data-dir", &net.data_dir(provider)]);
    let ch = &stats["challenges"];
    eprintln!("provider's challenge counters: {ch}");
    assert!(
        count(ch, "refused_not_arbitrator") >= refused as u64,
        "refusals not counted: {ch}"
    );
    assert!(
        count(ch, "answered") >= 1,
        "the committee was not answered: {ch}"
    );
    assert!(
        count(ch, "commitments_shown") >= 1,
        "the committee was not shown the commitment: {ch}"
    );

    // The committee's audits keep reaching their quorum as "passed" after the flood; the
    // honest provider is never judged failed, nor slashed.
    let after = wait_contract(&net, "two more audit rounds passed", |r| {
        count(r, "storage_passed") >= passed_before + 2
    })
    .await;
    assert_eq!(
        count(&after, "storage_failed"),
        0,
        "an honest provider failed: {after}"
    );
    assert_eq!(after["status"], "Active", "{after}");
    net.assert_alive();
}

/// The provider that keeps nothing.
const LAZY: usize = 0;
/// The customer (the last node): plain `agora`, killed once its contract is on the ledger.
const CUSTOMER: usize = CONTRACT_NODES - 1;
/// The storage contract's term: ten 2 s audit rounds.
const TERM: &str = "20s";

/// `agora contract show ID --json` on node `i`, once it shows the contract.
fn cli_contract(net: &HostileDevnet, i: usize, id: &str) -> Option<ContractRecord> {
    let v = try_agora_json(&["contract", "show", id, "--data-dir", &net.data_dir(i)])?;
    serde_json::from_value(v).ok()
}

/// Waits (with `WAIT`) until node `i` shows contract `id` as `ok` wants.
async fn wait_record(
    net: &HostileDevnet,
    i: usize,
    id: &str,
    what: &str,
    ok: impl Fn(&ContractRecord) -> bool,
) -> ContractRecord {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = cli_contract(net, i, id);
        if let Some(r) = r.as_ref().filter(|r| ok(r)) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened on node{i}; the contract is {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How many of node `i`'s `storage-challenge` timeline entries for `contract` contain `text`.
fn challenges_saying(net: &HostileDevnet, i: usize, contract: &str, text: &str) -> usize {
    let v = agora_json(&["timeline", "--data-dir", &net.data_dir(i)]);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["phase"] == "storage-challenge"
                && e["contract"] == contract
                && e["detail"].as_str().is_some_and(|d| d.contains(text))
        })
        .count()
}

/// `agora balance WHO --json` on node `at`: the balance.
fn balance(net: &HostileDevnet, at: usize, who: usize) -> u64 {
    let who = net.node_id(who).to_string();
    let v = agora_json(&["balance", &who, "--data-dir", &net.data_dir(at)]);
    v["balance"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_keeping_nothing_is_slashed_though_its_customer_is_offline() {
    let _serial = SERIAL.lock().await;
    // Node LAZY keeps nothing; nodes 1–5 arbitrate and never bid, so LAZY is the only bidder.
    let mut bad = vec![(LAZY, vec!["--keep-nothing".to_string()])];
    bad.extend((1..CUSTOMER).map(|i| (i, vec!["--no-bid".to_string()])));
    let launcher = ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad,
        tune: None,
    };
    let net = HostileDevnet::up_with(CONTRACT_NODES, &launcher)
        .await
        .unwrap();
    let lazy_dir = net.node(LAZY).data_dir.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !byzantine_lines(&lazy_dir)
        .iter()
        .any(|l| l == "byzantine: keep-nothing")
    {
        assert!(
            Instant::now() < deadline,
            "the provider never turned keep-nothing on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let customer = net.data_dir(CUSTOMER);
    let tmp = tempfile::tempdir().unwrap();
    let file = add_file(&customer, tmp.path());
    auction_storage(&customer, &file, TERM);
    // The customer dies as soon as its contract is on the ledger: before activation, so
    // before any arbitrator's first challenge could fetch the commitment block from it.
    let me = net.node_id(CUSTOMER).to_string();
    let deadline = Instant::now() + WAIT;
    let id = loop {
        let listed = try_agora_json(&["contract", "list", "--data-dir", &customer]);
        let found = listed.as_ref().and_then(|l| {
            l.as_array()?
                .iter()
                .find(|c| c["kind"] == "storage" && c["customer"].as_str() == Some(me.as_str()))
                .and_then(|c| c["id"].as_str().map(str::to_string))
        });
        if let Some(id) = found {
            break id;
        }
        assert!(Instant::now() < deadline, "no storage contract registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &net.pid(CUSTOMER).to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let obs = 1;
    let first = wait_record(&net, obs, &id, "registration", |_| true).await;
    assert_eq!(
        first.contract.provider,
        net.node_id(LAZY),
        "the only bidder won: {first:?}"
    );
    let payment = first.contract.payment;
    assert!(payment > 0, "{first:?}");
    let before = balance(&net, obs, LAZY);

    // It reports the contract active without keeping anything.
    let active = wait_record(&net, obs, &id, "activation", |r| r.activated_at.is_some()).await;
    // The provider settles at the term's end (the customer is gone): every honest replica
    // ends the contract slashed, nothing paid, its rounds confirmed failed.
    for i in 1..CUSTOMER {
        let r = wait_record(&net, i, &id, "settlement", |r| r.status.is_final()).await;
        assert_eq!(r.status, ContractStatus::Slashed, "node{i}: {r:?}");
        assert_eq!(r.paid_to_provider, 0, "node{i}: {r:?}");
        assert_eq!(r.storage_passed, 0, "node{i}: {r:?}");
        assert!(
            r.storage_failed > 0,
            "node{i}: rounds confirmed failed: {r:?}"
        );
    }
    // Each honest arbitrator of the contract failed rounds because the provider could not
    // show the commitment and no peer served it (the customer was dead).
    let mut said = Vec::new();
    for i in 1..CUSTOMER {
        if first.contract.committee.contains(&net.node_id(i)) {
            said.push(challenges_saying(&net, i, &id, "did not show commitment"));
        }
    }
    assert!(
        said.len() >= 4 && said.iter().all(|n| *n > 0),
        "every honest arbitrator failed rounds for the missing commitment: {said:?}"
    );
    let after = balance(&net, obs, LAZY);
    assert!(
        after <= before,
        "the provider's balance did not grow: {before} -> {after}"
    );
    // Its own challenge gate showed no commitment.
    let stats = agora_json(&["storage", "stats", "--data-dir", &net.data_dir(LAZY)]);
    assert_eq!(
        count(&stats["challenges"], "commitments_shown"),
        0,
        "{stats}"
    );
    // The honest nodes keep trading.
    let alive: Vec<usize> = (0..CUSTOMER).collect();
    net.transfer_finalises_on(2, 3, 1, &alive).await.unwrap();
    eprintln!(
        "activated {:?}; rounds failed for the missing commitment per honest arbitrator \
         {said:?}; payment {payment}, provider balance {before} -> {after}",
        active.activated_at
    );
}
