//! Bounds on what peers can make the book hold: auctions per customer and in total, offers per
//! provider and in total, one bid per provider per auction and bids in total; with an eviction
//! rule when a book is full and counters the node exports.
//!
//! Eviction when the auction (or offer) book is full makes room for a newcomer as fair queueing
//! does: the victim is the entry of whoever holds the most, so one author flooding (under its
//! per-author cap) cannot keep others out. Entries this node needs are never evicted: its own
//! auctions and offers, and auctions it holds capacity for (a bid or an award of it). Auctions
//! whose window closed go first, since nobody can bid on them any more. Among open auctions,
//! those of customers known not to pay go first, then those of customers whose balance is
//! unknown, then funded customers' (THREATS C31): keys are free, so a stream of new keys with
//! one auction each otherwise evicted an honest customer's, and with it that auction's wait for
//! its customer's balance. That order protects only a fair share of each customer's auctions,
//! [`PROTECTED_AUCTIONS`]: beyond it a customer's give way to anyone holding fewer. Otherwise
//! funded keys, which cost only the ledger's minimum balance, filled a book against every
//! customer whose balance was unknown (review of the fourth review of session 52, M2). Books
//! are bounded (a few thousand entries), so the scans below are linear.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{AuctionStatus, Effect, MarketState};
use crate::auction::{AuctionRequest, Bid, Offer};
use crate::capacity::ReservationKey;
use crate::error::MarketError;
use crate::identity::{NodeId, Signer, Timestamp};
use crate::ids::{AuctionId, BidId, OfferId};

/// What the book refused, evicted or let lapse since start, for the node to export as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BookCounters {
    /// Auctions refused: their customer already had `max_auctions_per_customer` in the book.
    pub auctions_refused_quota: u64,
    /// Auctions refused: the book was full and no entry could give way.
    pub auctions_refused_full: u64,
    /// Auctions evicted to make room for another customer's.
    pub auctions_evicted: u64,
    /// Offers refused: their provider already had `max_offers_per_provider` in the book.
    pub offers_refused_quota: u64,
    /// Offers refused: the book was full and no entry could give way.
    pub offers_refused_full: u64,
    /// Offers evicted to make room for another provider's.
    pub offers_evicted: u64,
    /// Bids refused: the provider already bid on that auction.
    pub bids_refused_duplicate: u64,
    /// Bids refused: the auction (or all our auctions together) held the most bids allowed.
    pub bids_refused_full: u64,
    /// Bids evicted from a full auction by a cheaper bid.
    pub bids_evicted: u64,
    /// Tentative capacity holds released because no award came within the award grace.
    pub holds_lapsed: u64,
    /// Auctions we would have auto-bid on but did not: the window was too long, the slot
    /// started too far ahead, or we already held `max_holds_per_customer` for that customer.
    pub auto_bids_declined: u64,
    /// Auctions we would have auto-bid on but did not yet: the capacity of the contracts this
    /// node still runs was not restored since it started (THREATS C35). Those still open are
    /// bid on once it is.
    pub auto_bids_deferred: u64,
    /// Replay-guard nonces forgotten early because the guard was full.
    pub replay_evicted: u64,
    /// Snapshot requests not answered (the same peer asked again within
    /// [`SNAPSHOT_EVERY_MS`](super::SNAPSHOT_EVERY_MS), or too many peers asked at once) and
    /// snapshot responses refused (this node had not asked that peer for that region).
    pub snapshots_refused: u64,
    /// Fed balances let go: more than [`MAX_BALANCES`](super::MAX_BALANCES) were known
    /// (balances of 0 go first, then the oldest), or one input named more (THREATS C31).
    pub balances_dropped: u64,
    /// Times the tick found the counts of lost bids out of step with our bids and took them
    /// from the bids again (THREATS C32; none is known to happen: each is a bug, logged).
    pub lost_counts_resynced: u64,
}

