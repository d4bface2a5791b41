//! A deterministic simulation of the role and readings machines on six nodes — customer A,
//! provider B and four arbitrators — around a real [`Ledger`], with kills, restarts,
//! partitions, late, stale and repeated blocks. The property tests drive it with random fault
//! schedules and check the invariants on what it records.
//!
//! The model, kept close to the node:
//! - The chain applies the mempool every [`BLOCK_MS`] when there are transactions, every
//!   [`BUSY_BLOCK_MS`] while the ledger awaits time, every [`QUIET_BLOCK_MS`] otherwise.
//!   Admission checks a transaction against the ledger plus the mempool.
//! - A node receives block `h` at `time(h) + delay` unless partitioned; a restarted node
//!   replays from the last block it had applied (its store).
//! - Radio: every device sends an uplink every [`FRAME_MS`]; every node that is up hears it
//!   (partitions cut the network, not the air).
//! - Gossip and replay requests reach exactly the nodes that are up and not partitioned, at
//!   once. A checkpoint is *published* when its author is connected as it makes it: only
//!   published checkpoints count as processing (a killed node loses what it fed since its last
//!   checkpoint, a cut-off node's checkpoints reach nobody; in both cases the work is redone).
//! - Presence: a watched peer is `Down` at once when killed, after [`PRESENCE_TIMEOUT_MS`] when
//!   cut off (last seen: the cut), `Up` again when reachable.
//! - A hostile peer in range of the sensors gossips a forged checkpoint every [`FORGERY_MS`]:
//!   every device covered a few counters past what it just heard (plausible, unlike
//!   `u32::MAX`), and released. It signs as itself: it cannot sign as anyone else.
//! - Probes: an arbitrator's probe of the provider is answered at once, `up` exactly when the
//!   provider runs the contract's service and both are up and not partitioned; an unreachable
//!   provider does not answer (the machine's timeout). A lying arbitrator ([`Sim::liar`])
//!   reports every interval the opposite of what it would see, at the interval's first step
//!   (before any honest report, so a quorum of one would follow it).
//! - What every node could do at each step (connected, block delay, the provider's running
//!   services) is kept as [`Snapshot`]s, so the properties can compare the committee's
//!   decisions with what really happened.

mod chain;
mod effects;
mod evidence;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use agora_market::{KeySigner, NodeId, Signer, Timestamp};
use cid::Cid;

use super::readings::{self, CheckpointClaim, Frame, Readings, ReadingsConfig};
use super::{Input, LedgerFacts, PRESENCE_TIMEOUT_MS, Presence, Roles, RolesConfig, ServiceRef};
use agora_contracts::contract::{ContractId, Qos};
use agora_contracts::ledger::{Ledger, LedgerEvent, TxKind};
use agora_contracts::lifecycle::ContractStatus;
use agora_contracts::test_utils::{ContractBuilder, genesis_with, test_cid};
use chain::{Block, Chain};
pub(super) use evidence::Snapshot;

/// Simulation step.
pub(super) const STEP_MS: u64 = 20;
/// Block interval with transactions waiting.
pub(super) const BLOCK_MS: u64 = 250;
/// Block interval while the ledger awaits time (a contract is running, a handover is near).
pub(super) const BUSY_BLOCK_MS: u64 = 1_000;
/// Block interval of a quiet chain.
pub(super) const QUIET_BLOCK_MS: u64 = 10_000;
/// Uplink interval per device.
pub(super) const FRAME_MS: u64 = 100;
/// How often the hostile peer gossips a forged checkpoint.
pub(super) const FORGERY_MS: u64 = 500;
/// The hostile peer.
const FORGER: NodeId = NodeId([0xEE; 32]);
/// Staging takes this long.
const STAGE_MS: u64 = 100;
/// Devices of the customer's service image.
pub(super) const DEVICES: [u32; 2] = [101, 102];
/// Node indices.
pub(super) const A: usize = 0;
pub(super) const B: usize = 1;
pub(super) const NODES: usize = 6;
/// Simulated time starts here.
pub(super) const T0: Timestamp = 1_000;
/// Payment of a contract: one token per millisecond of its coverage window, so what the
/// provider is paid reads as the milliseconds it is paid for.
pub(super) const COVERAGE_MS: u64 = 600_000;

