//! The sensor radio: simulated LoRa-style uplinks reach every edge in range as UDP datagrams
//! (16-byte frames, see `runtime/examples/lora-gateway/src/reading.rs`). Every edge hears every
//! device in range; only the edge that manages a device feeds its readings to a service. Edges
//! covering a device on standby buffer what they hear, so a handover can replay the readings
//! that arrived after the previous manager's last checkpoint: nothing lost, nothing processed
//! twice.
//!
//! A checkpoint is a signed data-integrity proof (blake3 Merkle root of the frames, stored as a
//! block) plus the per-device sequence ranges it covers, gossiped on [`RADIO_TOPIC`]. The frame,
//! checkpoint and replay messages are `agora_wire::radio` types, re-exported here.
//!
//! Frames are authenticated per device (threat R1, see [`agora_wire::radio::frame`]): an edge
//! that holds a device's key (its owner, from `radio.device_keys`; a provider of one of its
//! contracts, handed the key by the owner when the contract is staged, see [`keys`]) drops every
//! frame of that device without a valid MIC or with a counter that does not increase, before
//! it reaches a service, a buffer or a replay answer; an edge without the key keeps what it
//! hears as hearsay (`DeviceStatus::authenticated` false).
//!
//! May depend on `agora-wire`, `agora-network`, `agora-exchange` (proofs are stored as blocks)
//! and `agora-hosting` (readings go to a guest service through `ServiceControl`); never on the
//! ledger or the orchestrator, which tells it what to route where.
#![forbid(unsafe_code)]

mod counters;
pub mod discovery;
pub mod firmware;
#[cfg(any(test, feature = "test-utils"))]
pub mod flash_sim;
mod handoff_file;
mod jobs_file;
mod judge;
pub mod keys;
mod owners;
mod owners_file;
mod pause;
mod rotation;
pub mod rules;
mod table;
mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use agora_contracts::ContractId;
use agora_contracts::state::StateSnapshot;
use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use agora_wire::radio::{
    Checkpoint, DEFAULT_COUNTER_WINDOW, DeviceKey, FRAME_LEN, FRAME_MAGIC, FRAME_V2_LEN,
    FRAME_V2_MAGIC, FrameError, FrameRefusal, MAX_REPLAY_FRAMES, RadioRpc, ReplayedDevice,
    SeqRange, parse_frame, seal_frame,
};
pub use discovery::{DiscoveredDevice, DiscoveryStats};
pub use keys::DeviceKeyConfig;
pub use owners::ClaimRefused;
pub use rotation::{RotateRefused, Started as RotationStarted};

/// File in the data dir holding the device keys owners handed to this node (mode 0600).
pub const RECEIVED_KEYS_FILE: &str = "radio-keys.json";
/// File in the data dir holding the last accepted frame counter per keyed device (mode 0600).
pub const FRAME_COUNTERS_FILE: &str = "radio-counters.json";
/// Directory in the data dir holding the newest state snapshot per contract this node provides
/// (issue #15, see [`agora_contracts::state`]).
pub const STATE_DIR: &str = "radio-state";
/// File in the data dir holding the firmware-job hand-offs this node keeps as a provider
/// (issue #16, mode 0600).
pub const HANDOFFS_FILE: &str = "radio-handoffs.json";
/// This edge's own firmware jobs (issue #16), reloaded at start so a restarted edge resumes
/// them (mode 0600).
pub const JOBS_FILE: &str = "radio-jobs.json";
/// The owner's key rotation state (threats R1/R2): each owned device's key epoch and the
/// providers its working key was handed to (mode 0600).
pub const ROTATION_FILE: &str = "radio-rotation.json";
/// Provider: which customer's live contracts claimed which devices here (threat R8), reloaded
/// at start so the first live claim still holds after a restart (mode 0600).
pub const OWNERS_FILE: &str = "radio-owners.json";
/// Default `radio.max_devices_per_customer`: one manifest's worth (a manifest names at most
/// 1,024 devices, `agora-image`'s cap), a quarter of the default `radio.max_devices`.
pub const DEFAULT_MAX_DEVICES_PER_CUSTOMER: usize = 1024;

