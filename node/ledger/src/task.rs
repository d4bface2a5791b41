//! The ledger task: owns the ledger replica and the mempool, admits transactions from the CLI
//! and from gossip, and applies decided blocks.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use agora_contracts::{BlockOutcome, Genesis, Ledger, SignedTransaction, Transaction, TxKind};
use agora_market::{KeySigner, NodeId, Signer};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::TX_TOPIC;
use super::mempool::{Mempool, MempoolError, MempoolStats};
use super::store::{LedgerStore, StoreError};
use crate::chain::{ChainParams, ChainTimers, SyncMsg, SyncReply};
use agora_consensus::{
    ConsensusDriver, ConsensusTimeouts, DecidedBlock, GossipedBlock, GossipedMessage, Input,
    ValidatorSet,
};
use agora_network::{
    GossipTicket, GossipVerdict, Inbox, Interest, NetworkEvent, NetworkHandle, PresenceEvent,
};
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;
use agora_wire::topics::{BLOCKS_TOPIC, CONSENSUS_TOPIC};

/// Errors of the ledger task.
#[derive(Debug, thiserror::Error)]
pub enum LedgerTaskError {
    /// The task is gone.
    #[error("ledger task stopped; is the node shutting down?")]
    Stopped,
    /// Store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ledger refused.
    #[error("ledger: {0}")]
    Ledger(String),
    /// The mempool refused.
    #[error(transparent)]
    Mempool(#[from] MempoolError),
    /// The ledger refuses this node's own transaction (checked before it is gossiped).
    #[error(transparent)]
    Refused(agora_contracts::LedgerError),
}

/// A block as applied, for subscribers (the orchestrator acts on its events).
#[derive(Clone, Debug)]
pub struct AppliedBlock {
    /// Height.
    pub height: u64,
    /// Block time (ms).
    pub time: u64,
    /// Events of the accepted transactions.
    pub events: Vec<agora_contracts::LedgerEvent>,
    /// How many transactions were refused.
    pub rejected: usize,
}

/// What queries see.
#[derive(Debug)]
pub struct LedgerView {
    /// The ledger state.
    pub ledger: Ledger,
    /// Time of the last applied block (ms), if any.
    pub last_block_at: Option<u64>,
    /// Pending transactions.
    pub mempool: usize,
    /// The mempool's counters (admitted, refused, evicted, expired, dropped).
    pub mempool_stats: MempoolStats,
    /// This node.
    pub me: NodeId,
    /// Arbitrators caught equivocating (evidence for slashing).
    pub evidence: Vec<NodeId>,
    /// Whether this node knows it is at the chain's tip: more arbitrators than can be faulty
    /// (f + 1, so at least one honest) answered, after this node started, that they have
    /// decided nothing past its height. On a quiet chain the next block can be 10 s away, so a
    /// restarted node cannot wait for a fresh block to know its ledger is current.
    pub caught_up: bool,
    /// Proposals this node refused because their block time was not after the parent's or
    /// not within the chain's tolerance of its clock (a faulty or byzantine proposer).
    pub proposals_refused_block_time: u64,
    /// Consensus input (votes, proposals, certificates, synced blocks) this node's driver
    /// refused since start: malformed, forged, from outsiders, inconsistent, or one too many
    /// (a faulty member's flood, THREATS A11). Includes `proposals_refused_block_time`.
    pub consensus_refused: u64,
    /// Sync requests for stored blocks served since start (read and answered beside the task).
    pub sync_served: u64,
    /// Sync requests refused since start (too frequent from one peer, or too many being
    /// served at once; answered `Ack`).
    pub sync_refused: u64,
    /// Propose timeouts this node cut short since start because the round's proposer was a
    /// committee member its network reported down (`DOWN_PROPOSER_TIMEOUT_MS`).
    pub propose_timeouts_cut: u64,
    /// The committee's quorum round trip as this member last measured it
    /// (`agora_consensus::quorum_round_trip`), ms; `None` before a quorum was measured or on a
    /// node outside the committee.
    pub quorum_round_trip_ms: Option<u64>,
    /// The round timeouts in force: the chain's, stretched for that round trip
    /// (`ConsensusTimeouts::for_round_trip`).
    pub timeouts: ConsensusTimeouts,
    /// Heights this node decided since start in a round after the first (its proposal came
    /// too late or not at all): what pacing to the round trip keeps at 0 over slow links.
    pub decided_in_later_round: u64,
}

type QueryJob = Box<dyn FnOnce(&LedgerView) + Send>;

/// Most transactions gossiped in one message.
const TX_BATCH_MAX: usize = 256;
/// Most encoded bytes of one batch (well inside the gossip size limit).
const TX_BATCH_BYTES: usize = 128 * 1024;
/// How long a locally submitted transaction may wait for others to share its gossip message.
const TX_BATCH_DELAY_MS: u64 = 2;
/// How often this node gossips again its own transactions still waiting for a block. A
/// gossip message can be lost (a peer's queue full under a flood, a peer that lagged behind
/// its events, no mesh yet); without this, such a transaction would wait for this node's own
/// turn to propose, or forever if its proposals do not get through.
const OWN_REGOSSIP_MS: u64 = 3_000;

enum Command {
    Query(QueryJob),
    Submit(
        TxKind,
        oneshot::Sender<Result<SignedTransaction, LedgerTaskError>>,
    ),
    /// Test hook: propose blocks this far ahead of the clock.
    #[cfg(feature = "test-utils")]
    ProposalSkew(u64),
    /// Test hook: propose blocks this far behind the clock (after their parent).
    #[cfg(feature = "test-utils")]
    ProposalLag(u64),
    /// Test hook: cast every vote twice, differently.
    #[cfg(feature = "test-utils")]
    DoubleVote,
    /// Test hook: send none of our own votes (or again, with `false`).
    #[cfg(feature = "test-utils")]
    WithholdVotes(bool),
    /// Test hook: the WAL write of our first own vote at this height or later fails.
    #[cfg(feature = "test-utils")]
    FailWalFrom(u64),
    /// Test hook: flood each height with our own proposals.
    #[cfg(feature = "test-utils")]
    FloodProposals,
    /// Test hook: hand this node's own contract registrations to the sender instead.
    #[cfg(feature = "test-utils")]
    DivertRegistrations(mpsc::Sender<TxKind>),
    /// Test hook: submit without this node's own courtesy check of the content.
    #[cfg(feature = "test-utils")]
    SubmitUnchecked(
        TxKind,
        oneshot::Sender<Result<SignedTransaction, LedgerTaskError>>,
    ),
}

/// Cloneable handle to the ledger task.
#[derive(Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<Command>,
    outcomes: broadcast::Sender<Arc<AppliedBlock>>,
    fatal: Arc<std::sync::OnceLock<String>>,
    sent_height: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for LedgerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerHandle")
    }
}

