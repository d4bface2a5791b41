//! Deal signing between the two parties of an award (`Kind::Deal` request-response): the
//! customer sends the contract it built and signed, the provider countersigns or refuses.

use agora_contracts::Contract;
use agora_contracts::deal::DealRefusal;
use agora_market::{AwardId, Signature};
use serde::{Deserialize, Serialize};

/// Messages between the two parties.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum DealMsg {
    /// Customer → provider: please countersign.
    Propose {
        /// The award the contract implements.
        award: AwardId,
        /// The contract.
        contract: Box<Contract>,
        /// The customer's signature.
        customer_sig: Signature,
    },
    /// Provider → customer: countersigned.
    Signed {
        /// The provider's signature.
        provider_sig: Signature,
    },
    /// Provider → customer: refused, with the typed reason (which field, expected, got).
    Refused {
        /// Why.
        reason: DealRefusal,
    },
}
