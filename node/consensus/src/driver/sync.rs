//! Sync: serving decided blocks to peers and deciding from verified ones we receive.

use agora_market::NodeId;
use arc_malachitebft_core_consensus::{self as mc, PeerId};
use arc_malachitebft_core_types::ValueResponse;

use super::ConsensusDriver;
use crate::certificate::DecidedBlock;
use crate::effects::Effect;
use crate::error::ConsensusError;

impl ConsensusDriver {
    pub(super) fn on_sync_request(&mut self, from: NodeId, height: u64) {
        let max = self.io.config.max_sync_blocks;
        let blocks: Vec<DecidedBlock> = self
            .io
            .history
            .range(height..)
            .take(max)
            .map(|(_, b)| b.clone())
            .collect();
        if !blocks.is_empty() {
            self.io
                .effects
                .push(Effect::SendSyncResponse { to: from, blocks });
        }
    }

    pub(super) fn on_sync_response(&mut self, from: NodeId, mut blocks: Vec<DecidedBlock>) {
        let max = self.io.config.max_sync_blocks;
        if blocks.len() > max {
            let got = blocks.len();
            let error = ConsensusError::TooMany {
                from: Some(from),
                what: "synced blocks",
                got,
                max,
            };
            return self.reject(Some(from), error);
        }
        blocks.sort_by_key(|b| b.block.height);
        for decided in blocks {
            let height = self.io.height;
            if decided.block.height < height {
                continue;
            }
            if decided.block.height > height {
                // A gap (we missed a gossiped block): ask for the rest.
                self.note_peer_height(decided.block.height);
                break;
            }
            if let Err(error) = self.check_synced(from, &decided) {
                return self.reject(Some(from), error);
            }
            let Some(peer) = peer_id(&from) else {
                return;
            };
            self.io.sync_peer = Some(from);
            self.io
                .blocks
                .insert(decided.block.id(), decided.block.clone());
            let cert = decided.certificate.to_malachite_extended();
            let response = ValueResponse::new(peer, Default::default(), cert);
            self.process(mc::Input::SyncValueResponse(response));
            self.drain_followups();
            self.io.sync_peer = None;
            if self.io.height == height {
                break; // not decided: stop rather than feed heights we have not reached
            }
        }
    }

    /// What a decided block gossiped on the blocks topic is worth here, judged before the
    /// network forwards it (THREATS A12): the next block to decide, with a valid certificate and
    /// our last block as its parent, or the one after it with a valid certificate (we are one
    /// behind: it is news, and it asks for the missing block) is forwarded; an older block or
    /// one further ahead is ignored (nothing new, or sync's work); a block for the next height
    /// that fails its checks is invalid (no honest arbitrator signs or forwards one).
    pub fn judge_gossiped_block(&self, decided: &DecidedBlock) -> GossipedBlock {
        let (height, current) = (decided.block.height, self.io.height);
        if current == 0 || height < current || height > current.saturating_add(1) {
            return GossipedBlock::Old;
        }
        if height == current {
            return match self.check_synced(decided.block.proposer, decided) {
                Ok(()) => GossipedBlock::Next,
                Err(e) => GossipedBlock::Invalid(e),
            };
        }
        // One ahead: its parent is a block we lack, and the committee may have changed with it,
        // so a certificate our committee does not accept is ignored, not held against anyone.
        let cert = &decided.certificate;
        if cert.height == height
            && cert.block_id == decided.block.id()
            && cert.verify(&self.io.validators).is_ok()
        {
            GossipedBlock::Ahead
        } else {
            GossipedBlock::Old
        }
    }

    fn check_synced(&self, from: NodeId, decided: &DecidedBlock) -> Result<(), ConsensusError> {
        let block = &decided.block;
        let bad = |reason: &str| ConsensusError::BadSyncBlock {
            from,
            height: block.height,
            reason: reason.to_string(),
        };
        if decided.certificate.height != block.height {
            return Err(bad("certificate is for another height"));
        }
        if decided.certificate.block_id != block.id() {
            return Err(bad("certificate is for another block"));
        }
        if block.parent != self.io.parent {
            return Err(bad("parent is not our last decided block"));
        }
        decided.certificate.verify(&self.io.validators)
    }
}

/// The judgement of a decided block gossiped on the blocks topic
/// ([`ConsensusDriver::judge_gossiped_block`]).
#[derive(Debug)]
pub enum GossipedBlock {
    /// The block this replica decides next, certified: forward it and apply it.
    Next,
    /// The block after that, certified by our committee: forward it; it shows we are behind.
    Ahead,
    /// Already decided here, further ahead than the next two, or not checkable: not forwarded,
    /// its sender not penalised (an honest relay may be behind or ahead of us).
    Old,
    /// The next block, but its certificate or parent is wrong: not forwarded, sender penalised.
    Invalid(ConsensusError),
}

/// Malachite tags sync responses with a libp2p-style peer id: an identity multihash of the key.
fn peer_id(node: &NodeId) -> Option<PeerId> {
    let mut bytes = Vec::with_capacity(34);
    bytes.push(0x00);
    bytes.push(32);
    bytes.extend_from_slice(&node.0);
    PeerId::from_bytes(&bytes).ok()
}
