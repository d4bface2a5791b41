//! A direct market message whose connection is closed under it is sent again (#13, #15) — on
//! real processes. A customer (a peer of the test's own, on the real network stack) publishes an
//! auction; each provider's bid comes to it as a request. The first bid of each provider is
//! never answered: the customer closes every connection to that provider while the request is
//! in flight. The provider sends the bid again in a fresh envelope (a new sequence number, the
//! same signed bid), over a new connection, and records `delivered-on-retry` in its market
//! events (`GET /v1/market/events`, `agora market watch`). Without the retry the bid is lost
//! and the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_market::auction::{AuctionBody, AuctionKind};
use agora_market::signed::Signed;
use agora_market::{MarketMessage, NodeId, Resources, topic_for_region};
use agora_network::{Interest, NetworkEvent};
use agora_tests::adversary::{Adversary, HostileDevnet};
use agora_tests::wait_until;
use agora_wire::codec::Kind;
use agora_wire::now_ms;

/// Per provider: (envelope sequence number, payload) of every bid request received.
type Received = Arc<Mutex<BTreeMap<NodeId, Vec<(u64, Vec<u8>)>>>>;

#[test]
fn a_bid_whose_connection_is_closed_under_it_is_sent_again() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = rt.block_on(HostileDevnet::up(3)).unwrap();
    let customer = Arc::new(rt.block_on(Adversary::join(&net)).unwrap());

    // Bids come as market requests: the first of each provider is cut off (its connections
    // closed, no answer), later ones are answered.
    let received: Received = Arc::default();
    {
        let mut inbox = customer
            .network()
            .inbox(Interest::new("flaky-customer").requests(Kind::Market));
        let (received, customer) = (received.clone(), customer.clone());
        rt.spawn(async move {
            loop {
                let NetworkEvent::Request {
                    id, peer, envelope, ..
                } = inbox.recv().await
                else {
                    continue;
                };
                let Ok(MarketMessage::Bid(bid)) = MarketMessage::decode(&envelope.payload) else {
                    continue;
                };
                let first = {
                    let mut r = received.lock().unwrap();
                    let seen = r.entry(bid.body.provider).or_default();
                    seen.push((envelope.seq, envelope.payload.clone()));
                    seen.len() == 1
                };
                if first {
                    let _ = customer.network().disconnect(peer).await;
                } else {
                    let ack = customer.seal(Kind::Market, Vec::new());
                    let _ = customer.network().respond(id, &ack).await;
                }
            }
        });
    }

    let now = now_ms();
    let body = AuctionBody {
        customer: customer.node_id(),
        region: "default".into(),
        resources: Resources {
            cpu_millis: 500,
            ..Resources::default()
        },
        duration_ms: 600_000,
        max_price: 1_000_000,
        window_closes_at: now + 20_000,
        kind: AuctionKind::Hosted,
        near: None,
        nonce: 1,
        created_at: now,
        expires_at: now + 620_000,
        service: None,
        start_at: None,
        only: Vec::new(),
    };
    let auction = MarketMessage::Auction(Signed::sign(body, customer.signer()).unwrap())
        .encode()
        .unwrap();
    let topic = topic_for_region("default");
    rt.block_on(customer.broadcast(&topic, Kind::Market, auction))
        .unwrap();

    let providers: Vec<NodeId> = (0..net.len()).map(|i| net.node_id(i)).collect();
    wait_until(
        "every provider's bid to arrive again after its connection was closed",
        Duration::from_secs(60),
        || {
            let r = received.lock().unwrap();
            providers
                .iter()
                .all(|p| r.get(p).is_some_and(|seen| seen.len() >= 2))
        },
    );
    {
        let r = received.lock().unwrap();
        for (p, seen) in r.iter() {
            let (first, again) = (&seen[0], &seen[1]);
            assert_ne!(first.0, again.0, "{p}: the retry reused the envelope");
            assert_eq!(first.1, again.1, "{p}: the retry carries another bid");
        }
    }
    // Each provider says so in its market events.
    for i in 0..net.len() {
        wait_until(
            "the provider to record its bid delivered on a retry",
            Duration::from_secs(30),
            || {
                rt.block_on(async {
                    let events: Vec<serde_json::Value> = net
                        .client(i)
                        .unwrap()
                        .get("/v1/market/events")
                        .await
                        .unwrap_or_default();
                    events.iter().any(|e| {
                        e["kind"] == "delivered-on-retry"
                            && e["data"]["message"] == "bid"
                            && e["data"]["to"] == customer.node_id().to_string()
                    })
                })
            },
        );
    }
    net.assert_alive();
}
