//! The driver's [`Input`]s and [`Effect`]s, plus its configuration.

use std::time::Duration;

use agora_market::NodeId;
use arc_malachitebft_core_types::{Round, Timeout, TimeoutKind};
use serde::{Deserialize, Serialize};

use super::block::{Block, BlockId, Transaction};
use super::certificate::{CommitCertificate, DecidedBlock};
use super::context::{ConsensusTimeouts, Height};
use super::error::ConsensusError;
use super::messages::{ConsensusMessage, SignedProposalMsg, SignedVoteMsg, VerifiedMessage};
use super::wal::WalEntry;

/// Driver settings (the node builds this from its TOML config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsensusConfig {
    /// Round timeouts.
    pub timeouts: ConsensusTimeouts,
    /// Decided blocks kept in memory to answer sync requests (older ones: serve from the ledger).
    pub history: usize,
    /// Most blocks sent or accepted in one sync response.
    pub max_sync_blocks: usize,
    /// Minimum time between two sync requests, and how long a height may run before a peer
    /// one height ahead makes us ask for sync (ms).
    pub sync_retry_ms: u64,
    /// How far a proposed block's time may lie from this validator's clock, either way (the
    /// chain's `LedgerParams::block_time_tolerance_ms`): a fresh proposal outside it, or not
    /// after its parent, is not voted for (`agora_contracts::check_block_time`).
    pub block_time_tolerance_ms: u64,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        ConsensusConfig {
            timeouts: ConsensusTimeouts::default(),
            history: 1024,
            max_sync_blocks: 64,
            sync_retry_ms: 2_000,
            block_time_tolerance_ms: 2_000,
        }
    }
}

/// Which round step a timeout belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TimeoutStep {
    /// Waiting for the proposal.
    Propose,
    /// Waiting for prevotes.
    Prevote,
    /// Waiting for precommits.
    Precommit,
    /// Re-send our latest votes.
    Rebroadcast,
}

/// Identifies a timer; the node feeds it back in [`Input::TimeoutElapsed`] when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimeoutId {
    /// Height the timer was set at (stale heights are ignored).
    pub height: u64,
    /// Round the timer was set at.
    pub round: u32,
    /// Step.
    pub step: TimeoutStep,
}

impl TimeoutId {
    /// From an engine timeout; `None` for kinds Agora does not use (finalization windows).
    pub(crate) fn from_engine(height: Height, t: Timeout) -> Option<Self> {
        let step = match t.kind {
            TimeoutKind::Propose => TimeoutStep::Propose,
            TimeoutKind::Prevote => TimeoutStep::Prevote,
            TimeoutKind::Precommit => TimeoutStep::Precommit,
            TimeoutKind::Rebroadcast => TimeoutStep::Rebroadcast,
            TimeoutKind::FinalizeHeight(_) => return None,
        };
        Some(TimeoutId {
            height: height.0,
            round: t.round.as_u32()?,
            step,
        })
    }

    /// The engine timeout.
    pub(crate) fn to_engine(self) -> Timeout {
        let kind = match self.step {
            TimeoutStep::Propose => TimeoutKind::Propose,
            TimeoutStep::Prevote => TimeoutKind::Prevote,
            TimeoutStep::Precommit => TimeoutKind::Precommit,
            TimeoutStep::Rebroadcast => TimeoutKind::Rebroadcast,
        };
        Timeout::new(Round::new(self.round), kind)
    }
}

/// What the node feeds the driver.
#[derive(Clone, Debug)]
pub enum Input {
    /// Start (or, with a non-empty `wal`, restart) consensus at `height`, whose parent block is
    /// `parent` (the ledger's last decided block; [`BlockId::GENESIS_PARENT`] at height 1).
    StartHeight {
        /// Height to run.
        height: u64,
        /// Id of the block decided at `height - 1`.
        parent: BlockId,
        /// This height's write-ahead log entries after a crash; empty on a clean start.
        wal: Vec<WalEntry>,
    },
    /// Bytes received on the consensus gossip topic.
    Message {
        /// The arbitrator (or relay) that sent them.
        from: NodeId,
        /// CBOR-encoded [`ConsensusMessage`].
        bytes: Vec<u8>,
    },
    /// A message gossiped on the consensus topic, already decoded and checked by
    /// [`ConsensusDriver::judge_gossiped_message`](crate::ConsensusDriver::judge_gossiped_message).
    Verified {
        /// The arbitrator (or relay) that sent it.
        from: NodeId,
        /// The checked message.
        msg: VerifiedMessage,
    },
    /// A timer from [`Effect::ScheduleTimeout`] fired.
    TimeoutElapsed(TimeoutId),
    /// The mempool's answer to [`Effect::RequestValue`]: transactions for our block.
    ProposeValue {
        /// Height asked for.
        height: u64,
        /// Round asked for.
        round: u32,
        /// Ordered ledger transactions.
        transactions: Vec<Transaction>,
    },
    /// A peer asks for decided blocks from `height` on.
    SyncRequest {
        /// Who asks.
        from: NodeId,
        /// First height wanted.
        height: u64,
    },
    /// A peer's answer to our [`Effect::SyncRequest`].
    SyncResponse {
        /// Who answered.
        from: NodeId,
        /// Decided blocks with their commit certificates, ascending heights.
        blocks: Vec<DecidedBlock>,
    },
}

