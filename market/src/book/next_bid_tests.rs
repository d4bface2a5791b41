//! Our awards that end without a deal, as the fourth review of session 52 and its reviews found
//! them (THREATS C32): an award accepted and never countersigned goes to the next bid too, the
//! next bid is awarded while the losers keep their bids (also on an auction that expires 30 s
//! after its window), and a provider that ended an award of ours without a deal by its own
//! choice ranks last on our later auctions: a walk-away, a counter above our maximum price, or
//! a lapse of 30 s or more of an award that bound it (review 7).
#![allow(clippy::unwrap_used)]

use super::bounds_tests::{rejected, remote};
use super::close::AWARD_MARGIN_MS;
use super::funding_tests::walk_away;
use super::*;
use crate::auction::AuctionSpec;
use crate::identity::KeySigner;
use crate::negotiation::{AgreedTerms, NegotiationAction, NegotiationBody, NegotiationStatus};
use crate::signed::Signed;
use crate::test_utils::{
    AuctionBuilder, BidBuilder, SIM_BALANCE, SimNet, big_capacity, fresh_nonce, provider_config,
    signer,
};

/// The customer's node: awards on its own, as by default.
fn customer() -> MarketState<KeySigner> {
    MarketState::new(signer(1), MarketConfig::default())
}

/// `c`'s new auction, opened at `now` (its window 10 s, its award grace 60 s), with a bid at
/// `now + 1` from each of `bids` (signer, price).
fn auction(
    c: &mut MarketState<KeySigner>,
    now: Timestamp,
    bids: &[(&KeySigner, u64)],
) -> AuctionId {
    auction_of(c, AuctionBuilder::new().spec(), now, bids)
}

/// [`auction`] of `spec`.
fn auction_of(
    c: &mut MarketState<KeySigner>,
    spec: AuctionSpec,
    now: Timestamp,
    bids: &[(&KeySigner, u64)],
) -> AuctionId {
    c.handle(now, Input::CreateAuction(spec));
    let (id, req) = c
        .auctions()
        .iter()
        .filter(|(_, e)| e.status == AuctionStatus::Open)
        .max_by_key(|(_, e)| e.request.body.window_closes_at)
        .map(|(id, e)| (*id, e.request.clone()))
        .unwrap();
    for (s, price) in bids {
        let bid = BidBuilder::new(&req).price(*price).build(*s);
        assert!(rejected(&remote(c, now + 1, MarketMessage::Bid(bid))).is_empty());
    }
    id
}

/// An auction's spec that expires `grace` ms after its window: 60 s as `agora auction create`
/// opens it (`--award-grace`; 30 s until review 7), 30 s as a fleet placement does
/// (`PLACE_AWARD_GRACE_MS`).
fn grace_spec(grace: u64) -> AuctionSpec {
    let mut spec = AuctionBuilder::new().spec();
    spec.award_grace_ms = grace;
    spec
}

/// The award and its provider in `out`, if any.
fn award_in(out: &[Effect]) -> Option<(AwardId, NodeId)> {
    out.iter().find_map(|e| match e {
        Effect::Awarded {
            award, provider, ..
        } => Some((*award, *provider)),
        _ => None,
    })
}

/// `provider`'s message accepting `award` as the customer `c` proposed it, sent at `now`.
fn accept(
    c: &MarketState<KeySigner>,
    provider: &KeySigner,
    award: AwardId,
    now: Timestamp,
) -> MarketMessage {
    let terms = c.negotiation(&award).unwrap().current_terms().id().unwrap();
    let body = NegotiationBody {
        award,
        from: provider.node_id(),
        round: 0,
        action: NegotiationAction::Accept(terms),
        nonce: fresh_nonce(),
        expires_at: now + 60_000,
    };
    MarketMessage::Negotiation(Signed::sign(body, provider).unwrap())
}

