//! Our bids that lost: another provider was awarded and our hold is released (THREATS C32).
//! The customer awards the next bid when that award ends without a deal, so a lost bid is kept
//! until its hold would have lapsed (`MyBid::lost_until`), and such an award takes the capacity
//! again if it is free.
//!
//! It is kept only for a customer that pays for it as for a new bid's hold (its balance, fed
//! within [`BALANCE_MAX_AGE_MS`](super::BALANCE_MAX_AGE_MS), covers the price and customer
//! stake of every hold we keep for it not paid for yet and of this one), and at most
//! [`MAX_LOST_BIDS`] in all and `max_holds_per_funded_customer` per customer. Before, any
//! customer fed with a balance kept them and only the total was bounded: one funded key
//! awarding its auctions at once to a made-up provider filled the records, and every honest
//! lost bid was then forgotten at once, so the next-bid award found nothing (third review of
//! session 52).
//!
//! `lost_until` is set and cleared only here, and the counts follow each change, so the bounds
//! are checked without a scan of our bids (up to `max_auctions` open ones and the lost ones).
//! The tick's pass over our bids takes the counts from them again, so a drift (none is known)
//! cannot last: an over-count would refuse a customer's lost bids, or every one, for good, and
//! silently (fourth review of session 52). One found is counted (`lost_counts_resynced`) and
//! logged.

use std::collections::BTreeMap;

use super::funding::fresh_since;
use super::{MAX_LOST_BIDS, MarketState};
use crate::capacity::ReservationKey;
use crate::identity::{NodeId, Signer, Timestamp};
use crate::ids::AuctionId;

/// How many of our bids are lost and kept, in all and by customer (at most [`MAX_LOST_BIDS`]
/// entries: each is one such bid at least).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct LostBids {
    total: usize,
    by_customer: BTreeMap<NodeId, usize>,
}

impl LostBids {
    fn count(&mut self, customer: NodeId) {
        self.total += 1;
        *self.by_customer.entry(customer).or_default() += 1;
    }

    fn uncount(&mut self, customer: NodeId) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_customer.get_mut(&customer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_customer.remove(&customer);
            }
        }
    }

    /// How many lost bids of `customer`'s are kept.
    pub(super) fn of(&self, customer: &NodeId) -> usize {
        self.by_customer.get(customer).copied().unwrap_or(0)
    }

    /// Test hook: one lost bid of `customer`'s counted that is not there (a drift).
    #[cfg(test)]
    pub(super) fn miscount(&mut self, customer: NodeId) {
        self.count(customer);
    }
}

impl<S: Signer + Clone> MarketState<S> {
    /// Our bid on `auction` lost, its hold released: kept until `until` for a next-bid award if
    /// its customer pays for it and there is room (module docs), else forgotten at once. A bid
    /// lost again (a second award naming another provider) stays as it is: `until` is the same,
    /// and deciding again scanned our holds on every such award, which a customer may send at
    /// will, and forgot a record kept on an earlier balance when the customer's other holds had
    /// grown meanwhile (fourth review of session 52). An award of it is checked on a recent
    /// balance anyway.
    pub(super) fn lose_bid(&mut self, now: Timestamp, auction: AuctionId, until: Timestamp) {
        let Some((customer, price, lost)) = self
            .my_bids
            .get(&auction)
            .map(|m| (m.customer, m.price, m.lost_until.is_some()))
        else {
            return;
        };
        if lost {
            return;
        }
        let per_customer = self.config.dmu.provider.max_holds_per_funded_customer;
        let room =
            self.lost_bids.total < MAX_LOST_BIDS && self.lost_bids.of(&customer) < per_customer;
        // The cheap bounds first: the funding check sums our holds.
        if room && self.pays_for_another(fresh_since(now), &customer, price) {
            if let Some(mine) = self.my_bids.get_mut(&auction) {
                mine.lost_until = Some(until);
                self.lost_bids.count(customer);
            }
        } else {
            self.my_bids.remove(&auction);
            tracing::debug!(auction = %auction.short(), customer = %customer.short(), room, "lost bid forgotten: its customer is not known to pay for it, or keeps enough lost bids here");
        }
    }

    /// Our bid on `auction` is no longer lost: it was awarded to us after all.
    pub(super) fn unmark_lost(&mut self, auction: &AuctionId) {
        if let Some(mine) = self.my_bids.get_mut(auction)
            && mine.lost_until.take().is_some()
        {
            self.lost_bids.uncount(mine.customer);
        }
    }

    /// Forgets our bids that hold nothing any more and are not lost ones still waiting: a bid
    /// whose hold lapsed with no award (a late award of it is refused `UnknownBid`, and its
    /// auction is no longer needed in a full book; kept until the auction's expiry, up to 7
    /// days, throwaway keys filled the book with auctions bid on once: THREATS C30), and a lost
    /// one past `lost_until`. An award of our bid keeps it, also after the auction left the
    /// book. The counts of lost bids are taken from the bids kept (module docs).
    pub(super) fn forget_bids(&mut self, now: Timestamp) {
        let held = self.ledger.reservations();
        let mut found = LostBids::default();
        let counted = &mut self.lost_bids;
        self.my_bids.retain(|id, mine| {
            let keep = held.contains_key(&ReservationKey::Auction(*id))
                || mine.lost_until.is_some_and(|t| t > now);
            if mine.lost_until.is_some() {
                if keep {
                    found.count(mine.customer);
                } else {
                    // A lost bid past its `lost_until`: forgotten as the counts expect.
                    counted.uncount(mine.customer);
                }
            }
            keep
        });
        if found != self.lost_bids {
            self.counters.lost_counts_resynced += 1;
            tracing::warn!(
                counted = self.lost_bids.total,
                found = found.total,
                "the counts of lost bids drifted from our bids: taken from them again"
            );
        }
        self.lost_bids = found;
    }

    /// Whether the counts of lost bids agree with a scan of our bids: every test of the book
    /// checks it after every input, and the `market_book` fuzz target after every step.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn lost_in_step(&self) -> bool {
        let mut scan: BTreeMap<NodeId, usize> = BTreeMap::new();
        for m in self.my_bids.values().filter(|m| m.lost_until.is_some()) {
            *scan.entry(m.customer).or_default() += 1;
        }
        self.lost_bids.total == scan.values().sum::<usize>() && self.lost_bids.by_customer == scan
    }
}
