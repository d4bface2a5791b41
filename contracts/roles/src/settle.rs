//! Settlement, for either party: the rule that asks the ledger to close a contract whose
//! moment has come, and so decides when who gets paid. The customer settles when it is back
//! after a handover (an active standby), when the provider never activated in time (past the
//! activation deadline and the ledger's grace for a late report), and when the term ended;
//! the provider settles when the term ended. A settlement already pending (`closing`: the
//! ledger waits for the provider's heartbeats to cover the end) is not asked for again; a
//! request whose effect the ledger does not show yet is repeated every [`SETTLE_RETRY_MS`].
//!
//! A contract the provider never armed (validated or migrated: a hostile provider that
//! countersigned and then did nothing, or one that died before arming) has no activation
//! deadline unless it names a slot, so no settlement ever applies to it; either party expires
//! it once the ledger allows (`Expire`: its registration plus its duration plus the ledger's
//! `expiry_grace_ms`), and every locked token goes back. Before that, a customer's locked
//! payment and stake stayed locked for good (found by a read-only audit in session 47). The
//! customer does not wait that long: it calls such a contract off (`Cancel`) once its provider
//! has left it unarmed [`super::RolesConfig::arm_timeout_ms`] (5 min) after its registration.
//!
//! Its own handler (not the customer's and the provider's), so a driver that still decides
//! the rest of those roles itself can hand settlement to the machine ([`super::RoleSet`]).

use std::collections::{BTreeMap, BTreeSet};

use agora_contracts::contract::{ContractId, ContractKind};
use agora_contracts::ledger::{SettleReason, TxKind};
use agora_contracts::lifecycle::ContractStatus;
use agora_market::{NodeId, Timestamp};
use cid::Cid;

use super::io::{Effect, Input, Note};
use super::{SETTLE_RETRY_MS, View};

/// How much later than its customer a provider expires a never-armed slot contract whose
/// deadline passed: the customer's `NoActivation` settles it first.
pub(crate) const PROVIDER_EXPIRY_MARGIN_MS: u64 = 10_000;

/// Settlements this node asked for, and when the next one is due.
#[derive(Clone, Debug)]
pub(super) struct Settler {
    /// How long a contract of ours as customer may stay unarmed after its registration
    /// ([`super::RolesConfig::arm_timeout_ms`]).
    arm_timeout_ms: u64,
    /// Contracts asked to settle, with when (asked again [`SETTLE_RETRY_MS`] later).
    settling: BTreeMap<ContractId, Timestamp>,
    /// The earliest future moment a contract of ours becomes due (its term's end, or its
    /// activation deadline past the grace), as of the last input.
    next_due: Option<Timestamp>,
    /// Contracts of ours whose call-off was accepted (noted on the timeline once).
    called_off: BTreeSet<ContractId>,
}

impl Settler {
    /// A settler that calls off a contract of ours left unarmed `arm_timeout_ms` after its
    /// registration.
    pub fn new(arm_timeout_ms: u64) -> Self {
        Settler {
            arm_timeout_ms,
            settling: BTreeMap::new(),
            next_due: None,
            called_off: BTreeSet::new(),
        }
    }

    /// The earliest time something is due.
    pub fn next_wake(&self) -> Option<Timestamp> {
        let retry = self
            .settling
            .values()
            .map(|t| t.saturating_add(SETTLE_RETRY_MS));
        self.next_due.into_iter().chain(retry).min()
    }

    pub fn handle(&mut self, v: &View, input: &Input, out: &mut Vec<Effect>) {
        if let Input::Submitted {
            tx: TxKind::Settle { contract, reason },
            accepted: true,
        } = input
            && v.records
                .get(contract)
                .is_some_and(|r| r.contract.customer == v.me || r.contract.provider == v.me)
        {
            out.push(Effect::Timeline(Note::new(
                "settle-requested",
                Some(*contract),
                format!("{reason:?}"),
            )));
        }
        if let Input::Submitted {
            tx: TxKind::Cancel(contract),
            accepted: true,
        } = input
            && self.settling.contains_key(contract)
            && self.called_off.insert(*contract)
        {
            out.push(Effect::Timeline(Note::new(
                "cancel-requested",
                Some(*contract),
                format!(
                    "the provider did not arm within {} s of the registration: called off, \
                     every locked token back",
                    self.arm_timeout_ms / 1_000
                ),
            )));
        }
        if let Input::Submitted {
            tx: TxKind::Expire(contract),
            accepted: true,
        } = input
        {
            out.push(Effect::Timeline(Note::new(
                "expire-requested",
                Some(*contract),
                "never armed: every locked token back".to_string(),
            )));
        }
        self.due(v, out);
    }

