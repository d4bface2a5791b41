//! Negotiation after an award: a bounded exchange of counter-offers until both parties agree on
//! one `AgreedTerms` value (which the contracts crate wraps and both sign) or one walks away.
//!
//! The customer's award is round 0's proposal. Each counter-offer increments the round; a
//! counter beyond `max_rounds` is refused and ends the negotiation. Only the party that did not
//! make the latest proposal may accept it; acceptance names the terms' hash, so both sides
//! agree on exactly the same bytes.

mod terms;

use serde::{Deserialize, Serialize};

pub use terms::AgreedTerms;

use crate::error::MarketError;
use crate::identity::{Domain, NodeId, Timestamp};
use crate::ids::{AwardId, NegotiationMsgId, TermsId};
use crate::signed::{Body, Signed};

/// One negotiation step.
// Terms are a few hundred bytes and rarely moved; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NegotiationAction {
    /// A counter-offer with full new terms.
    Counter(AgreedTerms),
    /// Accept the latest proposal, named by its hash.
    Accept(TermsId),
    /// End without agreement.
    WalkAway,
}

/// The unsigned content of a negotiation message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NegotiationBody {
    /// The award being negotiated.
    pub award: AwardId,
    /// Sender.
    pub from: NodeId,
    /// Round this message belongs to (counter: the new round; accept/walk: the current one).
    pub round: u32,
    /// What the sender does.
    pub action: NegotiationAction,
    /// Author nonce.
    pub nonce: u64,
    /// Expiry.
    pub expires_at: Timestamp,
}

/// A signed negotiation message.
pub type NegotiationMessage = Signed<NegotiationBody>;

impl Body for NegotiationBody {
    const DOMAIN: Domain = Domain::NEGOTIATION;
    const KIND: &'static str = "negotiation";
    type Id = NegotiationMsgId;
    fn author(&self) -> NodeId {
        self.from
    }
    fn nonce(&self) -> u64 {
        self.nonce
    }
    fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
}

/// Why a negotiation step was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NegotiationError {
    /// The message is malformed or badly signed.
    #[error("negotiation for award {award}: {source}")]
    Message {
        /// Award id.
        award: AwardId,
        /// Underlying error.
        source: Box<MarketError>,
    },
    /// Sent by someone who is not the counterparty.
    #[error("negotiation for award {award}: message from {from}, expected {expected}")]
    WrongPeer {
        /// Award id.
        award: AwardId,
        /// Actual sender.
        from: NodeId,
        /// Expected sender.
        expected: NodeId,
    },
    /// The round number is not the expected one.
    #[error("negotiation for award {award}: round {got}, expected {expected}")]
    WrongRound {
        /// Award id.
        award: AwardId,
        /// Received round.
        got: u32,
        /// Expected round.
        expected: u32,
    },
    /// Counter-offers exhausted.
    #[error("negotiation for award {award}: max rounds {max} reached; accept or walk away")]
    TooManyRounds {
        /// Award id.
        award: AwardId,
        /// Configured maximum.
        max: u32,
    },
    /// Accepting something other than the latest proposal, or one's own proposal.
    #[error(
        "negotiation for award {award}: cannot accept {terms}; only the counterparty's latest proposal can be accepted"
    )]
    BadAccept {
        /// Award id.
        award: AwardId,
        /// Hash named.
        terms: TermsId,
    },
    /// Counter-offer changes parties or award.
    #[error("negotiation for award {award}: counter-offer changes the parties or the award")]
    TermsMismatch {
        /// Award id.
        award: AwardId,
    },
    /// The negotiation already ended.
    #[error("negotiation for award {award} is over")]
    Finished {
        /// Award id.
        award: AwardId,
    },
}

/// Where a negotiation stands.
// Terms are a few hundred bytes and rarely moved; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NegotiationStatus {
    /// Still exchanging proposals.
    Open,
    /// Both sides agreed on these terms.
    Agreed(AgreedTerms),
    /// Ended without agreement.
    Failed {
        /// Who ended it (`None`: timed out).
        by: Option<NodeId>,
    },
}

/// Inputs to a negotiation.
// Terms are a few hundred bytes and rarely moved; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum NegotiationInput {
    /// Local party counters with a new total price.
    Counter {
        /// New price.
        price: u64,
    },
    /// Local party accepts the counterparty's latest proposal.
    Accept,
    /// Local party walks away.
    WalkAway,
    /// A message from the counterparty.
    Remote(NegotiationMessage),
    /// Time passes; past the deadline the negotiation fails.
    Tick,
}

/// Effects of a negotiation step.
#[derive(Clone, Debug, PartialEq)]
pub enum NegotiationEffect {
    /// Send this to the counterparty.
    Send(NodeId, NegotiationMessage),
    /// The counterparty proposed these terms (decide: Accept, Counter or WalkAway).
    Proposed(AgreedTerms),
    /// Agreement reached; both sign `terms.canonical_bytes()` in a contract.
    Agreed(AgreedTerms),
    /// Ended without agreement.
    Failed {
        /// Award id.
        award: AwardId,
        /// Who ended it (`None`: timeout).
        by: Option<NodeId>,
    },
    /// A step was refused.
    Rejected(NegotiationError),
}

mod machine;
pub use machine::Negotiation;