/// Where the radio task keeps what must survive a restart (`None`: memory only, for tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RadioFiles {
    /// Device keys received from owners ([`RECEIVED_KEYS_FILE`]).
    pub keys: Option<std::path::PathBuf>,
    /// Last accepted frame counters ([`FRAME_COUNTERS_FILE`]).
    pub counters: Option<std::path::PathBuf>,
    /// State snapshots kept as a provider ([`STATE_DIR`]).
    pub states: Option<std::path::PathBuf>,
    /// Firmware-job hand-offs kept as a provider ([`HANDOFFS_FILE`]).
    pub handoffs: Option<std::path::PathBuf>,
    /// This edge's own firmware jobs ([`JOBS_FILE`]).
    pub jobs: Option<std::path::PathBuf>,
    /// Key rotation state of the devices this node owns ([`ROTATION_FILE`]).
    pub rotation: Option<std::path::PathBuf>,
    /// Customers' device claims as a provider ([`OWNERS_FILE`]).
    pub owners: Option<std::path::PathBuf>,
}

impl RadioFiles {
    /// Both files in the node's data directory.
    pub fn in_dir(data_dir: &std::path::Path) -> Self {
        RadioFiles {
            keys: Some(data_dir.join(RECEIVED_KEYS_FILE)),
            counters: Some(data_dir.join(FRAME_COUNTERS_FILE)),
            states: Some(data_dir.join(STATE_DIR)),
            handoffs: Some(data_dir.join(HANDOFFS_FILE)),
            jobs: Some(data_dir.join(JOBS_FILE)),
            rotation: Some(data_dir.join(ROTATION_FILE)),
            owners: Some(data_dir.join(OWNERS_FILE)),
        }
    }
}
pub use agora_wire::topics::RADIO_TOPIC;
pub use task::spawn;

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
    /// How far (in sequence numbers) a peer's checkpoint may run ahead of the highest sequence
    /// number this edge heard from a device; further is refused (see [`rules`]).
    pub checkpoint_window: u32,
    /// Devices tracked; a frame from a new device when the table is full evicts the stalest
    /// device this edge neither manages, buffers for a contract nor knows the managers of.
    /// Also the most customers' devices this edge records an owner for (threat R9).
    pub max_devices: usize,
    /// The most devices one customer's live contracts here may claim (threat R9): a contract
    /// that would take its customer past it is refused, so one customer cannot fill the
    /// owner table against the others.
    pub max_devices_per_customer: usize,
    /// How far a device's frame counter may jump past the last one accepted here.
    pub frame_counter_window: u32,
    /// How many accepted frames of a keyed device may be delivered before their counter is
    /// saved to `radio-counters.json`: a frame further past the saved counter is saved first,
    /// so a node killed with SIGKILL accepts again at most this many genuine frames per device
    /// (0: every frame is saved before it is delivered). Saved at each checkpoint tick anyway.
    pub max_unsaved_frames: u32,
    /// Frame keys of the devices this node owns (`[[radio.device_keys]] device = 7, key =
    /// "<64 hex digits>"`): their frames must carry a valid MIC; the keys are handed to the
    /// provider of a contract for these devices when it is staged.
    pub device_keys: Vec<DeviceKeyConfig>,
}

impl Default for RadioConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            checkpoint_ms: 200,
            buffer_per_device: 4096,
            checkpoint_window: 1024,
            max_devices: 4096,
            max_devices_per_customer: DEFAULT_MAX_DEVICES_PER_CUSTOMER,
            frame_counter_window: DEFAULT_COUNTER_WINDOW,
            max_unsaved_frames: 16,
            device_keys: Vec::new(),
        }
    }
}

