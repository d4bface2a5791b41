//! Consensus votes as the ledger sees them: their canonical signed bytes and equivocation
//! evidence (two conflicting votes by one arbitrator), which `TxKind::ReportEquivocation`
//! submits so the ledger burns the arbitrator's bond.
//!
//! The canonical bytes are the single definition both the consensus driver (which signs and
//! checks votes) and the ledger (which checks evidence) use, so they always agree:
//!
//! ```text
//! b'V' | the 32-byte chain tag | 1 (prevote) or 2 (precommit) | height u64 LE | round u32 LE
//!      | 0 (nil) or 1 followed by the 32-byte block id | the voter's 32-byte public key
//! ```
//!
//! signed under [`Domain::CONSENSUS`]. The chain tag ([`ChainTag::of`] the chain id) binds a
//! vote to one chain: where arbitrator keys serve two chains, a vote of one is no evidence on
//! the other (THREATS A8).

use agora_market::{Domain, NodeId, Signature, SignatureError, Signer, verify};
use serde::{Deserialize, Serialize};

/// What binds a consensus signature to one chain: BLAKE3 of the chain id under a label.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct ChainTag(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl ChainTag {
    /// The tag of the chain named `chain_id` (a genesis's `chain_id`).
    pub fn of(chain_id: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"agora/v1/chain\0");
        h.update(chain_id.as_bytes());
        ChainTag(*h.finalize().as_bytes())
    }
}

/// Prevote or precommit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VoteKind {
    /// First voting step of a round.
    Prevote,
    /// Second voting step of a round.
    Precommit,
}

/// A 32-byte block id as consensus votes name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockHash(#[serde(with = "serde_bytes")] pub [u8; 32]);

/// The content of one consensus vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusVote {
    /// Prevote or precommit.
    pub kind: VoteKind,
    /// Block height voted on.
    pub height: u64,
    /// Consensus round at that height.
    pub round: u32,
    /// The block voted for; `None` is a nil vote.
    pub block: Option<BlockHash>,
    /// Who votes.
    pub voter: NodeId,
}

/// Length of [`ConsensusVote::signing_bytes`] for a vote for a block (a nil vote is 32 less).
pub const VOTE_BYTES_MAX: usize = 1 + 32 + 1 + 8 + 4 + 1 + 32 + 32;

impl ConsensusVote {
    /// The canonical bytes that are signed (layout in the module doc).
    pub fn signing_bytes(&self, chain: &ChainTag) -> Vec<u8> {
        let mut out = Vec::with_capacity(VOTE_BYTES_MAX);
        out.push(b'V');
        out.extend_from_slice(&chain.0);
        out.push(match self.kind {
            VoteKind::Prevote => 1,
            VoteKind::Precommit => 2,
        });
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        match self.block {
            None => out.push(0),
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.0);
            }
        }
        out.extend_from_slice(&self.voter.0);
        out
    }

    /// Signs the vote on `chain`; `signer` should be the voter.
    pub fn sign(&self, chain: &ChainTag, signer: &dyn Signer) -> Signature {
        signer.sign(Domain::CONSENSUS, &self.signing_bytes(chain))
    }

    /// Checks `signature` is the voter's over this vote.
    pub fn verify(&self, chain: &ChainTag, signature: &Signature) -> Result<(), SignatureError> {
        verify(
            &self.voter,
            Domain::CONSENSUS,
            &self.signing_bytes(chain),
            signature,
        )
    }
}

/// A vote with its voter's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVote {
    /// The vote.
    pub vote: ConsensusVote,
    /// The voter's signature over [`ConsensusVote::signing_bytes`].
    pub signature: Signature,
}

impl SignedVote {
    /// Signs `vote` on `chain` as `signer`.
    pub fn new(vote: ConsensusVote, chain: &ChainTag, signer: &dyn Signer) -> Self {
        SignedVote {
            signature: vote.sign(chain, signer),
            vote,
        }
    }
}

/// Proof that one arbitrator voted twice, differently, in the same step of the same round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EquivocationEvidence {
    /// One vote.
    pub first: SignedVote,
    /// The conflicting vote.
    pub second: SignedVote,
}