    /// Asks to settle every contract of ours whose moment has come.
    fn due(&mut self, v: &View, out: &mut Vec<Effect>) {
        self.settling
            .retain(|id, _| v.records.get(id).is_some_and(|r| !r.status.is_final()));
        self.called_off
            .retain(|id| v.records.get(id).is_some_and(|r| !r.status.is_final()));
        self.next_due = None;
        // Per provider and image of our contracts: whether one of them holds the provider's
        // instance (armed or active), and when the last one closed. An honest provider arms a
        // new contract of ours on the same image only once the ones ending have let go of it
        // (the node's arm wait, up to 10 min, and a settlement's grace): that wait is no
        // reason to call the new one off.
        let mut held: BTreeMap<(NodeId, Cid), (bool, Timestamp)> = BTreeMap::new();
        for r in v.records.values().filter(|r| r.contract.customer == v.me) {
            let e = held
                .entry((r.contract.provider, r.contract.service_image))
                .or_default();
            // An armed standby waiting for its handover runs nothing (a review found it kept a
            // hosted contract on the same image from ever being called off).
            e.0 |= r.status == ContractStatus::Active
                || (r.status == ContractStatus::Armed && r.contract.kind != ContractKind::Standby);
            e.1 = e.1.max(r.closed_at.unwrap_or(0));
        }
        for (id, r) in v.records.iter() {
            let customer = r.contract.customer == v.me;
            if !(customer || r.contract.provider == v.me) || r.status.is_final() {
                continue;
            }
            // A pending settlement is judged by the ledger when the provider's heartbeats
            // cover its end (or its grace runs out): asking again would be refused.
            if r.closing.is_some() {
                self.settling.remove(id);
                continue;
            }
            let end = r.window_end();
            let no_activation = customer
                .then(|| r.activation_deadline())
                .flatten()
                .map(|d| d.saturating_add(v.params.activation_report_grace_ms));
            let ended = end.is_some_and(|e| v.now >= e);
            let expiry = matches!(
                r.status,
                ContractStatus::Validated | ContractStatus::Migrated
            )
            .then(|| {
                let ledger = r
                    .registered_at
                    .saturating_add(r.contract.duration_ms)
                    .saturating_add(v.params.expiry_grace_ms);
                // A slot booked far ahead is not expired before it could even start: not
                // before the customer may settle it `NoActivation` (the ledger counts the
                // expiry from the registration, whatever the slot).
                // The provider waits a little longer, so the customer's `NoActivation` lands
                // first.
                let margin = if customer {
                    0
                } else {
                    PROVIDER_EXPIRY_MARGIN_MS
                };
                let slot = r.activation_deadline().map(|d| {
                    d.saturating_add(v.params.activation_report_grace_ms)
                        .saturating_add(1)
                        .saturating_add(margin)
                });
                ledger.max(slot.unwrap_or(0))
            });
            // A contract of ours its provider has not armed long after the registration (or
            // after the last of our contracts with it on the same image closed), and that names
            // no slot (whose deadline settles it `NoActivation`), is called off rather than
            // left locked until it expires (THREATS C16). Not while another of them holds the
            // provider's instance, not from a view still catching up (an old view may show a
            // contract armed since as unarmed), and never with a timeout of 0.
            let call_off = (customer
                && v.synced
                && self.arm_timeout_ms > 0
                && matches!(
                    r.status,
                    ContractStatus::Validated | ContractStatus::Migrated
                )
                && r.activation_deadline().is_none())
            .then(|| {
                held.get(&(r.contract.provider, r.contract.service_image))
                    .copied()
                    .unwrap_or_default()
            })
            .filter(|(holding, _)| !holding)
            .map(|(_, closed)| {
                r.registered_at
                    .max(closed)
                    .saturating_add(self.arm_timeout_ms)
            });
            let reason = match r.status {
                ContractStatus::Active if customer && r.contract.kind == ContractKind::Standby => {
                    Some(SettleReason::CustomerBack)
                }
                ContractStatus::Active | ContractStatus::Armed if ended => {
                    Some(SettleReason::DurationEnded)
                }
                ContractStatus::Validated | ContractStatus::Migrated | ContractStatus::Armed
                    if no_activation.is_some_and(|d| v.now > d) =>
                {
                    Some(SettleReason::NoActivation)
                }
                _ => None,
            };
            let tx = match reason {
                Some(reason) => Some(TxKind::Settle {
                    contract: *id,
                    reason,
                }),
                None if expiry.is_some_and(|e| v.now >= e) => Some(TxKind::Expire(*id)),
                None => call_off
                    .is_some_and(|t| v.now >= t)
                    .then_some(TxKind::Cancel(*id)),
            };
            let Some(tx) = tx else {
                // Not due (any more): no retry; wake when it may be.
                self.settling.remove(id);
                let later = match r.status {
                    ContractStatus::Active | ContractStatus::Armed => end,
                    _ => None,
                };
                let deadline = match r.status {
                    ContractStatus::Validated
                    | ContractStatus::Migrated
                    | ContractStatus::Armed => no_activation.map(|d| d.saturating_add(1)),
                    _ => None,
                };
                let soonest = later
                    .into_iter()
                    .chain(deadline)
                    .chain(expiry)
                    .chain(call_off)
                    .filter(|t| *t > v.now)
                    .min();
                self.next_due = self.next_due.into_iter().chain(soonest).min();
                continue;
            };
            if self
                .settling
                .get(id)
                .is_some_and(|t| v.now < t.saturating_add(SETTLE_RETRY_MS))
            {
                continue;
            }
            self.settling.insert(*id, v.now);
            out.push(Effect::Submit(tx));
        }
    }
}
