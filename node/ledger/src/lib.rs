//! The node's ledger replica: the pure `agora_contracts::Ledger`, persisted in sled, fed by
//! decided blocks, with a mempool of transactions gossiped on [`TX_TOPIC`]. One task
//! ([`spawn`]) owns the replica and its consensus driver; everyone else reads it through a
//! [`LedgerHandle`] and learns of new blocks as [`AppliedBlock`]s.
//!
//! Owns: ledger replication — the mempool, the consensus driver's effects carried out over the
//! swarm (votes, decided blocks, block sync), the sled store (blocks, snapshots, consensus WAL)
//! and the catch-up of a (re)started node. May depend on `agora-contracts` (the ledger rules),
//! `agora-consensus`, `agora-network` and `agora-wire`; never on a driver crate (market, hosting,
//! radio, orchestrator) — they depend on it.
#![forbid(unsafe_code)]

pub mod chain;
pub mod mempool;
pub mod store;
pub mod sync_server;
pub mod task;

pub use agora_wire::topics::{BLOCKS_TOPIC, CONSENSUS_TOPIC, TX_TOPIC};
pub use chain::{ChainParams, LedgerConfig, MAX_BLOCK_TXS, SyncMsg};
pub use mempool::{Mempool, MempoolError, MempoolStats};
pub use store::{LedgerStore, StoreError};
pub use task::{AppliedBlock, LedgerHandle, LedgerTaskError, LedgerView, spawn};
