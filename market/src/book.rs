//! The market book (`MarketState`): open auctions, bids, standing offers, awards and the
//! negotiations that follow, for every regional market this node follows.
//!
//! Pure: the node feeds `Input`s (local commands, decoded peer messages, timer ticks) and
//! carries out the returned `Effect`s. Rejected messages never reach the book; they come back
//! as `Effect::Rejected`.

mod agreement;
mod bounds;
#[cfg(any(test, feature = "test-utils"))]
mod byzantine;
mod close;
mod deal;
mod funding;
mod local;
mod lost;
mod remote;
mod restore;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use agreement::{Agreement, AuctionFacts};
pub use bounds::{BookCounters, BookStats};
#[cfg(any(test, feature = "test-utils"))]
pub use byzantine::CUT_TERM_MS;
pub use funding::{BALANCE_MAX_AGE_MS, BALANCE_TTL_MS, DealFault, MAX_BALANCES, WALKER_TTL_MS};
pub use restore::{ContractHold, MAX_RESTORED_HOLDS};

use crate::auction::{AuctionKind, AuctionRequest, Bid, Offer};
use crate::capacity::{CapacityLedger, ReservationKey};
use crate::dmu::DmuConfig;
use crate::error::MarketError;
use crate::identity::{NodeId, Signer, Timestamp};
use crate::ids::{AuctionId, AwardId, BidId, OfferId};
use crate::message::MarketMessage;
use crate::negotiation::{AgreedTerms, Negotiation, NegotiationInput};
use crate::resources::{Location, Resources};
use crate::score::BidScore;
use crate::validate::{Limits, ReplayGuard};

/// Market configuration (the `[market]` section of the node config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MarketConfig {
    /// Validation bounds and known regions.
    pub limits: Limits,
    /// Decision rules.
    pub dmu: DmuConfig,
    /// Capacity this node offers as a provider.
    pub capacity: Resources,
    /// Most auctions plus offers in one snapshot response.
    pub snapshot_max: usize,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            limits: Limits::default(),
            dmu: DmuConfig::default(),
            capacity: Resources::default(),
            snapshot_max: 256,
        }
    }
}

/// A peer's snapshot request is answered at most once per this long (each answer carries up
/// to [`MarketConfig::snapshot_max`] auctions and offers).
pub const SNAPSHOT_EVERY_MS: u64 = 10_000;
/// How long a provider holds the capacity of an award (a deal being agreed, or agreed) until its
/// contract is registered: the ledger refuses a contract signed more than 10 min before
/// (`agora_contracts::ledger::MAX_REGISTER_AGE_MS`), so one not registered 11 min after the
/// award never will be. Once it is, the node extends the hold to the contract's end
/// ([`Input::HoldAward`]). Before, an agreed hold never ended: every contract's
/// capacity stayed reserved for good, and a stranger's free award froze a provider's capacity
/// (THREATS C20).
pub const AGREED_HOLD_MS: u64 = 660_000;
/// Most peers whose last snapshot answer is remembered; while that many were answered within
/// [`SNAPSHOT_EVERY_MS`], further requests wait.
pub const MAX_SNAPSHOT_PEERS: usize = 256;
/// Most snapshots this node waits for at once.
pub const MAX_SNAPSHOTS_ASKED: usize = 64;

/// What a provider fills in to publish a standing offer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfferSpec {
    /// Regional market.
    pub region: String,
    /// Resources offered.
    pub resources: Resources,
    /// Tokens per hour.
    pub price_per_hour: u64,
    /// Provider location.
    pub location: Option<Location>,
    /// Lifetime in ms.
    pub ttl_ms: u64,
}

/// Lifecycle of an auction in the book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuctionStatus {
    /// Accepting bids.
    Open,
    /// Window closed; `winner` is set on the customer's node when a valid bid exists.
    Closed {
        /// Best bid, if any.
        winner: Option<BidScore>,
    },
    /// Awarded to a provider.
    Awarded {
        /// Award id.
        award: AwardId,
        /// Winning provider.
        provider: NodeId,
    },
}

/// An auction plus the bids this node holds for it (only the customer's node holds bids).
#[derive(Clone, Debug, PartialEq)]
pub struct AuctionEntry {
    /// The signed request.
    pub request: AuctionRequest,
    /// Valid bids received, by id.
    pub bids: BTreeMap<BidId, Bid>,
    /// Lifecycle state.
    pub status: AuctionStatus,
}

