//! Device discovery (issue #16), like an Akri discovery handler: every device this edge hears
//! (an uplink or an unasked announcement) is asked for its metadata over the endpoint protocol
//! (`agora_wire::radio::endpoint`), and kept in a bounded table with its metadata, the address
//! it talks from and when it was last heard (`agora device list`).
//!
//! Hostile input: anyone on the radio's network can send an announcement for any device id.
//! An announcement is taken only from the address the device was first heard from (a device's
//! socket; a new device is admitted from wherever it speaks first), the table is bounded
//! (`radio.max_devices`; the stalest entry is evicted, counted and logged), metadata requests
//! are rate-limited per device, and replies that are not announcements (chunk acks, hashes:
//! for a firmware job) are counted and dropped here.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use agora_devices::agent::{Reply, Request};
use agora_devices::{DeviceId, DeviceMeta, Mode};
use agora_market::Timestamp;
use agora_wire::radio::endpoint::{decode_reply, encode_request};
use serde::{Deserialize, Serialize};
use tracing::debug;

/// A device this edge discovered (`GET /v1/devices`, `agora device list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredDevice {
    /// Device id.
    pub id: DeviceId,
    /// Its metadata, once it answered.
    pub meta: Option<DeviceMeta>,
    /// The address it talks from.
    pub addr: String,
    /// When it was last heard (uplink or announcement), ms.
    pub last_heard: Timestamp,
    /// Uplinks heard.
    pub uplinks: u64,
    /// The edge that manages it, as this node's orchestrator knows it (node id).
    pub manager: Option<String>,
}

/// What discovery refused or dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryStats {
    /// Metadata requests sent.
    pub requests_sent: u64,
    /// Announcements taken.
    pub announcements: u64,
    /// Replies that did not decode.
    pub replies_malformed: u64,
    /// Announcements from another address than the device's.
    pub replies_wrong_source: u64,
    /// Chunk acks and hashes no firmware job on this edge took.
    pub replies_unsolicited: u64,
    /// Devices evicted from a full table.
    pub evicted: u64,
    /// New devices not admitted: the table was full of pinned ones (keyed devices whose
    /// uplinks verified here, devices of firmware jobs).
    #[serde(default)]
    pub refused_full: u64,
}

struct Entry {
    addr: SocketAddr,
    meta: Option<DeviceMeta>,
    last_heard: Timestamp,
    last_asked: Option<Timestamp>,
    uplinks: u64,
    /// Never evicted for an unpinned newcomer: an uplink of it verified under its key here,
    /// or a firmware job of this edge names it (THREATS R4).
    pinned: bool,
}

/// The discovery table.
pub(crate) struct Discovery {
    devices: BTreeMap<DeviceId, Entry>,
    max: usize,
    /// Metadata is asked again after this long (and never more often), ms.
    refresh_ms: u64,
    pub(crate) stats: DiscoveryStats,
}

impl Discovery {
    pub(crate) fn new(max: usize, refresh_ms: u64) -> Self {
        Self {
            devices: BTreeMap::new(),
            max: max.max(1),
            refresh_ms,
            stats: DiscoveryStats::default(),
        }
    }

    /// Makes room for a new device (`pinned`: see [`Entry::pinned`]): evicts the stalest
    /// unpinned one when full; a pinned newcomer may evict the stalest pinned one when every
    /// entry is. `false` (counted) when there is no room for it: a flood of made-up device ids
    /// (announcements or unsigned uplinks, which anyone in range can send) evicted a keyed
    /// device in its bootloader, and a forged announcement then bound its address to the
    /// attacker's, which took the firmware job's chunks and faked its success (THREATS R4).
    fn admit(&mut self, device: DeviceId, pinned: bool) -> bool {
        if self.devices.contains_key(&device) || self.devices.len() < self.max {
            return true;
        }
        let stalest = |only_unpinned: bool| {
            self.devices
                .iter()
                .filter(|(_, e)| !only_unpinned || !e.pinned)
                .min_by_key(|(_, e)| e.last_heard)
                .map(|(id, _)| *id)
        };
        let Some(victim) = stalest(true).or_else(|| pinned.then(|| stalest(false)).flatten())
        else {
            self.stats.refused_full += 1;
            debug!(
                device,
                "discovery table full of pinned devices: new device not admitted"
            );
            return false;
        };
        self.devices.remove(&victim);
        self.stats.evicted += 1;
        debug!(
            victim,
            device, "discovery table full: stalest device evicted"
        );
        true
    }

    /// An uplink of `device` from `from`: returns the metadata request to send, if one is due.
    /// `keyed`: the uplink verified under the device's key here.
    pub(crate) fn heard(
        &mut self,
        device: DeviceId,
        from: SocketAddr,
        now: Timestamp,
        keyed: bool,
    ) -> Option<Vec<u8>> {
        if !self.admit(device, keyed) {
            return None;
        }
        let e = self.devices.entry(device).or_insert(Entry {
            addr: from,
            meta: None,
            last_heard: now,
            last_asked: None,
            uplinks: 0,
            pinned: false,
        });
        e.pinned |= keyed;
        if e.addr != from {
            // Uplinks carry a MIC when keyed (checked by the radio); the address follows them.
            e.addr = from;
            e.meta = None;
        }
        e.last_heard = now;
        e.uplinks += 1;
        let due = match (&e.meta, e.last_asked) {
            (_, None) => true,
            (_, Some(at)) => now >= at.saturating_add(self.refresh_ms),
        };
        if !due {
            return None;
        }
        e.last_asked = Some(now);
        self.stats.requests_sent += 1;
        encode_request(device, &Request::Metadata).ok()
    }

