//! `AgreedTerms`: the single value both parties sign once negotiation succeeds.

use serde::{Deserialize, Serialize};

use crate::auction::{AuctionKind, Award, AwardSubject};
use crate::error::MarketError;
use crate::identity::NodeId;
use crate::ids::{AwardId, TermsId};
use crate::resources::Resources;
use crate::signed::canonical_bytes;

/// The terms of a deal; `canonical_bytes` are what the contract signs, `id` is their hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgreedTerms {
    /// The award negotiated.
    pub award: AwardId,
    /// Buyer.
    pub customer: NodeId,
    /// Seller.
    pub provider: NodeId,
    /// What was awarded.
    pub subject: AwardSubject,
    /// Kind of service.
    pub kind: AuctionKind,
    /// Resources.
    pub resources: Resources,
    /// Duration in ms.
    pub duration_ms: u64,
    /// Total price in tokens.
    pub price: u64,
}

impl AgreedTerms {
    /// The opening terms implied by an award.
    pub fn from_award(award: &Award, award_id: AwardId) -> Self {
        let b = &award.body;
        AgreedTerms {
            award: award_id,
            customer: b.customer,
            provider: b.provider,
            subject: b.subject,
            kind: b.kind,
            resources: b.resources.clone(),
            duration_ms: b.duration_ms,
            price: b.price,
        }
    }

    /// Canonical CBOR bytes.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, MarketError> {
        canonical_bytes(self, "agreed terms")
    }

    /// blake3 of the canonical bytes.
    pub fn id(&self) -> Result<TermsId, MarketError> {
        Ok(TermsId::of_bytes(&self.canonical_bytes()?))
    }

    /// True when `other` differs from `self` only in price. Not in the term: a counter that
    /// changed it was accepted on its price alone (both sides' automatic rules compare only
    /// the price), so a provider countering with the customer's ceiling and a 1 ms term had
    /// it agreed and registered (market audit of session 51).
    pub fn same_deal(&self, other: &AgreedTerms) -> bool {
        self.award == other.award
            && self.customer == other.customer
            && self.provider == other.provider
            && self.subject == other.subject
            && self.kind == other.kind
            && self.resources == other.resources
            && self.duration_ms == other.duration_ms
    }
}
