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
mod feed;
mod io;
mod replay;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use agora_market::{NodeId, Timestamp};

use device::Device;
pub use io::{
    CheckpointClaim, Counter, Counters, CoveredRange, DeviceAuthority, DeviceId, DeviceView,
    Effect, Frame, Input, MAX_COUNTER_GAP, Previous, ReadingsConfig, ReplayedDevice,
};
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
