//! Facts the ledger emits; the node turns them into actions (start a service, notify a party).

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::contract::{Amount, ContractId};
use crate::lifecycle::ContractStatus;

/// Why a provider was found in breach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BreachReason {
    /// Activated later than `max_activation_delay_ms` after the trigger.
    LateActivation {
        /// Observed delay.
        delay_ms: u64,
    },
    /// Never activated although the trigger fired and the deadline passed.
    NoActivation,
    /// Uptime below `min_uptime_permille`.
    InsufficientUptime {
        /// Measured uptime in thousandths.
        permille: u64,
    },
    /// Too many failed storage challenges.
    FailedStorageProofs {
        /// Passed share in thousandths.
        permille: u64,
    },
    /// A quorum of the committee confirmed the service down for too long.
    ConfirmedDowntime {
        /// Share of the service span not confirmed down, in thousandths.
        permille: u64,
    },
}

/// Something that happened on the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerEvent {
    /// Tokens moved between accounts.
    Transferred {
        /// Sender.
        from: NodeId,
        /// Recipient.
        to: NodeId,
        /// Amount.
        amount: Amount,
    },
    /// Faucet minted tokens.
    Minted {
        /// Recipient.
        to: NodeId,
        /// Amount.
        amount: Amount,
    },
    /// A contract was registered and its funds locked.
    ContractRegistered {
        /// The contract.
        contract: ContractId,
        /// Customer.
        customer: NodeId,
        /// Provider.
        provider: NodeId,
        /// Total locked in escrow.
        locked: Amount,
    },
    /// A contract changed state.
    StatusChanged {
        /// The contract.
        contract: ContractId,
        /// Old state.
        from: ContractStatus,
        /// New state.
        to: ContractStatus,
    },
    /// An arbitrator's observation was recorded.
    AttestationRecorded {
        /// The arbitrator.
        attester: NodeId,
        /// The observed node.
        subject: NodeId,
        /// Whether it was reported unreachable.
        unreachable: bool,
    },
    /// The committee quorum agrees the customer is down: the provider must take over now.
    HandoverAttested {
        /// The standby contract.
        contract: ContractId,
        /// The unreachable customer.
        customer: NodeId,
        /// The provider that must activate.
        provider: NodeId,
        /// Agreed start of the outage.
        unreachable_since: Timestamp,
        /// Ledger time of the decision (activation deadline counts from here).
        at: Timestamp,
        /// The arbitrators forming the quorum.
        agreeing: Vec<NodeId>,
    },
    /// The provider reported activation.
    Activated {
        /// The contract.
        contract: ContractId,
        /// Activation time.
        at: Timestamp,
        /// Delay after the trigger.
        delay_ms: u64,
    },
    /// Heartbeat evidence accepted.
    HeartbeatsRecorded {
        /// The contract.
        contract: ContractId,
        /// Total uptime so far.
        uptime_ms: u64,
        /// Total readings so far.
        readings_processed: u64,
    },
    /// One committee member's storage challenge report was recorded (it counts once a quorum
    /// agrees, see `StorageProofRecorded`).
    AuditReportRecorded {
        /// The contract.
        contract: ContractId,
        /// The audit round.
        round: u64,
        /// The reporting arbitrator.
        reporter: NodeId,
        /// Whether its challenge passed.
        passed: bool,
    },
    /// A quorum of the committee agreed on an audit round's outcome: it counts at settlement.
    StorageProofRecorded {
        /// The contract.
        contract: ContractId,
        /// The audit round.
        round: u64,
        /// Whether it passed.
        passed: bool,
    },
    /// One committee member's probe report was recorded (it counts once a quorum agrees, see
    /// `UptimeConfirmed`).
    ProbeRecorded {
        /// The contract.
        contract: ContractId,
        /// The probe interval.
        interval: u64,
        /// The reporting arbitrator.
        reporter: NodeId,
        /// Whether the service answered.
        up: bool,
    },
    /// A quorum of the committee agreed on a probe interval: service up (paid) or down.
    UptimeConfirmed {
        /// The contract.
        contract: ContractId,
        /// The probe interval.
        interval: u64,
        /// Up or down.
        up: bool,
        /// Length of the interval (ms).
        ms: u64,
        /// Total confirmed up so far (ms).
        confirmed_up_ms: u64,
    },
    /// An arbitrator was proven to equivocate: its bond was burned and it is left out of new
    /// contract committees.
    ArbitratorSlashed {
        /// The equivocating arbitrator.
        arbitrator: NodeId,
        /// Who reported the evidence.
        reporter: NodeId,
        /// Height of the conflicting votes.
        height: u64,
        /// Round of the conflicting votes.
        round: u32,
        /// Bond burned.
        amount: Amount,
    },
    /// Escrowed payment went to the provider.
    Paid {
        /// The contract.
        contract: ContractId,
        /// Provider.
        to: NodeId,
        /// Amount.
        amount: Amount,
    },
    /// Escrowed payment or stake went back to its owner.
    Refunded {
        /// The contract.
        contract: ContractId,
        /// Owner.
        to: NodeId,
        /// Amount.
        amount: Amount,
    },
    /// The provider's stake went to the customer.
    Slashed {
        /// The contract.
        contract: ContractId,
        /// Provider.
        provider: NodeId,
        /// Customer who receives the stake.
        customer: NodeId,
        /// Amount.
        amount: Amount,
        /// Why.
        reason: BreachReason,
    },
    /// Settlement was asked for while the provider's latest heartbeats may still be in flight:
    /// the contract is judged when they arrive, or at `until` at the latest.
    SettlementPending {
        /// The contract.
        contract: ContractId,
        /// End of the service judged.
        end: Timestamp,
        /// Judged at this ledger time at the latest.
        until: Timestamp,
    },
    /// A settlement judges the service up to `end`: what decided probe rounds counted past it
    /// was taken out of the contract's confirmed time (`up_ms`, `down_ms`).
    EvidenceTrimmed {
        /// The contract.
        contract: ContractId,
        /// End of the service judged.
        end: Timestamp,
        /// Confirmed-up time taken out.
        up_ms: u64,
        /// Confirmed-down time taken out.
        down_ms: u64,
        /// Confirmed-up time after it.
        confirmed_up_ms: u64,
    },
    /// An account's reputation changed.
    ReputationChanged {
        /// The account.
        account: NodeId,
        /// Change.
        delta: i64,
        /// New value.
        reputation: i64,
    },
}
