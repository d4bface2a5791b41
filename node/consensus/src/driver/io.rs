//! The driver's side of `process!`: carries out malachite's effects synchronously.
//!
//! Each engine effect is answered right away (signing, verification) or turned into an Agora
//! [`Effect`] for the node. Engine inputs that must follow an effect (a synced value after its
//! certificate verified, the next height after a decision) are queued as [`Followup`]s and fed
//! once the current `process!` run has finished.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use agora_market::{Domain, NodeId, Signer, Timestamp, verify};
use arc_malachitebft_core_consensus::{
    self as mc, ConsensusMsg, LivenessMsg, ProposedValue, Resumable, Resume,
};
use arc_malachitebft_core_types::{
    CertificateError, NilOrVal, Round, SignedMessage, Timeouts, Validity, ValueOrigin, Vote as _,
};
use tracing::{debug, warn};

use crate::block::{Block, BlockId};
use crate::certificate::{CommitCertificate, DecidedBlock, to_malachite_error};
use crate::context::{AgoraContext, Height, ValidatorSet};
use crate::effects::{ConsensusConfig, Effect, Misbehavior, TimeoutId};
use crate::error::ConsensusError;
use crate::liveness::{PolkaCertificateMsg, RoundCertificateMsg, check_polka, check_round};
use crate::messages::{ConsensusMessage, SignedProposalMsg, SignedVoteMsg, Vote};
use crate::wal::WalEntry;

type Ctx = AgoraContext;

/// Most candidate blocks remembered per height (proposals from the round's proposer only).
pub(crate) const MAX_BLOCKS_PER_HEIGHT: usize = 128;
/// Most distinct blocks taken from one round's proposer at a height (Malachite keeps two
/// proposals per round: an equivocation is evidence).
pub(crate) const MAX_BLOCKS_PER_ROUND: u8 = 2;
/// How many rounds ahead of the current one a proposal's block is taken (Malachite's own
/// lookahead: it drops proposals beyond).
pub(crate) const MAX_ROUND_LOOKAHEAD: u32 = 10;

/// Work to do after the current engine run.
pub(crate) enum Followup {
    /// Feed this input to the engine.
    Engine(Box<mc::Input<Ctx>>),
    /// Move to the next height.
    StartHeight { height: u64, parent: BlockId },
}

/// Everything the effect handler may touch while the engine holds its state.
pub(crate) struct Io {
    pub(crate) signer: Arc<dyn Signer + Send + Sync>,
    pub(crate) validators: ValidatorSet,
    pub(crate) config: ConsensusConfig,
    pub(crate) now: Timestamp,
    pub(crate) height: u64,
    pub(crate) parent: BlockId,
    /// Time of the block decided at `height - 1` (as the ledger applied it: never before the
    /// block before it); 0 at genesis.
    pub(crate) parent_time: Timestamp,
    /// Test hook: added to this node's proposal times (0 for an honest node).
    pub(crate) proposal_skew_ms: u64,
    /// Test hook: taken from this node's proposal times, never below its parent's time + 1
    /// (0 for an honest node).
    pub(crate) proposal_lag_ms: u64,
    /// Test hook: every vote of this node goes out with a conflicting twin (false for an
    /// honest node).
    pub(crate) double_vote: bool,
    /// Test hook: this node's own votes are never sent (false for an honest node).
    pub(crate) withhold_votes: bool,
    /// Test hook: at each height's start this node sends a flood of its own proposals for
    /// that height (false for an honest node).
    pub(crate) flood_proposals: bool,
    pub(crate) height_started_at: Timestamp,
    pub(crate) effects: Vec<Effect>,
    pub(crate) followups: VecDeque<Followup>,
    /// Candidate blocks at the current height, by id (verified proposals, ours, synced).
    pub(crate) blocks: HashMap<BlockId, Block>,
    /// Distinct proposed blocks taken per round at the current height (THREATS A11).
    pub(crate) blocks_per_round: BTreeMap<u32, u8>,
    /// The certificate of the next block, verified when its gossiped copy was judged.
    pub(crate) verified_certificate: Option<CommitCertificate>,
    /// Recently decided blocks, to serve sync.
    pub(crate) history: BTreeMap<u64, DecidedBlock>,
    pub(crate) replaying: bool,
    pub(crate) sync_peer: Option<NodeId>,
}

