//! Deals become contracts: what the customer proposes from the agreed market terms, and what
//! the provider checks before it countersigns. Pure: the node looks up the auction, the
//! ledger's committee and (for storage) the file's commitment, then calls these.
//!
//! Customer side ([`build_contract`]): every field follows from the [`AgreedTerms`], the
//! customer's [`ProposalPolicy`] (the `[deals]` config's customer side: stakes, QoS, handover
//! delay), the ledger's eligible arbitrators ([`CommitteeView`]), the auction's image and start
//! time ([`AuctionFacts`]), the storage commitment and `now`. The nonce is [`deal_nonce`] of
//! the award, so a retry proposes the same contract and the provider can check it.
//!
//! Provider side ([`check_proposal`]): compares every field of the proposed contract against
//! the provider's own copy of the agreed terms, its own view of the auction and the ledger, and
//! its [`DealPolicy`] (the `[deals]` config's provider side: what QoS and stakes it accepts).
//! A refusal is a typed [`DealRefusal`] naming the field, what was expected and what was got;
//! it is serialisable so the node can send it back in `DealMsg::Refused`.

use agora_market::{AgreedTerms, AuctionKind, AwardId, Interface, NodeId, Resources, Timestamp};
use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::contract::{
    ActivationClause, Contract, ContractError, ContractKind, Qos, Stakes, Terms,
};
use crate::ledger::Ledger;

mod check;
mod refusal;
#[cfg(test)]
mod tests;

pub use check::check_proposal;
pub use refusal::{DealRefusal, TermsField};

/// CID of the empty UnixFS file: the service image of deals made before an image is attached.
pub const EMPTY_IMAGE: &str = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH";

/// What the customer proposes (the `[deals]` config's customer side).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProposalPolicy {
    /// Customer stake, permille of the price.
    pub customer_stake_permille: u64,
    /// Provider stake, permille of the price.
    pub provider_stake_permille: u64,
    /// Standby contracts: how long the customer must be unreachable before handover.
    pub handover_after_ms: u64,
    /// QoS: longest delay from trigger to activation.
    pub max_activation_delay_ms: u64,
    /// QoS: minimum uptime, permille.
    pub min_uptime_permille: u16,
    /// QoS: heartbeat interval while active.
    pub heartbeat_interval_ms: u64,
    /// Service image used when the auction names none (the node's `deals.service_image`).
    pub service_image: Cid,
}

impl Default for ProposalPolicy {
    fn default() -> Self {
        ProposalPolicy {
            customer_stake_permille: 100,
            provider_stake_permille: 500,
            handover_after_ms: 3_000,
            max_activation_delay_ms: 5_000,
            min_uptime_permille: 900,
            heartbeat_interval_ms: 1_000,
            service_image: EMPTY_IMAGE.parse().unwrap_or_default(),
        }
    }
}

/// What a provider accepts (the `[deals]` config's provider side). The defaults accept what
/// the default [`ProposalPolicy`] and the devnet's (handover after 1 s, heartbeats every
/// 500 ms) propose, and refuse obligations no provider can meet (100 % uptime, activation
/// within 0 ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DealPolicy {
    /// Largest provider stake accepted, permille of the price.
    pub max_provider_stake_permille: u64,
    /// Smallest customer stake accepted, permille of the price.
    pub min_customer_stake_permille: u64,
    /// Strictest minimum uptime (or storage pass rate) accepted, permille.
    pub max_min_uptime_permille: u16,
    /// Shortest activation deadline accepted (ms from trigger to activation).
    pub min_activation_delay_ms: u64,
    /// Shortest heartbeat interval accepted.
    pub min_heartbeat_interval_ms: u64,
    /// Longest heartbeat interval accepted.
    pub max_heartbeat_interval_ms: u64,
    /// Shortest outage before a standby handover that is accepted.
    pub min_handover_after_ms: u64,
    /// Longest outage before a standby handover that is accepted.
    pub max_handover_after_ms: u64,
    /// How far the contract's `created_at` may lie from the provider's clock.
    pub max_clock_skew_ms: u64,
    /// Furthest ahead of the provider's clock a pre-contracted slot may start: its capacity
    /// and stake are held until the slot ends (THREATS C34; the market's own bound by
    /// default).
    pub max_slot_lead_ms: u64,
}