/// A fault at a time.
#[derive(Clone, Copy, Debug)]
pub(super) enum Fault {
    Kill(usize),
    Restart(usize),
    Partition(usize),
    Heal(usize),
    /// Blocks reach the node this much later.
    Delay(usize, u64),
    /// The node is handed an old block again (`back` blocks behind its view).
    Stale(usize, usize),
    /// The node is handed its latest block again.
    Repeat(usize),
}

impl Fault {
    fn node(&self) -> usize {
        match *self {
            Fault::Kill(n)
            | Fault::Restart(n)
            | Fault::Partition(n)
            | Fault::Heal(n)
            | Fault::Delay(n, _)
            | Fault::Stale(n, _)
            | Fault::Repeat(n) => n,
        }
    }
}

/// Work for a node.
enum Work {
    Roles(Input),
    Readings(readings::Input),
}

struct Node {
    id: NodeId,
    signer: KeySigner,
    up: bool,
    partitioned: bool,
    killed_at: Timestamp,
    cut_at: Timestamp,
    delay: u64,
    /// Index of the last block applied (its store).
    view: usize,
    roles: Roles,
    readings: Readings,
    running: BTreeSet<String>,
    watching: BTreeMap<NodeId, u32>,
    /// Presence per watched peer: reachable, and since when unreachable.
    presence: BTreeMap<NodeId, (bool, Option<Timestamp>)>,
    answers: Vec<(Timestamp, Input)>,
    activating: BTreeMap<String, (ServiceRef, Timestamp)>,
    proofs: BTreeMap<String, Vec<Cid>>,
    own: Option<Cid>,
}

impl Node {
    fn new(signer: KeySigner, own: Option<Cid>, now: Timestamp) -> Self {
        let id = signer.node_id();
        Node {
            id,
            signer,
            up: true,
            partitioned: false,
            killed_at: 0,
            cut_at: 0,
            delay: 0,
            view: 0,
            roles: Roles::new(id, now, RolesConfig::default(), own),
            readings: Readings::new(id, ReadingsConfig::default()),
            running: BTreeSet::new(),
            watching: BTreeMap::new(),
            presence: BTreeMap::new(),
            answers: Vec::new(),
            activating: BTreeMap::new(),
            proofs: BTreeMap::new(),
            own,
        }
    }

    fn connected(&self) -> bool {
        self.up && !self.partitioned
    }
}

/// What happened, for the invariants.
#[derive(Debug, Default)]
pub(super) struct Record {
    /// Uplinks sent: (device, counter, time).
    pub emitted: Vec<(u32, u32, Timestamp)>,
    /// Processing: (device, counter) → (node, published) for every checkpoint that covers it;
    /// `published`: its author was connected when it made it, so the network learned of it.
    pub processed: BTreeMap<(u32, u32), Vec<(usize, bool)>>,
    /// Checkpoints made: (time, node, device, first, last, published).
    pub published: Vec<(Timestamp, usize, u32, u32, u32, bool)>,
    /// Moments two nodes could feed one device: (time, device, nodes).
    pub overlaps: Vec<(Timestamp, u32, Vec<usize>)>,
    /// Every ledger event, with its block time.
    pub events: Vec<(Timestamp, LedgerEvent)>,
    /// Nodes that were killed or cut off at some point.
    pub faulty: BTreeSet<usize>,
    /// Nodes that were killed at some point.
    pub killed: BTreeSet<usize>,
    /// Largest block delay each node had.
    pub max_delay: BTreeMap<usize, u64>,
    /// Settle transactions admitted per contract.
    pub settle_requests: BTreeMap<ContractId, u32>,
    /// Every settle transaction admitted: (time, node, contract).
    pub settle_log: Vec<(Timestamp, usize, ContractId)>,
    /// Timeline notes: (time, node, phase, detail).
    pub notes: Vec<(Timestamp, usize, String, String)>,
    /// What every node could do, from each time on until the next entry.
    pub snapshots: Vec<(Timestamp, Snapshot)>,
}

