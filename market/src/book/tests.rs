#![allow(clippy::unwrap_used)]
use super::*;
use crate::auction::{AuctionSpec, BidSpec};
use crate::capacity::ReservationKey;
use crate::resources::Interface;
use crate::test_utils::{AuctionBuilder, SimNet as Net, big_capacity, provider_config, signer};

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
    let c_terms = net.agreed(0);
    let p_terms = net.agreed(1);
    assert_eq!(c_terms.len(), 1);
    assert_eq!(c_terms, p_terms);
    assert_eq!(c_terms[0].price, winner.price);
    // The winner holds it until its contract could no longer be registered (THREATS C20); the
    // loser's hold was released by the broadcast award.
    let key = ReservationKey::Auction(aid);
    assert_eq!(
        net.nodes[1].ledger().reservations()[&key].expires_at,
        Some(10_000 + AGREED_HOLD_MS)
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
    // Registered: held to the contract's end; another award's word changes nothing.
    let award = p_terms[0].award;
    let until = 10_000 + 3_600_000;
    net.input(
        20_000,
        1,
        Input::HoldAward {
            award: crate::ids::AwardId::of_bytes(b"someone else's"),
            until: 20_001,
            registered: true,
        },
    );
    net.input(
        20_000,
        1,
        Input::HoldAward {
            award,
            until,
            registered: true,
        },
    );
    assert_eq!(
        net.nodes[1].ledger().reservations()[&key].expires_at,
        Some(until)
    );
    net.input(10_000 + AGREED_HOLD_MS + 1, 1, Input::Tick);
    assert!(net.nodes[1].ledger().reservations().contains_key(&key));
    net.input(until, 1, Input::Tick);
    assert!(
        net.nodes[1].ledger().reservations().is_empty(),
        "released at the contract's end"
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
            if let Effect::Agreed(a) = e {
                Some(a.terms.price)
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

#[test]
fn counter_offers_within_bounds_are_accepted_automatically() {
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
    // Above the auction's max price: the customer's operator must decide.
    net.input(
        10_001,
        1,
        Input::Negotiate {
            award,
            input: NegotiationInput::Counter { price: 1001 },
        },
    );
    assert!(
        net.effects_of(0)
            .any(|e| matches!(e, Effect::Proposed(t) if t.price == 1001))
    );
    assert!(net.agreed(0).is_empty());
    // Customer counters at 900: not below the provider's bid, so the provider accepts it.
    net.input(
        10_002,
        0,
        Input::Negotiate {
            award,
            input: NegotiationInput::Counter { price: 900 },
        },
    );
    assert_eq!(
        net.agreed(0).iter().map(|t| t.price).collect::<Vec<_>>(),
        vec![900]
    );
    assert_eq!(net.agreed(1), net.agreed(0));
}

#[test]
fn a_second_bid_on_one_auction_says_why_and_what_to_do() {
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
    ]);
    net.input(0, 0, Input::CreateAuction(spec(1000)));
    let aid = *net.nodes[0].auctions().keys().next().unwrap();
    let mine = net.nodes[1].my_bid(&aid).unwrap();
    let (auto_bid, auto_price) = (mine.bid, mine.price);
    let spec = BidSpec {
        price: 80,
        capacity: net.nodes[1].ledger().available().clone(),
        location: None,
        reputation_permille: 500,
    };
    let out = net.nodes[1].handle(1, Input::PlaceBid { auction: aid, spec });
    let [Effect::Rejected { error, .. }] = &out[..] else {
        panic!("expected one refusal, got {out:?}");
    };
    assert!(
        matches!(error, MarketError::AlreadyBid { auction, bid, price }
            if *auction == aid && *bid == auto_bid && *price == auto_price),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("auto_bid = false"), "{text}");
    assert!(text.contains("--manual"), "{text}");
    // The first bid stands; the customer still holds exactly one bid from this provider.
    assert_eq!(net.nodes[0].auctions()[&aid].bids.len(), 1);
}

#[test]
fn auctions_restricted_to_others_do_not_use_up_a_provider_s_holds_for_that_customer() {
    // A fleet deployer places three targets at once, one restricted auction each. Each
    // provider may hold at most two open bids per customer (`max_holds_per_customer`): when
    // every provider bid on every auction, the third target had already used its two holds on
    // the others' auctions and declined its own, which closed without a bid (the
    // `fleet_variants` flake: the target moved to variant b waited a minute per retry).
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
        provider_config(big_capacity()),
        provider_config(big_capacity()),
    ]);
    assert_eq!(net.nodes[1].config().dmu.provider.max_holds_per_customer, 2);
    for p in [1, 2, 3] {
        let only = std::collections::BTreeSet::from([net.nodes[p].node_id()]);
        net.input(
            0,
            0,
            Input::CreateAuctionFor {
                spec: spec(1000),
                only,
            },
        );
    }
    let auctions = net.nodes[0].auctions().clone();
    assert_eq!(auctions.len(), 3);
    for entry in auctions.values() {
        let providers: Vec<NodeId> = entry.bids.values().map(|b| b.body.provider).collect();
        assert_eq!(providers, entry.request.body.only, "only its target bid");
    }
    for p in [1, 2, 3] {
        assert_eq!(net.nodes[p].ledger().reservations().len(), 1, "node{p}");
        assert_eq!(net.nodes[p].book_stats().counters.auto_bids_declined, 0);
    }
    net.input(10_000, 0, Input::Tick);
    for p in [1, 2, 3] {
        assert_eq!(net.agreed(p).len(), 1, "node{p} won its own auction");
    }
}

