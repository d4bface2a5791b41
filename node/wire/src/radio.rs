//! Sensor-radio messages: the 16-byte uplink frame sensors send over UDP, the checkpoints
//! edges gossip on [`crate::topics::RADIO_TOPIC`] (which readings they processed, with the CID of
//! their proof), and the replay request-response (`Kind::Radio` envelopes) an edge taking devices
//! over uses to fetch the readings its peers heard during a gap; and the device endpoint
//! protocol ([`endpoint`]: metadata, reboot, flash, verify, boot, rollback) of issue #16.

pub mod endpoint;
pub mod frame;

use agora_market::Timestamp;
use serde::{Deserialize, Serialize};

pub use frame::{
    Accepted, DEFAULT_COUNTER_WINDOW, DeviceKey, FRAME_V2_LEN, FRAME_V2_MAGIC, FrameRefusal,
    MIC_LEN, Uplink, authenticate, check_counter, check_mic, parse_uplink, reading, seal_frame,
};

/// Length of a version-1 uplink frame.
pub const FRAME_LEN: usize = 16;
/// First byte of a version-1 frame.
pub const FRAME_MAGIC: u8 = 0xA7;

/// A frame that is neither a version-1 nor a version-2 uplink.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Wrong size for its version.
    #[error("radio frame of {0} bytes, expected {FRAME_LEN} (v1) or {FRAME_V2_LEN} (v2)")]
    Length(usize),
    /// Unknown version byte.
    #[error(
        "radio frame with magic {0:#04x}, expected {FRAME_MAGIC:#04x} (v1) or {FRAME_V2_MAGIC:#04x} (v2)"
    )]
    Magic(u8),
}

/// Device and sequence number of an uplink frame of either version (see [`frame`]).
pub fn parse_frame(b: &[u8]) -> Result<(u32, u32), FrameError> {
    parse_uplink(b).map(|u| (u.device, u.seq))
}

/// Sequence numbers of one device covered by a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// Device.
    pub device: u32,
    /// First sequence number.
    pub first: u32,
    /// Last sequence number.
    pub last: u32,
    /// Frames (may be fewer than `last - first + 1` if the device skipped numbers).
    pub count: u32,
}

/// What an edge processed since its previous checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The service that processed the readings.
    pub service: String,
    /// Ranges per device.
    pub ranges: Vec<SeqRange>,
    /// CID of the signed data-integrity proof over the frames (empty when there were none).
    pub proof: String,
    /// Devices the edge gives up with this checkpoint (its last for them).
    pub released: Vec<u32>,
    /// When it was taken (ms).
    pub at: Timestamp,
}

/// Request-response between edges (`Kind::Radio` envelopes): an edge taking devices over asks
/// its peers for the uplinks they heard that no checkpoint covers yet — like LoRaWAN, where every
/// gateway in range forwards every uplink, so a gateway that was down loses nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RadioRpc {
    /// Send what you heard from these devices.
    Replay {
        /// Devices.
        devices: Vec<u32>,
    },
    /// Uncovered frames per device, and the highest sequence number a checkpoint covers.
    Frames {
        /// `(device, covered, frames)`.
        devices: Vec<ReplayedDevice>,
    },
    /// A provider that will manage these devices asks their owner for their frame keys (sent
    /// when a contract is staged, while the owner is alive; at most [`MAX_KEYS_PER_MESSAGE`]).
    KeyRequest {
        /// Devices.
        devices: Vec<u32>,
    },
    /// The owner's answer: the keys of the requested devices the asker may manage. Travels
    /// only over the authenticated, encrypted libp2p connection between the two.
    Keys {
        /// The working keys: the current epoch's and, while the owner rotates, the next's.
        keys: Vec<HandedKey>,
    },
    /// The owner rotates these devices' keys (a provider's contract for them ended): it hands
    /// the next epoch's working keys to the providers that still hold them, before it moves
    /// the devices (at most [`MAX_KEYS_PER_MESSAGE`]). The envelope's signer must be the
    /// devices' owner as the receiver's ledger knows it.
    KeyUpdate {
        /// The next working keys.
        keys: Vec<HandedKey>,
    },
    /// The answer to [`RadioRpc::KeyUpdate`]: the devices whose key was taken.
    KeysTaken {
        /// Devices.
        devices: Vec<u32>,
    },
    /// The devices' owner hands a firmware job it started to a provider of one of its
    /// contracts for them (issue #16), so the provider resumes it if it takes the devices over
    /// at a handover. The envelope's signer is the owner; the provider keeps it only if that is
    /// who owns every device it names.
    JobHandoff {
        /// The job's request.
        handoff: agora_devices::handoff::JobHandoff,
    },
    /// The provider's answer to [`RadioRpc::JobHandoff`]: whether it kept (or retired) it.
    HandoffAck {
        /// Kept.
        kept: bool,
    },
    /// The customer of a standby contract hands its service's key-value state, with the
    /// readings it reflects, to the contract's provider (issue #15), before it gossips the
    /// checkpoint of those readings. The envelope's signer is the customer; the provider keeps
    /// it only per `agora_contracts::state` (its ledger's customer, bounded, newest).
    State {
        /// The snapshot.
        snapshot: agora_contracts::state::StateSnapshot,
        /// The checkpoint of the readings the snapshot reflects, as the customer will gossip
        /// it: a [`Checkpoint`] in a `Kind::Radio` envelope the customer signed (at most
        /// `MAX_GOSSIP_BYTES`). The provider that keeps the snapshot gossips it too, so a
        /// customer that dies between the provider's answer and its own gossip does not take
        /// the only record of those readings with it (a copy is a gossip duplicate).
        #[serde(default, with = "serde_bytes")]
        checkpoint: Option<Vec<u8>>,
    },
    /// The provider's answer to [`RadioRpc::State`]: kept, or why not.
    StateAck {
        /// Kept.
        kept: bool,
        /// Why it was refused (empty when kept).
        reason: String,
    },
}

/// Devices per key request or answer.
pub const MAX_KEYS_PER_MESSAGE: usize = 1024;

/// A device's working key of one epoch (`DeviceKey::for_epoch` of its root), as an owner hands
/// it to a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedKey {
    /// Device.
    pub device: u32,
    /// Epoch.
    pub epoch: u32,
    /// The working key.
    pub key: [u8; 32],
}

/// One device in a [`RadioRpc::Frames`] answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayedDevice {
    /// Device.
    pub device: u32,
    /// Highest sequence number covered by any checkpoint the peer heard.
    pub covered: Option<u32>,
    /// Frames the peer heard after that, ascending.
    pub frames: Vec<Vec<u8>>,
}

/// Frames per device in one replay answer.
pub const MAX_REPLAY_FRAMES: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_bad_frames_fail() {
        let mut f = vec![FRAME_MAGIC];
        f.extend(7u32.to_le_bytes());
        f.extend(42u32.to_le_bytes());
        f.extend([0u8; 7]);
        assert_eq!(parse_frame(&f), Ok((7, 42)));
        assert_eq!(parse_frame(&f[..3]), Err(FrameError::Length(3)));
        f[0] = 1;
        assert_eq!(parse_frame(&f), Err(FrameError::Magic(1)));
    }
}
