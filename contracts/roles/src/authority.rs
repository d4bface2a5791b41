//! Who may feed which device, from the ledger: the pure rule behind
//! [`DeviceAuthority`].
//!
//! A device belongs to the owner of the service image that names it (the customer). The ledger
//! moves it to a provider while one of the owner's contracts on that image is in effect
//! (active, or armed with its trigger fired: a handover was attested or its slot began); the
//! latest-triggered one wins. Everyone else computes the same answer from its own view.
//!
//! Views lag, so the new manager also waits for every earlier manager that may still be
//! feeding — until it releases the device, or until it has certainly stopped:
//! - a provider feeds only while its view is fresh, `block time + provider_lease_ms`, so once
//!   the ledger took the device from it at `T` it stops by `T + provider_lease_ms`;
//! - an owner with a standby contract awaiting handover stops feeding when it cannot see a
//!   quorum of the committee (`Customer` suspension), within `owner_suspend_ms` of the last
//!   moment the committee heard from it, which the handover decision records as
//!   `unreachable_since`.
//!
//! Contracts whose customer is not the image's owner are ignored: a stranger cannot register a
//! contract on someone else's image and take its devices.

use std::collections::BTreeMap;

use agora_market::{NodeId, Timestamp};
use cid::Cid;

use super::readings::{DeviceAuthority, DeviceId, Previous};
use agora_contracts::contract::{ContractId, ContractKind};
use agora_contracts::ledger::ContractRecord;
use agora_contracts::lifecycle::ContractStatus;

/// Devices named by one service image, and whose they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The service image.
    pub image: Cid,
    /// Its devices (from the manifest).
    pub devices: Vec<DeviceId>,
    /// The image's owner: the customer.
    pub owner: NodeId,
}

/// The timings the authority rule depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A provider's authority lasts this long past the time of the latest block it applied.
    pub provider_lease_ms: u64,
    /// An owner cut off from its committee stops feeding within this long of the committee's
    /// last contact (the node's presence timeout, plus a tick).
    pub owner_suspend_ms: u64,
    /// How far clocks and block times may disagree.
    pub clock_margin_ms: u64,
}

/// Whether `r` puts its provider in charge of the image's devices at ledger time `t`.
fn in_effect(r: &ContractRecord, t: Timestamp) -> bool {
    r.status == ContractStatus::Active
        || (r.status == ContractStatus::Armed && r.trigger_at.is_some_and(|x| x <= t))
}

/// When a contract that fed the devices stopped being in effect, per the ledger: its close, or
/// `t` if it is in effect still or closing.
fn lost_at(r: &ContractRecord, t: Timestamp) -> Timestamp {
    if in_effect(r, t) {
        t
    } else {
        r.closed_at.unwrap_or(t)
    }
}

/// The authority over every device of `groups`, as the ledger view at `block_time` (the time of
/// the latest block applied) has it.
pub fn device_authority(
    block_time: Timestamp,
    records: &BTreeMap<ContractId, ContractRecord>,
    groups: &[Group],
    timing: Timing,
) -> BTreeMap<DeviceId, DeviceAuthority> {
    let mut out = BTreeMap::new();
    for g in groups {
        let a = group_authority(block_time, records, g, timing);
        for d in &g.devices {
            out.insert(*d, a.clone());
        }
    }
    out
}

fn group_authority(
    block_time: Timestamp,
    records: &BTreeMap<ContractId, ContractRecord>,
    g: &Group,
    timing: Timing,
) -> DeviceAuthority {
    let on_image: Vec<(&ContractId, &ContractRecord)> = records
        .iter()
        .filter(|(_, r)| {
            r.contract.service_image == g.image
                && r.contract.customer == g.owner
                && r.contract.kind != ContractKind::Storage
        })
        .collect();
    let current = on_image
        .iter()
        .filter(|(_, r)| in_effect(r, block_time))
        .max_by_key(|(id, r)| (r.trigger_at, **id));
    let lease = timing
        .provider_lease_ms
        .saturating_add(timing.clock_margin_ms);
    // Providers that held the devices before and may not have noticed they lost them: any
    // whose contract was in effect at some point (a provider feeds from its assignment on,
    // before the ledger records its activation).
    let mut previous: Vec<Previous> = on_image
        .iter()
        .filter(|(id, r)| {
            current.is_none_or(|(cid, c)| *cid != *id && c.contract.provider != r.contract.provider)
        })
        .filter_map(|(_, r)| {
            let lost = match current {
                Some((_, c)) => lost_at(r, c.trigger_at.unwrap_or(block_time)),
                None => lost_at(r, block_time),
            };
            let held = r.activated_at.is_some() || r.trigger_at.is_some_and(|t| t <= lost);
            held.then(|| Previous {
                node: r.contract.provider,
                since: lost.saturating_sub(timing.clock_margin_ms),
                until: lost.saturating_add(lease),
            })
        })
        .collect();
    let Some((_, c)) = current else {
        previous.retain(|p| p.node != g.owner);
        return DeviceAuthority {
            manager: g.owner,
            lease_until: None,
            previous: one_per_node(previous),
        };
    };
    let t = c.trigger_at.unwrap_or(block_time);
    if let Some(h) = &c.handover {
        // The owner was attested down: it stopped feeding within `owner_suspend_ms` of the
        // quorum's agreed start of the outage, or as soon as it saw the handover.
        previous.push(Previous {
            node: g.owner,
            since: t.saturating_sub(timing.clock_margin_ms),
            until: h
                .unreachable_since
                .saturating_add(timing.owner_suspend_ms)
                .saturating_add(timing.clock_margin_ms),
        });
    }
    previous.retain(|p| p.node != c.contract.provider);
    DeviceAuthority {
        manager: c.contract.provider,
        lease_until: Some(block_time.saturating_add(timing.provider_lease_ms)),
        previous: one_per_node(previous),
    }
}

/// A provider the owner of an image's devices may hand their frame keys to (threat R1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyHolder {
    /// The owner's contract.
    pub contract: ContractId,
    /// Its service image (the manifest names the devices).
    pub image: Cid,
    /// Its provider.
    pub provider: NodeId,
}

/// Whom `owner` may hand the frame keys of its devices to: the provider of each of its own
/// hosted or standby contracts that is not final yet, with the contract's image (whose manifest
/// names the devices). A provider stages the image from validation on and must verify the
/// devices' frames from the moment it feeds them, which for a hosted contract is the start of
/// its slot and for a standby contract a handover after the owner died; so the keys go out
/// early, while the owner is alive. Storage contracts name no devices; a contract whose
/// customer is someone else gives nothing, even on the owner's image; a contract with itself
/// as provider needs no hand-over.
pub fn key_holders(
    owner: NodeId,
    records: &BTreeMap<ContractId, ContractRecord>,
) -> Vec<KeyHolder> {
    records
        .iter()
        .filter(|(_, r)| {
            r.contract.customer == owner
                && r.contract.provider != owner
                && r.contract.kind != ContractKind::Storage
                && !r.status.is_final()
        })
        .map(|(id, r)| KeyHolder {
            contract: *id,
            image: r.contract.service_image,
            provider: r.contract.provider,
        })
        .collect()
}

/// One entry per node: the one with the latest `until`.
fn one_per_node(mut previous: Vec<Previous>) -> Vec<Previous> {
    previous.sort_by(|a, b| a.node.cmp(&b.node).then(b.until.cmp(&a.until)));
    previous.dedup_by_key(|p| p.node);
    previous
}
