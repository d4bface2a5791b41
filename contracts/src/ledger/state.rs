//! Ledger state records: accounts, escrow locks and per-contract records.

use agora_market::Timestamp;
use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::attestation::HandoverDecision;
use crate::contract::{ActivationClause, Amount, Contract, ContractKind};
use crate::lifecycle::ContractStatus;

/// One account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Spendable tokens.
    pub balance: Amount,
    /// Next transaction nonce the ledger accepts from this account.
    pub nonce: u64,
    /// Reputation score (starts at 0; up when honoured, down when breached).
    pub reputation: i64,
    /// Tokens this account has locked in contract escrows (payments and stakes).
    pub locked: Amount,
}

/// Funds a contract holds in escrow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escrow {
    /// Customer's payment not yet paid out or refunded.
    pub payment: Amount,
    /// Customer's stake.
    pub customer_stake: Amount,
    /// Provider's stake.
    pub provider_stake: Amount,
}

impl Escrow {
    /// Everything still held.
    pub fn total(&self) -> Option<Amount> {
        self.payment
            .checked_add(self.customer_stake)?
            .checked_add(self.provider_stake)
    }
}

/// A registered contract and the evidence gathered about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractRecord {
    /// The verified contract body.
    pub contract: Contract,
    /// Where it is in its lifecycle.
    pub status: ContractStatus,
    /// Funds held.
    pub escrow: Escrow,
    /// Ledger time of registration.
    pub registered_at: Timestamp,
    /// When the provider armed.
    pub armed_at: Option<Timestamp>,
    /// When activation became due (armed / fixed time / handover attested).
    pub trigger_at: Option<Timestamp>,
    /// The committee decision, for standby contracts that were handed over.
    pub handover: Option<HandoverDecision>,
    /// Reported activation time.
    pub activated_at: Option<Timestamp>,
    /// Total reported uptime.
    pub uptime_ms: u64,
    /// End of the last reported uptime interval (later reports must start after it).
    pub last_uptime_end: Option<Timestamp>,
    /// Readings processed so far.
    pub readings_processed: u64,
    /// Number of data-integrity proofs reported.
    pub data_proof_count: u64,
    /// The most recent data-integrity proof.
    pub last_data_proof: Option<Cid>,
    /// Storage challenges passed.
    pub storage_passed: u64,
    /// Storage challenges failed.
    pub storage_failed: u64,
    /// Payment already released to the provider.
    pub paid_to_provider: Amount,
    /// When it reached a final state.
    pub closed_at: Option<Timestamp>,
    /// A settlement waiting for the provider's in-flight heartbeats: the end being judged.
    #[serde(default)]
    pub closing: Option<Timestamp>,
}

impl ContractRecord {
    /// A fresh record at registration.
    pub fn new(contract: Contract, now: Timestamp) -> Option<Self> {
        let escrow = Escrow {
            payment: contract.payment,
            customer_stake: contract.stakes.customer_stake,
            provider_stake: contract.stakes.provider_stake,
        };
        escrow.total()?;
        let trigger_at = match contract.activation {
            ActivationClause::At(t) => Some(t),
            _ => None,
        };
        Some(ContractRecord {
            contract,
            status: ContractStatus::Validated,
            escrow,
            registered_at: now,
            armed_at: None,
            trigger_at,
            handover: None,
            activated_at: None,
            uptime_ms: 0,
            last_uptime_end: None,
            readings_processed: 0,
            data_proof_count: 0,
            last_data_proof: None,
            storage_passed: 0,
            storage_failed: 0,
            paid_to_provider: 0,
            closed_at: None,
            closing: None,
        })
    }

    /// Start of the paid service window: registration for standby (the coverage window),
    /// activation otherwise.
    pub fn window_start(&self) -> Option<Timestamp> {
        match self.contract.kind {
            ContractKind::Standby => Some(self.registered_at),
            ContractKind::Hosted | ContractKind::Storage => self.activated_at,
        }
    }

    /// End of the paid service window.
    pub fn window_end(&self) -> Option<Timestamp> {
        self.window_start()?.checked_add(self.contract.duration_ms)
    }

    /// How long a pending settlement waits for the provider's heartbeats after its end.
    pub fn closing_grace_ms(&self) -> u64 {
        self.contract
            .qos
            .heartbeat_interval_ms
            .saturating_mul(2)
            .saturating_add(2_000)
    }

    /// Latest time activation may be reported without breach, once the trigger fired.
    pub fn activation_deadline(&self) -> Option<Timestamp> {
        self.trigger_at?
            .checked_add(self.contract.qos.max_activation_delay_ms)
    }
}
