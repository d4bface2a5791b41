//! Capacity griefing (issue #13.8): holds end after the award grace, and the books stay bounded.
#![allow(clippy::unwrap_used)]
use proptest::prelude::*;

use super::*;
use crate::auction::{Award, AwardBody, AwardSubject};
use crate::identity::KeySigner;
use crate::resources::Interface;
use crate::signed::Signed;
use crate::test_utils::{AuctionBuilder, BidBuilder, big_capacity, offer, provider_config, signer};

const DAY: u64 = 24 * 3_600_000;

pub(super) fn provider(capacity: Resources) -> MarketState<KeySigner> {
    let mut c = provider_config(capacity);
    // These tests are about how long holds last, not about who pays: customers nobody vouched
    // for may hold all of the capacity here (their share is tested on its own, THREATS C31).
    c.dmu.provider.stranger_share_permille = 1000;
    MarketState::new(signer(2), c)
}

pub(super) fn remote(
    node: &mut MarketState<KeySigner>,
    now: Timestamp,
    msg: MarketMessage,
) -> Vec<Effect> {
    node.handle(
        now,
        Input::Remote {
            from: NodeId([9; 32]),
            msg,
        },
    )
}

/// The bid a provider sent in `out`, if any.
pub(super) fn sent_bid(out: &[Effect]) -> Option<Bid> {
    out.iter().find_map(|e| match e {
        Effect::Send {
            msg: MarketMessage::Bid(b),
            ..
        } => Some(b.clone()),
        _ => None,
    })
}

/// The customer's award of `bid` on `req`, expiring at `expires_at`.
pub(super) fn award_for(
    customer: &KeySigner,
    req: &AuctionRequest,
    bid: &Bid,
    expires_at: u64,
) -> Award {
    let body = AwardBody {
        customer: customer.node_id(),
        provider: bid.body.provider,
        subject: AwardSubject::Bid {
            auction: req.id().unwrap(),
            bid: bid.id().unwrap(),
        },
        price: bid.body.price,
        resources: req.body.resources.clone(),
        duration_ms: req.body.duration_ms,
        kind: req.body.kind,
        nonce: crate::test_utils::fresh_nonce(),
        expires_at,
    };
    Signed::sign(body, customer).unwrap()
}

pub(super) fn rejected(out: &[Effect]) -> Vec<MarketError> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Rejected { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

/// A customer that never awards holds a provider's capacity only until the award grace after
/// its window closes, not until its 7-day expiry; a late award is refused, since the bid went
/// with its hold (THREATS C30; before, it took the capacity again).
#[test]
fn hold_ends_after_the_award_grace_without_an_award() {
    let mut p = provider(big_capacity());
    let grace = p.config().dmu.provider.hold_grace_ms;
    let customer = signer(1);
    // A 10 s window and an award grace of almost 7 days: expiry far beyond the window.
    let mut spec = AuctionBuilder::new().window_ms(10_000).spec();
    spec.award_grace_ms = 7 * DAY - 20_000;
    let req = spec.create(&customer, 0, 1).unwrap();
    let out = remote(&mut p, 1, MarketMessage::Auction(req.clone()));
    let bid = sent_bid(&out).unwrap();
    let key = ReservationKey::Auction(req.id().unwrap());
    let hold = p.ledger().reservations().get(&key).unwrap().expires_at;
    assert_eq!(hold, Some(10_000 + grace));
    assert!(out.contains(&Effect::ScheduleTimeout { at: 10_000 + grace }));

    p.handle(10_000 + grace - 1, Input::Tick);
    assert_eq!(p.ledger().reservations().len(), 1, "held through the grace");
    p.handle(10_000 + grace, Input::Tick);
    assert!(
        p.ledger().reservations().is_empty(),
        "released at the grace"
    );
    assert_eq!(p.book_stats().counters.holds_lapsed, 1);

    assert!(
        p.my_bid(&req.id().unwrap()).is_none(),
        "the bid went with it"
    );
    // The customer awards late: refused, and nothing is held for it.
    let award = award_for(&customer, &req, &bid, 10_000 + grace + 60_000);
    let out = remote(&mut p, 10_000 + grace + 1, MarketMessage::Award(award));
    assert!(
        matches!(&rejected(&out)[..], [MarketError::UnknownBid { .. }]),
        "{out:?}"
    );
    assert!(!out.iter().any(|e| matches!(e, Effect::Awarded { .. })));
    assert!(p.ledger().reservations().is_empty());
}

/// A late award whose capacity went to another auction meanwhile is refused, typed, and the
/// other auction keeps the capacity.
#[test]
fn late_award_is_refused_when_the_capacity_is_gone() {
    let need = Resources::default().with_interface(Interface::LoRa, 1);
    let mut p = provider(need.clone());
    let grace = p.config().dmu.provider.hold_grace_ms;
    let (c1, c2) = (signer(1), signer(3));
    let mut spec = AuctionBuilder::new().resources(need.clone()).spec();
    spec.award_grace_ms = DAY;
    let first = spec.create(&c1, 0, 1).unwrap();
    let bid = sent_bid(&remote(&mut p, 1, MarketMessage::Auction(first.clone()))).unwrap();
    // The radio is held: a second auction for it gets no bid until the first hold lapses.
    let blocked = AuctionBuilder::new().resources(need.clone()).build(&c2, 0);
    assert!(sent_bid(&remote(&mut p, 2, MarketMessage::Auction(blocked))).is_none());
    let now = 10_000 + grace;
    p.handle(now, Input::Tick);
    let second = AuctionBuilder::new().resources(need).build(&c2, now);
    assert!(
        sent_bid(&remote(
            &mut p,
            now + 1,
            MarketMessage::Auction(second.clone())
        ))
        .is_some()
    );
    let award = award_for(&c1, &first, &bid, first.body.expires_at);
    let out = remote(&mut p, now + 2, MarketMessage::Award(award));
    assert!(matches!(
        &rejected(&out)[..],
        [MarketError::UnknownBid { .. }]
    ));
    let held: Vec<_> = p.ledger().reservations().keys().copied().collect();
    assert_eq!(held, [ReservationKey::Auction(second.id().unwrap())]);
}

/// An award with a far-off expiry cannot hold the provider's capacity past its own
/// negotiation timeout.
#[test]
fn provider_negotiation_lapses_at_its_own_timeout() {
    let mut p = provider(big_capacity());
    p.config.dmu.provider.auto_accept_award = false;
    let timeout = p.config().dmu.negotiation.timeout_ms;
    let customer = signer(1);
    let req = AuctionBuilder::new().build(&customer, 0);
    let bid = sent_bid(&remote(&mut p, 1, MarketMessage::Auction(req.clone()))).unwrap();
    p.handle(10_000, Input::Tick);
    let award = award_for(&customer, &req, &bid, 365 * DAY);
    let out = remote(&mut p, 10_001, MarketMessage::Award(award.clone()));
    assert!(out.contains(&Effect::ScheduleTimeout {
        at: 10_001 + timeout
    }));
    assert_eq!(p.ledger().reservations().len(), 1);
    let out = p.handle(10_001 + timeout, Input::Tick);
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::NegotiationFailed { by: None, .. }))
    );
    assert!(p.ledger().reservations().is_empty());
}

