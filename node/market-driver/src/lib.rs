//! The market driver: carries the pure market state machine (`agora_market::MarketState`)
//! over the network, turns agreed deals into dual-signed contracts ([`deals`]), and tells the
//! market what the ledger says of customers and bidders ([`funding`], [`reputation`]).
//!
//! A task owns the state. Gossip and requests of kind `Market` become `Input::Remote`, local
//! commands (CLI via the control API) become inputs, a timer feeds `Input::Tick` at the times the
//! state asks for, and effects are carried out: `Broadcast` → gossip on the region topic,
//! `Send` → request-response to the peer, everything else → the market event log that
//! `agora market watch` streams.
//!
//! May depend on the pure `agora-market` and `agora-contracts`, `agora-wire`, `agora-network`,
//! `agora-ledger` (deals register contracts) and `agora-exchange` (a storage deal carries the
//! customer's chunk commitment); never on hosting, the radio or the orchestrator.
#![forbid(unsafe_code)]

mod agreed;
pub mod deals;
pub mod funding;
pub mod holds;
pub mod reputation;

pub use agreed::{AGREED_CHANNEL, MAX_PENDING_AGREED};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_market::{
    Effect, Input, KeySigner, MarketConfig, MarketMessage, MarketState, NodeId, Signer,
    topic_for_region,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use agora_network::keys::peer_id_of;
use agora_network::retry;
use agora_network::{GossipVerdict, Inbox, Interest, NetworkEvent, NetworkHandle, TopicRoutes};
use agora_wire::codec::{Envelope, Kind};
use agora_wire::now_ms;

/// Events kept for `agora market watch`.
const EVENT_LOG_CAP: usize = 2048;

/// One recorded market event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MarketEventRecord {
    /// Position in the log (monotonic).
    pub seq: u64,
    /// When it happened (ms).
    pub at: u64,
    /// Event kind (`bid-received`, `auction-closed`, `awarded`, `agreed`, `rejected`, ...).
    pub kind: String,
    /// Human-readable detail.
    pub detail: String,
    /// Structured detail.
    pub data: serde_json::Value,
}

#[derive(Debug, Default)]
struct EventLog {
    next: u64,
    records: VecDeque<MarketEventRecord>,
    /// Events ever recorded, by kind (kinds are this crate's literals: a bounded set).
    counts: BTreeMap<&'static str, u64>,
}

/// Records a market event in `log` (the task's `record`, also used by its send tasks).
fn record_to(log: &Mutex<EventLog>, kind: &'static str, detail: String, data: serde_json::Value) {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    let count = log.counts.get(kind).copied().unwrap_or(0) + 1;
    // What peers send decides how many rejections there are: the 1st to 16th and then the
    // 32nd, 64th… are logged at info, every other one at debug (all are in the event log and
    // counted), so a flood of bad messages is not a flood of log lines.
    if kind != "rejected" || count <= 16 || count.is_power_of_two() {
        info!(event = kind, %detail, count, "market");
    } else {
        debug!(event = kind, %detail, count, "market");
    }
    let seq = log.next;
    log.next += 1;
    *log.counts.entry(kind).or_default() += 1;
    log.records.push_back(MarketEventRecord {
        seq,
        at: now_ms(),
        kind: kind.to_string(),
        detail,
        data,
    });
    while log.records.len() > EVENT_LOG_CAP {
        log.records.pop_front();
    }
}

/// A read-only job run inside the market task.
type QueryJob = Box<dyn FnOnce(&MarketState<KeySigner>) + Send>;

/// Test hook: a job that changes the state as a byzantine node would, at the given time, and
/// returns the effects to carry out.
#[cfg(feature = "test-utils")]
type ByzantineJob = Box<dyn FnOnce(&mut MarketState<KeySigner>, u64) -> Vec<Effect> + Send>;

enum MarketCommand {
    Input(Box<Input>, oneshot::Sender<Vec<Effect>>),
    Query(QueryJob),
    /// Test hook: see [`MarketHandle::byzantine`].
    #[cfg(feature = "test-utils")]
    Byzantine(ByzantineJob),
}

/// Cloneable handle to the market task.
#[derive(Clone)]
pub struct MarketHandle {
    tx: mpsc::Sender<MarketCommand>,
    log: Arc<Mutex<EventLog>>,
    /// The deal task's end of the agreed terms, until it takes it.
    agreed: Arc<Mutex<Option<mpsc::Receiver<agora_market::Agreement>>>>,
}