impl LedgerHandle {
    /// Why the ledger task stopped the node, if it did: a failure after which going on could
    /// make this arbitrator contradict itself (a consensus WAL write that failed, THREATS A14).
    pub fn fatal(&self) -> Option<String> {
        self.fatal.get().cloned()
    }

    /// The highest height this node has sent a consensus message (vote, proposal or
    /// certificate) for; 0 before the first. Readable after the task stopped.
    pub fn sent_height(&self) -> u64 {
        self.sent_height.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends `cmd` to the task (an error once it stopped).
    async fn command(&self, cmd: Command) -> Result<(), LedgerTaskError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| LedgerTaskError::Stopped)
    }

    /// Reads the ledger with `f` inside the task.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LedgerView) -> T + Send + 'static,
    ) -> Result<T, LedgerTaskError> {
        let (tx, rx) = oneshot::channel();
        let job: QueryJob = Box::new(move |v| {
            let _ = tx.send(f(v));
        });
        self.command(Command::Query(job)).await?;
        rx.await.map_err(|_| LedgerTaskError::Stopped)
    }

    /// Signs `kind` with this node's key and the next free nonce, admits it and gossips it.
    pub async fn submit(&self, kind: TxKind) -> Result<SignedTransaction, LedgerTaskError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Submit(kind, tx)).await?;
        rx.await.map_err(|_| LedgerTaskError::Stopped)?
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): this node's consensus
    /// driver proposes blocks `skew_ms` ahead of its clock, like a faulty arbitrator.
    #[cfg(feature = "test-utils")]
    pub async fn byzantine_proposal_skew(&self, skew_ms: u64) -> Result<(), LedgerTaskError> {
        self.command(Command::ProposalSkew(skew_ms)).await
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): this node's consensus
    /// driver casts every vote twice, for different values, like an equivocating arbitrator.
    #[cfg(feature = "test-utils")]
    pub async fn byzantine_double_vote(&self) -> Result<(), LedgerTaskError> {
        self.command(Command::DoubleVote).await
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): while `on`, this node's
    /// consensus driver sends none of its own prevotes and precommits, like a withholding
    /// arbitrator.
    #[cfg(feature = "test-utils")]
    pub async fn byzantine_withhold_votes(&self, on: bool) -> Result<(), LedgerTaskError> {
        self.command(Command::WithholdVotes(on)).await
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): at the start of every
    /// height this node's consensus driver sends a flood of its own signed proposals for it,
    /// like a faulty proposer trying to fill the height's candidate-block slots (THREATS A11).
    #[cfg(feature = "test-utils")]
    pub async fn byzantine_flood_proposals(&self) -> Result<(), LedgerTaskError> {
        self.command(Command::FloodProposals).await
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): the consensus WAL write
    /// of this node's first own vote at `height` or later fails, like a disk that just filled
    /// (THREATS A14); the vote's broadcast is the next effect of the same batch.
    #[cfg(feature = "test-utils")]
    pub async fn fail_wal_from(&self, height: u64) -> Result<(), LedgerTaskError> {
        self.command(Command::FailWalFrom(height)).await
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): this node's consensus
    /// driver proposes blocks `lag_ms` behind its clock (never before their parent), like an
    /// arbitrator with a slow clock.
    #[cfg(feature = "test-utils")]
    pub async fn byzantine_proposal_lag(&self, lag_ms: u64) -> Result<(), LedgerTaskError> {
        self.command(Command::ProposalLag(lag_ms)).await
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): submits `kind` like
    /// [`Self::submit`] but without the check of its content against this replica's ledger
    /// that an honest node runs first, as a hostile node signing its own transactions would:
    /// the transaction reaches the mempools and a block, where every replica judges it.
    #[cfg(feature = "test-utils")]
    pub async fn byzantine_submit_unchecked(
        &self,
        kind: TxKind,
    ) -> Result<SignedTransaction, LedgerTaskError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::SubmitUnchecked(kind, tx)).await?;
        rx.await.map_err(|_| LedgerTaskError::Stopped)?
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): from now on, this node's
    /// own `RegisterContract` submissions (a customer registering a countersigned contract)
    /// are not submitted but handed to the returned receiver (at most 64 waiting; more are
    /// dropped), as a hostile customer holding a signed contract back would; the caller
    /// submits them when it likes ([`Self::byzantine_submit_unchecked`]). The deal flow is
    /// told "diverted by a test hook".
    #[cfg(feature = "test-utils")]
    pub async fn byzantine_divert_registrations(
        &self,
    ) -> Result<mpsc::Receiver<TxKind>, LedgerTaskError> {
        let (tx, rx) = mpsc::channel(64);
        self.command(Command::DivertRegistrations(tx)).await?;
        Ok(rx)
    }

    /// Outcomes of applied blocks, as they happen.
    pub fn outcomes(&self) -> broadcast::Receiver<Arc<AppliedBlock>> {
        self.outcomes.subscribe()
    }
}

