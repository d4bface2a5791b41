//! Ledger state records: accounts, escrow locks and per-contract records.

use agora_market::Timestamp;
use cid::Cid;
use serde::{Deserialize, Serialize};

use super::quorum::RoundTally;
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
    /// An arbitrator's bond, locked at genesis; burned if it is proven to equivocate.
    #[serde(default)]
    pub bonded: Amount,
    /// Everything the faucet has minted to this account (bounded by
    /// `LedgerParams::faucet_max_per_account`).
    #[serde(default)]
    pub faucet_received: Amount,
    /// Contract records the ledger holds whose customer this account is (open, or closed and
    /// not forgotten yet): at most `LedgerParams::max_contracts_per_customer`.
    #[serde(default)]
    pub contracts_held: u32,
}

impl Account {
    /// Everything the account owns: spendable, locked in escrow and bonded.
    pub fn holdings(&self) -> Amount {
        self.balance
            .saturating_add(self.locked)
            .saturating_add(self.bonded)
    }
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
    #[serde(default, with = "crate::cid_text::option")]
    pub last_data_proof: Option<Cid>,
    /// Storage challenges passed.
    pub storage_passed: u64,
    /// Storage challenges failed.
    pub storage_failed: u64,
    /// Payment already released to the provider.
    pub paid_to_provider: Amount,
    /// When it reached a final state.
    pub closed_at: Option<Timestamp>,
    /// A settlement waiting for the provider's in-flight heartbeats or the committee's probe
    /// results: the end being judged.
    #[serde(default)]
    pub closing: Option<Timestamp>,
    /// The committee's probe reports on an active hosted or standby service, per interval.
    #[serde(default)]
    pub probes: RoundTally,
    /// Service time a quorum of the committee confirmed up (probe intervals decided "up").
    #[serde(default)]
    pub confirmed_up_ms: u64,
    /// Service time a quorum of the committee confirmed down.
    #[serde(default)]
    pub confirmed_down_ms: u64,
    /// End of the latest probe round a quorum confirmed down: the provider's unreported tail
    /// before a settlement's end is paid only after it.
    #[serde(default)]
    pub last_down_end: Option<Timestamp>,
    /// The committee's storage challenge reports on an active storage contract, per round.
    #[serde(default)]
    pub audits: RoundTally,
}

/// Shortest probe interval / audit round: every report is a ledger transaction from each
/// committee member.
pub const MIN_EVIDENCE_PERIOD_MS: u64 = 2_000;

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
            probes: RoundTally::default(),
            confirmed_up_ms: 0,
            confirmed_down_ms: 0,
            last_down_end: None,
            audits: RoundTally::default(),
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

    /// Length of one probe interval / audit round: the heartbeat interval, at least
    /// [`MIN_EVIDENCE_PERIOD_MS`].
    pub fn evidence_period_ms(&self) -> u64 {
        self.contract
            .qos
            .heartbeat_interval_ms
            .max(MIN_EVIDENCE_PERIOD_MS)
    }

    /// The probe interval (hosted, standby) or audit round (storage) that contains `at`:
    /// intervals are counted from activation in steps of [`Self::evidence_period_ms`] and end
    /// with the service window. `None` before activation or outside the window. An arbitrator
    /// reports what it observed at `at` for this round.
    pub fn evidence_round(&self, at: Timestamp) -> Option<u64> {
        let start = self.activated_at?;
        if at < start || at >= self.window_end()? {
            return None;
        }
        Some((at - start) / self.evidence_period_ms())
    }

    /// Start and end of evidence round `round`, clipped to the service window; `None` if the
    /// round lies outside it (or the contract never activated).
    pub fn round_span(&self, round: u64) -> Option<(Timestamp, Timestamp)> {
        let activated = self.activated_at?;
        let window_end = self.window_end()?;
        let period = self.evidence_period_ms();
        let start = activated.checked_add(round.checked_mul(period)?)?;
        if start >= window_end {
            return None;
        }
        Some((start, start.saturating_add(period).min(window_end)))
    }

    /// Whether the committee probes this contract's service (hosted and standby contracts
    /// while active); storage contracts are audited instead.
    pub fn is_probed(&self) -> bool {
        matches!(
            self.contract.kind,
            ContractKind::Hosted | ContractKind::Standby
        )
    }

    /// Latest time activation may be reported without breach, once the trigger fired.
    pub fn activation_deadline(&self) -> Option<Timestamp> {
        self.trigger_at?
            .checked_add(self.contract.qos.max_activation_delay_ms)
    }
}
