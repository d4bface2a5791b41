//! The radio's device table: bounded, since any radio in range (or a peer's replay answer)
//! can name any device id, and any customer's contract image up to 1,024 of them. A new device
//! when the table is full evicts the stalest device this edge does not use — first one it knows
//! no manager of, then one whose managers are all it knows (a device of an ended contract: a
//! later checkpoint for it is judged on the bound alone, as hearsay); if every device is in use
//! (assigned to a service here or buffered for a takeover), the new one is refused. Devices the
//! orchestrator names are always taken, and then the table is trimmed back to its bound the
//! same way ([`DeviceTable::trim`]): only devices in use may take it past the bound.

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
        !self.in_use() && self.managers.is_empty()
    }

    /// Whether a contract here uses it now: assigned to a service, or buffered for a takeover.
    pub(crate) fn in_use(&self) -> bool {
        self.status.service.is_some() || self.status.buffering
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
        match self.evict_one() {
            Some(victim) => Admit::Evicted(victim),
            None => Admit::Full,
        }
    }

    /// Evicts the stalest device not in use: one without known managers first, then one with.
    fn evict_one(&mut self) -> Option<u32> {
        let pick = |f: fn(&Device) -> bool| {
            self.staleness
                .iter()
                .find(|(_, d)| self.devices.get(d).is_some_and(f))
                .copied()
        };
        let (at, victim) = pick(Device::evictable).or_else(|| pick(|d| !d.in_use()))?;
        self.staleness.remove(&(at, victim));
        self.devices.remove(&victim);
        Some(victim)
    }

    /// Evicts devices not in use (stalest first: a device just named goes last) until at most
    /// `max` are left or only devices in use remain; returns how many went.
    pub(crate) fn trim(&mut self, max: usize) -> u64 {
        let mut evicted = 0;
        while self.devices.len() > max.max(1) && self.evict_one().is_some() {
            evicted += 1;
        }
        evicted
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

    /// The entry of a device this node's orchestrator named, made the freshest (such devices
    /// are not evicted while in use, so the table may hold more than `max` of them; a device
    /// just named goes last when the table is trimmed).
    pub(crate) fn local_entry(&mut self, device: u32) -> &mut Device {
        self.touch(device)
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
        t.local_entry(3).status.buffering = true;
        t.local_entry(3).managers.push(NodeId([1; 32]));
        assert_eq!(hear(&mut t, 9, 3), Admit::Full);
        assert!(t.get(&9).is_none());
        // The orchestrator may still name more devices in use.
        t.local_entry(4).status.buffering = true;
        assert_eq!(t.trim(3), 0);
        assert_eq!(t.len(), 4);
        assert_eq!(hear(&mut t, 2, 3), Admit::Known);
    }

    #[test]
    fn managed_devices_no_contract_uses_go_after_unknown_ones_and_never_past_the_bound() {
        let mut t = DeviceTable::default();
        let m = NodeId([1; 32]);
        // Devices an ended contract named: managers known, nothing uses them.
        for d in 1..=3 {
            t.local_entry(d).managers.push(m);
        }
        t.local_entry(4).status.service = Some("svc".into());
        // A device heard with no manager known.
        assert_eq!(hear(&mut t, 5, 10), Admit::Room);
        // Full at 5: the unknown device goes first, then the stalest managed one.
        assert_eq!(hear(&mut t, 6, 5), Admit::Evicted(5));
        assert_eq!(hear(&mut t, 7, 5), Admit::Evicted(6));
        t.local_entry(7).managers.push(m);
        assert_eq!(hear(&mut t, 8, 5), Admit::Evicted(1));
        // Naming a device makes it the freshest: 2, named again now, outlives 3.
        t.local_entry(8).managers.push(m);
        t.local_entry(2).managers.push(m);
        assert_eq!(hear(&mut t, 9, 5), Admit::Evicted(3));
        assert!(t.get(&2).is_some());
        // A contract names 100 devices at once: the table is trimmed back to its bound, the
        // device just named (the freshest) last of all and the one in use never.
        for d in 100..200 {
            t.local_entry(d).managers.push(m);
            t.trim(5);
        }
        assert_eq!(t.len(), 5);
        assert!(t.get(&4).is_some() && t.get(&199).is_some());
        assert_eq!(t.staleness.len(), t.devices.len());
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
                if id % 3 == 0 {
                    // Named by a contract here (managers known, not in use).
                    t.local_entry(id).managers.push(NodeId([1; 32]));
                    t.trim(max);
                } else {
                    hear(&mut t, id, max);
                }
                prop_assert!(t.len() <= max);
                prop_assert!(t.get(&1_000).is_some());
                prop_assert_eq!(t.staleness.len(), t.devices.len());
            }
        }
    }
}
