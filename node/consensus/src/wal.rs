//! Write-ahead log entries: what the node stores (in sled) before acting on effects.
//!
//! The node appends every [`WalEntry`] from [`Effect::PersistWal`](super::Effect::PersistWal) to a
//! per-height log *before* carrying out the effects that follow it (broadcasting a vote in
//! particular), drops the log of a height once [`Effect::Decided`](super::Effect::Decided) for it
//! has been applied, and after a crash passes the current height's entries back in
//! [`Input::StartHeight`](super::Input::StartHeight). Replaying them makes malachite re-derive the
//! same votes and reuse the logged signatures, so a restarted arbitrator never equivocates.

use arc_malachitebft_core_consensus::{self as mc, ProposedValue};
use arc_malachitebft_core_types::{Round, Validity, ValueOrigin};
use serde::{Deserialize, Serialize};

use super::block::Block;
use super::context::{Address, AgoraContext, Height};
use super::effects::TimeoutId;
use super::liveness::{PolkaCertificateMsg, RoundCertificateMsg};
use super::messages::{SignedProposalMsg, SignedVoteMsg};
use agora_market::NodeId;

/// One write-ahead log record (CBOR-encodable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalEntry {
    /// A vote we accepted (ours or a peer's).
    Vote(SignedVoteMsg),
    /// A proposal we accepted.
    Proposal(SignedProposalMsg),
    /// A block that became a candidate value (our own proposal, or a synced block).
    ProposedValue {
        /// Height.
        height: u64,
        /// Round it was proposed in.
        round: u32,
        /// Proof-of-lock round, if any.
        valid_round: Option<u32>,
        /// Proposer.
        proposer: NodeId,
        /// The block.
        block: Block,
        /// Whether it arrived through sync rather than live consensus.
        from_sync: bool,
    },
    /// A round timeout that fired.
    Timeout(TimeoutId),
    /// A verified polka certificate.
    PolkaCertificate(PolkaCertificateMsg),
    /// A verified round certificate.
    RoundCertificate(RoundCertificateMsg),
}

impl WalEntry {
    /// CBOR bytes for sled.
    pub fn encode(&self) -> Vec<u8> {
        serde_cbor::to_vec(self).unwrap_or_default()
    }

    /// Decodes a stored entry.
    pub fn decode(bytes: &[u8]) -> Result<Self, super::ConsensusError> {
        serde_cbor::from_slice(bytes).map_err(|e| super::ConsensusError::Decode(e.to_string()))
    }

    /// From an engine WAL input; `None` for inputs Agora never logs (certificates, sync).
    pub(crate) fn from_engine(height: Height, input: &mc::Input<AgoraContext>) -> Option<Self> {
        match input {
            mc::Input::Vote(v) => Some(WalEntry::Vote(SignedVoteMsg::from_malachite(v.clone()))),
            mc::Input::Proposal(p) => Some(WalEntry::Proposal(SignedProposalMsg::from_malachite(
                p.clone(),
            ))),
            mc::Input::ProposedValue(v, origin) => Some(WalEntry::ProposedValue {
                height: v.height.0,
                round: v.round.as_u32().unwrap_or(0),
                valid_round: v.valid_round.as_u32(),
                proposer: v.proposer.0,
                block: v.value.clone(),
                from_sync: origin.is_sync(),
            }),
            mc::Input::PolkaCertificate(c) => Some(WalEntry::PolkaCertificate(
                PolkaCertificateMsg::from_malachite(c),
            )),
            mc::Input::RoundCertificate(c) => Some(WalEntry::RoundCertificate(
                RoundCertificateMsg::from_malachite(c),
            )),
            mc::Input::TimeoutElapsed(t) => {
                TimeoutId::from_engine(height, *t).map(WalEntry::Timeout)
            }
            _ => None,
        }
    }

    /// Back to the engine input replayed after a restart at `height`.
    pub(crate) fn to_engine(&self) -> Option<mc::Input<AgoraContext>> {
        Some(match self {
            WalEntry::Vote(v) => mc::Input::Vote(v.to_malachite()),
            WalEntry::Proposal(p) => mc::Input::Proposal(p.to_malachite()),
            WalEntry::ProposedValue {
                height,
                round,
                valid_round,
                proposer,
                block,
                from_sync,
            } => mc::Input::ProposedValue(
                ProposedValue {
                    height: Height(*height),
                    round: Round::new(*round),
                    valid_round: valid_round.map_or(Round::Nil, Round::new),
                    proposer: Address(*proposer),
                    value: block.clone(),
                    validity: Validity::Valid,
                },
                if *from_sync {
                    ValueOrigin::Sync
                } else {
                    ValueOrigin::Consensus
                },
            ),
            WalEntry::Timeout(id) => mc::Input::TimeoutElapsed(id.to_engine()),
            WalEntry::PolkaCertificate(c) => mc::Input::PolkaCertificate(c.to_malachite()),
            WalEntry::RoundCertificate(c) => mc::Input::RoundCertificate(c.to_malachite()),
        })
    }

    /// The height the entry belongs to (the node keys its WAL by it).
    pub fn height(&self) -> u64 {
        use arc_malachitebft_core_types::{Proposal as _, Vote as _};
        match self {
            WalEntry::Vote(v) => v.vote.height().0,
            WalEntry::Proposal(p) => p.proposal.height().0,
            WalEntry::ProposedValue { height, .. } => *height,
            WalEntry::Timeout(id) => id.height,
            WalEntry::PolkaCertificate(c) => c.height,
            WalEntry::RoundCertificate(c) => c.height,
        }
    }

    /// The block this entry carries, if any (the driver re-learns blocks on replay).
    pub(crate) fn block(&self) -> Option<&Block> {
        match self {
            WalEntry::Proposal(p) => Some(p.proposal.block()),
            WalEntry::ProposedValue { block, .. } => Some(block),
            _ => None,
        }
    }
}
