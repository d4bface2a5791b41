//! Proof-of-storage messages (`Kind::Storage` request-response): arbitrators challenge the
//! provider of a storage contract for random chunks; the provider answers with the chunks and
//! their Merkle paths, refuses, or says it is busy.

use agora_storage::challenge::{Challenge, ChallengeResponse};
use serde::{Deserialize, Serialize};

/// Request-response body of proof-of-storage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StorageRpc {
    /// Challenger → provider: prove these chunks.
    Challenge(Challenge),
    /// Provider → challenger: the chunks with their Merkle paths.
    Proof(ChallengeResponse),
    /// Provider → challenger: cannot answer, and why.
    Refused {
        /// The reason.
        reason: String,
    },
    /// Provider → challenger: answering too many challenges right now; ask again shortly.
    Busy,
}
