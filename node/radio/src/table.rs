//! The radio's device table: bounded, since any radio in range (or a peer's replay answer)
//! can name any device id. A new device when the table is full evicts the stalest device this
//! edge does not use; if every device is in use, the new one is refused.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use agora_market::NodeId;

use super::DeviceStatus;

/// One device as the radio task keeps it.
#[derive(Default)]
pub(crate) struct Device {
    pub(crate) status: DeviceStatus,
    /// Uplinks heard and not (yet) covered by any checkpoint, ascending by arrival.
    pub(crate) buffer: VecDeque<(u32, Vec<u8>)>,
    /// Highest sequence number covered by any checkpoint (this edge's or a peer's).
    pub(crate) covered: Option<u32>,
    /// Edges known to manage or to have managed the device, oldest first (empty: unknown).
    pub(crate) managers: Vec<NodeId>,
    /// When the device was last heard or named (the table's clock): staleness.
    touched: u64,
}

impl Device {
    pub(crate) fn managers(&self) -> BTreeSet<NodeId> {
        self.managers.iter().copied().collect()
    }

    /// Whether the table may evict it: not managed here, not buffered for a contract, no
    /// known managers (all of which only this node's orchestrator sets).
    pub(crate) fn evictable(&self) -> bool {
        self.status.service.is_none() && !self.status.buffering && self.managers.is_empty()
    }

    /// Records that sequence number `seq` was heard.
    pub(crate) fn hear(&mut self, seq: u32) {
        self.status.heard = Some(self.status.heard.map_or(seq, |h| h.max(seq)));
    }
}

/// What [`DeviceTable::admit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Already in the table.
    Known,
    /// There is room.
    Room,
    /// This device was evicted to make room.
    Evicted(u32),
    /// Full of devices in use: refused.
    Full,
}

/// Devices by id, with a staleness index.
#[derive(Default)]
pub(crate) struct DeviceTable {
    devices: BTreeMap<u32, Device>,
    /// Events that touched a device (orders devices by staleness).
    clock: u64,
    /// `(touched, device)` of every device in `devices`, stalest first.
    staleness: BTreeSet<(u64, u32)>,
}

impl DeviceTable {
    /// Makes room for `device` if it is new and the table holds `max` devices.
    pub(crate) fn admit(&mut self, device: u32, max: usize) -> Admit {
        if self.devices.contains_key(&device) {
            return Admit::Known;
        }
        if self.devices.len() < max.max(1) {
            return Admit::Room;
        }
        let victim = self
            .staleness
            .iter()
            .find(|(_, d)| self.devices.get(d).is_some_and(Device::evictable))
            .copied();
        let Some((at, victim)) = victim else {
            return Admit::Full;
        };
        self.staleness.remove(&(at, victim));
        self.devices.remove(&victim);
        Admit::Evicted(victim)
    }

    /// Marks `device` as just heard (it becomes the freshest), creating its entry if needed
    /// (call [`Self::admit`] first for a device a remote named).
    pub(crate) fn touch(&mut self, device: u32) -> &mut Device {
        self.clock += 1;
        let d = self.devices.entry(device).or_default();
        self.staleness.remove(&(d.touched, device));
        d.touched = self.clock;
        d.status.device = device;
        self.staleness.insert((self.clock, device));
        d
    }

    /// The entry of a device this node's orchestrator named (such devices are not evicted
    /// while in use, so the table may hold more than `max` of them).
    pub(crate) fn local_entry(&mut self, device: u32) -> &mut Device {
        if self.devices.contains_key(&device) {
            self.devices.entry(device).or_default()
        } else {
            self.touch(device)
        }
    }

    pub(crate) fn get(&self, device: &u32) -> Option<&Device> {
        self.devices.get(device)
    }

    pub(crate) fn get_mut(&mut self, device: &u32) -> Option<&mut Device> {
        self.devices.get_mut(device)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.devices.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hear(t: &mut DeviceTable, device: u32, max: usize) -> Admit {
        let a = t.admit(device, max);
        if a != Admit::Full {
            t.touch(device);
        }
        a
    }

    #[test]
    fn a_full_table_evicts_the_stalest_unused_device() {
        let mut t = DeviceTable::default();
        for d in 1..=3 {
            assert_eq!(hear(&mut t, d, 3), Admit::Room);
        }
        hear(&mut t, 1, 3); // 2 is now the stalest
        assert_eq!(hear(&mut t, 4, 3), Admit::Evicted(2));
        assert!(t.get(&2).is_none());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn devices_in_use_are_never_evicted_and_new_ones_are_refused() {
        let mut t = DeviceTable::default();
        t.local_entry(1).status.service = Some("svc".into());
        t.local_entry(2).status.buffering = true;
        t.local_entry(3).managers.push(NodeId([1; 32]));
        assert_eq!(hear(&mut t, 9, 3), Admit::Full);
        assert!(t.get(&9).is_none());
        // The orchestrator may still name more devices.
        t.local_entry(4).status.buffering = true;
        assert_eq!(t.len(), 4);
        assert_eq!(hear(&mut t, 2, 3), Admit::Known);
    }

    proptest! {
        /// Whatever device ids a radio sends, the table never holds more than `max` devices
        /// it does not use, the devices in use survive, and the staleness index stays in step.
        #[test]
        fn the_table_stays_bounded_and_keeps_what_is_in_use(
            ids in proptest::collection::vec(0u32..200, 0..400),
            max in 1usize..20,
        ) {
            let mut t = DeviceTable::default();
            t.local_entry(1_000).status.service = Some("own".into());
            for id in ids {
                hear(&mut t, id, max);
                prop_assert!(t.len() <= max);
                prop_assert!(t.get(&1_000).is_some());
                prop_assert_eq!(t.staleness.len(), t.devices.len());
            }
        }
    }
}
