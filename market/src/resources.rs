//! Resource vectors (R'): what a customer needs and what a provider can give.
//!
//! Additive dimensions (cpu, memory, storage, bandwidth, interfaces) are summed and subtracted with
//! checked arithmetic. Qualities (uptime, battery) are not additive: a requirement fits when the
//! capacity's quality is at least as good. Location is a separate constraint (`Near`).

mod location;
mod units;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use location::{Location, Near, haversine_km};
pub use units::{
    UnitError, parse_bandwidth, parse_bytes, parse_cpu, parse_duration_ms, parse_interfaces,
    parse_near,
};

/// A connectivity interface: countable and exclusively held by one customer at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Interface {
    /// LoRa radio.
    LoRa,
    /// Bluetooth Low Energy.
    Ble,
    /// Zigbee radio.
    Zigbee,
    /// Wi-Fi.
    Wifi,
    /// Wired Ethernet.
    Ethernet,
    /// Cellular modem.
    Cellular,
}

impl Interface {
    /// Every interface kind, in a fixed order.
    pub const ALL: [Interface; 6] = [
        Interface::LoRa,
        Interface::Ble,
        Interface::Zigbee,
        Interface::Wifi,
        Interface::Ethernet,
        Interface::Cellular,
    ];
}

/// How long a resource must be available and at what minimum availability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Uptime {
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Minimum availability in permille (999 = 99.9 %).
    pub min_availability_permille: u16,
}

/// Battery level, either absolute energy or a state-of-charge percentage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Battery {
    /// Energy in milliwatt-hours.
    MilliwattHours(u64),
    /// State of charge, 0..=100.
    Percent(u8),
}

impl Battery {
    /// True when `self` (a requirement) is satisfied by `have`; different units never compare.
    pub fn satisfied_by(&self, have: &Battery) -> bool {
        match (self, have) {
            (Battery::MilliwattHours(need), Battery::MilliwattHours(h)) => need <= h,
            (Battery::Percent(need), Battery::Percent(h)) => need <= h,
            _ => false,
        }
    }
}

/// A resource vector: a requirement or a capacity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Storage in bytes.
    pub storage_bytes: u64,
    /// Bandwidth in bits per second.
    pub bandwidth_bps: u64,
    /// Interface counts (zero counts are never stored).
    pub interfaces: BTreeMap<Interface, u32>,
    /// Uptime quality; `None` means no requirement / no promise.
    pub uptime: Option<Uptime>,
    /// Battery level; `None` means no requirement / mains powered capacity.
    pub battery: Option<Battery>,
}

/// An arithmetic failure on resource vectors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// Adding would overflow a dimension.
    #[error("resource dimension {dimension} overflows when adding; the values are absurd")]
    Overflow {
        /// The dimension name.
        dimension: &'static str,
    },
    /// Subtracting would go below zero.
    #[error("resource dimension {dimension} would go negative: have {have}, removing {remove}")]
    Underflow {
        /// The dimension name.
        dimension: &'static str,
        /// What was available.
        have: u64,
        /// What was removed.
        remove: u64,
    },
}

impl Resources {
    /// True when every dimension is zero/absent (nothing requested).
    pub fn is_empty(&self) -> bool {
        self.cpu_millis == 0
            && self.memory_bytes == 0
            && self.storage_bytes == 0
            && self.bandwidth_bps == 0
            && self.interfaces.values().all(|c| *c == 0)
    }

    /// Adds `count` units of `iface` (builder style).
    pub fn with_interface(mut self, iface: Interface, count: u32) -> Self {
        if count > 0 {
            *self.interfaces.entry(iface).or_insert(0) += count;
        }
        self
    }

    /// The count of `iface` in this vector.
    pub fn interface_count(&self, iface: Interface) -> u32 {
        self.interfaces.get(&iface).copied().unwrap_or(0)
    }

