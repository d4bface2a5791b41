//! `ConsensusDriver`: runs malachite for one arbitrator, synchronously and deterministically.
//!
//! `handle(now, input)` checks and decodes what peers sent, feeds malachite through
//! `process!`, answers the engine's effects (see `io`) and returns the [`Effect`]s the node
//! must carry out, in order.

mod io;
mod sync;

pub use sync::{GossipedBlock, GossipedMessage};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use agora_market::{NodeId, Signer, Timestamp};
use arc_malachitebft_core_consensus::{
    self as mc, LocallyProposedValue, Params, State, ValuePayload,
};
use arc_malachitebft_core_types::{Round, VoteExtensionPolicy};
use tracing::debug;

use super::block::{Block, BlockId, Transaction};
use super::certificate::DecidedBlock;
use super::context::{Address, AgoraContext, ConsensusTimeouts, Height, ValidatorSet};
use super::effects::{ConsensusConfig, Effect, Input};
use super::error::ConsensusError;
use super::messages::{ConsensusMessage, SignedProposalMsg, SignedVoteMsg};
use super::wal::WalEntry;
use io::{Followup, Io, MAX_BLOCKS_PER_HEIGHT, MAX_BLOCKS_PER_ROUND, MAX_ROUND_LOOKAHEAD};

/// Test hook [`ConsensusDriver::byzantine_flood_proposals`]: rounds flooded at each height.
const FLOOD_ROUNDS: u32 = 400;
/// Test hook [`ConsensusDriver::byzantine_flood_proposals`]: blocks per flooded round.
const FLOOD_BLOCKS: usize = 4;

/// Most valid proposals for the next height held until we get there.
const MAX_FUTURE_PROPOSALS: usize = 16;
/// Most distinct votes for the next height held per validator, round and vote type: two, so an
/// equivocation is still seen when the height starts (THREATS A13).
const MAX_FUTURE_VOTES_PER_SLOT: usize = 2;

/// One arbitrator's consensus state machine.
pub struct ConsensusDriver {
    state: State<AgoraContext>,
    io: Io,
    me: NodeId,
    /// Verified proposals for `height + 1` with when they arrived, replayed when that height
    /// starts (their block time is judged against the clock at arrival).
    future_proposals: Vec<(NodeId, SignedProposalMsg, Timestamp)>,
    /// Verified votes for `height + 1`, replayed when that height starts. Held here rather
    /// than in Malachite's input buffer (500 per height, first come, no deduplication), where
    /// one member's copies of its own vote left no room for the others' (THREATS A13): here each
    /// validator has its own slots, [`MAX_FUTURE_VOTES_PER_SLOT`] per round and vote type, for
    /// the first [`MAX_ROUND_LOOKAHEAD`] + 1 rounds.
    future_votes: Vec<(NodeId, SignedVoteMsg)>,
    last_sync_request: Option<(u64, Timestamp)>,
}

impl std::fmt::Debug for ConsensusDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsensusDriver")
            .field("me", &self.me)
            .field("height", &self.io.height)
            .field("round", &self.state.round())
            .finish()
    }
}

impl ConsensusDriver {
    /// A driver for `signer` in the genesis committee `validators`; call
    /// [`Input::StartHeight`] next. A signer outside the committee follows without voting.
    pub fn new(
        signer: Arc<dyn Signer + Send + Sync>,
        validators: ValidatorSet,
        config: ConsensusConfig,
    ) -> Self {
        let me = signer.node_id();
        let params = Params {
            address: Address(me),
            threshold_params: Default::default(),
            value_payload: ValuePayload::ProposalOnly,
            enabled: true,
        };
        let state = State::new(
            AgoraContext,
            Height(1),
            validators.clone(),
            params,
            1_000,
            500,
        );
        ConsensusDriver {
            state,
            io: Io {
                signer,
                validators,
                config,
                now: 0,
                height: 0,
                parent: BlockId::GENESIS_PARENT,
                parent_time: 0,
                proposal_skew_ms: 0,
                proposal_lag_ms: 0,
                double_vote: false,
                withhold_votes: false,
                flood_proposals: false,
                height_started_at: 0,
                effects: Vec::new(),
                followups: VecDeque::new(),
                blocks: HashMap::new(),
                blocks_per_round: Default::default(),
                verified_certificate: None,
                history: BTreeMap::new(),
                replaying: false,
                sync_peer: None,
            },
            me,
            future_proposals: Vec::new(),
            future_votes: Vec::new(),
            last_sync_request: None,
        }
    }