impl Default for DealPolicy {
    fn default() -> Self {
        DealPolicy {
            max_provider_stake_permille: 1_000,
            min_customer_stake_permille: 50,
            max_min_uptime_permille: 950,
            min_activation_delay_ms: 2_000,
            min_heartbeat_interval_ms: 250,
            max_heartbeat_interval_ms: 600_000,
            min_handover_after_ms: 500,
            max_handover_after_ms: 86_400_000,
            max_clock_skew_ms: 60_000,
            max_slot_lead_ms: agora_market::validate::DEFAULT_MAX_SLOT_LEAD_MS,
        }
    }
}

/// What the auction behind an award said, as the node's market read it when the deal was
/// agreed (`agora_market::Agreement::auction`; the provider's: as it bid on it, THREATS C36).
pub use agora_market::AuctionFacts;

/// The ledger's arbitrators new contracts may name, and the least a committee may hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitteeView {
    /// Genesis arbitrators not slashed for equivocation, sorted.
    pub arbitrators: Vec<NodeId>,
    /// `LedgerParams::min_committee`.
    pub min_size: usize,
}

impl CommitteeView {
    /// The view of `ledger` (the node queries this from its ledger task).
    pub fn of(ledger: &Ledger) -> Self {
        CommitteeView {
            arbitrators: ledger.eligible_committee(),
            min_size: ledger.params().min_committee,
        }
    }

    /// The committee of a contract between `customer` and `provider`: every eligible
    /// arbitrator but the two parties, sorted.
    pub fn for_parties(&self, customer: NodeId, provider: NodeId) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = self
            .arbitrators
            .iter()
            .filter(|a| **a != customer && **a != provider)
            .copied()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// What both sides need besides their policy: the agreed terms, the ledger's committee, the
/// auction, and the local clock.
#[derive(Clone, Copy, Debug)]
pub struct DealContext<'a> {
    /// The agreed terms (the customer's, or the provider's own copy).
    pub terms: &'a AgreedTerms,
    /// The local ledger view's committee.
    pub committee: &'a CommitteeView,
    /// The auction behind the award, from the local market book.
    pub auction: &'a AuctionFacts,
    /// Local clock (ms).
    pub now: Timestamp,
}

/// Why the customer cannot build a contract.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DealError {
    /// The auction's image is not a CID.
    #[error(
        "the auction's service image '{image}' is not a CID; publish the image and name its CID"
    )]
    BadImage {
        /// The text.
        image: String,
    },
    /// A storage deal needs the file's commitment.
    #[error(
        "storage deal for award {award} has no commitment; commit the file (storage commit) first"
    )]
    MissingCommitment {
        /// The award.
        award: AwardId,
    },
    /// Too few arbitrators besides the parties.
    #[error(
        "only {got} arbitrators besides the two parties but the ledger requires {min}; the \
         chain needs more arbitrators (or fewer parties among them)"
    )]
    CommitteeTooSmall {
        /// Required.
        min: usize,
        /// Available.
        got: usize,
    },
    /// The terms do not make a valid contract.
    #[error(transparent)]
    Contract(#[from] ContractError),
}

/// The contract kind an auction kind buys.
pub fn kind_of(kind: AuctionKind) -> ContractKind {
    match kind {
        AuctionKind::Hosted => ContractKind::Hosted,
        AuctionKind::Standby => ContractKind::Standby,
        AuctionKind::Storage => ContractKind::Storage,
    }
}

/// The contract nonce of an award: its first 8 bytes, so a retry proposes the same contract.
pub fn deal_nonce(award: &AwardId) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&award.0[..8]);
    u64::from_le_bytes(bytes)
}

/// The contract's interface list for agreed resources (`"lora:1"`, sorted by interface).
pub fn interfaces_of(resources: &Resources) -> Vec<String> {
    resources
        .interfaces
        .iter()
        .map(|(i, n)| format!("{i:?}:{n}").to_lowercase())
        .collect()
}