impl Io {
    fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// Broadcasts a vote (with a conflicting twin of our own votes, or not at all, under the
    /// test hooks).
    fn broadcast_vote(&mut self, v: SignedVoteMsg) {
        if self.withhold_votes && v.vote.voter() == self.signer.node_id() {
            debug!(height = self.height, "test hook: own vote withheld");
            return;
        }
        if self.double_vote && v.vote.voter() == self.signer.node_id() {
            let other = match v.vote.block_id() {
                Some(_) => NilOrVal::Nil,
                None => NilOrVal::Val(BlockId([0xEE; 32])),
            };
            let vote = &v.vote;
            let twin = Vote::new(
                vote.vote_type(),
                vote.height(),
                vote.round(),
                other,
                *vote.validator_address(),
            );
            let twin = SignedVoteMsg::sign(twin, self.validators.chain(), self.signer.as_ref());
            self.push(Effect::Broadcast(ConsensusMessage::Vote(twin)));
        }
        self.push(Effect::Broadcast(ConsensusMessage::Vote(v)));
    }

    /// Answers one engine effect.
    pub(crate) fn on_effect(
        &mut self,
        effect: mc::Effect<Ctx>,
    ) -> Result<Resume<Ctx>, ConsensusError> {
        use mc::Effect as E;
        Ok(match effect {
            E::CancelAllTimeouts(r) => {
                self.push(Effect::CancelAllTimeouts);
                r.resume_with(())
            }
            E::CancelTimeout(t, r) => {
                if let Some(id) = TimeoutId::from_engine(Height(self.height), t) {
                    self.push(Effect::CancelTimeout(id));
                }
                r.resume_with(())
            }
            E::ScheduleTimeout(t, r) => {
                if let Some(id) = TimeoutId::from_engine(Height(self.height), t) {
                    let after = self.config.timeouts.duration_for(t);
                    self.push(Effect::ScheduleTimeout { timeout: id, after });
                }
                r.resume_with(())
            }
            E::StartRound(height, round, proposer, role, r) => {
                debug!(%height, %round, %proposer, ?role, "round started");
                r.resume_with(())
            }
            E::PublishConsensusMsg(msg, r) => {
                match msg {
                    mc::SignedConsensusMsg::Vote(v) => {
                        self.broadcast_vote(SignedVoteMsg::from_malachite(v));
                    }
                    mc::SignedConsensusMsg::Proposal(p) => self.push(Effect::Broadcast(
                        ConsensusMessage::Proposal(SignedProposalMsg::from_malachite(p)),
                    )),
                }
                r.resume_with(())
            }
            E::PublishLivenessMsg(msg, r) => {
                let msg = match msg {
                    LivenessMsg::Vote(v) => {
                        self.broadcast_vote(SignedVoteMsg::from_malachite(v));
                        return Ok(r.resume_with(()));
                    }
                    LivenessMsg::PolkaCertificate(c) => {
                        ConsensusMessage::PolkaCertificate(PolkaCertificateMsg::from_malachite(&c))
                    }
                    LivenessMsg::SkipRoundCertificate(c) => {
                        ConsensusMessage::RoundCertificate(RoundCertificateMsg::from_malachite(&c))
                    }
                };
                self.push(Effect::Broadcast(msg));
                r.resume_with(())
            }
            E::RepublishVote(v, r) => {
                self.broadcast_vote(SignedVoteMsg::from_malachite(v));
                r.resume_with(())
            }
            E::RepublishRoundCertificate(c, r) => {
                self.push(Effect::Broadcast(ConsensusMessage::RoundCertificate(
                    RoundCertificateMsg::from_malachite(&c),
                )));
                r.resume_with(())
            }
            E::GetValue(height, round, timeout, r) => {
                self.push(Effect::RequestValue {
                    height: height.0,
                    round: round.as_u32().unwrap_or(0),
                    within: self.config.timeouts.duration_for(timeout),
                });
                r.resume_with(())
            }
            // Proposal-only mode: the signed proposal carries the whole block, so there are
            // no parts to re-stream; the engine re-publishes the proposal itself.
            E::RestreamProposal(.., r) => r.resume_with(()),
            E::CertVerifiedSyncValue(response, proposer, r) => {
                let cert = &response.certificate;
                match self.blocks.get(&cert.value_id) {
                    Some(block) => {
                        let value = ProposedValue {
                            height: cert.height,
                            round: cert.round,
                            valid_round: Round::Nil,
                            proposer,
                            value: block.clone(),
                            validity: Validity::Valid,
                        };
                        self.followups.push_back(Followup::Engine(Box::new(
                            mc::Input::ProposedValue(value, ValueOrigin::Sync),
                        )));
                    }
                    None => {
                        warn!(height = %cert.height, block = %cert.value_id, "synced block vanished")
                    }
                }
                r.resume_with(())
            }
            E::CertRejectedSyncValue(_peer, height, error, r) => {
                let from = self.sync_peer;
                self.push(Effect::Rejected {
                    from,
                    error: ConsensusError::BadSyncBlock {
                        from: from.unwrap_or(NodeId([0; 32])),
                        height: height.0,
                        reason: error.to_string(),
                    },
                });
                r.resume_with(())
            }
            E::Decide(cert, _extensions, r) => {
                self.on_decide(&cert);
                r.resume_with(())
            }
            E::SignVote(vote, r) => {
                let bytes = vote.signing_bytes(self.validators.chain());
                let sig = self.signer.sign(Domain::CONSENSUS, &bytes);
                r.resume_with(SignedMessage::new(vote, sig.into()))
            }
            E::SignProposal(proposal, r) => {
                let sig = self.signer.sign(
                    Domain::CONSENSUS,
                    &proposal.signing_bytes(self.validators.chain()),
                );
                r.resume_with(SignedMessage::new(proposal, sig.into()))
            }
            E::VerifySignature(signed, public_key, r) => {
                let bytes = match &signed.message {
                    ConsensusMsg::Vote(v) => v.signing_bytes(self.validators.chain()),
                    ConsensusMsg::Proposal(p) => p.signing_bytes(self.validators.chain()),
                };
                let ok = verify(
                    &public_key,
                    Domain::CONSENSUS,
                    &bytes,
                    &signed.signature.into(),
                )
                .is_ok();
                r.resume_with(ok)
            }
            E::VerifyCommitCertificate(cert, validators, _threshold, r) => {
                let ours = CommitCertificate::from_malachite(&cert);
                r.resume_with(
                    ours.check(&validators)
                        .map_err(|f| to_malachite_error(f, &ours)),
                )
            }
            E::VerifyExtendedCommitCertificate(cert, validators, _threshold, _policy, r) => {
                let result = match cert
                    .commit_signatures
                    .iter()
                    .find(|s| s.extension.is_some())
                {
                    Some(s) => Err(CertificateError::UnexpectedVoteExtension(s.address)),
                    None => {
                        let ours = CommitCertificate::from_malachite_extended(&cert);
                        ours.check(&validators)
                            .map_err(|f| to_malachite_error(f, &ours))
                    }
                };
                r.resume_with(result)
            }
            E::VerifyPolkaCertificate(cert, validators, _threshold, r) => {
                r.resume_with(check_polka(&cert, &validators))
            }
            E::VerifyRoundCertificate(cert, validators, _threshold, r) => {
                r.resume_with(check_round(&cert, &validators))
            }
            E::WalAppend(height, input, r) => {
                if !self.replaying {
                    match WalEntry::from_engine(height, &input) {
                        Some(entry) => self.push(Effect::PersistWal(entry)),
                        None => debug!(%height, "engine input not logged"),
                    }
                }
                r.resume_with(())
            }
            // Vote extensions are disabled for Agora.
            E::ExtendVote(.., r) => r.resume_with(None),
            E::VerifyVoteExtension(.., r) => r.resume_with(Ok(())),
            E::Finalize(cert, _extensions, evidence, r) => {
                self.on_finalize(cert.height.0, cert.value_id, evidence);
                r.resume_with(())
            }
        })
    }

