//! agora-storage