/// Node 0 opens, at 0, an auction with a 10 s window that only `only` may win.
fn open_for_ten_seconds_to(net: &mut Net, only: std::collections::BTreeSet<NodeId>) {
    net.input(
        0,
        0,
        Input::CreateAuctionFor {
            spec: AuctionBuilder::new()
                .max_price(1000)
                .window_ms(10_000)
                .spec(),
            only,
        },
    );
}

#[test]
fn a_restricted_auction_closes_as_soon_as_every_chosen_provider_has_bid() {
    // A fleet placement's auction is open to its target only, with a long window so that a
    // bid slowed by a loaded machine still counts; once the target has bid, nothing else can
    // win it, so it closes at once instead of at the window's end.
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
    ]);
    let chosen = net.nodes[1].node_id();
    open_for_ten_seconds_to(&mut net, std::collections::BTreeSet::from([chosen]));
    assert!(
        net.effects_of(0)
            .any(|e| matches!(e, Effect::ScheduleTimeout { at: 0 })),
        "the chosen provider's bid asks for a tick now"
    );
    net.input(1, 0, Input::Tick);
    assert!(
        net.effects_of(0).any(|e| matches!(
            e,
            Effect::AuctionClosed {
                winner: Some(_),
                ..
            }
        )),
        "closed 1 ms in, 10 s before its window ends"
    );
    assert_eq!(net.agreed(1).len(), 1);

    // Open to two providers of which one has not bid (it is no provider): it waits for the
    // window's end, then the one bid wins.
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
        MarketConfig::default(),
    ]);
    let only = std::collections::BTreeSet::from([net.nodes[1].node_id(), net.nodes[2].node_id()]);
    open_for_ten_seconds_to(&mut net, only);
    net.input(1, 0, Input::Tick);
    net.input(9_999, 0, Input::Tick);
    assert!(
        !net.effects_of(0)
            .any(|e| matches!(e, Effect::AuctionClosed { .. })),
        "one chosen provider has not bid: still open"
    );
    net.input(10_000, 0, Input::Tick);
    assert!(net.effects_of(0).any(|e| matches!(
        e,
        Effect::AuctionClosed {
            winner: Some(_),
            ..
        }
    )));
    assert_eq!(net.agreed(1).len(), 1);

    // An auction open to everyone never closes early, however many bid.
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
    ]);
    net.input(
        0,
        0,
        Input::CreateAuction(
            AuctionBuilder::new()
                .max_price(1000)
                .window_ms(10_000)
                .spec(),
        ),
    );
    net.input(1, 0, Input::Tick);
    assert!(
        !net.effects_of(0)
            .any(|e| matches!(e, Effect::AuctionClosed { .. }))
    );
}

