//! The simulated chain: a real ledger, a mempool checked like the node's, and the blocks.

use std::sync::Arc;

use agora_market::{KeySigner, Signer, Timestamp};

use super::{BLOCK_MS, BUSY_BLOCK_MS, QUIET_BLOCK_MS};
use agora_contracts::ledger::{Ledger, LedgerEvent, SignedTransaction, Transaction, TxKind};

#[derive(Clone)]
pub(super) struct Block {
    pub(super) time: Timestamp,
    pub(super) events: Vec<LedgerEvent>,
    pub(super) ledger: Arc<Ledger>,
}

pub(super) struct Chain {
    pub(super) ledger: Ledger,
    pub(super) scratch: Ledger,
    pub(super) mempool: Vec<SignedTransaction>,
    pub(super) blocks: Vec<Block>,
    pub(super) last_block_at: Timestamp,
}

impl Chain {
    pub(super) fn admit(&mut self, now: Timestamp, signer: &KeySigner, kind: TxKind) -> bool {
        let sender = signer.node_id();
        let body = Transaction {
            chain_id: self.scratch.chain_id().to_string(),
            sender,
            nonce: self.scratch.next_nonce(&sender),
            kind,
        };
        let Ok(stx) = body.sign(signer) else {
            return false;
        };
        if self.scratch.apply(now, &stx).is_err() {
            return false;
        }
        self.mempool.push(stx);
        true
    }

    pub(super) fn produce(&mut self, now: Timestamp) -> bool {
        let since = now.saturating_sub(self.last_block_at);
        let due = if !self.mempool.is_empty() {
            since >= BLOCK_MS
        } else if self.ledger.awaits_time() {
            since >= BUSY_BLOCK_MS
        } else {
            since >= QUIET_BLOCK_MS
        };
        if !due {
            return false;
        }
        let txs = std::mem::take(&mut self.mempool);
        let height = self.ledger.height() + 1;
        let outcome = match self.ledger.apply_block_with(height, now, &txs, |_| true) {
            Ok(o) => o,
            Err(e) => panic!("block {height} refused: {e}"),
        };
        if let Err(e) = self.ledger.audit() {
            panic!("conservation broken at {height}: {e}");
        }
        self.scratch = self.ledger.clone();
        self.last_block_at = now;
        self.blocks.push(Block {
            time: now,
            events: outcome.events,
            ledger: Arc::new(self.ledger.clone()),
        });
        true
    }
}
