//! The contract roles as pure state machines. This first step holds the handover of sensor
//! readings between edges ([`readings::Readings`]).

pub mod readings;

pub use readings::{DeviceAuthority, DeviceId, Previous, Readings, ReadingsConfig};
