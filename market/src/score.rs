//! Winner selection: a documented, deterministic score over valid bids.
//!
//! Each component is an integer in 0..=1000 (higher is better):
//! - price: `(max_price - price) * 1000 / max_price` (cheaper is better, normalised to max_price);
//! - reputation: the bidder's reputation permille as the customer's ledger knows it, else the
//!   bid's own claim up to the neutral 500 (a claim above it gains nothing, THREATS P6);
//! - distance: `1000 - distance * 1000 / max_km` when the auction has `near`, else 1000;
//! - capability: headroom, `1000 - mean(need * 1000 / capacity)` over the requested
//!   cpu/memory/storage/bandwidth dimensions (a provider with more spare room scores higher).
//!
//! `total = Σ weight_i * component_i`. The winner has the highest total; ties go to the lowest
//! price, then the lowest bid id bytes. The order is total, so the outcome never depends on the
//! order in which bids arrived. Bids that violate a constraint are never considered.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::auction::{AuctionRequest, Bid};
use crate::ids::{AuctionId, BidId};
use crate::validate::check_bid_constraints;

/// Weights of the score components (see module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScoreWeights {
    /// Weight of the price component.
    pub price: u32,
    /// Weight of the reputation component.
    pub reputation: u32,
    /// Weight of the distance component.
    pub distance: u32,
    /// Weight of the capability-headroom component.
    pub capability: u32,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            price: 60,
            reputation: 20,
            distance: 10,
            capability: 10,
        }
    }
}

/// The components and total of one bid's score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidScore {
    /// The bid.
    pub bid: BidId,
    /// Its price (first tie-breaker).
    pub price: u64,
    /// Price component, 0..=1000.
    pub price_part: u32,
    /// Reputation component, 0..=1000.
    pub reputation_part: u32,
    /// Distance component, 0..=1000.
    pub distance_part: u32,
    /// Capability component, 0..=1000.
    pub capability_part: u32,
    /// Weighted total.
    pub total: u64,
}

impl BidScore {
    /// Ordering where `Greater` means "better bid": higher total, then lower price, then lower id.
    pub fn rank(&self, other: &BidScore) -> Ordering {
        self.total
            .cmp(&other.total)
            .then_with(|| other.price.cmp(&self.price))
            .then_with(|| other.bid.cmp(&self.bid))
    }
}

fn ratio_permille(num: u64, den: u64) -> u32 {
    if den == 0 {
        return 0;
    }
    let v = u128::from(num) * 1000 / u128::from(den);
    u32::try_from(v.min(1000)).unwrap_or(1000)
}

/// The reputation a bidder the customer knows nothing about is scored with: what an honest
/// node claims by default. A bid's own claim counts only up to it, so claiming more gains
/// nothing (THREATS P6); what the customer's ledger says of the bidder replaces it
/// ([`score_bid_known`]).
pub const NEUTRAL_REPUTATION: u16 = 500;

/// Scores a bid that already passed `check_bid_constraints` against `auction`, with no
/// knowledge of the bidder's reputation.
pub fn score_bid(auction: &AuctionRequest, bid_id: BidId, bid: &Bid, w: &ScoreWeights) -> BidScore {
    score_bid_known(auction, bid_id, bid, w, None)
}

/// [`score_bid`] with the bidder's reputation as the customer knows it (its ledger's word),
/// if it does; otherwise the bid's claim up to [`NEUTRAL_REPUTATION`].
pub fn score_bid_known(
    auction: &AuctionRequest,
    bid_id: BidId,
    bid: &Bid,
    w: &ScoreWeights,
    known: Option<u16>,
) -> BidScore {
    let (a, b) = (&auction.body, &bid.body);
    let price_part = ratio_permille(a.max_price.saturating_sub(b.price), a.max_price);
    let reputation = known.unwrap_or(b.reputation_permille.min(NEUTRAL_REPUTATION));
    let reputation_part = u32::from(reputation.min(1000));
    let distance_part = match (&a.near, &b.location) {
        (Some(near), Some(loc)) => {
            // Whole metres keep the component an integer.
            let d_m = (near.center.distance_km(loc) * 1000.0).max(0.0) as u64;
            let max_m = (near.max_km * 1000.0).max(1.0) as u64;
            1000 - ratio_permille(d_m, max_m)
        }
        (Some(_), None) => 0,
        (None, _) => 1000,
    };
    let need = &a.resources;
    let cap = &b.capacity;
    let dims = [
        (need.cpu_millis, cap.cpu_millis),
        (need.memory_bytes, cap.memory_bytes),
        (need.storage_bytes, cap.storage_bytes),
        (need.bandwidth_bps, cap.bandwidth_bps),
    ];
    let (sum, n) = dims
        .iter()
        .filter(|(need, _)| *need > 0)
        .fold((0u32, 0u32), |(s, n), (need, cap)| {
            (s + ratio_permille(*need, *cap), n + 1)
        });
    let capability_part = sum.checked_div(n).map_or(1000, |mean| 1000 - mean);
    let total = u64::from(w.price) * u64::from(price_part)
        + u64::from(w.reputation) * u64::from(reputation_part)
        + u64::from(w.distance) * u64::from(distance_part)
        + u64::from(w.capability) * u64::from(capability_part);
    BidScore {
        bid: bid_id,
        price: b.price,
        price_part,
        reputation_part,
        distance_part,
        capability_part,
        total,
    }
}

