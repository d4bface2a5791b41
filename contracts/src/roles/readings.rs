//! The handover of readings: per device, which uplinks this edge heard, which are covered by a
//! checkpoint, which it feeds to a service and which it replays to a new manager after a gap —
//! so that across a handover every reading is processed once, by one edge at a time.
//!
//! Every edge in range hears every uplink (like LoRaWAN gateways). An edge feeds a device's
//! readings to a service only while it holds the device's authority (see [`DeviceAuthority`],
//! computed from the ledger by [`super::authority`]); otherwise it buffers them, bounded, so it
//! can replay what no checkpoint covers yet to whoever takes the device over.
//!
//! Rules, each with a unit test in `readings/tests.rs`:
//! - Feed only with authority: assigned here, this node is the ledger's manager, its lease has
//!   not run out, and the previous manager released the device or its authority has certainly
//!   ended (`Previous::until`). So two edges never feed one device at once. When the ledger
//!   moves a device away, this edge releases it at once (a checkpoint naming it).
//! - Live uplinks must advance the device's frame counter; others are dropped and counted.
//! - A frame at or below the device's watermark (`done`: the highest counter processed by an
//!   edge whose word counts) is never fed or buffered again.
//! - A checkpoint moves the watermark only if its author holds the device's authority (the
//!   manager, or the previous manager until it released or its time ran out) and only as far as
//!   [`ReadingsConfig::max_counter_gap`] past the highest counter this edge heard: nobody can
//!   silence a device with `last = u32::MAX`.
//! - Device state is bounded: devices this edge only hears (no authority entry, not assigned)
//!   get a slot while fewer than [`ReadingsConfig::max_heard_devices`] exist; buffers hold at
//!   most [`ReadingsConfig::buffer_per_device`] frames (oldest evicted); each device keeps
//!   checkpoint statements of at most [`ReadingsConfig::max_claim_authors`] authors. Every drop
//!   is counted in [`Counters`].
//! - A takeover asks peers for what they heard and for the signed checkpoints they hold (a
//!   restarted or cut-off edge's own watermark may be stale), and feeds only once that is
//!   merged or the replay timeout passed.
//!
//! Frame authentication (a MIC per device) happens in the driver: [`Input::Heard`] and replayed
//! frames carry counters the driver has checked belong to the device. Checkpoint statements
//! carry the author the driver verified from the signed envelope.

mod device;
mod replay;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::debug;

use device::{Device, Statement};

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

/// A takeover waiting for peers' replays.
#[derive(Clone, Debug)]
struct Fill {
    service: String,
    devices: Vec<DeviceId>,
    until: Timestamp,
}

/// The readings machine of one edge.
#[derive(Clone, Debug)]
pub struct Readings {
    me: NodeId,
    cfg: ReadingsConfig,
    devices: BTreeMap<DeviceId, Device>,
    authority: BTreeMap<DeviceId, DeviceAuthority>,
    /// Frames fed to each service since its last checkpoint.
    pending: BTreeMap<String, Vec<(DeviceId, Counter, Vec<u8>)>>,
    fills: BTreeMap<u64, Fill>,
    next_request: u64,
    next_checkpoint: Option<Timestamp>,
    counters: Counters,
    last_wake: Option<Timestamp>,
}

impl Readings {
    /// A fresh machine for node `me`.
    pub fn new(me: NodeId, cfg: ReadingsConfig) -> Self {
        Self {
            me,
            cfg,
            devices: BTreeMap::new(),
            authority: BTreeMap::new(),
            pending: BTreeMap::new(),
            fills: BTreeMap::new(),
            next_request: 1,
            next_checkpoint: None,
            counters: Counters::default(),
            last_wake: None,
        }
    }

