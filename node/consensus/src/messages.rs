//! Votes, proposals and the signed wire messages arbitrators gossip.
//!
//! Signatures cover canonical fixed-width bytes (never the CBOR encoding), signed under
//! `Domain::CONSENSUS`, so re-encoding a message can never change what was signed.

use agora_contracts::ChainTag;
use agora_market::{Domain, NodeId, Signature, Signer, verify};
use arc_malachitebft_core_types::{
    self as mt, NilOrVal, Round, SignedExtension, SignedMessage, VoteType,
};
use serde::{Deserialize, Serialize};

use super::block::{Block, BlockId};
use super::context::{Address, AgoraContext, Height, ValidatorSet};
use super::error::ConsensusError;
use super::liveness::{PolkaCertificateMsg, RoundCertificateMsg};

/// Largest encoded consensus message accepted from a peer (blocks included).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A prevote or precommit for a block id (or nil).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "VoteWire", into = "VoteWire")]
pub struct Vote {
    /// Prevote (true) or precommit (false).
    prevote: bool,
    height: Height,
    round: u32,
    value: NilOrVal<BlockId>,
    voter: Address,
}

impl Vote {
    /// A vote; `round` must be defined (malachite never votes at round -1).
    pub fn new(
        kind: VoteType,
        height: Height,
        round: Round,
        value: NilOrVal<BlockId>,
        voter: Address,
    ) -> Self {
        Vote {
            prevote: kind == VoteType::Prevote,
            height,
            round: round.as_u32().unwrap_or(0),
            value,
            voter,
        }
    }

    /// The block voted for, `None` for a nil vote.
    pub fn block_id(&self) -> Option<BlockId> {
        match self.value {
            NilOrVal::Nil => None,
            NilOrVal::Val(id) => Some(id),
        }
    }

    /// The height voted at.
    pub fn height_number(&self) -> u64 {
        self.height.0
    }

    /// Who cast the vote.
    pub fn voter(&self) -> NodeId {
        self.voter.0
    }

    /// The canonical bytes that are signed on `chain` (the ledger's
    /// `agora_contracts::ConsensusVote::signing_bytes`, the same layout).
    pub fn signing_bytes(&self, chain: &ChainTag) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 1 + 8 + 4 + 1 + 32 + 32);
        out.push(b'V');
        out.extend_from_slice(&chain.0);
        out.push(if self.prevote { 1 } else { 2 });
        out.extend_from_slice(&self.height.0.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        match self.block_id() {
            None => out.push(0),
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.0);
            }
        }
        out.extend_from_slice(&self.voter.0.0);
        out
    }
}

/// The wire form of a [`Vote`] (malachite's `NilOrVal` has no serde support here).
#[derive(Clone, Serialize, Deserialize)]
struct VoteWire {
    prevote: bool,
    height: Height,
    round: u32,
    value: Option<BlockId>,
    voter: Address,
}

impl From<VoteWire> for Vote {
    fn from(w: VoteWire) -> Self {
        Vote {
            prevote: w.prevote,
            height: w.height,
            round: w.round,
            value: w.value.map_or(NilOrVal::Nil, NilOrVal::Val),
            voter: w.voter,
        }
    }
}

impl From<Vote> for VoteWire {
    fn from(v: Vote) -> Self {
        VoteWire {
            prevote: v.prevote,
            height: v.height,
            round: v.round,
            value: v.block_id(),
            voter: v.voter,
        }
    }
}

impl mt::Vote<AgoraContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        Round::new(self.round)
    }

    fn value(&self) -> &NilOrVal<BlockId> {
        &self.value
    }

    fn take_value(self) -> NilOrVal<BlockId> {
        self.value
    }

    fn vote_type(&self) -> VoteType {
        if self.prevote {
            VoteType::Prevote
        } else {
            VoteType::Precommit
        }
    }

    fn validator_address(&self) -> &Address {
        &self.voter
    }

    fn extension(&self) -> Option<&SignedExtension<AgoraContext>> {
        None
    }

    fn take_extension(&mut self) -> Option<SignedExtension<AgoraContext>> {
        None
    }

    // Vote extensions are disabled for Agora; an extension is dropped.
    fn extend(self, _extension: SignedExtension<AgoraContext>) -> Self {
        self
    }
}