    /// True when this requirement can be served from `capacity`.
    pub fn fits_in(&self, capacity: &Resources) -> bool {
        let scalars = self.cpu_millis <= capacity.cpu_millis
            && self.memory_bytes <= capacity.memory_bytes
            && self.storage_bytes <= capacity.storage_bytes
            && self.bandwidth_bps <= capacity.bandwidth_bps;
        let ifaces = self
            .interfaces
            .iter()
            .all(|(i, n)| *n <= capacity.interface_count(*i));
        let uptime = match (&self.uptime, &capacity.uptime) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(need), Some(have)) => {
                need.duration_ms <= have.duration_ms
                    && need.min_availability_permille <= have.min_availability_permille
            }
        };
        let battery = match (&self.battery, &capacity.battery) {
            (None, _) => true,
            // A capacity without a battery is mains powered: any battery requirement holds.
            (Some(_), None) => true,
            (Some(need), Some(have)) => need.satisfied_by(have),
        };
        scalars && ifaces && uptime && battery
    }

    /// `self + other` on the additive dimensions; qualities of `self` are kept.
    pub fn checked_add(&self, other: &Resources) -> Result<Resources, ResourceError> {
        let add = |a: u64, b: u64, dimension| {
            a.checked_add(b)
                .ok_or(ResourceError::Overflow { dimension })
        };
        let mut interfaces = self.interfaces.clone();
        for (iface, n) in &other.interfaces {
            let slot = interfaces.entry(*iface).or_insert(0);
            *slot = slot.checked_add(*n).ok_or(ResourceError::Overflow {
                dimension: "interfaces",
            })?;
        }
        interfaces.retain(|_, n| *n > 0);
        Ok(Resources {
            cpu_millis: add(self.cpu_millis, other.cpu_millis, "cpu")?,
            memory_bytes: add(self.memory_bytes, other.memory_bytes, "memory")?,
            storage_bytes: add(self.storage_bytes, other.storage_bytes, "storage")?,
            bandwidth_bps: add(self.bandwidth_bps, other.bandwidth_bps, "bandwidth")?,
            interfaces,
            uptime: self.uptime,
            battery: self.battery,
        })
    }

    /// `self - other` on the additive dimensions; qualities of `self` are kept.
    pub fn checked_sub(&self, other: &Resources) -> Result<Resources, ResourceError> {
        let sub = |have: u64, remove: u64, dimension| {
            have.checked_sub(remove).ok_or(ResourceError::Underflow {
                dimension,
                have,
                remove,
            })
        };
        let mut interfaces = self.interfaces.clone();
        for (iface, n) in &other.interfaces {
            let have = interfaces.get(iface).copied().unwrap_or(0);
            let left = have.checked_sub(*n).ok_or(ResourceError::Underflow {
                dimension: "interfaces",
                have: u64::from(have),
                remove: u64::from(*n),
            })?;
            interfaces.insert(*iface, left);
        }
        interfaces.retain(|_, n| *n > 0);
        Ok(Resources {
            cpu_millis: sub(self.cpu_millis, other.cpu_millis, "cpu")?,
            memory_bytes: sub(self.memory_bytes, other.memory_bytes, "memory")?,
            storage_bytes: sub(self.storage_bytes, other.storage_bytes, "storage")?,
            bandwidth_bps: sub(self.bandwidth_bps, other.bandwidth_bps, "bandwidth")?,
            interfaces,
            uptime: self.uptime,
            battery: self.battery,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cap() -> Resources {
        Resources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            storage_bytes: 10 << 30,
            bandwidth_bps: 10_000_000,
            uptime: Some(Uptime {
                duration_ms: 3_600_000,
                min_availability_permille: 990,
            }),
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1)
    }

    #[test]
    fn requirement_fits_and_overflowing_one_does_not() {
        let need = Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1);
        assert!(need.fits_in(&cap()));
        let two_radios = need.clone().with_interface(Interface::LoRa, 1);
        assert!(!two_radios.fits_in(&cap()));
        let ble = need.with_interface(Interface::Ble, 1);
        assert!(!ble.fits_in(&cap()));
    }

    #[test]
    fn uptime_and_battery_are_qualities() {
        let mut need = Resources {
            uptime: Some(Uptime {
                duration_ms: 1000,
                min_availability_permille: 999,
            }),
            ..Resources::default()
        };
        assert!(!need.fits_in(&cap()));
        need.uptime = Some(Uptime {
            duration_ms: 1000,
            min_availability_permille: 900,
        });
        assert!(need.fits_in(&cap()));
        need.battery = Some(Battery::Percent(50));
        let mut c = cap();
        c.battery = Some(Battery::Percent(40));
        assert!(!need.fits_in(&c));
        c.battery = Some(Battery::MilliwattHours(10_000));
        assert!(!need.fits_in(&c), "units never compare");
        c.battery = Some(Battery::Percent(80));
        assert!(need.fits_in(&c));
    }

    #[test]
    fn add_then_sub_round_trips_and_underflow_is_an_error() {
        let a = cap();
        let b = Resources {
            cpu_millis: 100,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1);
        let sum = a.checked_add(&b).unwrap();
        assert_eq!(sum.interface_count(Interface::LoRa), 2);
        assert_eq!(sum.checked_sub(&b).unwrap(), a);
        let left = a.checked_sub(&b).unwrap();
        assert_eq!(left.interface_count(Interface::LoRa), 0);
        assert!(left.interfaces.is_empty());
        let err = left.checked_sub(&b).unwrap_err();
        assert!(matches!(err, ResourceError::Underflow { .. }));
        let big = Resources {
            cpu_millis: u64::MAX,
            ..Resources::default()
        };
        assert!(big.checked_add(&big).is_err());
    }
}
