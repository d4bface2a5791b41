//! Why a provider refuses to countersign: one variant per check, carrying expected and got.

use agora_market::{AwardId, NodeId, Timestamp};
use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::contract::{ActivationClause, ContractKind};

/// A numeric field of the contract compared with the agreed terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TermsField {
    /// `Contract::payment`.
    Payment,
    /// `Contract::terms.price`.
    Price,
    /// `Contract::duration_ms`.
    Duration,
    /// `Contract::terms.duration_ms`.
    TermsDuration,
    /// `Contract::terms.cpu_millis`.
    Cpu,
    /// `Contract::terms.memory_bytes`.
    Memory,
    /// `Contract::terms.storage_bytes`.
    Storage,
}

/// Why the provider refuses a proposed contract. Serialisable: the node sends it back to the
/// customer in `DealMsg::Refused`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum DealRefusal {
    /// The provider has no agreed terms for this award (yet): the customer may retry shortly.
    #[error("unknown award {award}; this provider has not agreed to it (yet)")]
    UnknownAward {
        /// The award.
        award: AwardId,
    },
    /// The capacity this provider held for the award has lapsed (no contract was proposed
    /// within the market's hold, 11 min after the award): it may be sold again, so this
    /// provider signs nothing more for the award (THREATS C20).
    #[error(
        "the capacity held for award {award} has lapsed (no contract within 11 min of the \
         award); auction again"
    )]
    HoldLapsed {
        /// The award.
        award: AwardId,
    },
    /// This provider already awaits the registration of as many countersigned contracts as it
    /// follows at once (1,024): signing more would leave their capacity held only briefly.
    #[error(
        "this provider awaits the registration of too many contracts; propose award {award} again later"
    )]
    Busy {
        /// The award.
        award: AwardId,
    },
    /// The proposal was not sent by the contract's customer.
    #[error("proposal sent by {sender} but the contract's customer is {customer}")]
    SenderNotCustomer {
        /// Who sent it.
        sender: NodeId,
        /// The contract's customer.
        customer: NodeId,
    },
    /// The customer is not the award's.
    #[error("contract customer is {got} but the award's customer is {expected}")]
    WrongCustomer {
        /// The agreed customer.
        expected: NodeId,
        /// The contract's.
        got: NodeId,
    },
    /// The provider is not this node / the award's.
    #[error("contract provider is {got} but this provider is {expected}")]
    WrongProvider {
        /// This node.
        expected: NodeId,
        /// The contract's.
        got: NodeId,
    },
    /// The kind differs from the auction's.
    #[error("contract kind is {got:?} but the award is for {expected:?}")]
    WrongKind {
        /// Agreed.
        expected: ContractKind,
        /// Proposed.
        got: ContractKind,
    },
    /// A number differs from the agreed terms.
    #[error("contract {field:?} is {got} but the agreed terms say {expected}")]
    TermsDiffer {
        /// Which field.
        field: TermsField,
        /// Agreed.
        expected: u64,
        /// Proposed.
        got: u64,
    },
    /// The interfaces differ from the agreed resources.
    #[error("contract interfaces are {got:?} but the agreed resources say {expected:?}")]
    InterfacesDiffer {
        /// Agreed.
        expected: Vec<String>,
        /// Proposed.
        got: Vec<String>,
    },
    /// The auction named an image that is not a CID.
    #[error("the auction's service image '{image}' is not a CID; no contract can carry it")]
    AuctionImageInvalid {
        /// The text.
        image: String,
    },
    /// The image differs from the one the auction named.
    #[error("contract image is {got} but the auction named {expected}")]
    ImageDiffers {
        /// The auction's.
        expected: Box<Cid>,
        /// Proposed.
        got: Box<Cid>,
    },
    /// A hosted or standby contract's config is not its image.
    #[error("contract config is {got} but a {kind:?} contract's config is its image {expected}")]
    ConfigDiffers {
        /// The contract kind.
        kind: ContractKind,
        /// The image.
        expected: Box<Cid>,
        /// Proposed.
        got: Box<Cid>,
    },
    /// The activation clause does not fit the kind or the agreed start time.
    #[error(
        "activation {got:?} does not fit a {kind:?} contract starting {start_at:?}: standby \
         activates on handover, hosted and storage at the auction's start time or immediately"
    )]
    WrongActivation {
        /// The contract kind.
        kind: ContractKind,
        /// The auction's start time.
        start_at: Option<Timestamp>,
        /// Proposed.
        got: ActivationClause,
    },
    /// The standby handover delay is outside what this provider accepts.
    #[error("handover after {got} ms of outage is outside this provider's {min}..={max} ms")]
    HandoverDelayOutOfBounds {
        /// Policy minimum.
        min: u64,
        /// Policy maximum.
        max: u64,
        /// Proposed.
        got: u64,
    },
    /// The minimum uptime is stricter than this provider accepts.
    #[error("minimum uptime {got}‰ is stricter than this provider's limit of {max}‰")]
    UptimeTooStrict {
        /// Policy maximum.
        max: u16,
        /// Proposed.
        got: u16,
    },
    /// The activation deadline is shorter than this provider accepts.
    #[error("activation within {got} ms is shorter than this provider's minimum of {min} ms")]
    ActivationDelayTooShort {
        /// Policy minimum.
        min: u64,
        /// Proposed.
        got: u64,
    },
    /// A pre-contracted slot that must be active by `deadline`, less than this provider's
    /// `min` activation time from `now`.
    #[error(
        "the slot starting at {start_at} must be active by {deadline}, less than this \
         provider's {min} ms from now ({now}): it began before the contract could exist"
    )]
    SlotAlreadyDue {
        /// The slot's start.
        start_at: Timestamp,
        /// Start plus the contract's activation delay.
        deadline: Timestamp,
        /// The provider's clock.
        now: Timestamp,
        /// Policy minimum activation time.
        min: u64,
    },
    /// A pre-contracted slot that starts more than this provider's `max_lead_ms` from `now`.
    #[error(
        "the slot starting at {start_at} is more than this provider's {max_lead_ms} ms from \
         now ({now}): its capacity would be held until then; auction a slot sooner"
    )]
    SlotTooFarAhead {
        /// The slot's start.
        start_at: Timestamp,
        /// The provider's clock.
        now: Timestamp,
        /// Policy maximum lead.
        max_lead_ms: u64,
    },
    /// The heartbeat interval is outside what this provider accepts.
    #[error("heartbeat interval {got} ms is outside this provider's {min}..={max} ms")]
    HeartbeatIntervalOutOfBounds {
        /// Policy minimum.
        min: u64,
        /// Policy maximum.
        max: u64,
        /// Proposed.
        got: u64,
    },
    /// The provider's stake exceeds its limit.
    #[error("provider stake {got} exceeds this provider's limit {max}")]
    ProviderStakeTooHigh {
        /// Policy limit for this price.
        max: u64,
        /// Proposed.
        got: u64,
    },
    /// The customer's stake is below the provider's minimum.
    #[error("customer stake {got} is below this provider's minimum {min}")]
    CustomerStakeTooLow {
        /// Policy minimum for this price.
        min: u64,
        /// Proposed.
        got: u64,
    },
    /// The committee is smaller than the ledger requires.
    #[error("committee of {got} is smaller than the ledger's minimum {min}")]
    CommitteeTooSmall {
        /// The ledger minimum.
        min: usize,
        /// Proposed size.
        got: usize,
    },
    /// The committee is not the ledger's eligible arbitrators minus the parties.
    #[error("committee {got:?} is not the ledger's arbitrators minus the parties {expected:?}")]
    CommitteeDiffers {
        /// What this provider's ledger view gives.
        expected: Vec<NodeId>,
        /// Proposed.
        got: Vec<NodeId>,
    },
    /// `created_at` is too far from the provider's clock.
    #[error(
        "contract created at {got}, more than {max_skew_ms} ms from this provider's clock {now}"
    )]
    CreatedAtOutOfBounds {
        /// Provider clock.
        now: Timestamp,
        /// Proposed.
        got: Timestamp,
        /// Policy bound.
        max_skew_ms: u64,
    },
    /// The nonce is not the award's.
    #[error("contract nonce {got} is not the award's {expected}")]
    WrongNonce {
        /// `deal_nonce(award)`.
        expected: u64,
        /// Proposed.
        got: u64,
    },
    /// The contract is not self-consistent.
    #[error("contract is malformed: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The customer's signature does not verify.
    #[error("the customer's signature does not verify over this exact contract")]
    BadCustomerSignature,
}
