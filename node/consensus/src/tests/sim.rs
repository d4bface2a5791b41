//! A deterministic, seeded in-memory network that carries out driver effects.
//!
//! Time is simulated: events (message deliveries, timers, mempool answers, sync traffic) are
//! ordered by (time, sequence number), and link delays come from a seeded RNG.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agora_market::{KeySigner, NodeId, Signer, Timestamp};
use arc_malachitebft_core_types::{NilOrVal, Vote as _};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    Block, BlockId, CommitCertificate, ConsensusConfig, ConsensusDriver, ConsensusError,
    ConsensusMessage, ConsensusTimeouts, DecidedBlock, Effect, GossipedMessage, Input, Misbehavior,
    SignedVoteMsg, TimeoutId, ValidatorSet, Vote, WalEntry,
};

/// Short timeouts so simulated rounds are quick.
pub fn test_config() -> ConsensusConfig {
    ConsensusConfig {
        timeouts: ConsensusTimeouts {
            propose: Duration::from_millis(400),
            prevote: Duration::from_millis(150),
            precommit: Duration::from_millis(150),
            rebroadcast: Duration::from_millis(1_000),
            delta: Duration::from_millis(100),
            max: Duration::from_secs(5),
        },
        history: 1024,
        max_sync_blocks: 64,
        sync_retry_ms: 500,
        block_time_tolerance_ms: 2_000,
    }
}

/// One simulated arbitrator and what it observed.
pub struct SimNode {
    pub signer: Arc<KeySigner>,
    pub driver: ConsensusDriver,
    pub decided: Vec<(u64, Block, CommitCertificate)>,
    pub evidence: Vec<Misbehavior>,
    pub rejected: Vec<(Option<NodeId>, ConsensusError)>,
    /// What the gossip judge found invalid (with [`Sim::judged`]).
    pub judged_invalid: Vec<ConsensusError>,
    /// The current height's write-ahead log (what sled would hold).
    pub wal: Vec<WalEntry>,
    pub sync_requests: usize,
    pub crashed: bool,
    /// Sends a conflicting vote alongside each of its votes.
    pub byzantine: bool,
    timers: HashMap<TimeoutId, u64>,
    /// Encoded own votes that reached the WAL (checked before each broadcast of them).
    persisted_votes: HashSet<Vec<u8>>,
}

impl SimNode {
    pub fn id(&self) -> NodeId {
        self.signer.node_id()
    }

    /// (height, block id) of the last decision, or (0, genesis parent).
    pub fn tip(&self) -> (u64, BlockId) {
        self.decided
            .last()
            .map_or((0, BlockId::GENESIS_PARENT), |(h, b, _)| (*h, b.id()))
    }
}

enum Event {
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        id: TimeoutId,
        generation: u64,
    },
    Mempool {
        node: usize,
        height: u64,
        round: u32,
    },
    SyncRequest {
        to: usize,
        from: usize,
        height: u64,
    },
    SyncResponse {
        to: usize,
        from: usize,
        blocks: Vec<DecidedBlock>,
    },
}

/// The simulated network.
pub struct Sim {
    pub nodes: Vec<SimNode>,
    pub validators: ValidatorSet,
    pub now: Timestamp,
    queue: BTreeMap<(Timestamp, u64), Event>,
    seq: u64,
    rng: StdRng,
    generation: u64,
    /// Probability that a gossip delivery is lost.
    pub loss: f64,
    /// Every delivery is judged first, as the ledger task does (THREATS A12): only what the
    /// judge forwards or finds far ahead reaches the driver, as [`Input::Verified`].
    pub judged: bool,
    /// One-way delay of every delivery, ms (uniform in the range).
    links_ms: (u64, u64),
    /// The proposer answers a value request this long after it (ms); `None`: at once (2 ms).
    /// With `Some(e)` it answers at `min(e, ¾ of the propose timeout)`, as a node's ledger
    /// task does for an empty block (`ChainTimers`).
    empty_block_ms: Option<u64>,
    config: ConsensusConfig,
}

/// How a [`Sim`] is set up beyond its size and seed.
pub struct SimSetup {
    pub config: ConsensusConfig,
    /// One-way link delay range, ms.
    pub links_ms: (u64, u64),
    /// See [`Sim`]'s field of that name.
    pub empty_block_ms: Option<u64>,
}

impl Default for SimSetup {
    fn default() -> Self {
        SimSetup {
            config: test_config(),
            links_ms: (5, 40),
            empty_block_ms: None,
        }
    }
}

impl Sim {
    /// `n` arbitrators with seeded keys, all started at height 1.
    pub fn new(n: usize, seed: u64) -> Self {
        Sim::with(n, seed, SimSetup::default())
    }

