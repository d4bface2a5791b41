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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use agora_market::{KeySigner, NodeId, Signer, Timestamp};
use cid::Cid;

use super::readings::{self, CheckpointClaim, Frame, Readings, ReadingsConfig};
use super::{
    Effect, Input, LedgerFacts, PRESENCE_TIMEOUT_MS, Presence, Roles, RolesConfig, ServiceRef,
};
use crate::contract::{ContractId, Qos};
use crate::ledger::{Ledger, LedgerEvent, SignedTransaction, Transaction, TxKind};
use crate::lifecycle::ContractStatus;
use crate::test_utils::{ContractBuilder, genesis_with, test_cid};

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

#[derive(Clone)]
struct Block {
    time: Timestamp,
    events: Vec<LedgerEvent>,
    ledger: Arc<Ledger>,
}

struct Chain {
    ledger: Ledger,
    scratch: Ledger,
    mempool: Vec<SignedTransaction>,
    blocks: Vec<Block>,
    last_block_at: Timestamp,
}

impl Chain {
    fn admit(&mut self, now: Timestamp, signer: &KeySigner, kind: TxKind) -> bool {
        let sender = signer.node_id();
        let body = Transaction {
            chain_id: self.scratch.chain_id().to_string(),
            sender,
            nonce: self.scratch.next_nonce(&sender),
            kind,
        };
        let Ok(stx) = body.sign(signer) else {
            return false;
        };
        if self.scratch.apply(now, &stx).is_err() {
            return false;
        }
        self.mempool.push(stx);
        true
    }