/// A customer cannot keep a provider's capacity held with week-long windows or many auctions:
/// auto-bids go only to windows closing within `max_bid_window_ms`, and at most
/// `max_holds_per_customer` holds per customer are kept at a time.
#[test]
fn auto_bids_decline_long_windows_and_many_holds_for_one_customer() {
    let mut p = provider(big_capacity());
    let max_window = p.config().dmu.provider.max_bid_window_ms;
    let customer = signer(1);
    let long = AuctionBuilder::new()
        .window_ms(max_window + 1)
        .build(&customer, 0);
    assert!(sent_bid(&remote(&mut p, 0, MarketMessage::Auction(long))).is_none());
    let ok = AuctionBuilder::new()
        .window_ms(max_window)
        .build(&customer, 0);
    assert!(sent_bid(&remote(&mut p, 0, MarketMessage::Auction(ok))).is_some());
    let second = AuctionBuilder::new().build(&customer, 0);
    assert!(sent_bid(&remote(&mut p, 1, MarketMessage::Auction(second))).is_some());
    let third = AuctionBuilder::new().build(&customer, 0);
    assert!(sent_bid(&remote(&mut p, 2, MarketMessage::Auction(third))).is_none());
    // Another customer still gets a bid.
    let other = AuctionBuilder::new().build(&signer(3), 0);
    assert!(sent_bid(&remote(&mut p, 3, MarketMessage::Auction(other))).is_some());
    assert_eq!(p.book_stats().counters.auto_bids_declined, 2);
    // Once the short hold lapses (10 s window + grace), the customer gets a bid again.
    let later = 10_000 + p.config().dmu.provider.hold_grace_ms;
    p.handle(later, Input::Tick);
    let fourth = AuctionBuilder::new().build(&customer, later);
    assert!(sent_bid(&remote(&mut p, later + 1, MarketMessage::Auction(fourth))).is_some());
}

/// A slot far ahead holds the winner's capacity until it ends for the price of its term
/// alone: auto-bids go only to slots starting within the provider's `max_slot_lead_ms`,
/// though the market admits slots up to a day ahead (THREATS C34).
#[test]
fn auto_bids_decline_slots_further_ahead_than_the_provider_s_bound() {
    let mut p = provider(big_capacity());
    let lead = p.config().dmu.provider.max_slot_lead_ms;
    assert!(lead < p.config().limits.max_slot_lead_ms);
    let now = 1_000;
    let slot = |customer: &KeySigner, start_at: u64| {
        let mut spec = AuctionBuilder::new().spec();
        spec.start_at = Some(start_at);
        spec.create(customer, now, crate::test_utils::fresh_nonce())
            .unwrap()
    };
    let far = slot(&signer(1), now + lead + 1);
    let out = remote(&mut p, now, MarketMessage::Auction(far.clone()));
    assert!(rejected(&out).is_empty(), "the market admits it");
    assert!(p.auctions().contains_key(&far.id().unwrap()));
    assert!(sent_bid(&out).is_none());
    assert!(p.ledger().reservations().is_empty(), "nothing held");
    assert_eq!(p.book_stats().counters.auto_bids_declined, 1);
    let near = slot(&signer(3), now + lead);
    assert!(sent_bid(&remote(&mut p, now, MarketMessage::Auction(near))).is_some());
}

/// THREATS C31 (market audit of session 51, finding 5): keys are free, so the holds of
/// customers not known to pay share one budget, a quarter of the capacity by default, however
/// many keys they use; a customer whose balance covers its bids holds on its own, and an
/// auction declined for want of a balance gets its bid once the balance arrives. One key
/// chaining auction, bid and award stops at `max_holds_per_customer`: an awarded hold counts
/// until its contract is registered; known to pay, at `max_holds_per_funded_customer`.
#[test]
fn strangers_share_one_hold_budget_and_awarded_holds_count() {
    let mut cfg = MarketConfig {
        capacity: Resources {
            cpu_millis: 4_000,
            ..Resources::default()
        },
        ..MarketConfig::default()
    };
    cfg.dmu.provider.auto_bid = true;
    assert_eq!(cfg.dmu.provider.stranger_share_permille, 250);
    let cores = |millis: u64| Resources {
        cpu_millis: millis,
        ..Resources::default()
    };
    let mut p = MarketState::new(signer(2), cfg.clone());
    let (k1, k2, funded) = (signer(11), signer(12), signer(13));
    // Two free keys, two half-core auctions each: their holds together stop at one core.
    let mut declined = Vec::new();
    for (i, k) in [&k1, &k2, &k1, &k2].into_iter().enumerate() {
        let now = i as u64;
        let a = AuctionBuilder::new().resources(cores(500)).build(k, now);
        if sent_bid(&remote(&mut p, now, MarketMessage::Auction(a.clone()))).is_none() {
            declined.push(a);
        }
    }
    assert_eq!(p.ledger().reservations().len(), 2, "strangers share a core");
    assert_eq!(p.book_stats().counters.auto_bids_declined, 2);
    // A customer known to pay holds on its own, the strangers' share full or not.
    p.handle(5, Input::Balances(vec![(funded.node_id(), 1_000_000)]));
    let a = AuctionBuilder::new()
        .resources(cores(500))
        .build(&funded, 5);
    assert!(sent_bid(&remote(&mut p, 6, MarketMessage::Auction(a))).is_some());
    // A balance fed as 0 (no account, or below the ledger's minimum) is no balance.
    let out = p.handle(7, Input::Balances(vec![(k2.node_id(), 0)]));
    assert!(sent_bid(&out).is_none());
    // k1's balance arrives: its declined auction gets its bid at once.
    let out = p.handle(8, Input::Balances(vec![(k1.node_id(), 1_000_000)]));
    let bid = sent_bid(&out).expect("a bid once the balance is known");
    assert_eq!(bid.body.auction, declined[0].id().unwrap());
    assert_eq!(p.ledger().reservations().len(), 4);

    // One key chains auction, bid and award, with room in the share (all of the capacity
    // here): each awarded hold counts until its contract is registered.
    cfg.dmu.provider.stranger_share_permille = 1000;
    let mut p = MarketState::new(signer(2), cfg);
    let chain = signer(14);
    let mut awards = Vec::new();
    let link = |p: &mut MarketState<KeySigner>, now: u64| {
        let a = AuctionBuilder::new()
            .resources(cores(100))
            .build(&chain, now);
        let bid = sent_bid(&remote(p, now, MarketMessage::Auction(a.clone())))?;
        let close = a.body.window_closes_at;
        let award = award_for(&chain, &a, &bid, close + 60_000);
        let out = remote(p, close, MarketMessage::Award(award));
        out.iter().find_map(|e| match e {
            Effect::Awarded { award, .. } => Some(*award),
            _ => None,
        })
    };
    for i in 0..10 {
        awards.extend(link(&mut p, i * 20_000));
    }
    assert_eq!(awards.len(), p.config().dmu.provider.max_holds_per_customer);
    // The first contract is registered: paid for, its hold no longer counts.
    p.handle(
        200_000,
        Input::HoldAward {
            award: awards[0],
            until: 10 * 3_600_000,
            registered: true,
        },
    );
    assert!(link(&mut p, 200_000).is_some());
    assert!(link(&mut p, 220_000).is_none());
    // Known to pay, the key holds more: up to `max_holds_per_funded_customer` unpaid.
    p.handle(240_000, Input::Balances(vec![(chain.node_id(), 1_000_000)]));
    let more = (0..10)
        .filter_map(|i| link(&mut p, 260_000 + i * 20_000))
        .count();
    assert_eq!(
        more,
        p.config().dmu.provider.max_holds_per_funded_customer - 2
    );
}

