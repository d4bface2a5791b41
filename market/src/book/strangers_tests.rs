//! Free keys' entries against an honest customer's (THREATS C31, found by the second review of
//! session 52): the auctions waiting for their customer's balance, the fed balances, the
//! balances asked for and the auction book's eviction. Keys are free, so none of these may let
//! strangers push out what an honest customer needs.
#![allow(clippy::unwrap_used)]

use super::bounds::PROTECTED_AUCTIONS;
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
/// those of customers whose balance is unknown, and a funded customer's by rank only for
/// another funded customer's holding fewer; beyond `PROTECTED_AUCTIONS` a funded customer's
/// give way to anyone holding fewer. Keys are free: by count and expiry alone a new key with
/// one auction evicted an honest customer's soonest-expiring one, and with it that auction's
/// wait for its customer's balance. Mutants — the eviction as at c2f4acb: the funded
/// customer's auction, which expires first, is evicted; the rank left out of the order alone:
/// the new key is refused; left out of the test for giving way alone: the funded customer's
/// second auction is refused, as the free keys hold as many; the share's pass off (as at
/// 94e7ef4): the free key's first auction is refused.
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
    // Four is more than its share: a free key holding none takes the place of the funded
    // customer's soonest to expire (review of the fourth review of session 52, M2; before, it
    // was refused).
    assert!(admit(&mut p, &free[3], 8).1.is_empty());
    assert!(p.auction(&honest).is_none());
    assert_eq!(p.book_stats().counters.auctions_evicted, 5);
    // The funded customer keeps its share against the free key's next.
    let (_, refused) = admit(&mut p, &free[3], 9);
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
    assert_eq!(held_by(&p, &funded), PROTECTED_AUCTIONS);
}

/// `k`'s auctions in `p`'s book.
fn held_by(p: &MarketState<KeySigner>, k: &KeySigner) -> usize {
    p.auctions()
        .values()
        .filter(|e| e.request.body.customer == k.node_id())
        .count()
}

/// Funded keys cannot hold a full book against a customer whose balance is unknown: past
/// `PROTECTED_AUCTIONS` (3) a funded customer's open auctions give way to anyone holding fewer,
/// whatever either is known to pay. Before, a funded customer's gave way only to a funded
/// customer's, so 128 funded keys with 32 auctions each filled a book of 4,096 and every
/// customer of unknown balance was refused `MarketFull`, its auction stopped at that hop and
/// its balance never asked for (review of the fourth review of session 52, M2). Mutants — the
/// share's pass off (as at 94e7ef4): the newcomer is refused; `PROTECTED_AUCTIONS` at 4: the
/// same; at 2: the newcomer's third auction evicts one of a key holding 3.
#[test]
fn funded_keys_cannot_hold_a_full_book_against_a_newcomer() {
    let mut cfg = MarketConfig::default();
    cfg.limits.max_auctions = 8;
    cfg.limits.max_auctions_per_customer = 4;
    let mut p = MarketState::new(signer(2), cfg);
    let (a, b, c) = (signer(3), signer(4), signer(5));
    let fed = [&a, &b, &c].map(|k| (k.node_id(), 1_000_000)).to_vec();
    p.handle(0, Input::Balances(fed));
    let admit = |p: &mut MarketState<KeySigner>, k: &KeySigner, now: Timestamp| {
        let req = AuctionBuilder::new().window_ms(60_000).build(k, now);
        rejected(&remote(p, now, MarketMessage::Auction(req)))
    };
    let full = |refused: &[MarketError]| {
        matches!(
            refused,
            [MarketError::MarketFull {
                book: "auction",
                ..
            }]
        )
    };
    // Two funded keys fill the book, four auctions each.
    for now in 1..9 {
        let k = if now < 5 { &a } else { &b };
        assert!(admit(&mut p, k, now).is_empty());
    }
    assert_eq!(p.auctions().len(), 8);
    // A newcomer of unknown balance holding none gets in, in place of one of a key holding 4
    // (the soonest to expire: a's); holding 1, in place of one of b's.
    let newcomer = signer(6);
    for now in 10..12 {
        let refused = admit(&mut p, &newcomer, now);
        assert!(refused.is_empty(), "{refused:?}");
    }
    assert_eq!((held_by(&p, &a), held_by(&p, &b)), (3, 3));
    assert_eq!(held_by(&p, &newcomer), 2);
    assert_eq!(p.book_stats().counters.auctions_evicted, 2);
    // Holding 2, it is refused: nobody holds more than the share.
    assert!(full(&admit(&mut p, &newcomer, 12)[..]));
    // A funded customer's auctions still go before the newcomer's by rank...
    for now in 13..15 {
        assert!(admit(&mut p, &c, now).is_empty());
    }
    assert_eq!(held_by(&p, &newcomer), 0);
    assert_eq!(held_by(&p, &c), 2);
    // ...and a funded customer holding 2 is not evicted by a newcomer holding none.
    assert!(full(&admit(&mut p, &signer(7), 15)[..]));
    assert_eq!(
        (held_by(&p, &a), held_by(&p, &b), held_by(&p, &c)),
        (3, 3, 2)
    );
    assert_eq!(p.book_stats().counters.auctions_refused_full, 2);
}

