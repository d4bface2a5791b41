//! Polka and round certificates: bundles of signed votes that let lagging arbitrators
//! catch up on a round even when they counted an equivocator's other vote.
//!
//! They travel as whole certificates (not as loose votes) because malachite applies a
//! verified certificate as a unit; loose votes conflicting with ones already counted would
//! be discarded, and honest arbitrators could stay split between rounds forever.

// The engine's `Resume::CertificateValidity` fixes the (large) error type of these checks.
#![allow(clippy::result_large_err)]

use agora_market::{Domain, NodeId, Signature, verify};
use arc_malachitebft_core_types::{
    self as mt, CertificateError, NilOrVal, PolkaSignature, Round, RoundCertificateType,
    RoundSignature, ThresholdParam, ValidatorSet as _, VoteType,
};
use serde::{Deserialize, Serialize};

use super::block::BlockId;
use super::certificate::CommitSig;
use super::context::{Address, AgoraContext, Height, ValidatorSet};
use super::error::ConsensusError;
use super::messages::Vote;

type Ctx = AgoraContext;

/// 2f+1 prevotes for one block in one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolkaCertificateMsg {
    /// Height.
    pub height: u64,
    /// Round of the prevotes.
    pub round: u32,
    /// The block prevoted for.
    pub block_id: BlockId,
    /// The prevote signatures.
    pub signatures: Vec<CommitSig>,
}

/// One vote inside a round certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundSig {
    /// The voter.
    pub validator: NodeId,
    /// Prevote (true) or precommit (false).
    pub prevote: bool,
    /// The block voted for; `None` for nil.
    pub block_id: Option<BlockId>,
    /// The vote signature.
    pub signature: Signature,
}

/// Votes justifying a move to another round: f+1 votes of a later round (skip), or
/// 2f+1 precommits of the previous round (precommit-any).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundCertificateMsg {
    /// Height.
    pub height: u64,
    /// Round of the votes.
    pub round: u32,
    /// Precommit-any (2f+1 precommits) rather than skip (f+1 votes).
    pub precommits: bool,
    /// The votes.
    pub signatures: Vec<RoundSig>,
}

fn nil_or_val(id: Option<BlockId>) -> NilOrVal<BlockId> {
    id.map_or(NilOrVal::Nil, NilOrVal::Val)
}

impl PolkaCertificateMsg {
    /// From the engine form.
    pub(crate) fn from_malachite(c: &mt::PolkaCertificate<Ctx>) -> Self {
        PolkaCertificateMsg {
            height: c.height.0,
            round: c.round.as_u32().unwrap_or(0),
            block_id: c.value_id,
            signatures: c
                .polka_signatures
                .iter()
                .map(|s| CommitSig {
                    validator: s.address.0,
                    signature: s.signature.into(),
                })
                .collect(),
        }
    }

    /// The engine form.
    pub(crate) fn to_malachite(&self) -> mt::PolkaCertificate<Ctx> {
        mt::PolkaCertificate {
            height: Height(self.height),
            round: Round::new(self.round),
            value_id: self.block_id,
            polka_signatures: self
                .signatures
                .iter()
                .map(|s| PolkaSignature::new(Address(s.validator), s.signature.into()))
                .collect(),
        }
    }

    /// Checks signatures, membership and the 2f+1 quorum.
    pub fn verify(&self, validators: &ValidatorSet) -> Result<(), ConsensusError> {
        check_polka(&self.to_malachite(), validators).map_err(|e| {
            ConsensusError::BadLivenessCertificate {
                height: self.height,
                round: self.round,
                reason: e.to_string(),
            }
        })
    }
}

impl RoundCertificateMsg {
    /// From the engine form.
    pub(crate) fn from_malachite(c: &mt::RoundCertificate<Ctx>) -> Self {
        RoundCertificateMsg {
            height: c.height.0,
            round: c.round.as_u32().unwrap_or(0),
            precommits: c.cert_type == RoundCertificateType::Precommit,
            signatures: c
                .round_signatures
                .iter()
                .map(|s| RoundSig {
                    validator: s.address.0,
                    prevote: s.vote_type == VoteType::Prevote,
                    block_id: match s.value_id {
                        NilOrVal::Nil => None,
                        NilOrVal::Val(id) => Some(id),
                    },
                    signature: s.signature.into(),
                })
                .collect(),
        }
    }

