//! A stranger against storage audits (#13.7, threat A3), on seven real `agora` processes: while
//! the committee audits an honest provider, a peer that is no arbitrator of the contract floods
//! the provider with challenges for the contract's file. Every one is refused as "not an
//! arbitrator" before it takes an answer slot or a disk read, the provider counts them
//! (`agora storage stats --json`, `challenges`), the committee's audit rounds keep reaching
//! their quorum as "passed", and the honest provider is never judged failed.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use agora_devnet::files::CONTRACT_NODES;
use agora_tests::adversary::challenge::{self, ChallengeFloodReport};
use agora_tests::adversary::{Adversary, HostileDevnet};
use agora_tests::{agora, agora_json, try_agora_json};

const WAIT: Duration = Duration::from_secs(90);

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
    let net = HostileDevnet::up(CONTRACT_NODES).await.unwrap();
    let node0 = net.data_dir(0);

    // node0 keeps a file (three 256 KiB chunks) with a storage contract.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("data.bin");
    let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let added = agora_json(&[
        "storage",
        "add",
        &input.display().to_string(),
        "--data-dir",
        &node0,
    ]);
    let file = added["cid"].as_str().unwrap().to_string();
    let created = agora(&[
        "auction",
        "create",
        "--kind",
        "storage",
        "--storage",
        "2MiB",
        "--duration",
        "5m",
        "--max-price",
        "100",
        "--window",
        "1s",
        "--service",
        &file,
        "--json",
        "--data-dir",
        &node0,
    ]);
    assert!(created.status.success(), "{created:?}");
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