    /// A device of a job restored after a restart, at the address saved with the job, not
    /// heard since: returns the metadata request to send (at most one a second). A device left
    /// in its bootloader when the edge stopped sends nothing unasked; one heard since keeps the
    /// address it talks from.
    pub(crate) fn hint(
        &mut self,
        device: DeviceId,
        addr: SocketAddr,
        now: Timestamp,
    ) -> Option<Vec<u8>> {
        // An entry only an announcement made (no uplink heard, not pinned) may be anyone's:
        // the job's saved address wins over it, so a forged announcement that came first
        // cannot take the restored job's chunks (THREATS R4).
        if let Some(e) = self.devices.get_mut(&device)
            && !e.pinned
            && e.uplinks == 0
            && e.addr != addr
        {
            e.addr = addr;
            e.meta = None;
            e.last_asked = None;
        }
        if self.devices.get(&device).is_some_and(|e| e.meta.is_some()) {
            if let Some(e) = self.devices.get_mut(&device) {
                e.pinned = true;
            }
            return None;
        }
        if !self.admit(device, true) {
            return None;
        }
        let e = self.devices.entry(device).or_insert(Entry {
            addr,
            meta: None,
            last_heard: now,
            last_asked: None,
            uplinks: 0,
            pinned: true,
        });
        e.pinned = true;
        if e.last_asked
            .is_some_and(|at| now < at.saturating_add(1_000))
        {
            return None;
        }
        e.last_asked = Some(now);
        self.stats.requests_sent += 1;
        encode_request(device, &Request::Metadata).ok()
    }

    /// A datagram that is an endpoint reply, from `from`: an announcement updates the table;
    /// every reply taken (an announcement, or a chunk ack or hash from the device's own address)
    /// is returned for the firmware jobs.
    pub(crate) fn on_reply(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        now: Timestamp,
    ) -> Option<(DeviceId, Reply)> {
        let (device, reply) = match decode_reply(bytes) {
            Ok(x) => x,
            Err(e) => {
                self.stats.replies_malformed += 1;
                debug!(error = %e, %from, "device reply dropped");
                return None;
            }
        };
        let known = self.devices.get(&device).map(|e| e.addr);
        if known.is_some_and(|a| a != from) {
            self.stats.replies_wrong_source += 1;
            debug!(device, %from, "reply from another address than the device's dropped");
            return None;
        }
        let Reply::Meta(meta) = &reply else {
            if known.is_none() {
                self.stats.replies_unsolicited += 1;
                return None;
            }
            return Some((device, reply));
        };
        if !self.admit(device, false) {
            return None;
        }
        let e = self.devices.entry(device).or_insert(Entry {
            addr: from,
            meta: None,
            last_heard: now,
            last_asked: Some(now),
            uplinks: 0,
            pinned: false,
        });
        e.meta = Some(meta.clone());
        e.last_heard = now;
        self.stats.announcements += 1;
        Some((device, reply))
    }

    /// Where `device` talks from.
    pub(crate) fn addr_of(&self, device: DeviceId) -> Option<SocketAddr> {
        self.devices.get(&device).map(|e| e.addr)
    }

    /// The metadata `device` announced, once it answered.
    pub(crate) fn meta_of(&self, device: DeviceId) -> Option<DeviceMeta> {
        self.devices.get(&device).and_then(|e| e.meta.clone())
    }

    /// The metadata of every device that answered.
    pub(crate) fn metas(&self) -> Vec<DeviceMeta> {
        self.devices
            .values()
            .filter_map(|e| e.meta.clone())
            .collect()
    }

    /// The table, with each device's manager from `manager`.
    pub(crate) fn list(
        &self,
        manager: impl Fn(DeviceId) -> Option<String>,
    ) -> Vec<DiscoveredDevice> {
        self.devices
            .iter()
            .map(|(id, e)| DiscoveredDevice {
                id: *id,
                meta: e.meta.clone(),
                addr: e.addr.to_string(),
                last_heard: e.last_heard,
                uplinks: e.uplinks,
                manager: manager(*id),
            })
            .collect()
    }
}

