//! Devices (issue #16): what a device says about itself, firmware jobs that flash an image
//! onto the devices an edge manages (pure: [`job::FirmwareJob`]), and a model of a device's
//! endpoints ([`agent::DeviceAgent`]) that the devnet's simulated devices wrap and the job's
//! property tests run against, and the hand-off of a job to the devices' standby provider
//! ([`handoff`]). Design: `docs/DEVICES.md`.
//!
//! Pure like `agora-contracts`, beside which it lives (no clock, socket, file or task: time is
//! passed in); it may depend on `agora-market` (identities, timestamps) only.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod agent;
pub mod handoff;
pub mod job;
mod meta;
#[cfg(test)]
mod proptests;

pub use job::{
    Command, DeviceProgress, Effect, FailReason, FirmwareJob, Input, JobConfig, JobError, JobId,
    JobStatus, MAX_RESTORED_DEVICES, Outcome, RestoreError, SkipReason, SlotRecord, Step, Summary,
};
pub use meta::{DeviceId, DeviceMeta, Firmware, MAX_LABEL_LEN, Mode, Selector, SelectorError};