/// `provider`'s counter-offer at `price` to the award as the customer `c` proposed it, sent at
/// `now`.
fn counter(
    c: &MarketState<KeySigner>,
    provider: &KeySigner,
    award: AwardId,
    price: u64,
    now: Timestamp,
) -> MarketMessage {
    let terms = AgreedTerms {
        price,
        ..c.negotiation(&award).unwrap().current_terms().clone()
    };
    let body = NegotiationBody {
        award,
        from: provider.node_id(),
        round: 1,
        action: NegotiationAction::Counter(terms),
        nonce: fresh_nonce(),
        expires_at: now + 60_000,
    };
    MarketMessage::Negotiation(Signed::sign(body, provider).unwrap())
}

/// Fourth review of session 52 (R1, version a): a provider that accepts our award and never
/// countersigns the contract ended the auction, since the deal was agreed and no
/// `NegotiationFailed` ever came. Now the deal task says when it gives up
/// (`Input::DealFailed`) and the next bid is awarded; while the award is still being
/// negotiated the word is ignored (it may yet agree). Mutants — the input ignored: no award
/// after it; the open negotiation not checked: the runner-up awarded beside a live award.
#[test]
fn a_provider_that_agrees_and_never_countersigns_is_passed_over() {
    let mut c = customer();
    let (cheap, dear) = (signer(31), signer(32));
    auction(&mut c, 0, &[(&cheap, 100), (&dear, 200)]);
    let (award, winner) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    assert_eq!(winner, cheap.node_id());
    let failed = Input::DealFailed {
        award,
        provider: cheap.node_id(),
        fault: DealFault::Provider,
    };
    let out = c.handle(10_001, failed.clone());
    assert_eq!(award_in(&out), None, "still negotiated: {out:?}");
    let accepted = accept(&c, &cheap, award, 10_002);
    let out = remote(&mut c, 10_002, accepted);
    assert!(
        out.iter().any(|e| matches!(e, Effect::Agreed(_))),
        "{out:?}"
    );
    let out = c.handle(10_003, failed);
    assert_eq!(
        award_in(&out).map(|(_, p)| p),
        Some(dear.node_id()),
        "{out:?}"
    );
}

/// Session 54: a proposal given up on for an unclear fault (the provider stayed silent for
/// 20 s, or gave a refusal our side may have caused) or our own still awards the next bid; an
/// unclear fault is forgiven once and marks the provider the second time within the hour (two
/// funded keys that agree and go silent ended every auction unmarked: review 8, H1); our own
/// marks nobody. Mutants — every unclear fault forgiven: the silent winner wins the third
/// auction; no next bid without blame: no award at the give-up; `Ours` counted as a strike:
/// the winner loses the third auction after one unclear fault and one of ours.
#[test]
fn a_deal_given_up_goes_to_the_next_bid_and_marks_on_the_second_unclear_fault() {
    let (cheap, dear) = (signer(31), signer(32));
    let bids: [(&KeySigner, u64); 2] = [(&cheap, 100), (&dear, 200)];
    // Gives up on `cheap`'s agreed deal of an auction opened at `at`; returns who the
    // next award went to.
    let give_up = |c: &mut MarketState<KeySigner>, at: Timestamp, fault: DealFault| {
        auction(c, at, &bids);
        let (award, winner) = award_in(&c.handle(at + 10_000, Input::Tick)).unwrap();
        assert_eq!(winner, cheap.node_id(), "the cheaper bid wins at {at}");
        let accepted = accept(c, &cheap, award, at + 10_001);
        let out = remote(c, at + 10_001, accepted);
        assert!(
            out.iter().any(|e| matches!(e, Effect::Agreed(_))),
            "{out:?}"
        );
        let gave_up = Input::DealFailed {
            award,
            provider: cheap.node_id(),
            fault,
        };
        award_in(&c.handle(at + 30_001, gave_up)).map(|(_, p)| p)
    };
    let first_award = |c: &mut MarketState<KeySigner>, at: Timestamp| {
        auction(c, at, &bids);
        award_in(&c.handle(at + 10_000, Input::Tick)).map(|(_, p)| p)
    };
    let mut c = customer();
    assert_eq!(give_up(&mut c, 0, DealFault::Ours), Some(dear.node_id()));
    assert_eq!(
        give_up(&mut c, 100_000, DealFault::Unclear),
        Some(dear.node_id())
    );
    assert_eq!(
        first_award(&mut c, 200_000),
        Some(cheap.node_id()),
        "one strike is forgiven"
    );
    let mut c = customer();
    give_up(&mut c, 0, DealFault::Unclear);
    give_up(&mut c, 100_000, DealFault::Unclear);
    assert_eq!(
        first_award(&mut c, 200_000),
        Some(dear.node_id()),
        "two strikes mark"
    );
}