/// THREATS C32 (market audit of session 51, finding 6): nobody outside an auction's `only`
/// can win it, so nobody else's bid is kept: junk bids no longer fill a fleet placement's
/// slots and leave its target's bid refused `BookFull`.
#[test]
fn bids_outside_only_are_not_kept() {
    let mut cfg = MarketConfig::default();
    cfg.limits.max_bids_per_auction = 2;
    let mut node = MarketState::new(signer(1), cfg);
    let target = signer(20);
    node.handle(
        0,
        Input::CreateAuctionFor {
            spec: AuctionBuilder::new().spec(),
            only: std::collections::BTreeSet::from([target.node_id()]),
        },
    );
    let req = node.auctions().values().next().unwrap().request.clone();
    for seed in 30..34 {
        let junk = BidBuilder::new(&req).price(1).build(&signer(seed));
        let out = remote(&mut node, 1, MarketMessage::Bid(junk));
        assert!(
            matches!(&rejected(&out)[..], [MarketError::NotChosen { .. }]),
            "{out:?}"
        );
    }
    let bids = |node: &MarketState<KeySigner>| node.auctions().values().next().unwrap().bids.len();
    assert_eq!(bids(&node), 0);
    let own = BidBuilder::new(&req).price(500).build(&target);
    let out = remote(&mut node, 2, MarketMessage::Bid(own));
    assert!(rejected(&out).is_empty(), "{out:?}");
    assert_eq!(bids(&node), 1);
}

fn small_book() -> MarketConfig {
    let mut c = MarketConfig::default();
    c.limits.max_auctions_per_customer = 3;
    c.limits.max_auctions = 5;
    c.limits.max_offers_per_provider = 2;
    c.limits.max_offers = 4;
    c
}

#[test]
fn one_customer_cannot_fill_the_auction_book() {
    let mut node = MarketState::new(signer(50), small_book());
    let flooder = signer(1);
    for i in 0..3 {
        let a = AuctionBuilder::new().build(&flooder, i);
        assert!(rejected(&remote(&mut node, i, MarketMessage::Auction(a))).is_empty());
    }
    let extra = AuctionBuilder::new().build(&flooder, 3);
    assert!(matches!(
        &rejected(&remote(&mut node, 3, MarketMessage::Auction(extra)))[..],
        [MarketError::CustomerQuota { max: 3, .. }]
    ));
    // Two honest customers fill the book; a third still gets in, in place of a flooder's.
    for seed in 2..5 {
        let a = AuctionBuilder::new().build(&signer(seed), 4);
        assert!(rejected(&remote(&mut node, 4, MarketMessage::Auction(a))).is_empty());
    }
    let stats = node.book_stats();
    assert_eq!(stats.auctions, 5);
    assert_eq!(stats.counters.auctions_refused_quota, 1);
    assert_eq!(stats.counters.auctions_evicted, 1);
    let from = |node: &MarketState<KeySigner>, c: &KeySigner| {
        node.auctions()
            .values()
            .filter(|e| e.request.body.customer == c.node_id())
            .count()
    };
    assert_eq!(from(&node, &flooder), 2);
    // Now everyone holds at most 2 and a newcomer holds 0: the flooder gives way again, and
    // once nobody holds more than the newcomer, the newcomer is refused.
    let a = AuctionBuilder::new().build(&signer(6), 5);
    assert!(rejected(&remote(&mut node, 5, MarketMessage::Auction(a))).is_empty());
    assert_eq!(from(&node, &flooder), 1);
}

#[test]
fn auctions_open_only_to_others_do_not_use_up_the_quota_of_their_customer() {
    // A fleet deployer places more targets at once than the per-customer quota: every
    // provider's book holds the placements for the other targets, and its own still gets in
    // (before: refused by the quota, so the target never bid on the auction open to it).
    let mut cfg = small_book();
    cfg.capacity = big_capacity();
    cfg.dmu.provider.auto_bid = true;
    cfg.limits.max_auctions = 8;
    let mut node = MarketState::new(signer(50), cfg);
    let deployer = signer(1);
    let open_to = |only: Vec<NodeId>, now: Timestamp| {
        AuctionBuilder::new()
            .spec()
            .create_for(&deployer, now, crate::test_utils::fresh_nonce(), only)
            .unwrap()
    };
    for i in 0..6u8 {
        let a = open_to(vec![NodeId([100 + i; 32])], u64::from(i));
        let out = remote(&mut node, u64::from(i), MarketMessage::Auction(a));
        assert!(
            rejected(&out).is_empty(),
            "placement {i} for another target"
        );
        assert!(sent_bid(&out).is_none(), "not open to this node: no bid");
    }
    let mine = open_to(vec![node.node_id()], 6);
    let out = remote(&mut node, 6, MarketMessage::Auction(mine));
    assert!(rejected(&out).is_empty(), "{:?}", rejected(&out));
    assert!(
        sent_bid(&out).is_some(),
        "the target bids on the auction open to it"
    );
    // The quota still holds for auctions this node may bid on: 3 in all (the third fills the
    // book, 8, and takes the place of a placement for another target).
    for i in 7..9 {
        let a = AuctionBuilder::new().build(&deployer, i);
        assert!(rejected(&remote(&mut node, i, MarketMessage::Auction(a))).is_empty());
    }
    let extra = AuctionBuilder::new().build(&deployer, 9);
    assert!(matches!(
        &rejected(&remote(&mut node, 9, MarketMessage::Auction(extra)))[..],
        [MarketError::CustomerQuota { max: 3, .. }]
    ));
    // The book is full: an auction open to this node from another customer takes the place of
    // another one open only to others, never of one this node may bid on.
    assert_eq!(node.auctions().len(), 8);
    let other = AuctionBuilder::new().build(&signer(2), 10);
    assert!(rejected(&remote(&mut node, 10, MarketMessage::Auction(other))).is_empty());
    let for_me = node
        .auctions()
        .values()
        .filter(|e| e.request.body.only.is_empty() || e.request.body.only.contains(&node.node_id()))
        .count();
    assert_eq!(for_me, 4, "the 3 of the deployer and the newcomer");
    assert_eq!(node.book_stats().counters.auctions_evicted, 2);
    assert_eq!(node.auctions().len(), 8);
}

