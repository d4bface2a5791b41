//! Block sync between ledger replicas (request-response in `Kind::Consensus` envelopes): a node
//! that sees a gap asks an arbitrator for the decided blocks from a height on.
//!
//! The block type is a parameter so this crate stays free of the consensus engine: the ledger
//! uses `SyncMsg<agora_consensus::DecidedBlock>`, and the encoding is exactly that of the
//! concrete type (serde encodes a generic enum like the instantiated one).

use serde::{Deserialize, Serialize};

/// Request-response body of block sync (in `Kind::Consensus` envelopes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SyncMsg<B> {
    /// Send decided blocks from `height` on.
    Request {
        /// First missing height.
        height: u64,
    },
    /// Decided blocks with their certificates.
    Response {
        /// Blocks, ascending.
        blocks: Vec<B>,
    },
    /// Nothing to say (answers gossip-only requests).
    Ack,
}
