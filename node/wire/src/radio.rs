//! Sensor-radio messages: the 16-byte uplink frame sensors send over UDP, the checkpoints
//! edges gossip on [`crate::topics::RADIO_TOPIC`] (which readings they processed, with the CID of
//! their proof), and the replay request-response (`Kind::Radio` envelopes) an edge taking devices
//! over uses to fetch the readings its peers heard during a gap.

use agora_market::Timestamp;
use serde::{Deserialize, Serialize};

/// Length of one uplink frame.
pub const FRAME_LEN: usize = 16;
/// First byte of a version-1 frame.
pub const FRAME_MAGIC: u8 = 0xA7;

/// A frame that is not a version-1 uplink.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Wrong size.
    #[error("radio frame of {0} bytes, expected {FRAME_LEN}")]
    Length(usize),
    /// Unknown version byte.
    #[error("radio frame with magic {0:#04x}, expected {FRAME_MAGIC:#04x}")]
    Magic(u8),
}

/// Device and sequence number of an uplink frame.
pub fn parse_frame(b: &[u8]) -> Result<(u32, u32), FrameError> {
    if b.len() != FRAME_LEN {
        return Err(FrameError::Length(b.len()));
    }
    if b[0] != FRAME_MAGIC {
        return Err(FrameError::Magic(b[0]));
    }
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Ok((u32_at(1), u32_at(5)))
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
