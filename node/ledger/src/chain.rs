//! Consensus wiring of the ledger task: the Malachite driver's effects carried out over the
//! swarm (gossip for proposals and votes, request-response for sync), its timers, its
//! write-ahead log in sled, and decided blocks applied to the ledger.
//!
//! Every node runs a driver. Committee members gossip proposals and votes among themselves on
//! [`CONSENSUS_TOPIC`] (only they subscribe, and each keeps a watched connection to the others);
//! the proposer of each decided block publishes it with its commit certificate on
//! [`BLOCKS_TOPIC`], and every other node feeds it to its driver exactly like a sync answer
//! (the certificate is verified, the block must extend our last one). Before, every node
//! followed every vote: at 100 nodes that was seven gossip messages per block for each node, a
//! signature check per copy, and most of an idle devnet's CPU. A node that misses a block sees
//! the gap at the next one and asks an arbitrator for the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use agora_contracts::{Ledger, SignedTransaction};
use agora_market::NodeId;
use tracing::{debug, info, warn};

use agora_consensus::{
    Block, BlockId, ConsensusConfig, ConsensusError, ConsensusTimeouts, DecidedBlock, Effect,
    Input, TimeoutId, TimeoutStep, VerifiedMessage, WalEntry, quorum_round_trip,
};
use agora_network::keys::peer_id_of;
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;

use crate::task::LedgerTask;

use agora_wire::topics::{BLOCKS_TOPIC, CONSENSUS_TOPIC};

/// Request-response body of block sync (in `Kind::Consensus` envelopes).
pub type SyncMsg = agora_wire::sync::SyncMsg<DecidedBlock>;

/// Blocks per sync answer (the driver accepts at most 64).
const SYNC_BATCH: usize = 64;
/// Encoded bytes of blocks per sync answer (well inside the request-response size limit).
const SYNC_BYTES: usize = agora_wire::codec::MAX_RPC_BYTES / 2;
/// Encoded bytes of blocks per sync answer to a stranger (an identity without a funded
/// account: identities are free, and an answer stays queued for a peer that never reads it
/// until the request times out, 30 s). Always at least one block, so an unfunded node that
/// joins still syncs, in smaller steps.
const STRANGER_SYNC_BYTES: usize = 64 * 1024;

/// Most transactions a block may carry, and the default of [`LedgerConfig::max_block_txs`].
pub const MAX_BLOCK_TXS: usize = 2_000;

/// The `[ledger]` config section: this node's own policy as a proposer (not consensus: the
/// other validators accept any block that applies, whatever this node chose).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LedgerConfig {
    /// Most transactions this node puts in a block it proposes, 1 to [`MAX_BLOCK_TXS`]
    /// (values outside are clamped, with a warning). A small value makes a backlog cheap to
    /// produce; tests that flood the chain use it.
    pub max_block_txs: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            max_block_txs: MAX_BLOCK_TXS,
        }
    }
}

/// Block production pacing.
#[derive(Clone, Debug)]
pub struct ChainParams {
    /// Most transactions per block.
    pub max_block_txs: usize,
    /// Most encoded transaction bytes per block: a proposal carries the whole block in one
    /// gossip message, so a block must stay well inside the gossip size limit or it could never
    /// be delivered (and a full mempool would stall the chain).
    pub max_block_bytes: usize,
    /// With an empty mempool, while the ledger waits for the clock (`Ledger::awaits_time`: a
    /// running contract, an activation deadline, a suspected outage, a settlement in its grace
    /// period), a proposer waits this long after the last block before proposing an empty one,
    /// so nothing that depends on block time is late.
    pub empty_block_interval_ms: u64,
    /// With an empty mempool and nothing waiting for time, the chain is quiet: an empty block
    /// only this long after the last one. A block goes to every node, which verifies its
    /// certificate and stores it; at one per second that was two thirds of an idle 100-node
    /// devnet's CPU, for blocks that change nothing but the height. The other arbitrators
    /// stretch their propose timeout to match (see `ChainTimers::held`), and a transaction
    /// ends the wait at once on every one of them.
    pub quiet_block_interval_ms: u64,
    /// With transactions ready, a proposer still waits this long after the last block before
    /// proposing (never past a handover that is due, nor past its own propose deadline). Each
    /// block costs every node a certificate check, two sled writes and the consensus traffic
    /// whatever it carries: proposing as soon as anything was ready made a chain with a few
    /// running contracts decide 8 blocks a second at 1–2 transactions each (10 nodes, 9 hosted
    /// contracts; docs/PERFORMANCE.md "What a running contract costs").
    pub min_block_interval_ms: u64,
    /// Driver configuration (timeouts).
    pub consensus: ConsensusConfig,
}