/// Picks at most one winner among `bids`; bids failing a constraint are skipped.
pub fn select_winner<'a>(
    auction: &AuctionRequest,
    auction_id: AuctionId,
    bids: impl IntoIterator<Item = (&'a BidId, &'a Bid)>,
    weights: &ScoreWeights,
) -> Option<BidScore> {
    select_winner_known(auction, auction_id, bids, weights, |_| None)
}

/// [`select_winner`] with the reputations the customer knows of the bidders.
pub fn select_winner_known<'a>(
    auction: &AuctionRequest,
    auction_id: AuctionId,
    bids: impl IntoIterator<Item = (&'a BidId, &'a Bid)>,
    weights: &ScoreWeights,
    reputation_of: impl Fn(&crate::identity::NodeId) -> Option<u16>,
) -> Option<BidScore> {
    bids.into_iter()
        .filter(|(id, bid)| check_bid_constraints(auction, auction_id, bid, **id).is_ok())
        .map(|(id, bid)| {
            let known = reputation_of(&bid.body.provider);
            score_bid_known(auction, *id, bid, weights, known)
        })
        .max_by(|x, y| x.rank(y))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_utils::{AuctionBuilder, BidBuilder, signer};

    /// THREATS P6: a bid claiming a reputation of 1000 while asking 10 % more no longer beats an
    /// honest bid claiming the neutral 500 (its claim counts up to 500); a reputation the
    /// customer's ledger knows counts whatever the claim.
    #[test]
    fn a_claimed_reputation_above_neutral_gains_nothing_and_a_known_one_counts() {
        let customer = signer(1);
        let auction = AuctionBuilder::new().max_price(1000).build(&customer, 0);
        let aid = auction.id().unwrap();
        let honest = BidBuilder::new(&auction)
            .price(500)
            .reputation(500)
            .build(&signer(2));
        let liar = BidBuilder::new(&auction)
            .price(550)
            .reputation(1000)
            .build(&signer(3));
        let bids: Vec<(BidId, Bid)> = [honest.clone(), liar.clone()]
            .into_iter()
            .map(|b| (b.id().unwrap(), b))
            .collect();
        let w = ScoreWeights::default();
        let pick = |known: &dyn Fn(&crate::identity::NodeId) -> Option<u16>| {
            select_winner_known(&auction, aid, bids.iter().map(|(i, b)| (i, b)), &w, known)
                .unwrap()
                .bid
        };
        assert_eq!(
            pick(&|_| None),
            honest.id().unwrap(),
            "the claim gains nothing"
        );
        let liar_id = liar.body.provider;
        assert_eq!(
            pick(&|n| (*n == liar_id).then_some(1000)),
            liar.id().unwrap(),
            "a reputation the ledger knows counts"
        );
        assert_eq!(
            score_bid(&auction, liar.id().unwrap(), &liar, &w).reputation_part,
            u32::from(NEUTRAL_REPUTATION)
        );
    }

    #[test]
    fn cheaper_bid_wins_and_tie_breaks_on_price_then_id() {
        let customer = signer(1);
        let auction = AuctionBuilder::new().max_price(1000).build(&customer, 0);
        let aid = auction.id().unwrap();
        let cheap = BidBuilder::new(&auction).price(400).build(&signer(2));
        let dear = BidBuilder::new(&auction).price(900).build(&signer(3));
        let over = BidBuilder::new(&auction).price(1001).build(&signer(4));
        let bids: Vec<(BidId, Bid)> = [cheap.clone(), dear, over]
            .into_iter()
            .map(|b| (b.id().unwrap(), b))
            .collect();
        let w = select_winner(
            &auction,
            aid,
            bids.iter().map(|(i, b)| (i, b)),
            &ScoreWeights::default(),
        )
        .unwrap();
        assert_eq!(w.bid, cheap.id().unwrap());
        assert_eq!(w.price, 400);

        // Equal scores: same price and reputation from two providers -> lowest id wins.
        let a = BidBuilder::new(&auction).price(500).build(&signer(5));
        let b = BidBuilder::new(&auction).price(500).build(&signer(6));
        let (ia, ib) = (a.id().unwrap(), b.id().unwrap());
        let both = [(ia, a), (ib, b)];
        let w = select_winner(
            &auction,
            aid,
            both.iter().map(|(i, b)| (i, b)),
            &ScoreWeights::default(),
        )
        .unwrap();
        assert_eq!(w.bid, ia.min(ib));
    }

    #[test]
    fn no_valid_bid_means_no_winner() {
        let customer = signer(1);
        let auction = AuctionBuilder::new().max_price(100).build(&customer, 0);
        let aid = auction.id().unwrap();
        let over = BidBuilder::new(&auction).price(101).build(&signer(2));
        let own = BidBuilder::new(&auction).price(50).build(&customer);
        let bids = [(over.id().unwrap(), over), (own.id().unwrap(), own)];
        assert!(
            select_winner(
                &auction,
                aid,
                bids.iter().map(|(i, b)| (i, b)),
                &ScoreWeights::default()
            )
            .is_none()
        );
    }
}
