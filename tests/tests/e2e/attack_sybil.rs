//! Many throwaway identities flood the gossip (THREATS N7) on a 4-node devnet of real processes.
//!
//! Each identity may deliver its own byte rate (1 MiB/s, burst 4 MiB), and identities are
//! free: sixteen of them flooding transaction batches would make each node decode and check
//! sixteen times what one peer may send. A node with a ledger vouches for every identity whose
//! account holds the minimum balance (the devnet's nodes, funded at genesis); everyone else's
//! gossip also shares one budget of one peer's rate. The test asserts, per node, that the
//! strangers together got no more than that budget over the flood (plus one burst), that the
//! budget turned messages away, and that an honest transfer finalises meanwhile; then the same
//! identities flood node0 with requests, and together get one peer's request rate. Node0's
//! operator trusts one more identity without an account (`network.trusted_peers`, its own
//! edge): its requests, sent while the strangers' budget is spent, are not charged to it.
//! Last, the identities hold their per-peer shares of node0's inbound bitswap streams, which
//! is the strangers' half of the total: one more stranger is refused a stream, the trusted
//! identity is served.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora`, then
//! `nice cargo test -p agora-tests --test e2e attack_sybil::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_contracts::{SignedTransaction, Transaction, TxKind};
use agora_exchange::bitswap::{MAX_INBOUND_STREAMS, MAX_INBOUND_STREAMS_PER_PEER};
use agora_market::{KeySigner, Signer as _};
use agora_network::keys::NodeKey;
use agora_tests::adversary::flood::{self, BITSWAP};
use agora_tests::adversary::{Adversary, ByzantineLauncher, HostileDevnet, TestLauncher};
use agora_tests::agora_bin;
use agora_wire::codec::Kind;
use agora_wire::topics::TX_TOPIC;

/// Devnet nodes.
const NODES: usize = 4;
/// Throwaway identities flooding at once.
const IDENTITIES: usize = 16;
/// How long they flood.
const FLOOD: Duration = Duration::from_secs(8);
/// What all strangers together may deliver to one node: one peer's rate and burst (the
/// network's `STRANGER_GOSSIP_BYTES_PER_SECOND` / `_BURST`).
const STRANGER_BYTES_PER_SECOND: f64 = 1024.0 * 1024.0;
const STRANGER_BURST: f64 = 4.0 * 1024.0 * 1024.0;
/// What all strangers together may ask of one node: one peer's request rate and burst.
const STRANGER_REQUESTS_PER_SECOND: f64 = 50.0;
const STRANGER_REQUEST_BURST: f64 = 200.0;

/// The identity node0's operator trusts: it holds no account, like a stranger.
fn friend() -> NodeKey {
    NodeKey::from_secret([0x5a; 32])
}

/// Honest nodes; node0 trusts [`friend`].
fn launcher() -> ByzantineLauncher {
    ByzantineLauncher {
        honest: TestLauncher(agora_bin()),
        exe: env!("CARGO_BIN_EXE_agora-byzantine").into(),
        bad: Vec::new(),
        tune: Some(|i, c| {
            if i == 0 {
                c.network.trusted_peers = vec![friend().node_id().to_string()];
            }
        }),
    }
}

