#![allow(clippy::unwrap_used)]
use std::collections::VecDeque;

use super::*;
use crate::auction::{AuctionSpec, BidSpec};
use crate::capacity::ReservationKey;
use crate::identity::KeySigner;
use crate::resources::Interface;
use crate::test_utils::{AuctionBuilder, BidBuilder, big_capacity, signer};

/// Routes effects between in-process nodes: `Send` to the recipient, `Broadcast` to all others.
struct Net {
    nodes: Vec<MarketState<KeySigner>>,
    queue: VecDeque<(usize, Effect)>,
    log: Vec<(usize, Effect)>,
}

impl Net {
    fn new(configs: Vec<MarketConfig>) -> Self {
        let nodes = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| MarketState::new(signer(100 + i as u64), c))
            .collect();
        Net {
            nodes,
            queue: VecDeque::new(),
            log: Vec::new(),
        }
    }

    fn input(&mut self, now: Timestamp, node: usize, input: Input) {
        let effects = self.nodes[node].handle(now, input);
        self.queue.extend(effects.into_iter().map(|e| (node, e)));
        self.run(now);
    }

    fn run(&mut self, now: Timestamp) {
        let mut steps = 0;
        while let Some((from, effect)) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 10_000, "message storm");
            let from_id = self.nodes[from].node_id();
            let targets: Vec<usize> = match &effect {
                Effect::Send { to, .. } => self
                    .nodes
                    .iter()
                    .position(|n| n.node_id() == *to)
                    .into_iter()
                    .collect(),
                Effect::Broadcast { .. } => (0..self.nodes.len()).filter(|i| *i != from).collect(),
                _ => Vec::new(),
            };
            let msg = match &effect {
                Effect::Send { msg, .. } | Effect::Broadcast { msg, .. } => Some(msg.clone()),
                _ => None,
            };
            self.log.push((from, effect));
            if let Some(msg) = msg {
                for t in targets {
                    let effects = self.nodes[t].handle(
                        now,
                        Input::Remote {
                            from: from_id,
                            msg: msg.clone(),
                        },
                    );
                    self.queue.extend(effects.into_iter().map(|e| (t, e)));
                }
            }
        }
    }

    fn effects_of(&self, node: usize) -> impl Iterator<Item = &Effect> {
        self.log
            .iter()
            .filter(move |(n, _)| *n == node)
            .map(|(_, e)| e)
    }

    fn rejections(&self, node: usize) -> Vec<MarketError> {
        self.effects_of(node)
            .filter_map(|e| match e {
                Effect::Rejected { error, .. } => Some(error.clone()),
                _ => None,
            })
            .collect()
    }
}

fn provider_config(capacity: Resources) -> MarketConfig {
    let mut c = MarketConfig {
        capacity,
        ..MarketConfig::default()
    };
    c.dmu.provider.auto_bid = true;
    c
}

fn spec(max_price: u64) -> AuctionSpec {
    AuctionBuilder::new().max_price(max_price).spec()
}

