//! What crosses the wire between agora nodes: the signed, versioned [`Envelope`] and its codec,
//! the gossip topics, and the body of every message a node sends inside an envelope — deal
//! signing ([`deal::DealMsg`]), block sync ([`sync::SyncMsg`]), sensor-radio checkpoints and
//! replay ([`radio`]), proof-of-storage ([`storage::StorageRpc`]) and uptime probes ([`probe::ProbeMsg`]). It is also where the node
//! reads the wall clock ([`now_ms`]); every other node crate takes time from here.
//!
//! Owns: encoding, size limits and signature checks of everything a peer can send, so decoders
//! can be fuzzed without a swarm. May depend on the pure crates (`agora-market`,
//! `agora-contracts`) and on `agora-storage` for its challenge types; never on libp2p, the
//! consensus engine or any other node crate. Market messages are `agora_market` types.
#![forbid(unsafe_code)]

pub mod codec;
pub mod deal;
pub mod probe;
pub mod radio;
pub mod rtt;
pub mod storage;
pub mod sync;
pub mod topics;

pub use codec::{
    CodecError, Envelope, GOSSIP_MAX_SKEW_MS, Kind, MAX_GOSSIP_BYTES, MAX_RPC_BYTES, WIRE_VERSION,
};

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
