//! Who can pay (THREATS C31, C32). Keys are free, balances are not: the node feeds the book
//! what its ledger says accounts can spend ([`Input::Balances`](super::Input::Balances)), and
//! the book uses it on both sides of an auction.
//!
//! As provider, a customer whose known balance covers the price and customer stake of every
//! hold we keep for it that is not paid for yet (open bids, and awards whose contract is not
//! registered) and of the new bid may hold bids here on its own: up to
//! `max_holds_per_customer` open bids and `max_holds_per_funded_customer` unpaid holds in all.
//! Every other customer (unknown, unfunded, or asking for more than it can pay) is a stranger:
//! the unpaid holds of all strangers together fit in `stranger_share_permille` of our
//! capacity, and one stranger keeps at most `max_holds_per_customer` of them, awards included.
//! Before, the cap was per key and an awarded hold ran 11 minutes outside every count, so one
//! key chaining auction, bid and award, or a few keys, held all of a provider's capacity. An
//! auction declined for want of a known balance is decided again when its customer's balance
//! arrives, so an honest customer's first auction still gets a bid.
//!
//! As customer, a bidder whose balance covers the provider stake at the auction's maximum price
//! wins first, then one whose balance covers it at its own price, then one whose balance is
//! unknown, then the rest: a free key bidding 1 token outscored every honest bid and then never
//! dealt. An award that ends without a deal (the provider refused it or let it lapse, not when
//! we walked away) goes to the next bid while the auction lasts.

use std::collections::{BTreeMap, BTreeSet};

use super::{AuctionStatus, Effect, MarketState};
use crate::auction::{AuctionRequest, Bid};
use crate::capacity::ReservationKey;
use crate::identity::{NodeId, Signer, Timestamp};
use crate::ids::{AuctionId, AwardId, BidId};
use crate::resources::Resources;
use crate::score::{BidScore, select_winner_known};

/// Most accounts whose balance the book keeps; the oldest news gives way.
pub const MAX_BALANCES: usize = 4_096;
/// How long a fed balance counts as current: older ones are asked for again
/// ([`MarketState::balances_wanted`]), ms.
pub const BALANCE_TTL_MS: u64 = 10_000;
/// How old a fed balance may be and still decide what a customer may hold on an award of our
/// bid (a lost bid kept, or taken again), ms; an older one counts as unknown. Once an auction
/// is awarded it is no longer open, so nothing else asks for its customer's balance, and the
/// feed's push leaves out accounts that stopped being funded: the balance of a key that drained
/// its account stayed in use until evicted (third review of session 52). The customers of our
/// lost bids are asked for again after [`BALANCE_TTL_MS`], which leaves the ledger query the
/// rest of this to answer.
pub const BALANCE_MAX_AGE_MS: u64 = 3 * BALANCE_TTL_MS;
/// Most holds whose customer the book remembers; a hold beyond it counts as a stranger's.
const MAX_HELD_FOR: usize = 16_384;
/// Most auctions waiting for their customer's balance to be decided again.
const MAX_AWAITING: usize = 4_096;
/// Most bidders one of our auctions passes over after their awards ended without a deal.
pub(super) const MAX_PASSED_OVER: usize = 8;

/// A balance the node fed, and when.
#[derive(Clone, Copy, Debug)]
struct Known {
    balance: u64,
    at: Timestamp,
}

/// Whom one of our holds is for, and at what price.
#[derive(Clone, Copy, Debug)]
struct HeldFor {
    customer: NodeId,
    price: u64,
}

/// The book's knowledge of who can pay, and what depends on it.
#[derive(Debug, Default)]
pub(super) struct Funding {
    /// Fed balances, at most [`MAX_BALANCES`].
    balances: BTreeMap<NodeId, Known>,
    /// Whom each of our holds is for (dropped with the hold).
    held_for: BTreeMap<ReservationKey, HeldFor>,
    /// Holds of awards whose contract is registered: paid for (dropped with the hold).
    registered: BTreeSet<ReservationKey>,
    /// Auctions declined for want of their customer's balance (dropped once closed).
    awaiting: BTreeSet<AuctionId>,
    /// Our auctions' bidders whose award ended without a deal (dropped with the auction).
    passed_over: BTreeMap<AuctionId, BTreeSet<NodeId>>,
}

impl Funding {
    /// The hold under `key` is for a registered contract.
    pub(super) fn registered(&mut self, key: ReservationKey) {
        if self.registered.len() < MAX_HELD_FOR {
            self.registered.insert(key);
        }
    }