/// A checkpoint and who made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The edge.
    pub edge: String,
    /// Whether it is this node's.
    pub mine: bool,
    /// The checkpoint (a peer's: only the ranges and releases that counted here).
    pub checkpoint: Checkpoint,
    /// Whether the signer was checked against the devices' known managers (always for this
    /// node's own); `false`: this edge knows no manager of those devices, only the bound on
    /// sequence numbers was applied (see [`rules`]).
    #[serde(default)]
    pub verified: bool,
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
    /// Sequence numbers skipped over while processing here: after the highest one processed
    /// here or covered by a peer's checkpoint, before the frame processed next
    /// ([`rules::skipped`]) — readings no edge known here processed.
    #[serde(default)]
    pub missing: u64,
    /// When this edge first fed a frame of the device to a service since the device was last
    /// assigned here (ms).
    pub first_processed_at: Option<Timestamp>,
    /// Highest sequence number processed here.
    pub last_processed: Option<u32>,
    /// Highest sequence number covered by another edge's checkpoint.
    pub peer_covered: Option<u32>,
    /// Highest sequence number heard from the device (the radio, or peers' replays).
    #[serde(default)]
    pub heard: Option<u32>,
    /// Edges known here to manage or to have managed the device (from the ledger).
    #[serde(default)]
    pub managers: Vec<String>,
    /// Whether this edge holds the device's key (its frames are verified here); `false`:
    /// what it hears of the device is hearsay.
    #[serde(default)]
    pub authenticated: bool,
    /// Epoch of the device's working key held here (key rotation), if it holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_epoch: Option<u32>,
    /// A firmware job here took the device offline (bootloader, flashing): it is expected to
    /// send nothing until it boots a final firmware (`pause.rs`).
    #[serde(default)]
    pub paused: bool,
    /// Times a firmware job here paused the device.
    #[serde(default)]
    pub pauses: u64,
    /// Highest sequence number heard or processed when the last pause began.
    #[serde(default)]
    pub paused_after: Option<u32>,
    /// First sequence number processed after the last pause began (`None`: none yet).
    #[serde(default)]
    pub resumed_from: Option<u32>,
    /// Readings above `paused_after` heard while paused (the device was sending after all:
    /// counted, still processed).
    #[serde(default)]
    pub heard_paused: u64,
}

/// What the radio refused or evicted (threat R1), since the node started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RadioStats {
    /// Peer checkpoint ranges that moved a device's coverage, signer checked.
    pub ranges_counted: u64,
    /// Peer checkpoint ranges that moved coverage under the bound only (managers unknown here).
    pub ranges_unverified: u64,
    /// Peer checkpoint ranges refused: signer neither manages nor managed the device.
    pub ranges_refused_not_manager: u64,
    /// Peer checkpoint ranges refused: `last` beyond what was heard plus the window.
    pub ranges_refused_beyond_heard: u64,
    /// Device releases refused: signer is not a manager of the device.
    pub releases_refused: u64,
    /// `covered` values of peers' replay answers cut down to the window.
    pub replay_covered_clamped: u64,
    /// Devices evicted from a full table.
    pub devices_evicted: u64,
    /// Frames dropped because the table was full of devices that may not be evicted.
    pub frames_dropped_table_full: u64,
    /// Frames whose MIC and counter were checked and passed.
    pub frames_verified: u64,
    /// Frames of devices whose key this edge does not hold (kept as hearsay).
    pub frames_unverified: u64,
    /// Frames dropped: bad MIC (forged or corrupted).
    pub frames_refused_bad_mic: u64,
    /// Frames dropped: counter not above the last accepted (a replay or an old frame).
    pub frames_refused_replayed: u64,
    /// Frames dropped: counter beyond `radio.frame_counter_window`.
    pub frames_refused_beyond_window: u64,
    /// Frames dropped: unsigned (v1) frame of a device that has a key here.
    pub frames_refused_unsigned: u64,
    /// Frames in peers' replay answers dropped: bad MIC or unsigned for a device with a key.
    pub replay_frames_refused: u64,
    /// Replay requests answered in part: a device named twice, more than
    /// `MAX_KEYS_PER_MESSAGE` devices, or more frames than one answer's byte budget.
    pub replay_requests_trimmed: u64,
    /// Entries of peers' replay answers dropped: a device given twice in one answer, or frames
    /// past the device's buffer bound (`radio.buffer_per_device`).
    pub replay_entries_refused: u64,
    /// Device keys received from their owners.
    pub keys_received: u64,
    /// Key requests refused: the asker is not a provider of the device here, or it is not
    /// this node's.
    pub key_requests_refused: u64,
    /// Owner: device keys rotated (the device confirmed its new epoch) because a provider that
    /// held the working key no longer provides for the device.
    #[serde(default)]
    pub keys_rotated: u64,
    /// Owner: rekey requests sent to devices (retries included).
    #[serde(default)]
    pub rekeys_sent: u64,
    /// Provider: next-epoch keys taken from the devices' owner (a rotation under way).
    #[serde(default)]
    pub key_updates_taken: u64,
    /// Provider: key updates refused: their signer is not the devices' owner here.
    #[serde(default)]
    pub key_updates_refused: u64,
    /// Peer checkpoints forwarded on the radio topic: a known manager's range moved coverage
    /// here, or a known manager released a device (threat N7).
    pub checkpoints_forwarded: u64,
    /// Peer checkpoints not forwarded and not penalised: refused by the rules here, hearsay
    /// only, or nothing new (threat N7).
    pub checkpoints_ignored: u64,
    /// Peer checkpoints rejected (sender penalised, not forwarded): undecodable, or malformed
    /// (too many devices, over-long text, impossible ranges, a device twice).
    pub checkpoints_rejected: u64,
    /// Peer checkpoints that arrived a second time, whole (the same signed checkpoint by
    /// gossip and with a state snapshot, or replayed): ignored, not kept twice.
    pub checkpoints_duplicate: u64,
    /// Customer: state snapshots sent to a standby provider and kept there.
    pub state_sent: u64,
    /// Customer: state snapshots the provider refused or did not answer (the checkpoint went
    /// out anyway).
    pub state_send_failed: u64,
    /// Customer: checkpoints gossiped without a state snapshot: the service stayed busy for
    /// [`STATE_MAX_HELD_TICKS`] ticks, its state was too large to travel, or it could not be
    /// copied.
    pub state_skipped: u64,
    /// Provider: the customer's checkpoints that came with a kept state snapshot and were
    /// gossiped from here (so they survive the customer dying before it gossips them).
    pub state_checkpoints_relayed: u64,
    /// Provider: checkpoints that came with a snapshot and were refused (not the snapshot's
    /// signer, not a radio checkpoint, stale, undecodable, oversized).
    pub state_checkpoints_refused: u64,
    /// Provider: contracts not served because a device they name is another party's here
    /// (threat R8).
    pub claims_refused_taken: u64,
    /// Provider: contracts not served because their customer would hold more than
    /// `radio.max_devices_per_customer` devices here (threat R9).
    pub claims_refused_share: u64,
}