/// Sizes of the book now, with the counters: what `MarketState::book_stats` reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookStats {
    /// Auctions held (any status).
    pub auctions: usize,
    /// Standing offers held.
    pub offers: usize,
    /// Bids held on our auctions.
    pub bids: usize,
    /// Capacity reservations held (tentative and firm).
    pub reservations: usize,
    /// Nonces remembered by the replay guard.
    pub replay_nonces: usize,
    /// Totals since start.
    pub counters: BookCounters,
}

/// How many of one customer's auctions the order by who is known to pay protects in a full
/// book: beyond them its auctions give way to a newcomer of any rank holding fewer, as C2's
/// fair queue has it, however well it is known to pay. An honest customer has a few auctions
/// open at a time; a key costs only the ledger's minimum balance, and 128 funded keys holding
/// 32 each (`max_auctions_per_customer`) filled a book of 4,096 against every customer whose
/// balance was unknown, whose auctions then stopped at that hop and so were never asked about
/// (review of the fourth review of session 52, M2). With 3 it takes 1,366 funded keys, more
/// than the node's feed pushes unasked (1,024), to fill a book of 4,096 with protected
/// auctions; a funded customer holding 4 gives way to a newcomer of unknown balance holding
/// none.
pub(super) const PROTECTED_AUCTIONS: usize = 3;

/// What admitting one more entry needs.
enum Room<K> {
    /// There is room.
    Free,
    /// Evict this entry first.
    Evict(K),
}

impl<S: Signer + Clone> MarketState<S> {
    /// Sizes and counters of the book.
    pub fn book_stats(&self) -> BookStats {
        BookStats {
            auctions: self.auctions.len(),
            offers: self.offers.len(),
            bids: self.bids_held(),
            reservations: self.ledger.reservations().len(),
            replay_nonces: self.replay.len(),
            counters: BookCounters {
                replay_evicted: self.replay.evicted(),
                ..self.counters
            },
        }
    }

    fn bids_held(&self) -> usize {
        self.auctions.values().map(|e| e.bids.len()).sum()
    }

    /// Whether the book must keep this auction: ours, or one we hold capacity for (a bid
    /// waiting for its award, or an award of our bid until its contract ends). Not one we
    /// merely bid on: once that hold lapsed with no award, the auction stayed needed until its
    /// expiry (up to 7 days), and throwaway keys' auctions, each bid on once, filled the book
    /// for days (THREATS C30).
    fn needed(&self, id: &AuctionId, customer: NodeId) -> bool {
        customer == self.me
            || self
                .ledger
                .reservations()
                .contains_key(&ReservationKey::Auction(*id))
    }

    /// Whether this node may bid on `req`: it is open to everyone or names this node.
    pub(super) fn open_to_me(&self, req: &AuctionRequest) -> bool {
        req.body.only.is_empty() || req.body.only.contains(&self.me)
    }

