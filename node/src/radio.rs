//! The sensor radio: simulated LoRa-style uplinks reach every edge in range as UDP datagrams
//! (16-byte frames, see `runtime/examples/lora-gateway/src/reading.rs`). Every edge hears every
//! device in range; only the edge that manages a device feeds its readings to a service. Edges
//! covering a device on standby buffer what they hear, so a handover can replay the readings
//! that arrived after the previous manager's last checkpoint: nothing lost, nothing processed
//! twice.
//!
//! A checkpoint is a signed data-integrity proof (blake3 Merkle root of the frames, stored as a
//! block) plus the per-device sequence ranges it covers, gossiped on [`RADIO_TOPIC`].

mod task;

use std::collections::BTreeMap;
use std::sync::Arc;

use agora_market::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use task::spawn;

/// Gossip topic of radio checkpoints.
pub const RADIO_TOPIC: &str = "agora/radio/1";
/// Length of one uplink frame.
pub const FRAME_LEN: usize = 16;
/// First byte of a version-1 frame.
pub const FRAME_MAGIC: u8 = 0xA7;

/// Radio settings (`[radio]` in the node config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RadioConfig {
    /// UDP address the radio listens on (`127.0.0.1:0` picks a free port); empty: no radio.
    pub listen: String,
    /// Interval between checkpoints of processed readings, ms.
    pub checkpoint_ms: u64,
    /// Readings buffered per device on standby.
    pub buffer_per_device: usize,
}

impl Default for RadioConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            checkpoint_ms: 200,
            buffer_per_device: 4096,
        }
    }
}

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

/// A checkpoint and who made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The edge.
    pub edge: String,
    /// Whether it is this node's.
    pub mine: bool,
    /// The checkpoint.
    pub checkpoint: Checkpoint,
}

/// One device as this edge sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Device.
    pub device: u32,
    /// Service processing it here, if this edge manages it.
    pub service: Option<String>,
    /// Whether this edge buffers it (standby).
    pub buffering: bool,
    /// Frames in the buffer.
    pub buffered: usize,
    /// Frames heard.
    pub received: u64,
    /// Frames fed to a service here (including replayed ones).
    pub processed: u64,
    /// Of those, frames replayed from the standby buffer (heard during a gap).
    pub replayed: u64,
    /// Duplicates and stale frames dropped.
    pub duplicates: u64,
    /// When this edge first fed a frame of the device to a service since the device was last
    /// assigned here (ms).
    pub first_processed_at: Option<Timestamp>,
    /// Highest sequence number processed here.
    pub last_processed: Option<u32>,
    /// Highest sequence number covered by another edge's checkpoint.
    pub peer_covered: Option<u32>,
}

/// `GET /v1/radio`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RadioStatus {
    /// UDP address the radio listens on.
    pub addr: Option<String>,
    /// Devices heard or managed.
    pub devices: Vec<DeviceStatus>,
    /// Recent checkpoints (this node's and others'), oldest first.
    pub checkpoints: Vec<CheckpointRecord>,
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

type Reply<T> = oneshot::Sender<T>;

enum Command {
    Assign {
        devices: Vec<u32>,
        service: String,
        resume_after: BTreeMap<u32, u32>,
        /// Ask peers how far their checkpoints reach even when the local buffer bridges the
        /// gap (a reclaim after a handback, where the last checkpoint may not have arrived).
        ask_peers: bool,
        reply: Reply<u64>,
    },
    Release {
        devices: Vec<u32>,
        reply: Reply<()>,
    },
    Listen(Vec<u32>, bool),
    Status(Reply<RadioStatus>),
}

/// Handle to the radio task.
#[derive(Clone)]
pub struct RadioHandle {
    tx: mpsc::Sender<Command>,
    addr: Option<Arc<str>>,
}

impl std::fmt::Debug for RadioHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RadioHandle({:?})", self.addr)
    }
}

impl RadioHandle {
    /// UDP address sensors send to, if the radio listens.
    pub fn addr(&self) -> Option<&str> {
        self.addr.as_deref()
    }

    /// Routes `devices` to `service`, first replaying buffered frames newer than
    /// `resume_after[device]`; returns how many frames were replayed.
    pub async fn assign(
        &self,
        devices: Vec<u32>,
        service: String,
        resume_after: BTreeMap<u32, u32>,
    ) -> u64 {
        self.assign_with(devices, service, resume_after, false)
            .await
    }

    /// [`Self::assign`] for an edge taking its own devices back from a peer that served them:
    /// it also asks its peers how far their checkpoints reach, since the serving peer's last
    /// checkpoint may not have reached this edge (just restarted, mesh not formed yet), and
    /// resuming from an older one would process the readings in between twice.
    pub async fn reclaim(
        &self,
        devices: Vec<u32>,
        service: String,
        resume_after: BTreeMap<u32, u32>,
    ) -> u64 {
        self.assign_with(devices, service, resume_after, true).await
    }

    async fn assign_with(
        &self,
        devices: Vec<u32>,
        service: String,
        resume_after: BTreeMap<u32, u32>,
        ask_peers: bool,
    ) -> u64 {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Assign {
            devices,
            service,
            resume_after,
            ask_peers,
            reply,
        };
        if self.tx.send(cmd).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Stops routing `devices`, after a last checkpoint of what was processed.
    pub async fn release(&self, devices: Vec<u32>) {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Release { devices, reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Marks `devices` as covered on standby (`true`) or not (`false`); every edge buffers
    /// what it hears anyway, this only labels them.
    pub async fn listen(&self, devices: Vec<u32>, on: bool) {
        let _ = self.tx.send(Command::Listen(devices, on)).await;
    }

    /// Devices and checkpoints.
    pub async fn status(&self) -> RadioStatus {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Status(reply)).await.is_err() {
            return RadioStatus::default();
        }
        let mut status = rx.await.unwrap_or_default();
        status.addr = self.addr.as_deref().map(str::to_string);
        status
    }

    /// Highest sequence number of each of `devices` covered by another edge's checkpoint.
    pub async fn peer_covered(&self, devices: &[u32]) -> BTreeMap<u32, u32> {
        let status = self.status().await;
        status
            .devices
            .iter()
            .filter(|d| devices.contains(&d.device))
            .filter_map(|d| Some((d.device, d.peer_covered?)))
            .collect()
    }

    /// Whether another edge has published its last checkpoint for any of `devices` at or after
    /// `since`.
    pub async fn released_by_peer(&self, devices: &[u32], since: Timestamp) -> bool {
        self.status().await.checkpoints.iter().any(|c| {
            !c.mine
                && c.checkpoint.at >= since
                && c.checkpoint.released.iter().any(|d| devices.contains(d))
        })
    }
}

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
