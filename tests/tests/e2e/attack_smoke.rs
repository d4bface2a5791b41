//! The adversary joins a devnet of real processes, publishes and requests broken messages,
//! and every node survives and counts what it refused.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_tests::adversary::{Adversary, HostileDevnet, envelopes};
use agora_wire::codec::{Kind, MAX_RPC_BYTES};
use agora_wire::topics::TX_TOPIC;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversary_joins_and_broken_messages_are_counted() {
    let net = HostileDevnet::up(3).await.unwrap();
    let adv = Adversary::join(&net).await.unwrap();
    // A broken transaction batch on the transaction topic: refused by the validator.
    let forged = envelopes::forged(adv.signer(), Kind::Transaction, b"batch".to_vec());
    adv.publish_raw(TX_TOPIC, forged.to_bytes()).await.unwrap();
    // Garbage as a request: refused, the adversary hears no answer.
    let garbage = envelopes::garbage(1024);
    assert!(adv.request_raw(net.peer_id(0), garbage).await.is_err());
    let oversized = envelopes::oversized(adv.signer(), Kind::Deal, MAX_RPC_BYTES);
    assert!(
        adv.request_raw(net.peer_id(1), oversized.to_bytes())
            .await
            .is_err()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = net.all_stats().await.unwrap();
        let gossip: u64 = all.iter().map(|s| s.gossip_rejected).sum();
        let rpc = net.stats(0).await.unwrap().rpc_rejected;
        if gossip >= 1 && rpc >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rejections not counted (gossip {gossip}, rpc {rpc})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Honest trading goes on: a transfer is final on every replica.
    net.transfer_finalises(0, 2, 7).await.unwrap();
    net.assert_alive();
    for i in 0..net.len() {
        assert!(net.rss_kib(i).is_some_and(|k| k > 0));
    }
}
