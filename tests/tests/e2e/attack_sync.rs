//! A ledger sync flood on real processes (#13.9, THREATS row N4, sync part): eight throwaway
//! identities each ask node0, 100 times at once, for every block since genesis — the most
//! expensive request a stranger can make of the ledger (each answer reads and encodes up to
//! 64 stored blocks). Node0 serves at most one request per peer every 100 ms and four at once,
//! answers the rest with `Ack` and counts them (`agora ledger status --json`: `sync_served`,
//! `sync_refused`), and the chain keeps finalising transfers on every replica meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agora_network::PeerId;
use agora_tests::adversary::{Adversary, HostileDevnet};
use agora_tests::{agora_json, wait_until};
use agora_wire::codec::Kind;
use agora_wire::sync::SyncMsg;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// Identities in the flood, and requests each sends at once.
const IDENTITIES: usize = 8;
const PER_IDENTITY: usize = 100;

fn ledger_status(dir: &str) -> serde_json::Value {
    agora_json(&["ledger", "status", "--data-dir", dir])
}

/// Sends `PER_IDENTITY` distinct sync requests for every block since genesis; returns how
/// many were answered (served or acknowledged) within the wait.
async fn flood(adv: &Adversary, target: PeerId) -> usize {
    let body = serde_cbor::to_vec(&SyncMsg::<()>::Request { height: 0 }).unwrap();
    let mut sent: FuturesUnordered<_> = (0..PER_IDENTITY)
        .map(|_| {
            let bytes = adv.seal(Kind::Consensus, body.clone()).to_bytes();
            adv.request_raw(target, bytes)
        })
        .collect();
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, sent.next()).await {
        answered += usize::from(r.is_ok());
    }
    answered
}

#[test]
fn a_sync_flood_from_many_identities_is_rationed_and_the_chain_keeps_finalising() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = rt.block_on(HostileDevnet::up(3)).unwrap();
    let victim = net.data_dir(0);
    wait_until(
        "node0's chain to hold a few blocks to serve",
        Duration::from_secs(60),
        || ledger_status(&victim)["height"].as_u64().unwrap_or(0) >= 2,
    );
    let before = ledger_status(&victim);
    let net_before = rt.block_on(net.stats(0)).unwrap();
    let advs = rt.block_on(Adversary::many(&net, IDENTITIES)).unwrap();
    let target = net.peer_id(0);

    let started = std::time::Instant::now();
    let answered = rt.block_on(async {
        let floods = futures::future::join_all(advs.iter().map(|a| flood(a, target)));
        // Honest trading while the flood runs: a transfer final on every replica.
        let (answered, transfer) = tokio::join!(floods, net.transfer_finalises(0, 1, 3));
        transfer.unwrap();
        answered
    });

    let elapsed = started.elapsed();
    let after = ledger_status(&victim);
    let net_after = rt.block_on(net.stats(0)).unwrap();
    // Before the ledger sees a request, the network's per-peer quotas (50 a second, 32
    // pending) refuse what one peer sends beyond them, and the one request rate all strangers
    // share (identities without a funded account) what they send together beyond it.
    let quota_refused = (net_after.rpc_rate_limited
        + net_after.rpc_pending_refused
        + net_after.rpc_strangers_limited)
        - (net_before.rpc_rate_limited
            + net_before.rpc_pending_refused
            + net_before.rpc_strangers_limited);
    let served = after["sync_served"].as_u64().unwrap() - before["sync_served"].as_u64().unwrap();
    let refused =
        after["sync_refused"].as_u64().unwrap() - before["sync_refused"].as_u64().unwrap();
    eprintln!(
        "{IDENTITIES} identities × {PER_IDENTITY} sync requests from height 0: answered per \
         identity {answered:?} in {elapsed:?}; node0's network quotas refused {quota_refused}, its \
         ledger served {served} and refused {refused}; height {} → {}",
        before["height"], after["height"]
    );
    let sent = (IDENTITIES * PER_IDENTITY) as u64;
    assert!(served >= 1, "node0 served no sync request at all");
    // One request per identity every 100 ms at most (plus the first).
    let ration = IDENTITIES as u64 * (1 + elapsed.as_millis() as u64 / 100);
    assert!(
        served <= ration,
        "node0 served {served} sync requests in {elapsed:?}, more than its ration {ration}"
    );
    assert!(
        refused >= 1,
        "the ledger refused none of a simultaneous flood"
    );
    assert!(
        served + refused + quota_refused >= sent * 9 / 10,
        "of {sent} requests only {} were served or refused and counted",
        served + refused + quota_refused
    );
    assert!(
        served + refused <= sent,
        "node0 counted more sync requests than were sent"
    );
    net.assert_alive();
    // The chain still decides after the flood.
    let height = after["height"].as_u64().unwrap();
    wait_until(
        "node0's chain to decide another block after the flood",
        Duration::from_secs(60),
        || ledger_status(&victim)["height"].as_u64().unwrap_or(0) > height,
    );
}

/// Fresh keys funded to carry the load, and transfers each signs (the mempool's
/// `max_pending_per_sender` and `max_nonce_ahead`).
const LOAD_KEYS: u64 = 12;
const LOAD_PER_KEY: u64 = 64;
/// What a sync answer to a stranger may carry (`agora_ledger::chain`'s `STRANGER_SYNC_BYTES`).
const STRANGER_SYNC_BYTES: usize = 64 * 1024;