/// Why equivocation evidence does not prove anything.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum EquivocationError {
    /// The two votes are by different voters.
    #[error("the two votes are by {first} and {second}; evidence needs two votes by one voter")]
    DifferentVoters {
        /// Voter of the first vote.
        first: NodeId,
        /// Voter of the second vote.
        second: NodeId,
    },
    /// The votes are for different heights, rounds or steps: not conflicting.
    #[error(
        "the votes are for different steps ({first_kind:?} h{first_height} r{first_round} vs \
         {second_kind:?} h{second_height} r{second_round}); only votes of one step conflict"
    )]
    DifferentSteps {
        /// First vote's kind.
        first_kind: VoteKind,
        /// First vote's height.
        first_height: u64,
        /// First vote's round.
        first_round: u32,
        /// Second vote's kind.
        second_kind: VoteKind,
        /// Second vote's height.
        second_height: u64,
        /// Second vote's round.
        second_round: u32,
    },
    /// Both votes name the same value.
    #[error("both votes name the same value; that is a repeated vote, not equivocation")]
    SameValue,
    /// A signature does not verify.
    #[error("the {which} vote's signature does not verify: {reason}")]
    BadSignature {
        /// "first" or "second".
        which: String,
        /// The underlying check.
        reason: String,
    },
}

impl EquivocationEvidence {
    /// Checks the evidence of votes on `chain`; returns the equivocating voter.
    pub fn verify(&self, chain: &ChainTag) -> Result<NodeId, EquivocationError> {
        let (a, b) = (&self.first.vote, &self.second.vote);
        if a.voter != b.voter {
            return Err(EquivocationError::DifferentVoters {
                first: a.voter,
                second: b.voter,
            });
        }
        if (a.kind, a.height, a.round) != (b.kind, b.height, b.round) {
            return Err(EquivocationError::DifferentSteps {
                first_kind: a.kind,
                first_height: a.height,
                first_round: a.round,
                second_kind: b.kind,
                second_height: b.height,
                second_round: b.round,
            });
        }
        if a.block == b.block {
            return Err(EquivocationError::SameValue);
        }
        for (which, signed) in [("first", &self.first), ("second", &self.second)] {
            signed.vote.verify(chain, &signed.signature).map_err(|e| {
                EquivocationError::BadSignature {
                    which: which.into(),
                    reason: e.to_string(),
                }
            })?;
        }
        Ok(a.voter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::signer;

    const CHAIN: ChainTag = ChainTag([0x5C; 32]);

    fn vote(kind: VoteKind, block: Option<u8>, voter: NodeId) -> ConsensusVote {
        ConsensusVote {
            kind,
            height: 7,
            round: 2,
            block: block.map(|b| BlockHash([b; 32])),
            voter,
        }
    }

    #[test]
    fn signing_bytes_match_the_hand_built_layout() {
        let voter = NodeId([0xAA; 32]);
        let v = ConsensusVote {
            kind: VoteKind::Precommit,
            height: 0x0102_0304_0506_0708,
            round: 0x0A0B_0C0D,
            block: Some(BlockHash([0x11; 32])),
            voter,
        };
        let mut expected = vec![b'V'];
        expected.extend_from_slice(&CHAIN.0);
        expected.extend_from_slice(&[2, 8, 7, 6, 5, 4, 3, 2, 1, 0x0D, 0x0C, 0x0B, 0x0A, 1]);
        expected.extend_from_slice(&[0x11; 32]);
        expected.extend_from_slice(&[0xAA; 32]);
        assert_eq!(v.signing_bytes(&CHAIN), expected);
        assert_eq!(expected.len(), VOTE_BYTES_MAX);

        let nil = ConsensusVote {
            kind: VoteKind::Prevote,
            height: 1,
            round: 0,
            block: None,
            voter,
        };
        let mut expected = vec![b'V'];
        expected.extend_from_slice(&CHAIN.0);
        expected.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0xAA; 32]);
        assert_eq!(nil.signing_bytes(&CHAIN), expected);
    }

