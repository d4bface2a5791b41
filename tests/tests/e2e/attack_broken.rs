//! Forged, impersonating, stale, future-dated, oversized, wrong-kind, truncated, garbage and
//! malformed messages on every gossip topic and every request kind, against real processes:
//! the network layer refuses and counts them, the applications drop malformed bodies, honest
//! nodes keep trading and no process dies.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use agora_tests::adversary::gossip::{broken_gossip_on, broken_requests_everywhere, topics};
use agora_tests::adversary::{Adversary, HostileDevnet};

async fn total_rejected(net: &HostileDevnet) -> u64 {
    let stats = net.all_stats().await.unwrap();
    stats.iter().map(|s| s.gossip_rejected).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_messages_on_every_topic_and_request_kind_are_refused() {
    let net = HostileDevnet::up(3).await.unwrap();
    for (topic, kind) in topics() {
        // A fresh identity per topic: after about three invalid messages the receivers
        // graylist the sender (gossipsub score) and stop even looking at its messages.
        let adv = Adversary::join(&net).await.unwrap();
        let before = total_rejected(&net).await;
        let sent = broken_gossip_on(&adv, &topic, kind).await;
        eprintln!("{topic}: {sent:?}");
        assert!(sent.invalid >= 5, "too few broken messages left: {sent:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let refused = total_rejected(&net).await - before;
            if refused >= 3 {
                eprintln!("{topic}: {refused} refusals counted");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: only {refused} of {} broken messages refused",
                sent.invalid
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let adv = Adversary::join(&net).await.unwrap();
    let requests = broken_requests_everywhere(&adv, &net, 1).await;
    eprintln!("requests: {requests:?}");
    assert!(
        requests.not_sent.is_empty(),
        "broken requests were answered: {:?}",
        requests.not_sent
    );
    let s1 = net.stats(1).await.unwrap();
    assert!(s1.rpc_rejected >= 8 * 4, "{s1:?}");

    net.transfer_finalises(1, 0, 4).await.unwrap();
    net.assert_alive();
}
