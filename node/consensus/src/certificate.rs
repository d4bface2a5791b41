//! Commit certificates: ≥ 2f+1 precommit signatures proving a block was decided.

use agora_market::{Domain, NodeId, Signature, verify};
use arc_malachitebft_core_types::{
    self as mt, CertificateError, CommitSignature, ExtendedCommitSignature, NilOrVal, Round,
    VoteType,
};
use serde::{Deserialize, Serialize};

use super::block::{Block, BlockId};
use super::context::{Address, AgoraContext, Height, ValidatorSet};
use super::error::ConsensusError;
use super::messages::Vote;

/// One arbitrator's precommit signature for the certified block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSig {
    /// The signing arbitrator.
    pub validator: NodeId,
    /// Its signature over the precommit for (height, round, block).
    pub signature: Signature,
}

/// Proof that `block_id` was decided at `height`: precommits from a quorum of arbitrators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCertificate {
    /// Decided height.
    pub height: u64,
    /// Round in which the quorum precommitted.
    pub round: u32,
    /// The decided block.
    pub block_id: BlockId,
    /// The precommit signatures.
    pub signatures: Vec<CommitSig>,
}

/// A decided block with the certificate proving it; what sync transfers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedBlock {
    /// The block.
    pub block: Block,
    /// Its commit certificate.
    pub certificate: CommitCertificate,
}

/// Why a certificate check failed (mapped to our error or to malachite's).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CertFailure {
    Unknown(NodeId),
    Duplicate(NodeId),
    BadSignature(NodeId),
    NotEnough {
        signed: u64,
        total: u64,
        expected: u64,
    },
}

impl CommitCertificate {
    /// The precommit vote each signature must cover.
    fn precommit_for(&self, validator: NodeId) -> Vote {
        Vote::new(
            VoteType::Precommit,
            Height(self.height),
            Round::new(self.round),
            NilOrVal::Val(self.block_id),
            Address(validator),
        )
    }

    pub(crate) fn check(&self, validators: &ValidatorSet) -> Result<(), CertFailure> {
        let mut seen = std::collections::BTreeSet::new();
        for sig in &self.signatures {
            if !validators.contains(&sig.validator) {
                return Err(CertFailure::Unknown(sig.validator));
            }
            if !seen.insert(sig.validator) {
                return Err(CertFailure::Duplicate(sig.validator));
            }
            let bytes = self
                .precommit_for(sig.validator)
                .signing_bytes(validators.chain());
            verify(&sig.validator, Domain::CONSENSUS, &bytes, &sig.signature)
                .map_err(|_| CertFailure::BadSignature(sig.validator))?;
        }
        let signed = seen.len() as u64;
        let expected = validators.quorum();
        if signed < expected {
            return Err(CertFailure::NotEnough {
                signed,
                total: validators.len() as u64,
                expected,
            });
        }
        Ok(())
    }

    /// Verifies every signature and that distinct arbitrators with ≥ 2f+1 power signed.
    pub fn verify(&self, validators: &ValidatorSet) -> Result<(), ConsensusError> {
        if self.signatures.len() > validators.len() {
            return Err(ConsensusError::TooMany {
                from: None,
                what: "commit signatures",
                got: self.signatures.len(),
                max: validators.len(),
            });
        }
        self.check(validators)
            .map_err(|f| ConsensusError::BadCertificate {
                height: self.height,
                block: self.block_id,
                reason: match f {
                    CertFailure::Unknown(n) => format!("{n} is not an arbitrator"),
                    CertFailure::Duplicate(n) => format!("{n} signed twice"),
                    CertFailure::BadSignature(n) => {
                        format!("precommit signature by {n} does not verify")
                    }
                    CertFailure::NotEnough {
                        signed, expected, ..
                    } => format!("only {signed} arbitrators signed, {expected} needed"),
                },
            })
    }

    /// Converts malachite's certificate.
    pub(crate) fn from_malachite(cert: &mt::CommitCertificate<AgoraContext>) -> Self {
        CommitCertificate {
            height: cert.height.0,
            round: cert.round.as_u32().unwrap_or(0),
            block_id: cert.value_id,
            signatures: cert
                .commit_signatures
                .iter()
                .map(|s| CommitSig {
                    validator: s.address.0,
                    signature: s.signature.into(),
                })
                .collect(),
        }
    }

    /// Converts malachite's extended certificate (extensions are disabled and dropped).
    pub(crate) fn from_malachite_extended(
        cert: &mt::ExtendedCommitCertificate<AgoraContext>,
    ) -> Self {
        CommitCertificate {
            height: cert.height.0,
            round: cert.round.as_u32().unwrap_or(0),
            block_id: cert.value_id,
            signatures: cert
                .commit_signatures
                .iter()
                .map(|s| CommitSig {
                    validator: s.address.0,
                    signature: s.signature.into(),
                })
                .collect(),
        }
    }

    /// The malachite extended form fed to the engine on the sync path.
    pub(crate) fn to_malachite_extended(&self) -> mt::ExtendedCommitCertificate<AgoraContext> {
        mt::ExtendedCommitCertificate {
            height: Height(self.height),
            round: Round::new(self.round),
            value_id: self.block_id,
            commit_signatures: self
                .signatures
                .iter()
                .map(|s| {
                    ExtendedCommitSignature::new(Address(s.validator), s.signature.into(), None)
                })
                .collect(),
        }
    }
}

/// Maps a failed check to the error type malachite expects from certificate effects.
pub(crate) fn to_malachite_error(
    f: CertFailure,
    cert: &CommitCertificate,
) -> CertificateError<AgoraContext> {
    let sig = |n: NodeId| {
        let signature = cert
            .signatures
            .iter()
            .find(|s| s.validator == n)
            .map(|s| s.signature.into())
            .unwrap_or(super::context::ConsensusSignature([0; 64]));
        CommitSignature::new(Address(n), signature)
    };
    match f {
        CertFailure::Unknown(n) => CertificateError::UnknownValidator(Address(n)),
        CertFailure::Duplicate(n) => CertificateError::DuplicateVote(Address(n)),
        CertFailure::BadSignature(n) => CertificateError::InvalidCommitSignature(sig(n)),
        CertFailure::NotEnough {
            signed,
            total,
            expected,
        } => CertificateError::NotEnoughVotingPower {
            signed,
            total,
            expected,
        },
    }
}