impl std::fmt::Debug for MarketHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarketHandle")
    }
}

/// Errors of the market driver.
#[derive(Debug, thiserror::Error)]
pub enum MarketTaskError {
    /// The task is gone.
    #[error("market driver stopped; is the node shutting down?")]
    Stopped,
}

impl MarketHandle {
    /// Feeds a local input; returns the effects it produced (already carried out).
    pub async fn input(&self, input: Input) -> Result<Vec<Effect>, MarketTaskError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(MarketCommand::Input(Box::new(input), tx))
            .await
            .map_err(|_| MarketTaskError::Stopped)?;
        rx.await.map_err(|_| MarketTaskError::Stopped)
    }

    /// Reads the state with `f` inside the market task.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&MarketState<KeySigner>) -> T + Send + 'static,
    ) -> Result<T, MarketTaskError> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |s: &MarketState<KeySigner>| {
            let _ = tx.send(f(s));
        });
        self.tx
            .send(MarketCommand::Query(job))
            .await
            .map_err(|_| MarketTaskError::Stopped)?;
        rx.await.map_err(|_| MarketTaskError::Stopped)
    }

    /// Test hook (feature `test-utils`, never in the shipped binary): runs `f` on the state
    /// inside the task at the current time, as a byzantine node's misbehaviour (turning on one
    /// of `agora_market`'s `byzantine_*` hooks, or signing what an honest node never signs),
    /// carries out the effects it returns like those of an input, and returns its answer.
    #[cfg(feature = "test-utils")]
    pub async fn byzantine<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut MarketState<KeySigner>, u64) -> (Vec<Effect>, T) + Send + 'static,
    ) -> Result<T, MarketTaskError> {
        let (tx, rx) = oneshot::channel();
        let job: ByzantineJob = Box::new(move |s: &mut MarketState<KeySigner>, now: u64| {
            let (effects, answer) = f(s, now);
            let _ = tx.send(answer);
            effects
        });
        self.tx
            .send(MarketCommand::Byzantine(job))
            .await
            .map_err(|_| MarketTaskError::Stopped)?;
        rx.await.map_err(|_| MarketTaskError::Stopped)
    }

    /// Deals as they are agreed, in order and none lost (the deal task turns them into
    /// contracts): one receiver, for the first caller; `None` after that.
    pub fn take_agreed(&self) -> Option<mpsc::Receiver<agora_market::Agreement>> {
        self.agreed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// How many market events of each kind (`bid-received`, `awarded`, …) this node recorded
    /// since it started; unlike [`Self::events_after`] nothing is evicted.
    pub fn event_counts(&self) -> BTreeMap<&'static str, u64> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.counts.clone()
    }

    /// Events with `seq > after`.
    pub fn events_after(&self, after: Option<u64>) -> Vec<MarketEventRecord> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.records
            .iter()
            .filter(|r| after.is_none_or(|a| r.seq > a))
            .cloned()
            .collect()
    }
}

struct MarketTask {
    state: MarketState<KeySigner>,
    signer: KeySigner,
    network: NetworkHandle,
    subscribed: BTreeSet<String>,
    /// Routes the gossip of each topic subscribed to this task's inbox.
    routes: TopicRoutes,
    /// When the book asked to be woken (rounded up to [`TIMER_GRANULARITY_MS`]), at most
    /// [`MAX_TIMERS`].
    timers: Timers,
    log: Arc<Mutex<EventLog>>,
    feedback: mpsc::Sender<(NodeId, MarketMessage)>,
    /// Agreed terms on their way to the deal task (bounded, never lost silently).
    agreed: agreed::AgreedOutbox,
    seq: u64,
    regions: Vec<String>,
    /// Peers asked for region snapshots (late join); a few are enough.
    snapshot_peers: BTreeSet<NodeId>,
    /// Direct messages being retried (at most [`MAX_RETRYING`]).
    retrying: retry::InFlight,
}

/// How many peers a node asks for open auctions and offers when it joins.
const SNAPSHOT_PEERS: usize = 2;

