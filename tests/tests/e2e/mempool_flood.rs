//! Mempool lock-out (#13.1) on real `agora` processes: a hostile peer joins a 4-node devnet and
//! gossips, over and over, nonces 1..=1000 (skipping 0) of ten free keys and of two funded
//! ones, while an honest transfer and a node's own faucet request still finalise everywhere.
//!
//! The hostile sender is a raw libp2p peer built on `agora-network` (it needs no ledger): it
//! signs the transactions with throw-away keys and publishes them in batches on the
//! transaction topic, a fresh envelope each round so gossip never deduplicates them away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use agora_contracts::{SignedTransaction, Transaction, TxKind};
use agora_devnet::files::DevnetManifest;
use agora_market::{KeySigner, Signer as _};
use agora_network::NetworkConfig;
use agora_network::keys::NodeKey;
use agora_tests::{TestDevnet, agora, agora_json, alive, try_agora_json, wait_until};
use agora_wire::codec::Kind;
use agora_wire::topics::TX_TOPIC;
use tokio_util::sync::CancellationToken;

/// Free keys (no account) the flood signs with.
const FREE_KEYS: u64 = 10;
/// Highest nonce each key floods (from 1: nonce 0 is skipped, so none could ever execute).
const MAX_NONCE: u64 = 1_000;
/// Transactions per gossiped batch (the ledger's own batches hold at most 256).
const BATCH: usize = 250;

fn signed(chain: &str, key: &KeySigner, nonce: u64) -> SignedTransaction {
    Transaction {
        chain_id: chain.to_string(),
        sender: key.node_id(),
        nonce,
        kind: TxKind::Faucet { amount: 1 },
    }
    .sign(key)
    .unwrap()
}

/// Starts the hostile peer: dials every devnet node and gossips `batches` every round until
/// `stop` is cancelled. Returns how many batches it published.
fn start_flood(
    rt: &tokio::runtime::Runtime,
    manifest: &DevnetManifest,
    batches: Vec<Vec<u8>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let cfg = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: manifest
            .bootstrap_addrs()
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
        ..NetworkConfig::default()
    };
    rt.spawn(async move {
        let key = NodeKey::generate();
        let (net, _task) = agora_network::spawn(&key, cfg, stop.clone())
            .await
            .expect("hostile peer starts");
        // Subscribed like any node, so the honest ones graft it into the topic's mesh.
        net.subscribe(TX_TOPIC).await.unwrap();
        let mut published = 0u64;
        while !stop.is_cancelled() {
            for batch in &batches {
                if net
                    .broadcast(TX_TOPIC, Kind::Transaction, batch.clone())
                    .await
                    .is_ok()
                {
                    published += 1;
                }
                // As fast as the hostile peer's own swarm task takes them: tens of thousands
                // of transactions a second on a fast machine.
                tokio::task::yield_now().await;
            }
        }
        published
    })
}

fn balance(node: &str, account: &str) -> Option<u64> {
    try_agora_json(&["balance", account, "--data-dir", node]).and_then(|b| b["balance"].as_u64())
}

fn stats(node: &str) -> serde_json::Value {
    agora_json(&["ledger", "status", "--data-dir", node])
}