#[test]
fn closed_auctions_give_way_first_and_needed_ones_never() {
    let mut cfg = small_book();
    cfg.capacity = big_capacity();
    cfg.dmu.provider.auto_bid = true;
    cfg.limits.max_auctions = 3;
    let mut node = MarketState::new(signer(50), cfg);
    // Our own auction, one we bid on, and one whose window closes at 1 s.
    node.handle(0, Input::CreateAuction(AuctionBuilder::new().spec()));
    let bid_on = AuctionBuilder::new().build(&signer(1), 0);
    assert!(
        sent_bid(&remote(
            &mut node,
            0,
            MarketMessage::Auction(bid_on.clone())
        ))
        .is_some()
    );
    node.config.dmu.provider.auto_bid = false;
    let short = AuctionBuilder::new().window_ms(1_000).build(&signer(2), 0);
    remote(&mut node, 0, MarketMessage::Auction(short.clone()));
    node.handle(1_000, Input::Tick);
    let newcomer = AuctionBuilder::new().build(&signer(3), 1_000);
    assert!(rejected(&remote(&mut node, 1_001, MarketMessage::Auction(newcomer))).is_empty());
    assert!(!node.auctions().contains_key(&short.id().unwrap()));
    assert!(node.auctions().contains_key(&bid_on.id().unwrap()));
    // Now only needed entries and the newcomer's are left; another newcomer (holding 0, as
    // everyone else holds 1) takes the newcomer's place; ours and the one we bid on stay.
    let other = AuctionBuilder::new().build(&signer(4), 1_000);
    assert!(rejected(&remote(&mut node, 1_002, MarketMessage::Auction(other))).is_empty());
    assert!(node.auctions().contains_key(&bid_on.id().unwrap()));
    assert_eq!(
        node.auctions()
            .values()
            .filter(|e| e.request.body.customer == node.node_id())
            .count(),
        1
    );
}

/// THREATS C30: an auction this node bid on is needed only while the bid holds capacity.
/// Throwaway keys' auctions with short windows and week-long expiries, each bid on once, stayed
/// needed until they expired, so a full book refused every newcomer `MarketFull` for days.
#[test]
fn auctions_we_bid_on_give_way_once_their_hold_lapsed() {
    let mut cfg = small_book();
    cfg.capacity = big_capacity();
    cfg.dmu.provider.auto_bid = true;
    cfg.dmu.provider.stranger_share_permille = 1000;
    let mut p = MarketState::new(signer(50), cfg);
    let grace = p.config().dmu.provider.hold_grace_ms;
    let mut bid_on = Vec::new();
    for seed in 10..15 {
        let mut spec = AuctionBuilder::new().window_ms(1_000).spec();
        spec.award_grace_ms = 6 * DAY;
        let req = spec.create(&signer(seed), 0, 1).unwrap();
        assert!(sent_bid(&remote(&mut p, 0, MarketMessage::Auction(req.clone()))).is_some());
        bid_on.push(req.id().unwrap());
    }
    assert_eq!(p.auctions().len(), 5, "the book is full");
    // While the bids hold capacity, their auctions stay.
    let early = AuctionBuilder::new().build(&signer(20), 2);
    assert!(matches!(
        &rejected(&remote(&mut p, 2, MarketMessage::Auction(early)))[..],
        [MarketError::MarketFull {
            book: "auction",
            ..
        }]
    ));
    // No award came: the holds lapse, and a newcomer takes the place of one of them.
    let lapsed = 1_000 + grace;
    p.handle(lapsed, Input::Tick);
    assert!(p.ledger().reservations().is_empty());
    let newcomer = AuctionBuilder::new().build(&signer(21), lapsed);
    let id = newcomer.id().unwrap();
    let out = remote(&mut p, lapsed, MarketMessage::Auction(newcomer));
    assert!(rejected(&out).is_empty(), "{out:?}");
    assert!(p.auctions().contains_key(&id));
    assert_eq!(p.auctions().len(), 5);
    assert_eq!(p.book_stats().counters.auctions_evicted, 1);
    // The lapsed bids are forgotten (a late award of one is refused `UnknownBid`).
    assert!(bid_on.iter().all(|id| p.my_bid(id).is_none()));
}

/// THREATS C36: the provider remembers what it bid on (the auction's image, slot, term and
/// kind) while an award of the bid holds the capacity, also once a short-lived auction has
/// left the book, so the contract proposed later is checked against it. Open bids are bounded
/// by the auction book's size; awarded ones by who can pay (THREATS C31).
#[test]
fn what_we_bid_on_is_remembered_while_its_award_holds() {
    let mut p = provider(big_capacity());
    p.config.limits.max_auctions = 1;
    let customer = signer(1);
    let mut spec = AuctionBuilder::new().window_ms(1_000).spec();
    spec.award_grace_ms = 1_000;
    spec.service = Some("bafy-the-image".into());
    spec.start_at = Some(5_000);
    let req = spec.create(&customer, 0, 1).unwrap();
    let id = req.id().unwrap();
    let bid = sent_bid(&remote(&mut p, 0, MarketMessage::Auction(req.clone()))).unwrap();
    let award = award_for(&customer, &req, &bid, 2_000);
    let out = remote(&mut p, 1_000, MarketMessage::Award(award));
    assert!(
        out.iter().any(|e| matches!(e, Effect::Agreed(_))),
        "{out:?}"
    );
    // The auction expires at 2 s; the award holds the capacity for `AGREED_HOLD_MS`.
    p.handle(3_000, Input::Tick);
    assert!(p.auction(&id).is_none(), "the auction left the book");
    let mine = p.my_bid(&id).expect("remembered while the award holds");
    assert_eq!((mine.bid, mine.price), (bid.id().unwrap(), bid.body.price));
    assert_eq!(mine.image.as_deref(), Some("bafy-the-image"));
    assert_eq!(mine.start_at, Some(5_000));
    assert_eq!(
        (mine.duration_ms, mine.kind),
        (req.body.duration_ms, req.body.kind)
    );
    // An awarded record leaves room for an open bid, even with a book of one auction.
    let other = AuctionBuilder::new().build(&signer(3), 3_000);
    let out = remote(&mut p, 3_000, MarketMessage::Auction(other));
    assert!(sent_bid(&out).is_some(), "{out:?}");
    // No contract was registered: the hold lapses and the record goes with it.
    p.handle(1_000 + AGREED_HOLD_MS, Input::Tick);
    assert!(p.my_bid(&id).is_none());
}

