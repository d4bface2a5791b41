//! The agora node: identity, wire codec, libp2p swarm, control API, CLI and devnet management.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod cli;
pub mod codec;
pub mod config;
pub mod consensus;
pub mod daemon;
pub mod deals;
pub mod devnet_files;
pub mod hosting;
pub mod keys;
pub mod ledger;
pub mod market_service;
pub mod network;
pub mod orchestrator;
pub mod radio;
pub mod services;
pub mod storage_service;

/// Milliseconds since the Unix epoch from the system clock (the pure crates take time as input;
/// this is where the node reads it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