/// Checkpoint ticks a stateful service's checkpoint waits for a quiescent moment to copy its
/// state before it goes out without one.
pub const STATE_MAX_HELD_TICKS: u32 = 10;

/// `GET /v1/devices`: the devices discovered here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// Devices, by id.
    pub devices: Vec<DiscoveredDevice>,
    /// Refusals and evictions of discovery.
    pub stats: DiscoveryStats,
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
    /// Refusals and evictions.
    #[serde(default)]
    pub stats: RadioStats,
    /// State snapshots kept and refused as a provider (issue #15).
    #[serde(default)]
    pub state: agora_contracts::state::StateStats,
    /// Contracts with a state snapshot kept here: `(contract, seq, coverage, entries)`.
    #[serde(default)]
    pub states: Vec<KeptState>,
}

/// What [`RadioHandle::switch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchOutcome {
    /// Keys of the old instance's state now in the new one's store (`None`: not moved).
    pub keys: Option<usize>,
    /// Why the state did not move (the old instance stayed busy, or its state is over the
    /// bounds or could not be copied); the devices moved anyway.
    pub not_moved: Option<String>,
    /// Each moved device with the last sequence number the old instance processed: the new
    /// one processes from the next.
    pub last_processed: Vec<(u32, Option<u32>)>,
}

