//! Proof-of-storage messages (`Kind::Storage` request-response): arbitrators challenge the
//! provider of a storage contract for random chunks; the provider answers with the chunks and
//! their Merkle paths, refuses, or says it is busy. An arbitrator that does not hold the
//! contract's commitment block asks the provider to show it (the provider keeps it with the
//! file from custody on), so an offline customer no longer leaves the committee unable to
//! judge (THREATS P4).

use agora_storage::Cid;
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
    /// Challenger → provider: show the commitment block `commitment` of the storage contract
    /// keeping `file` (the contract's `config` CID).
    ShowCommitment {
        /// The contract's file.
        file: Cid,
        /// The contract's commitment CID.
        commitment: Cid,
    },
    /// Provider → challenger: the commitment block's bytes (at most [`MAX_COMMITMENT_BLOCK`]),
    /// which the challenger checks against the CID it asked for.
    Commitment(Vec<u8>),
}

/// The largest commitment block a provider shows: a CBOR map of the file's CID, a 32-byte
/// Merkle root and a chunk count is about a hundred bytes.
pub const MAX_COMMITMENT_BLOCK: usize = 1024;