/// A proposal: the full block for (height, round), with the proof-of-lock round if re-proposed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    height: Height,
    round: u32,
    pol_round: Option<u32>,
    block: Block,
    proposer: Address,
}

impl Proposal {
    /// A proposal; `round` must be defined.
    pub fn new(
        height: Height,
        round: Round,
        block: Block,
        pol_round: Round,
        proposer: Address,
    ) -> Self {
        Proposal {
            height,
            round: round.as_u32().unwrap_or(0),
            pol_round: pol_round.as_u32(),
            block,
            proposer,
        }
    }

    /// The proposed block.
    pub fn block(&self) -> &Block {
        &self.block
    }

    /// The proof-of-lock round of a re-proposal (`None` for a fresh value).
    pub fn pol_round_number(&self) -> Option<u32> {
        self.pol_round
    }

    /// The round it was proposed in.
    pub fn round_number(&self) -> u32 {
        self.round
    }

    /// The proposing arbitrator.
    pub fn proposer(&self) -> NodeId {
        self.proposer.0
    }

    /// The canonical bytes that are signed on `chain` (the block enters by its id).
    pub fn signing_bytes(&self, chain: &ChainTag) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 8 + 4 + 5 + 32 + 32);
        out.push(b'P');
        out.extend_from_slice(&chain.0);
        out.extend_from_slice(&self.height.0.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        match self.pol_round {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                out.extend_from_slice(&r.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.block.id().0);
        out.extend_from_slice(&self.proposer.0.0);
        out
    }
}

impl mt::Proposal<AgoraContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        Round::new(self.round)
    }

    fn value(&self) -> &Block {
        &self.block
    }

    fn take_value(self) -> Block {
        self.block
    }

    fn pol_round(&self) -> Round {
        self.pol_round.map_or(Round::Nil, Round::new)
    }

    fn validator_address(&self) -> &Address {
        &self.proposer
    }
}

/// A proposal part. Agora runs malachite in proposal-only mode (the block travels inside the
/// signed proposal), so parts are never streamed; the type exists because `Context` needs one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockPart(pub Block);

impl mt::ProposalPart<AgoraContext> for BlockPart {
    fn is_first(&self) -> bool {
        true
    }

    fn is_last(&self) -> bool {
        true
    }
}

/// A vote with its signature, as gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVoteMsg {
    /// The vote.
    pub vote: Vote,
    /// The voter's signature over [`Vote::signing_bytes`].
    pub signature: Signature,
}

/// A proposal with its signature, as gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedProposalMsg {
    /// The proposal (carrying the whole block).
    pub proposal: Proposal,
    /// The proposer's signature over [`Proposal::signing_bytes`].
    pub signature: Signature,
}

/// Everything arbitrators gossip on the consensus topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsensusMessage {
    /// A signed proposal.
    Proposal(SignedProposalMsg),
    /// A signed vote.
    Vote(SignedVoteMsg),
    /// 2f+1 prevotes for a block (sent with a re-proposal of a locked block).
    PolkaCertificate(PolkaCertificateMsg),
    /// Votes justifying entering another round.
    RoundCertificate(RoundCertificateMsg),
}

impl ConsensusMessage {
    /// CBOR bytes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs into a Vec cannot fail.
        serde_cbor::to_vec(self).unwrap_or_default()
    }

    /// Decodes untrusted bytes; does not check signatures (see [`SignedVoteMsg::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, ConsensusError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(ConsensusError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        serde_cbor::from_slice(bytes).map_err(|e| ConsensusError::Decode(e.to_string()))
    }

    /// The height the message is about.
    pub fn height(&self) -> u64 {
        match self {
            ConsensusMessage::Proposal(p) => p.proposal.block().height,
            ConsensusMessage::Vote(v) => v.vote.height_number(),
            ConsensusMessage::PolkaCertificate(c) => c.height,
            ConsensusMessage::RoundCertificate(c) => c.height,
        }
    }
}

/// A gossiped [`ConsensusMessage`] decoded and checked (signer, signatures) by
/// [`ConsensusDriver::judge_gossiped_message`](crate::ConsensusDriver::judge_gossiped_message);
/// the driver takes it ([`Input::Verified`](crate::Input::Verified)) without decoding or
/// checking it again. Only this crate makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedMessage(pub(crate) ConsensusMessage);