    fn balance(&self, node: &NodeId) -> Option<u64> {
        self.balances.get(node).map(|k| k.balance)
    }

    /// `node`'s balance if it was fed at `since` or later.
    fn balance_since(&self, node: &NodeId, since: Timestamp) -> Option<u64> {
        self.balances
            .get(node)
            .filter(|k| k.at >= since)
            .map(|k| k.balance)
    }
}

/// Since when a balance must have been fed to decide on an award at `now`
/// ([`BALANCE_MAX_AGE_MS`]).
pub(super) fn fresh_since(now: Timestamp) -> Timestamp {
    now.saturating_sub(BALANCE_MAX_AGE_MS)
}

/// Why a new hold may not be taken for a customer, by who can pay (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HoldRefusal {
    /// Known to pay, it holds `max_holds_per_funded_customer` not paid for yet.
    FundedCap,
    /// Not known to pay, it holds `max_holds_per_customer`, awards included.
    StrangerCap,
    /// Customers not known to pay hold `max_stranger_holds` in all.
    StrangerHolds,
    /// The share of customers not known to pay is used.
    StrangerShare,
}

impl HoldRefusal {
    /// For the log.
    pub(super) fn reason(self) -> &'static str {
        match self {
            HoldRefusal::FundedCap => "a customer known to pay holds enough not paid for yet",
            HoldRefusal::StrangerCap => "a customer not known to pay holds enough, awards included",
            HoldRefusal::StrangerHolds => "customers not known to pay hold enough in all",
            HoldRefusal::StrangerShare => "the share of customers not known to pay is used",
        }
    }
}

/// Whether a fed balance covers `need` tokens: the ledger counts the account funded (it was
/// fed as more than 0) and it can spend them.
fn covers(balance: u64, need: u128) -> bool {
    balance > 0 && u128::from(balance) >= need
}

/// `permille` of `price`, rounded down (as the contracts crate computes stakes).
fn part_of(price: u64, permille: u64) -> u128 {
    u128::from(price) * u128::from(permille) / 1000
}

