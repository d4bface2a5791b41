//! What the role machine takes in and what it asks the driver to do.

use std::collections::BTreeMap;
use std::fmt;

use agora_market::{NodeId, Timestamp};
use cid::Cid;
use serde::{Deserialize, Serialize};

use super::facts::LedgerFacts;
use super::readings::{DeviceAuthority, DeviceId};
use agora_contracts::contract::ContractId;
use agora_contracts::ledger::TxKind;

/// A service this node runs: its own, or a contract's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ServiceRef {
    /// The node's own service on its own sensors.
    Own,
    /// The service of a contract this node provides.
    Contract(ContractId),
}

/// Service id of the node's own service.
pub const OWN_SERVICE: &str = "own";

impl fmt::Display for ServiceRef {
    /// The service id the host knows it by: `own`, or the contract id (hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceRef::Own => f.write_str(OWN_SERVICE),
            ServiceRef::Contract(id) => write!(f, "{id}"),
        }
    }
}

/// A liveness change of a peer, as the node's presence table saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Presence {
    /// The peer answers again.
    Up {
        /// The peer.
        node: NodeId,
    },
    /// The peer stopped answering.
    Down {
        /// The peer.
        node: NodeId,
        /// Its last proof of life (this node's clock).
        last_seen: Timestamp,
    },
}

/// What one storage challenge showed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditVerdict {
    /// Every challenged chunk matched the commitment.
    Passed,
    /// The provider answered wrongly, refused, or did not answer in time.
    Failed(String),
    /// This node could not judge, by its own fault: nothing is reported. (The node's driver no
    /// longer says this of a commitment block it cannot get: the provider must show it, so
    /// that is `Failed`, THREATS P4.)
    Unjudged(String),
}

/// What happens to the role machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The ledger after a block (or a rescan: start, restart, the driver lagged).
    Ledger(LedgerFacts),
    /// The ledger replica learned from the arbitrators that it is at the chain's tip.
    CaughtUp {
        /// Its height.
        height: u64,
    },
    /// A peer's liveness changed.
    Presence(Presence),
    /// Time passed (at least at every [`Effect::WakeAt`]).
    Tick,
    /// The operator made `image` the node's own service (the driver persisted it).
    SetOwn {
        /// Image CID.
        image: Cid,
    },
    /// [`Effect::Stage`] succeeded: the image is fetched, verified and compiled.
    Staged {
        /// Which service.
        service: ServiceRef,
        /// Devices its manifest names.
        devices: Vec<DeviceId>,
    },
    /// [`Effect::Stage`] failed.
    StageFailed {
        /// Which service.
        service: ServiceRef,
        /// Why.
        error: String,
        /// Trying again cannot cure it (the image does not decode, verify or compile, or asks
        /// for more than the host allows: the host's `StageError::permanent`).
        permanent: bool,
    },
    /// [`Effect::TakeCustody`] succeeded: the file is fetched, checked and pinned.
    CustodyTaken {
        /// The storage contract.
        contract: ContractId,
    },
    /// [`Effect::TakeCustody`] failed (e.g. the commitment does not describe the file).
    CustodyRefused {
        /// The storage contract.
        contract: ContractId,
        /// Why.
        error: String,
    },
    /// [`Effect::Activate`] done: the service runs and its devices are assigned to it.
    ActivationDone {
        /// Which service.
        service: ServiceRef,
        /// When the service started (driver's clock), before its devices were taken over.
        started_at: Timestamp,
        /// Buffered readings replayed to it.
        replayed: u64,
    },
    /// [`Effect::Activate`] failed: the service did not start.
    ActivationFailed {
        /// Which service.
        service: ServiceRef,
        /// Why.
        error: String,
    },
    /// [`Effect::Meter`]'s answer.
    Metered {
        /// The contract.
        contract: ContractId,
        /// Whether the service runs.
        running: bool,
        /// Readings fed to it so far on this node (all its devices).
        processed: u64,
        /// Data-proof CIDs of this node's checkpoints for the service, oldest first.
        proofs: Vec<Cid>,
    },
    /// [`Effect::Challenge`]'s outcome.
    AuditAnswer {
        /// The storage contract.
        contract: ContractId,
        /// The verdict.
        verdict: AuditVerdict,
    },
    /// [`Effect::Probe`]'s outcome, as soon as it is known. A provider that does not answer
    /// within the probe's `timeout_ms` needs no input: the machine counts the silence as down.
    ProbeAnswer {
        /// The hosted or standby contract.
        contract: ContractId,
        /// The probe interval the effect named.
        interval: u64,
        /// The provider answered that the contract's service runs.
        up: bool,
    },
    /// [`Effect::InstanceRivals`]'s answer: the other services staged here that share the
    /// contract's module and instance group (stopped ones left out; ids that are not contract
    /// ids dropped by the driver), and how many instances the module allows.
    InstanceRivals {
        /// The contract about to be armed.
        contract: ContractId,
        /// The module's `max_instances` (`u32::MAX` when the host does not limit it).
        max: u32,
        /// The rivals' contracts.
        rivals: Vec<ContractId>,
    },
    /// [`Effect::Submit`]'s outcome: admitted to the mempool, or refused.
    Submitted {
        /// The transaction kind submitted.
        tx: TxKind,
        /// Whether the ledger admitted it.
        accepted: bool,
    },
}