/// Inputs to the market.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Open an auction as customer.
    CreateAuction(crate::auction::AuctionSpec),
    /// Open an auction as customer that only bids from `only` can win (a fleet deployment
    /// placing a replica on the providers its plan chose); other providers' bids are refused.
    CreateAuctionFor {
        /// The auction.
        spec: crate::auction::AuctionSpec,
        /// The providers whose bids may win.
        only: std::collections::BTreeSet<NodeId>,
    },
    /// Bid on a known auction as provider.
    PlaceBid {
        /// The auction.
        auction: AuctionId,
        /// The bid's content.
        spec: crate::auction::BidSpec,
    },
    /// Publish a standing offer as provider.
    PublishOffer(OfferSpec),
    /// Take a known standing offer as customer for `duration_ms`.
    TakeOffer {
        /// The offer.
        offer: OfferId,
        /// Rental duration.
        duration_ms: u64,
    },
    /// Award a closed auction to a bid (manual; `customer.auto_award` does it on close).
    Award {
        /// The auction.
        auction: AuctionId,
        /// The chosen bid.
        bid: BidId,
    },
    /// Ask `peer` for the open auctions and offers of `region` (late join).
    RequestSnapshot {
        /// The region.
        region: String,
        /// Who to ask.
        peer: NodeId,
    },
    /// A message from a peer (already decoded).
    Remote {
        /// The sending peer (transport identity).
        from: NodeId,
        /// The message.
        msg: MarketMessage,
    },
    /// A local negotiation decision for an award.
    Negotiate {
        /// The award.
        award: AwardId,
        /// Counter, accept or walk away.
        input: NegotiationInput,
    },
    /// Free a firm reservation (e.g. the contract built on a deal ended).
    ReleaseCapacity(ReservationKey),
    /// What this node's ledger says of `node`'s reputation (permille), for scoring its bids on
    /// our auctions (THREATS P6). Kept only while `node` has a bid on one of them.
    Reputation {
        /// The bidder.
        node: NodeId,
        /// Its reputation, 0..=1000.
        permille: u16,
    },
    /// Hold the capacity of our agreed `award` (as provider) until `until` instead of
    /// [`AGREED_HOLD_MS`] after the award: the node's deal task says so when it countersigns
    /// the award's contract (the registration window from then) and once the contract is
    /// registered (to its end and a margin). Awards that hold nothing (any more) are ignored.
    HoldAward {
        /// The award.
        award: AwardId,
        /// When the hold ends.
        until: Timestamp,
        /// The award's contract is on the ledger: paid for, its hold no longer counts against
        /// its customer's holds (THREATS C31).
        registered: bool,
    },
    /// Hold the capacity of the contracts this node still provides, as its ledger has them
    /// once caught up after a start, each under [`ReservationKey::Contract`]: a book made with
    /// [`MarketState::awaiting_contracts`] bids on nothing before (THREATS C35), and bids then
    /// on the open auctions it passed over meanwhile. Holds already held are kept as they are.
    RestoreCapacity(Vec<ContractHold>),
    /// What this node's ledger says accounts can spend: each account's spendable balance if
    /// the ledger counts it funded (it holds the ledger's minimum balance), else 0. The node
    /// feeds those [`MarketState::balances_wanted`] names (customers of auctions we may bid
    /// on, bidders on ours); the book keeps [`MAX_BALANCES`], funded ones first. A customer whose
    /// balance covers the quote and its stake may hold bids here on its own, every other
    /// shares one budget (THREATS C31); a bidder whose balance covers the provider stake wins
    /// first (THREATS C32).
    Balances(Vec<(NodeId, u64)>),
    /// The deal task gave up on the contract of our agreed `award` as customer: the auction's
    /// next bid is awarded as when the award lapses, if the losers still keep their bids, and
    /// `provider` ranks last on our auctions for [`WALKER_TTL_MS`] as `fault` says (THREATS
    /// C32).
    DealFailed {
        /// The award.
        award: AwardId,
        /// Its provider.
        provider: NodeId,
        /// Whose failure it was, as far as the deal task can tell.
        fault: DealFault,
    },
    /// Timer: close windows, award, expire entries and holds.
    Tick,
}