/// `permille` of each amount of `capacity`, rounded down (qualities left out: only amounts
/// are compared against it).
fn share(capacity: &Resources, permille: u16) -> Resources {
    let permille = u128::from(permille.min(1000));
    let part = |v: u64| u64::try_from(u128::from(v) * permille / 1000).unwrap_or(v);
    Resources {
        cpu_millis: part(capacity.cpu_millis),
        memory_bytes: part(capacity.memory_bytes),
        storage_bytes: part(capacity.storage_bytes),
        bandwidth_bps: part(capacity.bandwidth_bps),
        interfaces: capacity
            .interfaces
            .iter()
            .map(|(i, n)| (*i, u32::try_from(part(u64::from(*n))).unwrap_or(*n)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        ..Resources::default()
    }
}

/// Our holds for one customer that are not paid for yet.
#[derive(Debug, Default)]
struct Unpaid {
    /// How many.
    holds: usize,
    /// Their prices with the customer stake.
    cost: u128,
    /// What they hold.
    resources: Resources,
}

impl<S: Signer + Clone> MarketState<S> {
    /// A balance the node fed for `node` ([`Input::Balances`](super::Input::Balances)), if any.
    pub fn known_balance(&self, node: &NodeId) -> Option<u64> {
        self.funding.balance(node)
    }

    /// Whose balance the book would like, because it knows none or only one older than
    /// [`BALANCE_TTL_MS`]: the customers of auctions declined for want of it first, then of
    /// our lost bids (an award of one is decided on a balance fed within
    /// [`BALANCE_MAX_AGE_MS`]), then of the open auctions this node may bid on, then the
    /// bidders on our own open auctions; at most `max`. The node answers with
    /// [`Input::Balances`](super::Input::Balances).
    pub fn balances_wanted(&self, now: Timestamp, max: usize) -> Vec<NodeId> {
        let me = self.me;
        let stale = |n: &NodeId| {
            self.funding
                .balances
                .get(n)
                .is_none_or(|k| now.saturating_sub(k.at) >= BALANCE_TTL_MS)
        };
        let awaiting = self
            .funding
            .awaiting
            .iter()
            .filter_map(|id| self.auctions.get(id))
            .map(|e| e.request.body.customer);
        let lost = self
            .my_bids
            .values()
            .filter(move |m| m.lost_until.is_some_and(|t| t > now))
            .map(|m| m.customer);
        let bidding = self.config.dmu.provider.auto_bid;
        let customers = self
            .auctions
            .values()
            .filter(move |e| {
                let b = &e.request.body;
                bidding
                    && e.status == AuctionStatus::Open
                    && b.customer != me
                    && b.window_closes_at > now
                    && (b.only.is_empty() || b.only.contains(&me))
            })
            .map(|e| e.request.body.customer);
        let bidders = self
            .auctions
            .values()
            .filter(move |e| e.request.body.customer == me && e.status == AuctionStatus::Open)
            .flat_map(|e| e.bids.values().map(|b| b.body.provider));
        let mut seen = BTreeSet::new();
        awaiting
            .chain(lost)
            .chain(customers)
            .chain(bidders)
            .filter(|n| stale(n) && seen.insert(*n))
            .take(max)
            .collect()
    }

    /// Takes the balances the node fed (at most [`MAX_BALANCES`] of one input), lets the
    /// oldest go beyond that bound, and decides again on the auctions declined for want of
    /// the balance of a customer it names.
    pub(super) fn learn_balances(
        &mut self,
        now: Timestamp,
        balances: Vec<(NodeId, u64)>,
        out: &mut Vec<Effect>,
    ) {
        let mut learnt = BTreeSet::new();
        for (node, balance) in balances.into_iter().take(MAX_BALANCES) {
            self.funding
                .balances
                .insert(node, Known { balance, at: now });
            learnt.insert(node);
        }
        let excess = self.funding.balances.len().saturating_sub(MAX_BALANCES);
        if excess > 0 {
            let mut by_age: Vec<(Timestamp, NodeId)> = self
                .funding
                .balances
                .iter()
                .map(|(n, k)| (k.at, *n))
                .collect();
            by_age.sort_unstable();
            for (_, node) in by_age.into_iter().take(excess) {
                self.funding.balances.remove(&node);
            }
        }
        let again: Vec<AuctionId> = self
            .funding
            .awaiting
            .iter()
            .filter(|id| {
                self.auctions
                    .get(*id)
                    .is_some_and(|e| learnt.contains(&e.request.body.customer))
            })
            .copied()
            .collect();
        for id in again {
            self.funding.awaiting.remove(&id);
            self.bid_again(now, id, out);
        }
    }

    /// Decides again on auction `id`, declined before for want of its customer's balance.
    fn bid_again(&mut self, now: Timestamp, id: AuctionId, out: &mut Vec<Effect>) {
        let Some(req) = self.auctions.get(&id).map(|e| e.request.clone()) else {
            return;
        };
        if self.auto_bid(now, id, &req, out) {
            let customer = req.body.customer;
            tracing::debug!(auction = %id.short(), customer = %customer.short(), "customer's balance known: bid");
        }
    }

    /// Remembers whom the hold under `key` is for and at what price: a bid we placed, an award
    /// we took.
    pub(super) fn note_hold(&mut self, key: ReservationKey, customer: NodeId, price: u64) {
        let held = &mut self.funding.held_for;
        if held.len() < MAX_HELD_FOR || held.contains_key(&key) {
            held.insert(key, HeldFor { customer, price });
        }
    }

    /// Our holds not paid for yet (open bids, awards whose contract is not registered), by
    /// customer; those whose customer the book does not know under `None`.
    fn unpaid_holds(&self) -> BTreeMap<Option<NodeId>, Unpaid> {
        let permille = self.config.dmu.provider.customer_stake_permille;
        let mut unpaid: BTreeMap<Option<NodeId>, Unpaid> = BTreeMap::new();
        for (key, r) in self.ledger.reservations() {
            // Firm holds, registered contracts' and the running contracts restored after a
            // restart (THREATS C35) are paid for.
            if r.expires_at.is_none()
                || self.funding.registered.contains(key)
                || matches!(key, ReservationKey::Contract(_))
            {
                continue;
            }
            let held = self.funding.held_for.get(key);
            let u = unpaid.entry(held.map(|h| h.customer)).or_default();
            u.holds += 1;
            u.cost += held.map_or(0, |h| u128::from(h.price) + part_of(h.price, permille));
            // Reservations together fit in the capacity, so their sum cannot overflow.
            if let Ok(sum) = u.resources.checked_add(&r.resources) {
                u.resources = sum;
            }
        }
        unpaid
    }

    /// Whether `customer`'s balance, fed at `since` or later, covers the price and customer
    /// stake of every hold we keep for it not paid for yet (`theirs`) and of a new one at
    /// `price`: what makes it known to pay for the new hold (module docs).
    fn pays_for(
        &self,
        since: Timestamp,
        customer: &NodeId,
        theirs: Option<&Unpaid>,
        price: u64,
    ) -> bool {
        let need = theirs.map_or(0, |u| u.cost)
            + u128::from(price)
            + part_of(price, self.config.dmu.provider.customer_stake_permille);
        self.funding
            .balance_since(customer, since)
            .is_some_and(|b| covers(b, need))
    }

    /// [`Self::pays_for`] with the holds we keep for `customer` now.
    pub(super) fn pays_for_another(&self, since: Timestamp, customer: &NodeId, price: u64) -> bool {
        let unpaid = self.unpaid_holds();
        self.pays_for(since, customer, unpaid.get(&Some(*customer)), price)
    }

    /// Why a new hold at `price` for `req`'s customer may not be taken, by who can pay (module
    /// docs), or `None` if it may; balances fed before `since` count as unknown. Pure: an
    /// auto-bid counts and logs a refusal ([`Self::may_hold_for`]); an award of a lost bid is
    /// only refused, since it records nothing and may be sent again at will (review of session
    /// 52: each resend counted a declined bid).
    pub(super) fn hold_refusal(
        &self,
        since: Timestamp,
        req: &AuctionRequest,
        price: u64,
    ) -> Option<HoldRefusal> {
        let rules = &self.config.dmu.provider;
        let customer = req.body.customer;
        let unpaid = self.unpaid_holds();
        let theirs = unpaid.get(&Some(customer));
        let holds = theirs.map_or(0, |u| u.holds);
        if self.pays_for(since, &customer, theirs, price) {
            (holds >= rules.max_holds_per_funded_customer).then_some(HoldRefusal::FundedCap)
        } else if holds >= rules.max_holds_per_customer {
            Some(HoldRefusal::StrangerCap)
        } else if self.stranger_holds(since, &unpaid) >= rules.max_stranger_holds {
            Some(HoldRefusal::StrangerHolds)
        } else if !self.fits_strangers_share(since, &unpaid, &req.body.resources) {
            Some(HoldRefusal::StrangerShare)
        } else {
            None
        }
    }

    /// Whether an auto-bid at `price` on `req` (auction `id`) may hold capacity, by who can
    /// pay, on every balance fed ([`Self::hold_refusal`]). Counts and logs a refusal; the
    /// auction is decided again when its customer's balance arrives
    /// ([`Self::learn_balances`]).
    pub(super) fn may_hold_for(&mut self, id: AuctionId, req: &AuctionRequest, price: u64) -> bool {
        let Some(refusal) = self.hold_refusal(0, req, price) else {
            return true;
        };
        self.counters.auto_bids_declined += 1;
        if refusal != HoldRefusal::FundedCap && self.funding.awaiting.len() < MAX_AWAITING {
            self.funding.awaiting.insert(id);
        }
        let customer = req.body.customer;
        let balance = self.funding.balance(&customer);
        tracing::debug!(auction = %id.short(), customer = %customer.short(), ?balance, reason = refusal.reason(), "auto-bid declined");
        false
    }

    /// Whether `who`, whose unpaid holds are `u`, is a stranger: not known to pay for them on a
    /// balance fed at `since` or later.
    fn is_stranger(&self, since: Timestamp, who: &Option<NodeId>, u: &Unpaid) -> bool {
        !who.is_some_and(|n| {
            self.funding
                .balance_since(&n, since)
                .is_some_and(|b| covers(b, u.cost))
        })
    }

    /// How many unpaid holds all strangers keep here together.
    fn stranger_holds(&self, since: Timestamp, unpaid: &BTreeMap<Option<NodeId>, Unpaid>) -> usize {
        unpaid
            .iter()
            .filter(|(who, u)| self.is_stranger(since, who, u))
            .map(|(_, u)| u.holds)
            .sum()
    }

    /// Whether the unpaid holds of every customer not known to pay for them, with `need`,
    /// fit in their share of our capacity.
    fn fits_strangers_share(
        &self,
        since: Timestamp,
        unpaid: &BTreeMap<Option<NodeId>, Unpaid>,
        need: &Resources,
    ) -> bool {
        let rules = &self.config.dmu.provider;
        let mut held = Resources::default();
        let strangers = unpaid
            .iter()
            .filter(|(who, u)| self.is_stranger(since, who, u));
        for r in strangers.map(|(_, u)| &u.resources).chain([need]) {
            match held.checked_add(r) {
                Ok(sum) => held = sum,
                Err(_) => return false,
            }
        }
        held.fits_in(&share(
            self.ledger.capacity(),
            rules.stranger_share_permille,
        ))
    }

    /// The best bid on our auction `id`: bidders whose balance covers the provider stake at the
    /// auction's maximum price first, then those whose balance covers it at their own price,
    /// then those whose balance is unknown, then the rest, each by score (module docs). Bids
    /// from providers the auction is not open to, or passed over after their award ended
    /// without a deal, never win.
    pub(super) fn choose_winner(&self, id: &AuctionId) -> Option<BidScore> {
        let entry = self.auctions.get(id)?;
        let rules = &self.config.dmu.customer;
        let only = self.restricted.get(id);
        let passed = self.funding.passed_over.get(id);
        let eligible: Vec<(&BidId, &Bid)> = entry
            .bids
            .iter()
            .filter(|(_, b)| {
                let p = &b.body.provider;
                only.is_none_or(|o| o.contains(p)) && passed.is_none_or(|s| !s.contains(p))
            })
            .collect();
        // The stake at the auction's ceiling ranks first: a 1-token bid's own stake is nothing,
        // so any funded key qualified by it. Yet a provider whose balance covers only the stake
        // at its own price still outranks the unknown and those known not to pay (a free key is
        // fed as 0): ranked with them, the free key's 1-token bid won on score again (third
        // review of session 52).
        let permille = rules.provider_stake_permille;
        let ceiling = part_of(entry.request.body.max_price, permille);
        let tier = |b: &Bid| match self.funding.balance(&b.body.provider) {
            Some(balance) if covers(balance, ceiling) => 3,
            Some(balance) if covers(balance, part_of(b.body.price, permille)) => 2,
            None => 1,
            Some(_) => 0,
        };
        [3u8, 2, 1, 0].into_iter().find_map(|t| {
            select_winner_known(
                &entry.request,
                *id,
                eligible.iter().copied().filter(|&(_, b)| tier(b) == t),
                &rules.weights,
                |n| self.reputations.get(n).copied(),
            )
        })
    }

    /// Awards the next bid of each of our auctions whose award ended without a deal in `out`
    /// (the provider refused it or let it lapse; not when we walked away), while the auction
    /// lasts and for at most [`MAX_PASSED_OVER`] failed bidders.
    pub(super) fn award_next_bids(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let me = self.me;
        if !self.config.dmu.customer.auto_award {
            return;
        }
        let failed: Vec<AwardId> = out
            .iter()
            .filter_map(|e| match e {
                Effect::NegotiationFailed { award, by } if *by != Some(me) => Some(*award),
                _ => None,
            })
            .collect();
        for award in failed {
            let found = self.auctions.iter().find_map(|(id, e)| match e.status {
                AuctionStatus::Awarded { award: a, provider }
                    if a == award && e.request.body.customer == me =>
                {
                    Some((*id, provider))
                }
                _ => None,
            });
            let Some((id, provider)) = found else {
                continue;
            };
            let passed = self.funding.passed_over.entry(id).or_default();
            if passed.len() >= MAX_PASSED_OVER {
                continue;
            }
            passed.insert(provider);
            let Some(next) = self.choose_winner(&id) else {
                continue;
            };
            tracing::debug!(auction = %id.short(), failed = %provider.short(), next = %next.bid.short(), "award ended without a deal: awarding the next bid");
            if let Some(e) = self.auctions.get_mut(&id) {
                e.status = AuctionStatus::Closed { winner: Some(next) };
            }
            if let Err(error) = self.award(now, id, next.bid, out) {
                out.push(Effect::Rejected { from: None, error });
            }
        }
    }

    /// Forgets what no longer matters: holds that ended, auctions no longer open or gone.
    pub(super) fn tick_funding(&mut self) {
        let held = self.ledger.reservations();
        self.funding.held_for.retain(|k, _| held.contains_key(k));
        self.funding.registered.retain(|k| held.contains_key(k));
        let auctions = &self.auctions;
        self.funding.awaiting.retain(|id| {
            auctions
                .get(id)
                .is_some_and(|e| e.status == AuctionStatus::Open)
        });
        self.funding
            .passed_over
            .retain(|id, _| auctions.contains_key(id));
    }
}
