//! Pending ledger transactions, ordered per sender by nonce.

use std::collections::BTreeMap;

use agora_contracts::{Ledger, SignedTransaction};
use agora_market::NodeId;

/// Most transactions held.
pub const MEMPOOL_CAP: usize = 10_000;
/// Largest encoded transaction admitted: far below a block's byte budget, so one transaction
/// can never make a block too large to gossip.
pub const MAX_TX_BYTES: usize = 16 * 1024;

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
    /// Larger than [`MAX_TX_BYTES`].
    #[error("transaction is {size} bytes; at most {MAX_TX_BYTES} are accepted")]
    TooLarge {
        /// Encoded size.
        size: usize,
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
        let size = serde_cbor::to_vec(&tx)
            .map_err(|e| MempoolError::Invalid(e.to_string()))?
            .len();
        if size > MAX_TX_BYTES {
            return Err(MempoolError::TooLarge { size });
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

    /// Drops exactly `tx` (a block refused it: proposing it again would be refused again).
    pub fn remove(&mut self, tx: &SignedTransaction) {
        let key = (tx.tx.sender, tx.tx.nonce);
        if self.txs.get(&key).is_some_and(|t| t == tx) {
            self.txs.remove(&key);
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use agora_contracts::test_utils::{genesis_with, test_cid, tx, tx_with_nonce};
    use agora_contracts::{HeartbeatBatch, Ledger, TxKind};
    use agora_market::Signer as _;

    use super::*;

    #[test]
    fn admits_in_window_and_refuses_stale_far_oversized_and_forged() {
        let (genesis, accounts, _) = genesis_with(2, 4, 1_000);
        let ledger = Ledger::from_genesis(&genesis).unwrap();
        let mut pool = Mempool::default();
        let a = &accounts[0];
        let faucet = TxKind::Faucet { amount: 1 };

        assert_eq!(
            pool.admit(&ledger, tx(&ledger, a, faucet.clone())),
            Ok(true)
        );
        // The same transaction again is not new.
        assert_eq!(
            pool.admit(&ledger, tx(&ledger, a, faucet.clone())),
            Ok(false)
        );
        assert_eq!(pool.next_nonce(&ledger, &a.node_id()), 1);

        let far = tx_with_nonce(ledger.chain_id(), a, MAX_AHEAD + 1, faucet.clone());
        assert!(matches!(
            pool.admit(&ledger, far),
            Err(MempoolError::TooFarAhead { .. })
        ));

        let mut forged = tx_with_nonce(ledger.chain_id(), a, 1, faucet.clone());
        forged.tx.sender = accounts[1].node_id();
        assert!(matches!(
            pool.admit(&ledger, forged),
            Err(MempoolError::Invalid(_))
        ));

        // A transaction too large for any block is refused before its signature is checked.
        let batch = HeartbeatBatch {
            intervals: Vec::new(),
            readings_processed: 0,
            data_proofs: (0..1_000u32).map(|i| test_cid(&i.to_le_bytes())).collect(),
        };
        let contract = agora_contracts::ContractId([7; 32]);
        let huge = tx_with_nonce(
            ledger.chain_id(),
            a,
            1,
            TxKind::Heartbeats { contract, batch },
        );
        assert!(matches!(
            pool.admit(&ledger, huge),
            Err(MempoolError::TooLarge { .. })
        ));
        assert_eq!(pool.len(), 1);
    }
}