#[test]
fn free_and_gapped_keys_flooding_the_mempool_do_not_lock_out_honest_transactions() {
    let net = TestDevnet::up(4, 120, &[]);
    let dir = &net.dir;
    let dir_s = net.dir_s();
    let up = &net.up;
    let nodes = up["nodes"].as_array().unwrap().clone();
    let pids: Vec<u64> = nodes.iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .collect();
    let data = |i: usize| dir.join(format!("node{i}")).display().to_string();
    let manifest = DevnetManifest::load(Path::new(&dir)).unwrap();
    let genesis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("genesis.json")).unwrap()).unwrap();
    let chain = genesis["chain_id"].as_str().unwrap().to_string();
    wait_until(
        "every node to know it is at the chain's tip",
        Duration::from_secs(120),
        || (0..4).all(|i| try_agora_json(&["ledger", "status", "--data-dir", &data(i)]).is_some()),
    );

    // Two keys get funded first (the minimum balance and a little more): funded senders are
    // admitted, but only inside the nonce window and their per-sender quota.
    let gapped: Vec<KeySigner> = (0..2).map(|i| KeySigner::from_seed(70_000 + i)).collect();
    for k in &gapped {
        let id = k.node_id().to_string();
        agora_json(&["transfer", &id, "2000", "--data-dir", &data(3)]);
    }
    for k in &gapped {
        let id = k.node_id().to_string();
        wait_until(
            "the gapped keys to be funded on node0",
            Duration::from_secs(120),
            || balance(&data(0), &id) == Some(2_000),
        );
    }

    let free: Vec<KeySigner> = (0..FREE_KEYS)
        .map(|i| KeySigner::from_seed(90_000 + i))
        .collect();
    let mut batches = Vec::new();
    for key in free.iter().chain(&gapped) {
        let txs: Vec<SignedTransaction> = (1..=MAX_NONCE).map(|n| signed(&chain, key, n)).collect();
        for chunk in txs.chunks(BATCH) {
            batches.push(serde_cbor::to_vec(&chunk).unwrap());
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    let flood = start_flood(&rt, &manifest, batches, stop.clone());
    let flood_guard = stop.clone().drop_guard();

    // The flood reaches the nodes: node0 refuses the free keys' transactions as unfunded.
    wait_until(
        "node0 to refuse the flood's unfunded transactions",
        Duration::from_secs(60),
        || {
            try_agora_json(&["ledger", "status", "--data-dir", &data(0)]).is_some_and(|s| {
                s["mempool_stats"]["refused_unfunded"].as_u64().unwrap_or(0) >= 1_000
            })
        },
    );

    // An honest transfer (node1 to a fresh key, gossiped to the others) and node0's own faucet
    // request both finalise on every node while the flood goes on.
    let fresh = KeySigner::from_seed(80_000).node_id().to_string();
    let before = balance(&data(0), &ids[0]).unwrap();
    let started = std::time::Instant::now();
    agora_json(&["transfer", &fresh, "5000", "--data-dir", &data(1)]);
    agora_json(&["faucet", "--amount", "700", "--data-dir", &data(0)]);
    for i in 0..4 {
        wait_until(
            "the honest transfer to finalise on every node during the flood",
            Duration::from_secs(120),
            || balance(&data(i), &fresh) == Some(5_000),
        );
        wait_until(
            "node0's own faucet request to finalise on every node during the flood",
            Duration::from_secs(120),
            || balance(&data(i), &ids[0]).is_some_and(|b| b >= before + 700),
        );
    }
    let finality = started.elapsed();

    let s = stats(&data(0));
    let m = &s["mempool_stats"];
    eprintln!(
        "under the flood, transfer + own faucet final on all 4 nodes after {:.1} s; node0 mempool: {}",
        finality.as_secs_f64(),
        m
    );
    // The free keys never got a slot; the gapped ones at most their quota each.
    assert!(
        s["mempool"].as_u64().unwrap() <= 2 * 64,
        "only the gapped keys' quota is held: {s}"
    );
    assert!(m["refused_nonce"].as_u64().unwrap() > 0, "{m}");
    // The batches that brought nothing admissible went no further than their first hop.
    let net = agora_json(&["status", "--data-dir", &data(0)]);
    let ignored = net["stats"]["gossip_ignored"].as_u64().unwrap_or(0);
    assert!(ignored > 0, "node0 forwarded the flood: {}", net["stats"]);
    drop(flood_guard);
    let published = rt.block_on(flood).unwrap();
    assert!(published > 0, "the hostile peer published nothing");
    eprintln!("the hostile peer published {published} batches of {BATCH} transactions");
    assert!(
        pids.iter().all(|p| alive(*p)),
        "every node survived the flood"
    );
    let down = agora(&["devnet", "down", "--dir", &dir_s]);
    assert!(down.status.success());
}
