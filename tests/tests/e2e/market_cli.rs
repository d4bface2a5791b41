//! Process-level market test: on a 7-node devnet (the smallest where any two nodes can make a
//! contract), node0's auction receives bids from the decision units of nodes 1–5 and one manual
//! bid from node6's CLI; customer and winner agree on the outcome.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_tests::{
    JoinedNode, TestDevnet, agora, agora_json, market_events, try_agora_json, wait_until,
};

#[test]
fn auction_gets_dmu_and_manual_bids_and_both_sides_agree() {
    let net = TestDevnet::up(7, 60, &["--manual", "1"]);
    let up = &net.up;
    let ids: Vec<String> = up["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .collect();
    let node = |i: usize| net.node(i);

    // Bad input is refused with a clear error, not a panic.
    let bad = agora(&[
        "auction",
        "create",
        "--data-dir",
        &node(0),
        "--cpu",
        "lots",
        "--duration",
        "2h",
        "--max-price",
        "100",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--cpu"));

    let created = agora_json(&[
        "auction",
        "create",
        "--data-dir",
        &node(0),
        "--cpu",
        "500m",
        "--memory",
        "256MiB",
        "--interfaces",
        "lora",
        "--duration",
        "2h",
        "--max-price",
        "100",
        "--kind",
        "standby",
        "--window",
        "4s",
        "--near",
        "48.2082,16.3738,50",
    ]);
    let auction = created["id"].as_str().unwrap().to_string();

    // The manual provider sees the auction via gossip and bids from its CLI.
    wait_until("node6 to see the auction", Duration::from_secs(10), || {
        let list = agora_json(&["auctions", "--data-dir", &node(6)]);
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == auction.as_str())
    });
    let manual = agora_json(&[
        "bid",
        "submit",
        &auction,
        "--price",
        "80",
        "--data-dir",
        &node(6),
    ]);
    assert!(manual["id"].is_string());
    // A bid above the maximum is refused locally.
    let over = agora(&[
        "bid",
        "submit",
        &auction,
        "--price",
        "1000",
        "--data-dir",
        &node(6),
    ]);
    assert!(!over.status.success());

    // The customer holds the DMU bids of nodes 1-5 and the manual one.
    wait_until("6 bids at the customer", Duration::from_secs(10), || {
        let bids = agora_json(&["bids", &auction, "--data-dir", &node(0)]);
        bids.as_array().unwrap().len() >= 6
    });
    let bids = agora_json(&["bids", &auction, "--data-dir", &node(0)]);
    let providers: Vec<&str> = bids
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["provider"].as_str().unwrap())
        .collect();
    for (i, id) in ids.iter().enumerate().skip(1) {
        assert!(providers.contains(&id.as_str()), "node{i} bid");
    }

    // After the window: the customer awards, and the winner sees the same award.
    let mut winner = String::new();
    wait_until("the award at the customer", Duration::from_secs(20), || {
        let list = agora_json(&["auctions", "--data-dir", &node(0)]);
        let a = list
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == auction.as_str())
            .cloned()
            .unwrap();
        if a["status"] == "awarded" {
            winner = a["provider"].as_str().unwrap().to_string();
            true
        } else {
            false
        }
    });
    let w = ids.iter().position(|id| *id == winner).unwrap();
    assert_ne!(w, 0);
    wait_until("the award at the winner", Duration::from_secs(10), || {
        let list = agora_json(&["auctions", "--data-dir", &node(w)]);
        list.as_array().unwrap().iter().any(|a| {
            a["id"] == auction.as_str()
                && a["status"] == "awarded"
                && a["provider"] == winner.as_str()
        })
    });
    // Both sides log the agreed deal with the same terms.
    wait_until(
        "agreed terms on both sides",
        Duration::from_secs(20),
        || {
            [0, w].iter().all(|&i| {
                let out = agora(&[
                    "market",
                    "watch",
                    "--once",
                    "--json",
                    "--data-dir",
                    &node(i),
                ]);
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.contains("\"agreed\""))
            })
        },
    );
    let agreed = |i: usize| -> serde_json::Value {
        let out = agora(&[
            "market",
            "watch",
            "--once",
            "--json",
            "--data-dir",
            &node(i),
        ]);
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("\"agreed\""))
            .unwrap()
            .to_string();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["data"].clone()
    };
    assert_eq!(agreed(0), agreed(w));

    // The deal becomes a dual-signed contract, escrowed by the arbitrators and visible on every
    // node's ledger.
    let price = agreed(0)["price"].as_u64().unwrap();
    wait_until(
        "the contract on every ledger",
        Duration::from_secs(30),
        || {
            (0..7).all(|i| {
                let list = agora_json(&["contract", "list", "--data-dir", &node(i)]);
                list.as_array().unwrap().iter().any(|c| {
                    c["customer"] == ids[0].as_str()
                        && c["provider"] == winner.as_str()
                        && c["payment"] == price
                        && c["kind"] == "standby"
                })
            })
        },
    );
    let customer = agora_json(&["balance", "--data-dir", &node(0)]);
    assert!(
        customer["locked"].as_u64().unwrap() >= price,
        "payment is in escrow: {customer}"
    );
    let provider = agora_json(&["balance", &winner, "--data-dir", &node(3)]);
    assert!(
        provider["locked"].as_u64().unwrap() > 0,
        "provider stake is in escrow: {provider}"
    );
}

