//! Pure contract lifecycle and ledger for Agora: staked dual-signed contracts, the arbitrator
//! handover rule, and a deterministic ledger state machine that escrows and settles payments.
//! No I/O: time and signing are passed in.
//!
//! How the node drives it:
//! 1. At startup: `Ledger::from_genesis(&genesis)` (genesis read from TOML/JSON by the node) or
//!    `Ledger::from_snapshot(bytes)` from its store.
//! 2. After negotiation: the customer builds the contract with [`deal::build_contract`], the
//!    provider checks it with [`deal::check_proposal`]; each party calls
//!    `contract.sign_as(&signer)`, the customer assembles a [`SignedContract`] and submits
//!    `TxKind::RegisterContract`.
//! 3. Transactions: `ledger.sign_next(&signer, kind)` (or build a [`Transaction`] with a tracked
//!    nonce); `ledger.admissible(&tx, &policy)` for mempool admission (cheap, no clone);
//!    `ledger.check(now, &tx)` to dry-run one.
//! 4. Consensus decides blocks (validators refuse proposals whose time fails
//!    `ledger.check_block_time(proposed, own_clock)`; votes are signed over
//!    [`ConsensusVote::signing_bytes`]); every replica calls
//!    `ledger.apply_block(height, now, &txs)`, compares `state_hash()`, snapshots with
//!    `to_snapshot()`.
//! 5. `duties_for(me, &ledger, &outcome.events)` says what this node must do next (fetch
//!    images, arm, start a service on handover, watch a customer, probe a hosted service or
//!    audit a storage provider as arbitrator).
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod attestation;
pub mod cid_text;
pub mod contract;
pub mod deal;
pub mod duties;
pub mod ledger;
pub mod lifecycle;
pub mod probe;
pub mod state;
pub mod vote;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use attestation::{HandoverDecision, Liveness, Observation, quorum};
pub use contract::{
    ActivationClause, Amount, Contract, ContractError, ContractId, ContractKind, Party, Qos,
    SignedContract, Stakes, Terms,
};
pub use deal::{
    AuctionFacts, CommitteeView, DealError, DealPolicy, DealRefusal, ProposalPolicy,
    build_contract, check_proposal,
};
pub use duties::{Duty, MIN_AUDIT_PERIOD_MS, audit_duty, duties_for, probe_duty};
pub use ledger::{
    Account, AdmissionError, AdmissionPolicy, BlockOutcome, BlockTimeError, BreachReason,
    ContractRecord, Escrow, Genesis, GenesisAccount, HeartbeatBatch, Ledger, LedgerError,
    LedgerEvent, LedgerParams, SettleReason, SignedTransaction, Supply, Transaction, TxKind,
    UptimeInterval, check_block_time,
};
pub use lifecycle::{ContractStatus, IllegalTransition, LifecycleEvent};
pub use vote::{
    BlockHash, ChainTag, ConsensusVote, EquivocationError, EquivocationEvidence, SignedVote,
    VoteKind,
};