/// Review 10 H1: keys are free, so a key made for an auction had its first unclear fault
/// forgiven for free; a provider known funded for less than `SEASONED_MS` without a break
/// ranks below the established providers of its balance tier (above walkers), and with them
/// once its balance has stayed an hour; a gap in its feeds longer than `BALANCE_MAX_AGE_MS`
/// (drained, not pushed) restarts the hour (review 11 H1). Mutants — `seasoned` left out of
/// the tier: the fresh key wins on price at once; no restart after a gap: the key fed once an
/// hour ago wins.
#[test]
fn a_key_funded_within_the_hour_ranks_below_established_providers() {
    let mut c = customer();
    let (old, fresh, hopper) = (signer(31), signer(32), signer(33));
    let rich = 1_000_000;
    let t = super::funding::SEASONED_MS;
    // Every 5 s (as the push): `old` from 0, `fresh` and `hopper` from `t`; `hopper` was also
    // fed once at 0 (funded then, drained and not pushed since).
    c.handle(0, Input::Balances(vec![(hopper.node_id(), rich)]));
    let feed = |c: &mut MarketState<KeySigner>, at: Timestamp| {
        let mut fed = vec![(old.node_id(), rich)];
        if at >= t {
            fed.push((fresh.node_id(), rich));
            fed.push((hopper.node_id(), rich));
        }
        c.handle(at, Input::Balances(fed));
    };
    // Who wins `rival`'s 1-token bid against `old`'s 500, in an auction opened at `at`.
    let winner = |c: &mut MarketState<KeySigner>, at: Timestamp, rival: &KeySigner| {
        let bids: [(&KeySigner, u64); 2] = [(rival, 1), (&old, 500)];
        auction(c, at + 1, &bids);
        feed(c, at + 5_000);
        feed(c, at + 10_000);
        award_in(&c.handle(at + 10_002, Input::Tick)).map(|(_, p)| p)
    };
    let mut at = 0;
    while at <= t + 10_000 {
        feed(&mut c, at);
        at += 5_000;
    }
    assert_eq!(
        winner(&mut c, at, &fresh),
        Some(old.node_id()),
        "fresh: below"
    );
    assert_eq!(
        winner(&mut c, at + 15_000, &hopper),
        Some(old.node_id()),
        "hopper: below"
    );
    at += 30_000;
    while at <= 2 * t + 10_000 {
        feed(&mut c, at);
        at += 5_000;
    }
    // An hour on, fed all along, it ranks by its bid again.
    assert_eq!(
        winner(&mut c, at, &fresh),
        Some(fresh.node_id()),
        "fresh: an hour on"
    );
}

/// Fourth review of session 52 (R1, version b): a provider that walked away from, let lapse or
/// never countersigned an award of ours ranks last on our auctions for `WALKER_TTL_MS`, so a
/// funded key that wins on score and never deals costs each customer one try an hour, not one
/// per auction; after that it ranks by its bid again. Mutants — nothing remembered across
/// auctions: the walker wins the second auction on price; never forgotten: it loses the third.
#[test]
fn a_walker_ranks_last_on_our_next_auction() {
    let mut c = customer();
    let (walker, honest) = (signer(31), signer(32));
    let bids: [(&KeySigner, u64); 2] = [(&walker, 1), (&honest, 500)];
    auction(&mut c, 0, &bids);
    let (award, winner) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    assert_eq!(winner, walker.node_id(), "the cheaper bid wins");
    let out = remote(&mut c, 10_001, walk_away(&walker, award, 10_001));
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(honest.node_id()));
    // Our next auction: the honest bid is awarded first.
    auction(&mut c, 20_000, &bids);
    let out = c.handle(30_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(honest.node_id()));
    // An hour after it walked away, it ranks by its bid again.
    let later = 10_001 + super::funding::WALKER_TTL_MS - 10_000;
    auction(&mut c, later, &bids);
    let out = c.handle(later + 10_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(walker.node_id()));
}

