//! The ledger facts the role machine decides from, and the predicates it shares.
//!
//! The driver builds [`LedgerFacts`] inside its ledger query after every applied block (and
//! once at start, and after lagging) with [`LedgerFacts::from_ledger`]: the machine then needs
//! no ledger access of its own.

use std::collections::{BTreeMap, BTreeSet};

use agora_market::{NodeId, Timestamp};
use cid::Cid;
use serde::{Deserialize, Serialize};

use agora_contracts::contract::{ContractId, ContractKind};
use agora_contracts::ledger::{ContractRecord, Ledger, LedgerEvent, LedgerParams};
use agora_contracts::lifecycle::ContractStatus;

/// Closed contracts stay in the facts this long (ledger time): their last provider's authority
/// over the devices may outlive them by a lease, and late blocks still name them.
pub const RETAIN_CLOSED_MS: u64 = 60_000;

/// The ledger as one node needs it after a block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerFacts {
    /// Height of the last applied block (0 before the first).
    pub height: u64,
    /// Its time (ledger time).
    pub time: Timestamp,
    /// Events of that block; empty for a rescan.
    pub events: Vec<LedgerEvent>,
    /// Contracts this node is a party or arbitrator of, and contracts on the service images it
    /// knows the devices of: open ones, and closed ones that the events name or that closed
    /// within [`RETAIN_CLOSED_MS`].
    pub records: BTreeMap<ContractId, ContractRecord>,
    /// The replica knows of later blocks it has not applied yet (it is catching up): the view
    /// is not current, whatever its time. The driver sets it from its ledger task.
    #[serde(default)]
    pub behind: bool,
    /// The chain's genesis parameters, which every rule that waits on the ledger's word reads
    /// (`activation_report_grace_ms`: how long a customer waits past an activation deadline
    /// before it settles for no activation; `expiry_grace_ms`: when a contract never armed
    /// may be expired).
    #[serde(default)]
    pub params: LedgerParams,
}

impl LedgerFacts {
    /// Extracts what `me` needs from `ledger` (the state after `events`); `images` are the
    /// service images whose devices `me` knows (`Roles::images`).
    pub fn from_ledger(
        me: NodeId,
        ledger: &Ledger,
        events: Vec<LedgerEvent>,
        images: &BTreeSet<Cid>,
    ) -> Self {
        let time = ledger.last_block_time();
        let named: BTreeSet<ContractId> = events.iter().filter_map(event_contract).collect();
        let records = ledger
            .contracts()
            .iter()
            .filter(|(id, r)| {
                let c = &r.contract;
                let mine = c.customer == me || c.provider == me || c.committee.contains(&me);
                let related = images.contains(&c.service_image);
                let recent = r
                    .closed_at
                    .is_none_or(|t| t.saturating_add(RETAIN_CLOSED_MS) >= time);
                (mine || related) && (recent || named.contains(id))
            })
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        LedgerFacts {
            height: ledger.height(),
            time,
            events,
            records,
            behind: false,
            params: ledger.params().clone(),
        }
    }
}

/// The contract an event is about.
pub fn event_contract(e: &LedgerEvent) -> Option<ContractId> {
    match e {
        LedgerEvent::ContractRegistered { contract, .. }
        | LedgerEvent::StatusChanged { contract, .. }
        | LedgerEvent::HandoverAttested { contract, .. }
        | LedgerEvent::Activated { contract, .. }
        | LedgerEvent::HeartbeatsRecorded { contract, .. }
        | LedgerEvent::AuditReportRecorded { contract, .. }
        | LedgerEvent::StorageProofRecorded { contract, .. }
        | LedgerEvent::ProbeRecorded { contract, .. }
        | LedgerEvent::UptimeConfirmed { contract, .. }
        | LedgerEvent::Paid { contract, .. }
        | LedgerEvent::Refunded { contract, .. }
        | LedgerEvent::Slashed { contract, .. }
        | LedgerEvent::SettlementPending { contract, .. }
        | LedgerEvent::EvidenceTrimmed { contract, .. } => Some(*contract),
        _ => None,
    }
}

/// The provider is (or must be) serving the customer's standby in its place: the handover was
/// attested (armed with a trigger) or it activated.
pub fn handed_over(r: &ContractRecord) -> bool {
    r.contract.kind == ContractKind::Standby
        && (r.status == ContractStatus::Active
            || (r.status == ContractStatus::Armed && r.trigger_at.is_some()))
}

/// A standby contract waiting for a handover of its customer (the ledger's own rule).
pub fn awaits_handover(r: &ContractRecord) -> bool {
    r.contract.kind == ContractKind::Standby
        && r.status == ContractStatus::Armed
        && r.handover.is_none()
}

/// A standby contract that may still be handed over without its customer's doing: armed and
/// waiting, or about to be armed by its provider.
pub fn may_hand_over(r: &ContractRecord) -> bool {
    r.contract.kind == ContractKind::Standby
        && r.handover.is_none()
        && matches!(
            r.status,
            ContractStatus::Validated | ContractStatus::Migrated | ContractStatus::Armed
        )
}

/// A contract the provider is preparing for or serving.
pub fn provider_engaged(s: ContractStatus) -> bool {
    matches!(
        s,
        ContractStatus::Validated
            | ContractStatus::Migrated
            | ContractStatus::Armed
            | ContractStatus::Active
    )
}

/// A contract that no longer needs anyone's work (settled, slashed, cancelled, expired, or on
/// the way there within its closing transaction).
pub fn closed(s: ContractStatus) -> bool {
    s.is_final() || matches!(s, ContractStatus::Completed | ContractStatus::Breached)
}