    /// Checks a remote auction against the per-customer and total bounds; evicts one entry if
    /// that makes room. Call after validation, before recording the nonce.
    ///
    /// The per-customer quota counts only auctions this node may bid on: an auction open only
    /// to other providers (a fleet placement for another target) is kept to be judged and
    /// forwarded, under the total bound alone, and is the first to give way when the book is
    /// full. Otherwise a deployer placing more targets at once than the quota made each
    /// provider's book refuse the very auction open to it (seen with 36 targets: the auction
    /// closed without its target's bid and the target waited a minute to be placed again).
    pub(super) fn admit_auction(
        &mut self,
        now: Timestamp,
        id: AuctionId,
        req: &AuctionRequest,
    ) -> Result<(), MarketError> {
        let customer = req.body.customer;
        let limits = &self.config.limits;
        let for_me = self.open_to_me(req);
        let mut held: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut held_for_me: BTreeMap<NodeId, usize> = BTreeMap::new();
        for e in self.auctions.values() {
            *held.entry(e.request.body.customer).or_default() += 1;
            if self.open_to_me(&e.request) {
                *held_for_me.entry(e.request.body.customer).or_default() += 1;
            }
        }
        let quota_used = held_for_me.get(&customer).copied().unwrap_or(0);
        if for_me && quota_used >= limits.max_auctions_per_customer {
            self.counters.auctions_refused_quota += 1;
            tracing::debug!(auction = %id.short(), customer = %customer.short(), max = limits.max_auctions_per_customer, "auction refused: customer quota");
            return Err(MarketError::CustomerQuota {
                customer,
                max: limits.max_auctions_per_customer,
            });
        }
        let mine = held.get(&customer).copied().unwrap_or(0);
        let room = if self.auctions.len() < limits.max_auctions {
            Some(Room::Free)
        } else {
            self.victim_by_rank(now, &held, customer, for_me)
                .or_else(|| self.victim_beyond_share(now, &held, mine))
                .map(Room::Evict)
        };
        match room {
            Some(Room::Free) => Ok(()),
            Some(Room::Evict(victim)) => {
                self.auctions.remove(&victim);
                self.funding.forget_auction(&victim);
                self.counters.auctions_evicted += 1;
                tracing::debug!(evicted = %victim.short(), for_auction = %id.short(), "auction evicted: book full");
                Ok(())
            }
            None => {
                self.counters.auctions_refused_full += 1;
                tracing::debug!(auction = %id.short(), max = limits.max_auctions, "auction refused: book full");
                Err(MarketError::MarketFull {
                    book: "auction",
                    max: limits.max_auctions,
                })
            }
        }
    }

    /// The auction a newcomer of `customer` evicts by who is known to pay: auctions open only
    /// to others first (any newcomer open to us evicts one), then closed before open, then the
    /// customer least known to pay, then the heaviest customer, then the soonest to expire. An
    /// open auction gives way only to a customer better known to pay, or as well known and
    /// holding fewer. `held`: auctions in the book by customer.
    fn victim_by_rank(
        &self,
        now: Timestamp,
        held: &BTreeMap<NodeId, usize>,
        customer: NodeId,
        for_me: bool,
    ) -> Option<AuctionId> {
        let mine = held.get(&customer).copied().unwrap_or(0);
        let rank = self.payer_rank(now, &customer);
        self.auctions
            .iter()
            .filter(|(aid, e)| !self.needed(aid, e.request.body.customer))
            .map(|(aid, e)| {
                let owner = e.request.body.customer;
                let count = held.get(&owner).copied().unwrap_or(0);
                let open = e.status == AuctionStatus::Open;
                let victim_for_me = self.open_to_me(&e.request);
                (
                    victim_for_me,
                    open,
                    self.payer_rank(now, &owner),
                    Reverse(count),
                    e.request.body.expires_at,
                    *aid,
                )
            })
            .min()
            .filter(|&(victim_for_me, open, owner_rank, Reverse(count), ..)| {
                (for_me && !victim_for_me)
                    || !open
                    || owner_rank < rank
                    || (owner_rank == rank && count > mine)
            })
            .map(|(.., aid)| aid)
    }

    /// When [`Self::victim_by_rank`] finds none: an auction of a customer holding more than
    /// both the newcomer's `mine` and [`PROTECTED_AUCTIONS`], whatever either is known to pay.
    /// Auctions open only to others first, then the heaviest customer, then the customer least
    /// known to pay, then the soonest to expire.
    fn victim_beyond_share(
        &self,
        now: Timestamp,
        held: &BTreeMap<NodeId, usize>,
        mine: usize,
    ) -> Option<AuctionId> {
        let share = mine.max(PROTECTED_AUCTIONS);
        self.auctions
            .iter()
            .filter(|(aid, e)| !self.needed(aid, e.request.body.customer))
            .filter_map(|(aid, e)| {
                let owner = e.request.body.customer;
                let count = held.get(&owner).copied().unwrap_or(0);
                (count > share).then(|| {
                    (
                        self.open_to_me(&e.request),
                        Reverse(count),
                        self.payer_rank(now, &owner),
                        e.request.body.expires_at,
                        *aid,
                    )
                })
            })
            .min()
            .map(|(.., aid)| aid)
    }

