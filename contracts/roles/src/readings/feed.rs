//! The feeding rules: uplinks heard, authority, assignment and release, checkpoints (own and
//! peers'), and what the passing of time changes.

use std::collections::BTreeMap;

use agora_market::{NodeId, Timestamp};
use tracing::debug;

use super::device::{Device, Statement};
use super::{
    CheckpointClaim, Counter, CoveredRange, DeviceAuthority, DeviceId, Effect, Fill, Frame,
    Readings,
};

impl Readings {
    pub(super) fn on_heard(&mut self, now: Timestamp, frame: Frame, out: &mut Vec<Effect>) {
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
    pub(super) fn drain(
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

    pub(super) fn on_authority(
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

    pub(super) fn on_assign(
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

    pub(super) fn on_release(&mut self, devices: Vec<DeviceId>, out: &mut Vec<Effect>) {
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

    pub(super) fn on_feed_refused(&mut self, service: &str, device: DeviceId, counter: Counter) {
        self.counters.feed_refused += 1;
        if let Some(p) = self.pending.get_mut(service) {
            p.retain(|(d, c, _)| !(*d == device && *c == counter));
        }
        if let Some(d) = self.devices.get_mut(&device) {
            d.processed = d.processed.saturating_sub(1);
        }
    }

    pub(super) fn on_checkpoint(&mut self, claim: CheckpointClaim) {
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
    pub(super) fn checkpoint(
        &mut self,
        service: &str,
        released: Vec<DeviceId>,
        out: &mut Vec<Effect>,
    ) {
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
    pub(super) fn on_time(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
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
}
