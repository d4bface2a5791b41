//! agora-node
pub mod consensus;
