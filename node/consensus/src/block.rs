//! The value arbitrators agree on: a block of opaque ledger transactions.

use std::fmt;

use agora_market::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

/// The blake3 hash of a block's canonical bytes; malachite's `ValueId`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct BlockId(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl BlockId {
    /// The parent id of the first block (height 1): all zeroes.
    pub const GENESIS_PARENT: BlockId = BlockId([0; 32]);
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({self})")
    }
}

/// One opaque ledger transaction (the ledger crate decodes and applies it).
pub type Transaction = Vec<u8>;

/// A block: an ordered list of ledger transactions chained to its parent.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Block {
    /// Height this block is proposed for (1 is the first block after genesis).
    pub height: u64,
    /// Id of the block decided at `height - 1` ([`BlockId::GENESIS_PARENT`] for height 1).
    pub parent: BlockId,
    /// The arbitrator that built the block.
    pub proposer: NodeId,
    /// The proposer's clock when it built the block (ms since the epoch).
    pub timestamp: Timestamp,
    /// Ledger transactions, applied in this order.
    pub transactions: Vec<Transaction>,
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("id", &self.id())
            .field("height", &self.height)
            .field("parent", &self.parent)
            .field("proposer", &self.proposer)
            .field("txs", &self.transactions.len())
            .finish()
    }
}

impl Block {
    /// The canonical bytes hashed into the id: fixed-width fields, length-prefixed txs.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let tx_bytes: usize = self.transactions.iter().map(|t| t.len() + 8).sum();
        let mut out = Vec::with_capacity(8 + 32 + 32 + 8 + 8 + tx_bytes);
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.parent.0);
        out.extend_from_slice(&self.proposer.0);
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&(self.transactions.len() as u64).to_le_bytes());
        for tx in &self.transactions {
            out.extend_from_slice(&(tx.len() as u64).to_le_bytes());
            out.extend_from_slice(tx);
        }
        out
    }

    /// The block's id: blake3 over [`Block::canonical_bytes`].
    pub fn id(&self) -> BlockId {
        BlockId(*blake3::hash(&self.canonical_bytes()).as_bytes())
    }

    /// Total size of the transactions in bytes (for limits and logs).
    pub fn payload_len(&self) -> usize {
        self.transactions.iter().map(Vec::len).sum()
    }
}

impl arc_malachitebft_core_types::Value for Block {
    type Id = BlockId;

    fn id(&self) -> BlockId {
        Block::id(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_market::{KeySigner, Signer};

    fn block(txs: Vec<Vec<u8>>) -> Block {
        Block {
            height: 3,
            parent: BlockId([7; 32]),
            proposer: KeySigner::from_seed(1).node_id(),
            timestamp: 1_000,
            transactions: txs,
        }
    }

    #[test]
    fn id_depends_on_every_field_and_tx_boundaries() {
        let base = block(vec![b"ab".to_vec(), b"c".to_vec()]);
        let split = block(vec![b"a".to_vec(), b"bc".to_vec()]);
        assert_ne!(base.id(), split.id(), "tx boundaries must be hashed");
        let mut later = base.clone();
        later.timestamp += 1;
        assert_ne!(base.id(), later.id());
        let mut other_parent = base.clone();
        other_parent.parent = BlockId([8; 32]);
        assert_ne!(base.id(), other_parent.id());
        assert_eq!(base.id(), base.clone().id());
    }
}
