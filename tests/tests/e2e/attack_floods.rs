//! Floods on real processes (#13.9): raw streams (heartbeat, bitswap) and requests from one
//! peer and from many identities. Each peer gets its own share and no more; every refusal is
//! counted in `agora status --json`; honest nodes keep trading; no process dies; memory stays
//! bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_network::heartbeat::MAX_INBOUND_PER_PEER;
use agora_tests::adversary::flood::{self, BITSWAP, HEARTBEAT};
use agora_tests::adversary::{Adversary, HostileDevnet};
use agora_wire::codec::Kind;

/// Inbound bitswap streams one peer may hold (`agora_exchange::bitswap`).
const BITSWAP_PER_PEER: usize = 8;
/// Resident memory a node may gain under one of these floods (generous: a debug build, with
/// allocator slack; an unbounded queue of these floods grows far beyond it).
const RSS_BUDGET_KIB: u64 = 256 * 1024;

fn rss_all(net: &HostileDevnet) -> Vec<u64> {
    (0..net.len())
        .map(|i| net.rss_kib(i).unwrap_or(0))
        .collect()
}

fn assert_rss_bounded(before: &[u64], after: &[u64]) {
    eprintln!("RSS KiB before {before:?} after {after:?}");
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        assert!(
            a.saturating_sub(*b) < RSS_BUDGET_KIB,
            "node{i} grew from {b} KiB to {a} KiB under the flood"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_floods_get_a_per_peer_share_and_honest_nodes_keep_trading() {
    let net = HostileDevnet::up(3).await.unwrap();
    let rss_before = rss_all(&net);
    let adv = Adversary::join(&net).await.unwrap();

    // Heartbeat: 64 streams from one peer; the target echoes on its per-peer share only.
    let (mut beats, _) = flood::open_streams(&adv, net.peer_id(0), HEARTBEAT, 64).await;
    let echoing = flood::echoing(&mut beats, Duration::from_secs(10)).await;
    assert!(
        (1..=MAX_INBOUND_PER_PEER).contains(&echoing),
        "{echoing} heartbeat streams echoed (share {MAX_INBOUND_PER_PEER})"
    );

    // Bitswap: 64 streams from one peer; the target serves its per-peer share only.
    let (mut swaps, _) = flood::open_streams(&adv, net.peer_id(1), BITSWAP, 64).await;
    let open = flood::held_open(&mut swaps, Duration::from_secs(3)).await;
    assert!(
        open <= BITSWAP_PER_PEER,
        "{open} bitswap streams held open (share {BITSWAP_PER_PEER})"
    );

    // Both refusals are counted where an operator sees them.
    let s0 = net.stats(0).await.unwrap();
    let s1 = net.stats(1).await.unwrap();
    eprintln!("node0 {s0:?}\nnode1 {s1:?}");
    assert!(s0.heartbeat_streams_refused >= 1, "{s0:?}");
    assert!(s1.bitswap_streams_refused >= 1, "{s1:?}");

    // An honest peer still gets its heartbeat share while the flood holds its streams.
    let honest = Adversary::join(&net).await.unwrap();
    let (mut mine, _) = flood::open_streams(&honest, net.peer_id(0), HEARTBEAT, 1).await;
    assert_eq!(flood::echoing(&mut mine, Duration::from_secs(10)).await, 1);

    net.transfer_finalises(0, 2, 5).await.unwrap();
    net.assert_alive();
    drop((beats, swaps, mine));
    assert_rss_bounded(&rss_before, &rss_all(&net));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_floods_from_one_peer_and_many_identities_are_limited_and_counted() {
    let net = HostileDevnet::up(3).await.unwrap();
    let rss_before = rss_all(&net);
    let target = net.peer_id(0);

    // One peer, 600 correctly signed requests its owner never answers (ledger sync requests
    // whose body is not a sync message; a kind no task owns would be refused at once as
    // unrouted), all at once: its rate and its pending share run out.
    let adv = Adversary::join(&net).await.unwrap();
    let req = adv.seal(Kind::Consensus, b"flood".to_vec()).to_bytes();
    let one = flood::requests_for(&adv, target, &req, 600, Duration::from_secs(5)).await;
    eprintln!("one peer: {one:?}");
    let s = net.stats(0).await.unwrap();
    eprintln!("after one peer: {s:?}");
    // Of the 600, libp2p's request-response handler itself drops what exceeds its 100
    // concurrent inbound streams per connection (uncounted, before our loop sees them); of
    // those that reach the loop, 32 wait for an answer and the rest are refused and counted.
    assert!(
        one.accepted == 0,
        "a malformed sync request was answered: {one:?}"
    );
    assert!(
        s.rpc_rate_limited + s.rpc_pending_refused >= 100,
        "a 600-request flood was not refused: {s:?}"
    );
    assert!(s.rpc_pending_refused >= 1, "{s:?}");

    // Many throwaway identities, 60 requests each: each is held to its own pending share.
    let before = s.rpc_pending_refused;
    let many = Adversary::many(&net, 8).await.unwrap();
    let floods = many.iter().map(|a| {
        let req = a.seal(Kind::Consensus, b"flood".to_vec()).to_bytes();
        async move { flood::requests_for(a, target, &req, 60, Duration::from_secs(5)).await }
    });
    let reports = futures::future::join_all(floods).await;
    eprintln!("many identities: {reports:?}");
    let s = net.stats(0).await.unwrap();
    eprintln!("after many: {s:?}");
    // Held to its pending share, or refused before that by the one request rate all
    // strangers share (identities without a funded account; THREATS N4, N7).
    assert!(
        s.rpc_pending_refused + s.rpc_strangers_limited >= before + 8 * (60 - 32),
        "each identity was not held to its pending share: {s:?}"
    );

    net.transfer_finalises(0, 1, 3).await.unwrap();
    net.assert_alive();
    assert_rss_bounded(&rss_before, &rss_all(&net));
}