/// Effects for the node to carry out.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Publish on the gossip topic.
    Broadcast {
        /// Topic (`topic_for_region`).
        topic: String,
        /// Message.
        msg: MarketMessage,
    },
    /// Send to one peer (request-response).
    Send {
        /// Recipient.
        to: NodeId,
        /// Message.
        msg: MarketMessage,
    },
    /// Feed `Input::Tick` at (or after) this time.
    ScheduleTimeout {
        /// When.
        at: Timestamp,
    },
    /// A valid bid reached our auction.
    BidReceived {
        /// Auction.
        auction: AuctionId,
        /// Bid.
        bid: BidId,
        /// Provider.
        provider: NodeId,
        /// Price.
        price: u64,
    },
    /// Our auction's window closed.
    AuctionClosed {
        /// Auction.
        auction: AuctionId,
        /// Best valid bid, if any.
        winner: Option<BidScore>,
    },
    /// An award was made (we are customer or provider).
    Awarded {
        /// Award id.
        award: AwardId,
        /// Auction, for bid awards.
        auction: Option<AuctionId>,
        /// Buyer.
        customer: NodeId,
        /// Seller.
        provider: NodeId,
        /// Price.
        price: u64,
    },
    /// The counterparty proposed new terms; answer with `Input::Negotiate`.
    Proposed(AgreedTerms),
    /// Deal agreed; hand its terms to the contracts crate, with what its auction said of the
    /// contract, read as it was agreed ([`Agreement::auction`]).
    Agreed(Agreement),
    /// A negotiation ended without a deal (reservations were released).
    NegotiationFailed {
        /// Award.
        award: AwardId,
        /// Who ended it (`None`: timeout).
        by: Option<NodeId>,
    },
    /// An input or message was refused.
    Rejected {
        /// The peer it came from, `None` for local inputs.
        from: Option<NodeId>,
        /// Why.
        error: MarketError,
    },
}

/// A bid this node placed as provider, with what the auction it bid on said (as its customer
/// signed it). An award of the bid must match it (THREATS C27), and the contract proposed for
/// the award is checked against its image and slot (THREATS C36): read from the book instead,
/// they were gone once a customer let its auction expire before proposing. Kept while the
/// bid's capacity is held, so also after the auction left the book.
#[derive(Clone, Debug, PartialEq)]
pub struct MyBid {
    /// Our bid.
    pub bid: BidId,
    /// Its price.
    pub price: u64,
    /// The auction's customer: whose lost bids are counted (THREATS C32).
    pub customer: NodeId,
    /// The service image the auction named (`AuctionBody::service`).
    pub image: Option<String>,
    /// The start of the auction's slot (`AuctionBody::start_at`), if it named one.
    pub start_at: Option<Timestamp>,
    /// The auction's term.
    pub duration_ms: u64,
    /// The auction's kind.
    pub kind: AuctionKind,
    /// Set when another provider's award made us let go of the bid's hold: until then (when
    /// the hold would have lapsed) an award of our bid may still come, if that award ends
    /// without a deal (THREATS C32), and takes the capacity again if it is free. Set and
    /// cleared only in `book/lost.rs`, which counts them.
    pub lost_until: Option<Timestamp>,
}

/// Most bid records kept after another provider was awarded (`MyBid::lost_until`), waiting for
/// a next-bid award (THREATS C32); beyond them, or beyond `max_holds_per_funded_customer` of
/// one customer's, a lost bid is forgotten at once.
pub const MAX_LOST_BIDS: usize = 256;

/// A price limit within which counter-offers are accepted automatically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PriceBound {
    /// Customer: accept prices up to this.
    AtMost(u64),
    /// Provider: accept prices from this up.
    AtLeast(u64),
}

/// One negotiation plus what it holds.
#[derive(Debug)]
struct Deal<S> {
    negotiation: Negotiation<S>,
    reservation: Option<ReservationKey>,
    auto_accept: Option<PriceBound>,
    /// Our award of a bid whose provider still held it when we sent the award
    /// (`MarketState::award_binds`): letting it lapse, or countering above our bound, is then
    /// the provider's choice, and marks it as a walker (THREATS C32). False for every other
    /// deal. A walk-away marks whatever this says.
    bid_held: bool,
    /// Our award had `close::MIN_MARKING_LAPSE_MS` (30 s) or more to be agreed: only then does
    /// a lapse with our proposal on the table mark its provider, since a slow honest accept may
    /// not arrive in less (review 7, M2).
    long_lapse: bool,
}