#[test]
fn a_restricted_auction_is_won_only_by_the_chosen_provider() {
    // Node 1 is cheap and would win; the fleet's plan chose node 2, so only its bid may win.
    let mut dear = provider_config(big_capacity());
    dear.dmu.provider.per_millicore_hour = 500;
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
        dear,
    ]);
    let chosen = net.nodes[2].node_id();
    net.input(
        0,
        0,
        Input::CreateAuctionFor {
            spec: spec(1000),
            only: std::collections::BTreeSet::from([chosen]),
        },
    );
    let (aid, entry) = net.nodes[0]
        .auctions()
        .iter()
        .next()
        .map(|(k, v)| (*k, v.clone()))
        .unwrap();
    assert_eq!(
        entry.request.body.only,
        vec![chosen],
        "the request names it"
    );
    assert_eq!(
        entry.bids.len(),
        1,
        "only the chosen provider bids; the other holds nothing for it"
    );
    assert!(
        !net.nodes[1]
            .ledger()
            .reservations()
            .contains_key(&ReservationKey::Auction(aid))
    );
    net.input(10_000, 0, Input::Tick);
    let winner = net
        .effects_of(0)
        .find_map(|e| match e {
            Effect::AuctionClosed { winner, .. } => Some(winner.unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(entry.bids[&winner.bid].body.provider, chosen);
    assert_eq!(net.agreed(2).len(), 1);
    assert!(net.agreed(1).is_empty());
    // Nobody allowed bid: the auction closes without a winner.
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
    ]);
    net.input(
        0,
        0,
        Input::CreateAuctionFor {
            spec: spec(1000),
            only: std::collections::BTreeSet::from([signer(77).node_id()]),
        },
    );
    net.input(10_000, 0, Input::Tick);
    assert!(
        net.effects_of(0)
            .any(|e| matches!(e, Effect::AuctionClosed { winner: None, .. }))
    );
}

#[test]
fn snapshots_are_answered_once_per_interval_and_only_asked_for_ones_are_taken() {
    let mut net = Net::new(vec![MarketConfig::default(), MarketConfig::default()]);
    net.nodes[0].handle(0, Input::CreateAuction(spec(100)));
    let (asker, server) = (net.nodes[1].node_id(), net.nodes[0].node_id());
    let request = || Input::Remote {
        from: asker,
        msg: MarketMessage::SnapshotRequest {
            region: "eu-west".into(),
        },
    };
    let answers = |effects: &[Effect]| -> Vec<MarketMessage> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { msg, .. } => Some(msg.clone()),
                _ => None,
            })
            .collect()
    };
    // Answered once; asked again within the interval, not answered (counted); later, again.
    let first = answers(&net.nodes[0].handle(10, request()));
    assert!(matches!(
        first.as_slice(),
        [MarketMessage::SnapshotResponse { auctions, .. }] if auctions.len() == 1
    ));
    assert!(answers(&net.nodes[0].handle(20, request())).is_empty());
    assert_eq!(net.nodes[0].book_stats().counters.snapshots_refused, 1);
    assert_eq!(
        answers(&net.nodes[0].handle(10 + SNAPSHOT_EVERY_MS, request())).len(),
        1
    );
    // Many identities asking at once: at most MAX_SNAPSHOT_PEERS answered per interval.
    let answered = (0..MAX_SNAPSHOT_PEERS as u64 + 10)
        .filter(|n| {
            let from = signer(1_000 + n).node_id();
            let input = Input::Remote {
                from,
                msg: MarketMessage::SnapshotRequest {
                    region: "eu-west".into(),
                },
            };
            !answers(&net.nodes[0].handle(30 + SNAPSHOT_EVERY_MS, input)).is_empty()
        })
        .count();
    assert!(answered < MAX_SNAPSHOT_PEERS, "{answered}");

    // A response nobody asked for is refused and takes nothing.
    let response = first[0].clone();
    let effects = net.nodes[1].handle(
        40,
        Input::Remote {
            from: server,
            msg: response.clone(),
        },
    );
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Rejected {
            error: MarketError::UnsolicitedSnapshot { .. },
            ..
        }
    )));
    assert!(net.nodes[1].auctions().is_empty());
    // Asked for, it is taken once; the same response again is refused.
    net.nodes[1].handle(
        50,
        Input::RequestSnapshot {
            region: "eu-west".into(),
            peer: server,
        },
    );
    for _ in 0..2 {
        net.nodes[1].handle(
            60,
            Input::Remote {
                from: server,
                msg: response.clone(),
            },
        );
    }
    assert_eq!(net.nodes[1].auctions().len(), 1);
    assert_eq!(net.nodes[1].book_stats().counters.snapshots_refused, 2);
}

