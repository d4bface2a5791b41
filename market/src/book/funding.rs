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
//! arrives, so an honest customer's first auction still gets a bid. Such auctions are
//! remembered for as long as they are in the book, which is bounded on its own: a set with a
//! bound of its own was filled by free keys' auctions, after which an honest one was not
//! remembered and got no bid when its customer's balance arrived (second review of session 52).
//! Free keys are fed as 0, so the fed balances give way in an order that keeps the funded
//! ones, and the book's eviction lets free keys' auctions go before a funded customer's, up to
//! a fair share of each funded customer's (`PROTECTED_AUCTIONS`, in `bounds`).
//!
//! As customer, a bidder whose balance covers the provider stake at the auction's maximum price
//! wins first, then one whose balance covers it at its own price, then one whose balance is
//! unknown, then the rest: a free key bidding 1 token outscored every honest bid and then never
//! dealt. An award that ends without a deal (the provider refused it, let it lapse, or agreed
//! and never countersigned the contract; not when we walked away) goes to the next bid while
//! the losers keep their bids, and our award lapses early enough for that. Its provider ranks
//! last on our auctions for an hour if ending it was its choice: it walked away from any award
//! of ours, left unanswered for 30 s or more the auction's first award sent while it held its
//! bid, countered such an award above our maximum price (refused at once when a next bid can
//! be awarded), or agreed and never countersigned. One funded key that wins and never deals
//! otherwise cost every auction of ours a try, not one in all (fourth review of session 52); a
//! next bid's provider, which had let go of its hold, may have had to refuse, but without a
//! word, never by walking away (its review; review 7).

use std::collections::{BTreeMap, BTreeSet};

use super::close::{AWARD_MARGIN_MS, MIN_AWARD_LAPSE_MS};
use super::{AuctionStatus, Effect, MarketState, PriceBound};
use crate::auction::{AuctionRequest, AwardSubject, Bid};
use crate::capacity::ReservationKey;
use crate::identity::{NodeId, Signer, Timestamp};
use crate::ids::{AuctionId, AwardId, BidId};
use crate::negotiation::{NegotiationInput, NegotiationStatus};
use crate::resources::Resources;
use crate::score::{BidScore, select_winner_known};

/// Most accounts whose balance the book keeps; balances of 0 give way first, oldest first, then
/// the oldest of the rest ([`MarketState::learn_balances`]).
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
/// rest of this to answer. An older balance counts as unknown in a full book's order too
/// ([`MarketState::payer_rank`]).
pub const BALANCE_MAX_AGE_MS: u64 = 3 * BALANCE_TTL_MS;
/// Most holds whose customer the book remembers; a hold beyond it counts as a stranger's.
const MAX_HELD_FOR: usize = 16_384;
/// Most bidders one of our auctions passes over after their awards ended without a deal.
pub(super) const MAX_PASSED_OVER: usize = 8;
/// How long a provider whose award of ours ended without a deal ranks last on our auctions, ms.
pub const WALKER_TTL_MS: u64 = 3_600_000;
/// Most such providers remembered; the one remembered longest gives way.
const MAX_WALKERS: usize = 1_024;

/// A balance the node fed, and when.
#[derive(Clone, Copy, Debug)]
struct Known {
    balance: u64,
    at: Timestamp,
    /// Since when it has been fed above 0 without a break (`None`: it is 0), as far as this
    /// cache remembers: a provider funded for less than [`SEASONED_MS`] ranks below the others
    /// of its tier on our auctions.
    funded_since: Option<Timestamp>,
}

