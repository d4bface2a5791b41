//! The readings machine's configuration, inputs, effects and views.

use std::collections::BTreeMap;
use std::sync::Arc;

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

/// A sensor's id (the 32-bit device address of its frames).
pub type DeviceId = u32;
/// A device's frame counter: strictly increasing per device.
pub type Counter = u32;

/// Bounds and timings of the readings machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingsConfig {
    /// Devices this edge only hears (no authority entry, not assigned) that it keeps state for;
    /// frames of further such devices are dropped and counted.
    pub max_heard_devices: usize,
    /// Frames buffered per device (the oldest is evicted beyond).
    pub buffer_per_device: usize,
    /// How far past the highest counter this edge heard a checkpoint may claim coverage.
    pub max_counter_gap: u32,
    /// Frames fed since the last checkpoint before a checkpoint is forced.
    pub max_pending: usize,
    /// Checkpoint statements kept per device (for replaying to others).
    pub max_claim_authors: usize,
    /// Frames per device in one replay answer.
    pub max_replay_frames: usize,
    /// Devices per replay request answered.
    pub max_replay_devices: usize,
    /// Interval between checkpoints of what was fed, ms.
    pub checkpoint_ms: u64,
    /// How long a takeover waits for peers' replay answers, ms.
    pub replay_timeout_ms: u64,
}

/// Frames a device sends in [`ReadingsConfig::checkpoint_ms`] plus gossip latency stay far
/// below this; a checkpoint claiming more than this beyond what we heard is implausible.
pub const MAX_COUNTER_GAP: u32 = 256;

impl Default for ReadingsConfig {
    fn default() -> Self {
        Self {
            max_heard_devices: 1_024,
            buffer_per_device: 4_096,
            max_counter_gap: MAX_COUNTER_GAP,
            max_pending: 16_384,
            max_claim_authors: 4,
            max_replay_frames: 4_096,
            max_replay_devices: 64,
            checkpoint_ms: 200,
            replay_timeout_ms: 1_500,
        }
    }
}

/// An uplink whose MIC and counter the driver checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The device.
    pub device: DeviceId,
    /// Its frame counter.
    pub counter: Counter,
    /// The frame as received.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// Who may feed a device's readings now, from the ledger (see [`super::authority`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAuthority {
    /// The node the ledger lets manage the device.
    pub manager: NodeId,
    /// The manager's authority lapses at this time unless renewed (a provider's lease on its
    /// view of the ledger; a customer that cannot see its committee); `None`: no lapse.
    pub lease_until: Option<Timestamp>,
    /// Earlier managers that may still be feeding (a view of the ledger lags by up to a
    /// lease): the manager waits for each to release the device or for its `until`.
    pub previous: Vec<Previous>,
}

/// The previous manager of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    /// The node.
    pub node: NodeId,
    /// When the ledger took its authority away: a release stated at or after this counts.
    pub since: Timestamp,
    /// By then it has certainly stopped feeding (its own lease ran out).
    pub until: Timestamp,
}

/// Frame counters of one device covered by a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoveredRange {
    /// The device.
    pub device: DeviceId,
    /// First counter.
    pub first: Counter,
    /// Last counter.
    pub last: Counter,
    /// Frames (fewer than `last - first + 1` if the device skipped counters).
    pub count: u32,
}

/// A checkpoint statement whose author the driver verified (gossip, or relayed in a replay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointClaim {
    /// The signing edge.
    pub author: NodeId,
    /// Ranges per device.
    pub ranges: Vec<CoveredRange>,
    /// Devices the author gives up with this checkpoint.
    pub released: Vec<DeviceId>,
    /// When the author took it (its clock).
    pub at: Timestamp,
    /// The signed envelope, kept to relay to edges taking a device over.
    pub envelope: Arc<[u8]>,
}

/// One device's frames in a replay answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayedDevice {
    /// The device.
    pub device: DeviceId,
    /// Frames the peer heard that no checkpoint it trusts covers, ascending.
    pub frames: Vec<Frame>,
}

