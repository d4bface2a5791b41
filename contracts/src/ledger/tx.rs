//! Ledger transactions: each is signed by its sender account under `Domain::TRANSACTION` and
//! carries the sender's next nonce, so a replayed transaction is rejected.

use agora_market::{Domain, NodeId, Signature, Signer, Timestamp, verify};
use cid::Cid;
use serde::{Deserialize, Serialize};

use super::LedgerError;
use crate::attestation::Liveness;
use crate::contract::{Amount, ContractId, SignedContract};
use crate::vote::EquivocationEvidence;

/// A period during which the provider's heartbeats showed the service up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UptimeInterval {
    /// Start (ms).
    pub from: Timestamp,
    /// End (ms), not before `from`.
    pub to: Timestamp,
}

/// Most entries of one [`TxKind::ProbeResults`].
pub const MAX_PROBE_RESULTS: usize = 64;

/// One arbitrator's outcome of one probe interval of one contract (an entry of
/// [`TxKind::ProbeResults`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The hosted or standby contract.
    pub contract: ContractId,
    /// The probe interval ([`crate::ContractRecord::evidence_round`] of the probe time).
    pub interval: u64,
    /// Whether the service answered.
    pub up: bool,
}

/// Metering evidence the provider reports for an active contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatBatch {
    /// Uptime intervals, in order; a part the ledger already holds (before its
    /// `last_uptime_end`) is skipped, so a batch may overlap earlier reports.
    pub intervals: Vec<UptimeInterval>,
    /// Sensor readings processed in this batch.
    pub readings_processed: u64,
    /// CIDs of data-integrity proofs over the batch's readings.
    #[serde(with = "crate::cid_text::vec")]
    pub data_proofs: Vec<Cid>,
}

/// Why a party asks for settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettleReason {
    /// The customer is back (or no longer needs the service): ends the contract early, pro rata.
    CustomerBack,
    /// The contract's duration is over.
    DurationEnded,
    /// The trigger fired but the provider never activated in time.
    NoActivation,
}

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxKind {
    /// Moves spendable tokens.
    Transfer {
        /// Recipient.
        to: NodeId,
        /// Amount.
        amount: Amount,
    },
    /// Mints tokens to the sender; only when genesis enabled the faucet.
    Faucet {
        /// Amount.
        amount: Amount,
    },
    /// Registers a dual-signed contract; locks payment and both stakes in escrow.
    RegisterContract(Box<SignedContract>),
    /// Provider: holds the service image and config.
    MarkMigrated(ContractId),
    /// Provider: ready to activate on the trigger.
    MarkArmed(ContractId),
    /// Arbitrator: a liveness observation of `subject`.
    Attest {
        /// The observed node.
        subject: NodeId,
        /// What was observed.
        liveness: Liveness,
    },
    /// Provider: the service was started at `activated_at`.
    ReportActivation {
        /// The contract.
        contract: ContractId,
        /// When it started (ms), not before the trigger and not in the future.
        activated_at: Timestamp,
    },
    /// Provider: heartbeat / metering evidence.
    Heartbeats {
        /// The contract.
        contract: ContractId,
        /// The evidence.
        batch: HeartbeatBatch,
    },
    /// Provider of a hosted contract: collect payment for verified uptime so far.
    SettleUptime(ContractId),
    /// A party: end the contract and pay out according to the evidence.
    Settle {
        /// The contract.
        contract: ContractId,
        /// Why.
        reason: SettleReason,
    },
    /// A party: call off a contract before activation; funds returned.
    Cancel(ContractId),
    /// A party: a contract that never got armed ran out; funds returned.
    Expire(ContractId),
    /// Arbitrator: outcome of its storage challenge in one audit round. A round's outcome
    /// counts only once a quorum (2f+1) of the contract's committee reported the same one.
    StorageProofResult {
        /// The storage contract.
        contract: ContractId,
        /// The audit round ([`crate::ContractRecord::evidence_round`] of the challenge time).
        round: u64,
        /// The challenged content.
        #[serde(with = "crate::cid_text")]
        challenge: Cid,
        /// Whether the provider's proof checked out.
        passed: bool,
    },
    /// Arbitrator: whether the provider's hosted (or active standby) service answered this
    /// arbitrator's probe in one probe interval. An interval counts as service up (paid) or
    /// down (judged) only once a quorum (2f+1) of the committee reported the same.
    ProbeResult {
        /// The hosted or standby contract.
        contract: ContractId,
        /// The probe interval ([`crate::ContractRecord::evidence_round`] of the probe time).
        interval: u64,
        /// Whether the service answered.
        up: bool,
    },
    /// Arbitrator: several probe outcomes in one transaction (one signature, one nonce, one
    /// gossip message): at most [`MAX_PROBE_RESULTS`], no (contract, interval) twice. Each
    /// entry counts as its own [`TxKind::ProbeResult`] would; an entry the ledger refuses (its
    /// round already decided or closed) is skipped and the others count. The transaction is
    /// refused when the batch is malformed or every entry is refused.
    ProbeResults(Vec<ProbeReport>),
    /// Anyone with an account: proof that an arbitrator signed two conflicting consensus
    /// votes. Burns its bond and leaves it out of new contract committees.
    ReportEquivocation(Box<EquivocationEvidence>),
}

/// A transaction body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Must match the ledger's chain id.
    pub chain_id: String,
    /// The signing account.
    pub sender: NodeId,
    /// Must equal the sender's current nonce.
    pub nonce: u64,
    /// What to do.
    pub kind: TxKind,
}

impl Transaction {
    /// Canonical bytes (CBOR) that are signed.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, LedgerError> {
        serde_cbor::to_vec(self).map_err(|e| LedgerError::Encoding(e.to_string()))
    }

    /// Signs as `signer`, which must be the sender.
    pub fn sign(self, signer: &dyn Signer) -> Result<SignedTransaction, LedgerError> {
        if signer.node_id() != self.sender {
            return Err(LedgerError::WrongSigner {
                sender: self.sender,
                signer: signer.node_id(),
            });
        }
        let signature = signer.sign(Domain::TRANSACTION, &self.canonical_bytes()?);
        Ok(SignedTransaction {
            tx: self,
            signature,
        })
    }
}

/// A transaction with its sender's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTransaction {
    /// The body.
    pub tx: Transaction,
    /// The sender's signature over the canonical bytes.
    pub signature: Signature,
}

impl SignedTransaction {
    /// Checks the sender's signature.
    pub fn verify(&self) -> Result<(), LedgerError> {
        verify(
            &self.tx.sender,
            Domain::TRANSACTION,
            &self.tx.canonical_bytes()?,
            &self.signature,
        )
        .map_err(|source| LedgerError::BadSignature {
            sender: self.tx.sender,
            nonce: self.tx.nonce,
            source,
        })
    }

    /// A stable id for the transaction (blake3 of body and signature), for mempools and logs.
    pub fn id(&self) -> Result<[u8; 32], LedgerError> {
        let bytes = serde_cbor::to_vec(self).map_err(|e| LedgerError::Encoding(e.to_string()))?;
        Ok(*blake3::hash(&bytes).as_bytes())
    }
}