#[test]
fn a_full_book_of_equals_refuses_with_a_typed_error() {
    let mut cfg = small_book();
    cfg.limits.max_auctions = 2;
    cfg.limits.max_auctions_per_customer = 2;
    let mut node = MarketState::new(signer(50), cfg);
    let c = signer(1);
    for i in 0..2 {
        remote(
            &mut node,
            0,
            MarketMessage::Auction(AuctionBuilder::new().build(&c, i)),
        );
    }
    // c holds 2; a newcomer holding 0 evicts one of c's. Then c (holding 1) against the
    // newcomer (holding 1): nobody holds more than c, so c is refused.
    remote(
        &mut node,
        0,
        MarketMessage::Auction(AuctionBuilder::new().build(&signer(2), 0)),
    );
    let out = remote(
        &mut node,
        0,
        MarketMessage::Auction(AuctionBuilder::new().build(&c, 2)),
    );
    assert!(matches!(
        &rejected(&out)[..],
        [MarketError::MarketFull {
            book: "auction",
            max: 2
        }]
    ));
    assert_eq!(node.book_stats().counters.auctions_refused_full, 1);
}

#[test]
fn offers_are_bounded_per_provider_and_in_total() {
    let mut node = MarketState::new(signer(50), small_book());
    let res = Resources {
        cpu_millis: 100,
        ..Resources::default()
    };
    let flooder = signer(1);
    for _ in 0..2 {
        let o = offer(&flooder, "eu-west", res.clone(), 5, 0);
        assert!(rejected(&remote(&mut node, 0, MarketMessage::Offer(o))).is_empty());
    }
    let o = offer(&flooder, "eu-west", res.clone(), 5, 0);
    assert!(matches!(
        &rejected(&remote(&mut node, 0, MarketMessage::Offer(o)))[..],
        [MarketError::ProviderQuota { max: 2, .. }]
    ));
    for seed in 2..5 {
        let o = offer(&signer(seed), "eu-west", res.clone(), 5, 0);
        assert!(rejected(&remote(&mut node, 0, MarketMessage::Offer(o))).is_empty());
    }
    let stats = node.book_stats();
    assert_eq!(stats.offers, 4);
    assert_eq!(stats.counters.offers_evicted, 1);
    assert_eq!(
        node.offers()
            .values()
            .filter(|o| o.body.provider == flooder.node_id())
            .count(),
        1
    );
}

#[test]
fn one_bid_per_provider_and_cheaper_bids_displace_dearer_ones() {
    let mut cfg = MarketConfig::default();
    cfg.limits.max_bids_per_auction = 2;
    let mut node = MarketState::new(signer(1), cfg);
    node.handle(0, Input::CreateAuction(AuctionBuilder::new().spec()));
    let req = node.auctions().values().next().unwrap().request.clone();
    let bid = |seed: u64, price: u64| BidBuilder::new(&req).price(price).build(&signer(seed));
    assert!(rejected(&remote(&mut node, 1, MarketMessage::Bid(bid(10, 500)))).is_empty());
    assert!(matches!(
        &rejected(&remote(&mut node, 1, MarketMessage::Bid(bid(10, 400))))[..],
        [MarketError::DuplicateBid { .. }]
    ));
    assert!(rejected(&remote(&mut node, 1, MarketMessage::Bid(bid(11, 600)))).is_empty());
    // Full: a dearer bid is refused, a cheaper one displaces the dearest (600).
    assert!(matches!(
        &rejected(&remote(&mut node, 1, MarketMessage::Bid(bid(12, 700))))[..],
        [MarketError::BookFull { max: 2, .. }]
    ));
    assert!(rejected(&remote(&mut node, 1, MarketMessage::Bid(bid(13, 100)))).is_empty());
    let prices: Vec<u64> = node
        .auctions()
        .values()
        .next()
        .unwrap()
        .bids
        .values()
        .map(|b| b.body.price)
        .collect();
    assert_eq!(prices.len(), 2);
    assert!(prices.contains(&100) && prices.contains(&500));
    let c = node.book_stats().counters;
    assert_eq!(
        (
            c.bids_refused_duplicate,
            c.bids_refused_full,
            c.bids_evicted
        ),
        (1, 1, 1)
    );
}

#[test]
fn bids_are_bounded_over_all_our_auctions() {
    let mut cfg = MarketConfig::default();
    cfg.limits.max_bids = 3;
    let mut node = MarketState::new(signer(1), cfg);
    for _ in 0..2 {
        node.handle(0, Input::CreateAuction(AuctionBuilder::new().spec()));
    }
    let reqs: Vec<AuctionRequest> = node
        .auctions()
        .values()
        .map(|e| e.request.clone())
        .collect();
    let mut refused = Vec::new();
    for (i, seed) in (10..15).enumerate() {
        let b = BidBuilder::new(&reqs[i % 2])
            .price(500)
            .build(&signer(seed));
        refused.extend(rejected(&remote(&mut node, 1, MarketMessage::Bid(b))));
    }
    assert_eq!(node.book_stats().bids, 3);
    assert!(matches!(
        &refused[..],
        [
            MarketError::MarketFull {
                book: "bid",
                max: 3
            },
            MarketError::MarketFull {
                book: "bid",
                max: 3
            }
        ]
    ));
}

