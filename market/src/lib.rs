//! Pure market state machines for Agora: resources, auctions, bids, offers, the decision unit
//! and negotiation. No I/O: time, randomness and signing are passed in.
//!
//! The node drives one [`MarketState`]: it decodes peer bytes with [`MarketMessage::decode`],
//! feeds them as [`Input::Remote`], feeds local commands and [`Input::Tick`] (at every
//! [`Effect::ScheduleTimeout`]), and carries out the returned [`Effect`]s: `Broadcast` on the
//! gossip topic [`topic_for_region`], `Send` over request-response, and `Agreed` terms to the
//! contracts crate, which signs [`AgreedTerms::canonical_bytes`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auction;
pub mod book;
pub mod capacity;
pub mod dmu;
pub mod error;
pub mod identity;
pub mod ids;
pub mod message;
pub mod negotiation;
pub mod nesting;
#[cfg(test)]
mod proptests;
pub mod resources;
pub mod score;
pub mod signed;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod validate;

pub use auction::{
    AuctionBody, AuctionKind, AuctionRequest, AuctionSpec, Award, AwardBody, AwardSubject, Bid,
    BidBody, BidSpec, Offer, OfferBody,
};
pub use book::{
    AGREED_HOLD_MS, Agreement, AuctionEntry, AuctionFacts, AuctionStatus, BookCounters, BookStats,
    ContractHold, DealFault, Effect, Input, MAX_LOST_BIDS, MAX_RESTORED_HOLDS, MarketConfig,
    MarketState, MyBid, OfferSpec,
};
pub use capacity::{CapacityError, CapacityLedger, ReservationKey};
pub use dmu::{CustomerRules, DmuConfig, NegotiationRules, ProviderRules};
pub use error::MarketError;
pub use identity::{
    Domain, KeySigner, NodeId, Signature, SignatureError, Signer, Timestamp, verify,
};
pub use ids::{AuctionId, AwardId, BidId, DeploymentId, OfferId, TermsId};
pub use message::{MarketMessage, topic_for_region};
pub use negotiation::{AgreedTerms, Negotiation, NegotiationInput, NegotiationMessage};
pub use resources::{Battery, Interface, Location, Near, Resources, Uptime};
pub use score::{
    BidScore, NEUTRAL_REPUTATION, ScoreWeights, score_bid, score_bid_known, select_winner,
    select_winner_known,
};