/// The simulated world.
pub(super) struct Sim {
    pub now: Timestamp,
    chain: Chain,
    nodes: Vec<Node>,
    next_frame: Timestamp,
    counters: BTreeMap<u32, u32>,
    contract_nonce: u64,
    envelopes: BTreeMap<Arc<[u8]>, CheckpointClaim>,
    next_envelope: u64,
    pub record: Record,
    /// Register a new standby contract whenever the last one closed, until this time.
    pub insure_until: Timestamp,
    pub qos: Qos,
    /// An arbitrator whose probes report the opposite of what it sees.
    pub liar: Option<usize>,
    /// Probe intervals the liar reported: (contract, interval).
    lied: BTreeSet<(ContractId, u64)>,
}

impl Sim {
    pub fn new() -> Self {
        let (genesis, accounts, committee) = genesis_with(2, 4, 1_000_000);
        let ledger = match Ledger::from_genesis(&genesis) {
            Ok(l) => l,
            Err(e) => panic!("genesis: {e}"),
        };
        let image = test_cid(b"image");
        let now = T0;
        let mut nodes = Vec::new();
        for (i, s) in accounts.into_iter().chain(committee).enumerate() {
            nodes.push(Node::new(s, (i == A).then_some(image), now));
        }
        let genesis_block = Block {
            time: 0,
            events: Vec::new(),
            ledger: Arc::new(ledger.clone()),
        };
        let mut sim = Sim {
            now,
            chain: Chain {
                scratch: ledger.clone(),
                ledger,
                mempool: Vec::new(),
                blocks: vec![genesis_block],
                last_block_at: 0,
            },
            nodes,
            next_frame: now,
            counters: DEVICES.iter().map(|d| (*d, 0)).collect(),
            contract_nonce: 0,
            envelopes: BTreeMap::new(),
            next_envelope: 0,
            record: Record::default(),
            insure_until: u64::MAX,
            qos: Qos {
                max_activation_delay_ms: 5_000,
                min_uptime_permille: 900,
                heartbeat_interval_ms: 500,
            },
            liar: None,
            lied: BTreeSet::new(),
        };
        for i in 0..NODES {
            sim.boot(i);
        }
        sim
    }

    /// Whether node `i` may feed `device` now.
    pub fn feeds(&self, i: usize, device: u32) -> bool {
        let n = &self.nodes[i];
        n.up && n.readings.may_feed(device, self.now)
    }

    /// Starts node `i`'s machines from its stored view.
    fn boot(&mut self, i: usize) {
        let now = self.now;
        let facts = self.facts(i, self.nodes[i].view, false);
        self.run(i, Work::Roles(Input::Ledger(facts)));
        let _ = now;
    }

    fn facts(&self, i: usize, view: usize, with_events: bool) -> LedgerFacts {
        let n = &self.nodes[i];
        let b = &self.chain.blocks[view];
        let events = if with_events {
            b.events.clone()
        } else {
            Vec::new()
        };
        LedgerFacts::from_ledger(n.id, &b.ledger, events, &n.roles.images())
    }