/// Review of the fourth review: a walker ranked below every bidder, also below keys known not
/// to pay, so an honest provider marked for a refusal it had to make lost to a free key's
/// 1-token bid for an hour. Now it ranks last only among bidders whose balance covers as much
/// as its own. Mutant — walkers below all (as the fourth review had it): the free key wins.
#[test]
fn a_funded_walker_still_outranks_a_key_known_not_to_pay() {
    let mut c = customer();
    let (walker, honest, free) = (signer(33), signer(34), signer(35));
    auction(&mut c, 0, &[(&walker, 1), (&honest, 500)]);
    let (award, winner) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    assert_eq!(winner, walker.node_id());
    remote(&mut c, 10_001, walk_away(&walker, award, 10_001));
    c.handle(
        20_000,
        Input::Balances(vec![(walker.node_id(), 1_000_000), (free.node_id(), 0)]),
    );
    auction(&mut c, 20_000, &[(&walker, 400), (&free, 1)]);
    let out = c.handle(30_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(walker.node_id()));
}

/// The awards node 0 of `net` sent: to whom, and when each lapses.
fn awards_sent(net: &SimNet) -> Vec<(NodeId, Timestamp)> {
    net.effects_of(0)
        .filter_map(|e| match e {
            Effect::Send {
                to,
                msg: MarketMessage::Award(a),
            } => Some((*to, a.body.expires_at)),
            _ => None,
        })
        .collect()
}

/// On a `SimNet`, a customer (node 0) opens an auction expiring `grace` after its window, bid
/// on by a cheap provider that never answers its award (node 1) and a dear one (node 2). The
/// cheap bid is awarded and lapses; the dear one is awarded at the lapse, while it keeps its
/// bid, and agrees; then the customer opens a second auction, closed 10 s later. Returns the
/// awards node 0 sent (the second auction's last) and the two providers.
fn a_silent_winner(grace: u64) -> (Vec<(NodeId, Timestamp)>, NodeId, NodeId) {
    let mut silent = provider_config(big_capacity());
    silent.dmu.provider.auto_accept_award = false;
    let mut dear = provider_config(big_capacity());
    dear.dmu.provider.per_millicore_hour = 500;
    let mut net = SimNet::new(vec![MarketConfig::default(), silent, dear]);
    let (silent, dear) = (net.nodes[1].node_id(), net.nodes[2].node_id());
    net.input(0, 0, Input::CreateAuction(grace_spec(grace)));
    net.input(10_000, 0, Input::Tick);
    let lapse = awards_sent(&net)[0].1;
    // The runner-up takes an award of its lost bid on a balance fed within 30 s, as the node's
    // feed keeps it.
    let customer = net.nodes[0].node_id();
    net.input(lapse, 2, Input::Balances(vec![(customer, SIM_BALANCE)]));
    net.input(lapse, 0, Input::Tick);
    let agreed: Vec<NodeId> = net.agreed(0).iter().map(|t| t.provider).collect();
    assert_eq!(agreed, vec![dear], "{:?}", net.log);
    assert_eq!(net.agreed(2).len(), 1);
    net.input(lapse + 10_000, 0, Input::CreateAuction(grace_spec(grace)));
    net.input(lapse + 20_000, 0, Input::Tick);
    let awards = awards_sent(&net);
    assert_eq!(awards.len(), 3, "{awards:?}");
    (awards, silent, dear)
}

/// Review of the fourth review (H1): an auction of the CLI's expired 30 s after its window,
/// and our award lapsed after 30 s, no sooner: a winner that let its award lapse cost the
/// auction its award, since the tick dropped the auction before the lapse awarded the next
/// bid, and it was marked nowhere. Since review 7 (M2) the CLI's auctions expire 60 s after
/// their window: the award lapses after 30 s, 10 s before the losers' holds end with room for
/// the next bid, the runner-up is awarded while it still keeps its bid and agrees, and the
/// winner that let the award lapse ranks last on the customer's next auction. Mutants — no
/// walker marked where the award ends (`note_failed_award` empty), or a lapse of exactly
/// `MIN_MARKING_LAPSE_MS` not counted (`>` for `>=`): the silent winner wins the next auction.
#[test]
fn a_lapsed_award_of_a_cli_auction_goes_to_the_next_bid() {
    let (awards, silent, dear) = a_silent_winner(60_000);
    assert_eq!(awards[..2], [(silent, 40_000), (dear, 100_000)]);
    assert_eq!(awards[2].0, dear, "the silent winner ranks last");
}