/// One step of a flood scenario.
#[derive(Clone, Debug)]
enum Step {
    /// The flooder (customer 1) sends an auction with this window and award grace.
    Flood { window: u64, grace: u64 },
    /// Honest customer `seed` sends an auction.
    Honest { seed: u64 },
    /// The flooder, or an honest provider, publishes an offer.
    Offer { flooder: bool, seed: u64 },
    /// A provider bids on our own auction at this price.
    Bid { seed: u64, price: u64 },
    /// Time passes by this much, then a tick.
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..20_000, 0u64..DAY).prop_map(|(window, grace)| Step::Flood { window, grace }),
        1 => (2u64..8).prop_map(|seed| Step::Honest { seed }),
        2 => (any::<bool>(), 2u64..8).prop_map(|(flooder, seed)| Step::Offer { flooder, seed }),
        2 => (10u64..60, 1u64..1000).prop_map(|(seed, price)| Step::Bid { seed, price }),
        1 => (0u64..30_000).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Under any sequence of messages the books stay within their bounds, and an honest
    /// customer (holding less than the flooder) always gets its auction in.
    #[test]
    fn books_stay_bounded_and_honest_auctions_get_in(steps in proptest::collection::vec(step(), 1..120)) {
        let mut cfg = MarketConfig::default();
        cfg.limits.max_auctions_per_customer = 6;
        cfg.limits.max_auctions = 12;
        cfg.limits.max_offers_per_provider = 3;
        cfg.limits.max_offers = 8;
        cfg.limits.max_bids_per_auction = 5;
        cfg.limits.max_bids = 8;
        cfg.limits.max_replay_nonces = 40;
        let limits = cfg.limits.clone();
        let mut node = MarketState::new(signer(100), cfg);
        node.handle(0, Input::CreateAuction(AuctionBuilder::new().window_ms(DAY).spec()));
        node.handle(0, Input::CreateAuction(AuctionBuilder::new().window_ms(DAY).spec()));
        let ours: Vec<AuctionRequest> = node.auctions().values().map(|e| e.request.clone()).collect();
        let mut now = 1;
        let flooder = signer(1);
        let res = Resources { cpu_millis: 100, ..Resources::default() };
        for (i, s) in steps.into_iter().enumerate() {
            now += 1;
            match s {
                Step::Flood { window, grace } => {
                    let mut spec = AuctionBuilder::new().window_ms(window).spec();
                    spec.award_grace_ms = grace;
                    let req = spec.create(&flooder, now, crate::test_utils::fresh_nonce()).unwrap();
                    remote(&mut node, now, MarketMessage::Auction(req));
                }
                Step::Honest { seed } => {
                    let c = signer(seed);
                    let mut per: std::collections::BTreeMap<NodeId, usize> = Default::default();
                    for e in node.auctions().values().filter(|e| e.request.body.customer != node.node_id()) {
                        *per.entry(e.request.body.customer).or_default() += 1;
                    }
                    let held = per.get(&c.node_id()).copied().unwrap_or(0);
                    let heaviest = per.values().copied().max().unwrap_or(0);
                    let full = node.auctions().len() >= limits.max_auctions;
                    let req = AuctionBuilder::new().build(&c, now);
                    let id = req.id().unwrap();
                    let out = remote(&mut node, now, MarketMessage::Auction(req));
                    // It gets in unless it already holds its quota, or the book is full and
                    // nobody holds more than it does.
                    if held < limits.max_auctions_per_customer && (!full || heaviest > held) {
                        prop_assert!(node.auctions().contains_key(&id), "step {}: honest auction refused: {:?}", i, rejected(&out));
                    }
                }
                Step::Offer { flooder: f, seed } => {
                    let who = if f { signer(1) } else { signer(seed) };
                    remote(&mut node, now, MarketMessage::Offer(offer(&who, "eu-west", res.clone(), 5, now)));
                }
                Step::Bid { seed, price } => {
                    let req = &ours[(seed % 2) as usize];
                    let bid = BidBuilder::new(req).price(price).build(&signer(seed));
                    remote(&mut node, now, MarketMessage::Bid(bid));
                }
                Step::Wait(ms) => {
                    now += ms;
                    node.handle(now, Input::Tick);
                }
            }
            let stats = node.book_stats();
            prop_assert!(stats.auctions <= limits.max_auctions);
            prop_assert!(stats.offers <= limits.max_offers);
            prop_assert!(stats.bids <= limits.max_bids);
            prop_assert!(stats.replay_nonces <= limits.max_replay_nonces);
            prop_assert!(node.auctions().values().all(|e| e.bids.len() <= limits.max_bids_per_auction));
            let mut per: std::collections::BTreeMap<NodeId, usize> = Default::default();
            for e in node.auctions().values() {
                *per.entry(e.request.body.customer).or_default() += 1;
            }
            prop_assert!(per.values().all(|n| *n <= limits.max_auctions_per_customer));
            let mut per: std::collections::BTreeMap<NodeId, usize> = Default::default();
            for o in node.offers().values() {
                *per.entry(o.body.provider).or_default() += 1;
            }
            prop_assert!(per.values().all(|n| *n <= limits.max_offers_per_provider));
            // Our own auctions are never evicted.
            for r in &ours {
                prop_assert!(node.auctions().contains_key(&r.id().unwrap()));
            }
        }
    }

    /// Whatever customers do (award us, award another, never award; any expiry up to the
    /// limit), a tentative hold never outlives the award grace, and once every deadline has
    /// passed no capacity is held.
    #[test]
    fn capacity_is_always_released(
        auctions in proptest::collection::vec((1u64..30_000, 0u64..7 * DAY, 0u8..3, 0u64..40_000), 1..16),
        auto_accept in any::<bool>(),
    ) {
        let cap = Resources { cpu_millis: 4_000, ..Resources::default() }.with_interface(Interface::LoRa, 2);
        let mut p = provider(cap.clone());
        p.config.dmu.provider.auto_accept_award = auto_accept;
        // Deals agreed keep their capacity until their contract could no longer be registered
        // (`AGREED_HOLD_MS` after the award, THREATS C20) unless the node says it was.
        let mut agreed = std::collections::BTreeSet::new();
        let grace = p.config().dmu.provider.hold_grace_ms;
        let mut now = 0;
        let mut last_deadline = 0;
        for (i, (window, award_grace, fate, wait)) in auctions.into_iter().enumerate() {
            now += 1;
            let customer = signer(10 + i as u64);
            let need = Resources { cpu_millis: 1_000, ..Resources::default() }.with_interface(Interface::LoRa, 1);
            let mut spec = AuctionBuilder::new().resources(need).window_ms(window).spec();
            spec.award_grace_ms = award_grace;
            let req = spec.create(&customer, now, 1).unwrap();
            let out = remote(&mut p, now, MarketMessage::Auction(req.clone()));
            if let Some(bid) = sent_bid(&out) {
                let close = req.body.window_closes_at;
                let key = ReservationKey::Auction(req.id().unwrap());
                let hold = p.ledger().reservations().get(&key).and_then(|r| r.expires_at);
                prop_assert_eq!(hold, Some((close + grace).min(req.body.expires_at)));
                last_deadline = last_deadline.max(close + grace);
                now = now.max(close);
                match fate {
                    0 => {
                        // Awarded to us, with a far-off expiry the provider clamps.
                        let award = award_for(&customer, &req, &bid, now + 7 * DAY);
                        let out = remote(&mut p, now, MarketMessage::Award(award));
                        if out.iter().any(|e| matches!(e, Effect::Agreed(_))) {
                            agreed.insert(key);
                        }
                        last_deadline = last_deadline.max(now + p.config().dmu.negotiation.timeout_ms);
                    }
                    1 => {
                        // Awarded to someone else, heard over gossip.
                        let other = BidBuilder::new(&req).build(&signer(999));
                        let award = award_for(&customer, &req, &other, now + 60_000);
                        remote(&mut p, now, MarketMessage::Award(award));
                        prop_assert!(!p.ledger().reservations().contains_key(&key));
                    }
                    _ => {} // never awarded
                }
            }
            now += wait;
            p.handle(now, Input::Tick);
            for r in p.ledger().reservations().values() {
                if let Some(t) = r.expires_at {
                    prop_assert!(t > now, "a lapsed hold survived a tick");
                }
            }
            prop_assert!(p.ledger().reserved_total().unwrap().fits_in(&cap));
        }
        p.handle(last_deadline.max(now) + 1, Input::Tick);
        let left: std::collections::BTreeSet<_> = p.ledger().reservations().keys().copied().collect();
        prop_assert!(left.is_subset(&agreed), "{:?} not in {:?}", left, agreed);
        prop_assert!(p.ledger().reservations().values().all(|r| r.expires_at.is_some()));
        // No contract was registered for any of them: every hold has ended by then.
        p.handle(last_deadline.max(now) + crate::book::AGREED_HOLD_MS + 1, Input::Tick);
        prop_assert!(p.ledger().reservations().is_empty());
    }
}

