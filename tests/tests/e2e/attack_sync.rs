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
