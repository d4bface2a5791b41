//! A gossip flood on a market topic (#13, THREATS row N7) on real processes: a hostile peer
//! publishes, as fast as it can, correctly signed bids for auctions no one holds. Every node's
//! book refuses them, so the network ignores them — they are not forwarded, and the honest
//! nodes' outbound queues (which gossipsub shares between forwards and a node's own messages)
//! stay free: an auction created meanwhile reaches the other nodes, gets bids and an award.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agora_market::auction::BidBody;
use agora_market::signed::Signed;
use agora_market::{AuctionId, MarketMessage, Resources, topic_for_region};
use agora_tests::adversary::{Adversary, HostileDevnet};
use agora_tests::{agora_json, awarded, wait_until};
use agora_wire::codec::Kind;
use tokio_util::sync::CancellationToken;

/// A bid, signed by the hostile peer, for an auction that does not exist.
fn bogus_bid(adv: &Adversary, n: u64) -> Vec<u8> {
    let body = BidBody {
        auction: AuctionId::of_bytes(&n.to_le_bytes()),
        provider: adv.node_id(),
        price: 1,
        capacity: Resources::default(),
        location: None,
        reputation_permille: 1_000,
        nonce: n,
        expires_at: u64::MAX / 2,
    };
    MarketMessage::Bid(Signed::sign(body, adv.signer()).unwrap())
        .encode()
        .unwrap()
}

fn ignored(net: &HostileDevnet, rt: &tokio::runtime::Runtime, i: usize) -> u64 {
    rt.block_on(net.stats(i)).map_or(0, |s| s.gossip_ignored)
}

#[test]
fn a_bid_flood_on_a_market_topic_stops_at_its_first_hop_and_auctions_still_close() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = rt.block_on(HostileDevnet::up(3)).unwrap();
    let adv = Arc::new(rt.block_on(Adversary::join(&net)).unwrap());
    let node = |i: usize| net.data_dir(i);

    let stop = CancellationToken::new();
    let published = Arc::new(AtomicU64::new(0));
    let flood = {
        let (adv, stop, published) = (adv.clone(), stop.clone(), published.clone());
        rt.spawn(async move {
            let topic = topic_for_region("default");
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let bytes = bogus_bid(&adv, n);
                if adv
                    .network()
                    .broadcast(&topic, Kind::Market, bytes)
                    .await
                    .is_ok()
                {
                    published.fetch_add(1, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let _stop_guard = stop.clone().drop_guard();

    wait_until(
        "every node to ignore the flood's bids",
        Duration::from_secs(60),
        || (0..3).all(|i| ignored(&net, &rt, i) >= 100),
    );

    // Honest trading on the same topic while the flood goes on.
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
    ]);
    let auction = created["id"].as_str().unwrap().to_string();
    for i in 1..3 {
        wait_until(
            "the other nodes to see the auction during the flood",
            Duration::from_secs(30),
            || {
                agora_json(&["auctions", "--data-dir", &node(i)])
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["id"] == auction.as_str())
            },
        );
    }
    wait_until(
        "node0's auction to be awarded during the flood",
        Duration::from_secs(60),
        || awarded(&node(0), &auction),
    );

    stop.cancel();
    rt.block_on(flood).unwrap();
    let sent = published.load(Ordering::Relaxed);
    let counts: Vec<u64> = (0..3).map(|i| ignored(&net, &rt, i)).collect();
    eprintln!("the hostile peer published {sent} bogus bids; ignored per node: {counts:?}");
    assert!(sent > 0, "the hostile peer published nothing");
    net.assert_alive();
}
