//! agora-contracts
