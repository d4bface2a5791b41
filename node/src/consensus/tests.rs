//! Tests for the consensus driver: a seeded in-memory network of arbitrators, plus rejection
//! of malformed and forged input.

mod rejection;
mod scenarios;
mod sim;