/// How long a provider must have been known funded without a break (fed above 0 at least
/// every [`BALANCE_MAX_AGE_MS`], as the 5 s push does on networks of up to 1,024 funded
/// accounts) before it ranks with the established ones of its balance tier on our auctions.
/// Keys and transfers are free, so a key's first unclear fault (silent after agreeing,
/// forgiven once: [`DealFault::Unclear`]) was free too when the key was made for the auction
/// (session 54, review 10 H1): a key made for the purpose now ranks below every established
/// provider of its tier until its balance has stayed in it for an hour.
pub const SEASONED_MS: u64 = 3_600_000;

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
    /// Auctions in the book declined for want of their customer's balance: dropped with the
    /// auction (evicted, expired) or once it is no longer open, so at most the book's
    /// `max_auctions` and `max_auctions_per_customer` of one customer's.
    awaiting: BTreeSet<AuctionId>,
    /// Our auctions' bidders whose award ended without a deal (dropped with the auction).
    passed_over: BTreeMap<AuctionId, BTreeSet<NodeId>>,
    /// Providers whose award of ours ended without a deal, with when it last did: they rank
    /// last on our auctions for [`WALKER_TTL_MS`] (at most [`MAX_WALKERS`]).
    walkers: BTreeMap<NodeId, Timestamp>,
    /// Providers whose agreed deal of ours was given up on for an unclear fault
    /// ([`DealFault::Unclear`]), with when: a second within [`WALKER_TTL_MS`] marks them (at
    /// most [`MAX_WALKERS`]).
    struck: BTreeMap<NodeId, Timestamp>,
}

/// Whose failure ended an agreed deal of ours as customer, as far as the deal task can tell
/// ([`Input::DealFailed`](super::Input::DealFailed)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DealFault {
    /// The provider refused our contract by its own choice, or sent a countersignature that
    /// does not verify: it ranks last on our auctions for [`WALKER_TTL_MS`].
    Provider,
    /// It stayed silent, kept saying it had not seen the agreement, or gave a refusal that our
    /// side may have caused: one such strike is forgiven (our network may have failed), a
    /// second within [`WALKER_TTL_MS`] marks it. Forgiving them all let two funded keys that
    /// agree and go silent end every auction unmarked (session 54, review 8 H1).
    Unclear,
    /// Our own side dropped the deal (its contract could not be built, too many proposals in
    /// flight): nobody is marked.
    Ours,
}

