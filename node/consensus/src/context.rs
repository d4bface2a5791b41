//! The Agora [`Context`] for malachite: ids, validator set, signing scheme and timeouts.
//!
//! Arbitrators are the validators, all with voting power 1 (n = 3f + 1 from genesis). The
//! proposer of (height, round) is `validators[(height + round) % n]` in address order.

use agora_contracts::ChainTag;
use std::fmt;
use std::time::Duration;

use agora_market::{KeySigner, NodeId};
use arc_malachitebft_core_types::{
    self as mt, Context, NilOrVal, Round, Timeout, TimeoutKind, VotingPower,
};
use serde::{Deserialize, Serialize};

use super::block::{Block, BlockId};
use super::error::ConsensusError;
use super::messages::{BlockPart, Proposal, Vote};

/// A consensus height (1 is the first block after genesis).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Height(pub u64);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl mt::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);

    fn increment_by(&self, n: u64) -> Self {
        Height(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A validator address: the arbitrator's ed25519 node id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address(pub NodeId);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.short())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.0.short())
    }
}

impl mt::Address for Address {}

/// An ed25519 signature as malachite needs it (totally ordered).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConsensusSignature(#[serde(with = "serde_bytes")] pub [u8; 64]);

impl fmt::Debug for ConsensusSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({}..)", hex::encode(&self.0[..4]))
    }
}

impl From<agora_market::Signature> for ConsensusSignature {
    fn from(sig: agora_market::Signature) -> Self {
        ConsensusSignature(sig.0)
    }
}

impl From<ConsensusSignature> for agora_market::Signature {
    fn from(sig: ConsensusSignature) -> Self {
        agora_market::Signature(sig.0)
    }
}

/// The ed25519 signing scheme (keys and signatures from `agora_market::identity`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ed25519Scheme;

impl mt::SigningScheme for Ed25519Scheme {
    type DecodingError = ConsensusError;
    type Signature = ConsensusSignature;
    type PublicKey = NodeId;
    type PrivateKey = KeySigner;

    fn decode_signature(bytes: &[u8]) -> Result<ConsensusSignature, ConsensusError> {
        let arr: [u8; 64] = bytes.try_into().map_err(|_| ConsensusError::BadLength {
            what: "signature",
            expected: 64,
            got: bytes.len(),
        })?;
        Ok(ConsensusSignature(arr))
    }

    fn encode_signature(signature: &ConsensusSignature) -> Vec<u8> {
        signature.0.to_vec()
    }

    fn decode_public_key(bytes: &[u8]) -> Result<NodeId, ConsensusError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| ConsensusError::BadLength {
            what: "public key",
            expected: 32,
            got: bytes.len(),
        })?;
        Ok(NodeId(arr))
    }

    fn encode_public_key(public_key: &NodeId) -> Vec<u8> {
        public_key.0.to_vec()
    }
}

/// An arbitrator in the validator set (equal voting power).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    address: Address,
    public_key: NodeId,
    voting_power: VotingPower,
}

impl Validator {
    /// A validator with voting power 1.
    pub fn new(node: NodeId) -> Self {
        Validator {
            address: Address(node),
            public_key: node,
            voting_power: 1,
        }
    }
}

impl mt::Validator<AgoraContext> for Validator {
    fn address(&self) -> &Address {
        &self.address
    }

    fn public_key(&self) -> &NodeId {
        &self.public_key
    }

    fn voting_power(&self) -> VotingPower {
        self.voting_power
    }
}

/// The arbitrator committee, sorted by address; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
    /// The chain whose votes and proposals this set signs and checks (THREATS A8).
    chain: ChainTag,
}

impl ValidatorSet {
    /// Builds the set from genesis node ids; rejects an empty list and duplicates.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>) -> Result<Self, ConsensusError> {
        let mut ids: Vec<NodeId> = nodes.into_iter().collect();
        ids.sort();
        if ids.is_empty() {
            return Err(ConsensusError::EmptyValidatorSet);
        }
        if let Some(dup) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConsensusError::DuplicateValidator(dup[0]));
        }
        for id in &ids {
            id.verifying_key()
                .map_err(|_| ConsensusError::BadValidatorKey(*id))?;
        }
        Ok(ValidatorSet {
            validators: ids.into_iter().map(Validator::new).collect(),
            chain: ChainTag::default(),
        })
    }

    /// The set signing and checking votes and proposals of chain `chain` (the genesis's
    /// `ChainTag::of(chain_id)`; the all-zero tag without it, as tests use).
    pub fn on_chain(mut self, chain: ChainTag) -> Self {
        self.chain = chain;
        self
    }

    /// The chain every signature of this set covers.
    pub fn chain(&self) -> &ChainTag {
        &self.chain
    }

    /// Number of arbitrators n.
    pub fn len(&self) -> usize {
        self.validators.len()
    }

    /// Always false (the constructor rejects empty sets); present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    /// Whether `node` is an arbitrator.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.index_of(node).is_some()
    }

    /// Position of `node` in address order.
    pub fn index_of(&self, node: &NodeId) -> Option<usize> {
        self.validators
            .binary_search_by(|v| v.public_key.cmp(node))
            .ok()
    }

    /// The arbitrators' node ids, in address order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.validators.iter().map(|v| v.public_key)
    }

    /// Smallest voting power that is a quorum (> 2/3 of the total): 2f + 1 when n = 3f + 1.
    pub fn quorum(&self) -> u64 {
        let total = self.validators.len() as u64;
        total * 2 / 3 + 1
    }

    /// The proposer's node id for (height, round) as the driver numbers rounds.
    pub fn proposer_at(&self, height: u64, round: u32) -> NodeId {
        self.proposer(height, Round::new(round)).public_key
    }

    /// The proposer for (height, round): round-robin by `height + round`.
    pub fn proposer(&self, height: u64, round: Round) -> &Validator {
        let round = u64::try_from(round.as_i64()).unwrap_or(0);
        let n = self.validators.len() as u64;
        // n > 0 by construction, so the index is always in bounds.
        let idx = (height.wrapping_add(round) % n.max(1)) as usize;
        &self.validators[idx.min(self.validators.len().saturating_sub(1))]
    }
}