/// Wake-ups are rounded up to this (a market deadline — an auction's close, a hold's end —
/// lands at most this late), so deadlines a peer spaces a millisecond apart cost at most one
/// wake-up per this long.
const TIMER_GRANULARITY_MS: u64 = 50;
/// Most wake-ups kept. Every remote auction the book admits asks for one at its close (up to
/// a week ahead), and an auction evicted from the full book leaves its wake-up behind: past
/// this bound the latest are dropped and the task also wakes every
/// [`OVERFLOW_TICK_MS`] (each tick re-derives every deadline, so none is missed for long).
const MAX_TIMERS: usize = 16_384;
/// How often the task wakes once wake-ups were dropped.
const OVERFLOW_TICK_MS: u64 = 1_000;

/// The book's wake-ups: bounded, rounded, each removed as it passes.
#[derive(Debug, Default)]
struct Timers {
    at: BTreeSet<u64>,
    /// Some were dropped at the bound: wake every [`OVERFLOW_TICK_MS`] too.
    overflowed: bool,
}

impl Timers {
    fn insert(&mut self, at: u64) {
        let at = at
            .div_ceil(TIMER_GRANULARITY_MS)
            .saturating_mul(TIMER_GRANULARITY_MS);
        if self.at.len() < MAX_TIMERS {
            self.at.insert(at);
            return;
        }
        self.overflowed = true;
        if self.at.last().is_some_and(|last| at < *last) && self.at.insert(at) {
            self.at.pop_last();
        }
    }

    /// The next wake-up, if any.
    fn next(&self, now: u64) -> Option<u64> {
        let first = self.at.first().copied();
        if self.overflowed {
            let backstop = now.saturating_add(OVERFLOW_TICK_MS);
            Some(first.map_or(backstop, |f| f.min(backstop)))
        } else {
            first
        }
    }

    /// Forgets every wake-up up to `now` (a split, not a scan).
    fn fired(&mut self, now: u64) {
        self.at = self.at.split_off(&now.saturating_add(1));
    }
}

// Direct market messages (bids to a customer, awards, the negotiation of the terms) are
// requests to one peer; one lost to a connection closed at the wrong moment cost a placement
// its auction or a deal its contract (a 37-process devnet on 2 cores lost an award and two
// negotiation messages so). A failed request is sent again, each time in a fresh envelope; a
// copy of a message that did arrive is refused by the market as a replay or as no longer
// fitting, which changes nothing. Bounded per message and in all, so a peer that makes this
// node send many messages cannot make it hold many retrying tasks.
/// Attempts per direct market message. Five, because under Shadow 300 providers bid on each
/// auction within milliseconds and a quarter of them found the customer's handshake slots
/// full: three attempts 0.5 and 1 s apart lost 1,091 of 5,980 bids.
const SEND_ATTEMPTS: u32 = 5;
/// Delay before the first retry, doubled each time (0.5, 1, 2, 4 s; each ±50 %, `retry::backoff`).
const SEND_RETRY_MS: u64 = 500;
/// Messages that may be retrying at once; past this, a message gets one attempt.
const MAX_RETRYING: usize = 256;

/// Starts the market task; subscribes to the given regions. A node with a ledger passes
/// `await_contracts`: its book then takes no work until the capacity of the contracts it still
/// runs is held, which the deal task's follower restores once the ledger is current
/// ([`holds`], THREATS C35).
pub async fn spawn(
    signer: KeySigner,
    config: MarketConfig,
    regions: Vec<String>,
    network: NetworkHandle,
    await_contracts: bool,
    cancel: CancellationToken,
) -> (MarketHandle, JoinHandle<()>) {
    // Register before anything else so no connection event is missed; region topics are
    // added as the task subscribes to them (`ensure_subscribed`).
    let events = network.inbox(Interest::new("market").requests(Kind::Market).connections());
    let (tx, rx) = mpsc::channel(256);
    let (fb_tx, fb_rx) = mpsc::channel(256);
    let log = Arc::new(Mutex::new(EventLog::default()));
    let (agreed, agreed_rx) = agreed::AgreedOutbox::channel();
    let state = if await_contracts {
        MarketState::awaiting_contracts(signer.clone(), config)
    } else {
        MarketState::new(signer.clone(), config)
    };
    let mut task = MarketTask {
        state,
        signer,
        network: network.clone(),
        subscribed: BTreeSet::new(),
        routes: events.topics(),
        timers: Timers::default(),
        log: log.clone(),
        feedback: fb_tx,
        agreed,
        seq: 0,
        regions: regions.clone(),
        snapshot_peers: BTreeSet::new(),
        retrying: retry::InFlight::default(),
    };
    for r in &regions {
        task.ensure_subscribed(&topic_for_region(r)).await;
    }
    // Peers connected before we listened count for the late-join snapshot too.
    if let Ok(peers) = network.peers().await {
        for p in peers {
            if let Ok(peer) = p.peer_id.parse() {
                task.on_network(NetworkEvent::Connected(peer)).await;
            }
        }
    }
    let handle = tokio::spawn(task.run(rx, fb_rx, events, cancel).in_current_span());
    let agreed = Arc::new(Mutex::new(Some(agreed_rx)));
    (MarketHandle { tx, log, agreed }, handle)
}