    /// Checks a remote offer against the per-provider and total bounds, evicting like
    /// [`Self::admit_auction`] (our own offers stay).
    pub(super) fn admit_offer(&mut self, id: OfferId, offer: &Offer) -> Result<(), MarketError> {
        let provider = offer.body.provider;
        let limits = &self.config.limits;
        let mut held: BTreeMap<NodeId, usize> = BTreeMap::new();
        for o in self.offers.values() {
            *held.entry(o.body.provider).or_default() += 1;
        }
        let mine = held.get(&provider).copied().unwrap_or(0);
        if mine >= limits.max_offers_per_provider {
            self.counters.offers_refused_quota += 1;
            tracing::debug!(offer = %id.short(), provider = %provider.short(), max = limits.max_offers_per_provider, "offer refused: provider quota");
            return Err(MarketError::ProviderQuota {
                provider,
                max: limits.max_offers_per_provider,
            });
        }
        if self.offers.len() < limits.max_offers {
            return Ok(());
        }
        let victim = self
            .offers
            .iter()
            .filter(|(_, o)| o.body.provider != self.me)
            .map(|(oid, o)| {
                let count = held.get(&o.body.provider).copied().unwrap_or(0);
                ((Reverse(count), o.body.expires_at, *oid), count)
            })
            .min_by_key(|(key, _)| *key)
            .filter(|(_, count)| *count > mine)
            .map(|((.., oid), _)| oid);
        match victim {
            Some(victim) => {
                self.offers.remove(&victim);
                self.counters.offers_evicted += 1;
                tracing::debug!(evicted = %victim.short(), for_offer = %id.short(), "offer evicted: book full");
                Ok(())
            }
            None => {
                self.counters.offers_refused_full += 1;
                tracing::debug!(offer = %id.short(), max = limits.max_offers, "offer refused: book full");
                Err(MarketError::MarketFull {
                    book: "offer",
                    max: limits.max_offers,
                })
            }
        }
    }

    /// Checks a valid bid on our auction: one per provider, at most `max_bids_per_auction` per
    /// auction (a cheaper bid evicts the dearest from a full auction) and `max_bids` in all.
    pub(super) fn admit_bid(
        &mut self,
        auction: AuctionId,
        bid_id: BidId,
        bid: &Bid,
    ) -> Result<(), MarketError> {
        let limits = &self.config.limits;
        let (max_per_auction, max_total) = (limits.max_bids_per_auction, limits.max_bids);
        let total = self.bids_held();
        let Some(entry) = self.auctions.get_mut(&auction) else {
            return Err(MarketError::UnknownAuction { auction });
        };
        let provider = bid.body.provider;
        if entry.bids.values().any(|b| b.body.provider == provider) {
            self.counters.bids_refused_duplicate += 1;
            return Err(MarketError::DuplicateBid { auction, provider });
        }
        if entry.bids.len() < max_per_auction && total < max_total {
            return Ok(());
        }
        // Full: the dearest bid (ties: the highest id) gives way to a cheaper one.
        let dearest = entry
            .bids
            .iter()
            .max_by_key(|(id, b)| (b.body.price, **id))
            .map(|(id, b)| (*id, b.body.price));
        match dearest {
            Some((victim, price)) if price > bid.body.price => {
                entry.bids.remove(&victim);
                self.counters.bids_evicted += 1;
                tracing::debug!(auction = %auction.short(), evicted = %victim.short(), for_bid = %bid_id.short(), "bid evicted by a cheaper one");
                Ok(())
            }
            _ => {
                self.counters.bids_refused_full += 1;
                tracing::debug!(auction = %auction.short(), bid = %bid_id.short(), "bid refused: book full");
                if entry.bids.len() >= max_per_auction {
                    Err(MarketError::BookFull {
                        auction,
                        max: max_per_auction,
                    })
                } else {
                    Err(MarketError::MarketFull {
                        book: "bid",
                        max: max_total,
                    })
                }
            }
        }
    }