impl mt::ValidatorSet<AgoraContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }

    fn total_voting_power(&self) -> VotingPower {
        self.validators.iter().map(|v| v.voting_power).sum()
    }

    fn get_by_address(&self, address: &Address) -> Option<&Validator> {
        self.index_of(&address.0)
            .and_then(|i| self.validators.get(i))
    }

    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }
}

/// Round timeouts: `base + delta * round`, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusTimeouts {
    /// Wait for a proposal in round 0.
    pub propose: Duration,
    /// Wait after seeing 2f+1 prevotes for anything.
    pub prevote: Duration,
    /// Wait after seeing 2f+1 precommits for anything.
    pub precommit: Duration,
    /// Re-send our last votes if the round makes no progress.
    pub rebroadcast: Duration,
    /// Added per round to each of the above.
    pub delta: Duration,
    /// Upper bound for any round timeout.
    pub max: Duration,
}

impl Default for ConsensusTimeouts {
    fn default() -> Self {
        ConsensusTimeouts {
            propose: Duration::from_millis(3000),
            prevote: Duration::from_millis(1000),
            precommit: Duration::from_millis(1000),
            rebroadcast: Duration::from_millis(5000),
            delta: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl mt::Timeouts<AgoraContext> for ConsensusTimeouts {
    fn duration_for(&self, timeout: Timeout) -> Duration {
        let round = timeout.round.as_u32().unwrap_or(0);
        let base = match timeout.kind {
            TimeoutKind::Propose => self.propose,
            TimeoutKind::Prevote => self.prevote,
            TimeoutKind::Precommit => self.precommit,
            TimeoutKind::Rebroadcast => self.rebroadcast,
            TimeoutKind::FinalizeHeight(d) => return d,
        };
        base.saturating_add(self.delta.saturating_mul(round))
            .min(self.max)
    }
}

/// The Agora consensus context (stateless: the validator set travels with each height).
#[derive(Clone, Copy, Debug, Default)]
pub struct AgoraContext;

impl Context for AgoraContext {
    type Address = Address;
    type Height = Height;
    type ProposalPart = BlockPart;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Timeouts = ConsensusTimeouts;
    type Value = Block;
    type Vote = Vote;
    type Extension = ();
    type SigningScheme = Ed25519Scheme;

    fn select_proposer<'a>(
        &self,
        validator_set: &'a ValidatorSet,
        height: Height,
        round: Round,
    ) -> &'a Validator {
        validator_set.proposer(height.0, round)
    }

    fn new_proposal(
        &self,
        height: Height,
        round: Round,
        value: Block,
        pol_round: Round,
        address: Address,
    ) -> Proposal {
        Proposal::new(height, round, value, pol_round, address)
    }

    fn new_prevote(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<BlockId>,
        address: Address,
    ) -> Vote {
        Vote::new(mt::VoteType::Prevote, height, round, value_id, address)
    }

    fn new_precommit(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<BlockId>,
        address: Address,
    ) -> Vote {
        Vote::new(mt::VoteType::Precommit, height, round, value_id, address)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use agora_market::Signer;
    use mt::ValidatorSet as _;

    fn ids(n: u64) -> Vec<NodeId> {
        (0..n).map(|i| KeySigner::from_seed(i).node_id()).collect()
    }

    #[test]
    fn proposer_rotates_by_height_plus_round() {
        let set = ValidatorSet::new(ids(4)).unwrap();
        let p = |h, r| set.proposer(h, Round::new(r)).public_key;
        assert_eq!(p(1, 0), p(0, 1));
        assert_ne!(p(1, 0), p(2, 0));
        assert_eq!(p(1, 0), p(5, 0));
        let all: std::collections::BTreeSet<_> = (0..4).map(|r| p(1, r)).collect();
        assert_eq!(all.len(), 4, "every arbitrator proposes once per 4 rounds");
    }

    #[test]
    fn validator_set_rejects_empty_and_duplicates() {
        assert!(matches!(
            ValidatorSet::new(Vec::new()),
            Err(ConsensusError::EmptyValidatorSet)
        ));
        let mut dup = ids(3);
        dup.push(dup[0]);
        assert!(matches!(
            ValidatorSet::new(dup),
            Err(ConsensusError::DuplicateValidator(_))
        ));
        let set = ValidatorSet::new(ids(7)).unwrap();
        assert_eq!(set.quorum(), 5);
        assert_eq!(set.total_voting_power(), 7);
        assert_eq!(ValidatorSet::new(ids(4)).unwrap().quorum(), 3);
    }
}