/// Review 7 (M2): an auction expiring 30 s after its window (the CLI's until review 7) gives its
/// first award 20 s when another bid could be awarded next, so that the next bid is awarded while
/// the losers keep their bids, and a provider whose accept took longer (a loaded market task, a
/// relay dial, an operator answering by hand) was marked for an hour. A lapse under
/// `MIN_MARKING_LAPSE_MS` (30 s) now marks nobody: the next bid is still awarded, and the slow
/// winner wins the customer's next auction on price. Mutant — the lapse's length left out (a lapse
/// marking whenever the award bound it, as at 94e7ef4): the runner-up wins it.
#[test]
fn a_short_lapse_does_not_mark_a_slow_provider() {
    let (awards, silent, dear) = a_silent_winner(30_000);
    assert_eq!(awards[..2], [(silent, 30_000), (dear, 90_000)]);
    assert_eq!(awards[2].0, silent, "a 20 s lapse marks nobody");
}

/// Our awarded auction stays in the book past its expiry while its award is negotiated, or agreed
/// until the award's expiry: the deal task builds the award's contract from it (the service image,
/// the slot), and a sole bid's award has the whole timeout (60 s), longer than the 30 s a fleet
/// placement's auction lasts after its window. It leaves at the first tick once the deal is
/// forgotten. Mutant — the expiry as at 10c906d: gone at 45 s, before the provider agreed.
#[test]
fn our_awarded_auction_stays_while_its_award_is_negotiated() {
    let mut c = customer();
    let sole = signer(46);
    let id = auction_of(&mut c, grace_spec(30_000), 0, &[(&sole, 100)]);
    let (award, _) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    let lapse = c.negotiation(&award).unwrap().deadline();
    assert_eq!(lapse, 70_000, "a sole bid's award has the whole timeout");
    c.handle(45_000, Input::Tick);
    assert!(c.auction(&id).is_some(), "past its expiry (40 s), awarded");
    let accepted = accept(&c, &sole, award, 45_001);
    let out = remote(&mut c, 45_001, accepted);
    assert!(
        out.iter().any(|e| matches!(e, Effect::Agreed(_))),
        "{out:?}"
    );
    c.handle(lapse, Input::Tick);
    assert!(c.auction(&id).is_some(), "kept until the award's expiry");
    c.handle(lapse + 1, Input::Tick);
    assert!(c.auction(&id).is_none());
}

/// Review of the fourth review (M1): a next bid awarded once the losers had let go of their
/// bids reached a provider that had forgotten its bid; it refused without a word, the award
/// lapsed and the honest provider was marked a walker. Now no next bid is awarded later than
/// `AWARD_MARGIN_MS` before the losers' holds end (the auction's expiry here, 70 s: its award
/// grace is shorter than the hold grace). Mutant — `award_next` as at 10c906d: the runner-up is
/// awarded a millisecond later too.
#[test]
fn no_next_bid_once_the_losers_have_let_go() {
    let (cheap, dear) = (signer(36), signer(37));
    // The winner agrees, and the deal task gives up on its contract at `at`.
    let next_at = |at: Timestamp| {
        let mut c = customer();
        auction(&mut c, 0, &[(&cheap, 100), (&dear, 200)]);
        let (award, _) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
        let accepted = accept(&c, &cheap, award, 10_001);
        let out = remote(&mut c, 10_001, accepted);
        assert!(out.iter().any(|e| matches!(e, Effect::Agreed(_))));
        let failed = Input::DealFailed {
            award,
            provider: cheap.node_id(),
            fault: DealFault::Provider,
        };
        award_in(&c.handle(at, failed)).map(|(_, p)| p)
    };
    let holds_end = 70_000;
    assert_eq!(next_at(holds_end - AWARD_MARGIN_MS), Some(dear.node_id()));
    assert_eq!(next_at(holds_end - AWARD_MARGIN_MS + 1), None);
}