    #[test]
    fn conflicting_votes_prove_equivocation() {
        let s = signer(100);
        let me = agora_market::Signer::node_id(&s);
        let ev = EquivocationEvidence {
            first: SignedVote::new(vote(VoteKind::Prevote, Some(1), me), &CHAIN, &s),
            second: SignedVote::new(vote(VoteKind::Prevote, Some(2), me), &CHAIN, &s),
        };
        assert_eq!(ev.verify(&CHAIN), Ok(me));
        // A nil vote against a block vote conflicts too.
        let ev = EquivocationEvidence {
            first: SignedVote::new(vote(VoteKind::Precommit, None, me), &CHAIN, &s),
            second: SignedVote::new(vote(VoteKind::Precommit, Some(2), me), &CHAIN, &s),
        };
        assert_eq!(ev.verify(&CHAIN), Ok(me));
    }

    #[test]
    fn non_conflicting_or_forged_votes_prove_nothing() {
        let (s, t) = (signer(100), signer(101));
        let (me, other) = (
            agora_market::Signer::node_id(&s),
            agora_market::Signer::node_id(&t),
        );
        let same = EquivocationEvidence {
            first: SignedVote::new(vote(VoteKind::Prevote, Some(1), me), &CHAIN, &s),
            second: SignedVote::new(vote(VoteKind::Prevote, Some(1), me), &CHAIN, &s),
        };
        assert_eq!(same.verify(&CHAIN), Err(EquivocationError::SameValue));
        let steps = EquivocationEvidence {
            first: SignedVote::new(vote(VoteKind::Prevote, Some(1), me), &CHAIN, &s),
            second: SignedVote::new(vote(VoteKind::Precommit, Some(2), me), &CHAIN, &s),
        };
        assert!(matches!(
            steps.verify(&CHAIN),
            Err(EquivocationError::DifferentSteps { .. })
        ));
        let voters = EquivocationEvidence {
            first: SignedVote::new(vote(VoteKind::Prevote, Some(1), me), &CHAIN, &s),
            second: SignedVote::new(vote(VoteKind::Prevote, Some(2), other), &CHAIN, &t),
        };
        assert!(matches!(
            voters.verify(&CHAIN),
            Err(EquivocationError::DifferentVoters { .. })
        ));
        // Someone else signing a vote in `me`'s name.
        let forged = EquivocationEvidence {
            first: SignedVote::new(vote(VoteKind::Prevote, Some(1), me), &CHAIN, &s),
            second: SignedVote::new(vote(VoteKind::Prevote, Some(2), me), &CHAIN, &t),
        };
        assert!(matches!(
            forged.verify(&CHAIN),
            Err(EquivocationError::BadSignature { .. })
        ));
    }

    /// THREATS A8: the same arbitrator's votes at one height and round on two chains are no
    /// equivocation on either: each signature covers its own chain's tag.
    #[test]
    fn votes_of_another_chain_are_no_evidence() {
        let s = signer(100);
        let me = agora_market::Signer::node_id(&s);
        let other_chain = ChainTag::of("another-chain");
        assert_ne!(other_chain, ChainTag::of("agora-devnet"));
        let ev = EquivocationEvidence {
            first: SignedVote::new(vote(VoteKind::Precommit, Some(1), me), &CHAIN, &s),
            second: SignedVote::new(vote(VoteKind::Precommit, Some(2), me), &other_chain, &s),
        };
        assert!(matches!(
            ev.verify(&CHAIN),
            Err(EquivocationError::BadSignature { .. })
        ));
        assert!(matches!(
            ev.verify(&other_chain),
            Err(EquivocationError::BadSignature { .. })
        ));
        // Both votes of the other chain (the real case: its stored certificates): evidence
        // there, a bad signature here.
        let there = EquivocationEvidence {
            first: SignedVote::new(vote(VoteKind::Precommit, Some(1), me), &other_chain, &s),
            second: SignedVote::new(vote(VoteKind::Precommit, Some(2), me), &other_chain, &s),
        };
        assert_eq!(there.verify(&other_chain), Ok(me));
        assert!(matches!(
            there.verify(&CHAIN),
            Err(EquivocationError::BadSignature { .. })
        ));
    }
}
