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

    /// What a decided block gossiped on the blocks topic by `from` is worth here, judged
    /// before the network forwards it (THREATS A12): the next block to decide, with a valid
    /// certificate and our last block as its parent, is forwarded and applied; so is the one
    /// after it with a valid certificate (it shows we are behind); the block we decided last,
    /// certified, is forwarded (an arbitrator has decided it before the proposer's copy
    /// arrives, and replicas behind it still need it); anything older is ignored, anything
    /// further ahead ignored but told to the driver (it asks for the missing blocks); a block
    /// for the next height that fails its checks is invalid (no honest node signs or forwards
    /// one). A certificate verified here is not verified again when the block is applied.
    pub fn judge_gossiped_block(&mut self, from: NodeId, decided: &DecidedBlock) -> GossipedBlock {
        let (height, current) = (decided.block.height, self.io.height);
        if current == 0 {
            return GossipedBlock::Old;
        }
        if height > current.saturating_add(1) {
            return GossipedBlock::Far;
        }
        if height.saturating_add(1) == current {
            let ours = self.io.history.get(&height).map(|d| d.block.id());
            return if ours == Some(decided.block.id()) && self.certifies(decided) {
                GossipedBlock::JustDecided(decided.block.id())
            } else {
                GossipedBlock::Old
            };
        }
        if height < current {
            return GossipedBlock::Old;
        }
        if height == current {
            return match self.check_synced(from, decided) {
                Ok(()) => {
                    self.io.verified_certificate = Some(decided.certificate.clone());
                    GossipedBlock::Next
                }
                Err(e) => GossipedBlock::Invalid(e),
            };
        }
        // One ahead: its parent is a block we lack, and the committee may have changed with it,
        // so a certificate our committee does not accept is ignored, not held against anyone.
        if self.certifies(decided) {
            GossipedBlock::Ahead
        } else {
            GossipedBlock::Old
        }
    }

    /// Whether a message gossiped on the consensus topic is worth forwarding, judged before
    /// the driver processes it (votes travel on without waiting for that): undecodable is an
    /// error; two heights or more behind ours is not (no one still deciding needs it; one
    /// behind may help a peer that has not decided yet), so a member replaying its old
    /// messages reaches only its direct peers (THREATS A12).
    pub fn judge_gossiped_message(&self, bytes: &[u8]) -> Result<bool, ConsensusError> {
        let msg = crate::ConsensusMessage::decode(bytes)?;
        Ok(msg.height().saturating_add(1) >= self.io.height)
    }

    fn check_synced(&self, from: NodeId, decided: &DecidedBlock) -> Result<(), ConsensusError> {
        let block = &decided.block;
        let bad = |reason: &str| ConsensusError::BadSyncBlock {
            from,
            height: block.height,
            reason: reason.to_string(),
        };
        certificate_names(decided).map_err(bad)?;
        if block.parent != self.io.parent {
            return Err(bad("parent is not our last decided block"));
        }
        self.verify_certificate(decided)
    }

    /// Whether `decided`'s certificate names its block and verifies against our committee.
    fn certifies(&self, decided: &DecidedBlock) -> bool {
        certificate_names(decided).is_ok() && self.verify_certificate(decided).is_ok()
    }

    /// Verifies `decided`'s certificate against our committee, unless it is the one verified
    /// when the next block's gossiped copy was judged.
    fn verify_certificate(&self, decided: &DecidedBlock) -> Result<(), ConsensusError> {
        if self.io.verified_certificate.as_ref() == Some(&decided.certificate) {
            return Ok(());
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
    /// The block this replica decided last, certified: forward the first copy (replicas that
    /// are behind, or reach the proposer only through us, need it), not apply it.
    JustDecided(crate::BlockId),
    /// Further ahead than the next two: not forwarded (unchecked), but given to the driver,
    /// which asks peers for the blocks in between.
    Far,
    /// Decided here long ago, or not checkable: not forwarded, its sender not penalised (an
    /// honest relay may be behind or ahead of us).
    Old,
    /// The next block, but its certificate or parent is wrong: not forwarded, sender penalised.
    Invalid(ConsensusError),
}

/// Whether `decided`'s certificate is for its block's height and id (what is wrong if not).
fn certificate_names(decided: &DecidedBlock) -> Result<(), &'static str> {
    if decided.certificate.height != decided.block.height {
        return Err("certificate is for another height");
    }
    if decided.certificate.block_id != decided.block.id() {
        return Err("certificate is for another block");
    }
    Ok(())
}

/// Malachite tags sync responses with a libp2p-style peer id: an identity multihash of the key.
fn peer_id(node: &NodeId) -> Option<PeerId> {
    let mut bytes = Vec::with_capacity(34);
    bytes.push(0x00);
    bytes.push(32);
    bytes.extend_from_slice(&node.0);
    PeerId::from_bytes(&bytes).ok()
}