/// The market state machine of one node.
#[derive(Debug)]
pub struct MarketState<S> {
    signer: S,
    me: NodeId,
    config: MarketConfig,
    auctions: BTreeMap<AuctionId, AuctionEntry>,
    offers: BTreeMap<OfferId, Offer>,
    replay: ReplayGuard,
    ledger: CapacityLedger,
    /// Our bids, by auction, while their capacity is held (tentatively, or for an award), or
    /// lost but kept for a next-bid award.
    my_bids: BTreeMap<AuctionId, MyBid>,
    /// How many of `my_bids` are lost, in all and by customer (`book/lost.rs`).
    lost_bids: lost::LostBids,
    deals: BTreeMap<AwardId, Deal<S>>,
    last_nonce: u64,
    counters: BookCounters,
    /// Snapshots this node asked for and has not received: (peer, region).
    snapshots_asked: std::collections::BTreeSet<(NodeId, String)>,
    /// When this node last answered each peer's snapshot request.
    snapshots_served: BTreeMap<NodeId, Timestamp>,
    /// Own auctions that only some providers may win (dropped with the auction).
    restricted: BTreeMap<AuctionId, std::collections::BTreeSet<NodeId>>,
    /// The reservation of each award we took as provider, while it holds one (dropped with
    /// the reservation).
    award_holds: BTreeMap<AwardId, ReservationKey>,
    /// The offer and customer of each award of our standing offers in `award_holds` (dropped
    /// with it): one customer holds one award of an offer at a time.
    offer_holds: BTreeMap<AwardId, (OfferId, NodeId)>,
    /// Bidders' reputations as this node's ledger knows them, for those with a bid on one of
    /// our auctions ([`Input::Reputation`]).
    reputations: BTreeMap<NodeId, u16>,
    /// Test hooks: what this node does unlike an honest one (`book/byzantine.rs`).
    #[cfg(any(test, feature = "test-utils"))]
    byzantine: byzantine::Byzantine,
    /// Whether the capacity of the contracts this node still runs is held
    /// ([`Input::RestoreCapacity`]); until then it takes no work (THREATS C35).
    restored: bool,
    /// Who can pay, whom our holds are for, and the bidders our awards failed with
    /// ([`Input::Balances`], THREATS C31 and C32).
    funding: funding::Funding,
}

impl<S: Signer + Clone> MarketState<S> {
    /// A fresh book for the node signing with `signer`, with none of its capacity in use: for
    /// a node with no ledger, so no contract it could still be running.
    pub fn new(signer: S, config: MarketConfig) -> Self {
        MarketState {
            me: signer.node_id(),
            signer,
            replay: ReplayGuard::bounded(
                config.limits.replay_window,
                config.limits.max_replay_nonces,
            ),
            ledger: CapacityLedger::new(config.capacity.clone()),
            config,
            auctions: BTreeMap::new(),
            offers: BTreeMap::new(),
            my_bids: BTreeMap::new(),
            lost_bids: lost::LostBids::default(),
            deals: BTreeMap::new(),
            last_nonce: 0,
            restricted: BTreeMap::new(),
            counters: BookCounters::default(),
            snapshots_asked: std::collections::BTreeSet::new(),
            snapshots_served: BTreeMap::new(),
            award_holds: BTreeMap::new(),
            offer_holds: BTreeMap::new(),
            reputations: BTreeMap::new(),
            #[cfg(any(test, feature = "test-utils"))]
            byzantine: byzantine::Byzantine::default(),
            restored: true,
            funding: funding::Funding::default(),
        }
    }

    /// A book for a node with a ledger, which may name contracts it still runs from before a
    /// restart: it takes no work (no bid, no taken offer) until [`Input::RestoreCapacity`]
    /// holds their capacity. Before, a restarted provider's capacity all looked free and it
    /// took work on top of its running contracts (THREATS C35).
    pub fn awaiting_contracts(signer: S, config: MarketConfig) -> Self {
        MarketState {
            restored: false,
            ..Self::new(signer, config)
        }
    }

