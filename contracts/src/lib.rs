//! Pure contract lifecycle and ledger for Agora: staked dual-signed contracts, the arbitrator
//! handover rule, and a deterministic ledger state machine that escrows and settles payments.
//! No I/O: time and signing are passed in.
//!
//! How the node drives it:
//! 1. At startup: `Ledger::from_genesis(&genesis)` (genesis read from TOML/JSON by the node) or
//!    `Ledger::from_snapshot(bytes)` from its store.
//! 2. After negotiation: build a [`Contract`], each party calls `contract.sign_as(&signer)`,
//!    assemble a [`SignedContract`] and submit `TxKind::RegisterContract`.
//! 3. Transactions: `ledger.sign_next(&signer, kind)` (or build a [`Transaction`] with a tracked
//!    nonce); `ledger.check(now, &tx)` for mempool admission.
//! 4. Consensus decides blocks; every replica calls `ledger.apply_block(height, now, &txs)`,
//!    compares `state_hash()`, snapshots with `to_snapshot()`.
//! 5. `duties_for(me, &ledger, &outcome.events)` says what this node must do next (fetch
//!    images, arm, start a service on handover, probe a customer as arbitrator).
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod attestation;
pub mod contract;
pub mod duties;
pub mod ledger;
pub mod lifecycle;
pub mod roles;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use attestation::{HandoverDecision, Liveness, Observation, quorum};
pub use contract::{
    ActivationClause, Amount, Contract, ContractError, ContractId, ContractKind, Party, Qos,
    SignedContract, Stakes, Terms,
};
pub use duties::{Duty, MIN_AUDIT_PERIOD_MS, audit_duty, duties_for};
pub use ledger::{
    Account, BlockOutcome, BreachReason, ContractRecord, Escrow, Genesis, GenesisAccount,
    HeartbeatBatch, Ledger, LedgerError, LedgerEvent, LedgerParams, SettleReason,
    SignedTransaction, Supply, Transaction, TxKind, UptimeInterval,
};
pub use lifecycle::{ContractStatus, IllegalTransition, LifecycleEvent};