    fn produce(&mut self, now: Timestamp) -> bool {
        let since = now.saturating_sub(self.last_block_at);
        let due = if !self.mempool.is_empty() {
            since >= BLOCK_MS
        } else if self.ledger.awaits_time() {
            since >= BUSY_BLOCK_MS
        } else {
            since >= QUIET_BLOCK_MS
        };
        if !due {
            return false;
        }
        let txs = std::mem::take(&mut self.mempool);
        let height = self.ledger.height() + 1;
        let outcome = match self.ledger.apply_block_with(height, now, &txs, |_| true) {
            Ok(o) => o,
            Err(e) => panic!("block {height} refused: {e}"),
        };
        if let Err(e) = self.ledger.audit() {
            panic!("conservation broken at {height}: {e}");
        }
        self.scratch = self.ledger.clone();
        self.last_block_at = now;
        self.blocks.push(Block {
            time: now,
            events: outcome.events,
            ledger: Arc::new(self.ledger.clone()),
        });
        true
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
    /// Timeline notes: (time, node, phase, detail).
    pub notes: Vec<(Timestamp, usize, String, String)>,
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
            .duration(600_000)
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

    /// Runs `work` on node `i` and everything it causes.
    fn run(&mut self, i: usize, work: Work) {
        let mut queue: VecDeque<(usize, Work)> = VecDeque::from([(i, work)]);
        let mut budget = 20_000;
        while let Some((i, w)) = queue.pop_front() {
            budget -= 1;
            if budget < 20 {
                let what = match &w {
                    Work::Roles(x) => format!("{x:?}"),
                    Work::Readings(x) => format!("{x:?}"),
                };
                eprintln!("node {i} at {}: {}", self.now, &what[..what.len().min(300)]);
            }
            assert!(budget > 0, "effects do not settle");
            if !self.nodes[i].up {
                continue;
            }
            let now = self.now;
            match w {
                Work::Roles(input) => {
                    for e in self.nodes[i].roles.handle(now, input) {
                        self.roles_effect(i, e, &mut queue);
                    }
                }
                Work::Readings(input) => {
                    for e in self.nodes[i].readings.handle(now, input) {
                        self.readings_effect(i, e, &mut queue);
                    }
                }
            }
        }
    }

    fn roles_effect(&mut self, i: usize, e: Effect, q: &mut VecDeque<(usize, Work)>) {
        let now = self.now;
        match e {
            Effect::Submit(tx) => {
                let accepted = self.nodes[i].connected() && {
                    let signer = self.nodes[i].signer.clone();
                    self.chain.admit(now, &signer, tx.clone())
                };
                if accepted && let TxKind::Settle { contract, .. } = &tx {
                    *self.record.settle_requests.entry(*contract).or_default() += 1;
                }
                q.push_back((i, Work::Roles(Input::Submitted { tx, accepted })));
            }
            Effect::Stage { service, .. } => {
                self.nodes[i].answers.push((
                    now + STAGE_MS,
                    Input::Staged {
                        service,
                        devices: DEVICES.to_vec(),
                    },
                ));
            }
            Effect::Activate {
                service,
                devices,
                reclaim,
            } => {
                let name = service.to_string();
                let n = &mut self.nodes[i];
                n.running.insert(name.clone());
                n.activating.insert(name.clone(), (service, now));
                q.push_back((
                    i,
                    Work::Readings(readings::Input::Assign {
                        devices,
                        service: name,
                        reclaim,
                    }),
                ));
            }
            Effect::StopService { service } => {
                self.nodes[i].running.remove(&service.to_string());
            }
            Effect::YieldDevices { devices } => {
                q.push_back((i, Work::Readings(readings::Input::Release { devices })));
            }
            Effect::Listen { devices, on } => {
                q.push_back((i, Work::Readings(readings::Input::Listen { devices, on })));
            }
            Effect::Watch(n) => *self.nodes[i].watching.entry(n).or_default() += 1,
            Effect::Unwatch(n) => {
                let w = &mut self.nodes[i].watching;
                if let Some(c) = w.get_mut(&n) {
                    *c -= 1;
                    if *c == 0 {
                        w.remove(&n);
                        self.nodes[i].presence.remove(&n);
                    }
                }
            }
            Effect::Meter {
                contract, service, ..
            } => {
                let name = service.to_string();
                let n = &self.nodes[i];
                let processed = n
                    .readings
                    .devices(now)
                    .iter()
                    .filter(|d| DEVICES.contains(&d.device))
                    .map(|d| d.processed)
                    .sum();
                let input = Input::Metered {
                    contract,
                    running: n.running.contains(&name),
                    processed,
                    proofs: n.proofs.get(&name).cloned().unwrap_or_default(),
                };
                q.push_back((i, Work::Roles(input)));
            }
            Effect::Authority(map) => {
                q.push_back((i, Work::Readings(readings::Input::Authority(map))));
            }
            Effect::TakeCustody { contract, .. } => {
                q.push_back((i, Work::Roles(Input::CustodyTaken { contract })));
            }
            Effect::Challenge { contract, .. } => {
                let verdict = super::AuditVerdict::Passed;
                q.push_back((i, Work::Roles(Input::AuditAnswer { contract, verdict })));
            }
            Effect::Timeline(n) => self.record.notes.push((now, i, n.phase, n.detail)),
            Effect::ReleaseCustody { .. } | Effect::OwnSet(_) | Effect::WakeAt(_) => {}
        }
    }

    fn readings_effect(&mut self, i: usize, e: readings::Effect, q: &mut VecDeque<(usize, Work)>) {
        let now = self.now;
        match e {
            readings::Effect::Feed { .. } | readings::Effect::WakeAt(_) => {}
            readings::Effect::Checkpoint {
                service,
                ranges,
                frames,
                released,
            } => {
                self.next_envelope += 1;
                let envelope: Arc<[u8]> =
                    Arc::from(format!("ckpt-{}-{}", i, self.next_envelope).into_bytes());
                let claim = CheckpointClaim {
                    author: self.nodes[i].id,
                    ranges: ranges.clone(),
                    released,
                    at: now,
                    envelope: envelope.clone(),
                };
                self.envelopes.insert(envelope.clone(), claim.clone());
                let published = self.nodes[i].connected();
                for r in &ranges {
                    self.record
                        .published
                        .push((now, i, r.device, r.first, r.last, published));
                }
                for f in &frames {
                    let (Some(d), Some(c)) = (word(f, 0), word(f, 4)) else {
                        continue;
                    };
                    self.record
                        .processed
                        .entry((d, c))
                        .or_default()
                        .push((i, published));
                }
                if !frames.is_empty() {
                    let proof = test_cid(&envelope);
                    self.nodes[i].proofs.entry(service).or_default().push(proof);
                }
                for j in 0..NODES {
                    if j == i || (published && self.nodes[j].connected()) {
                        q.push_back((
                            j,
                            Work::Readings(readings::Input::Checkpoint(claim.clone())),
                        ));
                    }
                }
            }
            readings::Effect::AskReplay {
                request, devices, ..
            } => {
                if self.nodes[i].connected() {
                    let me = self.nodes[i].id;
                    for j in 0..NODES {
                        if j == i || !self.nodes[j].connected() {
                            continue;
                        }
                        let ask = readings::Input::ReplayRequest {
                            from: me,
                            request,
                            devices: devices.clone(),
                        };
                        for a in self.nodes[j].readings.handle(now, ask) {
                            if let readings::Effect::AnswerReplay {
                                devices,
                                checkpoints,
                                ..
                            } = a
                            {
                                let checkpoints = checkpoints
                                    .iter()
                                    .filter_map(|e| self.envelopes.get(e).cloned())
                                    .collect();
                                q.push_back((
                                    i,
                                    Work::Readings(readings::Input::ReplayAnswer {
                                        request,
                                        from: self.nodes[j].id,
                                        devices,
                                        checkpoints,
                                    }),
                                ));
                            }
                        }
                    }
                }
                q.push_back((
                    i,
                    Work::Readings(readings::Input::ReplayFinished { request }),
                ));
            }
            readings::Effect::AnswerReplay { .. } => {}
            readings::Effect::Assigned {
                service, replayed, ..
            } => {
                if let Some((service, started_at)) = self.nodes[i].activating.remove(&service) {
                    q.push_back((
                        i,
                        Work::Roles(Input::ActivationDone {
                            service,
                            started_at,
                            replayed,
                        }),
                    ));
                }
            }
        }
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

fn word(b: &[u8], at: usize) -> Option<u32> {
    let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(w))
}