/// Remembers `node` at `now` in `map`, bounded by [`MAX_WALKERS`]: beyond it the one
/// remembered longest gives way. Only the winners of our own auctions get here, so the bound
/// is not a stranger's to fill.
fn remember(map: &mut BTreeMap<NodeId, Timestamp>, node: NodeId, now: Timestamp) {
    if map.len() >= MAX_WALKERS && !map.contains_key(&node) {
        let oldest = map.iter().min_by_key(|(_, at)| **at).map(|(n, _)| *n);
        if let Some(n) = oldest {
            map.remove(&n);
        }
    }
    map.insert(node, now);
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

    /// Auction `id` left the book: it waits for nothing any more.
    pub(super) fn forget_auction(&mut self, id: &AuctionId) {
        self.awaiting.remove(id);
    }

    /// `provider`'s award of ours ended without a deal at `now`: it ranks last on our auctions
    /// for [`WALKER_TTL_MS`]. Only the winners of our own auctions get here, so the bound is
    /// not a stranger's to fill; beyond it the one remembered longest gives way.
    fn walked_away(&mut self, provider: NodeId, now: Timestamp) {
        remember(&mut self.walkers, provider, now);
    }

    /// `provider`'s agreed deal of ours was given up on at `now` for an unclear fault: a
    /// second strike within [`WALKER_TTL_MS`] marks it as [`Self::walked_away`]. Bounded as
    /// the walkers are.
    fn struck(&mut self, provider: NodeId, now: Timestamp) {
        let again = self
            .struck
            .get(&provider)
            .is_some_and(|at| now.saturating_sub(*at) < WALKER_TTL_MS);
        if again {
            self.struck.remove(&provider);
            self.walked_away(provider, now);
        } else {
            remember(&mut self.struck, provider, now);
        }
    }

    /// Forgets the providers that walked away, or were struck, [`WALKER_TTL_MS`] or longer
    /// before `now`.
    pub(super) fn forget_walkers(&mut self, now: Timestamp) {
        self.walkers
            .retain(|_, at| now.saturating_sub(*at) < WALKER_TTL_MS);
        self.struck
            .retain(|_, at| now.saturating_sub(*at) < WALKER_TTL_MS);
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

    /// How far `node` is known to pay at `now`, for the book's eviction order (lowest gives way
    /// first): 0 if it was fed as 0 (the ledger counts it unfunded: a free key), 2 if it was
    /// fed a balance (funded), each only within [`BALANCE_MAX_AGE_MS`], else 1 (unknown). A
    /// balance of any age kept a key funded here for as long as it stayed cached: on a node
    /// that does not auto-bid nothing asks for its customers' balances again, and the feed's
    /// push leaves out accounts that stopped being funded, so one balance moved from key to key
    /// at every push made 128 keys funded for good (review of the fourth review of session 52,
    /// M2). A funded account is asked for again every [`BALANCE_TTL_MS`] while its auction is
    /// open to an auto-bidding node, or pushed every 5 s on a small network, so it stays
    /// funded.
    pub(super) fn payer_rank(&self, now: Timestamp, node: &NodeId) -> u8 {
        match self.funding.balance_since(node, fresh_since(now)) {
            Some(0) => 0,
            None => 1,
            Some(_) => 2,
        }
    }

    /// Whose balance the book would like, because it knows none or only one older than
    /// [`BALANCE_TTL_MS`]: the customers of our lost bids first (an award of one is decided on
    /// a balance fed within [`BALANCE_MAX_AGE_MS`]), then of our bids waiting for their award
    /// (whether a bid lost is kept is decided on such a balance too, also on a node that bids
    /// only by hand), then of auctions declined for want of it, then of the open auctions this
    /// node may bid on, then the bidders on our own open auctions; at most `max`. Our own bids'
    /// customers come first because free keys' declined auctions can fill a poll (fourth
    /// review of session 52). Accounts last fed as 0 come after all the others: each free key
    /// is fed as 0, and a few hundred of them asked for again every [`BALANCE_TTL_MS`] came
    /// before an honest customer's first balance. The node answers with
    /// [`Input::Balances`](super::Input::Balances).
    pub fn balances_wanted(&self, now: Timestamp, max: usize) -> Vec<NodeId> {
        let me = self.me;
        let lost = self
            .my_bids
            .values()
            .filter(move |m| m.lost_until.is_some_and(|t| t > now))
            .map(|m| m.customer);
        let bid_on = self
            .my_bids
            .iter()
            .filter(|(id, m)| {
                m.lost_until.is_none()
                    && self
                        .auctions
                        .get(*id)
                        .is_some_and(|e| !matches!(e.status, AuctionStatus::Awarded { .. }))
            })
            .map(|(_, m)| m.customer);
        let awaiting = self
            .funding
            .awaiting
            .iter()
            .filter_map(|id| self.auctions.get(id))
            .map(|e| e.request.body.customer);
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
        let (mut wanted, mut zeros) = (Vec::new(), Vec::new());
        for n in lost
            .chain(bid_on)
            .chain(awaiting)
            .chain(customers)
            .chain(bidders)
        {
            if wanted.len() >= max {
                break;
            }
            let fed = self.funding.balances.get(&n);
            let current = fed.is_some_and(|k| now.saturating_sub(k.at) < BALANCE_TTL_MS);
            if current || !seen.insert(n) {
                continue;
            }
            if fed.is_some_and(|k| k.balance == 0) {
                if zeros.len() < max {
                    zeros.push(n);
                }
            } else {
                wanted.push(n);
            }
        }
        let room = max.saturating_sub(wanted.len());
        wanted.extend(zeros.into_iter().take(room));
        wanted
    }

    /// Takes the balances the node fed (at most [`MAX_BALANCES`] of one input), lets some go
    /// beyond that bound (balances of 0 first, oldest first, then the oldest of the rest;
    /// counted in `balances_dropped`), and decides again on the auctions declined for want of
    /// the balance of a customer it names, unless it names a 0 fed as 0 before.
    pub(super) fn learn_balances(
        &mut self,
        now: Timestamp,
        balances: Vec<(NodeId, u64)>,
        out: &mut Vec<Effect>,
    ) {
        let unread = balances.len().saturating_sub(MAX_BALANCES);
        let mut learnt = BTreeSet::new();
        for (node, balance) in balances.into_iter().take(MAX_BALANCES) {
            // Funded without a break: fed above 0 again within `BALANCE_MAX_AGE_MS` of the
            // last feed. A key drained between feeds is not fed at all (the push leaves
            // unfunded accounts out), so a gap restarts the clock: one balance moved from key
            // to key every few seconds seasoned hundreds of keys (review 11, H1).
            let prior = self.funding.balances.get(&node);
            let unbroken = prior.is_some_and(|k| now.saturating_sub(k.at) <= BALANCE_MAX_AGE_MS);
            let funded_since = match prior.and_then(|k| k.funded_since) {
                Some(since) if balance > 0 && unbroken => Some(since),
                _ => (balance > 0).then_some(now),
            };
            let before = self.funding.balances.insert(
                node,
                Known {
                    balance,
                    at: now,
                    funded_since,
                },
            );
            // A 0 fed again is no news: re-deciding scans every hold for each auction, and a
            // poll re-decided every auction of up to 256 free keys, 32 each (review of the
            // fourth review of session 52, L4). So a stranger's share freed since is offered to
            // such a customer's waiting auctions only once its balance changes.
            if balance > 0 || before.is_none_or(|k| k.balance > 0) {
                learnt.insert(node);
            }
        }
        let excess = self.funding.balances.len().saturating_sub(MAX_BALANCES);
        if excess > 0 {
            // A funded balance gives way only once no balance of 0 is left: every free key the
            // node is asked about is fed as 0, and by age alone a few thousand of them pushed
            // honest customers' and bidders' balances out (second review of session 52).
            let mut order: Vec<(bool, Timestamp, NodeId)> = self
                .funding
                .balances
                .iter()
                .map(|(n, k)| (k.balance > 0, k.at, *n))
                .collect();
            order.sort_unstable();
            for (.., node) in order.into_iter().take(excess) {
                self.funding.balances.remove(&node);
            }
        }
        let dropped = unread + excess;
        if dropped > 0 {
            self.counters.balances_dropped += dropped as u64;
            tracing::debug!(
                dropped,
                max = MAX_BALANCES,
                "balances dropped: the book keeps the funded ones first"
            );
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
        // `id` is in the book (auto-bids are decided only on auctions there), and leaves this
        // set when it leaves the book: no bound of its own to fill.
        if refusal != HoldRefusal::FundedCap {
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
    /// then those whose balance is unknown, then the rest, each by score, and last the
    /// providers whose award of ours ended without a deal within [`WALKER_TTL_MS`] (module
    /// docs). Bids from providers the auction is not open to, or passed over after their award
    /// of it ended without a deal, never win.
    pub(super) fn choose_winner(&self, now: Timestamp, id: &AuctionId) -> Option<BidScore> {
        self.choose_winner_but(now, id, None)
    }

    /// Whether the next bid of our auction `id` would be awarded if our award of it to
    /// `provider`, made at `now`, ended without a deal ([`Self::award_next`]): we award on our
    /// own, fewer than [`MAX_PASSED_OVER`] bidders were passed over, another bid could win,
    /// and the award can have [`MIN_AWARD_LAPSE_MS`] and still lapse in time for the next one
    /// to reach the losers while they keep their bids ([`Self::next_award_room`]).
    pub(super) fn next_bid_after(&self, now: Timestamp, id: &AuctionId, provider: &NodeId) -> bool {
        self.config.dmu.customer.auto_award
            && self.next_award_room(now, id) >= MIN_AWARD_LAPSE_MS
            && self
                .funding
                .passed_over
                .get(id)
                .is_none_or(|s| s.len() < MAX_PASSED_OVER)
            && self.choose_winner_but(now, id, Some(provider)).is_some()
    }

    /// Whether our award of auction `id`, sent at `now`, binds its provider: it is the
    /// auction's first (nobody passed over yet), sent [`AWARD_MARGIN_MS`] or more before the
    /// bids' holds end ([`Self::hold_until`], ours standing in for the provider's). Then the
    /// provider still holds the bid's capacity, and ending the award without a deal is its
    /// choice. A next bid's provider let go of its hold when the first award was made: the
    /// capacity may have gone to another customer since, or its record of the bid lapsed, and
    /// it refuses such an award without a word, so its lapse says nothing of the provider
    /// (review of the fourth review of session 52, M1).
    pub(super) fn award_binds(&self, now: Timestamp, id: &AuctionId) -> bool {
        let passed = self.funding.passed_over.get(id);
        let Some(e) = self.auctions.get(id) else {
            return false;
        };
        passed.is_none_or(BTreeSet::is_empty)
            && now.saturating_add(AWARD_MARGIN_MS) <= self.hold_until(&e.request)
    }

    /// [`Self::choose_winner`], `except`'s bids left out too.
    fn choose_winner_but(
        &self,
        now: Timestamp,
        id: &AuctionId,
        except: Option<&NodeId>,
    ) -> Option<BidScore> {
        let entry = self.auctions.get(id)?;
        let rules = &self.config.dmu.customer;
        let only = self.restricted.get(id);
        let passed = self.funding.passed_over.get(id);
        let eligible: Vec<(&BidId, &Bid)> = entry
            .bids
            .iter()
            .filter(|(_, b)| {
                let p = &b.body.provider;
                only.is_none_or(|o| o.contains(p))
                    && passed.is_none_or(|s| !s.contains(p))
                    && except != Some(p)
            })
            .collect();
        // The stake at the auction's ceiling ranks first: a 1-token bid's own stake is nothing,
        // so any funded key qualified by it. Yet a provider whose balance covers only the stake
        // at its own price still outranks the unknown and those known not to pay (a free key is
        // fed as 0): ranked with them, the free key's 1-token bid won on score again (third
        // review of session 52). Within each of these, a provider that walked away from, let
        // lapse or never countersigned an award of ours ranks below the others: a funded key
        // that wins on score and never deals otherwise cost each of our auctions one try
        // (fourth review). Only within: an honest provider marked for a refusal it had to make
        // (its hold lapsed, its capacity taken meanwhile) still outranks a key known not to
        // pay, which ranked below a walker won on price again (review of the fourth review).
        // And within those, a provider known funded for less than an hour ranks below the
        // established ones ([`SEASONED_MS`]).
        let permille = rules.provider_stake_permille;
        let ceiling = part_of(entry.request.body.max_price, permille);
        let tier = |b: &Bid| {
            let p = &b.body.provider;
            let by_balance: u8 = match self.funding.balance(p) {
                Some(balance) if covers(balance, ceiling) => 4,
                Some(balance) if covers(balance, part_of(b.body.price, permille)) => 3,
                None => 2,
                Some(_) => 1,
            };
            let seasoned = self
                .funding
                .balances
                .get(p)
                .and_then(|k| k.funded_since)
                .is_some_and(|since| now.saturating_sub(since) >= SEASONED_MS);
            by_balance * 4
                + u8::from(!self.funding.walkers.contains_key(p)) * 2
                + u8::from(seasoned)
        };
        (4u8..=19).rev().find_map(|t| {
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
    /// (the provider refused it or let it lapse; not when we walked away, but for a counter
    /// above our bound, whose next bid [`Self::counter_refused`] awards): [`Self::award_next`].
    pub(super) fn award_next_bids(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let me = self.me;
        let failed: Vec<AwardId> = out
            .iter()
            .filter_map(|e| match e {
                Effect::NegotiationFailed { award, by } if *by != Some(me) => Some(*award),
                _ => None,
            })
            .collect();
        for award in failed {
            self.award_next(now, award, out);
        }
    }

    /// The deal task gave up on the contract of our agreed `award` to `provider`
    /// ([`Input::DealFailed`](super::Input::DealFailed)): the provider ranks last on our
    /// auctions as [`DealFault`] says, whichever award it was (it agreed, so it had the
    /// capacity), and whatever the fault the auction's next bid is awarded if the losers still
    /// keep their bids ([`Self::award_next`]). Before,
    /// an award accepted and never countersigned was never awarded again (fourth review of
    /// session 52). Ignored while the award is still being negotiated: it may yet agree.
    pub(super) fn deal_failed(
        &mut self,
        now: Timestamp,
        award: AwardId,
        provider: NodeId,
        fault: DealFault,
        out: &mut Vec<Effect>,
    ) {
        let open = self
            .deals
            .get(&award)
            .is_some_and(|d| *d.negotiation.status() == NegotiationStatus::Open);
        if open || provider == self.me {
            return;
        }
        match fault {
            DealFault::Provider => self.funding.walked_away(provider, now),
            DealFault::Unclear => self.funding.struck(provider, now),
            DealFault::Ours => {}
        }
        self.award_next(now, award, out);
    }

    /// Our `award` ended without a deal, ended by `by` (`None`: it lapsed): its provider ranks
    /// last on our auctions for [`WALKER_TTL_MS`] if that was its choice. Judged from the deal
    /// itself, so also when the auction has left the book: read from the auction, a lapse
    /// marked nobody once the auction expired first, as the CLI's and fleet placements' do
    /// (review of the fourth review of session 52, H1). Its choice:
    /// - it walked away, from any award of ours: a signed act, where an honest provider that
    ///   can no longer take a next bid's award refuses it without a word (before, a next bid's
    ///   provider was never marked, so a second key killed the fallback: review 7, M1);
    /// - it let an award that bound it ([`Self::award_binds`]) lapse with our proposal on the
    ///   table, and the award had [`MIN_MARKING_LAPSE_MS`](super::close::MIN_MARKING_LAPSE_MS)
    ///   (30 s) or more: a shorter one may end before a slow honest accept arrives (review 7,
    ///   M2);
    /// - it let its counter-offer above our `accept_counter_within_max` bound lapse on such an
    ///   award: its refusal, as in [`Self::counter_refused`] (review 7, H1).
    ///
    /// A next bid's provider that lets the award lapse may have had to (its hold was let go),
    /// and the lapse of a counter that a customer answering by hand left unanswered is ours,
    /// as is the lapse of our own counter (round above 0: an auto provider leaves a counter
    /// below its bid unanswered; review 8, L2).
    /// An award agreed and never countersigned is judged by [`Self::deal_failed`].
    pub(super) fn note_failed_award(&mut self, now: Timestamp, award: AwardId, by: Option<NodeId>) {
        let Some(deal) = self.deals.get(&award) else {
            return;
        };
        let n = &deal.negotiation;
        let terms = n.current_terms();
        let provider = terms.provider;
        let ours = terms.customer == self.me
            && provider != self.me
            && matches!(terms.subject, AwardSubject::Bid { .. });
        let its_choice = match by {
            Some(who) => who == provider,
            None if n.proposed_by() == self.me => {
                deal.bid_held && deal.long_lapse && n.round() == 0
            }
            None => deal.bid_held && above_bound(deal.auto_accept, terms.price),
        };
        if ours && its_choice {
            tracing::debug!(award = %award.short(), provider = %provider.short(), walked_away = by.is_some(), "our award ended without a deal by its provider's choice: it ranks last on our auctions");
            self.funding.walked_away(provider, now);
        }
    }

    /// The provider of our `award` countered above our `accept_counter_within_max` bound (the
    /// auction's maximum price): on an auction we award on our own, with a next bid to award
    /// at `now` ([`Self::award_next`]), that is its refusal. We walk away, mark it as in
    /// [`Self::note_failed_award`] if the award bound it, and award the next bid at once.
    /// Before, the counter was left to lapse and marked nobody (the lapse was taken for ours),
    /// so one funded key won every auction on score and countered above the maximum, and a
    /// second one bidding just behind it kept the auction from a deal (review 7, H1). With no
    /// next bid, or awarding by hand, the counter stays for the operator to answer.
    pub(super) fn counter_refused(
        &mut self,
        now: Timestamp,
        award: AwardId,
        out: &mut Vec<Effect>,
    ) {
        let Some(deal) = self.deals.get(&award) else {
            return;
        };
        let n = &deal.negotiation;
        let terms = n.current_terms();
        let (provider, bid_held) = (terms.provider, deal.bid_held);
        let AwardSubject::Bid { auction, .. } = terms.subject else {
            return;
        };
        let refused = terms.customer == self.me
            && provider != self.me
            && *n.status() == NegotiationStatus::Open
            && n.proposed_by() == provider
            && above_bound(deal.auto_accept, terms.price);
        if !refused || !self.next_bid_now(now, &auction, award, &provider) {
            return;
        }
        tracing::debug!(award = %award.short(), provider = %provider.short(), price = terms.price, "our award's provider countered above our maximum: its refusal");
        let effects = self
            .deals
            .get_mut(&award)
            .map(|d| d.negotiation.handle(now, NegotiationInput::WalkAway));
        self.apply_negotiation(now, award, effects.unwrap_or_default(), out);
        // Our walk-away signed and sent, or there would be two live awards of the auction.
        let ended = self
            .deals
            .get(&award)
            .is_some_and(|d| *d.negotiation.status() != NegotiationStatus::Open);
        if !ended {
            return;
        }
        if bid_held {
            self.funding.walked_away(provider, now);
        }
        self.award_next(now, award, out);
    }

    /// Whether [`Self::award_next`] would award the next bid of our auction `id` at `now`, were
    /// our `award` of it to `provider` to end without a deal now.
    fn next_bid_now(
        &self,
        now: Timestamp,
        id: &AuctionId,
        award: AwardId,
        provider: &NodeId,
    ) -> bool {
        self.config.dmu.customer.auto_award
            && self.auctions.get(id).is_some_and(|e| {
                matches!(e.status, AuctionStatus::Awarded { award: a, .. } if a == award)
                    && now.saturating_add(AWARD_MARGIN_MS) <= self.hold_until(&e.request)
            })
            && self
                .funding
                .passed_over
                .get(id)
                .is_none_or(|s| s.len() < MAX_PASSED_OVER)
            && self.choose_winner_but(now, id, Some(provider)).is_some()
    }

    /// Our `award` of one of our auctions ended without a deal, not by us: the auction's next
    /// bid is awarded, for at most [`MAX_PASSED_OVER`] failed bidders, if we award on our own
    /// and the losers still keep their bids: a next-bid award sent later than
    /// [`AWARD_MARGIN_MS`] before their holds end ([`Self::hold_until`]) reached a provider
    /// that had forgotten the bid, which refused it without a word, and the award lapsed
    /// (review of the fourth review of session 52, M1). Whether the failed provider walked
    /// away is judged where the award ended ([`Self::note_failed_award`],
    /// [`Self::deal_failed`]).
    fn award_next(&mut self, now: Timestamp, award: AwardId, out: &mut Vec<Effect>) {
        let me = self.me;
        let found = self.auctions.iter().find_map(|(id, e)| match e.status {
            AuctionStatus::Awarded { award: a, provider }
                if a == award && e.request.body.customer == me =>
            {
                Some((*id, provider, self.hold_until(&e.request)))
            }
            _ => None,
        });
        let Some((id, provider, holds_end)) = found else {
            return;
        };
        if !self.config.dmu.customer.auto_award {
            return;
        }
        if now.saturating_add(AWARD_MARGIN_MS) > holds_end {
            tracing::debug!(auction = %id.short(), failed = %provider.short(), "award ended without a deal once the losers let go of their bids: no next bid");
            return;
        }
        let passed = self.funding.passed_over.entry(id).or_default();
        if passed.len() >= MAX_PASSED_OVER {
            return;
        }
        passed.insert(provider);
        let Some(next) = self.choose_winner(now, &id) else {
            return;
        };
        tracing::debug!(auction = %id.short(), failed = %provider.short(), next = %next.bid.short(), "award ended without a deal: awarding the next bid");
        if let Some(e) = self.auctions.get_mut(&id) {
            e.status = AuctionStatus::Closed { winner: Some(next) };
        }
        if let Err(error) = self.award(now, id, next.bid, out) {
            out.push(Effect::Rejected { from: None, error });
        }
    }

    /// Whether every auction waiting for its customer's balance is in the book (every test of
    /// the book checks it after every input: the set has no bound but the book's).
    #[cfg(test)]
    pub(super) fn awaiting_in_book(&self) -> bool {
        self.funding
            .awaiting
            .iter()
            .all(|id| self.auctions.contains_key(id))
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

/// Whether `price`, a provider's counter-offer to our award, lies above our bound for accepting
/// counters on our own (`accept_counter_within_max`); never with no bound (a customer that
/// answers by hand).
fn above_bound(bound: Option<PriceBound>, price: u64) -> bool {
    matches!(bound, Some(PriceBound::AtMost(max)) if price > max)
}