/// Tiny holds use up no share of the capacity (a byte each), so the holds that customers not
/// known to pay keep here are bounded in number too (`max_stranger_holds`); a customer known
/// to pay still gets its bid (review of session 52).
#[test]
fn strangers_tiny_holds_are_bounded_in_number_too() {
    let mut c = MarketConfig {
        capacity: big_capacity(),
        ..MarketConfig::default()
    };
    c.dmu.provider.auto_bid = true;
    c.dmu.provider.max_stranger_holds = 3;
    let mut p = MarketState::new(signer(2), c);
    let tiny = Resources {
        memory_bytes: 1,
        ..Resources::default()
    };
    let bids = (40..45)
        .filter(|seed| {
            let a = AuctionBuilder::new()
                .resources(tiny.clone())
                .build(&signer(*seed), 0);
            sent_bid(&remote(&mut p, 0, MarketMessage::Auction(a))).is_some()
        })
        .count();
    assert_eq!(bids, 3);
    let funded = signer(50);
    p.handle(1, Input::Balances(vec![(funded.node_id(), 1_000_000)]));
    let a = AuctionBuilder::new().resources(tiny).build(&funded, 1);
    assert!(sent_bid(&remote(&mut p, 1, MarketMessage::Auction(a))).is_some());
}

/// Our bid records outlive their auctions while an award holds their capacity; only open bids
/// count against `max_auctions`, or keys awarding their own tiny auctions filled that bound and
/// every bid was refused `MarketFull` (review of session 52).
#[test]
fn awarded_bids_leave_room_for_open_ones() {
    let mut c = MarketConfig {
        capacity: big_capacity(),
        ..MarketConfig::default()
    };
    c.dmu.provider.auto_bid = true;
    c.limits.max_auctions = 2;
    let mut p = MarketState::new(signer(2), c);
    let k = signer(60);
    p.handle(0, Input::Balances(vec![(k.node_id(), 1_000_000)]));
    let mut now = 1;
    for round in 0..3 {
        let a = AuctionBuilder::new().build(&k, now);
        let out = remote(&mut p, now, MarketMessage::Auction(a.clone()));
        let bid = sent_bid(&out).unwrap_or_else(|| panic!("round {round}: no bid: {out:?}"));
        let close = a.body.window_closes_at;
        let award = award_for(&k, &a, &bid, close + 60_000);
        let out = remote(&mut p, close, MarketMessage::Award(award));
        assert!(
            out.iter().any(|e| matches!(e, Effect::Awarded { .. })),
            "round {round}: {out:?}"
        );
        // The auction leaves the book; the award's hold and our record of the bid stay.
        now = a.body.expires_at + 1;
        p.handle(now, Input::Tick);
        assert!(p.auctions().is_empty());
        assert!(p.my_bid(&a.id().unwrap()).is_some());
    }
}

/// A bid whose hold we let go of when another provider was awarded may still be awarded
/// until the hold would have lapsed (that award ended without a deal: the customer awards the
/// next bid, THREATS C32), and takes the capacity again; after that it is forgotten and a late
/// award refused (THREATS C30).
#[test]
fn a_bid_that_lost_may_be_awarded_until_its_hold_would_have_lapsed() {
    let mut c = MarketConfig {
        capacity: big_capacity(),
        ..MarketConfig::default()
    };
    c.dmu.provider.auto_bid = true;
    c.dmu.provider.stranger_share_permille = 1000;
    c.dmu.provider.hold_grace_ms = 10_000;
    let mut p = MarketState::new(signer(2), c);
    let k = signer(70);
    // A customer known to pay (nobody else's lost bids are kept).
    p.handle(0, Input::Balances(vec![(k.node_id(), 1_000_000)]));
    let lose = |p: &mut MarketState<KeySigner>, now: u64| {
        let a = AuctionBuilder::new().build(&k, now);
        let bid = sent_bid(&remote(p, now, MarketMessage::Auction(a.clone()))).unwrap();
        let close = a.body.window_closes_at;
        let other = BidBuilder::new(&a).build(&signer(71));
        let out = remote(
            p,
            close,
            MarketMessage::Award(award_for(&k, &a, &other, close + 60_000)),
        );
        assert!(rejected(&out).is_empty(), "{out:?}");
        assert!(
            !p.ledger()
                .reservations()
                .contains_key(&ReservationKey::Auction(a.id().unwrap())),
            "our hold goes at once"
        );
        (a, bid)
    };
    let awarded = |out: &[Effect]| out.iter().any(|e| matches!(e, Effect::Awarded { .. }));
    // The other award ends without a deal; ours comes within the grace: agreed, held again.
    let (a, bid) = lose(&mut p, 0);
    let close = a.body.window_closes_at;
    p.handle(close + 5_000, Input::Tick);
    let out = remote(
        &mut p,
        close + 5_000,
        MarketMessage::Award(award_for(&k, &a, &bid, close + 60_000)),
    );
    assert!(awarded(&out), "{out:?}");
    assert!(
        p.ledger()
            .reservations()
            .contains_key(&ReservationKey::Auction(a.id().unwrap()))
    );
    // Past the grace: forgotten, refused (the customer's balance fed again, so that only the
    // grace decides: a balance older than `BALANCE_MAX_AGE_MS` would forget it at once).
    p.handle(100_000, Input::Balances(vec![(k.node_id(), 1_000_000)]));
    let (a, bid) = lose(&mut p, 100_000);
    assert!(
        p.my_bid(&a.id().unwrap()).is_some(),
        "kept within the grace"
    );
    let close = a.body.window_closes_at;
    p.handle(close + 10_001, Input::Tick);
    assert!(p.my_bid(&a.id().unwrap()).is_none());
    let out = remote(
        &mut p,
        close + 10_001,
        MarketMessage::Award(award_for(&k, &a, &bid, close + 60_000)),
    );
    assert!(!awarded(&out));
    assert!(
        matches!(&rejected(&out)[..], [MarketError::UnknownBid { .. }]),
        "{out:?}"
    );
}

