//! agora-devnet
