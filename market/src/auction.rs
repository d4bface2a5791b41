//! Auction message types: requests, bids, standing offers and awards, each a signed body.

use serde::{Deserialize, Serialize};

use crate::error::MarketError;
use crate::identity::{Domain, NodeId, Signer, Timestamp};
use crate::ids::{AuctionId, AwardId, BidId, OfferId};
use crate::resources::{Location, Near, Resources};
use crate::signed::{Body, Signed};

/// What the customer is buying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AuctionKind {
    /// Run the customer's service now.
    Hosted,
    /// Stand by to take over the customer's service on failure.
    Standby,
    /// Store the customer's data.
    Storage,
}

/// The unsigned content of an auction request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuctionBody {
    /// The buyer.
    pub customer: NodeId,
    /// Regional market name (see `topic_for_region`).
    pub region: String,
    /// Resources needed.
    pub resources: Resources,
    /// How long the resources are needed, in ms.
    pub duration_ms: u64,
    /// Highest acceptable total price in tokens.
    pub max_price: u64,
    /// Bids are accepted strictly before this time.
    pub window_closes_at: Timestamp,
    /// Hosted, standby or storage.
    pub kind: AuctionKind,
    /// Optional location constraint on the provider.
    pub near: Option<Near>,
    /// Author nonce (unique per customer).
    pub nonce: u64,
    /// Creation time.
    pub created_at: Timestamp,
    /// The request (and its award) stop being valid at this time.
    pub expires_at: Timestamp,
    /// CID of the service image to run (the contract's image), if the customer names one.
    #[serde(default)]
    pub service: Option<String>,
    /// Hosted service wanted from this time on (a pre-contracted slot), else right away.
    #[serde(default)]
    pub start_at: Option<Timestamp>,
    /// The only providers the customer will award (a fleet placement names its target);
    /// empty: any. Others do not bid, so they hold no capacity for it (at most
    /// [`MAX_AUCTION_ONLY`], checked on receipt). Left out of the encoding when empty, so an
    /// open auction's bytes and id are what they were before the field existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<NodeId>,
}

/// Most providers an auction may be restricted to.
pub const MAX_AUCTION_ONLY: usize = 64;

/// A signed auction request.
pub type AuctionRequest = Signed<AuctionBody>;

impl Body for AuctionBody {
    const DOMAIN: Domain = Domain::AUCTION;
    const KIND: &'static str = "auction";
    type Id = AuctionId;
    fn author(&self) -> NodeId {
        self.customer
    }
    fn nonce(&self) -> u64 {
        self.nonce
    }
    fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
}

/// What a customer fills in to open an auction; `create` adds identity, times and signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuctionSpec {
    /// Regional market.
    pub region: String,
    /// Resources needed.
    pub resources: Resources,
    /// Duration in ms.
    pub duration_ms: u64,
    /// Maximum total price.
    pub max_price: u64,
    /// Bidding window length in ms.
    pub window_ms: u64,
    /// Kind of service.
    pub kind: AuctionKind,
    /// Location constraint.
    pub near: Option<Near>,
    /// How long after the window closes the request stays valid (time to award).
    pub award_grace_ms: u64,
    /// CID of the service image the contract will carry.
    #[serde(default)]
    pub service: Option<String>,
    /// Start the hosted service at this time (ms) rather than right away.
    #[serde(default)]
    pub start_at: Option<Timestamp>,
}

impl AuctionSpec {
    /// Signs a request opened at `now` by `signer`.
    pub fn create(
        self,
        signer: &dyn Signer,
        now: Timestamp,
        nonce: u64,
    ) -> Result<AuctionRequest, MarketError> {
        self.create_for(signer, now, nonce, Vec::new())
    }

    /// [`AuctionSpec::create`] for an auction only the providers in `only` may win (empty:
    /// any); the request names them so that nobody else bids.
    pub fn create_for(
        self,
        signer: &dyn Signer,
        now: Timestamp,
        nonce: u64,
        only: Vec<NodeId>,
    ) -> Result<AuctionRequest, MarketError> {
        let window_closes_at = now.saturating_add(self.window_ms);
        let body = AuctionBody {
            customer: signer.node_id(),
            region: self.region,
            resources: self.resources,
            duration_ms: self.duration_ms,
            max_price: self.max_price,
            window_closes_at,
            kind: self.kind,
            near: self.near,
            nonce,
            created_at: now,
            expires_at: window_closes_at.saturating_add(self.award_grace_ms),
            service: self.service,
            start_at: self.start_at,
            only,
        };
        Signed::sign(body, signer)
    }
}

