//! The arbitrators' BFT consensus driver: Tendermint-style consensus via the Malachite engine.
//!
//! Pure and synchronous: no I/O, no clock, no async. [`ConsensusDriver::handle`] takes the
//! current time and one [`Input`] and returns the [`Effect`]s to carry out, in order. Blocks are
//! ordered lists of opaque ledger transactions; the committee is fixed at genesis (n = 3f + 1
//! arbitrators, equal power) and the proposer rotates by `height + round`.
//!
//! # Wiring it into the node
//!
//! One task owns the driver (it is not shared); the swarm loop turns events into inputs:
//!
//! | event                                        | input                                   |
//! |----------------------------------------------|-----------------------------------------|
//! | boot: ledger tip `h`, id `b`, WAL of `h + 1` | `StartHeight { height: h+1, parent: b, wal }` |
//! | gossipsub message on `agora/consensus/v1`    | `Message { from, bytes }`               |
//! | timer from `ScheduleTimeout` fires           | `TimeoutElapsed(id)`                    |
//! | mempool answers `RequestValue`               | `ProposeValue { height, round, transactions }` |
//! | request-response `/agora/consensus-sync/1` in| `SyncRequest { from, height }`          |
//! | reply to our sync request                    | `SyncResponse { from, blocks }`         |
//!
//! and carries out effects in the order returned:
//!
//! * `PersistWal(entry)` — append `entry.encode()` to the sled tree `consensus-wal/<height>` and
//!   flush **before** executing any later effect of the same batch (a vote must be on disk
//!   before it is broadcast). Drop the tree of a height once its `Decided` is applied.
//! * `Broadcast(msg)` — publish `msg.encode()` on the consensus gossip topic.
//! * `ScheduleTimeout { timeout, after }` / `CancelTimeout(id)` / `CancelAllTimeouts` — a
//!   `tokio_util::time::DelayQueue` keyed by [`TimeoutId`] in the swarm loop.
//! * `RequestValue { height, round, within }` — ask the ledger mempool; reply `ProposeValue`.
//! * `Decided { height, block, certificate }` — apply the transactions to the ledger and store
//!   the block with its certificate (to serve sync beyond the in-memory `history`).
//! * `SyncRequest { height }` — request-response to one or two arbitrators.
//! * `SendSyncResponse { to, blocks }` — the reply on that request-response channel.
//! * `Evidence(misbehavior)` — gossip it / hand it to the ledger for slashing.
//! * `Rejected { from, error }` — log; report the gossip message as invalid and lower `from`'s
//!   peer score.
//!
//! The driver advances to the next height by itself after each decision.

mod block;
mod certificate;
mod context;
mod driver;
mod effects;
mod error;
mod liveness;
mod messages;
mod wal;

#[cfg(test)]
mod tests;

pub use block::{Block, BlockId, Transaction};
pub use certificate::{CommitCertificate, CommitSig, DecidedBlock};
pub use context::{
    Address, AgoraContext, ConsensusSignature, ConsensusTimeouts, Ed25519Scheme, Height, Validator,
    ValidatorSet,
};
pub use driver::ConsensusDriver;
pub use effects::{ConsensusConfig, Effect, Input, Misbehavior, TimeoutId, TimeoutStep};
pub use error::ConsensusError;
pub use liveness::{PolkaCertificateMsg, RoundCertificateMsg, RoundSig};
pub use messages::{
    BlockPart, ConsensusMessage, MAX_MESSAGE_BYTES, Proposal, SignedProposalMsg, SignedVoteMsg,
    Vote,
};
pub use wal::WalEntry;
