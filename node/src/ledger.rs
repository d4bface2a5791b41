//! The node's ledger replica: the pure `agora_contracts::Ledger`, persisted in sled, fed by
//! decided blocks, with a mempool of transactions gossiped on [`TX_TOPIC`].

pub mod chain;
pub mod mempool;
pub mod service;
pub mod store;

pub use chain::{BLOCKS_TOPIC, CONSENSUS_TOPIC, ChainParams, SyncMsg};
pub use mempool::{Mempool, MempoolError};
pub use service::{AppliedBlock, LedgerHandle, LedgerServiceError, LedgerView, spawn};
pub use store::{LedgerStore, StoreError};

/// Gossip topic of ledger transactions.
pub const TX_TOPIC: &str = "agora/tx/1";