    /// This arbitrator's id.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The height being decided (0 before the first [`Input::StartHeight`]).
    pub fn height(&self) -> u64 {
        self.io.height
    }

    /// The current round (`None` before the height's first round started).
    pub fn round(&self) -> Option<u32> {
        self.state.round().as_u32()
    }

    /// The committee.
    pub fn validators(&self) -> &ValidatorSet {
        &self.io.validators
    }

    /// Sets the time of the block the next [`Input::StartHeight`] builds on (the ledger's last
    /// block time): proposals must be after it. Call before starting a height from storage;
    /// after a decision the driver tracks it itself.
    pub fn set_parent_time(&mut self, time: Timestamp) {
        self.io.parent_time = time;
    }

    /// The round timeouts in force.
    pub fn timeouts(&self) -> ConsensusTimeouts {
        self.io.config.timeouts
    }

    /// Replaces the round timeouts for every timeout scheduled from now on (one already
    /// scheduled keeps its time): see [`ConsensusTimeouts::for_round_trip`].
    pub fn set_timeouts(&mut self, timeouts: ConsensusTimeouts) {
        self.io.config.timeouts = timeouts;
    }

    /// Test hook: this node proposes blocks `skew_ms` ahead of its clock (a faulty or
    /// byzantine proposer). Only with the `test-utils` feature.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn byzantine_proposal_skew(&mut self, skew_ms: u64) {
        self.io.proposal_skew_ms = skew_ms;
    }

    /// Test hook: this node proposes blocks `lag_ms` behind its clock, yet after their parent
    /// (a proposer with a slow clock, or one stamping early on purpose: THREATS A6). Only
    /// with the `test-utils` feature.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn byzantine_proposal_lag(&mut self, lag_ms: u64) {
        self.io.proposal_lag_ms = lag_ms;
    }

    /// Test hook: every vote this node casts goes out with a conflicting twin (an
    /// equivocating arbitrator). Only with the `test-utils` feature.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn byzantine_double_vote(&mut self) {
        self.io.double_vote = true;
    }

    /// Test hook: while `on`, this node never sends its own prevotes and precommits (a
    /// withholding arbitrator; it still proposes and follows the others' votes). Only with
    /// the `test-utils` feature.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn byzantine_withhold_votes(&mut self, on: bool) {
        self.io.withhold_votes = on;
    }

    /// Test hook: at the start of every height, this node signs and sends [`FLOOD_BLOCKS`]
    /// distinct blocks for each round it proposes among the first [`FLOOD_ROUNDS`] (a faulty
    /// proposer trying to fill the height's candidate-block slots, THREATS A11). Only with the
    /// `test-utils` feature.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn byzantine_flood_proposals(&mut self) {
        self.io.flood_proposals = true;
    }

    /// The flood of [`Self::byzantine_flood_proposals`] for the height just started.
    fn flood_proposals(&mut self, height: u64) {
        let timestamp = self.io.now.max(self.io.parent_time.saturating_add(1));
        let mut sent = 0;
        for round in 0..FLOOD_ROUNDS {
            if self.io.validators.proposer_at(height, round) != self.me {
                continue;
            }
            for k in 0..FLOOD_BLOCKS {
                let block = Block {
                    height,
                    parent: self.io.parent,
                    proposer: self.me,
                    timestamp,
                    transactions: vec![format!("flood {round} {k}").into_bytes()],
                };
                let proposal = super::messages::Proposal::new(
                    Height(height),
                    Round::new(round),
                    block,
                    Round::Nil,
                    Address(self.me),
                );
                let signed = SignedProposalMsg::sign(
                    proposal,
                    self.io.validators.chain(),
                    self.io.signer.as_ref(),
                );
                self.io
                    .effects
                    .push(Effect::Broadcast(ConsensusMessage::Proposal(signed)));
                sent += 1;
            }
        }
        tracing::warn!(
            height,
            proposals = sent,
            "test hook: flooded this height with proposals"
        );
    }

    /// A decided block still held in memory.
    pub fn decided(&self, height: u64) -> Option<&DecidedBlock> {
        self.io.history.get(&height)
    }

    /// Processes one input and returns the effects to carry out, in order.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Effect> {
        self.io.now = now;
        match input {
            Input::StartHeight {
                height,
                parent,
                wal,
            } => self.start_height(height, parent, wal),
            Input::Message { from, bytes } => match ConsensusMessage::decode(&bytes) {
                Ok(msg) => self.on_message(from, msg, false),
                Err(error) => self.reject(Some(from), error),
            },
            // Decoded and checked when judged (THREATS A12): neither is done again.
            Input::Verified { from, msg } => self.on_message(from, msg.0, true),
            Input::TimeoutElapsed(id) => {
                if id.height == self.io.height {
                    self.process(mc::Input::TimeoutElapsed(id.to_engine()));
                } else {
                    debug!(?id, height = self.io.height, "stale timeout ignored");
                }
            }
            Input::ProposeValue {
                height,
                round,
                transactions,
            } => self.on_propose_value(height, round, transactions),
            Input::SyncRequest { from, height } => self.on_sync_request(from, height),
            Input::SyncResponse { from, blocks } => self.on_sync_response(from, blocks),
        }
        self.drain_followups();
        std::mem::take(&mut self.io.effects)
    }

    /// Feeds one input to malachite, answering its effects.
    fn process(&mut self, input: mc::Input<AgoraContext>) {
        let io = &mut self.io;
        let state = &mut self.state;
        let result: Result<(), mc::Error<AgoraContext>> = mc::process!(
            input: input,
            state: state,
            metrics: &(),
            with: effect => io.on_effect(effect)
        );
        if let Err(e) = result {
            let height = io.height;
            io.effects.push(Effect::Rejected {
                from: None,
                error: ConsensusError::Engine {
                    height,
                    message: e.to_string(),
                },
            });
        }
    }

    fn drain_followups(&mut self) {
        while let Some(next) = self.io.followups.pop_front() {
            match next {
                Followup::Engine(input) => self.process(*input),
                Followup::StartHeight { height, parent } => {
                    self.start_height(height, parent, Vec::new())
                }
            }
        }
    }

    fn reject(&mut self, from: Option<NodeId>, error: ConsensusError) {
        debug!(?from, %error, "consensus input rejected");
        self.io.effects.push(Effect::Rejected { from, error });
    }

    fn start_height(&mut self, height: u64, parent: BlockId, wal: Vec<WalEntry>) {
        self.io.height = height;
        self.io.parent = parent;
        self.io.height_started_at = self.io.now;
        self.io.blocks.clear();
        self.io.blocks_per_round.clear();
        self.io.verified_certificate = None;
        let is_restart = !wal.is_empty();
        let mut replay = Vec::with_capacity(wal.len());
        for entry in &wal {
            if let Some(block) = entry.block() {
                self.io.blocks.insert(block.id(), block.clone());
            }
            replay.extend(entry.to_engine());
        }
        if is_restart {
            self.state.index_wal_entries(replay.iter());
            self.io.replaying = true;
        }
        self.process(mc::Input::StartHeight(
            Height(height),
            self.io.validators.clone(),
            is_restart,
            None,
            VoteExtensionPolicy::Disabled,
        ));
        for input in replay {
            self.process(input);
        }
        if is_restart {
            self.state.reset_entries_index();
            self.io.replaying = false;
        }
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.future_proposals)
            .into_iter()
            .filter(|(_, p, _)| p.proposal.block().height >= height)
            .partition(|(_, p, _)| p.proposal.block().height == height);
        self.future_proposals = later;
        for (from, proposal, arrived) in ready {
            self.on_proposal(from, proposal, arrived);
        }
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.future_votes)
            .into_iter()
            .filter(|(_, v)| v.vote.height_number() >= height)
            .partition(|(_, v)| v.vote.height_number() == height);
        self.future_votes = later;
        for (_, vote) in ready {
            self.process(mc::Input::Vote(vote.to_malachite()));
        }
        if self.io.flood_proposals {
            self.flood_proposals(height);
        }
    }

    /// A peer's message; `verified` when [`Self::judge_gossiped_message`] checked it already.
    fn on_message(&mut self, from: NodeId, msg: ConsensusMessage, verified: bool) {
        match msg {
            ConsensusMessage::Proposal(p) if verified => {
                self.on_verified_proposal(from, p, self.io.now)
            }
            ConsensusMessage::Proposal(p) => self.on_proposal(from, p, self.io.now),
            ConsensusMessage::Vote(v) if verified => self.on_verified_vote(from, v),
            ConsensusMessage::Vote(v) => self.on_vote(from, v),
            ConsensusMessage::PolkaCertificate(cert) => {
                let (height, count) = (cert.height, cert.signatures.len());
                if self.admit_certificate(from, height, count) {
                    let checked = if verified {
                        Ok(())
                    } else {
                        cert.verify(&self.io.validators)
                    };
                    match checked {
                        Ok(()) => self.process(mc::Input::PolkaCertificate(cert.to_malachite())),
                        Err(error) => self.reject(Some(from), error),
                    }
                }
            }
            ConsensusMessage::RoundCertificate(cert) => {
                let (height, count) = (cert.height, cert.signatures.len());
                if self.admit_certificate(from, height, count) {
                    let checked = if verified {
                        Ok(())
                    } else {
                        cert.verify(&self.io.validators)
                    };
                    match checked {
                        Ok(()) => self.process(mc::Input::RoundCertificate(cert.to_malachite())),
                        Err(error) => self.reject(Some(from), error),
                    }
                }
            }
        }
    }

    /// Whether a certificate is worth verifying: current height and at most n signatures.
    fn admit_certificate(&mut self, from: NodeId, height: u64, count: usize) -> bool {
        let max = self.io.validators.len();
        if count > max {
            let what = "certificate signatures";
            let error = ConsensusError::TooMany {
                from: Some(from),
                what,
                got: count,
                max,
            };
            self.reject(Some(from), error);
            return false;
        }
        if height > self.io.height {
            self.note_peer_height(height);
        }
        height == self.io.height
    }

    /// Asks peers for decided blocks when a valid message shows we are behind.
    fn note_peer_height(&mut self, msg_height: u64) {
        let current = self.io.height;
        if msg_height <= current || current == 0 {
            return;
        }
        let retry = self.io.config.sync_retry_ms;
        let stuck = self.io.now.saturating_sub(self.io.height_started_at) >= retry;
        if msg_height == current + 1 && !stuck {
            return; // a peer just decided before us: the normal race, not a lag
        }
        let recently = self
            .last_sync_request
            .is_some_and(|(h, at)| h == current && self.io.now.saturating_sub(at) < retry);
        if !recently {
            self.last_sync_request = Some((current, self.io.now));
            self.io
                .effects
                .push(Effect::SyncRequest { height: current });
        }
    }

    fn on_vote(&mut self, from: NodeId, vote: SignedVoteMsg) {
        if let Err(error) = vote.verify(&self.io.validators) {
            return self.reject(Some(from), error);
        }
        self.on_verified_vote(from, vote);
    }

    /// A vote whose voter and signature were checked.
    fn on_verified_vote(&mut self, from: NodeId, vote: SignedVoteMsg) {
        let height = vote.vote.height_number();
        self.note_peer_height(height);
        if height < self.io.height || height > self.io.height + 1 {
            return; // stale, or far ahead: sync will carry us there
        }
        if height == self.io.height + 1 {
            return self.hold_future_vote(from, vote);
        }
        self.process(mc::Input::Vote(vote.to_malachite()));
    }

    /// Keeps a verified vote for the next height, within its validator's slots (THREATS A13):
    /// a copy of a held vote is dropped, and so is a third distinct vote for one validator,
    /// round and type, or a vote for a round too far ahead (sync carries a replica that far
    /// behind).
    fn hold_future_vote(&mut self, from: NodeId, vote: SignedVoteMsg) {
        use arc_malachitebft_core_types::Vote as _;
        let (voter, round, kind) = (vote.vote.voter(), vote.vote.round(), vote.vote.vote_type());
        if round.as_u32().is_none_or(|r| r > MAX_ROUND_LOOKAHEAD) {
            return;
        }
        let mut in_slot = 0;
        for (_, held) in &self.future_votes {
            if held.vote == vote.vote {
                return; // a copy (the same vote signed again is the same vote)
            }
            if held.vote.voter() == voter
                && held.vote.round() == round
                && held.vote.vote_type() == kind
            {
                in_slot += 1;
            }
        }
        if in_slot >= MAX_FUTURE_VOTES_PER_SLOT {
            debug!(voter = %voter.short(), ?round, ?kind, "vote for the next height dropped: its slot is full");
            return;
        }
        self.future_votes.push((from, vote));
    }

    /// The (voter, height, round, prevote, block) of each vote held for the next height (tests).
    #[cfg(test)]
    pub(crate) fn future_votes_held(&self) -> Vec<(NodeId, u64, u32, bool, Option<BlockId>)> {
        use arc_malachitebft_core_types::{Vote as _, VoteType};
        self.future_votes
            .iter()
            .map(|(_, v)| {
                (
                    v.vote.voter(),
                    v.vote.height_number(),
                    v.vote.round().as_u32().unwrap_or(0),
                    v.vote.vote_type() == VoteType::Prevote,
                    v.vote.block_id(),
                )
            })
            .collect()
    }

    /// The (height, round) of each proposal held for the next height (tests).
    #[cfg(test)]
    pub(crate) fn future_proposals_held(&self) -> Vec<(u64, u32)> {
        self.future_proposals
            .iter()
            .map(|(_, p, _)| (p.proposal.block().height, p.proposal.round_number()))
            .collect()
    }

    /// A proposal that arrived at `arrived` (ms, our clock).
    fn on_proposal(&mut self, from: NodeId, proposal: SignedProposalMsg, arrived: Timestamp) {
        if let Err(error) = proposal.verify(&self.io.validators) {
            return self.reject(Some(from), error);
        }
        self.on_verified_proposal(from, proposal, arrived);
    }

    /// A proposal whose proposer, block and signature were checked.
    fn on_verified_proposal(
        &mut self,
        from: NodeId,
        proposal: SignedProposalMsg,
        arrived: Timestamp,
    ) {
        let block = proposal.proposal.block();
        let height = block.height;
        self.note_peer_height(height);
        if height < self.io.height || height > self.io.height + 1 {
            return;
        }
        if height == self.io.height + 1 || self.io.height == 0 {
            // Keep the first proposal per (height, round): an equivocating proposer cannot
            // crowd out the other rounds' proposers. And only for the first rounds, one per
            // validator: each of those is one validator's to propose, so a faulty member can
            // hold one slot, not sixteen proposals for far rounds that leave no room for the
            // honest round-0 proposal (a replica that is that far behind syncs instead).
            let round = proposal.proposal.round_number();
            if usize::try_from(round).map_or(true, |r| r >= self.io.validators.len().max(1)) {
                return;
            }
            let seen = self.future_proposals.iter().any(|(_, p, _)| {
                p.proposal.block().height == height && p.proposal.round_number() == round
            });
            if !seen && self.future_proposals.len() < MAX_FUTURE_PROPOSALS {
                self.future_proposals.push((from, proposal, arrived));
            }
            return;
        }
        if block.parent != self.io.parent {
            let error = ConsensusError::BlockMismatch {
                height,
                block: block.id(),
                reason: "parent is not the block decided at the previous height",
            };
            return self.reject(Some(from), error);
        }
        // BFT time: a fresh proposal must be after its parent and near our clock; a
        // re-proposal of a value locked in an earlier round (pol round) only after its parent.
        let round = proposal.proposal.round_number();
        let timely = match proposal.proposal.pol_round_number() {
            Some(_) if block.timestamp > self.io.parent_time => Ok(()),
            Some(_) => Err(agora_contracts::BlockTimeError::NotAfterParent {
                parent: self.io.parent_time,
                proposed: block.timestamp,
            }),
            None => agora_contracts::check_block_time(
                self.io.parent_time,
                block.timestamp,
                arrived,
                self.io.config.block_time_tolerance_ms,
            ),
        };
        if let Err(error) = timely {
            let error = ConsensusError::BlockTime {
                proposer: block.proposer,
                height,
                round,
                error,
            };
            return self.reject(Some(from), error);
        }
        let id = block.id();
        if !self.io.blocks.contains_key(&id) {
            // A faulty proposer filled every slot of the height with its own blocks for far
            // rounds (or many in its own), so every honest proposal after them was refused and
            // the chain never decided again (THREATS A11, found by a read-only audit in session
            // 49): far rounds are not taken, and each round's proposer gets two blocks at most.
            let current = self.state.round().as_u32().unwrap_or(0);
            if round > current.saturating_add(MAX_ROUND_LOOKAHEAD) {
                return;
            }
            let taken = self.io.blocks_per_round.entry(round).or_default();
            if *taken >= MAX_BLOCKS_PER_ROUND {
                let error = ConsensusError::TooMany {
                    from: Some(from),
                    what: "candidate blocks in this round",
                    got: usize::from(*taken) + 1,
                    max: usize::from(MAX_BLOCKS_PER_ROUND),
                };
                return self.reject(Some(from), error);
            }
            *taken += 1;
            if self.io.blocks.len() >= MAX_BLOCKS_PER_HEIGHT {
                let error = ConsensusError::TooMany {
                    from: Some(from),
                    what: "candidate blocks at this height",
                    got: self.io.blocks.len() + 1,
                    max: MAX_BLOCKS_PER_HEIGHT,
                };
                return self.reject(Some(from), error);
            }
            self.io.blocks.insert(id, block.clone());
        }
        self.process(mc::Input::Proposal(proposal.to_malachite()));
    }

    fn on_propose_value(&mut self, height: u64, round: u32, transactions: Vec<Transaction>) {
        if height != self.io.height {
            debug!(
                height,
                current = self.io.height,
                "late mempool answer ignored"
            );
            return;
        }
        let block = Block {
            height,
            parent: self.io.parent,
            proposer: self.me,
            // Always after the parent, even when this node's clock lags the last block.
            timestamp: self
                .io
                .now
                .saturating_add(self.io.proposal_skew_ms)
                .saturating_sub(self.io.proposal_lag_ms)
                .max(self.io.parent_time.saturating_add(1)),
            transactions,
        };
        if self.io.proposal_lag_ms > 0 {
            tracing::warn!(
                height,
                behind_ms = self.io.now.saturating_sub(block.timestamp),
                "test hook: proposal stamped behind the clock"
            );
        }
        self.io.blocks.insert(block.id(), block.clone());
        let value = LocallyProposedValue::new(Height(height), Round::new(round), block);
        self.process(mc::Input::Propose(value));
    }
}