impl SignedVoteMsg {
    /// Signs `vote` on `chain` with `signer`.
    pub fn sign(vote: Vote, chain: &ChainTag, signer: &dyn Signer) -> Self {
        let signature = signer.sign(Domain::CONSENSUS, &vote.signing_bytes(chain));
        SignedVoteMsg { vote, signature }
    }

    /// Checks the voter is an arbitrator and the signature is theirs.
    pub fn verify(&self, validators: &ValidatorSet) -> Result<(), ConsensusError> {
        let voter = self.vote.voter();
        if !validators.contains(&voter) {
            return Err(ConsensusError::UnknownValidator(voter));
        }
        verify(
            &voter,
            Domain::CONSENSUS,
            &self.vote.signing_bytes(validators.chain()),
            &self.signature,
        )
        .map_err(|source| ConsensusError::BadSignature {
            signer: voter,
            height: self.vote.height.0,
            source,
        })
    }

    /// The malachite form.
    pub fn to_malachite(&self) -> SignedMessage<AgoraContext, Vote> {
        SignedMessage::new(self.vote.clone(), self.signature.into())
    }

    /// The ledger's form of this vote (same signed bytes), for equivocation evidence.
    pub fn to_ledger(&self) -> agora_contracts::SignedVote {
        let v = &self.vote;
        agora_contracts::SignedVote {
            vote: agora_contracts::ConsensusVote {
                kind: if v.prevote {
                    agora_contracts::VoteKind::Prevote
                } else {
                    agora_contracts::VoteKind::Precommit
                },
                height: v.height.0,
                round: v.round,
                block: v.block_id().map(|id| agora_contracts::BlockHash(id.0)),
                voter: v.voter(),
            },
            signature: self.signature,
        }
    }

    /// From the malachite form.
    pub fn from_malachite(signed: SignedMessage<AgoraContext, Vote>) -> Self {
        SignedVoteMsg {
            vote: signed.message,
            signature: signed.signature.into(),
        }
    }
}

impl SignedProposalMsg {
    /// Signs `proposal` on `chain` with `signer`.
    pub fn sign(proposal: Proposal, chain: &ChainTag, signer: &dyn Signer) -> Self {
        let signature = signer.sign(Domain::CONSENSUS, &proposal.signing_bytes(chain));
        SignedProposalMsg {
            proposal,
            signature,
        }
    }

    /// Checks the proposer is the round's proposer, the block is consistent with the proposal,
    /// and the signature is the proposer's.
    pub fn verify(&self, validators: &ValidatorSet) -> Result<(), ConsensusError> {
        let p = &self.proposal;
        let proposer = p.proposer();
        if !validators.contains(&proposer) {
            return Err(ConsensusError::UnknownValidator(proposer));
        }
        let expected =
            *mt::Validator::public_key(validators.proposer(p.height.0, Round::new(p.round)));
        if expected != proposer {
            return Err(ConsensusError::WrongProposer {
                height: p.height.0,
                round: p.round,
                got: proposer,
                expected,
            });
        }
        // A re-proposal (pol_round set) carries a block built by an earlier round's proposer.
        let builder_ok = match p.pol_round {
            None => p.block.proposer == proposer,
            Some(_) => validators.contains(&p.block.proposer),
        };
        if p.block.height != p.height.0 || !builder_ok {
            return Err(ConsensusError::BlockMismatch {
                height: p.height.0,
                block: p.block.id(),
                reason: "block height or builder does not match the proposal",
            });
        }
        if p.pol_round.is_some_and(|pol| pol >= p.round) {
            return Err(ConsensusError::BlockMismatch {
                height: p.height.0,
                block: p.block.id(),
                reason: "proof-of-lock round is not below the proposal round",
            });
        }
        verify(
            &proposer,
            Domain::CONSENSUS,
            &p.signing_bytes(validators.chain()),
            &self.signature,
        )
        .map_err(|source| ConsensusError::BadSignature {
            signer: proposer,
            height: p.height.0,
            source,
        })
    }

    /// The malachite form.
    pub fn to_malachite(&self) -> SignedMessage<AgoraContext, Proposal> {
        SignedMessage::new(self.proposal.clone(), self.signature.into())
    }

    /// From the malachite form.
    pub fn from_malachite(signed: SignedMessage<AgoraContext, Proposal>) -> Self {
        SignedProposalMsg {
            proposal: signed.message,
            signature: signed.signature.into(),
        }
    }
}