#[test]
fn manual_provider_counters_and_customer_accepts_within_max() {
    let net = TestDevnet::up(3, 60, &["--manual", "1"]);
    let node = |i: usize| net.node(i);
    // Only node2 (0.004° from the centre on each axis) is within 100 m of this point.
    let created = agora_json(&[
        "auction",
        "create",
        "--data-dir",
        &node(0),
        "--cpu",
        "250m",
        "--duration",
        "1h",
        "--max-price",
        "100",
        "--window",
        "2s",
        "--near",
        "48.2122,16.3698,0.1",
    ]);
    let auction = created["id"].as_str().unwrap().to_string();
    wait_until("node2 to see the auction", Duration::from_secs(10), || {
        let list = agora_json(&["auctions", "--data-dir", &node(2)]);
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == auction.as_str())
    });
    agora_json(&[
        "bid",
        "submit",
        &auction,
        "--price",
        "40",
        "--data-dir",
        &node(2),
    ]);

    // node2 wins; as a manual provider it gets the award as a proposal to answer.
    let mut award = String::new();
    wait_until(
        "the award proposal at node2",
        Duration::from_secs(20),
        || {
            for v in market_events(&node(2)) {
                if v["kind"] == "awarded" {
                    award = v["data"]["award"].as_str().unwrap().to_string();
                }
            }
            !award.is_empty()
        },
    );
    // A counter above the customer's maximum would be refused by the customer; 60 is within.
    let out = agora_json(&[
        "market",
        "negotiate",
        &award,
        "--counter",
        "60",
        "--data-dir",
        &node(2),
    ]);
    assert!(out.as_array().is_some());
    wait_until(
        "the deal at 60 on both sides",
        Duration::from_secs(20),
        || {
            [0, 2].iter().all(|&i| {
                let out = agora(&[
                    "market",
                    "watch",
                    "--once",
                    "--json",
                    "--data-dir",
                    &node(i),
                ]);
                String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["kind"] == "agreed" && v["data"]["price"] == 60
                })
            })
        },
    );
    // Nonsense is refused with a clear message.
    let bad = agora(&[
        "market",
        "negotiate",
        "zz",
        "--accept",
        "--data-dir",
        &node(2),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an award id"));
}

#[test]
fn standing_offer_taken_and_late_joiner_gets_open_auctions() {
    let net = TestDevnet::up(3, 60, &[]);
    let dir = &net.dir;
    let node = |i: usize| net.node(i);

    // node1 publishes a standing offer; node0 sees it and takes it directly.
    let offer = agora_json(&[
        "offer",
        "create",
        "--data-dir",
        &node(1),
        "--cpu",
        "1",
        "--memory",
        "512MiB",
        "--price-per-hour",
        "12",
        "--ttl",
        "1h",
    ]);
    let offer = offer["id"].as_str().unwrap().to_string();
    wait_until("node0 to see the offer", Duration::from_secs(10), || {
        let list = agora_json(&["offers", "--data-dir", &node(0)]);
        list.as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == offer.as_str())
    });
    let taken = agora_json(&[
        "offer",
        "take",
        &offer,
        "--duration",
        "2h",
        "--data-dir",
        &node(0),
    ]);
    assert!(taken.to_string().contains("award"), "{taken}");
    wait_until(
        "the provider to hold the award",
        Duration::from_secs(10),
        || {
            let out = agora(&[
                "market",
                "watch",
                "--once",
                "--json",
                "--data-dir",
                &node(1),
            ]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.contains("\"awarded\""))
        },
    );

    // An auction with a long window is open; a node that joins afterwards learns it by snapshot.
    let created = agora_json(&[
        "auction",
        "create",
        "--data-dir",
        &node(0),
        "--cpu",
        "100m",
        "--duration",
        "1h",
        "--max-price",
        "50",
        "--window",
        "5m",
    ]);
    let auction = created["id"].as_str().unwrap().to_string();
    // The late joiner asks its first peers, whichever they are, for a snapshot: every node
    // lists the auction before it starts.
    let lists_it = |dir: &str| {
        try_agora_json(&["auctions", "--data-dir", dir]).is_some_and(|v| {
            v.as_array()
                .is_some_and(|l| l.iter().any(|a| a["id"] == auction.as_str()))
        })
    };
    wait_until(
        "nodes 1 and 2 to list the auction",
        Duration::from_secs(10),
        || lists_it(&node(1)) && lists_it(&node(2)),
    );
    let late = JoinedNode::start(&net.tmp().join("late"), dir);
    wait_until(
        "the late joiner to receive the open auction",
        Duration::from_secs(20),
        || lists_it(&late.data_dir),
    );
}