    fn on_decide(&mut self, cert: &arc_malachitebft_core_types::CommitCertificate<Ctx>) {
        let height = cert.height.0;
        let Some(block) = self.blocks.get(&cert.value_id).cloned() else {
            // The engine only decides values it has seen, and every value passes through us.
            warn!(height, block = %cert.value_id, "decided block unknown to the driver");
            return;
        };
        let certificate = CommitCertificate::from_malachite(cert);
        self.parent_time = self.parent_time.max(block.timestamp);
        self.history.insert(
            height,
            DecidedBlock {
                block: block.clone(),
                certificate: certificate.clone(),
            },
        );
        while self.history.len() > self.config.history {
            self.history.pop_first();
        }
        self.push(Effect::Decided {
            height,
            block,
            certificate,
        });
    }

    fn on_finalize(
        &mut self,
        height: u64,
        decided: BlockId,
        evidence: mc::MisbehaviorEvidence<Ctx>,
    ) {
        for (address, pairs) in evidence.votes {
            for (first, second) in pairs {
                self.push(Effect::Evidence(Misbehavior::DoubleVote {
                    validator: address.0,
                    first: Box::new(SignedVoteMsg::from_malachite(first)),
                    second: Box::new(SignedVoteMsg::from_malachite(second)),
                }));
            }
        }
        for (address, pairs) in evidence.proposals {
            for (first, second) in pairs {
                self.push(Effect::Evidence(Misbehavior::DoubleProposal {
                    validator: address.0,
                    first: Box::new(SignedProposalMsg::from_malachite(first)),
                    second: Box::new(SignedProposalMsg::from_malachite(second)),
                }));
            }
        }
        self.followups.push_back(Followup::StartHeight {
            height: height.saturating_add(1),
            parent: decided,
        });
    }
}
