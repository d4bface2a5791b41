//! agora-runtime
