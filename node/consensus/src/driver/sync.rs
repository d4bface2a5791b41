//! Sync: serving decided blocks to peers and deciding from verified ones we receive.

use std::cmp::Ordering;

use agora_market::NodeId;
use arc_malachitebft_core_consensus::{self as mc, PeerId};
use arc_malachitebft_core_types::ValueResponse;

use super::ConsensusDriver;
use super::io::MAX_ROUND_LOOKAHEAD;
use crate::certificate::DecidedBlock;
use crate::effects::Effect;
use crate::error::ConsensusError;
use crate::messages::{ConsensusMessage, VerifiedMessage};

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

    /// What a message gossiped on the consensus topic is worth here, judged before the network
    /// forwards it (THREATS A12), cheapest checks first: undecodable is invalid; two heights or
    /// more behind ours is stale (no one still deciding needs it; one behind may help a peer
    /// that has not decided yet); so is a vote or proposal for a round the driver would not
    /// take (more than `MAX_ROUND_LOOKAHEAD` past our round at our height, past round 0 at the
    /// next, past the deciding round at the last), and a certificate for another height than
    /// ours (the driver uses no other). Then the signer must be a validator and every signature
    /// valid, else it is invalid: no honest node forwards one (the committee is the genesis
    /// one at every height), so its sender is penalised. A checked message beyond the next
    /// height is not forwarded but still tells the driver we are behind. A member's junk thus
    /// reaches only its direct peers, at one decode and at most one check each; what passes
    /// goes to the driver as [`Input::Verified`](crate::Input::Verified), neither decoded nor
    /// checked again.
    pub fn judge_gossiped_message(&self, bytes: &[u8]) -> GossipedMessage {
        use arc_malachitebft_core_types::Vote as _;
        let msg = match ConsensusMessage::decode(bytes) {
            Ok(msg) => msg,
            Err(error) => return GossipedMessage::Invalid(error),
        };
        let (height, current) = (msg.height(), self.io.height);
        if height.saturating_add(1) < current {
            return GossipedMessage::Stale;
        }
        let far = height > current.saturating_add(1);
        let validators = &self.io.validators;
        let checked = match &msg {
            ConsensusMessage::Vote(v) => match v.vote.round().as_u32() {
                Some(round) if far || round <= self.round_bound(height) => v.verify(validators),
                _ => return GossipedMessage::Stale,
            },
            ConsensusMessage::Proposal(p) => {
                if !far && p.proposal.round_number() > self.round_bound(height) {
                    return GossipedMessage::Stale;
                }
                // Every honest member at our height has the same parent: as cheap as a
                // comparison, and the same answer everywhere.
                let block = p.proposal.block();
                if height == current && block.parent != self.io.parent {
                    return GossipedMessage::Invalid(ConsensusError::BlockMismatch {
                        height,
                        block: block.id(),
                        reason: "parent is not the block decided at the previous height",
                    });
                }
                p.verify(validators)
            }
            // Certificates help only at a height someone still decides: ours, the one before
            // (a slower peer) and the next (we may be the slower one). The driver uses those at
            // ours; the others are checked and relayed.
            ConsensusMessage::PolkaCertificate(_) | ConsensusMessage::RoundCertificate(_)
                if far =>
            {
                return GossipedMessage::Stale;
            }
            ConsensusMessage::PolkaCertificate(c) => {
                at_most_one_each(c.signatures.len(), validators.len())
                    .and_then(|()| c.verify(validators))
            }
            ConsensusMessage::RoundCertificate(c) => {
                at_most_one_each(c.signatures.len(), validators.len())
                    .and_then(|()| c.verify(validators))
            }
        };
        match checked {
            Err(error) => GossipedMessage::Invalid(error),
            Ok(()) if far => GossipedMessage::Far(VerifiedMessage(msg)),
            Ok(()) => GossipedMessage::Forward(VerifiedMessage(msg)),
        }
    }

    /// The last round whose votes and proposals for `height` (not beyond the next) are worth
    /// forwarding: [`MAX_ROUND_LOOKAHEAD`] past our round at our height (Malachite drops the
    /// rest), past round 0 at the next height (early votes are held for those rounds only), past
    /// the round that decided an earlier height (0 when it is no longer in memory).
    fn round_bound(&self, height: u64) -> u32 {
        let base = match height.cmp(&self.io.height) {
            Ordering::Equal => self.state.round().as_u32().unwrap_or(0),
            // Not in memory (after a restart): any round of that one height.
            Ordering::Less => self
                .io
                .history
                .get(&height)
                .map_or(u32::MAX, |d| d.certificate.round),
            Ordering::Greater => 0,
        };
        base.saturating_add(MAX_ROUND_LOOKAHEAD)
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

/// The judgement of a message gossiped on the consensus topic
/// ([`ConsensusDriver::judge_gossiped_message`]).
#[derive(Debug)]
pub enum GossipedMessage {
    /// Checked, for a height from the one before ours to the next, within the rounds the driver
    /// takes: forward it and give it to the driver.
    Forward(VerifiedMessage),
    /// Checked, but for a height beyond the next: not forwarded (no one deciding with us needs
    /// it), given to the driver (it asks peers for the blocks in between).
    Far(VerifiedMessage),
    /// Two heights or more behind ours, for a round beyond the lookahead, or a certificate for
    /// another height: neither forwarded nor processed, its sender not penalised (an honest
    /// relay may be at another height or round).
    Stale,
    /// Undecodable, or not signed as it claims (signer outside the committee, wrong proposer,
    /// block not matching, bad signature, too many signatures): not forwarded, sender penalised.
    Invalid(ConsensusError),
}

/// A certificate carries at most one signature per validator: more is refused unchecked.
fn at_most_one_each(got: usize, max: usize) -> Result<(), ConsensusError> {
    if got > max {
        return Err(ConsensusError::TooMany {
            from: None,
            what: "certificate signatures",
            got,
            max,
        });
    }
    Ok(())
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