/// A batch of 800 transactions (about 130 KiB) from keys without an account (the ledger refuses them at
/// once, so every batch is ignored, not penalised: the identities stay connected).
fn junk_batch(chain: &str, seed: u64) -> Vec<u8> {
    let txs: Vec<SignedTransaction> = (0..800u64)
        .map(|n| {
            let key = KeySigner::from_seed(500_000 + seed * 1_000 + n);
            Transaction {
                chain_id: chain.to_string(),
                sender: key.node_id(),
                nonce: 0,
                kind: TxKind::Faucet { amount: 1 },
            }
            .sign(&key)
            .unwrap()
        })
        .collect();
    serde_cbor::to_vec(&txs).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_identities_share_one_gossip_budget_and_honest_transfers_finalise() {
    let net = HostileDevnet::up_with(NODES, &launcher()).await.unwrap();
    let genesis: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(net.manifest.dir.join("genesis.json")).unwrap(),
    )
    .unwrap();
    let chain = genesis["chain_id"].as_str().unwrap().to_string();
    let before = net.all_stats().await.unwrap();
    for (i, s) in before.iter().enumerate() {
        assert!(
            s.vouched_peers >= NODES as u64,
            "node{i} vouches for the funded nodes: {s:?}"
        );
        assert_eq!(s.trusted_peers, u64::from(i == 0), "node{i}: {s:?}");
    }

    let started = Instant::now();
    let sybils = Adversary::many(&net, IDENTITIES).await.unwrap();
    for a in &sybils {
        a.network().subscribe(TX_TOPIC).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sybils: Vec<Arc<Adversary>> = sybils.into_iter().map(Arc::new).collect();
    let floods: Vec<_> = sybils
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let (a, stop, sent) = (a.clone(), stop.clone(), sent.clone());
            let batch = junk_batch(&chain, k as u64);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if a.network()
                        .broadcast(TX_TOPIC, Kind::Transaction, batch.clone())
                        .await
                        .is_ok()
                    {
                        sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    // Honest trading goes on under the flood.
    net.transfer_finalises(0, 1, 7).await.unwrap();
    let flood_from = Instant::now();
    while flood_from.elapsed() < FLOOD {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.await.unwrap();
    }
    // Gossip already on its way may still arrive: the window ends a second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = started.elapsed().as_secs_f64() + 1.0;
    let after = net.all_stats().await.unwrap();
    let bound = STRANGER_BYTES_PER_SECOND * window + STRANGER_BURST;
    let sent = sent.load(Ordering::Relaxed);
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        let got = a.gossip_stranger_bytes - b.gossip_stranger_bytes;
        eprintln!(
            "node{i}: strangers delivered {:.1} MiB in {window:.1} s (bound {:.1} MiB), {} \
             messages turned away by their shared budget, {} by a per-peer rate; the {IDENTITIES} \
             identities published {:.1} MiB",
            got as f64 / 1048576.0,
            bound / 1048576.0,
            a.gossip_strangers_limited - b.gossip_strangers_limited,
            a.gossip_rate_limited - b.gossip_rate_limited,
            sent as f64 / 1048576.0,
        );
        assert!(
            (got as f64) <= bound,
            "node{i}: strangers delivered {got} bytes in {window:.1} s, more than one peer's \
             rate: {a:?}"
        );
        assert!(
            a.gossip_strangers_limited > b.gossip_strangers_limited,
            "node{i}: the strangers' budget turned nothing away: {a:?}"
        );
    }

    // The same identities each send node0 60 requests at once (within their own request rate
    // and burst): together they get one peer's request rate.
    let target = net.peer_id(0);
    let before = net.stats(0).await.unwrap();
    let asked = Instant::now();
    let floods = sybils.iter().map(|a| {
        let req = a.seal(Kind::Consensus, b"flood".to_vec()).to_bytes();
        async move { flood::requests_for(a, target, &req, 60, Duration::from_secs(5)).await }
    });
    let reports = futures::future::join_all(floods).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = asked.elapsed().as_secs_f64() + 1.0;
    let after = net.stats(0).await.unwrap();
    let admitted = after.rpc_stranger_admitted - before.rpc_stranger_admitted;
    let limited = after.rpc_strangers_limited - before.rpc_strangers_limited;
    let bound = STRANGER_REQUESTS_PER_SECOND * window + STRANGER_REQUEST_BURST;
    eprintln!(
        "node0: {} requests from {IDENTITIES} identities in {window:.1} s, {admitted} let \
         through (bound {bound:.0}), {limited} refused by the strangers' request rate; \
         answered/refused as the identities saw it: {reports:?}",
        IDENTITIES * 60
    );
    assert!(
        (admitted as f64) <= bound,
        "node0 let {admitted} stranger requests through in {window:.1} s: {after:?}"
    );
    assert!(
        limited > 0,
        "the strangers' request rate refused nothing: {after:?}"
    );

    // The trusted identity, unfunded like them, sends node0 60 requests at once while the
    // strangers' request budget is still nearly spent: none is charged to that budget (the
    // strangers' counters do not move), so none is refused by it. They do reach node0: past
    // the strangers' gate, the 28 beyond its 32 pending requests per peer are refused there.
    let friend = Adversary::start(friend(), net.p2p_addrs()).await.unwrap();
    friend.wait_connected(&[target]).await.unwrap();
    let before = net.stats(0).await.unwrap();
    let req = friend.seal(Kind::Consensus, b"friend".to_vec()).to_bytes();
    let report = flood::requests_for(&friend, target, &req, 60, Duration::from_secs(5)).await;
    let after = net.stats(0).await.unwrap();
    let charged = (after.rpc_stranger_admitted + after.rpc_strangers_limited)
        - (before.rpc_stranger_admitted + before.rpc_strangers_limited);
    eprintln!(
        "node0: the trusted identity's 60 requests: {report:?}, {charged} charged to the \
         strangers' budget"
    );
    assert_eq!(
        charged, 0,
        "the trusted identity's requests were charged to the strangers: {after:?}"
    );
    assert!(
        after.rpc_pending_refused > before.rpc_pending_refused,
        "the trusted identity's requests never got past the strangers' gate: {after:?}"
    );

    // Streams: the sixteen each open their per-peer share of node0's inbound bitswap streams,
    // 128 together, the strangers' half of the 256 node0 serves at once. One more stranger is
    // then refused a stream though the total has room; the trusted identity is served.
    // libp2p-stream drops inbound streams that arrive while its accept loop is busy, so each
    // identity tops its streams up until all of them are held.
    let mut held: Vec<(usize, agora_network::Stream)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (k, a) in sybils.iter().enumerate() {
            let mine = held.iter().filter(|(o, _)| *o == k).count();
            for _ in mine..MAX_INBOUND_STREAMS_PER_PEER {
                let (streams, _) = flood::open_streams(a, target, BITSWAP, 1).await;
                held.extend(streams.into_iter().map(|s| (k, s)));
            }
        }
        flood::retain_open(&mut held, Duration::from_secs(1)).await;
        if held.len() == MAX_INBOUND_STREAMS / 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sixteen hold {} bitswap streams, not the strangers' share",
            held.len()
        );
    }
    let open = held.len();
    let before = net.stats(0).await.unwrap();
    let late = Adversary::join(&net).await.unwrap();
    let (mut theirs, _) = flood::open_streams(&late, target, BITSWAP, 1).await;
    let stranger_open = flood::held_open(&mut theirs, Duration::from_secs(2)).await;
    // A stream libp2p-stream drops on arrival is asked for again (the quota would refuse
    // every one).
    let (mut mine, mut friend_open) = (Vec::new(), 0);
    for _ in 0..3 {
        mine = flood::open_streams(&friend, target, BITSWAP, 1).await.0;
        friend_open = flood::held_open(&mut mine, Duration::from_secs(2)).await;
        if friend_open == 1 {
            break;
        }
    }
    let after = net.stats(0).await.unwrap();
    eprintln!(
        "node0: strangers hold {open} bitswap streams; one more stranger's stream held: \
         {stranger_open}, the trusted identity's: {friend_open}; refused {}",
        after.bitswap_streams_refused - before.bitswap_streams_refused
    );
    assert_eq!(stranger_open, 0, "a stranger got past the strangers' share");
    assert_eq!(friend_open, 1, "the trusted identity was refused a stream");
    assert!(after.bitswap_streams_refused > before.bitswap_streams_refused);
    drop((held, theirs, mine));

    // And once more after the floods.
    net.transfer_finalises(1, 2, 5).await.unwrap();
    net.assert_alive();
}
