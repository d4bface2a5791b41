//! Our awards that end without a deal, as the fourth review of session 52 and its review found
//! them (THREATS C32): an award accepted and never countersigned goes to the next bid too, the
//! next bid is awarded while the losers keep their bids (also on an auction that expires 30 s
//! after its window), and a provider that ended an award of ours without a deal by its own
//! choice ranks last on our later auctions.
#![allow(clippy::unwrap_used)]

use super::bounds_tests::{rejected, remote};
use super::close::AWARD_MARGIN_MS;
use super::funding_tests::walk_away;
use super::*;
use crate::auction::AuctionSpec;
use crate::identity::KeySigner;
use crate::negotiation::{AgreedTerms, NegotiationAction, NegotiationBody};
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

/// An auction's spec as `agora market auction` and a fleet placement open it: it expires 30 s
/// after its window (`--award-grace`, `PLACE_AWARD_GRACE_MS`).
fn cli_spec() -> AuctionSpec {
    let mut spec = AuctionBuilder::new().spec();
    spec.award_grace_ms = 30_000;
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

/// Review of the fourth review (H1): an auction of the CLI's or a fleet placement's expires
/// 30 s after its window, and our award lapsed after 30 s, no sooner: a winner that let its
/// award lapse cost the auction its award, since the tick dropped the auction before the lapse
/// awarded the next bid, and it was marked nowhere. Now the award lapses 10 s before the
/// losers' holds end (20 s after the close here), the runner-up is awarded while it still keeps
/// its bid and agrees, and the winner that let the award lapse ranks last on the customer's
/// next auction. Mutants — the lapse as at 10c906d (30 s): no award at 30 s, and none later;
/// no walker marked where the award ends (`note_failed_award` empty): the silent winner wins
/// the next auction.
#[test]
fn a_lapsed_award_of_a_cli_auction_goes_to_the_next_bid() {
    // Node 1 bids cheap and never answers its award; node 2 is dear.
    let mut silent = provider_config(big_capacity());
    silent.dmu.provider.auto_accept_award = false;
    let mut dear = provider_config(big_capacity());
    dear.dmu.provider.per_millicore_hour = 500;
    let mut net = SimNet::new(vec![MarketConfig::default(), silent, dear]);
    let (silent, dear) = (net.nodes[1].node_id(), net.nodes[2].node_id());
    net.input(0, 0, Input::CreateAuction(cli_spec()));
    net.input(10_000, 0, Input::Tick);
    assert_eq!(awards_sent(&net), vec![(silent, 30_000)]);
    // The losers keep their bids until the auction's expiry, 40 s. The runner-up takes an
    // award of its lost bid on a balance fed within 30 s, as the node's feed keeps it.
    let customer = net.nodes[0].node_id();
    net.input(30_000, 2, Input::Balances(vec![(customer, SIM_BALANCE)]));
    net.input(30_000, 0, Input::Tick);
    assert_eq!(awards_sent(&net)[1..], [(dear, 90_000)]);
    let agreed: Vec<NodeId> = net.agreed(0).iter().map(|t| t.provider).collect();
    assert_eq!(agreed, vec![dear], "{:?}", net.log);
    assert_eq!(net.agreed(2).len(), 1);
    // The customer's next auction: the dear bid is awarded first.
    net.input(40_000, 0, Input::CreateAuction(cli_spec()));
    net.input(50_000, 0, Input::Tick);
    assert_eq!(awards_sent(&net).last().map(|(p, _)| *p), Some(dear));
}

/// Our awarded auction stays in the book past its expiry while its award is negotiated, or
/// agreed until the award's expiry: the deal task builds the award's contract from it (the
/// service image, the slot), and a sole bid's award has the whole timeout (60 s), longer than
/// the 30 s an auction of the CLI's lasts after its window. It leaves at the first tick once
/// the deal is forgotten. Mutant — the expiry as at 10c906d: gone at 45 s, before the provider
/// agreed.
#[test]
fn our_awarded_auction_stays_while_its_award_is_negotiated() {
    let mut c = customer();
    let sole = signer(46);
    let id = auction_of(&mut c, cli_spec(), 0, &[(&sole, 100)]);
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
        };
        award_in(&c.handle(at, failed)).map(|(_, p)| p)
    };
    let holds_end = 70_000;
    assert_eq!(next_at(holds_end - AWARD_MARGIN_MS), Some(dear.node_id()));
    assert_eq!(next_at(holds_end - AWARD_MARGIN_MS + 1), None);
}

/// Review of the fourth review (M1): every award of ours that ended without a deal marked its
/// provider a walker, also a next bid's (its provider had let go of its hold, and refuses
/// without a word when its capacity went to another customer meanwhile) and a lapse of a
/// counter-offer of the provider's that we left unanswered. Now a provider is marked only when
/// ending the award was its choice: it walked away from, or left unanswered, an award that
/// bound it (the auction's first, sent while it held its bid), or it agreed and never
/// countersigned. Mutants — every failure marked (as at 10c906d, in `award_next`): the next
/// bid's provider loses the next auction; a lapse marked whoever owed the answer: the provider
/// that countered loses it.
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

    // The winner counters above our maximum price and we leave it unanswered: not marked.
    let mut c = customer();
    let (counters, other) = (signer(44), signer(45));
    auction(&mut c, 0, &[(&counters, 100), (&other, 200)]);
    let (award, p) = award_in(&c.handle(10_000, Input::Tick)).unwrap();
    assert_eq!(p, counters.node_id());
    let countered = counter(&c, &counters, award, 5_000, 10_001);
    let out = remote(&mut c, 10_001, countered);
    assert!(
        out.iter().any(|e| matches!(e, Effect::Proposed(_))),
        "{out:?}"
    );
    let lapse = c.negotiation(&award).unwrap().deadline();
    let out = c.handle(lapse, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(other.node_id()));
    auction(&mut c, lapse, &[(&counters, 100), (&other, 200)]);
    let out = c.handle(lapse + 10_000, Input::Tick);
    assert_eq!(award_in(&out).map(|(_, p)| p), Some(counters.node_id()));
}
