//! The firmware job's configuration, inputs, effects, outcomes and views.

use std::collections::BTreeSet;

use agora_market::Timestamp;
use serde::{Deserialize, Serialize};

use super::super::meta::{DeviceId, DeviceMeta};

/// A firmware job's id (chosen by the edge that runs it).
pub type JobId = u64;

/// Bounds and timings of a firmware job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobConfig {
    /// Devices that may be unavailable (rebooting, in the bootloader, lost) at once.
    pub max_unavailable: usize,
    /// Attempts per device before it is rolled back (and rollback commands before it is lost).
    pub max_attempts: u32,
    /// Bytes per flash chunk (at most [`MAX_CHUNK`]).
    pub chunk_size: u32,
    /// How long a reboot, verify, boot or rollback may take, ms.
    pub step_timeout_ms: u64,
    /// How long one chunk's acknowledgement may take before it is sent again, ms.
    pub chunk_timeout_ms: u64,
    /// Times one chunk is sent again before the attempt fails.
    pub max_chunk_resends: u32,
}

/// Largest flash chunk: fits one UDP datagram with room to spare.
pub const MAX_CHUNK: u32 = 1024;

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            max_unavailable: 1,
            max_attempts: 2,
            chunk_size: MAX_CHUNK,
            step_timeout_ms: 10_000,
            chunk_timeout_ms: 1_000,
            max_chunk_resends: 5,
        }
    }
}

/// A job that cannot be started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The image has no bytes.
    #[error("firmware image {cid} is empty; pass the image file or its CID")]
    EmptyImage {
        /// The image.
        cid: String,
    },
    /// `max_unavailable` is 0: no device could ever be flashed.
    #[error("max-unavailable must be at least 1 (pass --max-unavailable K)")]
    ZeroUnavailable,
    /// No attempt allowed.
    #[error("max_attempts must be at least 1")]
    ZeroAttempts,
    /// Chunk size outside 1..=MAX_CHUNK.
    #[error("chunk size {0} outside 1..={MAX_CHUNK}")]
    ChunkSize(u32),
    /// The image needs more chunks than a chunk index holds.
    #[error("firmware image {cid} of {size} bytes needs too many chunks; raise the chunk size")]
    TooLarge {
        /// The image.
        cid: String,
        /// Its size.
        size: u64,
    },
}

/// What the edge tells a device (the endpoint protocol's requests; the driver fills in a
/// chunk's bytes from the image).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Reboot into the bootloader (the device disappears, then announces itself again).
    RebootToBootloader,
    /// Write `len` bytes of the image from `offset` into the inactive slot.
    FlashChunk {
        /// Chunk index.
        index: u32,
        /// Offset in the image.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Report the hash of what the inactive slot holds.
    Verify,
    /// Boot the inactive slot (the version label it will report).
    Boot {
        /// Version.
        version: String,
    },
    /// Make the previous slot active again and reboot into it.
    Rollback,
}

/// What happens to a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Begin (the first devices are told to reboot).
    Start,
    /// A device announced or reported its metadata.
    Discovered(DeviceMeta),
    /// A device acknowledged a chunk.
    ChunkAck {
        /// Device.
        device: DeviceId,
        /// Chunk index.
        index: u32,
    },
    /// A device reported the hash of its inactive slot.
    Hash {
        /// Device.
        device: DeviceId,
        /// BLAKE3 hash.
        hash: [u8; 32],
    },
    /// The devices this edge manages under the ledger now (the whole set).
    Managed(BTreeSet<DeviceId>),
    /// Time passed (at least at every [`Effect::WakeAt`]).
    Tick,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `command` to `device`.
    Send {
        /// Device.
        device: DeviceId,
        /// Command.
        command: Command,
    },
    /// The device is about to go offline: count none of its readings until [`Effect::Resume`].
    Pause(DeviceId),
    /// The device runs a final firmware again: its readings count again.
    Resume(DeviceId),
    /// A device is done.
    Done {
        /// Device.
        device: DeviceId,
        /// How it ended.
        outcome: Outcome,
    },
    /// Every device is done.
    Finished(Summary),
    /// Deliver [`Input::Tick`] at or after this time (the latest `WakeAt` replaces earlier).
    WakeAt(Timestamp),
}

/// Where a device is in the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Not started.
    Waiting,
    /// Told to reboot into the bootloader; waiting for it to announce itself there.
    Rebooting,
    /// Sending chunks.
    Flashing,
    /// Waiting for the hash of the flashed slot.
    Verifying,
    /// Told to boot the new image; waiting for it to announce the new version.
    Booting,
    /// Told to return to its previous slot.
    RollingBack,
    /// Finished (see the outcome).
    Done,
}

/// Why a device was not touched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Its owner locked it.
    Locked,
    /// This edge does not manage it under the ledger.
    NotManaged,
    /// It takes another firmware type.
    WrongType {
        /// What it takes.
        firmware_type: String,
    },
    /// It already runs the target version.
    AlreadyCurrent,
    /// The job stopped starting devices: as many were lost as may be unavailable.
    Halted,
}

/// Why one attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// A step did not complete in time.
    Timeout(Step),
    /// The flashed slot's hash is not the image's.
    HashMismatch,
    /// The device came back running this version instead of the new one.
    BootedOld {
        /// Version it runs.
        version: String,
    },
    /// The device came back in the bootloader after boot.
    StuckInBootloader,
    /// Told to enter the bootloader, it came back running.
    NoBootloader,
}

/// How a device ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It runs the new version.
    Updated {
        /// Attempts it took.
        attempts: u32,
    },
    /// Not touched.
    Skipped(SkipReason),
    /// Every attempt failed; it runs its previous firmware again (a failure).
    RolledBack {
        /// The last attempt's failure.
        last: FailReason,
        /// Attempts made.
        attempts: u32,
    },
    /// Every attempt failed and it did not come back from rollback (a failure).
    Lost {
        /// The last failure.
        last: FailReason,
    },
}

/// Counts of outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Devices in the job.
    pub total: usize,
    /// Updated.
    pub updated: usize,
    /// Skipped (locked, not managed, wrong type, already current, halted).
    pub skipped: usize,
    /// Rolled back (failed).
    pub rolled_back: usize,
    /// Lost (failed).
    pub lost: usize,
    /// Not finished yet.
    pub pending: usize,
}

impl Summary {
    /// Devices that failed.
    pub fn failed(&self) -> usize {
        self.rolled_back + self.lost
    }
}

/// One device's progress (`agora device job status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    /// Device.
    pub device: DeviceId,
    /// Step.
    pub step: Step,
    /// Attempt (0 before the first).
    pub attempt: u32,
    /// Chunks acknowledged in the current attempt.
    pub chunks_done: u32,
    /// Version it ran when the job reached it (what a rollback returns to).
    pub previous_version: String,
    /// Last version it reported.
    pub version: String,
    /// The last failed attempt's reason.
    pub last_failure: Option<FailReason>,
    /// Outcome, once done.
    pub outcome: Option<Outcome>,
}

/// A job as `agora device job status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Job id.
    pub id: JobId,
    /// Image CID.
    pub firmware: String,
    /// Target version.
    pub version: String,
    /// Chunks per device.
    pub chunks: u32,
    /// Devices unavailable now.
    pub unavailable: usize,
    /// Outcome counts.
    pub summary: Summary,
    /// Per device.
    pub devices: Vec<DeviceProgress>,
    /// Device replies that matched no step (stale, duplicated or unasked).
    pub ignored_replies: u64,
}
