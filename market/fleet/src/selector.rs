//! Which providers a deployment selects: region, labels, interfaces and room for one replica.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::FleetError;
use crate::limits::{MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS, MAX_REGION_LEN};
use crate::record::is_token;
use agora_market::identity::{NodeId, Timestamp};
use agora_market::resources::{Interface, Resources, parse_interfaces};

/// A filter over providers. Every given part must hold; an empty selector selects every provider.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selector {
    /// The provider's region must be this one.
    pub region: Option<String>,
    /// The provider must carry every one of these labels with exactly this value.
    pub labels: BTreeMap<String, String>,
    /// The provider's advertised capacity must hold at least these interfaces.
    pub interfaces: BTreeMap<Interface, u32>,
}

/// What a node knows of one provider (from its presence, offers and config), fed to the rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderFacts {
    /// The provider.
    pub node: NodeId,
    /// Its region, if it advertises one.
    pub region: Option<String>,
    /// Its labels (`[provider] labels` in its config).
    pub labels: BTreeMap<String, String>,
    /// Its total advertised capacity.
    pub capacity: Resources,
    /// What it has free now.
    pub free: Resources,
    /// When it was last heard from.
    pub last_seen: Timestamp,
}

/// What a provider says about itself to a deployer: [`ProviderFacts`] without the node id and
/// time, which the receiver fills in from the authenticated sender and its own clock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateFacts {
    /// Its region.
    pub region: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its total advertised capacity.
    pub capacity: Resources,
    /// What it has free now.
    pub free: Resources,
}

impl CandidateFacts {
    /// Checks the bounds of facts from outside (the same as a selector's region and labels).
    pub fn check(&self) -> Result<(), &'static str> {
        Selector {
            region: self.region.clone(),
            labels: self.labels.clone(),
            interfaces: BTreeMap::new(),
        }
        .check()
    }

    /// The facts as known about `node` at `now`.
    pub fn about(self, node: NodeId, now: Timestamp) -> ProviderFacts {
        ProviderFacts {
            node,
            region: self.region,
            labels: self.labels,
            capacity: self.capacity,
            free: self.free,
            last_seen: now,
        }
    }
}

impl ProviderFacts {
    /// What this provider tells a deployer about itself.
    pub fn candidate(&self) -> CandidateFacts {
        CandidateFacts {
            region: self.region.clone(),
            labels: self.labels.clone(),
            capacity: self.capacity.clone(),
            free: self.free.clone(),
        }
    }
}