/// THREATS C21: a customer signing a second award of the provider's one bid (the same body,
/// a fresh nonce, so a new award id) gets no second deal: the provider refuses it, and agrees
/// to nothing more than the first award's terms.
#[test]
fn a_second_award_of_the_same_bid_is_refused() {
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
    ]);
    net.input(0, 0, Input::CreateAuction(spec(1000)));
    net.input(10_000, 0, Input::Tick);
    assert_eq!(net.agreed(1).len(), 1, "{:?}", net.log);
    let first = net
        .effects_of(0)
        .find_map(|e| match e {
            Effect::Send {
                msg: MarketMessage::Award(a),
                ..
            } => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    let mut body = first.body.clone();
    body.nonce += 1;
    let again = crate::signed::Signed::sign(body, &signer(100)).unwrap();
    let customer = net.nodes[0].node_id();
    let effects = net.nodes[1].handle(
        10_002,
        Input::Remote {
            from: customer,
            msg: MarketMessage::Award(again),
        },
    );
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::Rejected {
                error: MarketError::AlreadyAwarded { .. },
                ..
            }
        )),
        "{effects:?}"
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Agreed(_) | Effect::Awarded { .. })),
        "{effects:?}"
    );
    // Nor may a later award name another provider: it would release the live deal's hold
    // (market audit of session 51).
    let held = net.nodes[1].ledger().reservations().len();
    let mut body = first.body.clone();
    body.nonce += 2;
    body.provider = signer(7).node_id();
    let elsewhere = crate::signed::Signed::sign(body, &signer(100)).unwrap();
    let effects = net.nodes[1].handle(
        10_003,
        Input::Remote {
            from: customer,
            msg: MarketMessage::Award(elsewhere),
        },
    );
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::Rejected {
                error: MarketError::AlreadyAwarded { .. },
                ..
            }
        )),
        "{effects:?}"
    );
    assert_eq!(
        net.nodes[1].ledger().reservations().len(),
        held,
        "the hold stays"
    );
}

/// The holds of a customer's auctions already awarded to this provider (agreed deals, whose
/// holds end since THREATS C20) are not open bids: a customer placing a third deployment on
/// one provider after two were agreed still gets its bid (`max_holds_per_customer` counts
/// bids waiting for an award; found by the review of C20).
#[test]
fn agreed_deals_do_not_use_up_a_provider_s_holds_for_that_customer() {
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
    ]);
    assert_eq!(net.nodes[1].config().dmu.provider.max_holds_per_customer, 2);
    let mut now = 0;
    for round in 0..3u64 {
        net.input(
            now,
            0,
            Input::CreateAuction(
                AuctionBuilder::new()
                    .max_price(1000)
                    .nonce(round + 1)
                    .spec(),
            ),
        );
        now += 10_000;
        net.input(now, 0, Input::Tick);
        assert_eq!(
            net.agreed(1).len() as u64,
            round + 1,
            "auction {round} bid on and agreed: {:?}",
            net.rejections(1)
        );
    }
    assert_eq!(net.nodes[1].book_stats().counters.auto_bids_declined, 0);
}

