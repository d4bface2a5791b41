//! Mempool admission as a pure check: what a node's mempool may hold.
//!
//! The node calls [`Ledger::admissible`] on every transaction it hears (gossip, its own API)
//! before storing it, and [`AdmissionPolicy::check_sender_quota`] with the number it already
//! holds from that sender. Admission is cheap and refuses, in this order (cheapest first, the
//! signature last):
//! 1. an encoding larger than `max_tx_bytes` (one transaction can never make a block too large),
//! 2. another chain id,
//! 3. a sender without an account, or whose account holds (spendable + locked + bonded) less
//!    than the ledger's `min_account_balance`,
//! 4. a nonce the ledger already used, or more than `max_nonce_ahead` past the account's next,
//! 5. a bad signature.
//!
//! No fee: a funded account is the price of admission. Every key that wants mempool slots must
//! hold `min_account_balance` (which only a transfer from a funded account or genesis can give
//! it), and each key gets at most `max_pending_per_sender` slots, so filling a 10,000-slot
//! mempool costs `10_000 / max_pending_per_sender × min_account_balance` tokens locked in
//! sock-puppet accounts — with no fee market to design and no change to the signed transaction
//! format. A fee would make each attempt cost tokens but needs a fee field in every transaction
//! and a recipient; it can be added later if funded floods become a problem.
//!
//! What the node's mempool must still do itself (it owns time and the pool):
//! - hold at most `max_pending_per_sender` transactions per sender (call
//!   [`AdmissionPolicy::check_sender_quota`] before inserting); its own node's transactions
//!   are admitted even when the pool is full, by evicting the newest transaction of the sender
//!   with the most pending;
//! - expire a transaction that cannot execute (a nonce gap before it) after
//!   `unexecutable_ttl_ms`, and drop what the ledger has moved past (stale nonces) after every
//!   block, re-checking the rest with `admissible` (an account may have spent its funds);
//! - count and log what it refuses or evicts.
//!
//! Which transactions a proposer takes first is the node's too, with one pure answer from
//! here: [`Ledger::is_duty`] says whether a transaction is its sender's duty on a live
//! contract (a provider's activation report or heartbeats, a committee member's probe or
//! storage results, an arbitrator's attestation). The ledger judges those by the block that
//! carries them (an activation report held longer than `activation_report_grace_ms` is dated
//! back only that far; a probe report for a closed round is refused), so a backlog of other
//! transactions — a flood from funded keys, or plain overload — must not hold them back. Keys
//! are cheap but duties are not: each needs a contract (payment and both stakes locked) or a
//! bonded seat on the committee.

use agora_market::{NodeId, SignatureError};
use serde::{Deserialize, Serialize};

use super::{Ledger, MAX_PROBE_RESULTS, SignedTransaction, Transaction, TxKind};
use crate::contract::{Amount, Contract, ContractId};

/// The node's mempool admission limits (node policy, not consensus: replicas may differ).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdmissionPolicy {
    /// Largest encoded (CBOR) transaction admitted.
    pub max_tx_bytes: usize,
    /// How far a sender's nonce may run ahead of the ledger's next nonce for it.
    pub max_nonce_ahead: u64,
    /// Most transactions held per sender.
    pub max_pending_per_sender: usize,
    /// How long a transaction that cannot execute yet (a nonce gap before it) may wait.
    pub unexecutable_ttl_ms: u64,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        AdmissionPolicy {
            max_tx_bytes: 16 * 1024,
            max_nonce_ahead: 64,
            max_pending_per_sender: 64,
            unexecutable_ttl_ms: 60_000,
        }
    }
}

/// Why a transaction is not admitted to the mempool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// Larger than `max_tx_bytes`.
    #[error("transaction is {size} bytes; at most {max} are admitted")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// It could not be encoded.
    #[error("transaction cannot be encoded: {0}")]
    Encoding(String),
    /// Another chain.
    #[error("transaction names chain '{got}', this ledger is '{expected}'; check the genesis file")]
    WrongChain {
        /// This ledger's chain id.
        expected: String,
        /// The transaction's.
        got: String,
    },
    /// The sender has no account.
    #[error("{sender} has no account; it must be funded (a transfer of at least {min}) first")]
    UnknownAccount {
        /// The sender.
        sender: NodeId,
        /// The ledger's minimum balance.
        min: Amount,
    },
    /// The sender holds too little.
    #[error(
        "{sender} holds {holds} (spendable, locked and bonded); at least {min} is needed to \
         submit transactions"
    )]
    Unfunded {
        /// The sender.
        sender: NodeId,
        /// What it holds.
        holds: Amount,
        /// The ledger's minimum balance.
        min: Amount,
    },
    /// The nonce was already used.
    #[error("nonce {nonce} of {sender} is already used (next is {next})")]
    StaleNonce {
        /// The sender.
        sender: NodeId,
        /// The transaction's nonce.
        nonce: u64,
        /// The ledger's next nonce for the sender.
        next: u64,
    },
    /// The nonce is too far ahead.
    #[error("nonce {nonce} of {sender} is more than {max_ahead} ahead of the ledger's {next}")]
    TooFarAhead {
        /// The sender.
        sender: NodeId,
        /// The transaction's nonce.
        nonce: u64,
        /// The ledger's next nonce for the sender.
        next: u64,
        /// The window.
        max_ahead: u64,
    },
    /// The signature does not verify.
    #[error("transaction {nonce} of {sender} has a bad signature: {source}")]
    BadSignature {
        /// The declared sender.
        sender: NodeId,
        /// Its nonce.
        nonce: u64,
        /// The underlying check.
        source: SignatureError,
    },
    /// The sender already has its share of the mempool.
    #[error(
        "{sender} already has {pending} transactions pending (at most {max}); wait for them to \
         be included"
    )]
    SenderFull {
        /// The sender.
        sender: NodeId,
        /// How many it has pending.
        pending: usize,
        /// `max_pending_per_sender`.
        max: usize,
    },
}