    /// The engine form.
    pub(crate) fn to_malachite(&self) -> mt::RoundCertificate<Ctx> {
        mt::RoundCertificate {
            height: Height(self.height),
            round: Round::new(self.round),
            cert_type: if self.precommits {
                RoundCertificateType::Precommit
            } else {
                RoundCertificateType::Skip
            },
            round_signatures: self
                .signatures
                .iter()
                .map(|s| {
                    let kind = if s.prevote {
                        VoteType::Prevote
                    } else {
                        VoteType::Precommit
                    };
                    RoundSignature::new(
                        kind,
                        nil_or_val(s.block_id),
                        Address(s.validator),
                        s.signature.into(),
                    )
                })
                .collect(),
        }
    }

    /// Checks signatures, membership, vote kinds and the f+1 / 2f+1 threshold.
    pub fn verify(&self, validators: &ValidatorSet) -> Result<(), ConsensusError> {
        check_round(&self.to_malachite(), validators).map_err(|e| {
            ConsensusError::BadLivenessCertificate {
                height: self.height,
                round: self.round,
                reason: e.to_string(),
            }
        })
    }
}

/// Sums distinct, valid signers; errors name the first bad signature.
fn tally<'a>(
    validators: &ValidatorSet,
    votes: impl Iterator<Item = (Vote, &'a mt::Signature<Ctx>)>,
    bad_signature: impl Fn(&Vote) -> CertificateError<Ctx>,
) -> Result<u64, CertificateError<Ctx>> {
    let mut seen = std::collections::BTreeSet::new();
    for (vote, signature) in votes {
        let voter = vote.voter();
        if !validators.contains(&voter) {
            return Err(CertificateError::UnknownValidator(Address(voter)));
        }
        if !seen.insert(voter) {
            return Err(CertificateError::DuplicateVote(Address(voter)));
        }
        let sig: Signature = (*signature).into();
        let bytes = vote.signing_bytes(validators.chain());
        if verify(&voter, Domain::CONSENSUS, &bytes, &sig).is_err() {
            return Err(bad_signature(&vote));
        }
    }
    Ok(seen.len() as u64)
}

fn threshold(
    signed: u64,
    validators: &ValidatorSet,
    param: ThresholdParam,
) -> Result<(), CertificateError<Ctx>> {
    let total = validators.total_voting_power();
    if param.is_met(signed, total) {
        Ok(())
    } else {
        Err(CertificateError::NotEnoughVotingPower {
            signed,
            total,
            expected: param.min_expected(total),
        })
    }
}

/// Verifies a polka certificate as the engine asks (`Effect::VerifyPolkaCertificate`).
pub(crate) fn check_polka(
    c: &mt::PolkaCertificate<Ctx>,
    validators: &ValidatorSet,
) -> Result<(), CertificateError<Ctx>> {
    let votes = c.polka_signatures.iter().map(|s| {
        let vote = Vote::new(
            VoteType::Prevote,
            c.height,
            c.round,
            NilOrVal::Val(c.value_id),
            s.address,
        );
        (vote, &s.signature)
    });
    let signed = tally(validators, votes, |v| {
        let sig = c
            .polka_signatures
            .iter()
            .find(|s| s.address.0 == v.voter())
            .map(|s| s.signature)
            .unwrap_or(super::context::ConsensusSignature([0; 64]));
        CertificateError::InvalidPolkaSignature(PolkaSignature::new(Address(v.voter()), sig))
    })?;
    threshold(signed, validators, ThresholdParam::TWO_F_PLUS_ONE)
}

/// Verifies a round certificate as the engine asks (`Effect::VerifyRoundCertificate`).
pub(crate) fn check_round(
    c: &mt::RoundCertificate<Ctx>,
    validators: &ValidatorSet,
) -> Result<(), CertificateError<Ctx>> {
    let precommits_only = c.cert_type == RoundCertificateType::Precommit;
    if let Some(s) = c
        .round_signatures
        .iter()
        .find(|s| precommits_only && s.vote_type == VoteType::Prevote)
    {
        return Err(CertificateError::InvalidVoteType(s.address));
    }
    let votes = c.round_signatures.iter().map(|s| {
        let vote = Vote::new(s.vote_type, c.height, c.round, s.value_id, s.address);
        (vote, &s.signature)
    });
    let signed = tally(validators, votes, |v| {
        let found = c
            .round_signatures
            .iter()
            .find(|s| s.address.0 == v.voter())
            .cloned();
        match found {
            Some(s) => CertificateError::InvalidRoundSignature(s),
            None => CertificateError::VerificationError(None),
        }
    })?;
    let param = if precommits_only {
        ThresholdParam::TWO_F_PLUS_ONE
    } else {
        ThresholdParam::F_PLUS_ONE
    };
    threshold(signed, validators, param)
}