impl Default for ChainParams {
    fn default() -> Self {
        ChainParams {
            max_block_txs: MAX_BLOCK_TXS,
            max_block_bytes: agora_wire::codec::MAX_GOSSIP_BYTES / 2,
            empty_block_interval_ms: 1_000,
            quiet_block_interval_ms: 10_000,
            min_block_interval_ms: 250,
            consensus: ConsensusConfig {
                timeouts: ConsensusTimeouts::CHAIN,
                ..ConsensusConfig::default()
            },
        }
    }
}

/// Timers and pending work of the driver.
#[derive(Debug, Default)]
pub struct ChainTimers {
    /// Driver timeouts and when they fire (ms).
    pub timeouts: BTreeMap<TimeoutId, u64>,
    /// A value the driver asked for: (height, round, answer at ms, answer by ms).
    pub pending_value: Option<(u64, u32, u64, u64)>,
    /// Inbound sync requests waiting for the driver's answer, by asking node.
    pub sync_requests: HashMap<NodeId, u64>,
    /// When the last block was decided (ms, local clock).
    pub last_decided_at: u64,
    /// Propose timeouts stretched while the chain is quiet, with the engine's own duration
    /// (ms): a transaction brings each back to at most that long from its arrival.
    pub held: BTreeMap<TimeoutId, u64>,
    /// Round-robin index for choosing whom to ask for sync.
    pub sync_rr: usize,
    /// Committee members this node's network currently reports down (presence): a round they
    /// propose times out after [`DOWN_PROPOSER_TIMEOUT_MS`]. At most the committee's size.
    pub down: BTreeSet<NodeId>,
}

/// How long a validator waits for the proposal of a proposer its network reports down before
/// it prevotes nil and the round moves on. A killed arbitrator used to cost every height it
/// proposed the whole propose timeout (1.5 s), which is what made one failover in three take
/// 2.5 s instead of 1.2 s over 50 ms links. Wrongly thinking a live proposer down costs this
/// node's prevote in one round, never safety: the others still decide its value with theirs.
pub const DOWN_PROPOSER_TIMEOUT_MS: u64 = 100;

impl ChainTimers {
    /// The earliest time something is due.
    pub fn next_due(&self) -> Option<u64> {
        let t = self.timeouts.values().min().copied();
        let v = self.pending_value.map(|(_, _, at, _)| at);
        match (t, v) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl LedgerTask {
    /// Starts consensus at the height after the ledger's, replaying that height's WAL.
    pub(super) async fn start_chain(&mut self) {
        let height = self.view.ledger.height() + 1;
        let parent = match self.store.blocks_from(self.view.ledger.height(), 1) {
            Ok(blocks) => blocks
                .first()
                .filter(|(h, _)| *h == height - 1)
                .and_then(|(_, raw)| serde_cbor::from_slice::<DecidedBlock>(raw).ok())
                .map(|d| d.block.id())
                .unwrap_or(BlockId::GENESIS_PARENT),
            Err(_) => BlockId::GENESIS_PARENT,
        };
        let wal = self
            .store
            .wal_entries(height)
            .unwrap_or_default()
            .iter()
            .filter_map(|b| WalEntry::decode(b).ok())
            .collect();
        self.timers.last_decided_at = now_ms();
        self.driver
            .set_parent_time(self.view.ledger.last_block_time());
        self.feed(Input::StartHeight {
            height,
            parent,
            wal,
        })
        .await;
    }

    /// Feeds one input and everything it leads to.
    pub(super) async fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            if self.fatal.get().is_some() {
                return;
            }
            let effects = self.driver.handle(now_ms(), input);
            for effect in effects {
                // After a failed WAL write nothing more goes out, above all not the vote it
                // should have recorded (THREATS A14): the task then stops the node.
                if self.fatal.get().is_some() {
                    return;
                }
                if let Some(next) = self.execute(effect).await {
                    queue.push_back(next);
                }
            }
        }
    }