impl AdmissionPolicy {
    /// Refuses another transaction from `sender` when it already has `pending` in the pool.
    pub fn check_sender_quota(&self, sender: NodeId, pending: usize) -> Result<(), AdmissionError> {
        if pending >= self.max_pending_per_sender {
            return Err(AdmissionError::SenderFull {
                sender,
                pending,
                max: self.max_pending_per_sender,
            });
        }
        Ok(())
    }
}

impl Ledger {
    /// Whether the mempool may hold `stx` now (see the module doc for the checks and order).
    /// Pure and cheap: no state is cloned; the signature is checked last.
    pub fn admissible(
        &self,
        stx: &SignedTransaction,
        policy: &AdmissionPolicy,
    ) -> Result<(), AdmissionError> {
        let size = serde_cbor::to_vec(stx)
            .map_err(|e| AdmissionError::Encoding(e.to_string()))?
            .len();
        if size > policy.max_tx_bytes {
            return Err(AdmissionError::TooLarge {
                size,
                max: policy.max_tx_bytes,
            });
        }
        let tx = &stx.tx;
        if tx.chain_id != self.chain_id {
            return Err(AdmissionError::WrongChain {
                expected: self.chain_id.clone(),
                got: tx.chain_id.clone(),
            });
        }
        let min = self.params.min_account_balance;
        let Some(account) = self.accounts.get(&tx.sender) else {
            return Err(AdmissionError::UnknownAccount {
                sender: tx.sender,
                min,
            });
        };
        let holds = account.holdings();
        if holds < min {
            return Err(AdmissionError::Unfunded {
                sender: tx.sender,
                holds,
                min,
            });
        }
        let next = account.nonce;
        if tx.nonce < next {
            return Err(AdmissionError::StaleNonce {
                sender: tx.sender,
                nonce: tx.nonce,
                next,
            });
        }
        if tx.nonce - next > policy.max_nonce_ahead {
            return Err(AdmissionError::TooFarAhead {
                sender: tx.sender,
                nonce: tx.nonce,
                next,
                max_ahead: policy.max_nonce_ahead,
            });
        }
        stx.verify().map_err(|e| match e {
            super::LedgerError::BadSignature {
                sender,
                nonce,
                source,
            } => AdmissionError::BadSignature {
                sender,
                nonce,
                source,
            },
            other => AdmissionError::Encoding(other.to_string()),
        })
    }
}

impl Ledger {
    /// Whether `tx` is its sender's duty on the chain as it stands: the provider's
    /// `MarkMigrated`, `MarkArmed`, `ReportActivation`, `Heartbeats` or `SettleUptime` on a
    /// contract not yet final; a party's `Settle`, `Cancel` or `Expire` of one; a member of a
    /// live contract's committee reporting its probes (`ProbeResult`, every entry of a
    /// well-formed `ProbeResults`) or storage audits; an arbitrator's `Attest` or
    /// `ReportEquivocation`. Transfers, faucet requests and new contracts are not duties.
    ///
    /// Only an ordering hint (the mempool proposes duties before other transactions); whether
    /// the transaction applies is still the block's to judge. Pure and cheap: a few lookups,
    /// no signature check (the mempool admitted the transaction already).
    pub fn is_duty(&self, tx: &Transaction) -> bool {
        let sender = tx.sender;
        let live = |id: &ContractId| -> Option<&Contract> {
            self.contracts
                .get(id)
                .filter(|r| !r.status.is_final())
                .map(|r| &r.contract)
        };
        let provides = |id: &ContractId| live(id).is_some_and(|c| c.provider == sender);
        let party = |id: &ContractId| {
            live(id).is_some_and(|c| c.provider == sender || c.customer == sender)
        };
        let member = |id: &ContractId| live(id).is_some_and(|c| c.committee.contains(&sender));
        match &tx.kind {
            TxKind::MarkMigrated(id) | TxKind::MarkArmed(id) | TxKind::SettleUptime(id) => {
                provides(id)
            }
            TxKind::ReportActivation { contract, .. } | TxKind::Heartbeats { contract, .. } => {
                provides(contract)
            }
            TxKind::Settle { contract, .. } => party(contract),
            TxKind::Cancel(id) | TxKind::Expire(id) => party(id),
            TxKind::StorageProofResult { contract, .. } | TxKind::ProbeResult { contract, .. } => {
                member(contract)
            }
            TxKind::ProbeResults(reports) => {
                !reports.is_empty()
                    && reports.len() <= MAX_PROBE_RESULTS
                    && reports.iter().all(|r| member(&r.contract))
            }
            TxKind::Attest { .. } | TxKind::ReportEquivocation(_) => {
                self.committee.contains(&sender)
            }
            TxKind::Transfer { .. } | TxKind::Faucet { .. } | TxKind::RegisterContract(_) => false,
        }
    }
}