    /// [`Sim::new`] with other timeouts, links or proposers.
    pub fn with(n: usize, seed: u64, setup: SimSetup) -> Self {
        let signers: Vec<Arc<KeySigner>> = (0..n as u64)
            .map(|i| {
                Arc::new(KeySigner::from_seed(
                    seed.wrapping_mul(1_000).wrapping_add(i),
                ))
            })
            .collect();
        let validators = ValidatorSet::new(signers.iter().map(|s| s.node_id())).unwrap();
        let nodes = signers
            .into_iter()
            .map(|signer| SimNode {
                driver: ConsensusDriver::new(
                    signer.clone(),
                    validators.clone(),
                    setup.config.clone(),
                ),
                signer,
                decided: Vec::new(),
                evidence: Vec::new(),
                rejected: Vec::new(),
                judged_invalid: Vec::new(),
                wal: Vec::new(),
                sync_requests: 0,
                crashed: false,
                byzantine: false,
                timers: HashMap::new(),
                persisted_votes: HashSet::new(),
            })
            .collect();
        let mut sim = Sim {
            nodes,
            validators,
            now: 0,
            queue: BTreeMap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            generation: 0,
            loss: 0.0,
            judged: false,
            links_ms: setup.links_ms,
            empty_block_ms: setup.empty_block_ms,
            config: setup.config,
        };
        for i in 0..n {
            sim.input(
                i,
                Input::StartHeight {
                    height: 1,
                    parent: BlockId::GENESIS_PARENT,
                    wal: Vec::new(),
                },
            );
        }
        sim
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), event);
    }

    fn delay(&mut self) -> u64 {
        self.rng.gen_range(self.links_ms.0..=self.links_ms.1)
    }

    /// Feeds an input to node `i` and carries out its effects.
    pub fn input(&mut self, i: usize, input: Input) {
        if self.nodes[i].crashed {
            return;
        }
        let effects = self.nodes[i].driver.handle(self.now, input);
        for effect in effects {
            self.apply(i, effect);
        }
    }

    /// A delivery through the gossip judge (see [`Sim::judged`]).
    fn deliver_judged(&mut self, to: usize, from: NodeId, bytes: &[u8]) {
        if self.nodes[to].crashed {
            return;
        }
        match self.nodes[to].driver.judge_gossiped_message(bytes) {
            GossipedMessage::Forward(msg) | GossipedMessage::Far(msg) => {
                self.input(to, Input::Verified { from, msg })
            }
            GossipedMessage::Stale => {}
            GossipedMessage::Invalid(error) => self.nodes[to].judged_invalid.push(error),
        }
    }

    fn broadcast(&mut self, from: usize, bytes: Vec<u8>) {
        for to in 0..self.nodes.len() {
            if to != from {
                if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
                    continue;
                }
                let d = self.delay();
                self.schedule(
                    d,
                    Event::Deliver {
                        to,
                        from,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }

    fn apply(&mut self, i: usize, effect: Effect) {
        match effect {
            Effect::Broadcast(msg) => {
                if let ConsensusMessage::Vote(v) = &msg
                    && v.vote.voter() == self.nodes[i].id()
                {
                    let key = serde_cbor::to_vec(v).unwrap();
                    assert!(
                        self.nodes[i].persisted_votes.contains(&key),
                        "node {i} broadcast a vote before persisting it to its WAL"
                    );
                }
                if self.nodes[i].byzantine
                    && let ConsensusMessage::Vote(v) = &msg
                {
                    let forged = self.conflicting_vote(i, &v.vote);
                    self.broadcast(i, ConsensusMessage::Vote(forged).encode());
                }
                self.broadcast(i, msg.encode());
            }
            Effect::ScheduleTimeout { timeout, after } => {
                self.generation += 1;
                let generation = self.generation;
                self.nodes[i].timers.insert(timeout, generation);
                let ms = after.as_millis() as u64;
                self.schedule(
                    ms,
                    Event::Timer {
                        node: i,
                        id: timeout,
                        generation,
                    },
                );
            }
            Effect::CancelTimeout(id) => {
                self.nodes[i].timers.remove(&id);
            }
            Effect::CancelAllTimeouts => self.nodes[i].timers.clear(),
            Effect::RequestValue {
                height,
                round,
                within,
            } => {
                let after = self.empty_block_ms.map_or(2, |e| {
                    e.min(u64::try_from(within.as_millis() * 3 / 4).unwrap_or(u64::MAX))
                });
                self.schedule(
                    after,
                    Event::Mempool {
                        node: i,
                        height,
                        round,
                    },
                );
            }
            Effect::Decided {
                height,
                block,
                certificate,
            } => {
                self.nodes[i].decided.push((height, block, certificate));
                self.nodes[i].wal.clear();
            }
            Effect::PersistWal(entry) => {
                if let WalEntry::Vote(v) = &entry {
                    let key = serde_cbor::to_vec(v).unwrap();
                    self.nodes[i].persisted_votes.insert(key);
                }
                self.nodes[i].wal.push(entry);
            }
            Effect::SyncRequest { height } => {
                self.nodes[i].sync_requests += 1;
                let n = self.nodes.len();
                let to = (i + self.rng.gen_range(1..n)) % n;
                let d = self.delay();
                self.schedule(
                    d,
                    Event::SyncRequest {
                        to,
                        from: i,
                        height,
                    },
                );
            }
            Effect::SendSyncResponse { to, blocks } => {
                if let Some(to) = self.index_of(&to) {
                    let d = self.delay();
                    self.schedule(
                        d,
                        Event::SyncResponse {
                            to,
                            from: i,
                            blocks,
                        },
                    );
                }
            }
            Effect::Evidence(m) => self.nodes[i].evidence.push(m),
            Effect::Rejected { from, error } => self.nodes[i].rejected.push((from, error)),
        }
    }

    /// A vote for the same (height, round, type) but another value, signed by node `i`.
    fn conflicting_vote(&mut self, i: usize, vote: &Vote) -> SignedVoteMsg {
        let other = match vote.value() {
            NilOrVal::Val(_) => NilOrVal::Nil,
            NilOrVal::Nil => NilOrVal::Val(BlockId(self.rng.r#gen())),
        };
        let forged = Vote::new(
            vote.vote_type(),
            vote.height(),
            vote.round(),
            other,
            *vote.validator_address(),
        );
        SignedVoteMsg::sign(
            forged,
            &agora_contracts::ChainTag::default(),
            self.nodes[i].signer.as_ref(),
        )
    }

    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id() == *id)
    }

    fn step(&mut self) -> bool {
        let Some(((at, _), event)) = self.queue.pop_first() else {
            return false;
        };
        self.now = at;
        match event {
            Event::Deliver { to, from, bytes } => {
                let from = self.nodes[from].id();
                if self.judged {
                    self.deliver_judged(to, from, &bytes);
                } else {
                    self.input(to, Input::Message { from, bytes });
                }
            }
            Event::Timer {
                node,
                id,
                generation,
            } => {
                if self.nodes[node].timers.get(&id) == Some(&generation) {
                    self.nodes[node].timers.remove(&id);
                    self.input(node, Input::TimeoutElapsed(id));
                }
            }
            Event::Mempool {
                node,
                height,
                round,
            } => {
                let transactions = (0..3)
                    .map(|k| format!("tx-h{height}-r{round}-n{node}-{k}").into_bytes())
                    .collect();
                self.input(
                    node,
                    Input::ProposeValue {
                        height,
                        round,
                        transactions,
                    },
                );
            }
            Event::SyncRequest { to, from, height } => {
                let from = self.nodes[from].id();
                self.input(to, Input::SyncRequest { from, height });
            }
            Event::SyncResponse { to, from, blocks } => {
                let from = self.nodes[from].id();
                self.input(to, Input::SyncResponse { from, blocks });
            }
        }
        true
    }

    /// Runs until `done` holds or simulated time passes `deadline_ms`; returns whether `done` held.
    pub fn run_until(&mut self, deadline_ms: Timestamp, done: impl Fn(&Sim) -> bool) -> bool {
        while !done(self) {
            if self.now > deadline_ms || !self.step() {
                return false;
            }
        }
        true
    }

    /// Whether every live node (or those in `who`) has decided at least `height` heights.
    pub fn all_reached(&self, who: &[usize], height: u64) -> bool {
        who.iter().all(|&i| self.nodes[i].tip().0 >= height)
    }

    /// Stops node `i`: it loses every message and timer until restarted.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].crashed = true;
        self.nodes[i].timers.clear();
    }

    /// Restarts node `i` as after a process crash: a fresh driver at the height after its
    /// ledger tip, given the write-ahead log it persisted for that height. Returns what the
    /// restart broadcast.
    pub fn restart(&mut self, i: usize) -> Vec<ConsensusMessage> {
        let node = &mut self.nodes[i];
        node.crashed = false;
        node.driver = ConsensusDriver::new(
            node.signer.clone(),
            self.validators.clone(),
            self.config.clone(),
        );
        let (height, parent) = node.tip();
        let wal = node.wal.clone();
        let start = Input::StartHeight {
            height: height + 1,
            parent,
            wal,
        };
        let effects = node.driver.handle(self.now, start);
        let sent = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Broadcast(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        for effect in effects {
            self.apply(i, effect);
        }
        sent
    }
}

/// Asserts that all given nodes decided the same block at every height both reached, that
/// blocks chain by parent id, and that every certificate verifies.
pub fn assert_consistent(sim: &Sim, who: &[usize]) {
    let mut by_height: BTreeMap<u64, BlockId> = BTreeMap::new();
    for &i in who {
        let node = &sim.nodes[i];
        let mut parent = BlockId::GENESIS_PARENT;
        for (k, (height, block, cert)) in node.decided.iter().enumerate() {
            assert_eq!(
                *height,
                k as u64 + 1,
                "node {i} decided heights out of order"
            );
            assert_eq!(block.height, *height);
            assert_eq!(
                block.parent, parent,
                "node {i}: block {height} does not chain"
            );
            assert_eq!(cert.block_id, block.id());
            cert.verify(&sim.validators).unwrap();
            parent = block.id();
            let first = by_height.entry(*height).or_insert(block.id());
            assert_eq!(
                *first,
                block.id(),
                "two different blocks decided at height {height}"
            );
        }
    }
}