pub(super) struct LedgerTask {
    pub(super) view: LedgerView,
    pub(super) mempool: Mempool,
    pub(super) store: LedgerStore,
    pub(super) signer: KeySigner,
    pub(super) network: NetworkHandle,
    pub(super) outcomes: broadcast::Sender<Arc<AppliedBlock>>,
    pub(super) driver: ConsensusDriver,
    pub(super) timers: ChainTimers,
    pub(super) params: ChainParams,
    pub(super) seq: u64,
    pub(super) sync_replies: mpsc::Sender<SyncReply>,
    /// Arbitrators that answered a tip check, with the height they were asked for.
    pub(super) tip_confirms: BTreeMap<NodeId, u64>,
    /// When the last tip check went out (ms).
    pub(super) tip_asked_at: u64,
    /// Locally submitted transactions not gossiped yet, with their encoded size and when the
    /// first of them arrived (ms).
    pub(super) outbox: TxOutbox,
    /// This node's own submitted transactions whose nonce the ledger has not consumed yet.
    pub(super) own: BTreeMap<u64, SignedTransaction>,
    /// When this node last gossiped its own transactions (ms).
    pub(super) own_gossiped_at: u64,
    /// The mempool's losses already reported in the log (see [`MempoolStats::lost`]).
    pub(super) logged_lost: u64,
    /// Arbitrators whose equivocation this node already reported to the ledger (bounded by
    /// the committee: the driver only finds evidence against its members).
    pub(super) reported: std::collections::BTreeSet<NodeId>,
    /// Admission of inbound sync requests (per-peer rate, bounded serving).
    pub(super) sync_limiter: crate::sync_server::SyncLimiter,
    /// When this node last paced its consensus timeouts to the committee's round trip (ms).
    pub(super) paced_at: u64,
    /// The funded accounts the network was last told to vouch for (THREATS N7).
    pub(super) vouched: Option<std::collections::BTreeSet<NodeId>>,
    /// Test hook: where this node's own contract registrations go instead of the mempool.
    #[cfg(feature = "test-utils")]
    pub(super) diverted: Option<mpsc::Sender<TxKind>>,
    /// Test hook: the WAL write of our first own vote at this height or later fails.
    #[cfg(feature = "test-utils")]
    pub(super) fail_wal_from: Option<u64>,
    /// Set when the task stops the node (see [`LedgerHandle::fatal`]); nothing more is
    /// carried out after it.
    pub(super) fatal: Arc<std::sync::OnceLock<String>>,
    /// See [`LedgerHandle::sent_height`].
    pub(super) sent_height: Arc<std::sync::atomic::AtomicU64>,
    /// The last decided block this node forwarded on the blocks topic after deciding it
    /// itself (one copy per block: a member re-sealing it cannot make us relay a flood).
    pub(super) relayed_block: Option<agora_consensus::BlockId>,
}

/// Locally submitted transactions waiting to be gossiped together: one signed envelope (and
/// one gossipsub signature) per batch instead of per transaction, which is what every replica
/// otherwise spends most of its time verifying under load.
#[derive(Debug, Default)]
pub(super) struct TxOutbox {
    txs: Vec<SignedTransaction>,
    bytes: usize,
    since: u64,
}

impl TxOutbox {
    fn push(&mut self, tx: SignedTransaction, size: usize) {
        if self.txs.is_empty() {
            self.since = now_ms();
        }
        self.txs.push(tx);
        self.bytes += size;
    }

    fn full(&self) -> bool {
        self.txs.len() >= TX_BATCH_MAX || self.bytes >= TX_BATCH_BYTES
    }

    /// When the batch must go out, if anything waits.
    fn due(&self) -> Option<u64> {
        (!self.txs.is_empty()).then_some(self.since + TX_BATCH_DELAY_MS)
    }

    fn take(&mut self) -> Vec<SignedTransaction> {
        self.bytes = 0;
        std::mem::take(&mut self.txs)
    }
}