#[test]
fn auction_to_agreed_terms_end_to_end() {
    // Node 0 is the customer; node 1 is cheap, node 2 is dear (higher per-core price).
    let mut dear = provider_config(big_capacity());
    dear.dmu.provider.per_millicore_hour = 500;
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
        dear,
    ]);
    net.input(0, 0, Input::CreateAuction(spec(1000)));
    let (aid, entry) = net.nodes[0]
        .auctions()
        .iter()
        .next()
        .map(|(k, v)| (*k, v.clone()))
        .unwrap();
    assert_eq!(entry.bids.len(), 2, "both providers auto-bid");
    // Both providers hold the resources tentatively.
    for p in [1, 2] {
        assert!(
            net.nodes[p]
                .ledger()
                .reservations()
                .contains_key(&ReservationKey::Auction(aid))
        );
    }
    net.input(10_000, 0, Input::Tick);
    let winner = net.effects_of(0).find_map(|e| match e {
        Effect::AuctionClosed { winner, .. } => Some(winner.unwrap()),
        _ => None,
    });
    let winner = winner.unwrap();
    assert_eq!(
        entry.bids[&winner.bid].body.provider,
        net.nodes[1].node_id()
    );
    let c_terms: Vec<_> = net
        .effects_of(0)
        .filter_map(|e| {
            if let Effect::Agreed(t) = e {
                Some(t.clone())
            } else {
                None
            }
        })
        .collect();
    let p_terms: Vec<_> = net
        .effects_of(1)
        .filter_map(|e| {
            if let Effect::Agreed(t) = e {
                Some(t.clone())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(c_terms.len(), 1);
    assert_eq!(c_terms, p_terms);
    assert_eq!(c_terms[0].price, winner.price);
    // Winner's hold is now firm; the loser's hold was released by the broadcast award.
    assert_eq!(
        net.nodes[1].ledger().reservations()[&ReservationKey::Auction(aid)].expires_at,
        None
    );
    assert!(net.nodes[2].ledger().reservations().is_empty());
    assert!(matches!(
        net.nodes[2].auction(&aid).unwrap().status,
        AuctionStatus::Awarded { .. }
    ));
    assert!(
        net.rejections(0).is_empty() && net.rejections(1).is_empty(),
        "{:?}",
        net.log
    );
}

#[test]
fn exclusive_radio_goes_to_one_auction_at_a_time() {
    let radio = Resources::default().with_interface(Interface::LoRa, 1);
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(radio.clone()),
    ]);
    let need = AuctionBuilder::new().resources(radio).spec();
    net.input(0, 0, Input::CreateAuction(need.clone()));
    net.input(1, 0, Input::CreateAuction(need));
    let bids: usize = net.nodes[0].auctions().values().map(|e| e.bids.len()).sum();
    assert_eq!(bids, 1, "the single LoRa radio is bid once");
    // Manual bid on the other auction is refused for lack of capacity.
    let other = net.nodes[0]
        .auctions()
        .iter()
        .find(|(_, e)| e.bids.is_empty())
        .map(|(k, _)| *k)
        .unwrap();
    let spec = BidSpec {
        price: 10,
        capacity: net.nodes[1].ledger().capacity().clone(),
        location: None,
        reputation_permille: 500,
    };
    let out = net.nodes[1].handle(
        2,
        Input::PlaceBid {
            auction: other,
            spec,
        },
    );
    assert!(matches!(
        &out[..],
        [Effect::Rejected {
            error: MarketError::Capacity(_),
            ..
        }]
    ));
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
fn late_joiner_gets_open_auctions_from_a_snapshot() {
    let mut net = Net::new(vec![MarketConfig::default(), MarketConfig::default()]);
    // Node 1 "joins later": create the auction on node 0 without delivering the gossip.
    let effects = net.nodes[0].handle(0, Input::CreateAuction(spec(100)));
    assert!(matches!(effects[0], Effect::Broadcast { .. }));
    assert!(net.nodes[1].auctions().is_empty());
    let peer = net.nodes[0].node_id();
    net.input(
        5,
        1,
        Input::RequestSnapshot {
            region: "eu-west".into(),
            peer,
        },
    );
    assert_eq!(net.nodes[1].auctions().len(), 1);
    net.input(
        6,
        1,
        Input::RequestSnapshot {
            region: "us-east".into(),
            peer,
        },
    );
    assert_eq!(net.nodes[1].auctions().len(), 1);
}

#[test]
fn taking_a_standing_offer_reserves_and_agrees() {
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
    ]);
    let res = Resources {
        cpu_millis: 1000,
        ..Resources::default()
    };
    let offer = OfferSpec {
        region: "eu-west".into(),
        resources: res,
        price_per_hour: 30,
        location: None,
        ttl_ms: 60_000,
    };
    net.input(0, 1, Input::PublishOffer(offer));
    let oid = *net.nodes[0].offers().keys().next().unwrap();
    net.input(
        1,
        0,
        Input::TakeOffer {
            offer: oid,
            duration_ms: 7_200_000,
        },
    );
    let agreed: Vec<_> = net
        .effects_of(1)
        .filter_map(|e| {
            if let Effect::Agreed(t) = e {
                Some(t.price)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(agreed, vec![60]);
    assert_eq!(net.nodes[1].ledger().available().cpu_millis, 3000);
    assert!(net.effects_of(0).any(|e| matches!(e, Effect::Agreed(_))));
}

#[test]
fn failed_negotiation_releases_the_reservation() {
    let mut prov = provider_config(big_capacity());
    prov.dmu.provider.auto_accept_award = false;
    let mut net = Net::new(vec![MarketConfig::default(), prov]);
    net.input(0, 0, Input::CreateAuction(spec(1000)));
    net.input(10_000, 0, Input::Tick);
    let award = net
        .effects_of(1)
        .find_map(|e| {
            if let Effect::Awarded { award, .. } = e {
                Some(*award)
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(net.nodes[1].ledger().reservations().len(), 1);
    net.input(
        10_001,
        1,
        Input::Negotiate {
            award,
            input: NegotiationInput::WalkAway,
        },
    );
    assert!(net.nodes[1].ledger().reservations().is_empty());
    assert!(
        net.effects_of(0)
            .any(|e| matches!(e, Effect::NegotiationFailed { by: Some(_), .. }))
    );
}

#[test]
fn expired_entries_and_holds_are_pruned() {
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
    ]);
    net.nodes[0] = MarketState::new(
        signer(100),
        MarketConfig {
            dmu: crate::dmu::DmuConfig {
                customer: crate::dmu::CustomerRules {
                    auto_award: false,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..MarketConfig::default()
        },
    );
    net.input(0, 0, Input::CreateAuction(spec(1000)));
    assert_eq!(net.nodes[1].ledger().reservations().len(), 1);
    // Window closes at 10 s, award grace is 60 s: after 70 s everything is gone.
    net.input(70_000, 1, Input::Tick);
    net.input(70_000, 0, Input::Tick);
    assert!(net.nodes[1].ledger().reservations().is_empty());
    assert!(net.nodes[1].auctions().is_empty());
    assert!(net.nodes[0].auctions().is_empty());
}