    /// Auto-bids on our rules on auction `id` (`req`, in the book) if it is open, open to us,
    /// not ours and not bid on yet, and a bid may hold capacity ([`Self::may_auto_bid`] and
    /// who can pay, [`Self::may_hold_for`]; refusals counted and logged): the one decision of an
    /// auction's arrival, of the auctions passed over until the capacity of our running
    /// contracts was restored, and of those declined for want of their customer's balance
    /// when it arrives. Whether a bid was tried (a failure is pushed as `Rejected`).
    pub(super) fn auto_bid(
        &mut self,
        now: Timestamp,
        id: AuctionId,
        req: &AuctionRequest,
        out: &mut Vec<Effect>,
    ) -> bool {
        let b = &req.body;
        let status = self.auctions.get(&id).map(|e| &e.status);
        let open = status == Some(&AuctionStatus::Open) && b.window_closes_at > now;
        let bid_before = self.my_bids.contains_key(&id);
        // An auction restricted to other providers is not ours to bid on: a bid would only hold
        // capacity and count against its customer's holds here, so a deployer placing three
        // targets at once had the third target decline its own.
        if !open || b.customer == self.me || !self.open_to_me(req) || bid_before {
            return false;
        }
        let Some(spec) = self.config.dmu.provider.decide_bid(b, &self.ledger) else {
            return false;
        };
        if !self.may_auto_bid(now, req) || !self.may_hold_for(id, req, spec.price) {
            return false;
        }
        if let Err(error) = self.place_bid(now, id, spec, out) {
            out.push(Effect::Rejected { from: None, error });
        }
        true
    }

    /// Whether an auto-bid on `req` may hold capacity: the capacity of our running contracts
    /// is held (else it waits, THREATS C35), its window closes within `max_bid_window_ms`, its
    /// slot (if any) starts within `max_slot_lead_ms`, and we hold less than
    /// `max_holds_per_customer` for its customer. Counts and logs a refusal.
    pub(super) fn may_auto_bid(&mut self, now: Timestamp, req: &AuctionRequest) -> bool {
        let customer = req.body.customer;
        if !self.restored {
            self.counters.auto_bids_deferred += 1;
            tracing::debug!(customer = %customer.short(), "auto-bid deferred: the capacity of our running contracts is not restored yet");
            return false;
        }
        let rules = &self.config.dmu.provider;
        let window = req.body.window_closes_at.saturating_sub(now);
        let lead = req.body.start_at.map_or(0, |at| at.saturating_sub(now));
        // Open bids only: an awarded one's hold (an agreed deal, which ends too since C20) is
        // not a bid waiting for its award.
        let awarded: std::collections::BTreeSet<&ReservationKey> =
            self.award_holds.values().collect();
        let held = self
            .ledger
            .reservations()
            .iter()
            .filter(|(key, r)| {
                r.expires_at.is_some()
                    && !awarded.contains(key)
                    && matches!(key, ReservationKey::Auction(id)
                        if self.auctions.get(id).is_some_and(|e| e.request.body.customer == customer))
            })
            .count();
        let reason = if window > rules.max_bid_window_ms {
            "window too long"
        } else if lead > rules.max_slot_lead_ms {
            "slot too far ahead"
        } else if held >= rules.max_holds_per_customer {
            "customer holds enough"
        } else {
            return true;
        };
        self.counters.auto_bids_declined += 1;
        tracing::debug!(customer = %customer.short(), window, lead, held, reason, "auto-bid declined");
        false
    }

    /// When a tentative hold for a bid on `auction` ends: the award grace after the window
    /// closes, or the auction's expiry if that is sooner.
    pub(super) fn hold_until(&self, req: &AuctionRequest) -> Timestamp {
        req.body
            .window_closes_at
            .saturating_add(self.config.dmu.provider.hold_grace_ms)
            .min(req.body.expires_at)
    }
}