/// Opens the store, restores the ledger (snapshot, else genesis) and starts the task.
pub async fn spawn(
    store: LedgerStore,
    genesis: &Genesis,
    config: &crate::chain::LedgerConfig,
    signer: KeySigner,
    network: NetworkHandle,
    cancel: CancellationToken,
) -> Result<(LedgerHandle, JoinHandle<()>), LedgerTaskError> {
    let mut interest = Interest::new("ledger").requests(Kind::Consensus).presence();
    for topic in [TX_TOPIC, BLOCKS_TOPIC, CONSENSUS_TOPIC] {
        interest = interest.topic(topic);
    }
    let events = network.inbox(interest);
    let ledger = match store.snapshot()? {
        Some((height, bytes)) => {
            let l = Ledger::from_snapshot(&bytes)
                .map_err(|e| LedgerTaskError::Ledger(e.to_string()))?;
            info!(height, "ledger restored from snapshot");
            l
        }
        None => {
            Ledger::from_genesis(genesis).map_err(|e| LedgerTaskError::Ledger(e.to_string()))?
        }
    };
    let ledger = replay_stored_blocks(&store, ledger);
    if ledger.chain_id() != genesis.chain_id {
        return Err(LedgerTaskError::Ledger(format!(
            "stored ledger is chain '{}' but genesis is '{}'; remove the data dir's ledger folder to start over",
            ledger.chain_id(),
            genesis.chain_id
        )));
    }
    let me = signer.node_id();
    let member = genesis.committee.contains(&me);
    let topics: &[&str] = if member {
        &[TX_TOPIC, BLOCKS_TOPIC, CONSENSUS_TOPIC]
    } else {
        &[TX_TOPIC, BLOCKS_TOPIC]
    };
    for topic in topics {
        // Every ledger topic is judged before it travels on: transactions only when this node
        // admitted something new from them, so a flood of unfunded or gapped transactions stops
        // at its first hop (#13.1); votes, proposals and decided blocks only when a committee
        // member wrote them, so a stranger's consensus traffic goes nowhere.
        let res = network.subscribe_judged(topic).await;
        if let Err(e) = res {
            warn!(%topic, error = %e, "cannot subscribe");
        }
    }
    if member {
        // Votes travel only between members: each keeps a connection to every other.
        for other in genesis.committee.iter().filter(|c| **c != me) {
            if let Err(e) = network.watch(*other).await {
                warn!(arbitrator = %other.short(), error = %e, "cannot watch arbitrator");
            }
        }
    }
    // Every consensus signature covers the chain (THREATS A8).
    let validators = ValidatorSet::new(genesis.committee.iter().copied())
        .map_err(|e| LedgerTaskError::Ledger(format!("genesis committee: {e}")))?
        .on_chain(agora_contracts::ChainTag::of(&genesis.chain_id));
    let mut params = ChainParams {
        max_block_txs: config.max_block_txs.clamp(1, crate::chain::MAX_BLOCK_TXS),
        ..ChainParams::default()
    };
    if params.max_block_txs != config.max_block_txs {
        warn!(
            asked = config.max_block_txs,
            used = params.max_block_txs,
            "[ledger] max_block_txs must be 1 to {}; clamped",
            crate::chain::MAX_BLOCK_TXS
        );
    }
    // Proposals are judged against the chain's own tolerance (genesis `LedgerParams`).
    params.consensus.block_time_tolerance_ms = ledger.params().block_time_tolerance_ms;
    let driver = ConsensusDriver::new(
        Arc::new(signer.clone()),
        validators,
        params.consensus.clone(),
    );
    let (sync_tx, sync_rx) = mpsc::channel(16);
    let (tx, rx) = mpsc::channel(256);
    let (outcomes, _) = broadcast::channel(256);
    let task = LedgerTask {
        view: LedgerView {
            ledger,
            last_block_at: None,
            mempool: 0,
            mempool_stats: MempoolStats::default(),
            me: signer.node_id(),
            evidence: Vec::new(),
            caught_up: false,
            proposals_refused_block_time: 0,
            consensus_refused: 0,
            sync_served: 0,
            sync_refused: 0,
            propose_timeouts_cut: 0,
            quorum_round_trip_ms: None,
            timeouts: params.consensus.timeouts,
            decided_in_later_round: 0,
        },
        mempool: Mempool::new(me),
        store,
        signer,
        network,
        outcomes: outcomes.clone(),
        driver,
        timers: ChainTimers::default(),
        params,
        seq: 0,
        sync_replies: sync_tx,
        tip_confirms: BTreeMap::new(),
        tip_asked_at: 0,
        outbox: TxOutbox::default(),
        own: BTreeMap::new(),
        own_gossiped_at: 0,
        reported: Default::default(),
        logged_lost: 0,
        sync_limiter: Default::default(),
        paced_at: 0,
        vouched: None,
        #[cfg(feature = "test-utils")]
        diverted: None,
        #[cfg(feature = "test-utils")]
        fail_wal_from: None,
        fatal: Arc::default(),
        sent_height: Arc::default(),
        relayed_block: None,
    };
    let (fatal, sent_height) = (task.fatal.clone(), task.sent_height.clone());
    let join = tokio::spawn(task.run(rx, sync_rx, events, cancel).in_current_span());
    Ok((
        LedgerHandle {
            tx,
            outcomes,
            fatal,
            sent_height,
        },
        join,
    ))
}