/// What happens to the readings machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The radio heard an authenticated uplink.
    Heard(Frame),
    /// The ledger's view of who may feed which device changed (the whole map).
    Authority(BTreeMap<DeviceId, DeviceAuthority>),
    /// Feed `devices` to `service` from now on (once peers answered what they heard and the
    /// checkpoints they hold: see [`Effect::AskReplay`]).
    Assign {
        /// Devices.
        devices: Vec<DeviceId>,
        /// Service id.
        service: String,
        /// Taking one's own devices back after a handback (for the driver's log; every
        /// takeover asks peers).
        reclaim: bool,
    },
    /// Stop feeding `devices`, after a last checkpoint that releases them.
    Release {
        /// Devices.
        devices: Vec<DeviceId>,
    },
    /// Label `devices` as covered on standby (status only; every edge buffers anyway).
    Listen {
        /// Devices.
        devices: Vec<DeviceId>,
        /// On or off.
        on: bool,
    },
    /// A signed checkpoint (a peer's from gossip, or this node's own once signed).
    Checkpoint(CheckpointClaim),
    /// The service refused a fed frame (its queue is full): it was not processed here.
    FeedRefused {
        /// Service id.
        service: String,
        /// Device.
        device: DeviceId,
        /// Counter.
        counter: Counter,
    },
    /// A peer asks for what this edge heard of `devices`.
    ReplayRequest {
        /// The asking peer.
        from: NodeId,
        /// Its request id (echoed in the answer).
        request: u64,
        /// Devices.
        devices: Vec<DeviceId>,
    },
    /// A peer's answer to [`Effect::AskReplay`].
    ReplayAnswer {
        /// The request.
        request: u64,
        /// The answering peer.
        from: NodeId,
        /// Frames per device (MICs checked by the driver).
        devices: Vec<ReplayedDevice>,
        /// Checkpoints it relayed (signatures checked by the driver).
        checkpoints: Vec<CheckpointClaim>,
    },
    /// Every asked peer answered or failed: stop waiting for request `request`.
    ReplayFinished {
        /// The request.
        request: u64,
    },
    /// Time passed (at least at every [`Effect::WakeAt`]).
    Tick,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Push one reading to a service (answer [`Input::FeedRefused`] if it refuses).
    Feed {
        /// Service id.
        service: String,
        /// The frame.
        frame: Frame,
        /// Whether it comes from a buffer (heard during a gap) rather than live.
        replayed: bool,
    },
    /// Prove (data-integrity proof over `frames`), sign and gossip a checkpoint, then hand it
    /// back as [`Input::Checkpoint`] so it can be relayed.
    Checkpoint {
        /// Service id.
        service: String,
        /// Ranges per device.
        ranges: Vec<CoveredRange>,
        /// The frames fed since the previous checkpoint, in order.
        frames: Vec<Vec<u8>>,
        /// Devices given up with this checkpoint.
        released: Vec<DeviceId>,
    },
    /// Ask peers (`prefer` first: the devices' managers) for frames and checkpoints of
    /// `devices`; answer with [`Input::ReplayAnswer`] and [`Input::ReplayFinished`].
    AskReplay {
        /// Request id.
        request: u64,
        /// Devices.
        devices: Vec<DeviceId>,
        /// Peers to ask first.
        prefer: Vec<NodeId>,
    },
    /// Answer a peer's replay request.
    AnswerReplay {
        /// The peer.
        to: NodeId,
        /// Its request id.
        request: u64,
        /// Buffered frames per device.
        devices: Vec<ReplayedDevice>,
        /// Signed checkpoints this edge holds for those devices (envelopes to relay).
        checkpoints: Vec<Arc<[u8]>>,
    },
    /// An assignment is in place (peers' replays merged); `replayed` buffered frames were fed.
    Assigned {
        /// Service id.
        service: String,
        /// Devices.
        devices: Vec<DeviceId>,
        /// Frames replayed from the buffer at once.
        replayed: u64,
    },
    /// Deliver [`Input::Tick`] at or after this time (the latest `WakeAt` replaces earlier).
    WakeAt(Timestamp),
}

/// Everything dropped or refused, for metrics and `agora radio`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Uplinks whose counter did not advance, or already covered.
    pub duplicates: u64,
    /// Uplinks of devices with no slot (unknown, table full).
    pub unknown_dropped: u64,
    /// Frames evicted from full buffers.
    pub evicted_frames: u64,
    /// Checkpoint statements from authors without the device's authority.
    pub unauthorized_checkpoints: u64,
    /// Checkpoint ranges claiming too far past what this edge heard.
    pub implausible_checkpoints: u64,
    /// Checkpoint statements not kept because the device's statement table was full.
    pub evicted_claims: u64,
    /// Frames a service refused.
    pub feed_refused: u64,
    /// Replay answers to requests no longer waited for.
    pub late_answers: u64,
}

/// One device as this edge sees it (`agora radio`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Device.
    pub device: DeviceId,
    /// Service it is assigned to here.
    pub service: Option<String>,
    /// Whether it is fed right now (assigned and authorised).
    pub feeding: bool,
    /// Labelled as covered on standby.
    pub buffering: bool,
    /// Frames in the buffer.
    pub buffered: usize,
    /// Uplinks heard.
    pub received: u64,
    /// Frames fed here (including replayed ones).
    pub processed: u64,
    /// Of those, from the buffer.
    pub replayed: u64,
    /// Duplicates and stale frames dropped.
    pub duplicates: u64,
    /// First feed since the latest assignment here.
    pub first_processed_at: Option<Timestamp>,
    /// Highest counter fed here.
    pub last_processed: Option<Counter>,
    /// Highest counter covered by another edge's trusted checkpoint.
    pub peer_covered: Option<Counter>,
    /// Highest counter processed anywhere as far as this edge trusts (its watermark).
    pub done: Option<Counter>,
}
