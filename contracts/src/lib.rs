//! Pure contract lifecycle and ledger for Agora: staked dual-signed contracts, the arbitrator
//! handover rule, and a deterministic ledger state machine that escrows and settles payments.
//! No I/O: time and signing are passed in.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod attestation;
pub mod contract;
pub mod duties;
pub mod ledger;
pub mod lifecycle;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use attestation::{HandoverDecision, Liveness, Observation, quorum};
pub use contract::{
    ActivationClause, Amount, Contract, ContractError, ContractId, ContractKind, Qos,
    SignedContract, Stakes, Terms,
};
pub use duties::{Duty, duties_for};
pub use ledger::{
    Account, BlockOutcome, BreachReason, ContractRecord, Escrow, Genesis, GenesisAccount, Ledger,
    LedgerError, LedgerEvent, LedgerParams, SettleReason, SignedTransaction, Transaction, TxKind,
};
pub use lifecycle::{ContractStatus, IllegalTransition, LifecycleEvent};