/// A state snapshot kept here as a provider, as `GET /v1/radio` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptState {
    /// The contract.
    pub contract: String,
    /// The snapshot's `seq`.
    pub seq: u64,
    /// `(device, highest sequence number)` it reflects.
    pub coverage: Vec<(u32, u32)>,
    /// Keys in it.
    pub entries: usize,
    /// Bytes of keys and values.
    pub bytes: usize,
}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    KeyHolders(BTreeMap<u32, BTreeSet<NodeId>>),
    Devices(Reply<(Vec<DiscoveredDevice>, DiscoveryStats)>),
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
    Switch {
        from: String,
        to: String,
        devices: Vec<u32>,
        reply: Reply<SwitchOutcome>,
    },
    Listen(Vec<u32>, bool),
    Managers(Vec<u32>, Vec<NodeId>),
    FetchKeys(Vec<u32>, NodeId),
    Owners(Vec<u32>),
    Claim {
        contract: ContractId,
        customer: NodeId,
        devices: Vec<u32>,
        reply: Reply<Result<(), owners::ClaimRefused>>,
    },
    ReleaseClaim(ContractId),
    Claimed(Reply<Vec<ContractId>>),
    Status(Reply<RadioStatus>),
    StartJob {
        request: firmware::JobRequest,
        image: Vec<u8>,
        reply: Reply<Result<firmware::JobStarted, firmware::FirmwareError>>,
    },
    Jobs(Reply<firmware::JobList>),
    Rotate(u32, Reply<Result<RotationStarted, RotateRefused>>),
    Job(firmware::JobId, Reply<Option<firmware::JobView>>),
    StateTo(String, Vec<(ContractId, NodeId)>),
    AcceptState(ContractId, NodeId, Vec<u32>),
    ForgetState(ContractId),
    StateBack(String, ContractId, NodeId),
    TakeState(ContractId, Reply<Option<StateSnapshot>>),
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

    /// A start-first upgrade on this node: waits (bounded) until service `from` is quiescent,
    /// moves its key-value state into service `to` (which runs, with no devices), routes
    /// `devices` from `from` to `to` and checkpoints what `from` processed, all in one step of
    /// the radio task, so no reading is lost or fed to both (docs/FLEETS.md "Upgrade").
    pub async fn switch(&self, from: String, to: String, devices: Vec<u32>) -> SwitchOutcome {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Switch {
            from,
            to,
            devices,
            reply,
        };
        let stopped = || SwitchOutcome {
            not_moved: Some("the radio task stopped".into()),
            ..SwitchOutcome::default()
        };
        if self.tx.send(cmd).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
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

    /// Owner: the providers that may hold the working keys of this node's devices now, per
    /// device (`roles::key_holders` on the ledger, the devices from each contract image's
    /// manifest; the whole map each time). Keys are handed only to them; a device whose key
    /// went to a provider missing here is rotated (its root moves it to a new epoch, whose key
    /// goes to the remaining holders first).
    pub async fn key_holders(&self, holders: BTreeMap<u32, BTreeSet<NodeId>>) {
        let _ = self.tx.send(Command::KeyHolders(holders)).await;
    }

    /// Records that `edges` manage or managed `devices` (the customer that owns them, the
    /// provider of one of their contracts, as the ledger says): from then on a peer checkpoint
    /// for those devices counts only when one of them signed it. Additive; at most
    /// [`rules::MAX_MANAGERS_PER_DEVICE`] per device (the oldest are forgotten first).
    pub async fn managed_by(&self, devices: Vec<u32>, edges: Vec<NodeId>) {
        let _ = self.tx.send(Command::Managers(devices, edges)).await;
    }

    /// Asks `owner` for the frame keys of `devices` this edge has none for (a provider, when
    /// a contract for them is staged: the owner is alive then, and may not be at the takeover),
    /// retrying in the background until it answers; the owner gives them only to an edge it
    /// knows as a provider of the devices ([`Self::managed_by`] on its side).
    pub async fn fetch_keys(&self, devices: Vec<u32>, owner: NodeId) {
        let _ = self.tx.send(Command::FetchKeys(devices, owner)).await;
    }

    /// Records `devices` as this node's own (its own service's): its firmware jobs for them
    /// are handed to their providers, and no customer's contract can claim them here.
    pub async fn own_devices(&self, devices: Vec<u32>) {
        let _ = self.tx.send(Command::Owners(devices)).await;
    }

    /// Provider: `customer`'s `contract`, staged here, names `devices`, which become its
    /// here (a provider keeps firmware hand-offs and key updates for a device only from its
    /// owner) — unless one of them is this node's or named by another customer's live
    /// contract here, or the customer would hold more than `radio.max_devices_per_customer`
    /// devices here: then none is, and the contract must not be served (it would act on
    /// another party's devices, with that party's keys, or crowd the others out of the owner
    /// table). The claim is saved ([`OWNERS_FILE`]) and outlives a restart. Call
    /// [`Self::release_devices`] when the contract ends.
    pub async fn claim_devices(
        &self,
        contract: ContractId,
        customer: NodeId,
        devices: Vec<u32>,
    ) -> Result<(), ClaimRefused> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Claim {
            contract,
            customer,
            devices,
            reply,
        };
        if self.tx.send(cmd).await.is_err() {
            return Ok(()); // the radio stopped: nothing to act on the devices with
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Provider: `contract` ended here; its devices are nobody's here any more (unless another
    /// contract of the same customer names them), and their received frame keys are dropped.
    pub async fn release_devices(&self, contract: ContractId) {
        let _ = self.tx.send(Command::ReleaseClaim(contract)).await;
    }

    /// Provider: the contracts whose claims hold devices here (reloaded at start, so some may
    /// have ended while this node was down: release those the ledger shows ended).
    pub async fn claimed_contracts(&self) -> Vec<ContractId> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Claimed(reply)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
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

    /// The devices discovered here, with their metadata (`agora device list`).
    pub async fn devices(&self) -> DeviceList {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Devices(reply)).await.is_err() {
            return DeviceList::default();
        }
        let (devices, stats) = rx.await.unwrap_or_default();
        DeviceList { devices, stats }
    }

    /// Starts a firmware job flashing `image` (the bytes of `request.firmware`, see
    /// [`firmware::load_image`]) onto the selected devices this edge manages.
    pub async fn start_job(
        &self,
        request: firmware::JobRequest,
        image: Vec<u8>,
    ) -> Result<firmware::JobStarted, firmware::FirmwareError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::StartJob {
            request,
            image,
            reply,
        };
        if self.tx.send(cmd).await.is_err() {
            return Err(firmware::FirmwareError::NoRadio);
        }
        rx.await.unwrap_or(Err(firmware::FirmwareError::NoRadio))
    }

    /// Rotates the working key of `device`, which this node owns, now (`agora device
    /// rotate`): the providers the ledger names for it get the next key, then the device is
    /// rekeyed under its root. Progress shows in [`RadioStatus`] (`key_epoch`).
    pub async fn rotate(&self, device: u32) -> Result<RotationStarted, RotateRefused> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Rotate(device, reply)).await.is_err() {
            return Err(RotateRefused::NoRadio);
        }
        rx.await.unwrap_or(Err(RotateRefused::NoRadio))
    }

    /// The firmware jobs kept here (`agora device job status`).
    pub async fn jobs(&self) -> firmware::JobList {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Jobs(reply)).await.is_err() {
            return firmware::JobList::default();
        }
        rx.await.unwrap_or_default()
    }

    /// One firmware job, if it is kept here.
    pub async fn job(&self, id: firmware::JobId) -> Option<firmware::JobView> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Job(id, reply)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Customer: from now on, checkpoints of `service` wait for a copy of its key-value state,
    /// taken while it is quiescent, to reach each `(contract, provider)` (its standby
    /// providers) first; an empty list ends it (issue #15).
    pub async fn state_to(&self, service: String, targets: Vec<(ContractId, NodeId)>) {
        let _ = self.tx.send(Command::StateTo(service, targets)).await;
    }

    /// Provider: keeps state snapshots of `contract` from `customer` covering `devices` (as
    /// this node's ledger says), the newest one only ([`agora_contracts::state::StateStore`]).
    /// Customer, for the way back ([`Self::state_back`]): the same with the provider of its
    /// standby contract in effect as the one allowed to send.
    pub async fn accept_state(&self, contract: ContractId, customer: NodeId, devices: Vec<u32>) {
        let _ = self
            .tx
            .send(Command::AcceptState(contract, customer, devices))
            .await;
    }

    /// Provider of the standby contract `contract` of `customer`, once it took the devices
    /// over and runs them with `service`: when it releases them (the customer is back), the
    /// service's state goes back to the customer first ("the way back"). The customer takes
    /// it only if it called [`Self::accept_state`] with this provider.
    pub async fn state_back(&self, service: String, contract: ContractId, customer: NodeId) {
        let _ = self
            .tx
            .send(Command::StateBack(service, contract, customer))
            .await;
    }

    /// Provider: the contract ended; its snapshot goes.
    pub async fn forget_state(&self, contract: ContractId) {
        let _ = self.tx.send(Command::ForgetState(contract)).await;
    }

    /// Provider: the newest state snapshot of `contract`, taken out (a takeover restores it
    /// once).
    pub async fn take_state(&self, contract: ContractId) -> Option<StateSnapshot> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::TakeState(contract, reply))
            .await
            .ok()?;
        rx.await.ok().flatten()
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
                && c.verified
                && c.checkpoint.at >= since
                && c.checkpoint.released.iter().any(|d| devices.contains(d))
        })
    }
}
