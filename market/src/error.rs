//! The market's typed errors; each message names the ids involved and what to do.

use crate::capacity::CapacityError;
use crate::identity::{NodeId, SignatureError, Timestamp};
use crate::ids::{AuctionId, AwardId, BidId, OfferId};

/// Why a market message or local command was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MarketError {
    /// A body could not be encoded to canonical bytes.
    #[error("could not encode {kind}: {reason}")]
    Encoding {
        /// Message kind.
        kind: &'static str,
        /// Encoder message.
        reason: String,
    },
    /// Wire bytes are not a market message.
    #[error(
        "could not decode market message: {0}; is the peer running a compatible agora version?"
    )]
    Decode(String),
    /// The signature does not verify (forged or corrupted).
    #[error("{kind} from {author} has a bad signature; dropping it: {source}")]
    BadSignature {
        /// Message kind.
        kind: &'static str,
        /// Claimed author.
        author: NodeId,
        /// Verification failure.
        source: SignatureError,
    },
    /// Local signing with a key that is not the body's author.
    #[error("{kind} names author {author} but the signer is {signer}; sign with the author's key")]
    WrongSigner {
        /// Message kind.
        kind: &'static str,
        /// Body author.
        author: NodeId,
        /// Signer identity.
        signer: NodeId,
    },
    /// Nonce already seen (or older than the replay window) for this author.
    #[error("{kind} from {author} reuses nonce {nonce} (replay); use a fresh, increasing nonce")]
    Replay {
        /// Message kind.
        kind: &'static str,
        /// Author.
        author: NodeId,
        /// Reused nonce.
        nonce: u64,
    },
    /// The message has expired.
    #[error("{kind} {id} expired at {expires_at} (now {now})")]
    Expired {
        /// Message kind.
        kind: &'static str,
        /// Message id.
        id: String,
        /// Expiry.
        expires_at: Timestamp,
        /// Current time.
        now: Timestamp,
    },
    /// The region is not one this node knows.
    #[error("unknown region '{region}'; add it to market.regions or use a known region")]
    UnknownRegion {
        /// The region name.
        region: String,
    },
    /// The auction's bidding window has closed.
    #[error("auction {auction} window closed at {closed_at} (now {now})")]
    WindowClosed {
        /// Auction id.
        auction: AuctionId,
        /// Close time.
        closed_at: Timestamp,
        /// Current time.
        now: Timestamp,
    },
    /// A bid or award for an auction this node does not know.
    #[error("unknown auction {auction}; request a snapshot of its region first")]
    UnknownAuction {
        /// Auction id.
        auction: AuctionId,
    },
    /// A standing offer this node does not know.
    #[error("unknown offer {offer}; it may have expired")]
    UnknownOffer {
        /// Offer id.
        offer: OfferId,
    },
    /// A negotiation message for an award this node is not party to.
    #[error("unknown award {award}; this node is not negotiating it")]
    UnknownAward {
        /// Award id.
        award: AwardId,
    },
    /// Our bid in this auction was already awarded under another award: one bid, one deal.
    #[error(
        "auction {auction} already awarded our bid under award {first}; a second award {award} \
         of the same bid is refused"
    )]
    AlreadyAwarded {
        /// Auction id.
        auction: AuctionId,
        /// The award taken.
        first: AwardId,
        /// The award refused.
        award: AwardId,
    },
    /// The customer already holds a live award of this standing offer: one at a time.
    #[error(
        "this customer already holds offer {offer} under award {first}, so award {award} \
         is refused: one award of an offer per customer at a time (take it again once that \
         award's hold has ended)"
    )]
    OfferTaken {
        /// The offer.
        offer: OfferId,
        /// The award holding it.
        first: AwardId,
        /// The award refused.
        award: AwardId,
    },
    /// A bid this node does not know.
    #[error("unknown bid {bid} in auction {auction}")]
    UnknownBid {
        /// Auction id.
        auction: AuctionId,
        /// Bid id.
        bid: BidId,
    },
    /// A bid asks more than the auction's maximum price.
    #[error("bid {bid} asks {price} tokens, above auction {auction}'s max price {max_price}")]
    PriceAboveMax {
        /// Auction id.
        auction: AuctionId,
        /// Bid id.
        bid: BidId,
        /// Asked price.
        price: u64,
        /// Maximum.
        max_price: u64,
    },
    /// A bid whose provider's advertised capacity cannot hold the auction's needs.
    #[error(
        "bid {bid} by {provider} advertises capacity that cannot hold auction {auction}'s resources"
    )]
    ExceedsCapacity {
        /// Auction id.
        auction: AuctionId,
        /// Bid id.
        bid: BidId,
        /// Provider.
        provider: NodeId,
    },
    /// The provider is too far away (or gave no location for a located auction).
    #[error("bid {bid} is out of auction {auction}'s range: {reason}")]
    OutOfRange {
        /// Auction id.
        auction: AuctionId,
        /// Bid id.
        bid: BidId,
        /// Why.
        reason: String,
    },
    /// A field is zero or out of any sensible range.
    #[error("{kind} {id}: field {field} has absurd value {value}; {hint}")]
    Absurd {
        /// Message kind.
        kind: &'static str,
        /// Message id.
        id: String,
        /// Field name.
        field: &'static str,
        /// The value as text.
        value: String,
        /// What range is accepted.
        hint: &'static str,
    },
    /// The auction already holds the maximum number of bids.
    #[error(
        "auction {auction} already holds {max} bids; raise market.limits.max_bids_per_auction to accept more"
    )]
    BookFull {
        /// Auction id.
        auction: AuctionId,
        /// The limit.
        max: usize,
    },
    /// The customer already has the most auctions this node holds for one customer.
    #[error(
        "customer {customer} already has {max} auctions in this node's book; wait for some to close, or raise market.limits.max_auctions_per_customer"
    )]
    CustomerQuota {
        /// The customer.
        customer: NodeId,
        /// The limit.
        max: usize,
    },
    /// The provider already has the most standing offers this node holds for one provider.
    #[error(
        "provider {provider} already has {max} standing offers in this node's book; let some expire, or raise market.limits.max_offers_per_provider"
    )]
    ProviderQuota {
        /// The provider.
        provider: NodeId,
        /// The limit.
        max: usize,
    },
    /// A whole book is full and no entry could give way to this one.
    #[error(
        "the {book} book is full ({max} entries) and nothing could be evicted for this one; retry later, or raise market.limits.max_{book}s"
    )]
    MarketFull {
        /// Which book: "auction", "offer" or "bid".
        book: &'static str,
        /// The limit.
        max: usize,
    },
    /// A provider bidding twice on one auction.
    #[error("provider {provider} already bid on auction {auction}; one bid per provider")]
    DuplicateBid {
        /// Auction id.
        auction: AuctionId,
        /// Provider.
        provider: NodeId,
    },
    /// A bid on an auction open only to some providers (`AuctionBody::only`) from another.
    #[error(
        "provider {provider} is not among the providers auction {auction} is open to; its bid \
         is not kept"
    )]
    NotChosen {
        /// Auction id.
        auction: AuctionId,
        /// The provider that bid.
        provider: NodeId,
    },
    /// A customer bidding on its own auction.
    #[error("provider {provider} cannot bid on its own auction {auction}")]
    SelfBid {
        /// Auction id.
        auction: AuctionId,
        /// Provider (= customer).
        provider: NodeId,
    },
    /// Only the auction's customer may do this.
    #[error("{who} is not the customer of auction {auction}")]
    NotCustomer {
        /// Auction id.
        auction: AuctionId,
        /// The node that tried.
        who: NodeId,
    },
    /// This node already bid on the auction (its decision unit bids on its own unless
    /// `auto_bid` is off); a provider bids once per auction.
    #[error(
        "this node already bid {price} on auction {auction} (bid {bid}, placed by its decision \
         unit or an earlier manual bid) and a provider bids once per auction, so no second bid \
         was sent; wait for the award (`agora market watch`), or bid by hand on nodes whose \
         decision unit does not: set market.engine.dmu.provider.auto_bid = false in \
         config.toml (`agora devnet up --manual M` does so for the last M nodes)"
    )]
    AlreadyBid {
        /// Auction id.
        auction: AuctionId,
        /// The bid already placed.
        bid: BidId,
        /// Its price.
        price: u64,
    },
    /// The auction is not open (already closed or awarded).
    #[error(
        "auction {auction} is no longer open: its bid window closed or it was awarded \
         (`agora auctions` shows its status)"
    )]
    NotOpen {
        /// Auction id.
        auction: AuctionId,
    },
    /// A snapshot response this node did not ask for (or already took).
    #[error(
        "snapshot of region {region} from {from} refused: this node did not ask it for one \
         (a node asks a few peers when it joins)"
    )]
    UnsolicitedSnapshot {
        /// Who sent it.
        from: NodeId,
        /// The region it names.
        region: String,
    },
    /// This node restarted and its market does not yet hold the capacity of the contracts it
    /// still runs (its ledger has not caught up): it takes no work until then (THREATS C35).
    #[error(
        "this node takes no work yet: it does not know what its running contracts hold until \
         its ledger reaches the chain's tip (`agora ledger status`; `/ready` says when); bid \
         again then"
    )]
    CapacityNotRestored,
    /// A negotiation step was refused.
    #[error(transparent)]
    Negotiation(#[from] crate::negotiation::NegotiationError),
    /// Local capacity cannot cover the request.
    #[error(transparent)]
    Capacity(#[from] CapacityError),
}