impl LedgerTask {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut sync_replies: mpsc::Receiver<SyncReply>,
        mut events: Inbox,
        cancel: CancellationToken,
    ) {
        self.start_chain().await;
        if self.stopped_for_fatal(&cancel) {
            return;
        }
        self.vouch_funded().await;
        loop {
            let due = self
                .timers
                .next_due()
                .into_iter()
                .chain(self.outbox.due())
                .chain(self.own_regossip_due())
                .chain(self.next_tip_check())
                .chain(self.next_pacing())
                .min();
            let sleep = async move {
                match due {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = sleep => {
                    if self.own_regossip_due().is_some_and(|at| at <= now_ms()) {
                        self.regossip_own();
                    }
                    if self.outbox.due().is_some_and(|at| at <= now_ms()) {
                        self.flush_outbox().await;
                    }
                    self.on_chain_timer().await;
                    self.check_tip();
                    if self.next_pacing().is_some_and(|at| at <= now_ms()) {
                        self.pace().await;
                    }
                }
                Some(reply) = sync_replies.recv() => {
                    if reply.blocks.is_empty() {
                        self.on_tip_answer(reply.from, reply.asked);
                    } else {
                        let SyncReply { from, blocks, .. } = reply;
                        self.feed(Input::SyncResponse { from, blocks }).await;
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                ev = events.recv() => match ev {
                    // Other tasks judge their own topics (the market driver's).
                    NetworkEvent::GossipToJudge { topic, envelope, ticket, .. }
                        if [TX_TOPIC, BLOCKS_TOPIC, CONSENSUS_TOPIC].contains(&topic.as_str()) =>
                    {
                        self.on_judged_gossip(&topic, &envelope, ticket).await;
                    }
                    NetworkEvent::Presence(p) => match p {
                        PresenceEvent::Up { node, .. } => self.on_presence(node, true),
                        PresenceEvent::Down { node, .. } => self.on_presence(node, false),
                    },
                    NetworkEvent::Request { id, envelope, .. } if envelope.kind == Kind::Consensus => {
                        match envelope.body::<SyncMsg>(Kind::Consensus) {
                            Ok(msg) => self.on_sync_request(envelope.sender, id, msg).await,
                            Err(e) => debug!(error = %e, "malformed sync request"),
                        }
                    }
                    _ => {}
                },
            }
            if self.stopped_for_fatal(&cancel) {
                break;
            }
        }
        debug!("ledger task stopped");
    }

    /// After a failure the task must not run on with (see [`LedgerHandle::fatal`]): stops
    /// the node, so a supervisor's restart replays a consistent consensus WAL.
    fn stopped_for_fatal(&self, cancel: &CancellationToken) -> bool {
        let Some(why) = self.fatal.get() else {
            return false;
        };
        tracing::error!(%why, "the ledger stops this node: a supervisor's restart replays its consensus WAL");
        cancel.cancel();
        true
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Query(job) => job(&self.view),
            Command::Submit(kind, reply) => {
                #[cfg(feature = "test-utils")]
                if let (TxKind::RegisterContract(_), Some(divert)) = (&kind, &self.diverted) {
                    let _ = divert.try_send(kind);
                    let _ = reply.send(Err(LedgerTaskError::Ledger(
                        "diverted by a test hook".into(),
                    )));
                    return;
                }
                let res = self.submit(kind).await;
                let _ = reply.send(res);
            }
            #[cfg(feature = "test-utils")]
            Command::DivertRegistrations(to) => {
                warn!("test hook: this node's contract registrations are diverted");
                self.diverted = Some(to);
            }
            #[cfg(feature = "test-utils")]
            Command::SubmitUnchecked(kind, reply) => {
                let res = self.submit_with(kind, false).await;
                let _ = reply.send(res);
            }
            #[cfg(feature = "test-utils")]
            Command::ProposalLag(ms) => {
                warn!(
                    lag_ms = ms,
                    "test hook: this node proposes blocks behind its clock"
                );
                self.driver.byzantine_proposal_lag(ms);
            }
            #[cfg(feature = "test-utils")]
            Command::ProposalSkew(ms) => {
                warn!(
                    skew_ms = ms,
                    "test hook: this node proposes blocks ahead of its clock"
                );
                self.driver.byzantine_proposal_skew(ms);
            }
            #[cfg(feature = "test-utils")]
            Command::DoubleVote => {
                warn!("test hook: this node casts every vote twice, differently");
                self.driver.byzantine_double_vote();
            }
            #[cfg(feature = "test-utils")]
            Command::FloodProposals => {
                warn!("test hook: this node floods every height with its own proposals");
                self.driver.byzantine_flood_proposals();
            }
            #[cfg(feature = "test-utils")]
            Command::FailWalFrom(height) => {
                warn!(
                    height,
                    "test hook: consensus WAL writes from this height fail"
                );
                self.fail_wal_from = Some(height);
            }
            #[cfg(feature = "test-utils")]
            Command::WithholdVotes(on) => {
                warn!(on, "test hook: this node withholds its votes");
                self.driver.byzantine_withhold_votes(on);
            }
        }
    }

    async fn submit(&mut self, kind: TxKind) -> Result<SignedTransaction, LedgerTaskError> {
        self.submit_with(kind, true).await
    }

    /// Signs, admits and gossips `kind`; with `check`, first runs the ledger's full check of
    /// its content when nothing of ours is pending.
    async fn submit_with(
        &mut self,
        kind: TxKind,
        check: bool,
    ) -> Result<SignedTransaction, LedgerTaskError> {
        let me = self.signer.node_id();
        let tx = Transaction {
            chain_id: self.view.ledger.chain_id().to_string(),
            sender: me,
            nonce: self.mempool.next_nonce(&self.view.ledger, &me),
            kind,
        }
        .sign(&self.signer)
        .map_err(|e| LedgerTaskError::Ledger(e.to_string()))?;
        // When nothing of ours is pending, run the full check now so the user hears at once
        // about an overspend instead of a silent drop at block time.
        if check && tx.tx.nonce == self.view.ledger.next_nonce(&me) {
            self.view
                .ledger
                .check(now_ms(), &tx)
                .map_err(LedgerTaskError::Refused)?;
        }
        let size = serde_cbor::to_vec(&tx)
            .map_err(|e| LedgerTaskError::Ledger(format!("cannot encode transaction: {e}")))?
            .len();
        self.mempool
            .admit(&self.view.ledger, now_ms(), tx.clone())?;
        self.sync_mempool_view();
        self.on_new_transaction();
        self.outbox.push(tx.clone(), size);
        self.own.insert(tx.tx.nonce, tx.clone());
        if self.outbox.full() {
            self.flush_outbox().await;
        }
        Ok(tx)
    }

    /// Submits double-vote evidence as `TxKind::ReportEquivocation`, through the mempool like
    /// any own transaction, once per arbitrator: the ledger burns the equivocator's bond.
    /// Double proposals have no ledger rule (nothing decided comes of them) and are only
    /// logged.
    pub(super) async fn report_equivocation(&mut self, m: &agora_consensus::Misbehavior) {
        let arbitrator = m.validator();
        let Some(evidence) = m.ledger_evidence() else {
            return;
        };
        if self.view.ledger.is_slashed(&arbitrator) || self.reported.contains(&arbitrator) {
            return;
        }
        match self
            .submit(TxKind::ReportEquivocation(Box::new(evidence)))
            .await
        {
            Ok(tx) => {
                self.reported.insert(arbitrator);
                info!(arbitrator = %arbitrator.short(), nonce = tx.tx.nonce, "equivocation reported to the ledger");
            }
            Err(e) => {
                warn!(arbitrator = %arbitrator.short(), error = %e, "equivocation evidence not submitted");
            }
        }
    }

    /// Signs again, with fresh nonces, own transactions whose nonce `txs` (a block just
    /// applied) used up without including them. That happens when this replica signed them
    /// while it was still catching up (after a restart its ledger lags, so it reuses a nonce an
    /// earlier transaction of its own had taken): the other replicas refuse them as stale and
    /// they would be lost without a word.
    pub(super) async fn resubmit_superseded(&mut self, txs: &[SignedTransaction]) {
        let next = self.view.ledger.next_nonce(&self.view.me);
        for lost in superseded(&mut self.own, self.view.me, next, txs) {
            let nonce = lost.tx.nonce;
            match self.submit(lost.tx.kind).await {
                Ok(again) => info!(
                    old = nonce,
                    new = again.tx.nonce,
                    "own transaction lost its nonce to an earlier one; submitted again"
                ),
                Err(e) => {
                    warn!(nonce, error = %e, "own transaction lost its nonce and cannot be resubmitted")
                }
            }
        }
    }

    /// When own transactions still wait for a block: [`OWN_REGOSSIP_MS`] after they were last
    /// gossiped.
    fn own_regossip_due(&self) -> Option<u64> {
        let next = self.view.ledger.next_nonce(&self.view.me);
        self.own
            .range(next..)
            .any(|(_, tx)| self.mempool.holds(tx))
            .then_some(self.own_gossiped_at + OWN_REGOSSIP_MS)
    }

    /// Puts own transactions that still wait for a block back in the outbox (at most one
    /// batch; the rest go next time).
    fn regossip_own(&mut self) {
        let next = self.view.ledger.next_nonce(&self.view.me);
        let waiting: Vec<SignedTransaction> = self
            .own
            .range(next..)
            .map(|(_, tx)| tx)
            .filter(|tx| self.mempool.holds(tx))
            .take(TX_BATCH_MAX)
            .cloned()
            .collect();
        debug!(
            txs = waiting.len(),
            "gossiping again own transactions still waiting for a block"
        );
        for tx in waiting {
            let size = serde_cbor::to_vec(&tx).map_or(0, |b| b.len());
            self.outbox.push(tx, size);
        }
        self.own_gossiped_at = now_ms();
    }

    /// Gossips the waiting local transactions as one batch.
    async fn flush_outbox(&mut self) {
        let batch = self.outbox.take();
        if batch.is_empty() {
            return;
        }
        self.own_gossiped_at = now_ms();
        match serde_cbor::to_vec(&batch) {
            Ok(bytes) => {
                if let Err(e) = self
                    .network
                    .broadcast(TX_TOPIC, Kind::Transaction, bytes)
                    .await
                {
                    debug!(error = %e, txs = batch.len(), "transactions not gossiped (no peers yet?)");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode transaction batch"),
        }
    }

    /// A message of one of the ledger's topics: judged (see [`GossipVerdict`]), then used.
    async fn on_judged_gossip(&mut self, topic: &str, envelope: &Envelope, ticket: GossipTicket) {
        let (mut block, mut message) = (None, None);
        let verdict = match envelope.kind {
            Kind::Transaction if topic == TX_TOPIC => self.on_gossiped_batch(&envelope.payload),
            Kind::Consensus if !self.view.ledger.committee().contains(&envelope.sender) => {
                // Not penalised: a replica behind on committee changes may be wrong.
                debug!(from = %envelope.sender.short(), %topic, "consensus gossip from a non-member ignored");
                GossipVerdict::Ignore
            }
            Kind::Consensus if topic == BLOCKS_TOPIC => {
                // Judged on what it is, not only on who signed it (THREATS A12): a member's junk
                // or old blocks are not forwarded, nor fed to the driver.
                let verdict;
                (verdict, block) = self.judge_block(envelope);
                verdict
            }
            Kind::Consensus if topic == CONSENSUS_TOPIC => {
                // Decoded and its signatures checked here, once, in this task (THREATS A12): a
                // member's junk, stale heights and far rounds are not forwarded; the driver
                // takes the checked message after the verdict, so votes travel on without
                // waiting for their processing.
                match self.driver.judge_gossiped_message(&envelope.payload) {
                    GossipedMessage::Forward(msg) => {
                        message = Some(msg);
                        GossipVerdict::Accept
                    }
                    GossipedMessage::Far(msg) => {
                        message = Some(msg);
                        GossipVerdict::Ignore
                    }
                    GossipedMessage::Stale => GossipVerdict::Ignore,
                    GossipedMessage::Invalid(e) => {
                        debug!(from = %envelope.sender.short(), error = %e, "invalid consensus message");
                        self.view.consensus_refused = self.view.consensus_refused.saturating_add(1);
                        GossipVerdict::Reject
                    }
                }
            }
            _ => GossipVerdict::Reject,
        };
        self.network.judge(ticket, verdict).await;
        if let Some(decided) = block {
            // Accepted, or ignored yet far ahead (the driver asks for the gap).
            return self.on_block_gossip(envelope.sender, decided).await;
        }
        if let Some(msg) = message {
            // Forwarded, or ignored yet far ahead (the driver asks for the gap).
            self.on_consensus_gossip(envelope.sender, msg).await;
        }
    }

    /// A decided block gossiped on [`BLOCKS_TOPIC`] (see
    /// [`ConsensusDriver::judge_gossiped_block`]): undecodable or invalid for the next height
    /// rejected; the next two forwarded and applied; the one decided last forwarded once; one
    /// further ahead not forwarded but given to the driver (a gap to sync); the rest ignored.
    fn judge_block(&mut self, envelope: &Envelope) -> (GossipVerdict, Option<DecidedBlock>) {
        let decided = match serde_cbor::from_slice::<DecidedBlock>(&envelope.payload) {
            Ok(d) => d,
            Err(e) => {
                debug!(from = %envelope.sender.short(), error = %e, "malformed decided block");
                return (GossipVerdict::Reject, None);
            }
        };
        match self.driver.judge_gossiped_block(envelope.sender, &decided) {
            GossipedBlock::Next | GossipedBlock::Ahead => (GossipVerdict::Accept, Some(decided)),
            GossipedBlock::Far => (GossipVerdict::Ignore, Some(decided)),
            GossipedBlock::JustDecided(id) if self.relayed_block != Some(id) => {
                self.relayed_block = Some(id);
                (GossipVerdict::Accept, None)
            }
            GossipedBlock::JustDecided(_) | GossipedBlock::Old => (GossipVerdict::Ignore, None),
            GossipedBlock::Invalid(e) => {
                debug!(from = %envelope.sender.short(), error = %e, "invalid decided block gossiped");
                (GossipVerdict::Reject, None)
            }
        }
    }

    /// Admits what a peer gossiped: a batch of transactions, each checked on its own (a bad
    /// one is dropped, the others still count).
    /// Admits a gossiped batch; the verdict decides whether the network forwards it: only a
    /// batch that brought at least one new admissible transaction travels on.
    fn on_gossiped_batch(&mut self, payload: &[u8]) -> GossipVerdict {
        let batch = match serde_cbor::from_slice::<Vec<SignedTransaction>>(payload) {
            Ok(b) => b,
            Err(e) => {
                debug!(error = %e, "malformed transaction batch");
                return GossipVerdict::Reject;
            }
        };
        let mut admitted = false;
        let now = now_ms();
        for tx in batch {
            match self.mempool.admit(&self.view.ledger, now, tx) {
                Ok(new) => admitted |= new,
                Err(e) => debug!(error = %e, "gossiped transaction not admitted"),
            }
        }
        self.sync_mempool_view();
        if admitted && self.mempool.has_ready(&self.view.ledger) {
            self.on_new_transaction();
        }
        if admitted {
            GossipVerdict::Accept
        } else {
            GossipVerdict::Ignore
        }
    }

    /// Tells the network whom to vouch for when that changed: every identity whose account
    /// holds the ledger's minimum balance (what admission asks of a sender). Gossip and
    /// requests from anyone else — identities are free — share one budget (THREATS N7).
    async fn vouch_funded(&mut self) {
        // Compared in place: the set is built only when it changed (rarely; this runs after
        // every block).
        let ledger = &self.view.ledger;
        if self
            .vouched
            .as_ref()
            .is_some_and(|v| v.iter().eq(ledger.funded()))
        {
            return;
        }
        let funded: std::collections::BTreeSet<NodeId> = ledger.funded().copied().collect();
        let peers = funded
            .iter()
            .filter_map(agora_network::keys::peer_id_of)
            .collect();
        self.network.vouch(peers).await;
        debug!(funded = funded.len(), "vouched for the funded accounts");
        self.vouched = Some(funded);
    }

    /// Copies the mempool's size and counters into the view queries read.
    fn sync_mempool_view(&mut self) {
        self.view.mempool = self.mempool.len();
        self.view.mempool_stats = self.mempool.stats().clone();
    }

    /// After a block: the mempool drops what the ledger moved past, senders no longer funded
    /// and transactions stuck behind a nonce gap too long; what it lost since the last report
    /// is logged once (per transaction would let a flood fill the log).
    fn recheck_mempool(&mut self) {
        self.mempool.after_block(&self.view.ledger, now_ms());
        self.sync_mempool_view();
        let s = &self.view.mempool_stats;
        let lost = s.lost();
        if lost > self.logged_lost {
            info!(
                since_last_report = lost - self.logged_lost,
                refused_unfunded = s.refused_unfunded,
                refused_nonce = s.refused_nonce,
                refused_invalid = s.refused_invalid,
                refused_sender_full = s.refused_sender_full,
                refused_full = s.refused_full,
                evicted = s.evicted,
                expired = s.expired,
                dropped_unfunded = s.dropped_unfunded,
                dropped_refused_by_block = s.dropped_refused_by_block,
                pending = self.view.mempool,
                "mempool refused or dropped transactions (totals since start)"
            );
            self.logged_lost = lost;
        }
    }

    pub(super) async fn apply(
        &mut self,
        height: u64,
        time: u64,
        raw: &[u8],
        txs: &[SignedTransaction],
    ) -> Result<BlockOutcome, LedgerTaskError> {
        let outcome = self
            .view
            .ledger
            .apply_block_with(height, time, txs, |tx| self.mempool.holds(tx))
            .map_err(|e| LedgerTaskError::Ledger(e.to_string()))?;
        // Every block is stored; the whole state only every SNAPSHOT_EVERY blocks (a restart
        // replays the blocks after it). Writing the snapshot each block was, at 100 nodes, a
        // sixth of an idle devnet's CPU, all of it in one burst per block.
        let snapshot = if height.is_multiple_of(SNAPSHOT_EVERY) {
            Some(
                self.view
                    .ledger
                    .to_snapshot()
                    .map_err(|e| LedgerTaskError::Ledger(e.to_string()))?,
            )
        } else {
            None
        };
        // The commit flushes to disk: off the async workers, so one node's fsync does not
        // stall every other task on the runtime (a hundred in-process nodes share two workers).
        let store = self.store.clone();
        let raw = raw.to_vec();
        tokio::task::spawn_blocking(move || store.commit(height, &raw, snapshot.as_deref()))
            .await
            .map_err(|e| LedgerTaskError::Ledger(format!("ledger store task: {e}")))??;
        for (i, why) in &outcome.rejected {
            if let Some(tx) = txs.get(*i) {
                info!(sender = %tx.tx.sender.short(), nonce = tx.tx.nonce, error = %why, "block refused a transaction");
                self.mempool.remove(tx);
            }
        }
        self.recheck_mempool();
        // Every block: one without transactions may still move funds (a settlement that falls
        // due, a slash), so an account may cross the minimum balance either way.
        self.vouch_funded().await;
        self.view.last_block_at = Some(time);
        let _ = self.outcomes.send(Arc::new(AppliedBlock {
            height,
            time,
            events: outcome.events.clone(),
            rejected: outcome.rejected.len(),
        }));
        Ok(outcome)
    }
}

/// Blocks between two ledger snapshots.
const SNAPSHOT_EVERY: u64 = 64;

/// Re-applies the stored blocks after the restored snapshot, in order; stops at a gap or a
/// block that does not apply (sync fetches the rest from the arbitrators).
fn replay_stored_blocks(store: &LedgerStore, mut ledger: Ledger) -> Ledger {
    let from = ledger.height() + 1;
    'replay: loop {
        let next = ledger.height() + 1;
        let batch = match store.blocks_from(next, 256) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => break,
            Err(e) => {
                warn!(error = %e, "cannot read stored blocks to replay");
                break;
            }
        };
        for (height, raw) in batch {
            if height != ledger.height() + 1 {
                break 'replay;
            }
            let decided = match serde_cbor::from_slice::<DecidedBlock>(&raw) {
                Ok(d) => d,
                Err(e) => {
                    warn!(height, error = %e, "stored block is unreadable; replay stops");
                    break 'replay;
                }
            };
            let (txs, time) = super::chain::block_inputs(&decided.block, &ledger);
            if let Err(e) = ledger.apply_block(height, time, &txs) {
                warn!(height, error = %e, "stored block does not apply; replay stops");
                break 'replay;
            }
        }
    }
    if ledger.height() >= from {
        info!(
            from,
            to = ledger.height(),
            "replayed stored blocks after the snapshot"
        );
    }
    ledger
}

/// Removes from `own` every transaction whose nonce is below `next` (used up on the ledger) and
/// returns those of them that `block` (the block that used the nonce) did not include.
fn superseded(
    own: &mut BTreeMap<u64, SignedTransaction>,
    me: NodeId,
    next: u64,
    block: &[SignedTransaction],
) -> Vec<SignedTransaction> {
    let included: HashSet<[u8; 32]> = block
        .iter()
        .filter(|t| t.tx.sender == me)
        .filter_map(|t| t.id().ok())
        .collect();
    let consumed: Vec<u64> = own.range(..next).map(|(n, _)| *n).collect();
    consumed
        .into_iter()
        .filter_map(|n| own.remove(&n))
        .filter(|tx| tx.id().is_ok_and(|id| !included.contains(&id)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use agora_contracts::test_utils::{TEST_CHAIN, genesis_with, signer, tx_with_nonce};

    use super::*;

    #[test]
    fn own_transactions_whose_nonce_went_to_another_are_returned_once() {
        let me = signer(1);
        let faucet = |amount| TxKind::Faucet { amount };
        let mine = |nonce, amount| tx_with_nonce(TEST_CHAIN, &me, nonce, faucet(amount));
        let mut own = BTreeMap::from([(0, mine(0, 1)), (1, mine(1, 2)), (2, mine(2, 3))]);
        // The block used nonce 0 for our own tx, and nonce 1 for one signed before a restart.
        let block = vec![mine(0, 1), mine(1, 99)];
        let lost = superseded(&mut own, me.node_id(), 2, &block);
        assert_eq!(lost, vec![mine(1, 2)]);
        assert_eq!(own.keys().copied().collect::<Vec<_>>(), vec![2]);
        // Nothing is returned twice.
        assert!(superseded(&mut own, me.node_id(), 2, &block).is_empty());
    }

    #[test]
    fn a_restart_replays_the_blocks_after_the_last_snapshot() {
        use agora_consensus::{Block, BlockId, CommitCertificate};
        let (genesis, accounts, _) = genesis_with(2, 1, 100);
        let dir = tempfile::tempdir().unwrap();
        let store = LedgerStore::open(dir.path()).unwrap();
        let mut live = Ledger::from_genesis(&genesis).unwrap();
        let faucet = |nonce| {
            tx_with_nonce(
                TEST_CHAIN,
                &accounts[0],
                nonce,
                TxKind::Faucet { amount: 7 },
            )
        };
        // Blocks 1..=3 applied live; the snapshot is taken after block 1 only.
        for height in 1..=3u64 {
            let txs = vec![faucet(height - 1)];
            let block = Block {
                height,
                parent: BlockId::GENESIS_PARENT,
                proposer: accounts[1].node_id(),
                timestamp: 1_000 * height,
                transactions: txs.iter().map(|t| serde_cbor::to_vec(t).unwrap()).collect(),
            };
            live.apply_block(height, block.timestamp, &txs).unwrap();
            let certificate = CommitCertificate {
                height,
                round: 0,
                block_id: block.id(),
                signatures: Vec::new(),
            };
            let raw = serde_cbor::to_vec(&DecidedBlock { block, certificate }).unwrap();
            let snap = (height == 1).then(|| live.to_snapshot().unwrap());
            store.commit(height, &raw, snap.as_deref()).unwrap();
        }
        let (h, snap) = store.snapshot().unwrap().unwrap();
        assert_eq!(h, 1);
        let restored = replay_stored_blocks(&store, Ledger::from_snapshot(&snap).unwrap());
        assert_eq!(restored.height(), 3);
        assert_eq!(restored.state_hash().unwrap(), live.state_hash().unwrap());
        // From genesis (no snapshot at all) it gets there too.
        let from_genesis = replay_stored_blocks(&store, Ledger::from_genesis(&genesis).unwrap());
        assert_eq!(
            from_genesis.state_hash().unwrap(),
            live.state_hash().unwrap()
        );
    }
}
