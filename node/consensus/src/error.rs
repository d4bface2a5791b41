//! Errors of the consensus driver: every rejection names the peer, height or block involved.

use agora_market::{NodeId, SignatureError};

use super::block::BlockId;

/// Why a consensus input was rejected or the driver could not be built.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConsensusError {
    /// The genesis validator list is empty.
    #[error(
        "the arbitrator set is empty; list at least one arbitrator in genesis (4 tolerate 1 fault)"
    )]
    EmptyValidatorSet,
    /// The genesis validator list names a node twice.
    #[error("arbitrator {0} is listed twice in genesis; remove the duplicate")]
    DuplicateValidator(NodeId),
    /// A genesis validator id is not an ed25519 public key.
    #[error("arbitrator id {0} is not a valid ed25519 public key; fix the genesis file")]
    BadValidatorKey(NodeId),
    /// A fixed-size field had the wrong length.
    #[error("{what} has {got} bytes, expected {expected}")]
    BadLength {
        /// Which field.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A peer message exceeds the size limit.
    #[error(
        "consensus message of {len} bytes exceeds the {max}-byte limit; drop the peer's message"
    )]
    TooLarge {
        /// Received length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A peer message is not valid CBOR for a consensus message.
    #[error("cannot decode consensus message: {0}")]
    Decode(String),
    /// The signer is not in the arbitrator set.
    #[error("{0} is not an arbitrator; its consensus messages are ignored")]
    UnknownValidator(NodeId),
    /// A signature does not verify.
    #[error("bad consensus signature by {signer} at height {height}: {source}")]
    BadSignature {
        /// Claimed signer.
        signer: NodeId,
        /// Height of the message.
        height: u64,
        /// The underlying check failure.
        source: SignatureError,
    },
    /// A proposal came from someone other than the round's proposer.
    #[error("proposal at height {height} round {round} by {got}, but the proposer is {expected}")]
    WrongProposer {
        /// Height.
        height: u64,
        /// Round.
        round: u32,
        /// Who signed it.
        got: NodeId,
        /// The round-robin proposer.
        expected: NodeId,
    },
    /// A proposed block is inconsistent with its proposal or our chain.
    #[error("block {block} at height {height} rejected: {reason}")]
    BlockMismatch {
        /// Height.
        height: u64,
        /// The block.
        block: BlockId,
        /// What is wrong.
        reason: &'static str,
    },
    /// A fresh proposal's block time is not after its parent's or too far from our clock; this
    /// validator does not vote for it (the round times out and prevotes nil).
    #[error("proposal by {proposer} for height {height} round {round} refused: {error}")]
    BlockTime {
        /// The proposer.
        proposer: NodeId,
        /// Height.
        height: u64,
        /// Round.
        round: u32,
        /// What is wrong with its time.
        error: agora_contracts::BlockTimeError,
    },
    /// A message carries too many items (votes or blocks).
    #[error("message from {from:?} carries {got} {what}, at most {max} allowed")]
    TooMany {
        /// Sender, when known.
        from: Option<NodeId>,
        /// What was counted.
        what: &'static str,
        /// Count received.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// A commit certificate does not prove a decision.
    #[error("commit certificate for height {height} block {block} is invalid: {reason}")]
    BadCertificate {
        /// Height it claims.
        height: u64,
        /// Block it claims.
        block: BlockId,
        /// What is wrong.
        reason: String,
    },
    /// A polka or round certificate does not verify.
    #[error("liveness certificate for height {height} round {round} is invalid: {reason}")]
    BadLivenessCertificate {
        /// Height.
        height: u64,
        /// Round.
        round: u32,
        /// What is wrong.
        reason: String,
    },
    /// A synced block does not match its certificate or our chain.
    #[error("synced block at height {height} from {from} rejected: {reason}")]
    BadSyncBlock {
        /// Who sent it.
        from: NodeId,
        /// Height.
        height: u64,
        /// What is wrong.
        reason: String,
    },
    /// The malachite engine reported an internal error (a bug, not a peer's fault).
    #[error("consensus engine error at height {height}: {message}")]
    Engine {
        /// Height the engine was at.
        height: u64,
        /// Engine message.
        message: String,
    },
}