/// Review of the fourth review (M1): every award of ours that ended without a deal marked its
/// provider a walker, also a next bid's (its provider had let go of its hold, and refuses
/// without a word when its capacity went to another customer meanwhile). Now a lapse marks its
/// provider only when the award bound it (the auction's first, sent while it held its bid).
/// Mutant — every failure marked (as at 10c906d, in `award_next`): the next bid's provider
/// loses the next auction. (The second half of this test, a counter above our maximum left to
/// lapse marking nobody, was review 7's H1: `a_counter_above_our_maximum_is_a_walk_away`.)
#[test]
fn only_a_provider_whose_choice_it_was_is_marked() {
    // The winner walks away (marked); the next bid's award lapses (not marked).
    let mut c = customer();
    let (first, next, last) = (signer(41), signer(42), signer(43));
    auction(&mut c, 0, &[(&first, 100), (&next, 200), (&last, 300)]);
    let (award, _) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    let out = remote(&mut c, 10_001, walk_away(&first, award, 10_001));
    let (award, p) = award_in(&out).unwrap();
    assert_eq!(p, next.node_id());
    let lapse = c.negotiation(&award).unwrap().deadline();
    let out = c.handle(lapse, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(last.node_id()));
    auction(&mut c, lapse, &[(&next, 200), (&last, 300)]);
    let out = c.handle(lapse + 10_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(next.node_id()));
}

/// Review 7 (M1): a next bid's provider was never marked, even when it walked away, so a second
/// funded key bidding just behind the first killed the only next bid a CLI auction had, for
/// good. Walking away is a signed act (an honest provider that can no longer take a next bid's
/// award refuses it without a word), so it now marks the provider of any award of ours.
/// Mutant — a walk-away marking only when the award bound it (as at 94e7ef4): `next` wins the
/// customer's next auction.
#[test]
fn a_next_bid_that_walks_away_is_marked() {
    let mut c = customer();
    let (first, next, last) = (signer(41), signer(42), signer(43));
    auction(&mut c, 0, &[(&first, 100), (&next, 200), (&last, 300)]);
    let (award, _) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    let out = remote(&mut c, 10_001, walk_away(&first, award, 10_001));
    let (award, p) = award_in(&out).unwrap();
    assert_eq!(p, next.node_id());
    let out = remote(&mut c, 10_002, walk_away(&next, award, 10_002));
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(last.node_id()));
    auction(&mut c, 20_000, &[(&next, 200), (&last, 300)]);
    let out = c.handle(30_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(last.node_id()));
}

/// Review 7 (H1): a winner that countered above our maximum price was never marked (the lapse
/// of its counter, left unanswered, was taken for ours), and the next bid waited for that
/// lapse: one funded key that wins on score and counters above the maximum cost every auction
/// of ours its first award, and with a second key just behind it the auction its deal. Now,
/// with `accept_counter_within_max`, such a counter is the provider's refusal: we walk away,
/// the next bid is awarded at once, and the counterer ranks last on our next auction. With no
/// next bid the counter waits for an answer by hand, and if it lapses unanswered the counterer
/// is marked all the same. Mutants — the counter left to lapse (as at 94e7ef4): no award at the
/// counter; refused without a mark: the counterer wins the next auction; its lapse marking
/// nobody (`note_failed_award` as at 94e7ef4): the sole counterer wins the next auction.
#[test]
fn a_counter_above_our_maximum_is_a_walk_away() {
    let mut c = customer();
    let (counters, other) = (signer(44), signer(45));
    let bids: [(&KeySigner, u64); 2] = [(&counters, 100), (&other, 200)];
    auction(&mut c, 0, &bids);
    let (award, p) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    assert_eq!(p, counters.node_id());
    let max = AuctionBuilder::new().spec().max_price;
    let countered = counter(&c, &counters, award, max + 1, 10_001);
    let out = remote(&mut c, 10_001, countered);
    assert_eq!(
        award_in(&out).map(|(_, p)| p),
        Some(other.node_id()),
        "{out:?}"
    );
    let walked_away = out.iter().any(|e| match e {
        Effect::Send {
            to,
            msg: MarketMessage::Negotiation(m),
        } => *to == counters.node_id() && m.body.action == NegotiationAction::WalkAway,
        _ => false,
    });
    assert!(walked_away, "we walk away from the counter: {out:?}");
    auction(&mut c, 20_000, &bids);
    let out = c.handle(30_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(other.node_id()));

    // A sole bid: the counter waits for an answer, and lapses unanswered.
    let mut c = customer();
    auction(&mut c, 0, &[(&counters, 100)]);
    let (award, _) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    let countered = counter(&c, &counters, award, max + 1, 10_001);
    let out = remote(&mut c, 10_001, countered);
    assert!(
        out.iter().any(|e| matches!(e, Effect::Proposed(_))),
        "{out:?}"
    );
    let n = c.negotiation(&award).unwrap();
    assert_eq!(*n.status(), NegotiationStatus::Open);
    let lapse = n.deadline();
    c.handle(lapse, Input::Tick);
    auction(&mut c, lapse, &bids);
    let out = c.handle(lapse + 10_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(other.node_id()));
}

