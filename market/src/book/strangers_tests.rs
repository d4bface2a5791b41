//! Free keys' entries against an honest customer's (THREATS C31, found by the second review of
//! session 52): the auctions waiting for their customer's balance, the fed balances, the
//! balances asked for and the auction book's eviction. Keys are free, so none of these may let
//! strangers push out what an honest customer needs.
#![allow(clippy::unwrap_used)]

use super::bounds_tests::{rejected, remote, sent_bid};
use super::*;
use crate::identity::KeySigner;
use crate::test_utils::{AuctionBuilder, big_capacity, provider_config, signer};

/// Two of `big_capacity`'s four cores: more than the strangers' quarter, so an auction asking
/// it from a customer not known to pay is declined and waits for its customer's balance.
fn two_cores() -> Resources {
    Resources {
        cpu_millis: 2_000,
        ..Resources::default()
    }
}

/// `k`'s auction for two cores, opened at `now`, its window a minute long.
fn big_auction(k: &KeySigner, now: Timestamp) -> AuctionRequest {
    AuctionBuilder::new()
        .resources(two_cores())
        .window_ms(60_000)
        .build(k, now)
}

/// 4,096 free keys' auctions, each declined for want of a balance, do not stop an honest
/// customer's auction from being bid on once its balance is known. The auctions waiting for a
/// balance are those of the book, dropped with them; before, they were a set with a bound of
/// its own (4,096), cleared of gone auctions only at the tick, so free keys' auctions passing
/// through a full book between two ticks filled it and the honest auction was not remembered.
/// Mutants — the set as at c2f4acb (its own bound, an evicted auction left in it until the
/// tick): no bid; eviction alone leaving the auction in the set: the check after every input
/// (`awaiting_in_book`) fails at the first eviction.
#[test]
fn free_keys_auctions_do_not_stop_an_honest_one_being_bid_on_once_its_balance_is_known() {
    const FREE: u64 = 4_096;
    let mut cfg = provider_config(big_capacity());
    cfg.limits.max_auctions = 8;
    let mut p = MarketState::new(signer(2), cfg);
    for seed in 0..FREE {
        let out = remote(
            &mut p,
            0,
            MarketMessage::Auction(big_auction(&signer(10_000 + seed), 0)),
        );
        assert!(rejected(&out).is_empty(), "{out:?}");
        assert!(sent_bid(&out).is_none(), "{out:?}");
    }
    let counters = p.book_stats().counters;
    assert_eq!(counters.auto_bids_declined, FREE);
    assert_eq!(counters.auctions_evicted, FREE - 8);
    let honest = signer(3);
    let a = big_auction(&honest, 1);
    let out = remote(&mut p, 1, MarketMessage::Auction(a.clone()));
    assert!(rejected(&out).is_empty(), "{out:?}");
    assert!(
        sent_bid(&out).is_none(),
        "a stranger's until its balance is known"
    );
    assert!(p.balances_wanted(1, 256).contains(&honest.node_id()));
    let out = p.handle(2, Input::Balances(vec![(honest.node_id(), 1_000_000)]));
    let bid = sent_bid(&out).expect("a bid once its customer's balance is known");
    assert_eq!(bid.body.auction, a.id().unwrap());
}

/// The fed balances (at most `MAX_BALANCES`) give way in an order that keeps the funded ones:
/// balances of 0 first, oldest first, then the oldest of the rest. Each free key the node is
/// asked about is fed as 0, and by age alone 4,096 of them pushed out an honest customer's
/// balance, which then counted as a stranger's until asked for again (and its bids ranked with
/// the unknown, C32). Mutant — the oldest first whatever the balance (as at c2f4acb): the
/// honest customer's balance is gone.
#[test]
fn funded_balances_outlast_free_keys_fed_as_zero() {
    let mut p = MarketState::new(signer(2), MarketConfig::default());
    let honest = signer(3).node_id();
    p.handle(0, Input::Balances(vec![(honest, 1_000_000)]));
    let node = |fill: u8, i: u64| {
        let mut b = [fill; 32];
        b[..8].copy_from_slice(&i.to_be_bytes());
        NodeId(b)
    };
    // As the feed answers the market: 256 a poll.
    let per_poll = 256;
    let polls = (MAX_BALANCES / per_poll) as u64;
    for poll in 0..polls {
        let first = poll * per_poll as u64;
        let zeros = (first..first + per_poll as u64)
            .map(|i| (node(0xf0, i), 0))
            .collect();
        p.handle(1 + poll, Input::Balances(zeros));
    }
    assert_eq!(p.known_balance(&honest), Some(1_000_000));
    // One balance too many: the oldest 0 went, counted.
    assert_eq!(p.known_balance(&node(0xf0, 0)), None);
    assert_eq!(p.known_balance(&node(0xf0, 1)), Some(0));
    assert_eq!(p.book_stats().counters.balances_dropped, 1);
    // Funded balances give way only to one another, the oldest first, once no 0 is left.
    let funded: Vec<(NodeId, u64)> = (0..MAX_BALANCES as u64)
        .map(|i| (node(0x0f, i), 5))
        .collect();
    p.handle(100, Input::Balances(funded.clone()));
    assert_eq!(p.known_balance(&honest), None);
    assert!(funded.iter().all(|(n, _)| p.known_balance(n) == Some(5)));
    assert_eq!(
        p.book_stats().counters.balances_dropped,
        1 + MAX_BALANCES as u64
    );
}