impl Selector {
    /// Checks the bounds of a selector from outside; `Err` carries the accepted form.
    pub fn check(&self) -> Result<(), &'static str> {
        if let Some(r) = &self.region
            && (r.is_empty() || r.len() > MAX_REGION_LEN || !is_token(r))
        {
            return Err("region: 1 to 64 characters of a-z, 0-9, '-', '_' or '.'");
        }
        if self.labels.len() > MAX_LABELS {
            return Err("at most 16 labels");
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > MAX_LABEL_KEY_LEN || !is_token(k) {
                return Err("label keys: 1 to 32 characters of a-z, 0-9, '-', '_' or '.'");
            }
            if v.is_empty() || v.len() > MAX_LABEL_VALUE_LEN || !is_token(v) {
                return Err("label values: 1 to 64 characters of a-z, 0-9, '-', '_' or '.'");
            }
        }
        if self.interfaces.values().any(|n| *n == 0 || *n > 64) {
            return Err("interface counts 1 to 64");
        }
        Ok(())
    }

    /// True when `p` qualifies to keep hosting a replica needing `needs`: region, labels and
    /// interfaces match and its total capacity can hold one replica.
    pub fn admits(&self, p: &ProviderFacts, needs: &Resources) -> bool {
        let region = self
            .region
            .as_ref()
            .is_none_or(|r| p.region.as_ref() == Some(r));
        let labels = self.labels.iter().all(|(k, v)| p.labels.get(k) == Some(v));
        let ifaces = self
            .interfaces
            .iter()
            .all(|(i, n)| p.capacity.interface_count(*i) >= *n);
        region && labels && ifaces && needs.fits_in(&p.capacity)
    }

    /// True when `p` qualifies as a NEW target: it is admitted and has one replica's needs free.
    pub fn can_take(&self, p: &ProviderFacts, needs: &Resources) -> bool {
        self.admits(p, needs) && needs.fits_in(&p.free)
    }

    /// Parses `region=eu-west,iface=lora,site=factory` (any other key is a label; `iface` may
    /// repeat and take a count, `iface=lora:2`). An empty string selects every provider.
    pub fn parse(text: &str) -> Result<Selector, FleetError> {
        let bad = |part: &str, hint: &'static str| FleetError::BadSelector {
            part: part.chars().take(80).collect(),
            hint,
        };
        let mut sel = Selector::default();
        if text.len() > 1024 {
            return Err(bad(text, "a selector is at most 1024 characters"));
        }
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(part, "write key=value, e.g. region=eu-west or site=factory"))?;
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
            match key.as_str() {
                "region" => sel.region = Some(value.to_ascii_lowercase()),
                "iface" | "interface" | "interfaces" => {
                    let parsed = parse_interfaces(value).map_err(|_| {
                        bad(
                            part,
                            "iface=lora, iface=ble:2 (lora, ble, zigbee, wifi, ethernet, cellular)",
                        )
                    })?;
                    for (i, n) in parsed {
                        let slot = sel.interfaces.entry(i).or_insert(0);
                        *slot = slot.saturating_add(n);
                    }
                }
                _ => {
                    if sel.labels.len() >= MAX_LABELS && !sel.labels.contains_key(&key) {
                        return Err(bad(part, "at most 16 labels"));
                    }
                    sel.labels.insert(key, value.to_ascii_lowercase());
                }
            }
        }
        sel.check().map_err(|hint| bad(text, hint))?;
        Ok(sel)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = &self.region {
            parts.push(format!("region={r}"));
        }
        for (i, n) in &self.interfaces {
            let name = format!("{i:?}").to_ascii_lowercase();
            parts.push(if *n == 1 {
                format!("iface={name}")
            } else {
                format!("iface={name}:{n}")
            });
        }
        for (k, v) in &self.labels {
            parts.push(format!("{k}={v}"));
        }
        if parts.is_empty() {
            f.write_str("(every provider)")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agora_market::identity::Signer;
    use agora_market::test_utils::signer;

    fn facts(seed: u64, region: &str, labels: &[(&str, &str)]) -> ProviderFacts {
        let cap = Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1);
        ProviderFacts {
            node: signer(seed).node_id(),
            region: Some(region.to_string()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            free: cap.clone(),
            capacity: cap,
            last_seen: 0,
        }
    }

    #[test]
    fn parse_round_trips_through_display() {
        let sel = Selector::parse("region=eu-west, iface=lora, site=factory,role=gw").unwrap();
        assert_eq!(sel.region.as_deref(), Some("eu-west"));
        assert_eq!(sel.interfaces.get(&Interface::LoRa), Some(&1));
        assert_eq!(sel.labels.len(), 2);
        assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel);
        assert_eq!(Selector::parse("").unwrap(), Selector::default());
    }

    #[test]
    fn parse_rejects_malformed_and_oversized_input() {
        assert!(Selector::parse("region").is_err());
        assert!(Selector::parse("iface=radio").is_err());
        assert!(Selector::parse("Site=Fac tory").is_err());
        assert!(Selector::parse(&"x".repeat(2000)).is_err());
        let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
        assert!(Selector::parse(&many.join(",")).is_err());
        let long = format!("k={}", "v".repeat(65));
        assert!(Selector::parse(&long).is_err());
    }

    #[test]
    fn admits_on_region_labels_interfaces_and_capacity() {
        let needs = Resources {
            cpu_millis: 500,
            ..Resources::default()
        };
        let sel = Selector::parse("region=eu,site=a,iface=lora").unwrap();
        let p = facts(1, "eu", &[("site", "a"), ("x", "y")]);
        assert!(sel.admits(&p, &needs) && sel.can_take(&p, &needs));
        assert!(!sel.admits(&facts(2, "us", &[("site", "a")]), &needs));
        assert!(!sel.admits(&facts(3, "eu", &[("site", "b")]), &needs));
        assert!(!sel.admits(&facts(4, "eu", &[]), &needs));
        let two = Selector::parse("iface=lora:2").unwrap();
        assert!(!two.admits(&p, &needs));
        let mut busy = p.clone();
        busy.free = Resources::default();
        assert!(sel.admits(&busy, &needs), "a busy target keeps its replica");
        assert!(!sel.can_take(&busy, &needs), "but takes no new one");
        let huge = Resources {
            cpu_millis: 5000,
            ..Resources::default()
        };
        assert!(!sel.admits(&p, &huge));
    }
}
