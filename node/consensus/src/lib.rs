//! The arbitrators' BFT consensus driver: Tendermint-style consensus via the Malachite engine.
//!
//! Pure and synchronous: no I/O, no clock, no async. [`ConsensusDriver::handle`] takes the
//! current time and one [`Input`] and returns the [`Effect`]s to carry out, in order. Blocks are
//! ordered lists of opaque ledger transactions; the committee (every arbitrator) is fixed at
//! genesis (n = 3f + 1 arbitrators, equal power) and the proposer rotates by `height + round`.
//!
//! Owns: the Malachite context (heights, validators, signatures), proposals, votes, round and
//! commit certificates, the write-ahead-log entries, and block sync as the engine sees it. May
//! depend on Malachite's core crates, `agora-market` (`NodeId`, signing) and the pure
//! `agora-contracts` (one definition of the block-time rule, `check_block_time`); never on the
//! network, the ledger or any other node crate.
//!
//! # Block time
//!
//! A fresh proposal whose block time is not after its parent's, or more than
//! `ConsensusConfig::block_time_tolerance_ms` from this validator's clock when it arrived, is
//! refused (`ConsensusError::BlockTime`) and never reaches the engine: the round's propose
//! timeout fires and this validator prevotes nil, so one faulty proposer cannot move ledger
//! time. A re-proposal of a locked value (a pol round) must only be after its parent. The
//! ledger task sets the parent's time when it starts a height from storage
//! (`ConsensusDriver::set_parent_time`); after a decision the driver tracks it. The
//! `test-utils` feature adds `ConsensusDriver::byzantine_proposal_skew`, a faulty proposer for
//! tests; the shipped binary never enables it. (Malachite's `core-consensus` pulls in tokio,
//! which is why this driver is a node crate and not part of the pure `agora-contracts`.)
//!
//! # How the ledger task drives it
//!
//! The ledger task (`agora-ledger`, `chain.rs`) owns the driver (it is not shared) and turns
//! events into inputs:
//!
//! | event                                                   | input                          |
//! |---------------------------------------------------------|--------------------------------|
//! | start: stored tip `h`, its block id `b`, WAL of `h + 1` | `StartHeight { height: h+1, parent: b, wal }` |
//! | gossip on `agora/consensus/1` (members only), judged   | `Verified { from, msg }`       |
//! | a deadline in the task's timer map passes               | `TimeoutElapsed(id)`           |
//! | the mempool's transactions when a value was requested   | `ProposeValue { height, round, transactions }` |
//! | a `SyncMsg::Request` (request-response, `Kind::Consensus` envelope) | `SyncRequest { from, height }` |
//! | a `SyncMsg::Response`, or a decided block gossiped on `agora/blocks/1` | `SyncResponse { from, blocks }` |
//!
//! There is no separate sync protocol: sync requests and answers are `agora_wire::sync::SyncMsg`
//! bodies on the node's one request-response protocol (`/agora/rpc/1.0.0`). The task carries out
//! the effects in the order returned:
//!
//! * `PersistWal(entry)` — append `entry.encode()` to the ledger store's sled tree
//!   `consensus-wal` (key: height, then a sequence number) and flush **before** executing any
//!   later effect of the same batch (a vote must be on disk before it is broadcast). Entries up
//!   to a height are dropped once its `Decided` is applied.
//! * `Broadcast(msg)` — publish `msg.encode()` on `agora/consensus/1`.
//! * `ScheduleTimeout { timeout, after }` / `CancelTimeout(id)` / `CancelAllTimeouts` — a map of
//!   deadlines keyed by [`TimeoutId`] in the ledger task (a quiet chain stretches the propose
//!   timeout; see `ChainParams::quiet_block_interval_ms`).
//! * `RequestValue { height, round, within }` — take a block's worth from the mempool (at once,
//!   or when an empty block is due) and answer `ProposeValue`.
//! * `Decided { height, block, certificate }` — apply the transactions to the ledger and store
//!   the block with its certificate (to serve sync beyond the in-memory `history`); the block's
//!   proposer also publishes it on `agora/blocks/1`.
//! * `SyncRequest { height }` — a `SyncMsg::Request` to one other arbitrator, round robin.
//! * `SendSyncResponse { to, blocks }` — the answer to that node's pending request.
//! * `Evidence(misbehavior)` — logged and kept in the ledger view's `evidence` list; a double
//!   vote is submitted once as `TxKind::ReportEquivocation` ([`Misbehavior::ledger_evidence`]),
//!   and the ledger burns the equivocator's bond.
//! * `Rejected { from, error }` — logged at debug level. (The envelope's signature was already
//!   checked when gossip was validated; the driver's own rejections do not change peer scores.)
//!
//! The driver advances to the next height by itself after each decision.
#![forbid(unsafe_code)]

mod block;
mod certificate;
mod context;
mod driver;
mod effects;
mod error;
mod liveness;
mod messages;
mod pacing;
mod wal;

#[cfg(test)]
mod tests;

pub use block::{Block, BlockId, Transaction};
pub use certificate::{CommitCertificate, CommitSig, DecidedBlock};
pub use context::{
    Address, AgoraContext, ConsensusSignature, ConsensusTimeouts, Ed25519Scheme, Height, Validator,
    ValidatorSet,
};
pub use driver::{ConsensusDriver, GossipedBlock, GossipedMessage};
pub use effects::{ConsensusConfig, Effect, Input, Misbehavior, TimeoutId, TimeoutStep};
pub use error::ConsensusError;
pub use liveness::{PolkaCertificateMsg, RoundCertificateMsg, RoundSig};
pub use messages::{
    BlockPart, ConsensusMessage, MAX_MESSAGE_BYTES, Proposal, SignedProposalMsg, SignedVoteMsg,
    VerifiedMessage, Vote,
};
pub use pacing::{MAX_ROUND_TRIP, quorum_round_trip};
pub use wal::WalEntry;
