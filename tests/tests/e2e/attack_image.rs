//! THREATS C6 on real processes: a customer names an image nobody can run. node0 creates a
//! hosted auction for a pre-contracted slot (`--start-in 5s`: the activation deadline runs
//! from the slot, whether or not the provider could stage) for a CID that no node holds (the
//! honest CLI checks only that it is a CID; a hostile customer may equally withhold its own
//! image or publish a broken one); a provider wins it and its contract is registered, but the
//! image can never be staged. The provider used to retry for minutes (30 s a fetch) while the
//! customer settled the contract as not activated (`NoActivation`) 15 s after the slot began,
//! taking the provider's stake; now the provider
//! gives up by half the report grace past the activation deadline and calls the contract
//! off, which the ledger allows before the provider committed to stand by: the contract ends
//! `cancelled`, every locked token goes back, and the provider's timeline says why.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_tests::fleet::node_ids;
use agora_tests::{TestDevnet, agora, agora_json, try_agora_json, wait_until};

/// A valid CID that no node holds.
const NOBODY_HAS: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

fn balance(net: &TestDevnet, who: &str) -> u64 {
    agora_json(&["balance", who, "--data-dir", &net.node(0)])["balance"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_provider_calls_off_a_contract_whose_image_nobody_serves_instead_of_being_slashed() {
    let net = TestDevnet::up(7, 180, &[]);
    let ids = node_ids(&net);
    let node0 = net.node(0);
    let before: Vec<u64> = ids.iter().map(|id| balance(&net, id)).collect();
    // THREATS C7: a slot that would start before bidding closes (due before its contract
    // could exist) is refused up front, by this node's market as by every provider's.
    let early = agora(&[
        "auction",
        "create",
        "--data-dir",
        &node0,
        "--cpu",
        "250m",
        "--duration",
        "2m",
        "--max-price",
        "100",
        "--window",
        "3s",
        "--start-in",
        "1s",
    ]);
    assert!(!early.status.success(), "{early:?}");
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("bidding window closes"),
        "{early:?}"
    );
    agora_json(&[
        "auction",
        "create",
        "--data-dir",
        &node0,
        "--cpu",
        "250m",
        "--memory",
        "64MiB",
        "--duration",
        "2m",
        "--max-price",
        "100",
        "--window",
        "1s",
        "--service",
        NOBODY_HAS,
        "--start-in",
        "5s",
    ]);
    let contract = || {
        try_agora_json(&["contract", "list", "--data-dir", &node0])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .find(|c| c["image"] == NOBODY_HAS)
    };
    let mut found = None;
    wait_until(
        "a contract for the image nobody holds",
        Duration::from_secs(60),
        || {
            found = contract();
            found.is_some()
        },
    );
    let c = found.unwrap();
    let id = c["id"].as_str().unwrap().to_string();
    let provider = ids
        .iter()
        .position(|n| c["provider"] == n.as_str())
        .expect("the provider is a devnet node");
    eprintln!("attack_image: contract {id} with node{provider}");
    let mut status = String::new();
    wait_until("the contract to end", Duration::from_secs(120), || {
        status = contract()
            .and_then(|c| c["status"].as_str().map(str::to_string))
            .unwrap_or_default();
        matches!(
            status.as_str(),
            "cancelled" | "slashed" | "settled" | "expired"
        )
    });
    assert_eq!(
        status, "cancelled",
        "the provider of an image nobody serves was not let off: {status}"
    );
    let timeline = agora_json(&["timeline", "--data-dir", &net.node(provider)]);
    let failed: Vec<&serde_json::Value> = timeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["phase"] == "stage-failed" && e["contract"] == id.as_str())
        .collect();
    assert_eq!(failed.len(), 1, "{timeline}");
    eprintln!(
        "attack_image: the provider's reason: {}",
        failed[0]["detail"]
    );
    // A cancel refunds every locked token: nobody gained or lost.
    wait_until(
        "the refunds on node0's replica",
        Duration::from_secs(30),
        || ids.iter().map(|id| balance(&net, id)).collect::<Vec<_>>() == before,
    );
}