/// Provable misbehaviour by an arbitrator (both messages carry its signature).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Misbehavior {
    /// Two different votes of one kind for the same height and round.
    DoubleVote {
        /// The equivocating arbitrator.
        validator: NodeId,
        /// First vote seen.
        first: Box<SignedVoteMsg>,
        /// Conflicting vote.
        second: Box<SignedVoteMsg>,
    },
    /// Two different proposals for the same height and round.
    DoubleProposal {
        /// The equivocating arbitrator.
        validator: NodeId,
        /// First proposal seen.
        first: Box<SignedProposalMsg>,
        /// Conflicting proposal.
        second: Box<SignedProposalMsg>,
    },
}

impl Misbehavior {
    /// The arbitrator at fault.
    pub fn validator(&self) -> NodeId {
        match self {
            Misbehavior::DoubleVote { validator, .. }
            | Misbehavior::DoubleProposal { validator, .. } => *validator,
        }
    }

    /// The evidence as `TxKind::ReportEquivocation` carries it: two conflicting signed votes.
    /// `None` for a double proposal, which the ledger has no rule for (a proposer that
    /// equivocates gets no block decided from it; only double votes are slashed).
    pub fn ledger_evidence(&self) -> Option<agora_contracts::EquivocationEvidence> {
        match self {
            Misbehavior::DoubleVote { first, second, .. } => {
                Some(agora_contracts::EquivocationEvidence {
                    first: first.to_ledger(),
                    second: second.to_ledger(),
                })
            }
            Misbehavior::DoubleProposal { .. } => None,
        }
    }
}

/// What the node must do; carry effects out in order.
#[derive(Debug)]
pub enum Effect {
    /// Publish on the consensus gossip topic (`msg.encode()`).
    Broadcast(ConsensusMessage),
    /// Start a timer; feed [`Input::TimeoutElapsed`] when it fires.
    ScheduleTimeout {
        /// The timer.
        timeout: TimeoutId,
        /// Delay from now.
        after: Duration,
    },
    /// Stop a timer.
    CancelTimeout(TimeoutId),
    /// Stop every timer.
    CancelAllTimeouts,
    /// Ask the mempool for transactions; answer with [`Input::ProposeValue`] within `within`.
    RequestValue {
        /// Height.
        height: u64,
        /// Round.
        round: u32,
        /// Time left before the propose timeout.
        within: Duration,
    },
    /// A block is final: apply its transactions to the ledger, then drop the height's WAL.
    Decided {
        /// Height.
        height: u64,
        /// The block.
        block: Block,
        /// Proof of the decision (store it with the block to serve sync).
        certificate: CommitCertificate,
    },
    /// Append to the write-ahead log (sled) before carrying out the next effects.
    PersistWal(WalEntry),
    /// We are behind: ask one or more peers (request-response) for blocks from `height` on.
    SyncRequest {
        /// First missing height.
        height: u64,
    },
    /// Answer a peer's sync request (request-response reply).
    SendSyncResponse {
        /// The asking peer.
        to: NodeId,
        /// Decided blocks, ascending.
        blocks: Vec<DecidedBlock>,
    },
    /// An arbitrator equivocated; gossip or submit as slashing evidence.
    Evidence(Misbehavior),
    /// An input was rejected; `from` is the peer to penalise when known.
    Rejected {
        /// Offending peer.
        from: Option<NodeId>,
        /// Why.
        error: ConsensusError,
    },
}