    /// Fires due timers and answers a pending value request when it is time.
    pub(super) async fn on_chain_timer(&mut self) {
        let now = now_ms();
        let due: Vec<TimeoutId> = self
            .timers
            .timeouts
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.timers.timeouts.remove(&id);
            self.timers.held.remove(&id);
            self.feed(Input::TimeoutElapsed(id)).await;
        }
        if let Some((height, round, at, _)) = self.timers.pending_value
            && at <= now
        {
            self.timers.pending_value = None;
            self.propose_now(height, round).await;
        }
    }

    /// Whether the proposer `timeout` waits for is a committee member this node sees down.
    fn proposer_is_down(&self, timeout: &TimeoutId) -> bool {
        let proposer = self
            .driver
            .validators()
            .proposer_at(timeout.height, timeout.round);
        proposer != self.view.me && self.timers.down.contains(&proposer)
    }

    /// The network's word on a peer's reachability. A committee member going down cuts the
    /// propose timeouts of the rounds it proposes (see [`DOWN_PROPOSER_TIMEOUT_MS`]).
    pub(super) fn on_presence(&mut self, node: NodeId, up: bool) {
        if !self.driver.validators().node_ids().any(|v| v == node) {
            return;
        }
        if up {
            self.timers.down.remove(&node);
            return;
        }
        self.timers.down.insert(node);
        let soon = now_ms().saturating_add(DOWN_PROPOSER_TIMEOUT_MS);
        let cut: Vec<TimeoutId> = self
            .timers
            .timeouts
            .keys()
            .filter(|t| t.step == TimeoutStep::Propose && self.proposer_is_down(t))
            .copied()
            .collect();
        for t in cut {
            if let Some(at) = self.timers.timeouts.get_mut(&t) {
                *at = (*at).min(soon);
            }
            self.timers.held.remove(&t);
            self.view.propose_timeouts_cut += 1;
        }
    }

    /// A transaction arrived: a waiting proposer need not wait for the empty-block interval (only
    /// for `min_block_interval_ms` after the last block), and
    /// nobody waits for a quiet chain's proposal any longer than the engine asked.
    pub(super) fn on_new_transaction(&mut self) {
        let now = now_ms();
        if let Some((h, r, at, by)) = self.timers.pending_value {
            let paced = self.paced_block_due(now).min(by);
            self.timers.pending_value = Some((h, r, at.min(paced), by));
        }
        for (id, after) in std::mem::take(&mut self.timers.held) {
            if let Some(at) = self.timers.timeouts.get_mut(&id) {
                *at = (*at).min(now.saturating_add(after));
            }
        }
    }

    /// When this node, as proposer with an empty mempool, proposes an empty block.
    /// While a standby handover waits only for its clause to run out, the block that decides
    /// it is due exactly then (`Ledger::handover_due`, in ledger time, which is the proposers'
    /// wall clock), not at the next regular interval: over 50 ms links that interval cost a
    /// failover about one extra second.
    fn empty_block_due(&self) -> u64 {
        let ledger = &self.view.ledger;
        let interval = if ledger.awaits_time() {
            self.params.empty_block_interval_ms
        } else {
            self.params.quiet_block_interval_ms
        };
        let regular = self.timers.last_decided_at.saturating_add(interval);
        match ledger.handover_due() {
            Some(due) => regular.min(due),
            None => regular,
        }
    }

    /// When this node, as proposer with transactions ready, proposes: `min_block_interval_ms`
    /// after the last block, or at once when that has passed or a handover is due.
    fn paced_block_due(&self, now: u64) -> u64 {
        let paced = self
            .timers
            .last_decided_at
            .saturating_add(self.params.min_block_interval_ms);
        let due = self.view.ledger.handover_due().unwrap_or(u64::MAX);
        paced.min(due).max(now)
    }

    async fn propose_now(&mut self, height: u64, round: u32) {
        let input = self.propose_value(height, round);
        self.feed(input).await;
    }

    /// The mempool's answer to the driver's `RequestValue`: transactions that apply in order.
    fn propose_value(&self, height: u64, round: u32) -> Input {
        let candidates = self
            .mempool
            .proposal(&self.view.ledger, self.params.max_block_txs);
        let encoded = candidates
            .iter()
            .filter_map(|t| serde_cbor::to_vec(t).ok())
            .map(|b| (b.len(), b));
        // Cutting the list short keeps nonces contiguous: the rest waits for the next block.
        let transactions = within_bytes(encoded, self.params.max_block_bytes);
        Input::ProposeValue {
            height,
            round,
            transactions,
        }
    }

    /// Consensus traffic from the network, decoded and checked when it was judged.
    pub(super) async fn on_consensus_gossip(&mut self, from: NodeId, msg: VerifiedMessage) {
        self.feed(Input::Verified { from, msg }).await;
    }

    /// A decided block from [`BLOCKS_TOPIC`] (judged already): verified and applied like a
    /// sync answer (the driver skips heights it has already decided).
    pub(super) async fn on_block_gossip(&mut self, from: NodeId, decided: DecidedBlock) {
        self.feed(Input::SyncResponse {
            from,
            blocks: vec![decided],
        })
        .await
    }

    /// A sync request or response from a peer (`id` is the inbound request to answer).
    pub(super) async fn on_sync_request(&mut self, from: NodeId, id: u64, msg: SyncMsg) {
        match msg {
            SyncMsg::Request { height } => {
                let Some(permit) = self.sync_limiter.admit(from, now_ms()) else {
                    self.view.sync_refused = self.sync_limiter.refused();
                    debug!(
                        from = %from.short(),
                        refused = self.sync_limiter.refused(),
                        "sync request refused: too frequent from this peer, or too many served at once"
                    );
                    return self.respond(id, &SyncMsg::Ack).await;
                };
                if height <= self.view.ledger.height() {
                    // Every applied block is in the store (with its certificate), so sync
                    // reaches back past the driver's in-memory history. Read, encoded and
                    // answered off this task, so a sync flood cannot stall consensus.
                    self.seq += 1;
                    self.view.sync_served = self.view.sync_served.saturating_add(1);
                    let stranger = self.vouched.as_ref().is_some_and(|v| !v.contains(&from));
                    let max_bytes = if stranger {
                        STRANGER_SYNC_BYTES
                    } else {
                        SYNC_BYTES
                    };
                    let (seq, store) = (self.seq, self.store.clone());
                    let (signer, network) = (self.signer.clone(), self.network.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let blocks = tokio::task::spawn_blocking(move || {
                            stored_blocks(&store, height, max_bytes)
                        })
                        .await
                        .unwrap_or_default();
                        let Ok(body) = serde_cbor::to_vec(&SyncMsg::Response { blocks }) else {
                            return;
                        };
                        let env = Envelope::seal(&signer, Kind::Consensus, now_ms(), seq, body);
                        let _ = network.respond(id, &env).await;
                    });
                    return;
                }
                drop(permit);
                self.timers.sync_requests.insert(from, id);
                self.feed(Input::SyncRequest { from, height }).await;
                // The driver answers through `SendSyncResponse`; if it had nothing, ack.
                if let Some(id) = self.timers.sync_requests.remove(&from) {
                    self.respond(id, &SyncMsg::Response { blocks: Vec::new() })
                        .await;
                }
            }
            SyncMsg::Response { .. } | SyncMsg::Ack => self.respond(id, &SyncMsg::Ack).await,
        }
    }

    async fn respond(&mut self, id: u64, msg: &SyncMsg) {
        let Ok(body) = serde_cbor::to_vec(msg) else {
            return;
        };
        self.seq += 1;
        let env = Envelope::seal(&self.signer, Kind::Consensus, now_ms(), self.seq, body);
        let _ = self.network.respond(id, &env).await;
    }

    async fn execute(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::PersistWal(entry) => {
                // Flushed before the vote it records goes out; off the async workers.
                let store = self.store.clone();
                let height = entry.height();
                // From this node's first own vote at that height: its broadcast follows in
                // the same batch, the case the node must not send.
                #[cfg(feature = "test-utils")]
                let fail = self.fail_wal_from.is_some_and(|from| height >= from)
                    && matches!(&entry, agora_consensus::WalEntry::Vote(v) if v.vote.voter() == self.view.me);
                #[cfg(not(feature = "test-utils"))]
                let fail = false;
                let persisted = tokio::task::spawn_blocking(move || {
                    if fail {
                        return Err("test hook: WAL write failed".to_string());
                    }
                    store
                        .wal_append(height, &entry.encode())
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("the WAL write task failed: {e}")));
                // A vote that is not on disk must not go out: after a restart this node could
                // vote differently in the same round, an equivocation that burns its bond
                // (THREATS A14). The rest of the batch is dropped and the node stops.
                if let Err(e) = persisted {
                    let why = format!("cannot persist the consensus WAL at height {height}: {e}");
                    tracing::error!(%why, "dropping this node's pending consensus messages");
                    let _ = self.fatal.set(why);
                }
                None
            }
            Effect::Broadcast(msg) => {
                self.sent_height
                    .fetch_max(msg.height(), std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = self
                    .network
                    .broadcast(CONSENSUS_TOPIC, Kind::Consensus, msg.encode())
                    .await
                {
                    debug!(error = %e, "consensus message not gossiped");
                }
                None
            }
            Effect::ScheduleTimeout { timeout, after } => {
                let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2);
                let mut at = now_ms().saturating_add(after);
                // On a quiet chain the proposer holds its empty block until it is due: wait
                // that long plus the usual timeout before giving up on it. While something
                // waits for the clock the engine's timeout stands, so a dead proposer costs
                // no more than it always did.
                if timeout.step == TimeoutStep::Propose
                    && !self.mempool.has_ready(&self.view.ledger)
                    && !self.view.ledger.awaits_time()
                {
                    let quiet = self
                        .timers
                        .last_decided_at
                        .saturating_add(self.params.quiet_block_interval_ms)
                        .saturating_add(after);
                    if quiet > at {
                        at = quiet;
                        self.timers.held.insert(timeout, after);
                    }
                }
                if timeout.step == TimeoutStep::Propose && self.proposer_is_down(&timeout) {
                    at = at.min(now_ms().saturating_add(DOWN_PROPOSER_TIMEOUT_MS));
                    self.timers.held.remove(&timeout);
                    self.view.propose_timeouts_cut += 1;
                }
                self.timers.timeouts.insert(timeout, at);
                None
            }
            Effect::CancelTimeout(id) => {
                self.timers.timeouts.remove(&id);
                self.timers.held.remove(&id);
                None
            }
            Effect::CancelAllTimeouts => {
                self.timers.timeouts.clear();
                self.timers.held.clear();
                None
            }
            Effect::RequestValue {
                height,
                round,
                within,
            } => {
                let now = now_ms();
                let within = u64::try_from(within.as_millis()).unwrap_or(0);
                // Propose a quarter of the timeout before our own propose timeout fires (which
                // a quiet chain stretched, see `ScheduleTimeout`).
                let deadline = self
                    .timers
                    .timeouts
                    .get(&TimeoutId {
                        height,
                        round,
                        step: TimeoutStep::Propose,
                    })
                    .copied()
                    .unwrap_or(now.saturating_add(within));
                let by = deadline.saturating_sub(within / 4);
                let at = if !self.mempool.has_ready(&self.view.ledger) {
                    self.empty_block_due().min(by)
                } else {
                    self.paced_block_due(now).min(by)
                };
                if at <= now {
                    return Some(self.propose_value(height, round));
                }
                self.timers.pending_value = Some((height, round, at, by));
                None
            }
            Effect::Decided {
                height,
                block,
                certificate,
            } => {
                self.timers.pending_value = None;
                self.timers.last_decided_at = now_ms();
                if certificate.round > 0 {
                    self.view.decided_in_later_round += 1;
                }
                let (txs, time) = block_inputs(&block, &self.view.ledger);
                let proposed_here = block.proposer == self.view.me;
                let decided = DecidedBlock { block, certificate };
                let raw = serde_cbor::to_vec(&decided).unwrap_or_default();
                if proposed_here
                    && let Err(e) = self
                        .network
                        .broadcast(BLOCKS_TOPIC, Kind::Consensus, raw.clone())
                        .await
                {
                    debug!(height, error = %e, "decided block not gossiped");
                }
                match self.apply(height, time, &raw, &txs).await {
                    Ok(outcome) => {
                        info!(
                            height,
                            txs = txs.len(),
                            rejected = outcome.rejected.len(),
                            "block applied"
                        );
                    }
                    Err(e) => warn!(height, error = %e, "decided block could not be applied"),
                }
                self.resubmit_superseded(&txs).await;
                if let Err(e) = self.store.wal_clear_through(height) {
                    warn!(error = %e, "cannot clear consensus WAL");
                }
                None
            }
            Effect::SyncRequest { height } => {
                self.ask_for_blocks(height);
                None
            }
            Effect::SendSyncResponse { to, blocks } => {
                if let Some(id) = self.timers.sync_requests.remove(&to) {
                    let sized = blocks
                        .into_iter()
                        .map(|b| (serde_cbor::to_vec(&b).map_or(usize::MAX, |v| v.len()), b));
                    let blocks = within_bytes(sized, SYNC_BYTES);
                    self.respond(id, &SyncMsg::Response { blocks }).await;
                }
                None
            }
            Effect::Evidence(m) => {
                let validator = m.validator();
                warn!(validator = %validator.short(), "arbitrator equivocated; evidence recorded");
                if !self.view.evidence.contains(&validator) {
                    self.view.evidence.push(validator);
                }
                self.report_equivocation(&m).await;
                None
            }
            Effect::Rejected { from, error } => {
                self.view.consensus_refused = self.view.consensus_refused.saturating_add(1);
                if matches!(error, ConsensusError::BlockTime { .. }) {
                    self.view.proposals_refused_block_time =
                        self.view.proposals_refused_block_time.saturating_add(1);
                }
                debug!(from = ?from.map(|f| f.short()), %error, "consensus input rejected");
                None
            }
        }
    }

    fn ask_for_blocks(&mut self, height: u64) {
        let others = self.other_arbitrators();
        if others.is_empty() {
            return;
        }
        self.timers.sync_rr = (self.timers.sync_rr + 1) % others.len();
        self.ask(others[self.timers.sync_rr], height);
    }

    /// Every arbitrator but this node.
    fn other_arbitrators(&self) -> Vec<NodeId> {
        self.view
            .ledger
            .committee()
            .iter()
            .copied()
            .filter(|c| *c != self.view.me)
            .collect()
    }

    /// Asks `target` for the decided blocks from `height` on; its answer, empty or not, comes
    /// back as a [`SyncReply`].
    fn ask(&mut self, target: NodeId, height: u64) {
        let Some(peer) = peer_id_of(&target) else {
            return;
        };
        let Ok(body) = serde_cbor::to_vec(&SyncMsg::Request { height }) else {
            return;
        };
        self.seq += 1;
        let env = Envelope::seal(&self.signer, Kind::Consensus, now_ms(), self.seq, body);
        let network = self.network.clone();
        let replies = self.sync_replies.clone();
        tokio::spawn(async move {
            match network.request(peer, &env).await {
                Ok(resp) if resp.sender == target => {
                    if let Ok(SyncMsg::Response { blocks }) = resp.body::<SyncMsg>(Kind::Consensus)
                    {
                        let reply = SyncReply {
                            from: target,
                            asked: height,
                            blocks,
                        };
                        let _ = replies.send(reply).await;
                    }
                }
                Ok(_) => debug!("sync answer signed by someone else"),
                Err(e) => debug!(error = %e, "sync request failed"),
            }
        });
    }

    /// When the next tip check is due, while this node does not know it is at the tip.
    pub(super) fn next_tip_check(&self) -> Option<u64> {
        (!self.view.caught_up).then_some(self.tip_asked_at.saturating_add(TIP_CHECK_EVERY_MS))
    }

    /// Until it knows it is at the tip, asks every other arbitrator (once a second) for the
    /// blocks after its height.
    pub(super) fn check_tip(&mut self) {
        if self.view.caught_up {
            return;
        }
        let others = self.other_arbitrators();
        if others.is_empty() {
            // Nobody else decides blocks: this node's ledger is the chain.
            self.view.caught_up = true;
            return;
        }
        let now = now_ms();
        if now < self.tip_asked_at.saturating_add(TIP_CHECK_EVERY_MS) {
            return;
        }
        self.tip_asked_at = now;
        let next = self.view.ledger.height() + 1;
        for target in others {
            self.ask(target, next);
        }
    }

    /// `from` has decided nothing from height `asked` on. Once f + 1 arbitrators say so for
    /// the height after ours, at least one honest one has nothing newer: we are at the tip.
    pub(super) fn on_tip_answer(&mut self, from: NodeId, asked: u64) {
        if self.view.caught_up || !self.view.ledger.committee().contains(&from) {
            return;
        }
        self.tip_confirms.insert(from, asked);
        let next = self.view.ledger.height() + 1;
        let confirms = self.tip_confirms.values().filter(|h| **h == next).count();
        let n = self.view.ledger.committee().len();
        let f = n.saturating_sub(1) / 3;
        if confirms > f {
            self.view.caught_up = true;
            info!(
                height = next - 1,
                confirms, "at the chain's tip: arbitrators have decided nothing newer"
            );
        }
    }
}