/// Asks node0 for blocks from `height` as `adv`, again while the answer is an `Ack` (the
/// per-peer sync ration); the blocks and their encoded sizes.
async fn blocks_from(adv: &Adversary, target: PeerId, height: u64) -> Vec<(u64, usize)> {
    let body = serde_cbor::to_vec(&SyncMsg::<()>::Request { height }).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let bytes = adv.seal(Kind::Consensus, body.clone()).to_bytes();
        if let Ok(env) = adv.request_raw(target, bytes).await {
            let msg: agora_ledger::SyncMsg = serde_cbor::from_slice(&env.payload).unwrap();
            if let SyncMsg::Response { blocks } = msg {
                return blocks
                    .iter()
                    .map(|b| (b.block.height, serde_cbor::to_vec(b).unwrap().len()))
                    .collect();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node0 answered no sync request from height {height} in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// THREATS N4 (sync answers): an answer stays queued for a peer that never reads it until the
/// request times out, and identities are free, so a stranger (no funded account) gets at most
/// 64 KiB of blocks an answer (always one block) while a funded peer gets up to half the
/// request-response limit. The same identity asks twice for the same heavy blocks, before and
/// after it is funded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_sync_answer_is_capped_and_a_funded_peers_is_not() {
    use agora_contracts::{SignedTransaction, Transaction, TxKind};
    use agora_market::{KeySigner, Signer as _};

    let net = HostileDevnet::up(3).await.unwrap();
    let chain = net.chain_id().unwrap();
    let victim = net.data_dir(0);
    let height = || ledger_status(&victim)["height"].as_u64().unwrap_or(0);
    wait_until(
        "node0's chain to decide its first block",
        Duration::from_secs(60),
        || height() >= 1,
    );
    let from = height() + 1;

    // Heavy blocks: fresh keys, funded by node1, each sign transfers to node2.
    let keys: Vec<KeySigner> = (0..LOAD_KEYS)
        .map(|i| KeySigner::from_seed(80_000 + i))
        .collect();
    for k in &keys {
        net.submit_transfer(1, &k.node_id(), 2_000).await.unwrap();
    }
    for k in &keys {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while net.balance_of(0, &k.node_id()).await.unwrap_or(0) < 2_000 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load keys were not funded"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let adv = Adversary::join(&net).await.unwrap();
    let target = net.peer_id(0);
    let node2_before = net.balance(0, 2).await.unwrap();
    for k in &keys {
        let txs: Vec<SignedTransaction> = (0..LOAD_PER_KEY)
            .map(|nonce| {
                Transaction {
                    chain_id: chain.clone(),
                    sender: k.node_id(),
                    nonce,
                    kind: TxKind::Transfer {
                        to: net.node_id(2),
                        amount: 1,
                    },
                }
                .sign(k)
                .unwrap()
            })
            .collect();
        adv.broadcast(
            agora_wire::topics::TX_TOPIC,
            Kind::Transaction,
            serde_cbor::to_vec(&txs).unwrap(),
        )
        .await
        .unwrap();
    }
    let load = LOAD_KEYS * LOAD_PER_KEY;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while net.balance(0, 2).await.unwrap_or(0) < node2_before + load {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node0's chain did not take the {load} transfers"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to = height();
    assert!(
        to - from < 64,
        "the load spread over {} blocks, more than one sync answer",
        to - from + 1
    );

    // As a stranger.
    let stranger = blocks_from(&adv, target, from).await;
    let bytes: usize = stranger.iter().map(|(_, n)| n).sum();
    eprintln!(
        "a stranger asked for blocks {from}..={to}: got {} ({:?}), {bytes} bytes",
        stranger.len(),
        stranger.iter().map(|(h, _)| h).collect::<Vec<_>>()
    );
    assert_eq!(stranger.first().map(|(h, _)| *h), Some(from));
    assert!(
        stranger.len() == 1 || bytes <= STRANGER_SYNC_BYTES,
        "a stranger got {bytes} bytes in {} blocks, over the cap",
        stranger.len()
    );

    // Funded: the same identity, the same blocks.
    net.submit_transfer(1, &adv.node_id(), 2_000).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let funded = loop {
        let got = blocks_from(&adv, target, from).await;
        if got.len() > stranger.len() {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a funded peer's answer never outgrew the stranger's ({} blocks)",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let funded_bytes: usize = funded.iter().map(|(_, n)| n).sum();
    eprintln!(
        "funded, it got {} blocks ({:?}), {funded_bytes} bytes",
        funded.len(),
        funded.iter().map(|(h, _)| h).collect::<Vec<_>>()
    );
    assert!(
        funded.iter().any(|(h, _)| *h >= to),
        "a funded peer's answer stopped before block {to}"
    );
    // The load the stranger's answer left out was over its cap: the cap, not the chain, cut it.
    let range: usize = funded
        .iter()
        .filter(|(h, _)| *h <= to)
        .map(|(_, n)| n)
        .sum();
    assert!(
        range > STRANGER_SYNC_BYTES,
        "blocks {from}..={to} hold {range} bytes, not more than a stranger's cap"
    );
    net.assert_alive();
}
