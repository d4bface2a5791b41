//! Bitswap 1.2.0 (`/ipfs/bitswap/1.2.0`) without networking: the protobuf message codec and a
//! stateless responder over a [`crate::BlockStore`]. The node owns the libp2p stream and the
//! unsigned-varint length framing around each encoded message.

mod engine;
mod message;

pub use engine::{Received, TARGET_MESSAGE_SIZE, ingest, respond};
pub use message::{
    BitswapError, Block, BlockPresence, MAX_ENTRIES, MAX_ITEMS, MAX_MESSAGE_SIZE, Message,
    PresenceType, WantEntry, WantType, Wantlist,
};

/// The protocol id the node should register.
pub const PROTOCOL: &str = "/ipfs/bitswap/1.2.0";

#[cfg(test)]
mod tests;
