//! agora-node
