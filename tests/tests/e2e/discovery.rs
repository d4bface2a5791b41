//! Peer discovery beyond the bootstrap node, without mDNS (issue #17): what a network across
//! machines (or the Shadow simulator) has. Twelve nodes on loopback, started at once with
//! 100 ms one-way WAN latency, each know only node0's address and keep a small
//! `target_peers`. Every node must find at least `TARGET - 1` peers other than node0 through
//! Kademlia, and an auction from the last node must reach every node by gossip.
//!
//! This guards the property; it does not reproduce the Shadow failure: the binary from before
//! the discovery walks (`event_loop/discovery.rs`) passes it too (Kademlia's own bootstrap on
//! each new routing-table entry suffices on one host; see docs/STATUS.md #17).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use agora_tests::{JoinedNode, agora, agora_json, try_agora_json, wait_until};

const NODES: usize = 12;
const TARGET: usize = 4;
const ARBITRATORS: usize = 4;
/// One-way delay on every link (the node's WAN emulation): a lookup takes round trips, as
/// between real hosts, instead of finishing before the next node has started.
const LATENCY_MS: u64 = 100;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The peer ids node `dir` is connected to (empty while it is not answering).
fn peers_of(dir: &str) -> HashSet<String> {
    try_agora_json(&["peers", "--data-dir", dir])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["peer_id"].as_str().map(str::to_string))
        .collect()
}

/// Edits `[network]` and `[market]` settings `agora init` wrote: no mDNS (the default, checked
/// here), a small connection target, a short trim grace (node0 starts trimming within the
/// test), WAN latency, and the capacity and auto-bidding a provider has.
fn configure(dir: &str) {
    let path = std::path::Path::new(dir).join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("mdns = false"), "{text}");
    let text = text
        .replacen("target_peers = 16", &format!("target_peers = {TARGET}"), 1)
        .replacen("trim_grace_ms = 30000", "trim_grace_ms = 3000", 1)
        .replacen("auto_bid = false", "auto_bid = true", 1)
        .replacen("cpu_millis = 0", "cpu_millis = 4000", 1)
        .replacen("memory_bytes = 0", "memory_bytes = 4294967296", 1)
        + &format!("\n[network.wan]\nlatency_ms = {LATENCY_MS}\n");
    assert!(
        text.contains(&format!("target_peers = {TARGET}\n")),
        "{text}"
    );
    assert!(text.contains("trim_grace_ms = 3000\n"), "{text}");
    std::fs::write(&path, text).unwrap();
}

#[test]
fn nodes_that_know_only_one_bootstrap_address_find_each_other_and_gossip_reaches_all() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<String> = (0..NODES)
        .map(|i| tmp.path().join(format!("node{i}")).display().to_string())
        .collect();
    // node0 listens on a port chosen now (nothing else runs yet); the others on any port.
    let node0_port = free_port();
    let mut ids = Vec::new();
    let mut peer_ids = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let port = if i == 0 { node0_port } else { 0 };
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        let init = agora_json(&[
            "init",
            "--data-dir",
            dir,
            "--listen",
            &listen,
            "--api-listen",
            "127.0.0.1:0",
        ]);
        ids.push(init["node_id"].as_str().unwrap().to_string());
        peer_ids.push(init["peer_id"].as_str().unwrap().to_string());
    }
    let genesis = tmp.path().join("genesis.json").display().to_string();
    let mut args = vec!["genesis", "create", "--out", &genesis, "--faucet"];
    for id in &ids[..ARBITRATORS] {
        args.extend(["--arbitrator", id.as_str()]);
    }
    let accounts: Vec<String> = ids[ARBITRATORS..]
        .iter()
        .map(|id| format!("{id}=100000"))
        .collect();
    for a in &accounts {
        args.extend(["--account", a.as_str()]);
    }
    agora_json(&args);
    let bootstrap = format!("/ip4/127.0.0.1/tcp/{node0_port}/p2p/{}", peer_ids[0]);
    for (i, dir) in dirs.iter().enumerate() {
        let mut args = vec!["init", "--data-dir", dir, "--genesis", &genesis];
        if i > 0 {
            args.extend(["--bootstrap", &bootstrap]);
        }
        agora_json(&args);
        configure(dir);
    }
    // All start at once, as the nodes of a simulation do: each asks node0 for peers while
    // node0 itself has barely met anyone.
    let nodes: Vec<JoinedNode> = dirs.iter().map(|d| JoinedNode::run(d, &[])).collect();

    // Every node finds peers beyond node0 (which trims all but TARGET of its connections).
    let want = TARGET - 1;
    for (i, dir) in dirs.iter().enumerate() {
        let mut seen = HashSet::new();
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(
                &format!("node{i} to hold {want} peers other than node0"),
                Duration::from_secs(40),
                || {
                    seen = peers_of(dir);
                    seen.remove(&peer_ids[0]);
                    seen.len() >= want
                },
            )
        }));
        if let Err(e) = waited {
            let all: Vec<String> = dirs
                .iter()
                .enumerate()
                .map(|(k, d)| format!("node{k}: {} peers", peers_of(d).len()))
                .collect();
            let out = agora(&["peers", "--data-dir", dir, "--json"]);
            eprintln!(
                "node{i} holds {seen:?} besides node0; {all:?}; its `agora peers`: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::panic::resume_unwind(e);
        }
    }

    // An auction from the last node reaches every node by gossip.
    let last = &dirs[NODES - 1];
    let created = agora_json(&[
        "auction",
        "create",
        "--data-dir",
        last,
        "--cpu",
        "100m",
        "--duration",
        "1h",
        "--max-price",
        "100000",
        "--window",
        "3s",
    ]);
    let auction = created["id"].as_str().unwrap().to_string();
    for (i, dir) in dirs.iter().enumerate() {
        wait_until(
            &format!("node{i} to hold the auction from node{}", NODES - 1),
            Duration::from_secs(20),
            || {
                try_agora_json(&["auctions", "--data-dir", dir])
                    .and_then(|v| v.as_array().cloned())
                    .is_some_and(|list| list.iter().any(|a| a["id"] == auction.as_str()))
            },
        );
    }
    drop(nodes);
}
