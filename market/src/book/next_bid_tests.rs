//! Our awards that end without a deal, as the fourth review of session 52 found them (THREATS
//! C32): an award accepted and never countersigned goes to the next bid too, and a provider
//! that ended an award of ours without a deal ranks last on our later auctions.
#![allow(clippy::unwrap_used)]

use super::bounds_tests::{rejected, remote};
use super::funding_tests::walk_away;
use super::*;
use crate::identity::KeySigner;
use crate::negotiation::{NegotiationAction, NegotiationBody};
use crate::signed::Signed;
use crate::test_utils::{AuctionBuilder, BidBuilder, fresh_nonce, signer};

/// The customer's node: awards on its own, as by default.
fn customer() -> MarketState<KeySigner> {
    MarketState::new(signer(1), MarketConfig::default())
}

/// `c`'s new auction, opened at `now` (its window 10 s), with a bid at `now + 1` from each of
/// `bids` (signer, price).
fn auction(c: &mut MarketState<KeySigner>, now: Timestamp, bids: &[(&KeySigner, u64)]) {
    c.handle(now, Input::CreateAuction(AuctionBuilder::new().spec()));
    let req = c
        .auctions()
        .values()
        .filter(|e| e.status == AuctionStatus::Open)
        .max_by_key(|e| e.request.body.window_closes_at)
        .unwrap()
        .request
        .clone();
    for (s, price) in bids {
        let bid = BidBuilder::new(&req).price(*price).build(*s);
        assert!(rejected(&remote(c, now + 1, MarketMessage::Bid(bid))).is_empty());
    }
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