    /// Applies one input at time `now`.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        let result = match input {
            Input::CreateAuction(spec) => self
                .create_auction(now, spec, Vec::new(), &mut out)
                .map(|_| ()),
            Input::CreateAuctionFor { spec, only } => self
                .create_auction(now, spec, only.iter().copied().collect(), &mut out)
                .map(|id| {
                    self.restricted.insert(id, only);
                }),
            Input::PlaceBid { auction, spec } => self
                .require_restored()
                .and_then(|()| self.place_bid(now, auction, spec, &mut out)),
            Input::PublishOffer(spec) => self.publish_offer(now, spec, &mut out),
            Input::TakeOffer { offer, duration_ms } => {
                self.take_offer(now, offer, duration_ms, &mut out)
            }
            Input::Award { auction, bid } => self.award(now, auction, bid, &mut out),
            Input::RequestSnapshot { region, peer } => {
                // Only an answer to a request is taken (a few at a time).
                if self.snapshots_asked.len() < MAX_SNAPSHOTS_ASKED {
                    self.snapshots_asked.insert((peer, region.clone()));
                    out.push(Effect::Send {
                        to: peer,
                        msg: MarketMessage::SnapshotRequest { region },
                    });
                }
                Ok(())
            }
            Input::Remote { from, msg } => {
                if let Err(error) = self.remote(now, from, msg, &mut out) {
                    tracing::debug!(peer = %from.short(), %error, "market message rejected");
                    out.push(Effect::Rejected {
                        from: Some(from),
                        error,
                    });
                }
                Ok(())
            }
            Input::Negotiate { award, input } => self.negotiate(now, award, input, &mut out),
            Input::ReleaseCapacity(key) => {
                self.ledger.release(&key);
                Ok(())
            }
            Input::Reputation { node, permille } => {
                if self.bids_on_mine(&node) {
                    self.reputations.insert(node, permille.min(1000));
                }
                Ok(())
            }
            Input::HoldAward {
                award,
                until,
                registered,
            } => {
                if let Some(key) = self.award_holds.get(&award).copied() {
                    self.ledger.hold_until(&key, until);
                    if registered {
                        self.funding.registered(key);
                    }
                }
                Ok(())
            }
            Input::RestoreCapacity(holds) => {
                self.restore_capacity(now, holds, &mut out);
                Ok(())
            }
            Input::Balances(balances) => {
                self.learn_balances(now, balances, &mut out);
                Ok(())
            }
            Input::DealFailed {
                award,
                provider,
                fault,
            } => {
                self.deal_failed(now, award, provider, fault, &mut out);
                Ok(())
            }
            Input::Tick => {
                self.tick(now, &mut out);
                self.tick_funding();
                Ok(())
            }
        };
        if let Err(error) = result {
            out.push(Effect::Rejected { from: None, error });
        }
        // An award of ours that ended without a deal goes to the next bid (THREATS C32).
        self.award_next_bids(now, &mut out);
        // Every test of the book checks that the counts of lost bids never drift (their bounds
        // are checked on them, not on a scan).
        #[cfg(test)]
        assert!(
            self.lost_in_step(),
            "the counts of lost bids drifted from our bids"
        );
        #[cfg(test)]
        assert!(
            self.awaiting_in_book(),
            "an auction waits for its customer's balance outside the book"
        );
        out
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The configuration in force.
    pub fn config(&self) -> &MarketConfig {
        &self.config
    }

    /// A known auction.
    pub fn auction(&self, id: &AuctionId) -> Option<&AuctionEntry> {
        self.auctions.get(id)
    }

    /// All known auctions.
    pub fn auctions(&self) -> &BTreeMap<AuctionId, AuctionEntry> {
        &self.auctions
    }

    /// All live standing offers.
    pub fn offers(&self) -> &BTreeMap<OfferId, Offer> {
        &self.offers
    }

    /// Whether our agreed `award` (as provider) still holds its capacity.
    pub fn holds_award(&self, award: &AwardId) -> bool {
        self.award_holds
            .get(award)
            .is_some_and(|k| self.ledger.reservations().contains_key(k))
    }

    /// Our bid on `auction` (as provider) and what the auction said when we bid, while the
    /// bid's capacity is held, also after the auction left the book.
    pub fn my_bid(&self, auction: &AuctionId) -> Option<&MyBid> {
        self.my_bids.get(auction)
    }

    /// Bidders' reputations as this node's ledger knows them ([`Input::Reputation`]).
    pub fn reputations(&self) -> &BTreeMap<NodeId, u16> {
        &self.reputations
    }

    /// This node's provider capacity ledger.
    pub fn ledger(&self) -> &CapacityLedger {
        &self.ledger
    }

    /// The negotiation for `award`, if one is running or finished here.
    pub fn negotiation(&self, award: &AwardId) -> Option<&Negotiation<S>> {
        self.deals.get(award).map(|d| &d.negotiation)
    }

    /// Next nonce: strictly increasing and at least `now`, so restarts do not reuse nonces.
    fn next_nonce(&mut self, now: Timestamp) -> u64 {
        self.last_nonce = self.last_nonce.saturating_add(1).max(now);
        self.last_nonce
    }
}

#[cfg(test)]
#[path = "book/bounds_tests.rs"]
mod bounds_tests;
#[cfg(test)]
#[path = "book/funding_tests.rs"]
mod funding_tests;
#[cfg(test)]
#[path = "book/lost_tests.rs"]
mod lost_tests;
#[cfg(test)]
#[path = "book/next_bid_tests.rs"]
mod next_bid_tests;
#[cfg(test)]
#[path = "book/reject_tests.rs"]
mod reject_tests;
#[cfg(test)]
#[path = "book/restore_tests.rs"]
mod restore_tests;
#[cfg(test)]
#[path = "book/strangers_tests.rs"]
mod strangers_tests;
#[cfg(test)]
#[path = "book/tests.rs"]
mod tests;