    /// Applies a fault now.
    pub fn fault(&mut self, f: Fault) {
        let now = self.now;
        let i = f.node();
        match f {
            Fault::Kill(_) if self.nodes[i].up => {
                self.record.faulty.insert(i);
                self.record.killed.insert(i);
                let n = &mut self.nodes[i];
                n.up = false;
                n.killed_at = now;
            }
            Fault::Restart(_) if !self.nodes[i].up => {
                let n = &self.nodes[i];
                let mut fresh = Node::new(n.signer.clone(), n.own, now);
                fresh.view = n.view;
                fresh.partitioned = n.partitioned;
                fresh.cut_at = n.cut_at;
                fresh.delay = n.delay;
                self.nodes[i] = fresh;
                self.boot(i);
            }
            Fault::Partition(_) if !self.nodes[i].partitioned => {
                self.record.faulty.insert(i);
                let n = &mut self.nodes[i];
                n.partitioned = true;
                n.cut_at = now;
            }
            Fault::Heal(_) => self.nodes[i].partitioned = false,
            Fault::Delay(_, ms) => {
                self.nodes[i].delay = ms;
                let m = self.record.max_delay.entry(i).or_default();
                *m = (*m).max(ms);
            }
            Fault::Stale(_, back) if self.nodes[i].up => {
                let view = self.nodes[i].view.saturating_sub(back);
                let facts = self.facts(i, view, true);
                self.run(i, Work::Roles(Input::Ledger(facts)));
            }
            Fault::Repeat(_) if self.nodes[i].up => {
                let facts = self.facts(i, self.nodes[i].view, true);
                self.run(i, Work::Roles(Input::Ledger(facts)));
            }
            _ => {}
        }
    }

    /// Heals, restarts and undelays every node.
    pub fn calm(&mut self) {
        for i in 0..NODES {
            self.fault(Fault::Heal(i));
            self.fault(Fault::Restart(i));
            self.nodes[i].delay = 0;
        }
    }

    /// Advances one step.
    pub fn step(&mut self) {
        self.now += STEP_MS;
        let now = self.now;
        self.insure();
        if self.chain.produce(now)
            && let Some(b) = self.chain.blocks.last()
        {
            for e in &b.events {
                self.record.events.push((b.time, e.clone()));
            }
        }
        self.radio();
        if now.is_multiple_of(FORGERY_MS) {
            self.forge();
        }
        self.lie();
        for i in 0..NODES {
            if !self.nodes[i].up {
                continue;
            }
            self.deliver_blocks(i);
            self.presence(i);
            let due: Vec<Input> = {
                let n = &mut self.nodes[i];
                let (due, later): (Vec<_>, Vec<_>) =
                    n.answers.drain(..).partition(|(t, _)| *t <= now);
                n.answers = later;
                due.into_iter().map(|(_, x)| x).collect()
            };
            for x in due {
                self.run(i, Work::Roles(x));
            }
            let n = &self.nodes[i];
            if n.connected() && !n.roles.synced() && n.view + 1 == self.chain.blocks.len() {
                let height = self.chain.blocks[n.view].ledger.height();
                self.run(i, Work::Roles(Input::CaughtUp { height }));
            }
            self.run(i, Work::Roles(Input::Tick));
            self.run(i, Work::Readings(readings::Input::Tick));
        }
        self.check_managers();
        self.snapshot();
    }

    /// The market: a fresh standby contract for A whenever none is open.
    fn insure(&mut self) {
        if self.now >= self.insure_until {
            return;
        }
        let open = self
            .chain
            .scratch
            .contracts()
            .values()
            .any(|r| !r.status.is_final());
        if open {
            return;
        }
        self.contract_nonce += 1;
        let signed = ContractBuilder::new(1, 2)
            .standby(1_000)
            .duration(COVERAGE_MS)
            .payment(COVERAGE_MS)
            .qos(self.qos)
            .nonce(self.contract_nonce)
            .signed();
        let signer = self.nodes[A].signer.clone();
        let now = self.now;
        self.chain
            .admit(now, &signer, TxKind::RegisterContract(Box::new(signed)));
    }

    fn radio(&mut self) {
        while self.next_frame <= self.now {
            let at = self.next_frame;
            self.next_frame += FRAME_MS;
            for d in DEVICES {
                let c = self.counters.entry(d).or_default();
                *c += 1;
                let counter = *c;
                self.record.emitted.push((d, counter, at));
                let mut bytes = d.to_le_bytes().to_vec();
                bytes.extend(counter.to_le_bytes());
                for i in 0..NODES {
                    if self.nodes[i].up {
                        let f = Frame {
                            device: d,
                            counter,
                            bytes: bytes.clone(),
                        };
                        self.run(i, Work::Readings(readings::Input::Heard(f)));
                    }
                }
            }
        }
    }