/// How often a node that does not know it is at the tip asks the arbitrators.
const TIP_CHECK_EVERY_MS: u64 = 1_000;

/// How often a committee member re-reads its round trips to the others and re-paces its
/// consensus timeouts.
const PACE_EVERY_MS: u64 = 5_000;

impl LedgerTask {
    /// When a committee member paces its consensus timeouts next (`None` outside it).
    pub(super) fn next_pacing(&self) -> Option<u64> {
        self.driver
            .validators()
            .contains(&self.view.me)
            .then_some(self.paced_at.saturating_add(PACE_EVERY_MS))
    }

    /// Stretches the round timeouts for the committee's quorum round trip as the network
    /// measures it (issue #17; `agora_consensus::quorum_round_trip`,
    /// `ConsensusTimeouts::for_round_trip`): the chain's own timeouts on fast links, longer
    /// ones over slow links, where fixed ones lose round 0. Only reachable members count.
    pub(super) async fn pace(&mut self) {
        self.paced_at = now_ms();
        let presence = match self.network.presence().await {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "no presence table to pace consensus with");
                return;
            }
        };
        let rtts: HashMap<NodeId, Duration> = presence
            .into_iter()
            .filter(|p| p.reachable)
            .filter_map(|p| Some((p.node, Duration::from_millis(p.rtt_ms?))))
            .collect();
        let rtt = quorum_round_trip(self.driver.validators(), &self.view.me, |n| {
            rtts.get(n).copied()
        });
        let base = self.params.consensus.timeouts;
        let paced = rtt.map_or(base, |r| base.for_round_trip(r));
        self.view.quorum_round_trip_ms = rtt.map(|r| u64::try_from(r.as_millis()).unwrap_or(0));
        let before = self.driver.timeouts();
        if paced == before {
            return;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if (paced == base) != (before == base) {
            info!(
                quorum_round_trip_ms = ?self.view.quorum_round_trip_ms,
                propose_ms = ms(paced.propose),
                vote_ms = ms(paced.prevote),
                "consensus timeouts now follow the committee's round trip ({})",
                if paced == base { "fast links: the chain's own" } else { "stretched" }
            );
        } else {
            debug!(
                quorum_round_trip_ms = ?self.view.quorum_round_trip_ms,
                propose_ms = ms(paced.propose),
                "consensus timeouts re-paced"
            );
        }
        self.driver.set_timeouts(paced);
        self.view.timeouts = paced;
    }
}