/// A step for `agora timeline` (the driver stamps the time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Phase name: migrated, armed, attested-down, activated, settled, …
    pub phase: String,
    /// Contract concerned.
    pub contract: Option<ContractId>,
    /// Details.
    pub detail: String,
    /// A latency this step measured (handover block arrival → service running), ms.
    pub latency_ms: Option<u64>,
}

impl Note {
    pub(super) fn new(
        phase: &str,
        contract: Option<ContractId>,
        detail: impl Into<String>,
    ) -> Self {
        Note {
            phase: phase.to_string(),
            contract,
            detail: detail.into(),
            latency_ms: None,
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Sign and submit a transaction; answer [`Input::Submitted`].
    Submit(TxKind),
    /// Fetch, verify and compile a service image; answer [`Input::Staged`] or
    /// [`Input::StageFailed`].
    Stage {
        /// Which service.
        service: ServiceRef,
        /// Image CID.
        image: Cid,
    },
    /// Start a staged service, then assign its devices to it in the readings machine
    /// (`readings::Input::Assign`, `reclaim` as given) and answer [`Input::ActivationDone`]
    /// once it reports `Assigned` (or [`Input::ActivationFailed`]).
    Activate {
        /// Which service.
        service: ServiceRef,
        /// Its devices.
        devices: Vec<DeviceId>,
        /// Taking the node's own devices back after a handback.
        reclaim: bool,
    },
    /// Stop a service.
    StopService {
        /// Which service.
        service: ServiceRef,
    },
    /// Give devices up (`readings::Input::Release`: a last checkpoint that releases them).
    YieldDevices {
        /// Devices.
        devices: Vec<DeviceId>,
    },
    /// Label devices as covered on standby (`readings::Input::Listen`).
    Listen {
        /// Devices.
        devices: Vec<DeviceId>,
        /// On or off.
        on: bool,
    },
    /// Storage provider: fetch, check and pin the file; answer [`Input::CustodyTaken`] or
    /// [`Input::CustodyRefused`].
    TakeCustody {
        /// The storage contract.
        contract: ContractId,
        /// The file.
        file: Cid,
        /// The customer's chunk commitment block.
        commitment: Cid,
        /// Largest file the contract buys.
        max_bytes: u64,
    },
    /// Storage provider: the contract closed; unpin the file and the commitment.
    ReleaseCustody {
        /// The storage contract.
        contract: ContractId,
        /// The file.
        file: Cid,
        /// The commitment block.
        commitment: Cid,
    },
    /// Keep a direct connection to a peer and report its presence.
    Watch(NodeId),
    /// Stop watching a peer.
    Unwatch(NodeId),
    /// Challenge a storage provider once; answer [`Input::AuditAnswer`].
    Challenge {
        /// The storage contract.
        contract: ContractId,
        /// Who must answer.
        provider: NodeId,
        /// The stored file.
        file: Cid,
        /// The commitment block (the driver may cache the decoded commitment).
        commitment: Cid,
    },
    /// Arbitrator: ask the provider whether the contract's service runs; answer
    /// [`Input::ProbeAnswer`] (`up: false` when it answers that it does not, or refuses); give
    /// up after `timeout_ms` without answering (the machine reports the silence as down).
    Probe {
        /// The hosted or standby contract.
        contract: ContractId,
        /// Whose service to probe.
        provider: NodeId,
        /// The probe interval this probe observes (`ContractRecord::evidence_round` of now).
        interval: u64,
        /// How long the provider has to answer.
        timeout_ms: u64,
    },
    /// Before arming a hosted or standby contract: ask the service host which services here
    /// share its service's module and instance group; answer [`Input::InstanceRivals`]
    /// (THREATS C5, `instances.rs`).
    InstanceRivals {
        /// The contract about to be armed (its service id is the contract id).
        contract: ContractId,
    },
    /// Measure a running contract service; answer [`Input::Metered`].
    Meter {
        /// The contract.
        contract: ContractId,
        /// Its service.
        service: ServiceRef,
        /// Its devices.
        devices: Vec<DeviceId>,
    },
    /// Who may feed which device now: hand to the readings machine
    /// (`readings::Input::Authority`).
    Authority(BTreeMap<DeviceId, DeviceAuthority>),
    /// Answer to [`Input::SetOwn`]: the own service's devices once staged, or why not.
    OwnSet(Result<Vec<DeviceId>, String>),
    /// Record a timeline entry.
    Timeline(Note),
    /// Deliver [`Input::Tick`] at or after this time (the latest `WakeAt` replaces earlier).
    WakeAt(Timestamp),
}