    /// The hostile peer's forged checkpoint, to every connected node.
    fn forge(&mut self) {
        let claim = CheckpointClaim {
            author: FORGER,
            ranges: DEVICES
                .iter()
                .map(|d| {
                    let heard = self.counters.get(d).copied().unwrap_or(0);
                    readings::CoveredRange {
                        device: *d,
                        first: heard.saturating_sub(5),
                        last: heard.saturating_add(5),
                        count: 10,
                    }
                })
                .collect(),
            released: DEVICES.to_vec(),
            at: self.now,
            envelope: Arc::from(b"forged".as_slice()),
        };
        self.envelopes.insert(claim.envelope.clone(), claim.clone());
        for i in 0..NODES {
            if self.nodes[i].connected() {
                self.run(
                    i,
                    Work::Readings(readings::Input::Checkpoint(claim.clone())),
                );
            }
        }
    }

    fn deliver_blocks(&mut self, i: usize) {
        loop {
            let n = &self.nodes[i];
            if n.partitioned {
                return;
            }
            let next = n.view + 1;
            let Some(b) = self.chain.blocks.get(next) else {
                return;
            };
            if b.time.saturating_add(n.delay) > self.now {
                return;
            }
            self.nodes[i].view = next;
            let mut facts = self.facts(i, next, true);
            // The replica knows it is behind when the next block is already there for it.
            let delay = self.nodes[i].delay;
            facts.behind = self
                .chain
                .blocks
                .get(next + 1)
                .is_some_and(|b| b.time.saturating_add(delay) <= self.now);
            self.run(i, Work::Roles(Input::Ledger(facts)));
        }
    }

    fn presence(&mut self, i: usize) {
        let now = self.now;
        let watched: Vec<NodeId> = self.nodes[i].watching.keys().copied().collect();
        for peer in watched {
            let Some(j) = self.nodes.iter().position(|n| n.id == peer) else {
                continue;
            };
            let reachable =
                self.nodes[j].up && !self.nodes[j].partitioned && !self.nodes[i].partitioned;
            let broke = if !self.nodes[j].up {
                self.nodes[j].killed_at
            } else if self.nodes[j].partitioned {
                self.nodes[j].cut_at
            } else {
                self.nodes[i].cut_at
            };
            let killed = !self.nodes[j].up;
            let (was, since) = self.nodes[i]
                .presence
                .get(&peer)
                .copied()
                .unwrap_or((true, None));
            let event = if reachable {
                self.nodes[i].presence.insert(peer, (true, None));
                (!was).then_some(Presence::Up { node: peer })
            } else if was {
                let since = since.unwrap_or(broke.max(now.saturating_sub(STEP_MS)));
                if killed || now >= since.saturating_add(PRESENCE_TIMEOUT_MS) {
                    self.nodes[i].presence.insert(peer, (false, Some(since)));
                    Some(Presence::Down {
                        node: peer,
                        last_seen: since,
                    })
                } else {
                    self.nodes[i].presence.insert(peer, (true, Some(since)));
                    None
                }
            } else {
                None
            };
            if let Some(p) = event {
                self.run(i, Work::Roles(Input::Presence(p)));
            }
        }
    }

    fn check_managers(&mut self) {
        for d in DEVICES {
            let feeding: Vec<usize> = (0..NODES).filter(|i| self.feeds(*i, d)).collect();
            if feeding.len() > 1 {
                self.record.overlaps.push((self.now, d, feeding));
            }
        }
    }

    /// The chain's ledger after its latest block.
    pub fn ledger(&self) -> &Ledger {
        &self.chain.ledger
    }

    /// Contracts on the chain with their status.
    pub fn statuses(&self) -> Vec<(ContractId, ContractStatus)> {
        self.chain
            .ledger
            .contracts()
            .iter()
            .map(|(id, r)| (*id, r.status))
            .collect()
    }
}