/// An arbitrator's answer to a sync request: the blocks from `asked` on (none: it has decided
/// nothing past `asked - 1`).
#[derive(Debug)]
pub(crate) struct SyncReply {
    /// Who answered.
    pub from: NodeId,
    /// The first height asked for.
    pub asked: u64,
    /// Its blocks from there on, in order (at most one sync batch).
    pub blocks: Vec<DecidedBlock>,
}

/// The stored decided blocks from `height` on, within one sync answer's count and byte caps.
fn stored_blocks(
    store: &crate::store::LedgerStore,
    height: u64,
    max_bytes: usize,
) -> Vec<DecidedBlock> {
    let raw = store
        .blocks_from(height, SYNC_BATCH)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, raw)| (raw.len(), raw));
    within_bytes(raw, max_bytes)
        .iter()
        .filter_map(|raw| serde_cbor::from_slice(raw).ok())
        .collect()
}

/// The leading items whose sizes add up to at most `max` bytes (always the first one, so a
/// single large item still moves).
fn within_bytes<T>(items: impl IntoIterator<Item = (usize, T)>, max: usize) -> Vec<T> {
    let mut total = 0usize;
    let mut out = Vec::new();
    for (size, item) in items {
        total = total.saturating_add(size);
        if total > max && !out.is_empty() {
            break;
        }
        out.push(item);
    }
    out
}

/// What a decided block applies to `ledger`: its transactions (bytes that do not decode are
/// skipped, deterministically on every node) and its time (never before the ledger's last
/// block). Live application and restart replay both use this, so they cannot drift apart.
pub(super) fn block_inputs(block: &Block, ledger: &Ledger) -> (Vec<SignedTransaction>, u64) {
    let txs = block
        .transactions
        .iter()
        .filter_map(|b| serde_cbor::from_slice(b).ok())
        .collect();
    (txs, block.timestamp.max(ledger.last_block_time()))
}

#[cfg(test)]
mod tests {
    use super::within_bytes;

    #[test]
    fn within_bytes_stops_at_the_budget_but_always_takes_one() {
        let items = [(40, 'a'), (40, 'b'), (40, 'c')];
        assert_eq!(within_bytes(items, 100), vec!['a', 'b']);
        assert_eq!(within_bytes(items, 120), vec!['a', 'b', 'c']);
        assert_eq!(within_bytes([(500, 'x'), (1, 'y')], 100), vec!['x']);
        assert!(within_bytes(Vec::<(usize, char)>::new(), 100).is_empty());
    }
}
