//! Pure market state machines for Agora: resources, auctions, bids, offers, the decision unit
//! and negotiation. No I/O: time, randomness and signing are passed in.
#![forbid(unsafe_code)]

pub mod identity;

pub use identity::{Domain, KeySigner, NodeId, Signature, SignatureError, Signer, Timestamp, verify};