/// `running`/`bootloader` for tables.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Running => "running",
        Mode::Bootloader => "bootloader",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_wire::radio::endpoint::{decode_request, encode_reply};

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn announce(id: DeviceId, version: &str) -> Vec<u8> {
        let m = DeviceMeta {
            id,
            kind: "thermo".into(),
            firmware_type: "agora-sensor".into(),
            version: version.into(),
            locked: false,
            mode: Mode::Running,
            boots: 1,
        };
        encode_reply(id, &Reply::Meta(m)).unwrap()
    }

    #[test]
    fn a_heard_device_is_asked_for_metadata_once_per_refresh() {
        let mut d = Discovery::new(8, 1_000);
        let req = d.heard(5, addr(1), 0, false).unwrap();
        assert_eq!(decode_request(&req), Ok((5, Request::Metadata)));
        assert!(d.heard(5, addr(1), 10, false).is_none(), "rate-limited");
        d.on_reply(&announce(5, "1.0"), addr(1), 20);
        assert!(d.heard(5, addr(1), 500, false).is_none());
        assert!(d.heard(5, addr(1), 1_000, false).is_some(), "refreshed");
        let list = d.list(|_| Some("ab".into()));
        assert_eq!(list[0].meta.as_ref().unwrap().version, "1.0");
        assert_eq!((list[0].uplinks, list[0].last_heard), (4, 1_000));
        assert_eq!(list[0].manager.as_deref(), Some("ab"));
    }

    #[test]
    fn announcements_from_another_address_and_garbage_are_dropped_and_counted() {
        let mut d = Discovery::new(8, 1_000);
        d.heard(5, addr(1), 0, false);
        d.on_reply(&announce(5, "6.6.6"), addr(2), 1);
        d.on_reply(&[0xAA, 1, 2], addr(2), 1);
        // A chunk ack from the device's address goes to the firmware jobs; one from another
        // address, or of a device never heard, is dropped.
        let ack = |id| encode_reply(id, &Reply::ChunkAck { index: 0 }).unwrap();
        assert_eq!(
            d.on_reply(&ack(5), addr(1), 1),
            Some((5, Reply::ChunkAck { index: 0 }))
        );
        assert_eq!(d.on_reply(&ack(5), addr(2), 1), None);
        assert_eq!(d.on_reply(&ack(9), addr(9), 1), None);
        assert_eq!(d.list(|_| None)[0].meta, None);
        let s = d.stats;
        assert_eq!(
            (
                s.replies_wrong_source,
                s.replies_malformed,
                s.replies_unsolicited
            ),
            (2, 1, 1)
        );
        // A device first heard through its announcement is admitted (a rebooted one).
        d.on_reply(&announce(6, "1.0"), addr(3), 2);
        assert!(d.list(|_| None)[1].meta.is_some());
    }

    /// THREATS R4: a flood of made-up ids (announcements, unsigned uplinks) never evicts a
    /// keyed device heard here nor one a firmware job names, so a forged announcement for it
    /// from another address stays refused; a table full of pinned devices admits no stranger.
    #[test]
    fn a_flood_of_new_ids_never_evicts_a_keyed_device_or_one_in_a_job() {
        let mut d = Discovery::new(4, 1_000);
        d.heard(7, addr(7), 0, true);
        d.hint(8, addr(8), 0);
        for id in 100..5_000 {
            d.on_reply(&announce(id, "6.6.6"), addr(9), 1 + u64::from(id));
            d.heard(id + 10_000, addr(9), 1 + u64::from(id), false);
        }
        assert_eq!(d.list(|_| None).len(), 4, "bounded");
        assert_eq!(d.addr_of(7), Some(addr(7)));
        assert_eq!(d.addr_of(8), Some(addr(8)));
        assert!(d.on_reply(&announce(7, "6.6.6"), addr(9), 9_000).is_none());
        assert_eq!(d.addr_of(7), Some(addr(7)));
        assert!(d.stats.evicted > 0);
        // Full of pinned devices: an unpinned newcomer is refused, a keyed one evicts the
        // stalest pinned.
        let mut d = Discovery::new(2, 1_000);
        d.heard(1, addr(1), 0, true);
        d.heard(2, addr(2), 5, true);
        assert!(d.on_reply(&announce(3, "1.0"), addr(3), 10).is_none());
        assert!(d.heard(4, addr(4), 10, false).is_none());
        assert_eq!(d.stats.refused_full, 2);
        d.heard(5, addr(5), 20, true);
        let ids: Vec<_> = d.list(|_| None).iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![2, 5]);
        // A forged announcement that comes before a restored job's hint loses to the job's
        // saved address.
        let mut d = Discovery::new(4, 1_000);
        d.on_reply(&announce(9, "6.6.6"), addr(66), 0);
        assert_eq!(d.addr_of(9), Some(addr(66)));
        assert!(
            d.hint(9, addr(9), 10).is_some(),
            "asked at its saved address"
        );
        assert_eq!(d.addr_of(9), Some(addr(9)));
        assert!(d.on_reply(&announce(9, "6.6.6"), addr(66), 20).is_none());
        assert_eq!(d.addr_of(9), Some(addr(9)));
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_stalest() {
        let mut d = Discovery::new(2, 1_000);
        d.heard(1, addr(1), 0, false);
        d.heard(2, addr(2), 5, false);
        d.heard(1, addr(1), 10, false);
        d.heard(3, addr(3), 20, false);
        let ids: Vec<_> = d.list(|_| None).iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(d.stats.evicted, 1);
    }
}