    /// Applies one input at `now`.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Heard(frame) => self.on_heard(now, frame, &mut out),
            Input::Authority(map) => self.on_authority(now, map, &mut out),
            Input::Assign {
                devices,
                service,
                reclaim,
            } => self.on_assign(now, devices, service, reclaim, &mut out),
            Input::Release { devices } => self.on_release(devices, &mut out),
            Input::Listen { devices, on } => {
                for d in devices {
                    if self.ensure_slot(d, now)
                        && let Some(dev) = self.devices.get_mut(&d)
                    {
                        dev.listening = on;
                    }
                }
            }
            Input::Checkpoint(claim) => self.on_checkpoint(claim),
            Input::FeedRefused {
                service,
                device,
                counter,
            } => self.on_feed_refused(&service, device, counter),
            Input::ReplayRequest {
                from,
                request,
                devices,
            } => out.push(self.answer_replay(from, request, &devices)),
            Input::ReplayAnswer {
                request,
                from: _,
                devices,
                checkpoints,
            } => self.on_replay_answer(request, devices, checkpoints),
            Input::ReplayFinished { request } => self.finish_fill(now, request, &mut out),
            Input::Tick => {}
        }
        self.on_time(now, &mut out);
        if let Some(at) = self.next_wake(now)
            && self.last_wake != Some(at)
        {
            self.last_wake = Some(at);
            out.push(Effect::WakeAt(at));
        }
        out
    }

    /// What this edge knows per device.
    pub fn devices(&self, now: Timestamp) -> Vec<DeviceView> {
        self.devices
            .iter()
            .map(|(id, d)| d.view(*id, self.may_feed(*id, now)))
            .collect()
    }

    /// Drop counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The authority entry of `device`, if the ledger gives one.
    pub fn authority(&self, device: DeviceId) -> Option<&DeviceAuthority> {
        self.authority.get(&device)
    }

    /// Whether this edge may feed `device` at `now` (see the module rules).
    pub fn may_feed(&self, device: DeviceId, now: Timestamp) -> bool {
        let Some(d) = self.devices.get(&device) else {
            return false;
        };
        if d.service.is_none() || d.filling.is_some() {
            return false;
        }
        self.holds_authority(device, now)
    }

    /// Whether the ledger's authority over `device` is this node's, uncontested at `now`.
    fn holds_authority(&self, device: DeviceId, now: Timestamp) -> bool {
        let Some(a) = self.authority.get(&device) else {
            return false;
        };
        if a.manager != self.me || a.lease_until.is_some_and(|u| now >= u) {
            return false;
        }
        let dev = self.devices.get(&device);
        a.previous.iter().all(|p| {
            p.node == self.me
                || now >= p.until
                || dev.is_some_and(|d| d.released_since(&p.node, p.since))
        })
    }

    /// Whether a checkpoint `author` took at `at` counts for `device`: the manager's always, a
    /// previous manager's if taken while it may still have held the device (relayed later, it
    /// is how a restarted successor learns where to resume).
    fn trusted(&self, author: &NodeId, device: DeviceId, at: Timestamp) -> bool {
        let Some(a) = self.authority.get(&device) else {
            return false;
        };
        a.manager == *author || a.previous.iter().any(|p| p.node == *author && at < p.until)
    }

    /// Whether `device` is one this edge has a reason to track (authority entry or assigned).
    fn known(&self, device: DeviceId) -> bool {
        self.authority.contains_key(&device)
            || self
                .devices
                .get(&device)
                .is_some_and(|d| d.service.is_some() || d.listening)
    }

    /// Makes sure `device` has state, creating it if it is known or there is room for one
    /// more heard-only device; false when there is no room.
    fn ensure_slot(&mut self, device: DeviceId, now: Timestamp) -> bool {
        if !self.devices.contains_key(&device) {
            let heard_only = self.devices.keys().filter(|d| !self.known(**d)).count();
            if !self.authority.contains_key(&device) && heard_only >= self.cfg.max_heard_devices {
                return false;
            }
            self.devices.insert(device, Device::new(now));
        }
        true
    }

    fn on_heard(&mut self, now: Timestamp, frame: Frame, out: &mut Vec<Effect>) {
        let (gap, cap) = (self.cfg.max_counter_gap, self.cfg.buffer_per_device);
        let slot = self.ensure_slot(frame.device, now);
        let (true, Some(d)) = (slot, self.devices.get_mut(&frame.device)) else {
            self.counters.unknown_dropped += 1;
            debug!(
                device = frame.device,
                "uplink of an untracked device dropped (device table full)"
            );
            return;
        };
        d.received += 1;
        d.last_activity = now;
        if d.heard_max.is_some_and(|h| frame.counter <= h) {
            // Live uplinks arrive in counter order: an old counter is a duplicate or a replay.
            d.duplicates += 1;
            self.counters.duplicates += 1;
            return;
        }
        d.heard_max = Some(frame.counter);
        if d.resolve_parked(gap) {
            self.counters.implausible_checkpoints += 1;
        }
        if d.done.is_some_and(|x| frame.counter <= x) {
            d.duplicates += 1;
            self.counters.duplicates += 1;
            return;
        }
        let (device, counter) = (frame.device, frame.counter);
        if d.buffer_insert(frame.counter, frame.bytes, cap) {
            self.counters.evicted_frames += 1;
        }
        self.drain(device, now, Some(counter), out);
    }

    /// Feeds the buffered frames of `device` above its watermark, in order, if it may; `live`
    /// is the counter of the uplink just heard (the others waited in the buffer). Returns how
    /// many buffered frames were fed.
    fn drain(
        &mut self,
        device: DeviceId,
        now: Timestamp,
        live: Option<Counter>,
        out: &mut Vec<Effect>,
    ) -> u64 {
        if !self.may_feed(device, now) {
            return 0;
        }
        let Some(d) = self.devices.get_mut(&device) else {
            return 0;
        };
        let Some(service) = d.service.clone() else {
            return 0;
        };
        d.feeding = true;
        let frames = d.take_buffer();
        let mut replayed = 0;
        let pending = self.pending.entry(service.clone()).or_default();
        for (counter, bytes) in frames {
            let from_buffer = live != Some(counter);
            replayed += u64::from(from_buffer);
            d.mark_fed(counter, now, from_buffer);
            pending.push((device, counter, bytes.clone()));
            out.push(Effect::Feed {
                service: service.clone(),
                frame: Frame {
                    device,
                    counter,
                    bytes,
                },
                replayed: from_buffer,
            });
        }
        let full = pending.len() >= self.cfg.max_pending;
        if self.next_checkpoint.is_none() && !pending.is_empty() {
            self.next_checkpoint = Some(now.saturating_add(self.cfg.checkpoint_ms));
        }
        if full {
            self.checkpoint(&service, Vec::new(), out);
        }
        replayed
    }

    fn on_authority(
        &mut self,
        now: Timestamp,
        map: BTreeMap<DeviceId, DeviceAuthority>,
        out: &mut Vec<Effect>,
    ) {
        // Devices the ledger moved from this edge to another: release them at once (the new
        // manager then need not wait for this edge's lease to run out).
        let mut moved: BTreeMap<String, Vec<DeviceId>> = BTreeMap::new();
        for (d, old) in &self.authority {
            let taken = old.manager == self.me && map.get(d).is_none_or(|a| a.manager != self.me);
            if let Some(service) = self.devices.get(d).and_then(|x| x.service.clone())
                && taken
            {
                moved.entry(service).or_default().push(*d);
            }
        }
        self.authority = map;
        let ids: Vec<DeviceId> = self.authority.keys().copied().collect();
        for d in ids {
            self.devices.entry(d).or_insert_with(|| Device::new(now));
        }
        for (service, devices) in moved {
            self.checkpoint(&service, devices, out);
        }
        // `on_time` (after every input) drains what may now be fed and checkpoints what may not.
    }

    fn on_assign(
        &mut self,
        now: Timestamp,
        devices: Vec<DeviceId>,
        service: String,
        _reclaim: bool,
        out: &mut Vec<Effect>,
    ) {
        let mut gaps = Vec::new();
        for d in &devices {
            if !self.devices.contains_key(d) {
                self.devices.insert(*d, Device::new(now));
            }
            let Some(dev) = self.devices.get_mut(d) else {
                continue;
            };
            dev.service = Some(service.clone());
            dev.listening = false;
            dev.first_processed_at = None;
            // Even when the buffer continues from the watermark, the watermark itself may be
            // stale (this edge was cut off while the manager kept checkpointing): every
            // takeover asks peers for what they heard and the checkpoints they hold.
            gaps.push(*d);
        }
        if gaps.is_empty() {
            let mut replayed = 0;
            for d in &devices {
                replayed += self.drain(*d, now, None, out);
            }
            out.push(Effect::Assigned {
                service,
                devices,
                replayed,
            });
            return;
        }
        let request = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        for d in &devices {
            if let Some(dev) = self.devices.get_mut(d) {
                dev.filling = Some(request);
            }
        }
        let mut prefer: Vec<NodeId> = gaps
            .iter()
            .filter_map(|d| self.authority.get(d))
            .flat_map(|a| std::iter::once(a.manager).chain(a.previous.iter().map(|p| p.node)))
            .filter(|n| *n != self.me)
            .collect();
        prefer.sort();
        prefer.dedup();
        self.fills.insert(
            request,
            Fill {
                service,
                devices,
                until: now.saturating_add(self.cfg.replay_timeout_ms),
            },
        );
        out.push(Effect::AskReplay {
            request,
            devices: gaps,
            prefer,
        });
    }

    fn on_release(&mut self, devices: Vec<DeviceId>, out: &mut Vec<Effect>) {
        let mut services: Vec<String> = devices
            .iter()
            .filter_map(|d| self.devices.get(d)?.service.clone())
            .collect();
        services.sort();
        services.dedup();
        for d in &devices {
            if let Some(dev) = self.devices.get_mut(d) {
                dev.service = None;
                dev.filling = None;
            }
        }
        for s in services {
            self.checkpoint(&s, devices.clone(), out);
        }
    }

    fn on_feed_refused(&mut self, service: &str, device: DeviceId, counter: Counter) {
        self.counters.feed_refused += 1;
        if let Some(p) = self.pending.get_mut(service) {
            p.retain(|(d, c, _)| !(*d == device && *c == counter));
        }
        if let Some(d) = self.devices.get_mut(&device) {
            d.processed = d.processed.saturating_sub(1);
        }
    }

    fn on_checkpoint(&mut self, claim: CheckpointClaim) {
        let (gap, max_authors) = (self.cfg.max_counter_gap, self.cfg.max_claim_authors);
        let mine = claim.author == self.me;
        let mut untrusted = false;
        let mut devices: Vec<DeviceId> = claim.ranges.iter().map(|r| r.device).collect();
        devices.extend(claim.released.iter().copied());
        devices.sort();
        devices.dedup();
        for device in devices {
            // This node's own statement counts too: relayed back to it after a restart, it is
            // how it learns how far it had got.
            let trusted = mine || self.trusted(&claim.author, device, claim.at);
            let last = claim
                .ranges
                .iter()
                .filter(|r| r.device == device)
                .map(|r| r.last)
                .max();
            let released = claim.released.contains(&device);
            // Statements about devices this edge does not track are not stored: gossip must
            // not grow the table.
            let Some(d) = self.devices.get_mut(&device) else {
                continue;
            };
            let authorised = |n: &NodeId| {
                *n == self.me
                    || self
                        .authority
                        .get(&device)
                        .is_some_and(|a| a.manager == *n || a.previous.iter().any(|p| p.node == *n))
            };
            let statement = Statement {
                last,
                released,
                at: claim.at,
                envelope: claim.envelope.clone(),
            };
            if d.store_claim(claim.author, statement, max_authors, authorised) {
                self.counters.evicted_claims += 1;
            }
            if !trusted {
                untrusted = true;
                continue;
            }
            if let Some(last) = last {
                if d.heard_max.is_some_and(|h| last > h.saturating_add(gap)) {
                    self.counters.implausible_checkpoints += 1;
                    debug!(
                        device,
                        last,
                        author = %claim.author.short(),
                        "checkpoint claims counters far beyond what this edge heard; ignored"
                    );
                } else if d.heard_max.is_none() {
                    d.park(last);
                } else {
                    d.cover(last);
                }
            }
        }
        if untrusted {
            self.counters.unauthorized_checkpoints += 1;
        }
    }

    /// Proves, signs and gossips what `service` was fed since its last checkpoint.
    fn checkpoint(&mut self, service: &str, released: Vec<DeviceId>, out: &mut Vec<Effect>) {
        let fed = self.pending.remove(service).unwrap_or_default();
        if fed.is_empty() && released.is_empty() {
            return;
        }
        let mut ranges: BTreeMap<DeviceId, CoveredRange> = BTreeMap::new();
        for (device, counter, _) in &fed {
            let r = ranges.entry(*device).or_insert(CoveredRange {
                device: *device,
                first: *counter,
                last: *counter,
                count: 0,
            });
            r.first = r.first.min(*counter);
            r.last = r.last.max(*counter);
            r.count = r.count.saturating_add(1);
        }
        out.push(Effect::Checkpoint {
            service: service.to_string(),
            ranges: ranges.into_values().collect(),
            frames: fed.into_iter().map(|(_, _, f)| f).collect(),
            released,
        });
    }

    /// Time-driven rules: fill deadlines, leases running out or previous managers' time
    /// ending, the checkpoint interval.
    fn on_time(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let due: Vec<u64> = self
            .fills
            .iter()
            .filter(|(_, f)| now >= f.until)
            .map(|(r, _)| *r)
            .collect();
        for r in due {
            self.finish_fill(now, r, out);
        }
        let assigned: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.service.is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut lapsed = Vec::new();
        for d in assigned {
            if self.may_feed(d, now) {
                self.drain(d, now, None, out);
            } else if let Some(x) = self.devices.get_mut(&d)
                && std::mem::take(&mut x.feeding)
                && let Some(s) = x.service.clone()
            {
                lapsed.push(s);
            }
        }
        lapsed.sort();
        lapsed.dedup();
        for s in lapsed {
            // Authority ended without a release: publish what was fed so far at once, so the
            // next manager resumes after it.
            self.checkpoint(&s, Vec::new(), out);
        }
        if self.next_checkpoint.is_some_and(|t| now >= t) {
            self.next_checkpoint = None;
            let services: Vec<String> = self.pending.keys().cloned().collect();
            for s in services {
                self.checkpoint(&s, Vec::new(), out);
            }
        }
    }

    /// The earliest time something is due: a checkpoint, a fill deadline, a lease or a
    /// previous manager's time running out.
    fn next_wake(&self, now: Timestamp) -> Option<Timestamp> {
        let fills = self.fills.values().map(|f| f.until);
        let leases = self
            .devices
            .iter()
            .filter(|(_, d)| d.service.is_some())
            .filter_map(|(id, _)| self.authority.get(id))
            .flat_map(|a| {
                a.lease_until
                    .into_iter()
                    .chain(a.previous.iter().map(|p| p.until))
            });
        self.next_checkpoint
            .into_iter()
            .chain(fills)
            .chain(leases)
            .filter(|t| *t > now)
            .min()
    }
}
