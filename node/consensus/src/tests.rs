//! Tests for the consensus driver: a seeded in-memory network of arbitrators, plus rejection
//! of malformed and forged input.
#![allow(clippy::unwrap_used)]

mod rejection;
mod scenarios;
mod sim;