/// What a contract's terms hold on its provider: the amounts [`build_contract`] copies and the
/// interfaces back from [`interfaces_of`] (a provider restarted while the contract runs holds
/// them again, THREATS C35). The terms carry no bandwidth, uptime or battery: they come back
/// as none. An interface name this crate does not know is left out; counts saturate.
pub fn resources_of(terms: &Terms) -> Resources {
    let mut r = Resources {
        cpu_millis: terms.cpu_millis,
        memory_bytes: terms.memory_bytes,
        storage_bytes: terms.storage_bytes,
        ..Resources::default()
    };
    for entry in &terms.interfaces {
        let Some((name, count)) = entry.split_once(':') else {
            continue;
        };
        let known = Interface::ALL
            .into_iter()
            .find(|i| format!("{i:?}").eq_ignore_ascii_case(name));
        let (Some(iface), Ok(count)) = (known, count.parse::<u32>()) else {
            continue;
        };
        if count > 0 {
            let slot = r.interfaces.entry(iface).or_insert(0);
            *slot = slot.saturating_add(count);
        }
    }
    r
}

/// The service image a contract for this auction carries: the auction's, else `default`.
pub fn contract_image(auction: &AuctionFacts, default: Cid) -> Result<Cid, DealError> {
    match &auction.image {
        Some(text) => text.parse().map_err(|_| DealError::BadImage {
            image: text.clone(),
        }),
        None => Ok(default),
    }
}

/// The contract the customer proposes. `storage_commitment` is the chunk commitment of the
/// image (the file) for storage deals (the node computes it from [`contract_image`]); other
/// kinds ignore it and carry the image as config.
pub fn build_contract(
    ctx: &DealContext<'_>,
    policy: &ProposalPolicy,
    storage_commitment: Option<Cid>,
) -> Result<Contract, DealError> {
    let t = ctx.terms;
    let committee = ctx.committee.for_parties(t.customer, t.provider);
    if committee.len() < ctx.committee.min_size {
        return Err(DealError::CommitteeTooSmall {
            min: ctx.committee.min_size,
            got: committee.len(),
        });
    }
    let image = contract_image(ctx.auction, policy.service_image)?;
    let kind = kind_of(t.kind);
    let config = match kind {
        ContractKind::Storage => {
            storage_commitment.ok_or(DealError::MissingCommitment { award: t.award })?
        }
        _ => image,
    };
    let activation = match kind {
        ContractKind::Standby => ActivationClause::OnHandover {
            unreachable_for_ms: policy.handover_after_ms,
        },
        _ => match ctx.auction.start_at {
            Some(at) => ActivationClause::At(at),
            None => ActivationClause::Immediately,
        },
    };
    let permille = |p: u64| stake_of(t.price, p);
    let contract = Contract {
        customer: t.customer,
        provider: t.provider,
        terms: Terms {
            cpu_millis: t.resources.cpu_millis,
            memory_bytes: t.resources.memory_bytes,
            storage_bytes: t.resources.storage_bytes,
            interfaces: interfaces_of(&t.resources),
            price: t.price,
            duration_ms: t.duration_ms,
        },
        service_image: image,
        config,
        activation,
        kind,
        duration_ms: t.duration_ms,
        qos: Qos {
            max_activation_delay_ms: policy.max_activation_delay_ms,
            min_uptime_permille: policy.min_uptime_permille,
            heartbeat_interval_ms: policy.heartbeat_interval_ms,
        },
        stakes: Stakes {
            customer_stake: permille(policy.customer_stake_permille),
            provider_stake: permille(policy.provider_stake_permille),
        },
        payment: t.price,
        committee,
        created_at: ctx.now,
        nonce: deal_nonce(&t.award),
    };
    contract.validate()?;
    Ok(contract)
}

/// `price × permille / 1000`, rounded down, without overflow.
pub fn stake_of(price: u64, permille: u64) -> u64 {
    let v = u128::from(price) * u128::from(permille) / 1000;
    u64::try_from(v).unwrap_or(u64::MAX)
}