/// Review 7 (L1): an award binds its provider only if sent `AWARD_MARGIN_MS` or more before
/// the losers' holds end; sent later (a late close tick), it may reach the provider after its
/// hold and its book's copy of the auction are gone, and be refused without a word. Here the
/// first award is sent 4 s before the holds end (the auction's expiry, 70 s): no next bid fits,
/// so it has the whole timeout, and its lapse marks nobody: the silent winner wins the
/// customer's next auction. Mutant — an award binding whenever nobody was passed over (the
/// time left out of `award_binds`): the runner-up wins it.
#[test]
fn a_first_award_sent_as_the_holds_end_binds_nobody() {
    let mut c = customer();
    let (silent, other) = (signer(47), signer(48));
    let bids: [(&KeySigner, u64); 2] = [(&silent, 100), (&other, 200)];
    auction(&mut c, 0, &bids);
    let late = 70_000 - AWARD_MARGIN_MS + 1_000;
    let (award, p) = award_in(&c.handle(late, Input::Tick)).unwrap();
    assert_eq!(p, silent.node_id());
    let lapse = c.negotiation(&award).unwrap().deadline();
    assert_eq!(lapse, late + 60_000, "no next bid fits: the whole timeout");
    let out = c.handle(lapse, Input::Tick);
    assert_eq!(award_in(&out), None, "the losers let go of their bids");
    auction(&mut c, lapse, &bids);
    let out = c.handle(lapse + 10_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(silent.node_id()));
}

/// Review 7 (L1): an auction expiring less than 20 s after its window leaves no room for a next
/// bid, so its award has the whole timeout and lapses long after the auction expired (25 s
/// here). The auction is kept while the award is negotiated, and the lapse still marks the
/// silent winner, judged from the deal: it loses the customer's next auction to the runner-up.
/// Mutants — whether the award binds judged as it lapses (`award_binds` at that time, past the
/// holds' end): nobody is marked; the mark made in `award_next` behind its cut-off (as at
/// 10c906d, behind the auction's lookup): nobody is marked.
#[test]
fn a_lapse_past_the_auctions_expiry_still_marks() {
    let mut c = customer();
    let (silent, other) = (signer(49), signer(50));
    let bids: [(&KeySigner, u64); 2] = [(&silent, 100), (&other, 200)];
    let id = auction_of(&mut c, grace_spec(15_000), 0, &bids);
    let (award, p) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    assert_eq!(p, silent.node_id());
    let lapse = c.negotiation(&award).unwrap().deadline();
    assert_eq!(lapse, 70_000, "no next bid fits: the whole timeout");
    c.handle(30_000, Input::Tick);
    assert!(c.auction(&id).is_some(), "past its expiry (25 s), awarded");
    let out = c.handle(lapse, Input::Tick);
    assert_eq!(award_in(&out), None, "the losers let go of their bids");
    auction(&mut c, lapse, &bids);
    let out = c.handle(lapse + 10_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(other.node_id()));
}
