//! Many throwaway identities flood the gossip (THREATS N7) on a 4-node devnet of real processes.
//!
//! Each identity may deliver its own byte rate (1 MiB/s, burst 4 MiB), and identities are
//! free: sixteen of them flooding transaction batches would make each node decode and check
//! sixteen times what one peer may send. A node with a ledger vouches for every identity whose
//! account holds the minimum balance (the devnet's nodes, funded at genesis); everyone else's
//! gossip also shares one budget of one peer's rate. The test asserts, per node, that the
//! strangers together got no more than that budget over the flood (plus one burst), that the
//! budget turned messages away, and that an honest transfer finalises meanwhile; then the same
//! identities flood node0 with requests, and together get one peer's request rate.
//!
//! Build the node first: `nice cargo build -p agora-node --bin agora`, then
//! `nice cargo test -p agora-tests --test e2e attack_sybil::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agora_contracts::{SignedTransaction, Transaction, TxKind};
use agora_market::{KeySigner, Signer as _};
use agora_tests::adversary::{Adversary, HostileDevnet, flood};
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
    let net = HostileDevnet::up(NODES).await.unwrap();
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

    // And once more after the floods.
    net.transfer_finalises(1, 2, 5).await.unwrap();
    net.assert_alive();
}
