//! Pending ledger transactions, ordered per sender by nonce.

use std::collections::BTreeMap;

use agora_contracts::{Ledger, SignedTransaction};
use agora_market::NodeId;

/// Most transactions held.
pub const MEMPOOL_CAP: usize = 10_000;

/// Why a transaction was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MempoolError {
    /// Its nonce was already used on the ledger.
    #[error("nonce {nonce} of {sender} is already used (next is {next})")]
    StaleNonce {
        /// Sender.
        sender: String,
        /// Its nonce.
        nonce: u64,
        /// The ledger's next nonce for the sender.
        next: u64,
    },
    /// Too far ahead of the ledger.
    #[error("nonce {nonce} is more than {MAX_AHEAD} ahead of the ledger's {next}")]
    TooFarAhead {
        /// Its nonce.
        nonce: u64,
        /// The ledger's next nonce.
        next: u64,
    },
    /// Wrong chain.
    #[error("transaction names chain '{got}', this ledger is '{want}'")]
    WrongChain {
        /// Chain of the tx.
        got: String,
        /// Our chain.
        want: String,
    },
    /// Full.
    #[error("mempool is full ({MEMPOOL_CAP} transactions); try again shortly")]
    Full,
    /// Bad signature or malformed.
    #[error("invalid transaction: {0}")]
    Invalid(String),
}

/// How far a sender's nonces may run ahead of the ledger.
pub const MAX_AHEAD: u64 = 1_000;

/// The mempool.
#[derive(Debug, Default)]
pub struct Mempool {
    txs: BTreeMap<(NodeId, u64), SignedTransaction>,
}

impl Mempool {
    /// Admits a transaction after cheap checks (signature, chain, nonce window).
    pub fn admit(&mut self, ledger: &Ledger, tx: SignedTransaction) -> Result<bool, MempoolError> {
        if tx.tx.chain_id != ledger.chain_id() {
            return Err(MempoolError::WrongChain {
                got: tx.tx.chain_id.clone(),
                want: ledger.chain_id().to_string(),
            });
        }
        tx.verify()
            .map_err(|e| MempoolError::Invalid(e.to_string()))?;
        let next = ledger.next_nonce(&tx.tx.sender);
        if tx.tx.nonce < next {
            return Err(MempoolError::StaleNonce {
                sender: tx.tx.sender.to_string(),
                nonce: tx.tx.nonce,
                next,
            });
        }
        if tx.tx.nonce > next + MAX_AHEAD {
            return Err(MempoolError::TooFarAhead {
                nonce: tx.tx.nonce,
                next,
            });
        }
        let key = (tx.tx.sender, tx.tx.nonce);
        if self.txs.contains_key(&key) {
            return Ok(false);
        }
        if self.txs.len() >= MEMPOOL_CAP {
            return Err(MempoolError::Full);
        }
        self.txs.insert(key, tx);
        Ok(true)
    }

    /// Whether exactly `tx` was admitted (so its signature was verified here).
    pub fn holds(&self, tx: &SignedTransaction) -> bool {
        self.txs
            .get(&(tx.tx.sender, tx.tx.nonce))
            .is_some_and(|t| t == tx)
    }

    /// Next nonce `sender` should use, counting its pending transactions.
    pub fn next_nonce(&self, ledger: &Ledger, sender: &NodeId) -> u64 {
        let mut n = ledger.next_nonce(sender);
        while self.txs.contains_key(&(*sender, n)) {
            n += 1;
        }
        n
    }

    /// Up to `max` transactions that can apply in order (contiguous nonces per sender).
    pub fn proposal(&self, ledger: &Ledger, max: usize) -> Vec<SignedTransaction> {
        let mut out = Vec::new();
        let mut expected: Option<(NodeId, u64)> = None;
        for ((sender, nonce), tx) in &self.txs {
            if out.len() >= max {
                break;
            }
            let want = match expected {
                Some((s, n)) if s == *sender => n,
                _ => ledger.next_nonce(sender),
            };
            if *nonce == want {
                out.push(tx.clone());
                expected = Some((*sender, want + 1));
            }
        }
        out
    }

    /// Drops what the ledger has moved past.
    pub fn prune(&mut self, ledger: &Ledger) {
        self.txs
            .retain(|(sender, nonce), _| *nonce >= ledger.next_nonce(sender));
    }

    /// Number pending.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }
}