/// The unsigned content of a bid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BidBody {
    /// The auction bid on.
    pub auction: AuctionId,
    /// The seller.
    pub provider: NodeId,
    /// Total price asked, in tokens.
    pub price: u64,
    /// The provider's advertised free capacity (must hold the auction's resources).
    pub capacity: Resources,
    /// The provider's location, required when the auction has `near`.
    pub location: Option<Location>,
    /// Self-claimed reputation in permille. Unverified: a node should substitute the
    /// ledger-derived reputation before scoring when it has one.
    pub reputation_permille: u16,
    /// Author nonce (unique per provider).
    pub nonce: u64,
    /// Expiry (normally the auction's expiry).
    pub expires_at: Timestamp,
}

/// A signed bid.
pub type Bid = Signed<BidBody>;

impl Body for BidBody {
    const DOMAIN: Domain = Domain::BID;
    const KIND: &'static str = "bid";
    type Id = BidId;
    fn author(&self) -> NodeId {
        self.provider
    }
    fn nonce(&self) -> u64 {
        self.nonce
    }
    fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
}

/// What a provider fills in to bid; `create` signs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BidSpec {
    /// Total price.
    pub price: u64,
    /// Advertised free capacity.
    pub capacity: Resources,
    /// Location.
    pub location: Option<Location>,
    /// Reputation claim in permille.
    pub reputation_permille: u16,
}

impl BidSpec {
    /// Signs a bid on `auction` (expiring with it).
    pub fn create(
        self,
        auction: &AuctionRequest,
        signer: &dyn Signer,
        nonce: u64,
    ) -> Result<Bid, MarketError> {
        let body = BidBody {
            auction: auction.id()?,
            provider: signer.node_id(),
            price: self.price,
            capacity: self.capacity,
            location: self.location,
            reputation_permille: self.reputation_permille,
            nonce,
            expires_at: auction.body.expires_at,
        };
        Signed::sign(body, signer)
    }
}

/// The unsigned content of a standing offer (an ask any customer can take).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfferBody {
    /// The seller.
    pub provider: NodeId,
    /// Regional market.
    pub region: String,
    /// Resources offered.
    pub resources: Resources,
    /// Price in tokens per hour.
    pub price_per_hour: u64,
    /// Provider's location.
    pub location: Option<Location>,
    /// Author nonce.
    pub nonce: u64,
    /// Expiry.
    pub expires_at: Timestamp,
}

/// A signed standing offer.
pub type Offer = Signed<OfferBody>;

impl Body for OfferBody {
    const DOMAIN: Domain = Domain::OFFER;
    const KIND: &'static str = "offer";
    type Id = OfferId;
    fn author(&self) -> NodeId {
        self.provider
    }
    fn nonce(&self) -> u64 {
        self.nonce
    }
    fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
}

/// What was awarded: a bid in an auction, or a taken standing offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AwardSubject {
    /// The winning bid of an auction.
    Bid {
        /// Auction id.
        auction: AuctionId,
        /// Winning bid id.
        bid: BidId,
    },
    /// A taken standing offer.
    Offer {
        /// Offer id.
        offer: OfferId,
    },
}

/// The unsigned content of an award, signed by the customer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AwardBody {
    /// The buyer (signer).
    pub customer: NodeId,
    /// The chosen provider.
    pub provider: NodeId,
    /// What was chosen.
    pub subject: AwardSubject,
    /// Agreed starting price (negotiation may change it).
    pub price: u64,
    /// Resources awarded.
    pub resources: Resources,
    /// Service duration in ms.
    pub duration_ms: u64,
    /// Kind of service.
    pub kind: AuctionKind,
    /// Author nonce.
    pub nonce: u64,
    /// Expiry.
    pub expires_at: Timestamp,
}

/// A signed award.
pub type Award = Signed<AwardBody>;

impl Body for AwardBody {
    const DOMAIN: Domain = Domain::AWARD;
    const KIND: &'static str = "award";
    type Id = AwardId;
    fn author(&self) -> NodeId {
        self.customer
    }
    fn nonce(&self) -> u64 {
        self.nonce
    }
    fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
}

impl AwardBody {
    /// The auction this award closes, if it is a bid award.
    pub fn auction(&self) -> Option<AuctionId> {
        match self.subject {
            AwardSubject::Bid { auction, .. } => Some(auction),
            AwardSubject::Offer { .. } => None,
        }
    }
}

/// Total price of a standing offer for `duration_ms`, rounded up to whole tokens.
pub fn offer_total_price(price_per_hour: u64, duration_ms: u64) -> Option<u64> {
    let total = u128::from(price_per_hour).checked_mul(u128::from(duration_ms))?;
    u64::try_from(total.div_ceil(3_600_000)).ok()
}