/// Market audit of session 51: an award must be for the auction the provider bid on. A
/// customer signing an award of the provider's bid (its id, price and resources) for a year
/// instead of the auction's minute, or for another kind, had it agreed and registered.
#[test]
fn an_award_for_another_term_or_kind_than_the_auction_is_refused() {
    use crate::auction::{AuctionKind, AwardBody, AwardSubject};
    let mut net = Net::new(vec![
        MarketConfig::default(),
        provider_config(big_capacity()),
    ]);
    net.input(0, 0, Input::CreateAuction(spec(1000)));
    // The provider bid; the window is still open (the customer awards at its close).
    let bid = net
        .effects_of(1)
        .find_map(|e| match e {
            Effect::Send {
                msg: MarketMessage::Bid(b),
                ..
            } => Some(b.clone()),
            _ => None,
        })
        .expect("the provider bid");
    let auction = net.nodes[1]
        .auctions()
        .values()
        .next()
        .unwrap()
        .request
        .clone();
    let (customer, provider) = (net.nodes[0].node_id(), net.nodes[1].node_id());
    let award = |duration_ms: u64, kind: AuctionKind, nonce: u64| {
        let body = AwardBody {
            customer,
            provider,
            subject: AwardSubject::Bid {
                auction: bid.body.auction,
                bid: bid.id().unwrap(),
            },
            price: bid.body.price,
            resources: auction.body.resources.clone(),
            duration_ms,
            kind,
            nonce,
            expires_at: 60_000,
        };
        MarketMessage::Award(crate::signed::Signed::sign(body, &signer(100)).unwrap())
    };
    let term = auction.body.duration_ms;
    let other_kind = if auction.body.kind == AuctionKind::Storage {
        AuctionKind::Hosted
    } else {
        AuctionKind::Storage
    };
    for (n, msg) in [
        award(term * 1_000, auction.body.kind, 1),
        award(term, other_kind, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let effects = net.nodes[1].handle(
            5_000 + n as u64,
            Input::Remote {
                from: customer,
                msg,
            },
        );
        assert!(
            effects.iter().any(|e| matches!(
                e,
                Effect::Rejected {
                    error: MarketError::UnknownBid { .. },
                    ..
                }
            )),
            "{effects:?}"
        );
        assert!(
            !effects
                .iter()
                .any(|e| matches!(e, Effect::Agreed(_) | Effect::Awarded { .. })),
            "{effects:?}"
        );
    }
    // Refused, they changed nothing: the customer's own award at the window's close agrees.
    net.input(10_000, 0, Input::Tick);
    assert_eq!(net.agreed(1).len(), 1, "{:?}", net.log);
}

/// THREATS C33: one customer holds one award of a standing offer at a time, for hosting (what
/// `take_offer` signs) and a term within `max_duration_ms`. Before, one key took an offer again
/// and again with fresh nonces, each award holding capacity for `AGREED_HOLD_MS`, and as
/// storage or standby too.
#[test]
fn an_offer_taken_twice_by_one_customer_holds_once() {
    use crate::auction::{AuctionKind, AwardBody, AwardSubject, offer_total_price};
    use crate::identity::KeySigner;
    let mut p = MarketState::new(signer(2), provider_config(big_capacity()));
    let res = Resources {
        cpu_millis: 1000,
        ..Resources::default()
    };
    let spec = OfferSpec {
        region: "eu-west".into(),
        resources: res.clone(),
        price_per_hour: 30,
        location: None,
        ttl_ms: 3_600_000,
    };
    p.handle(0, Input::PublishOffer(spec));
    let offer = *p.offers().keys().next().unwrap();
    let me = p.node_id();
    let take = |who: &KeySigner, duration_ms: u64, kind: AuctionKind, now: u64| {
        let body = AwardBody {
            customer: who.node_id(),
            provider: me,
            subject: AwardSubject::Offer { offer },
            price: offer_total_price(30, duration_ms).unwrap().max(1),
            resources: res.clone(),
            duration_ms,
            kind,
            nonce: crate::test_utils::fresh_nonce(),
            expires_at: now + 60_000,
        };
        Input::Remote {
            from: who.node_id(),
            msg: MarketMessage::Award(crate::signed::Signed::sign(body, who).unwrap()),
        }
    };
    let awarded = |out: &[Effect]| out.iter().any(|e| matches!(e, Effect::Awarded { .. }));
    let refusal = |out: &[Effect]| {
        out.iter()
            .find_map(|e| match e {
                Effect::Rejected { error, .. } => Some(error.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("expected a refusal: {out:?}"))
    };
    let (customer, hour) = (signer(1), 3_600_000);
    let out = p.handle(1, take(&customer, hour, AuctionKind::Hosted, 1));
    assert!(awarded(&out), "{out:?}");
    assert_eq!(p.ledger().reservations().len(), 1);
    // The same customer again, with a fresh nonce: refused, nothing more held.
    let out = p.handle(2, take(&customer, hour, AuctionKind::Hosted, 2));
    assert!(
        matches!(refusal(&out), MarketError::OfferTaken { offer: o, .. } if o == offer),
        "{out:?}"
    );
    assert!(!awarded(&out));
    assert_eq!(p.ledger().reservations().len(), 1);
    // Another customer may take it; not as storage, nor for longer than the longest term.
    let out = p.handle(3, take(&signer(3), hour, AuctionKind::Hosted, 3));
    assert!(awarded(&out), "{out:?}");
    let max = p.config().limits.max_duration_ms;
    for (who, duration_ms, kind, field) in [
        (4, hour, AuctionKind::Storage, "kind"),
        (5, max + 1, AuctionKind::Hosted, "duration_ms"),
    ] {
        let out = p.handle(4, take(&signer(who), duration_ms, kind, 4));
        assert!(
            matches!(refusal(&out), MarketError::Absurd { field: f, .. } if f == field),
            "{out:?}"
        );
        assert!(!awarded(&out));
    }
    assert_eq!(p.ledger().reservations().len(), 2);
    // Once the first award's hold ended (no contract registered), the customer may take the
    // offer again.
    let later = 1 + AGREED_HOLD_MS;
    p.handle(later, Input::Tick);
    let out = p.handle(later, take(&customer, hour, AuctionKind::Hosted, later));
    assert!(awarded(&out), "{out:?}");
}

/// THREATS C32 (market audit of session 51, finding 6): a key nobody funded bidding 1 token
/// outscores honest bids (price weighs 60 of 100) and then never deals. A bidder whose balance
/// covers the provider stake wins first; and when the winner's award ends without a deal, the
/// next bid is awarded while the auction lasts. A bidder whose balance is unknown still wins
/// when nobody better bid.
#[test]
fn an_unfunded_lowball_bid_does_not_win_and_a_failed_award_goes_to_the_next_bid() {
    use crate::test_utils::BidBuilder;
    // Node 1 is cheap but will walk away from its award; node 2 is dear.
    let mut walks_away = provider_config(big_capacity());
    walks_away.dmu.provider.auto_accept_award = false;
    let mut dear = provider_config(big_capacity());
    dear.dmu.provider.per_millicore_hour = 500;
    let mut net = Net::new(vec![MarketConfig::default(), walks_away, dear]);
    let (cheap, dear) = (net.nodes[1].node_id(), net.nodes[2].node_id());
    net.input(0, 0, Input::CreateAuction(spec(1000)));
    let (aid, req) = net.nodes[0]
        .auctions()
        .iter()
        .next()
        .map(|(k, v)| (*k, v.request.clone()))
        .unwrap();
    let junk = signer(66);
    let lowball = BidBuilder::new(&req).price(1).build(&junk);
    let lowball_id = lowball.id().unwrap();
    let score = |id: &BidId, bid: &Bid| {
        crate::score::score_bid(&req, *id, bid, &crate::score::ScoreWeights::default()).total
    };
    // By score alone the lowball wins.
    let best_honest = net.nodes[0].auctions()[&aid]
        .bids
        .iter()
        .map(|(id, b)| score(id, b))
        .max()
        .unwrap();
    assert!(score(&lowball_id, &lowball) > best_honest);
    net.input(
        1,
        0,
        Input::Remote {
            from: junk.node_id(),
            msg: MarketMessage::Bid(lowball),
        },
    );
    // The node's ledger knows no funded account for it.
    // The node's ledger counts it funded, but with less than the stake at the auction's
    // ceiling (half of 1000): a 1-token bid's own stake (nothing) is not the measure.
    net.input(2, 0, Input::Balances(vec![(junk.node_id(), 100)]));
    net.input(10_000, 0, Input::Tick);
    let winner = net
        .effects_of(0)
        .find_map(|e| match e {
            Effect::AuctionClosed { winner, .. } => *winner,
            _ => None,
        })
        .unwrap();
    assert_eq!(
        net.nodes[0].auctions()[&aid].bids[&winner.bid]
            .body
            .provider,
        cheap
    );
    let award = net
        .effects_of(1)
        .find_map(|e| match e {
            Effect::Awarded { award, .. } => Some(*award),
            _ => None,
        })
        .unwrap();
    // The winner walks away: the next bid (not the lowball) is awarded and agreed.
    net.input(
        10_001,
        1,
        Input::Negotiate {
            award,
            input: NegotiationInput::WalkAway,
        },
    );
    let agreed = net.agreed(0);
    assert_eq!(agreed.len(), 1, "{:?}", net.log);
    assert_eq!(agreed[0].provider, dear);
    assert_eq!(net.agreed(2), agreed);
    assert!(
        !net.effects_of(0)
            .any(|e| matches!(e, Effect::Awarded { provider, .. } if *provider == junk.node_id()))
    );

    // Alone, a bidder whose balance is unknown still wins.
    let mut net = Net::new(vec![MarketConfig::default()]);
    net.input(0, 0, Input::CreateAuction(spec(1000)));
    let req = net.nodes[0]
        .auctions()
        .values()
        .next()
        .unwrap()
        .request
        .clone();
    let bid = BidBuilder::new(&req).price(1).build(&junk);
    net.input(
        1,
        0,
        Input::Remote {
            from: junk.node_id(),
            msg: MarketMessage::Bid(bid),
        },
    );
    net.input(10_000, 0, Input::Tick);
    assert!(
        net.effects_of(0)
            .any(|e| matches!(e, Effect::Awarded { provider, .. } if *provider == junk.node_id()))
    );
}