/// A balance ranks a customer in a full book only while it is `BALANCE_MAX_AGE_MS` old or less;
/// an older one, funded or 0, ranks as unknown. Before, a balance of any age did: on a node
/// that does not auto-bid nothing asks for its customers' balances again and the feed's push
/// leaves out accounts no longer funded, so one balance moved from key to key at every push
/// kept 128 keys funded there for good (review of the fourth review of session 52, M2). Mutant
/// — the rank read from a balance of any age (as at 94e7ef4): at 31 s the funded customer still
/// ranks 2 and the newcomer of 30 s is evicted instead.
#[test]
fn a_balance_fed_long_ago_ranks_as_unknown_in_a_full_book() {
    let mut cfg = MarketConfig::default();
    cfg.limits.max_auctions = 2;
    let mut p = MarketState::new(signer(2), cfg);
    let (funded, free) = (signer(3), signer(4));
    p.handle(
        0,
        Input::Balances(vec![(funded.node_id(), 1_000_000), (free.node_id(), 0)]),
    );
    let late = BALANCE_MAX_AGE_MS + 1_000;
    assert_eq!(p.payer_rank(BALANCE_MAX_AGE_MS, &funded.node_id()), 2);
    assert_eq!(p.payer_rank(BALANCE_MAX_AGE_MS, &free.node_id()), 0);
    assert_eq!(p.payer_rank(late, &funded.node_id()), 1);
    assert_eq!(p.payer_rank(late, &free.node_id()), 1);
    let admit = |p: &mut MarketState<KeySigner>, k: &KeySigner, now: Timestamp| {
        let req = AuctionBuilder::new().window_ms(60_000).build(k, now);
        let id = req.id().unwrap();
        let refused = rejected(&remote(p, now, MarketMessage::Auction(req)));
        assert!(refused.is_empty(), "{refused:?}");
        id
    };
    let honest = admit(&mut p, &funded, 0);
    let unknown = admit(&mut p, &signer(5), 1);
    // Fed 30 s ago: funded, so the auction of unknown balance gives way.
    let newcomer = admit(&mut p, &signer(6), BALANCE_MAX_AGE_MS);
    assert!(p.auction(&unknown).is_none());
    // A second later its balance counts as unknown: the soonest to expire of two customers of
    // unknown balance, one auction each, gives way.
    admit(&mut p, &signer(7), late);
    assert!(p.auction(&honest).is_none());
    assert!(p.auction(&newcomer).is_some());
}

/// A balance of 0 fed again for a customer fed 0 before decides none of its waiting auctions
/// again: each decision scans every hold, and every poll named up to 256 free keys with 32
/// auctions each (review of the fourth review of session 52, L4). A balance that changes still
/// does. Mutant — every fed customer's auctions decided again (as at 94e7ef4): the second 0
/// counts a third declined bid.
#[test]
fn a_balance_of_0_fed_again_decides_nothing_again() {
    let mut p = MarketState::new(signer(2), provider_config(big_capacity()));
    let k = signer(30);
    let a = big_auction(&k, 0);
    assert!(sent_bid(&remote(&mut p, 0, MarketMessage::Auction(a.clone()))).is_none());
    let declined = |p: &MarketState<KeySigner>| p.book_stats().counters.auto_bids_declined;
    assert_eq!(declined(&p), 1);
    // Its first balance, 0: decided again, declined again.
    assert!(sent_bid(&p.handle(1, Input::Balances(vec![(k.node_id(), 0)]))).is_none());
    assert_eq!(declined(&p), 2);
    // 0 again: nothing to decide.
    assert!(sent_bid(&p.handle(2, Input::Balances(vec![(k.node_id(), 0)]))).is_none());
    assert_eq!(declined(&p), 2);
    // Funded since: its auction gets its bid.
    let out = p.handle(3, Input::Balances(vec![(k.node_id(), 1_000_000)]));
    let bid = sent_bid(&out).expect("a bid once the balance changed");
    assert_eq!(bid.body.auction, a.id().unwrap());
}