/// Accounts last fed as 0 are asked for after every other balance the book would like. Free
/// keys are fed as 0 and asked for again every `BALANCE_TTL_MS` while their auctions wait in
/// the book, first in the order, so a few hundred of them came before an honest customer's
/// balance in every poll. Mutant — the order of the wishes alone (as at c2f4acb): the three
/// free keys fill a poll of three.
#[test]
fn balances_of_keys_fed_as_zero_are_asked_for_last() {
    let mut p = MarketState::new(signer(2), provider_config(big_capacity()));
    let free: Vec<KeySigner> = (30..33).map(signer).collect();
    for k in &free {
        let out = remote(&mut p, 0, MarketMessage::Auction(big_auction(k, 0)));
        assert!(sent_bid(&out).is_none(), "{out:?}");
    }
    p.handle(
        1,
        Input::Balances(free.iter().map(|k| (k.node_id(), 0)).collect()),
    );
    // An honest customer's auction fits the strangers' share: bid on, its balance wanted.
    let now = 1 + BALANCE_TTL_MS;
    let honest = signer(3);
    let a = AuctionBuilder::new().window_ms(60_000).build(&honest, now);
    assert!(sent_bid(&remote(&mut p, now, MarketMessage::Auction(a))).is_some());
    let wanted = p.balances_wanted(now, free.len());
    assert_eq!(wanted.len(), free.len());
    assert_eq!(wanted[0], honest.node_id(), "{wanted:?}");
    // With room, the free keys are asked for too.
    assert_eq!(p.balances_wanted(now, 8).len(), free.len() + 1);
}

/// A full book lets the auctions of customers known not to pay (fed as 0) go first, then
/// those of customers whose balance is unknown, and a funded customer's only for another
/// funded customer's holding fewer. Keys are free: by count and expiry alone a new key with one
/// auction evicted an honest customer's soonest-expiring one, and with it that auction's wait
/// for its customer's balance. Mutants — the eviction as at c2f4acb: the funded customer's
/// auction, which expires first, is evicted; the rank left out of the order alone: the new key
/// is refused; left out of the test for giving way alone: the funded customer's second auction
/// is refused, as the free keys hold as many.
#[test]
fn free_keys_auctions_give_way_before_a_funded_customer_s() {
    let mut cfg = MarketConfig::default();
    cfg.limits.max_auctions = 4;
    let mut p = MarketState::new(signer(2), cfg);
    let funded = signer(3);
    let free: Vec<KeySigner> = (20..24).map(signer).collect();
    let mut fed: Vec<(NodeId, u64)> = free.iter().map(|k| (k.node_id(), 0)).collect();
    fed.push((funded.node_id(), 1_000_000));
    p.handle(0, Input::Balances(fed));
    let admit = |p: &mut MarketState<KeySigner>, k: &KeySigner, now: Timestamp| {
        let a = AuctionBuilder::new().build(k, now);
        (
            a.id().unwrap(),
            rejected(&remote(p, now, MarketMessage::Auction(a))),
        )
    };
    // The funded customer's auction expires first: by expiry alone it went first.
    let (honest, refused) = admit(&mut p, &funded, 0);
    assert!(refused.is_empty(), "{refused:?}");
    for (i, k) in free[..3].iter().enumerate() {
        assert!(admit(&mut p, k, 1 + i as u64).1.is_empty());
    }
    // A new key, its balance unknown: one of the free keys' auctions gives way.
    assert!(admit(&mut p, &signer(25), 4).1.is_empty());
    assert!(p.auction(&honest).is_some());
    assert_eq!(p.book_stats().counters.auctions_evicted, 1);
    // The funded customer's next three take the others' places.
    for now in 5..8 {
        assert!(admit(&mut p, &funded, now).1.is_empty());
    }
    assert_eq!(p.book_stats().counters.auctions_evicted, 4);
    // A free key holding none is refused, though the funded customer holds four.
    let (_, refused) = admit(&mut p, &free[3], 8);
    assert!(
        matches!(
            &refused[..],
            [MarketError::MarketFull {
                book: "auction",
                ..
            }]
        ),
        "{refused:?}"
    );
    assert_eq!(p.book_stats().counters.auctions_refused_full, 1);
}