impl MarketTask {
    async fn ensure_subscribed(&mut self, topic: &str) {
        if !self.subscribed.contains(topic) {
            self.routes.add(topic);
        }
        if self.subscribed.insert(topic.to_string())
            && let Err(e) = self.network.subscribe_judged(topic).await
        {
            warn!(%topic, error = %e, "cannot subscribe to market topic");
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<MarketCommand>,
        mut feedback: mpsc::Receiver<(NodeId, MarketMessage)>,
        mut events: Inbox,
        cancel: CancellationToken,
    ) {
        loop {
            let next_timer = self.timers.next(now_ms());
            let sleep = async {
                match next_timer {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(MarketCommand::Input(input, reply)) => {
                        let effects = self.state.handle(now_ms(), *input);
                        self.execute(&effects).await;
                        let _ = reply.send(effects);
                    }
                    Some(MarketCommand::Query(job)) => job(&self.state),
                    #[cfg(feature = "test-utils")]
                    Some(MarketCommand::Byzantine(job)) => {
                        let effects = job(&mut self.state, now_ms());
                        self.execute(&effects).await;
                    }
                    None => break,
                },
                Some((from, msg)) = feedback.recv() => self.remote(from, msg).await,
                // Agreed terms waiting for room in the deal task's channel.
                _ = self.agreed.forward(), if self.agreed.has_pending() => {}
                ev = events.recv() => self.on_network(ev).await,
                _ = sleep => {
                    let now = now_ms();
                    self.timers.fired(now);
                    let effects = self.state.handle(now, Input::Tick);
                    self.execute(&effects).await;
                }
            }
        }
        debug!("market task stopped");
    }

    async fn remote(&mut self, from: NodeId, msg: MarketMessage) {
        let effects = self.state.handle(now_ms(), Input::Remote { from, msg });
        self.execute(&effects).await;
    }

    async fn on_network(&mut self, ev: NetworkEvent) {
        match ev {
            NetworkEvent::Connected(peer) if self.snapshot_peers.len() < SNAPSHOT_PEERS => {
                // Late join: ask the first peers we meet for what is open in our regions.
                if let Some(node) = agora_network::keys::node_id_of(&peer)
                    && self.snapshot_peers.insert(node)
                {
                    for region in self.regions.clone() {
                        let effects = self
                            .state
                            .handle(now_ms(), Input::RequestSnapshot { region, peer: node });
                        self.execute(&effects).await;
                    }
                }
            }
            // Other tasks judge their own topics (the ledger's).
            NetworkEvent::GossipToJudge {
                topic,
                envelope,
                ticket,
                ..
            } if self.subscribed.contains(&topic) => {
                // A market message travels on only if this node's book took it: a flood of
                // bids for unknown auctions, replays or refused messages stops at its first hop
                // and never fills the outbound queues this node's own bids share (#13 N7).
                let msg = match envelope.kind {
                    Kind::Market => {
                        MarketMessage::decode(&envelope.payload).map_err(|e| e.to_string())
                    }
                    other => Err(format!("a {other:?} message on a market topic")),
                };
                // An auction's id (a hash of its canonical bytes), computed once.
                let auction = match &msg {
                    Ok(MarketMessage::Auction(req)) => req.id().ok(),
                    _ => None,
                };
                match msg {
                    // An auction the book already holds is no news: not forwarded again (a
                    // peer re-sealing known auctions cannot make every node relay them).
                    Ok(MarketMessage::Auction(_))
                        if auction.is_some_and(|id| self.state.auction(&id).is_some()) =>
                    {
                        self.network.judge(ticket, GossipVerdict::Ignore).await;
                    }
                    Ok(msg) => {
                        let effects = self.state.handle(
                            now_ms(),
                            Input::Remote {
                                from: envelope.sender,
                                msg,
                            },
                        );
                        let refused = effects
                            .iter()
                            .any(|e| matches!(e, Effect::Rejected { from: Some(_), .. }));
                        let verdict = if refused {
                            GossipVerdict::Ignore
                        } else {
                            GossipVerdict::Accept
                        };
                        if let Some(id) = auction.filter(|_| !refused) {
                            // The time an auction reached this node: gossip time-to-all in the
                            // Shadow benchmark (`scripts/shadow.py`) is read from this line.
                            debug!(auction = %id, "auction entered the book from gossip");
                        }
                        self.network.judge(ticket, verdict).await;
                        self.execute(&effects).await;
                    }
                    Err(e) => {
                        self.network.judge(ticket, GossipVerdict::Reject).await;
                        self.record(
                            "rejected",
                            format!("from {}: {e}", envelope.sender.short()),
                            serde_json::Value::Null,
                        );
                    }
                }
            }
            NetworkEvent::Request { id, envelope, .. } if envelope.kind == Kind::Market => {
                // Acknowledge at once; answers travel as their own requests.
                self.seq += 1;
                let ack =
                    Envelope::seal(&self.signer, Kind::Market, now_ms(), self.seq, Vec::new());
                let _ = self.network.respond(id, &ack).await;
                match MarketMessage::decode(&envelope.payload) {
                    Ok(msg) => self.remote(envelope.sender, msg).await,
                    Err(e) => self.record(
                        "rejected",
                        format!("from {}: {e}", envelope.sender.short()),
                        serde_json::Value::Null,
                    ),
                }
            }
            _ => {}
        }
    }

    async fn execute(&mut self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Broadcast { topic, msg } => {
                    self.ensure_subscribed(topic).await;
                    match msg.encode() {
                        Ok(bytes) => {
                            if let Err(e) = self.network.broadcast(topic, Kind::Market, bytes).await
                            {
                                warn!(%topic, kind = msg.kind(), error = %e, "market broadcast failed");
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot encode market message"),
                    }
                }
                Effect::Send { to, msg } => self.send(*to, msg.clone()),
                Effect::ScheduleTimeout { at } => {
                    self.timers.insert(*at);
                }
                Effect::Agreed(agreement) => {
                    if !self.agreed.push(agreement.clone()) {
                        self.record(
                            "agreed-dropped",
                            format!(
                                "award {}: the deal task is gone or {MAX_PENDING_AGREED} agreed \
                                 deals wait for it",
                                agreement.terms.award
                            ),
                            serde_json::Value::Null,
                        );
                    }
                    self.record_effect(effect);
                }
                other => self.record_effect(other),
            }
        }
    }

    fn send(&mut self, to: NodeId, msg: MarketMessage) {
        if to == self.signer.node_id() {
            // Our own auction (customer and provider on one node): deliver locally.
            let fb = self.feedback.clone();
            let me = to;
            tokio::spawn(async move {
                let _ = fb.send((me, msg)).await;
            });
            return;
        }
        let Some(peer) = peer_id_of(&to) else {
            warn!(to = %to.short(), "cannot address peer");
            return;
        };
        let Ok(bytes) = msg.encode() else { return };
        // A failed request is sent again a few times, each in a fresh envelope.
        let slot = self.retrying.take(MAX_RETRYING);
        let attempts = if slot.is_some() { SEND_ATTEMPTS } else { 1 };
        let first_seq = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(u64::from(attempts));
        let (network, signer, log) = (self.network.clone(), self.signer.clone(), self.log.clone());
        let kind = msg.kind();
        tokio::spawn(
            async move {
                let _slot = slot;
                let sent = retry::with_retries(attempts, SEND_RETRY_MS, |n| {
                    let env = Envelope::seal(
                        &signer,
                        Kind::Market,
                        now_ms(),
                        first_seq.wrapping_add(u64::from(n)),
                        bytes.clone(),
                    );
                    let network = network.clone();
                    async move {
                        network.request(peer, &env).await.map(|_| ()).inspect_err(|e| {
                            debug!(to = %to.short(), kind, attempt = n, error = %e, "market message not delivered; retrying while attempts last");
                        })
                    }
                })
                .await;
                match sent {
                    Ok(n) if n > 0 => record_to(
                        &log,
                        "delivered-on-retry",
                        format!("{kind} to {} delivered on attempt {}", to.short(), n + 1),
                        serde_json::json!({ "to": to.to_string(), "message": kind, "attempt": n + 1 }),
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        warn!(to = %to.short(), kind, attempts, error = %e, "market message not delivered");
                        record_to(
                            &log,
                            "undelivered",
                            format!("{kind} to {} not delivered in {attempts} attempts: {e}", to.short()),
                            serde_json::json!({ "to": to.to_string(), "message": kind, "attempts": attempts }),
                        );
                    }
                }
            }
            .in_current_span(),
        );
    }

    fn record(&self, kind: &'static str, detail: String, data: serde_json::Value) {
        record_to(&self.log, kind, detail, data);
    }

    fn record_effect(&self, effect: &Effect) {
        use serde_json::json;
        let (kind, detail, data) = match effect {
            Effect::BidReceived {
                auction,
                bid,
                provider,
                price,
            } => (
                "bid-received",
                format!(
                    "auction {} bid {} from {} at {price}",
                    auction.short(),
                    bid.short(),
                    provider.short()
                ),
                json!({"auction": auction.to_string(), "bid": bid.to_string(), "provider": provider.to_string(), "price": price}),
            ),
            Effect::AuctionClosed { auction, winner } => (
                "auction-closed",
                match winner {
                    Some(w) => format!(
                        "auction {} closed; best bid {} at {}",
                        auction.short(),
                        w.bid.short(),
                        w.price
                    ),
                    None => format!("auction {} closed without valid bids", auction.short()),
                },
                json!({"auction": auction.to_string(), "winner": winner.map(|w| w.bid.to_string()), "price": winner.map(|w| w.price)}),
            ),
            Effect::Awarded {
                award,
                auction,
                customer,
                provider,
                price,
            } => (
                "awarded",
                format!(
                    "award {} : {} -> {} at {price}",
                    award.short(),
                    customer.short(),
                    provider.short()
                ),
                json!({"award": award.to_string(), "auction": auction.map(|a| a.to_string()), "customer": customer.to_string(), "provider": provider.to_string(), "price": price}),
            ),
            Effect::Proposed(t) => (
                "proposed",
                format!("counter-offer on award {} at {}", t.award.short(), t.price),
                serde_json::to_value(t).unwrap_or_default(),
            ),
            Effect::Agreed(agora_market::Agreement { terms: t, .. }) => (
                "agreed",
                format!(
                    "deal on award {}: {} pays {} {} tokens",
                    t.award.short(),
                    t.customer.short(),
                    t.provider.short(),
                    t.price
                ),
                serde_json::to_value(t).unwrap_or_default(),
            ),
            Effect::NegotiationFailed { award, by } => (
                "negotiation-failed",
                format!(
                    "award {} ended without a deal{}",
                    award.short(),
                    by.map(|b| format!(" by {}", b.short())).unwrap_or_default()
                ),
                json!({"award": award.to_string(), "by": by.map(|b| b.to_string())}),
            ),
            Effect::Rejected { from, error } => (
                "rejected",
                format!(
                    "{}: {error}",
                    from.map(|f| f.short()).unwrap_or_else(|| "local".into())
                ),
                json!({"from": from.map(|f| f.to_string()), "error": error.to_string()}),
            ),
            other => ("other", format!("{other:?}"), serde_json::Value::Null),
        };
        self.record(kind, detail, data);
    }
}

#[cfg(test)]
mod timer_tests {
    use super::*;

    #[test]
    fn wake_ups_are_rounded_bounded_and_split_off_as_they_pass() {
        let mut t = Timers::default();
        assert_eq!(t.next(0), None);
        t.insert(1_001);
        t.insert(1_002);
        t.insert(1_049);
        assert_eq!(t.at.len(), 1, "one wake-up per granule");
        assert_eq!(t.next(0), Some(1_050));
        t.fired(1_050);
        assert_eq!(t.next(1_050), None);
        // Past the bound the latest go, and the task wakes every second as well.
        for n in 0..MAX_TIMERS as u64 + 100 {
            t.insert(10_000 + n * TIMER_GRANULARITY_MS);
        }
        assert_eq!(t.at.len(), MAX_TIMERS);
        assert!(t.overflowed);
        assert_eq!(t.next(5_000), Some(6_000));
        assert_eq!(t.next(9_990), Some(10_000));
        // An earlier deadline still gets in, in place of the latest.
        t.insert(9_000);
        assert_eq!(t.at.len(), MAX_TIMERS);
        assert_eq!(t.at.first(), Some(&9_000));
        t.fired(20_000);
        assert!(t.at.first().is_some_and(|f| *f > 20_000));
    }
}