/// Our own slot auction leaves the nodes that relay it room for clocks that lag ours by the
/// gossip skew: a slot within the limit but less than 30 s short of it is refused here with a
/// clear error instead of being dropped on the way (review of session 52).
#[test]
fn our_own_slot_leaves_relays_the_clock_skew() {
    let mut node = MarketState::new(signer(1), MarketConfig::default());
    let limit = node.config().limits.max_slot_lead_ms;
    let now = 1_000;
    let with_slot = |start_at: u64| {
        let mut spec = AuctionBuilder::new().spec();
        spec.start_at = Some(start_at);
        spec
    };
    let out = node.handle(now, Input::CreateAuction(with_slot(now + limit - 1_000)));
    assert!(
        matches!(
            &rejected(&out)[..],
            [MarketError::Absurd {
                field: "start_at",
                ..
            }]
        ),
        "{out:?}"
    );
    assert!(node.auctions().is_empty());
    let out = node.handle(now, Input::CreateAuction(with_slot(now + limit - 30_000)));
    assert!(rejected(&out).is_empty(), "{out:?}");
    assert_eq!(node.auctions().len(), 1);
}

/// A lost bid awarded after all takes its capacity again only within the budgets of who can
/// pay: a key awarding its own auctions to a made-up provider (our holds go) and then to us
/// held all of our capacity outside them. A stranger's lost bids are forgotten at once; a
/// funded customer's come back only while it holds fewer unpaid holds than its cap (review of
/// session 52).
#[test]
fn lost_bids_awarded_later_keep_to_the_budgets_of_who_can_pay() {
    let mut c = MarketConfig {
        capacity: Resources {
            cpu_millis: 4_000,
            memory_bytes: 1 << 30,
            ..Resources::default()
        },
        ..MarketConfig::default()
    };
    c.dmu.provider.auto_bid = true;
    c.dmu.provider.max_holds_per_funded_customer = 2;
    let half = Resources {
        cpu_millis: 500,
        ..Resources::default()
    };
    let awarded = |out: &[Effect]| out.iter().any(|e| matches!(e, Effect::Awarded { .. }));
    let auction = |p: &mut MarketState<KeySigner>, k: &KeySigner, now: u64| {
        let a = AuctionBuilder::new().resources(half.clone()).build(k, now);
        let bid = sent_bid(&remote(p, now, MarketMessage::Auction(a.clone()))).expect("a bid");
        (a, bid)
    };
    for (funded, seed) in [(false, 80), (true, 81)] {
        let mut p = MarketState::new(signer(2), c.clone());
        let k = signer(seed);
        if funded {
            p.handle(0, Input::Balances(vec![(k.node_id(), 1_000_000)]));
        }
        // Two auctions bid on, both awarded to a made-up provider: our holds go.
        let lost: Vec<_> = (1..3)
            .map(|now| {
                let (a, bid) = auction(&mut p, &k, now);
                let other = BidBuilder::new(&a).build(&signer(99));
                let award = award_for(&k, &a, &other, a.body.window_closes_at + 60_000);
                assert!(rejected(&remote(&mut p, now, MarketMessage::Award(award))).is_empty());
                (a, bid)
            })
            .collect();
        assert!(p.ledger().reservations().is_empty());
        assert_eq!(
            lost.iter()
                .all(|(a, _)| p.my_bid(&a.id().unwrap()).is_some()),
            funded,
            "only a customer known to pay keeps our lost bids"
        );
        // Two more bids fill the customer's budget (a stranger's: the quarter; a funded
        // one's: its cap of two unpaid holds).
        auction(&mut p, &k, 10);
        auction(&mut p, &k, 11);
        // The lost bids, awarded to us now: refused, nothing more held.
        let before = p.ledger().reservations().len();
        for (a, bid) in &lost {
            let close = a.body.window_closes_at;
            let out = remote(
                &mut p,
                30,
                MarketMessage::Award(award_for(&k, a, bid, close + 60_000)),
            );
            assert!(!awarded(&out), "{out:?}");
            assert!(
                matches!(&rejected(&out)[..], [MarketError::UnknownBid { .. }]),
                "{out:?}"
            );
        }
        assert_eq!(p.ledger().reservations().len(), before);
    }
}

/// Lost bids (another provider was awarded) hold nothing and do not count against the bound
/// of open bids: with a book of one auction, a lost bid leaves room for the next bid (review
/// of session 52).
#[test]
fn lost_bids_leave_room_for_open_ones() {
    let mut c = MarketConfig {
        capacity: big_capacity(),
        ..MarketConfig::default()
    };
    c.dmu.provider.auto_bid = true;
    c.limits.max_auctions = 1;
    let mut p = MarketState::new(signer(2), c);
    let k = signer(90);
    p.handle(0, Input::Balances(vec![(k.node_id(), 1_000_000)]));
    let a = AuctionBuilder::new().build(&k, 1);
    assert!(sent_bid(&remote(&mut p, 1, MarketMessage::Auction(a.clone()))).is_some());
    let other = BidBuilder::new(&a).build(&signer(91));
    let award = award_for(&k, &a, &other, a.body.window_closes_at + 60_000);
    assert!(rejected(&remote(&mut p, 2, MarketMessage::Award(award))).is_empty());
    assert!(
        p.my_bid(&a.id().unwrap()).is_some(),
        "kept for a next-bid award"
    );
    let b = AuctionBuilder::new().build(&signer(92), 3);
    let out = remote(&mut p, 3, MarketMessage::Auction(b));
    assert!(sent_bid(&out).is_some(), "{out:?}");
}
