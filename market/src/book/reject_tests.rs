#![allow(clippy::unwrap_used)]
use super::*;
use crate::identity::KeySigner;
use crate::test_utils::{AuctionBuilder, BidBuilder, signer};

fn spec(max_price: u64) -> crate::auction::AuctionSpec {
    AuctionBuilder::new().max_price(max_price).spec()
}

#[test]
fn invalid_messages_never_reach_the_book() {
    let mut cfg = MarketConfig::default();
    cfg.limits.regions = ["eu-west".to_string()].into_iter().collect();
    let mut node = MarketState::new(signer(1), cfg);
    let customer = signer(2);
    let remote = |msg| Input::Remote {
        from: customer.node_id(),
        msg,
    };

    let mut forged = AuctionBuilder::new().build(&customer, 0);
    forged.body.max_price += 1;
    let out = node.handle(1, remote(MarketMessage::Auction(forged)));
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::BadSignature { .. },
            ..
        }]
    ));

    let elsewhere = AuctionBuilder::new().region("mars").build(&customer, 0);
    let out = node.handle(1, remote(MarketMessage::Auction(elsewhere)));
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::UnknownRegion { .. },
            ..
        }]
    ));

    let old = AuctionBuilder::new().build(&customer, 0);
    let out = node.handle(10_000, remote(MarketMessage::Auction(old)));
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::WindowClosed { .. },
            ..
        }]
    ));

    let zero = AuctionBuilder::new().max_price(0).build(&customer, 0);
    let out = node.handle(1, remote(MarketMessage::Auction(zero)));
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::Absurd {
                field: "max_price",
                ..
            },
            ..
        }]
    ));

    let good = AuctionBuilder::new().nonce(42).build(&customer, 0);
    node.handle(1, remote(MarketMessage::Auction(good.clone())));
    assert_eq!(node.auctions().len(), 1);
    // Same message again (gossip duplicate) is a no-op; a new message reusing the nonce is a replay.
    assert!(
        node.handle(2, remote(MarketMessage::Auction(good.clone())))
            .is_empty()
    );
    let reuse = AuctionBuilder::new()
        .nonce(42)
        .max_price(999)
        .build(&customer, 0);
    let out = node.handle(2, remote(MarketMessage::Auction(reuse)));
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::Replay { nonce: 42, .. },
            ..
        }]
    ));

    // Bids for an auction we did not open are not ours to hold.
    let bid = BidBuilder::new(&good).build(&signer(3));
    let out = node.handle(
        2,
        Input::Remote {
            from: signer(3).node_id(),
            msg: MarketMessage::Bid(bid),
        },
    );
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::NotCustomer { .. },
            ..
        }]
    ));
    assert_eq!(node.auctions().len(), 1);
    assert!(node.auctions().values().all(|e| e.bids.is_empty()));
}

#[test]
fn customer_rejects_bad_bids() {
    let mut node = MarketState::new(signer(1), MarketConfig::default());
    node.handle(0, Input::CreateAuction(spec(500)));
    let req = node.auctions().values().next().unwrap().request.clone();
    let p = signer(2);
    let send = |node: &mut MarketState<KeySigner>, now, bid| {
        node.handle(
            now,
            Input::Remote {
                from: p.node_id(),
                msg: MarketMessage::Bid(bid),
            },
        )
    };

    let out = send(&mut node, 1, BidBuilder::new(&req).price(501).build(&p));
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::PriceAboveMax { .. },
            ..
        }]
    ));
    let tiny = Resources {
        cpu_millis: 100,
        ..Resources::default()
    };
    let out = send(&mut node, 1, BidBuilder::new(&req).capacity(tiny).build(&p));
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::ExceedsCapacity { .. },
            ..
        }]
    ));
    let out = send(&mut node, 10_000, BidBuilder::new(&req).build(&p));
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::WindowClosed { .. },
            ..
        }]
    ));
    let mut forged = BidBuilder::new(&req).build(&p);
    forged.body.price = 1;
    let out = send(&mut node, 1, forged);
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::BadSignature { .. },
            ..
        }]
    ));
    let good = BidBuilder::new(&req).nonce(7).build(&p);
    assert!(matches!(
        &send(&mut node, 1, good.clone())[..],
        [Effect::BidReceived { .. }]
    ));
    let out = send(&mut node, 2, good);
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::Replay { .. },
            ..
        }]
    ));
    assert_eq!(node.auctions().values().next().unwrap().bids.len(), 1);
}

#[test]
fn bids_for_unknown_auctions_and_floods_are_refused() {
    let mut cfg = MarketConfig::default();
    cfg.limits.max_bids_per_auction = 2;
    let mut node = MarketState::new(signer(1), cfg);
    let stranger_auction = AuctionBuilder::new().build(&signer(5), 0);
    let bid = BidBuilder::new(&stranger_auction).build(&signer(2));
    let out = node.handle(
        1,
        Input::Remote {
            from: signer(2).node_id(),
            msg: MarketMessage::Bid(bid),
        },
    );
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::UnknownAuction { .. },
            ..
        }]
    ));

    node.handle(0, Input::CreateAuction(spec(500)));
    let req = node.auctions().values().next().unwrap().request.clone();
    let mut results = Vec::new();
    for seed in 10..13 {
        let bid = BidBuilder::new(&req).build(&signer(seed));
        results.extend(node.handle(
            1,
            Input::Remote {
                from: signer(seed).node_id(),
                msg: MarketMessage::Bid(bid),
            },
        ));
    }
    assert!(matches!(
        &results[..],
        [
            Effect::BidReceived { .. },
            Effect::BidReceived { .. },
            Effect::Rejected {
                error: MarketError::BookFull { max: 2, .. },
                ..
            }
        ]
    ));
}

#[test]
fn config_sections_default_when_missing() {
    use serde_cbor::Value;
    use std::collections::BTreeMap;
    // {"dmu": {"provider": {"auto_bid": true}}} - every other field comes from defaults.
    let provider = Value::Map(BTreeMap::from([(
        Value::Text("auto_bid".into()),
        Value::Bool(true),
    )]));
    let dmu = Value::Map(BTreeMap::from([(Value::Text("provider".into()), provider)]));
    let root = Value::Map(BTreeMap::from([(Value::Text("dmu".into()), dmu)]));
    let bytes = serde_cbor::to_vec(&root).unwrap();
    let cfg: MarketConfig = serde_cbor::from_slice(&bytes).unwrap();
    assert!(cfg.dmu.provider.auto_bid);
    let mut expected = MarketConfig::default();
    expected.dmu.provider.auto_bid = true;
    assert_eq!(cfg, expected);
}
