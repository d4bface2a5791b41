//! The swarm task: owns the `Swarm`, turns commands into swarm calls and swarm events into
//! [`NetworkEvent`]s. It moves bytes and ids; validation is the codec's, business logic lives in
//! the pure crates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agora_market::KeySigner;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns, ping};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::behaviour::{AgoraBehaviour, AgoraBehaviourEvent, build_swarm, topic_score_params};
use super::presence::PresenceTracker;
use super::quota::{RateLimiter, StrangerBudget, loud};
use super::routes::{RequestRefused, RouteTable};
use super::{
    Command, GossipTicket, GossipVerdict, MIN_INBOUND_FRAME_BYTES, NetworkConfig, NetworkError,
    NetworkEvent, NetworkHandle, NetworkStats, PeerInfo, Reply, SharedCounters,
};
use crate::keys::{NodeKey, node_id_of};
use agora_storage::wire::FrameBudget;
use agora_wire::codec::{
    CodecError, Envelope, GOSSIP_MAX_SKEW_MS, MAX_GOSSIP_BYTES, MAX_RPC_BYTES,
};
use agora_wire::now_ms;

mod discovery;
mod liveness;
mod nat;
mod providers;

/// A peer's agent string as kept and shown: at most [`MAX_AGENT_BYTES`], cut at a character
/// boundary. (`String::truncate` at a fixed byte panicked inside a multi-byte character: one
/// identify message of 127 ASCII bytes and an `é` killed the swarm's task, found by a read-only
/// audit in session 49.)
pub(crate) fn agent_of(agent: &str) -> String {
    agora_wire::clip(agent, MAX_AGENT_BYTES).into_owned()
}

/// The listen addresses of an identify message that reach the metrics: at most as many as the
/// address book keeps of a peer.
pub(crate) fn metered_listen_addrs(mut addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addrs.truncate(MAX_METERED_ADDRS);
    addrs
}

/// Listen addresses of one identify message recorded in the metrics.
pub(crate) const MAX_METERED_ADDRS: usize = discovery::MAX_IDENTIFY_ADDRS;

/// Bytes of a peer's agent string kept.
const MAX_AGENT_BYTES: usize = 128;

/// Keys the DHT's provider store holds: others' and this node's own.
pub(crate) const PROVIDER_STORE_KEYS: usize = providers::MAX_REMOTE_KEYS + providers::OWN_KEYS;
#[cfg(test)]
pub(crate) use providers::MAX_KEYS_PER_PROVIDER;

/// A peer not watched is declared unreachable after this many idle ping intervals of silence.
const IDLE_PINGS_BEFORE_DOWN: u32 = 4;

/// Most inbound requests waiting for an answer, from everyone together; more are refused.
const MAX_PENDING_INBOUND: usize = 1024;
/// Most inbound requests one peer may have waiting for an answer; more are refused.
const MAX_PENDING_PER_PEER: usize = 32;
/// Bytes of answers one peer may have handed to the swarm and not yet read (two of the
/// largest answers), and all peers together; an answer beyond them is withheld (THREATS N13).
const RESPONSE_BYTES_PER_PEER: usize = 2 * MAX_RPC_BYTES;
const RESPONSE_BYTES_TOTAL: usize = 64 * 1024 * 1024;
/// Inbound requests per second one peer may send (sustained), and the burst it may send at once.
const RPC_RATE_PER_SECOND: u32 = 50;
const RPC_BURST: u32 = 200;
/// Gossip bytes per second one peer may deliver (sustained), and at once. Honest peers stay far
/// below: votes are small, blocks are at most 128 KiB a height, transaction batches at most
/// 128 KiB; a transaction flood at this rate is a few thousand transactions a second, which the
/// ledger task refuses without falling behind.
const GOSSIP_BYTES_PER_SECOND: u32 = 1024 * 1024;
const GOSSIP_BYTES_BURST: u32 = 4 * 1024 * 1024;
/// Gossip bytes per second, and at once, that all strangers together may deliver (peers the
/// application has not vouched for; `quota::StrangerBudget`): what one peer may. Their
/// requests together get one peer's request rate too.
const STRANGER_GOSSIP_BYTES_PER_SECOND: u32 = GOSSIP_BYTES_PER_SECOND;
const STRANGER_GOSSIP_BYTES_BURST: u32 = GOSSIP_BYTES_BURST;
/// Requests at least this large have their envelope decoded and signature checked on a blocking
/// thread beside the swarm loop (a 4 MiB envelope costs milliseconds the loop would otherwise
/// spend away from every other peer's traffic); smaller ones are cheaper to check in place.
const VERIFY_ASIDE_BYTES: usize = 64 * 1024;
/// Most requests being checked beside the loop at once; past this they are checked in the loop
/// (backpressure: the loop slows down rather than queueing without bound). Gossip messages of at
/// least [`VERIFY_ASIDE_BYTES`] have the same bound of their own.
const MAX_VERIFYING_ASIDE: usize = 8;
/// Most peers with a request-rate bucket (one per connected peer; bounded like a connection).
const MAX_RATE_PEERS: usize = 4096;
/// Most peers whose agent string is remembered (connected peers only).
const MAX_AGENTS: usize = 4096;
const REDIAL_INTERVAL: Duration = Duration::from_secs(3);
/// How often the discovery policy is asked whether a walk is due (`discovery::Pacer`) and
/// spare connections are trimmed (`discovery::to_trim`).
const DISCOVERY_TICK: Duration = Duration::from_secs(1);

struct EventLoop {
    swarm: Swarm<AgoraBehaviour>,
    commands: mpsc::Receiver<Command>,
    routes: Arc<RouteTable>,
    signer: KeySigner,
    presence: PresenceTracker,
    liveness: liveness::Liveness,
    cfg: NetworkConfig,
    pending_requests: HashMap<OutboundRequestId, Reply<Result<Envelope, NetworkError>>>,
    /// Inbound requests waiting for the application's answer, and how many per peer.
    inbound: BTreeMap<u64, PendingInbound>,
    pending_per_peer: HashMap<PeerId, usize>,
    rpc_rates: RateLimiter,
    /// Answers handed to the swarm and not yet written (THREATS N13).
    responses: crate::quota::ResponseBudget<PeerId, request_response::InboundRequestId>,
    /// Gossip bytes each peer may deliver to us (the peer that forwarded a message pays).
    gossip_rates: RateLimiter,
    strangers: StrangerBudget,
    /// Other peers' provider records stored here (THREATS N19).
    providers: providers::ProviderAdmission,
    /// The node's stream quotas, told when a peer's last connection closes (THREATS N14).
    quotas: crate::quota::Quotas,
    next_inbound: u64,
    listen_addrs: Vec<Multiaddr>,
    peer_addrs: HashMap<PeerId, Multiaddr>,
    agents: HashMap<PeerId, String>,
    rtts: HashMap<PeerId, Duration>,
    stats: NetworkStats,
    seq: u64,
    /// When to walk the DHT for peers next, and the walk in flight.
    pacer: discovery::Pacer,
    walk: Option<kad::QueryId>,
    provider_queries: HashMap<kad::QueryId, ProviderQuery>,
    /// Opens heartbeat streams to watched peers.
    streams: libp2p_stream::Control,
    /// Answered heartbeats, from the beat tasks.
    alive_tx: mpsc::Sender<(PeerId, Option<Duration>)>,
    alive_rx: mpsc::Receiver<(PeerId, Option<Duration>)>,
    /// Inbound requests whose envelope is being checked beside the loop (counted as pending).
    verifying: HashMap<u64, PendingInbound>,
    /// Their verdicts, from the blocking threads.
    verified_tx: mpsc::Sender<(u64, Result<Envelope, CodecError>)>,
    verified_rx: mpsc::Receiver<(u64, Result<Envelope, CodecError>)>,
    /// Large gossip messages whose envelope is being checked beside the loop (gossipsub holds
    /// them, unforwarded, until `on_gossip_checked` reports the verdict).
    gossip_verifying: usize,
    gossip_verified_tx: mpsc::Sender<(GossipAside, Result<Envelope, CodecError>)>,
    gossip_verified_rx: mpsc::Receiver<(GossipAside, Result<Envelope, CodecError>)>,
    /// Stops the network's background tasks (heartbeat server and beats).
    cancel: CancellationToken,
    /// Refusal counters of tasks outside the loop (stream quotas).
    counters: Arc<SharedCounters>,
    /// Refusals per kind so far, for quiet logging (see `quota::loud`).
    refusals: HashMap<&'static str, u64>,
    /// Topics whose messages the application judges before they are forwarded.
    judged: HashSet<gossipsub::TopicHash>,
    /// libp2p's own metrics (swarm, gossipsub, identify, kad, ping), when the node serves
    /// `/metrics`.
    p2p_metrics: Option<libp2p::metrics::Metrics>,
    /// AutoNAT verdict, relay reservations, relayed connections.
    nat: nat::NatState,
}

/// A gossip message being checked beside the loop: what its verdict is reported against.
struct GossipAside {
    id: gossipsub::MessageId,
    source: PeerId,
    topic: gossipsub::TopicHash,
}

/// An inbound request waiting for the application's answer.
struct PendingInbound {
    peer: PeerId,
    channel: ResponseChannel<Vec<u8>>,
    /// libp2p's id of the request: its `ResponseSent` / `InboundFailure` name it.
    request_id: request_response::InboundRequestId,
}

/// A Kademlia provider lookup waiting for its last step.
struct ProviderQuery {
    found: std::collections::HashSet<PeerId>,
    reply: Reply<Result<Vec<PeerId>, NetworkError>>,
}

/// Builds the swarm, starts listening and dialing, and spawns the task that owns it.
pub async fn spawn(
    key: &NodeKey,
    cfg: NetworkConfig,
    cancel: CancellationToken,
) -> Result<(NetworkHandle, JoinHandle<()>), NetworkError> {
    spawn_with_metrics(key, cfg, cancel, None).await
}

/// libp2p's own metrics, registered under `libp2p_` in the node's Prometheus registry.
pub fn p2p_metrics(registry: &mut libp2p::metrics::Registry) -> libp2p::metrics::Metrics {
    libp2p::metrics::Metrics::new(registry)
}

/// [`spawn`], recording swarm, gossipsub, identify, Kademlia and ping events into
/// `p2p_metrics` (see [`p2p_metrics`]).
pub async fn spawn_with_metrics(
    key: &NodeKey,
    cfg: NetworkConfig,
    cancel: CancellationToken,
    p2p_metrics: Option<libp2p::metrics::Metrics>,
) -> Result<(NetworkHandle, JoinHandle<()>), NetworkError> {
    let strangers = StrangerBudget::new(
        STRANGER_GOSSIP_BYTES_PER_SECOND,
        STRANGER_GOSSIP_BYTES_BURST,
        RPC_RATE_PER_SECOND,
        RPC_BURST,
    )
    .trust(cfg.trusted_peers.iter().copied())
    .committee(cfg.committee.iter().copied());
    // One budget for every frame the node is reading from peers: requests and responses here,
    // bitswap messages through `NetworkHandle::frame_budget` (THREATS N16).
    let frames = Arc::new(FrameBudget::new(
        cfg.inbound_frame_bytes.max(MIN_INBOUND_FRAME_BYTES),
    ));
    let mut swarm = build_swarm(
        key.libp2p_keypair(),
        &cfg,
        strangers.classes(),
        frames.clone(),
    )?;
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetworkError::Listen {
                addr: addr.clone(),
                reason: transport_reason(&e),
            })?;
    }
    for addr in &cfg.external {
        swarm.add_external_address(addr.clone());
    }
    for addr in &cfg.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    let streams = swarm.behaviour().stream.new_control();
    let cancel = cancel.child_token();
    let counters = Arc::new(SharedCounters::new(frames));
    // Strangers together hold at most half of the inbound streams (THREATS N7), of this
    // protocol and of bitswap (`NetworkHandle::bitswap_quota`).
    let heartbeat_quota = crate::StreamQuota::new(
        "heartbeat",
        super::heartbeat::MAX_INBOUND_PER_PEER,
        super::heartbeat::MAX_INBOUND,
        counters.heartbeat_refused.clone(),
    )
    .with_strangers(strangers.classes(), super::heartbeat::MAX_INBOUND / 2);
    let quotas = crate::quota::Quotas::default();
    let heartbeat_quota = quotas.register(heartbeat_quota);
    super::heartbeat::serve(streams.clone(), heartbeat_quota, cancel.clone());
    let (alive_tx, alive_rx) = mpsc::channel(1024);
    let (verified_tx, verified_rx) = mpsc::channel(MAX_VERIFYING_ASIDE);
    let (gossip_verified_tx, gossip_verified_rx) = mpsc::channel(MAX_VERIFYING_ASIDE);
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let routes = Arc::new(RouteTable::default());
    let handle = NetworkHandle {
        commands: cmd_tx,
        routes: routes.clone(),
        local: key.node_id(),
        peer_id: *swarm.local_peer_id(),
        streams: streams.clone(),
        counters: counters.clone(),
        strangers: strangers.classes(),
        quotas: quotas.clone(),
    };
    let stats = NetworkStats {
        trusted_peers: strangers.trusted() as u64,
        ..NetworkStats::default()
    };
    let event_loop = EventLoop {
        swarm,
        commands: cmd_rx,
        routes,
        signer: key.signer().clone(),
        presence: PresenceTracker::new(
            cfg.presence_timeout,
            cfg.idle_ping_interval * IDLE_PINGS_BEFORE_DOWN,
        )
        .with_interval(cfg.presence_interval),
        liveness: liveness::Liveness::default(),
        cfg,
        pending_requests: HashMap::new(),
        inbound: BTreeMap::new(),
        pending_per_peer: HashMap::new(),
        rpc_rates: RateLimiter::new(RPC_RATE_PER_SECOND, RPC_BURST, MAX_RATE_PEERS),
        responses: crate::quota::ResponseBudget::new(RESPONSE_BYTES_PER_PEER, RESPONSE_BYTES_TOTAL),
        gossip_rates: RateLimiter::new(GOSSIP_BYTES_PER_SECOND, GOSSIP_BYTES_BURST, MAX_RATE_PEERS),
        strangers,
        providers: providers::ProviderAdmission::default(),
        quotas,
        next_inbound: 0,
        listen_addrs: Vec::new(),
        peer_addrs: HashMap::new(),
        agents: HashMap::new(),
        rtts: HashMap::new(),
        stats,
        seq: 0,
        pacer: discovery::Pacer::new(std::time::Instant::now()),
        walk: None,
        provider_queries: HashMap::new(),
        streams,
        alive_tx,
        alive_rx,
        verifying: HashMap::new(),
        verified_tx,
        verified_rx,
        gossip_verifying: 0,
        gossip_verified_tx,
        gossip_verified_rx,
        cancel: cancel.clone(),
        counters,
        refusals: HashMap::new(),
        judged: HashSet::new(),
        p2p_metrics,
        nat: nat::NatState::default(),
    };
    let task = tokio::spawn(event_loop.run(cancel).in_current_span());
    Ok((handle, task))
}

fn transport_reason<T: std::fmt::Debug>(e: &libp2p::TransportError<T>) -> String {
    match e {
        libp2p::TransportError::MultiaddrNotSupported(a) => {
            format!(
                "address {a} is not supported (use /ip4/.../tcp/PORT or /ip4/.../udp/PORT/quic-v1)"
            )
        }
        libp2p::TransportError::Other(inner) => format!("{inner:?}"),
    }
}

impl EventLoop {
    async fn run(mut self, cancel: CancellationToken) {
        let mut presence_timer = tokio::time::interval(self.cfg.presence_interval);
        presence_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial_timer = tokio::time::interval(REDIAL_INTERVAL);
        let mut discovery_timer = tokio::time::interval(DISCOVERY_TICK);
        discovery_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((peer, rtt)) = self.alive_rx.recv() => self.on_ping_ok(peer, rtt),
                Some((id, verdict)) = self.verified_rx.recv() => self.on_verified(id, verdict),
                Some((g, verdict)) = self.gossip_verified_rx.recv() => {
                    self.gossip_verifying = self.gossip_verifying.saturating_sub(1);
                    self.on_gossip_checked(g.source, g.id, g.topic, verdict);
                }
                _ = presence_timer.tick() => self.on_presence_tick(),
                _ = redial_timer.tick() => self.redial(),
                _ = discovery_timer.tick() => {
                    self.trim_connections();
                    self.discover();
                }
            }
        }
        self.cancel.cancel();
        debug!("network loop stopped");
    }

    /// Hands a presence or connection change to every task that registered for them (never
    /// lost; see `routes`).
    fn emit(&self, event: NetworkEvent) {
        self.routes.peer_change(event);
    }

    /// Redials bootstrap peers while we have fewer than `target_peers` connections (spare
    /// connections above it are trimmed on the discovery tick).
    fn redial(&mut self) {
        self.expire_inbound();
        self.reserve_relays();
        if !self.below_target() {
            return;
        }
        for addr in self.cfg.bootstrap.clone() {
            let known = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            let connected = known.is_some_and(|p| self.swarm.is_connected(&p));
            if !connected {
                let _ = self.swarm.dial(addr);
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe(topic, reply) => {
                let t = IdentTopic::new(topic.clone());
                let gossip = &mut self.swarm.behaviour_mut().gossipsub;
                let res = gossip
                    .subscribe(&t)
                    .map(|_| ())
                    .map_err(|e| NetworkError::Publish {
                        topic,
                        reason: e.to_string(),
                    });
                let _ = gossip.set_topic_params(t, topic_score_params());
                let _ = reply.send(res);
            }
            Command::Publish(topic, data, reply) => {
                let res = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic.clone()), data)
                    .map(|_| ())
                    .map_err(|e| NetworkError::Publish {
                        topic,
                        reason: e.to_string(),
                    });
                if res.is_ok() {
                    self.stats.gossip_published += 1;
                }
                let _ = reply.send(res);
            }
            Command::SubscribeJudged(topic, reply) => {
                self.judged.insert(IdentTopic::new(topic.clone()).hash());
                self.on_command(Command::Subscribe(topic, reply));
            }
            Command::Vouch(peers) => {
                self.strangers.vouch(peers);
                self.stats.vouched_peers = self.strangers.vouched() as u64;
            }
            Command::Judge(ticket, verdict) => {
                let acceptance = match verdict {
                    GossipVerdict::Accept => MessageAcceptance::Accept,
                    GossipVerdict::Ignore => MessageAcceptance::Ignore,
                    GossipVerdict::Reject => MessageAcceptance::Reject,
                };
                // False when the message already left the cache (judged too late): nothing to do.
                let known = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&ticket.id, &ticket.source, acceptance);
                if known {
                    match verdict {
                        GossipVerdict::Accept => {}
                        GossipVerdict::Ignore => self.stats.gossip_ignored += 1,
                        GossipVerdict::Reject => self.stats.gossip_rejected += 1,
                    }
                }
            }
            Command::Broadcast(topic, kind, payload, reply) => {
                self.seq += 1;
                let env = Envelope::seal(&self.signer, kind, now_ms(), self.seq, payload);
                self.on_command(Command::Publish(topic, env.to_bytes(), reply));
            }
            Command::Request(peer, data, reply) => {
                let id = self.swarm.behaviour_mut().rpc.send_request(&peer, data);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond(id, data, reply) => {
                let res = match self.take_inbound(id) {
                    Some(p) if !self.responses.take(p.peer, p.request_id, data.len()) => {
                        // Dropping the channel fails the request at once.
                        self.stats.rpc_responses_withheld += 1;
                        if self.refused("rpc responses withheld") {
                            warn!(peer = %p.peer, bytes = data.len(), waiting = self.responses.in_flight(), "answer withheld: too many answer bytes wait to be written to this peer or to all");
                        }
                        Err(NetworkError::Publish {
                            topic: "rpc".into(),
                            reason: format!(
                                "request {id}: too many answer bytes already wait to be written"
                            ),
                        })
                    }
                    Some(p) => {
                        let request_id = p.request_id;
                        let sent = self
                            .swarm
                            .behaviour_mut()
                            .rpc
                            .send_response(p.channel, data);
                        if sent.is_err() {
                            self.responses.release(&request_id);
                        }
                        sent.map_err(|_| NetworkError::Publish {
                            topic: "rpc".into(),
                            reason: format!("request {id}: the peer stopped waiting"),
                        })
                    }
                    None => Err(NetworkError::Publish {
                        topic: "rpc".into(),
                        reason: format!("request {id} is unknown or already answered"),
                    }),
                };
                let _ = reply.send(res);
            }
            Command::Dial(addr, reply) => {
                let opts = match crate::peer_only(&addr) {
                    // A peer id alone: the behaviours answer with the addresses they know.
                    Some(peer) => libp2p::swarm::dial_opts::DialOpts::peer_id(peer).build(),
                    None => addr.clone().into(),
                };
                let res = self.swarm.dial(opts).map_err(|e| NetworkError::Dial {
                    addr,
                    reason: e.to_string(),
                });
                let _ = reply.send(res);
            }
            Command::AddExternal(addr, reply) => {
                info!(%addr, "external address added");
                self.swarm.add_external_address(addr);
                let _ = reply.send(());
            }
            Command::Disconnect(peer, reply) => {
                let _ = reply.send(self.swarm.disconnect_peer_id(peer).is_ok());
            }
            Command::Peers(reply) => {
                let mut peers: Vec<PeerInfo> = self
                    .swarm
                    .connected_peers()
                    .map(|p| PeerInfo {
                        direct: self.nat.paths(p).0,
                        relayed: self.nat.paths(p).1,
                        peer_id: p.to_string(),
                        node_id: node_id_of(p).map(|n| n.to_string()),
                        addr: self
                            .peer_addrs
                            .get(p)
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        agent: self.agents.get(p).cloned(),
                        rtt_ms: self.rtts.get(p).map(|d| agora_wire::duration_ms(*d)),
                    })
                    .collect();
                peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(peers);
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::Presence(reply) => {
                let _ = reply.send(self.presence.snapshot());
            }
            Command::Watch(node, reply) => {
                let _ = reply.send(self.watch(node));
            }
            Command::Unwatch(node, reply) => {
                self.unwatch(node);
                let _ = reply.send(());
            }
            Command::Stats(reply) => {
                let mut stats = self.stats.clone();
                self.counters.fill(&mut stats);
                self.routes.fill(&mut stats);
                self.nat_fill(&mut stats);
                stats.peers_evicted += self.presence.evicted();
                stats.addresses_struck = self.swarm.behaviour().book.struck();
                let _ = reply.send(stats);
            }
            Command::PeerScore(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::StartProviding(key, reply) => {
                let res = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(kad::RecordKey::new(&key))
                    .map(|_| ())
                    .map_err(|e| NetworkError::Publish {
                        topic: "kad provider record".into(),
                        reason: e.to_string(),
                    });
                let _ = reply.send(res);
            }
            Command::StopProviding(key, reply) => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .stop_providing(&kad::RecordKey::new(&key));
                let _ = reply.send(());
            }
            Command::GetProviders(key, reply) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let id = kad.get_providers(kad::RecordKey::new(&key));
                self.provider_queries.insert(
                    id,
                    ProviderQuery {
                        found: Default::default(),
                        reply,
                    },
                );
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<AgoraBehaviourEvent>) {
        if let Some(m) = &self.p2p_metrics {
            use libp2p::metrics::Recorder;
            m.record(&event);
            match &event {
                SwarmEvent::Behaviour(AgoraBehaviourEvent::Gossipsub(e)) => m.record(e),
                // The peer's listen addresses become label values (their protocol stacks): only
                // the few this node keeps are recorded, so a stranger announcing hundreds of
                // made-up stacks adds no series (found by a read-only audit in session 49).
                SwarmEvent::Behaviour(AgoraBehaviourEvent::Identify(
                    identify::Event::Received {
                        connection_id,
                        peer_id,
                        info,
                    },
                )) => {
                    let mut info = info.clone();
                    info.listen_addrs = metered_listen_addrs(info.listen_addrs);
                    m.record(&identify::Event::Received {
                        connection_id: *connection_id,
                        peer_id: *peer_id,
                        info,
                    })
                }
                SwarmEvent::Behaviour(AgoraBehaviourEvent::Identify(e)) => m.record(e),
                SwarmEvent::Behaviour(AgoraBehaviourEvent::Kad(e)) => m.record(e),
                SwarmEvent::Behaviour(AgoraBehaviourEvent::Ping(e)) => m.record(e),
                SwarmEvent::Behaviour(AgoraBehaviourEvent::Dcutr(e)) => m.record(e),
                SwarmEvent::Behaviour(AgoraBehaviourEvent::RelayServer(e)) => m.record(e),
                _ => {}
            }
        }
        match &event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.nat_connection_opened(*peer_id, *connection_id, nat::path_addr(endpoint));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => self.nat_connection_closed(*peer_id, *connection_id),
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.nat_listener_closed(*listener_id)
            }
            _ => {}
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } if num_established.get() == 1 => {
                debug!(peer = %peer_id, "connected");
                self.peer_addrs
                    .insert(peer_id, nat::path_addr(&endpoint).clone());
                self.emit(NetworkEvent::Connected(peer_id));
                self.on_peer_connected(peer_id, &endpoint);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                debug!(peer = %peer_id, "disconnected");
                self.peer_addrs.remove(&peer_id);
                self.rtts.remove(&peer_id);
                self.agents.remove(&peer_id);
                let now = std::time::Instant::now();
                self.rpc_rates.forget(&peer_id, now);
                self.gossip_rates.forget(&peer_id, now);
                self.quotas.peer_left(&peer_id);
                self.emit(NetworkEvent::Disconnected(peer_id));
                self.on_peer_disconnected(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let libp2p::swarm::DialError::WrongPeerId { address, .. } = &error {
                    // The address book struck it; the DHT's table must not offer it again.
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    kad.remove_address(&peer, address);
                    if let Some(bare) = crate::address_book::without_p2p(address) {
                        kad.remove_address(&peer, &bare);
                    }
                }
                self.on_dial_failed(peer, &error)
            }
            SwarmEvent::IncomingConnectionError {
                peer_id,
                send_back_addr,
                error: libp2p::swarm::ListenError::Denied { cause },
                ..
            } => {
                let peer = peer_id.map(|p| p.to_string()).unwrap_or_default();
                if let Some(why) = cause.downcast_ref::<crate::relayed_inbound::Refused>() {
                    self.stats.relayed_inbound_refused += 1;
                    if self.refused("relayed connection") {
                        warn!(%peer, %why, "relayed inbound connection refused");
                    } else {
                        debug!(%peer, %why, "relayed inbound connection refused");
                    }
                } else {
                    self.stats.connections_refused += 1;
                    if self.refused("connection") {
                        warn!(%peer, addr = %send_back_addr, %cause, "incoming connection refused: connection limit");
                    } else {
                        debug!(%peer, addr = %send_back_addr, %cause, "incoming connection refused");
                    }
                }
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    /// Gives the routing table `peer`'s new identify addresses, then drops every address it
    /// holds for `peer` that the address book no longer does: Kademlia's list per peer only
    /// grows, so a stranger pushing identify updates of fresh addresses made it grow without
    /// bound — each insert scans the list inside this loop, and the list is handed to whoever
    /// asks and dialled on a redial (found by a read-only audit in session 49). Returns how many
    /// it dropped.
    fn kad_addrs_follow_the_book(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> usize {
        // The address this node is connected to the peer at stays too: a peer announcing eight
        // unusable addresses pushes the one that works out of the book (found by the review).
        let connected = self.peer_addrs.get(&peer).cloned();
        let behaviour = self.swarm.behaviour_mut();
        for addr in addrs {
            behaviour.kad.add_address(&peer, addr);
        }
        let keep: Vec<Multiaddr> = behaviour
            .book
            .get(&peer)
            .iter()
            .chain(connected.as_ref())
            .filter_map(|a| a.clone().with_p2p(peer).ok())
            .collect();
        let key = libp2p::kad::KBucketKey::from(peer);
        let held: Vec<Multiaddr> = behaviour
            .kad
            .kbucket(peer)
            .and_then(|bucket| {
                bucket
                    .iter()
                    .find(|e| *e.node.key == key)
                    .map(|e| e.node.value.iter().cloned().collect())
            })
            .unwrap_or_default();
        // Only while one the book holds stays: removing the last address drops the peer from
        // the table.
        if !held.iter().any(|a| keep.contains(a)) {
            return 0;
        }
        let stale: Vec<Multiaddr> = held.into_iter().filter(|a| !keep.contains(a)).collect();
        for a in &stale {
            behaviour.kad.remove_address(&peer, a);
        }
        stale.len()
    }

    fn on_behaviour_event(&mut self, event: AgoraBehaviourEvent) {
        match event {
            AgoraBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            AgoraBehaviourEvent::Rpc(ev) => self.on_rpc(ev),
            AgoraBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                // Only addresses others can use go to our store and the routing table (which
                // hands them to everyone who asks), at most a few per peer.
                let via_loopback = self
                    .peer_addrs
                    .get(&peer_id)
                    .is_some_and(discovery::is_loopback);
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .filter(|a| discovery::announce_worthy(a, via_loopback))
                    .take(discovery::MAX_IDENTIFY_ADDRS)
                    .collect();
                self.on_peer_addrs(peer_id, &addrs);
                self.nat_on_identify(peer_id, &info.protocols);
                let pruned = self.kad_addrs_follow_the_book(peer_id, addrs);
                self.stats.kad_addrs_pruned += pruned as u64;
                if self.swarm.is_connected(&peer_id)
                    && (self.agents.len() < MAX_AGENTS || self.agents.contains_key(&peer_id))
                {
                    self.agents.insert(peer_id, agent_of(&info.agent_version));
                }
            }
            AgoraBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                self.rtts.insert(peer, rtt);
                self.on_ping_ok(peer, Some(rtt));
            }
            AgoraBehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            AgoraBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            }) => self.on_kad_query(id, result, step.last),
            AgoraBehaviourEvent::Autonat(e) => self.on_autonat(e),
            AgoraBehaviourEvent::RelayClient(e) => self.on_relay_client(e),
            AgoraBehaviourEvent::RelayServer(e) => self.on_relay_server(e),
            AgoraBehaviourEvent::Dcutr(e) => self.on_dcutr(e),
            AgoraBehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. })
                if !self.swarm.is_connected(&peer) && self.below_target() =>
            {
                let _ = self.swarm.dial(peer);
            }
            AgoraBehaviourEvent::Kad(kad::Event::InboundRequest { request }) => {
                self.on_kad_inbound(request)
            }
            _ => {}
        }
    }

    /// A record another peer asks this node to store (`StoreInserts::FilterBoth`: Kademlia
    /// stores nothing by itself). Values (`PUT_VALUE`) are refused: Agora reads none. Provider
    /// records are admitted by [`providers::ProviderAdmission`] (THREATS N19).
    fn on_kad_inbound(&mut self, request: kad::InboundRequest) {
        use kad::store::RecordStore as _;
        match request {
            kad::InboundRequest::PutRecord {
                source,
                record: Some(_),
                ..
            } => {
                self.stats.kad_records_refused += 1;
                debug!(peer = %source, "DHT value refused: this node stores none");
            }
            kad::InboundRequest::AddProvider {
                record: Some(mut record),
            } => {
                record.addresses.truncate(providers::MAX_RECORD_ADDRS);
                let stranger = self.strangers.is_stranger(&record.provider);
                let mut expired = Vec::new();
                let verdict = self.providers.admit(
                    record.provider,
                    &record.key,
                    record.expires,
                    stranger,
                    std::time::Instant::now(),
                    &mut expired,
                );
                let kad = &mut self.swarm.behaviour_mut().kad;
                for (key, provider) in expired {
                    kad.store_mut().remove_provider(&key, &provider);
                }
                if verdict == providers::Verdict::Store {
                    let (provider, key) = (record.provider, record.key.clone());
                    if let Err(e) = kad.store_mut().add_provider(record) {
                        self.providers.forget(provider, &key);
                        self.stats.kad_providers_refused += 1;
                        debug!(error = ?e, "provider record not stored");
                    }
                } else {
                    self.stats.kad_providers_refused += 1;
                    if self.refused("provider record") {
                        warn!(peer = %record.provider, ?verdict, admitted = self.providers.len(), "DHT provider record refused");
                    }
                }
            }
            _ => {}
        }
    }

    fn on_kad_query(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        if self.walk == Some(id) {
            match result {
                kad::QueryResult::GetClosestPeers(Ok(ok)) => self.on_walk_done(ok.peers),
                kad::QueryResult::GetClosestPeers(Err(kad::GetClosestPeersError::Timeout {
                    peers,
                    ..
                })) => self.on_walk_done(peers),
                _ if last => self.walk = None,
                _ => {}
            }
            return;
        }
        let kad::QueryResult::GetProviders(res) = result else {
            return;
        };
        let Some(query) = self.provider_queries.get_mut(&id) else {
            return;
        };
        let done = match res {
            Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                query.found.extend(providers);
                last
            }
            Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => true,
            // A timeout still returns what was found so far.
            Err(_) => true,
        };
        if done && let Some(query) = self.provider_queries.remove(&id) {
            let _ = query.reply.send(Ok(query.found.into_iter().collect()));
        }
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        // Each peer delivers at most its byte rate, before anything is verified or decoded: a
        // flood of valid messages cannot make a task here (the ledger decoding transaction
        // batches) fall behind and drop honest traffic. Ignored: not forwarded, not penalised.
        let now = std::time::Instant::now();
        if !self.gossip_rates.take(source, message.data.len(), now) {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&id, &source, MessageAcceptance::Ignore);
            self.stats.gossip_rate_limited += 1;
            if self.refused("gossip rate") {
                warn!(peer = %source, refused = self.stats.gossip_rate_limited, "gossip ignored: peer over its byte rate");
            }
            return;
        }
        // Strangers (no funded account: identities are free) share one budget on top (N7).
        if self.strangers.is_stranger(&source) {
            if !self.strangers.take_gossip(message.data.len(), now) {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, MessageAcceptance::Ignore);
                self.stats.gossip_strangers_limited += 1;
                if self.refused("stranger gossip") {
                    warn!(peer = %source, refused = self.stats.gossip_strangers_limited, "gossip ignored: strangers over their shared byte rate");
                }
                return;
            }
            self.stats.gossip_stranger_bytes += message.data.len() as u64;
        }
        // The envelope's signature authenticates the author; the freshness window keeps a relay
        // from re-injecting an old one (see `GOSSIP_MAX_SKEW_MS`). A large envelope is checked
        // on a blocking thread (gossipsub holds the message, unforwarded, until the verdict):
        // a flood of 256 KiB envelopes does not keep the loop from every other peer's traffic.
        let check = |data: &[u8]| {
            Envelope::open(data, MAX_GOSSIP_BYTES).and_then(|env| {
                env.check_fresh(now_ms(), GOSSIP_MAX_SKEW_MS)?;
                Ok(env)
            })
        };
        if message.data.len() >= VERIFY_ASIDE_BYTES && self.gossip_verifying < MAX_VERIFYING_ASIDE {
            self.gossip_verifying += 1;
            self.stats.gossip_verified_aside += 1;
            let tx = self.gossip_verified_tx.clone();
            let aside = GossipAside {
                id,
                source,
                topic: message.topic,
            };
            let data = message.data;
            tokio::task::spawn_blocking(move || {
                let verdict = check(&data);
                // Room is certain (capacity = most in flight); a stopped loop has no use for it.
                let _ = tx.blocking_send((aside, verdict));
            });
            return;
        }
        let verdict = check(&message.data);
        self.on_gossip_checked(source, id, message.topic, verdict);
    }

    /// A gossip message whose envelope was checked (here or beside the loop): rejected, held
    /// for its task's verdict (a judged topic) or accepted, and routed.
    fn on_gossip_checked(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        topic_hash: gossipsub::TopicHash,
        verdict: Result<Envelope, CodecError>,
    ) {
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        match verdict {
            Err(e) => {
                warn!(peer = %source, error = %e, "rejected gossip message");
                gossip.report_message_validation_result(&id, &source, MessageAcceptance::Reject);
                self.stats.gossip_rejected += 1;
            }
            Ok(env) if self.judged.contains(&topic_hash) => {
                // Forwarded only once the application accepts it (see `Command::Judge`).
                self.stats.gossip_accepted += 1;
                let topic = topic_hash.as_str().to_string();
                let ev = NetworkEvent::GossipToJudge {
                    topic: topic.clone(),
                    envelope: Arc::new(env),
                    via: source,
                    ticket: GossipTicket {
                        id: id.clone(),
                        source,
                    },
                };
                if !self.routes.gossip(&topic, ev) {
                    // Nobody will judge it: let gossipsub forget it now (not forwarded).
                    gossip.report_message_validation_result(
                        &id,
                        &source,
                        MessageAcceptance::Ignore,
                    );
                }
            }
            Ok(env) => {
                gossip.report_message_validation_result(&id, &source, MessageAcceptance::Accept);
                self.stats.gossip_accepted += 1;
                let topic = topic_hash.as_str().to_string();
                let ev = NetworkEvent::Gossip {
                    topic: topic.clone(),
                    envelope: Arc::new(env),
                    via: source,
                };
                self.routes.gossip(&topic, ev);
            }
        }
    }

    /// Counts one refusal of `kind`; whether to log it at `warn` (see `quota::loud`).
    fn refused(&mut self, kind: &'static str) -> bool {
        let n = self.refusals.entry(kind).or_insert(0);
        *n += 1;
        loud(*n)
    }

    /// An inbound request: rate-limited per peer (before the signature is checked), then kept
    /// within the per-peer and total pending limits, then validated (a large one beside the
    /// loop, see [`VERIFY_ASIDE_BYTES`]) and routed to the task that owns its kind. A refused
    /// request's channel is dropped: the peer sees its request fail.
    fn on_inbound_request(
        &mut self,
        peer: PeerId,
        request_id: request_response::InboundRequestId,
        request: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let now = std::time::Instant::now();
        if !self.rpc_rates.allow(peer, now) {
            self.stats.rpc_rate_limited += 1;
            if self.refused("rpc rate") {
                warn!(%peer, refused = self.stats.rpc_rate_limited, "request refused: peer over its request rate");
            } else {
                debug!(%peer, "request refused: rate");
            }
            return;
        }
        // Strangers (no funded account) share one request rate on top (THREATS N4, N7).
        if self.strangers.is_stranger(&peer) {
            if !self.strangers.take_request(now) {
                self.stats.rpc_strangers_limited += 1;
                if self.refused("stranger rpc") {
                    warn!(%peer, refused = self.stats.rpc_strangers_limited, "request refused: strangers over their shared request rate");
                }
                return;
            }
            self.stats.rpc_stranger_admitted += 1;
        }
        let mine = self.pending_per_peer.get(&peer).copied().unwrap_or(0);
        let total = self.inbound.len() + self.verifying.len();
        if mine >= MAX_PENDING_PER_PEER || total >= MAX_PENDING_INBOUND {
            self.stats.rpc_pending_refused += 1;
            let limit = if mine >= MAX_PENDING_PER_PEER {
                "per-peer"
            } else {
                "total"
            };
            if self.refused("rpc pending") {
                warn!(%peer, limit, refused = self.stats.rpc_pending_refused, "request refused: too many waiting for an answer");
            } else {
                debug!(%peer, limit, "request refused: pending");
            }
            return;
        }
        let id = self.next_inbound;
        self.next_inbound += 1;
        *self.pending_per_peer.entry(peer).or_insert(0) += 1;
        if request.len() >= VERIFY_ASIDE_BYTES && self.verifying.len() < MAX_VERIFYING_ASIDE {
            self.verifying.insert(
                id,
                PendingInbound {
                    peer,
                    channel,
                    request_id,
                },
            );
            self.stats.rpc_verified_aside += 1;
            let tx = self.verified_tx.clone();
            tokio::task::spawn_blocking(move || {
                let verdict = Envelope::open(&request, MAX_RPC_BYTES);
                // Room is certain (capacity = most in flight); a stopped loop has no use for it.
                let _ = tx.blocking_send((id, verdict));
            });
            return;
        }
        let verdict = Envelope::open(&request, MAX_RPC_BYTES);
        self.admit(
            id,
            PendingInbound {
                peer,
                channel,
                request_id,
            },
            verdict,
        );
    }

    /// A request checked beside the loop.
    fn on_verified(&mut self, id: u64, verdict: Result<Envelope, CodecError>) {
        if let Some(p) = self.verifying.remove(&id) {
            self.admit(id, p, verdict);
        }
    }

    /// Routes a checked request (already counted as pending for its peer) to its owner, or
    /// refuses it.
    fn admit(&mut self, id: u64, p: PendingInbound, verdict: Result<Envelope, CodecError>) {
        let peer = p.peer;
        match verdict {
            // A request speaks for the node at the other end of the connection only: one signed
            // by another key (a stranger's fresh keys over one connection, or a third party's
            // envelope replayed by whoever kept it) would dodge the per-peer quotas keyed on the
            // signer and act with another node's authority (THREATS N11). Relays are no
            // exception: a relayed connection's peer is the node at its far end.
            Ok(env) if crate::keys::peer_id_of(&env.sender) != Some(peer) => {
                self.release_pending(peer);
                self.stats.rpc_rejected += 1;
                if self.refused("rpc sender not peer") {
                    warn!(%peer, signer = %env.sender.short(), kind = ?env.kind, "request refused: signed by another node than the peer that sent it");
                }
            }
            Ok(env) => {
                let kind = env.kind;
                let ev = NetworkEvent::Request {
                    id,
                    peer,
                    envelope: Arc::new(env),
                };
                // Routed to the one task that answers this kind; refused (the channel dropped,
                // so the requester fails at once) and counted when that task is behind.
                match self.routes.request(kind, ev) {
                    Ok(()) => {
                        self.inbound.insert(id, p);
                    }
                    Err(RequestRefused::Busy(task)) => {
                        self.release_pending(peer);
                        if self.refused("rpc route busy") {
                            warn!(%peer, ?kind, task, "request refused: the task that answers it is behind");
                        } else {
                            debug!(%peer, ?kind, task, "request refused: route full");
                        }
                    }
                    Err(RequestRefused::Unrouted) => {
                        self.release_pending(peer);
                        if self.refused("rpc unrouted") {
                            warn!(%peer, ?kind, "request refused: no task answers this kind");
                        } else {
                            debug!(%peer, ?kind, "request refused: unrouted");
                        }
                    }
                }
            }
            Err(e) => {
                self.release_pending(peer);
                warn!(%peer, error = %e, "rejected request");
                self.stats.rpc_rejected += 1;
            }
        }
    }

    /// Takes a pending inbound request's channel out (to answer it).
    fn take_inbound(&mut self, id: u64) -> Option<PendingInbound> {
        let p = self.inbound.remove(&id)?;
        self.release_pending(p.peer);
        Some(p)
    }

    fn release_pending(&mut self, peer: PeerId) {
        if let Some(n) = self.pending_per_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending_per_peer.remove(&peer);
            }
        }
    }

    /// Drops pending requests nobody will answer any more (the peer timed out or left).
    fn expire_inbound(&mut self) {
        let dead: Vec<u64> = self
            .inbound
            .iter()
            .filter(|(_, p)| !p.channel.is_open())
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            if let Some(p) = self.inbound.remove(&id) {
                self.release_pending(p.peer);
                self.stats.rpc_expired += 1;
            }
        }
    }

    fn on_rpc(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => self.on_inbound_request(peer, request_id, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let res = Envelope::open(&response, MAX_RPC_BYTES).map_err(|e| {
                            NetworkError::Request {
                                peer,
                                reason: e.to_string(),
                            }
                        });
                        let _ = reply.send(res);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.responses.release(&request_id);
                debug!(%peer, %error, "inbound request failed");
                let reason = match error {
                    request_response::InboundFailure::Timeout => "timeout",
                    request_response::InboundFailure::ConnectionClosed => "connection-closed",
                    request_response::InboundFailure::UnsupportedProtocols => {
                        "unsupported-protocols"
                    }
                    request_response::InboundFailure::ResponseOmission => "response-omission",
                    request_response::InboundFailure::Io(_) => "io",
                };
                *self
                    .stats
                    .rpc_inbound_failed
                    .entry(reason.to_string())
                    .or_insert(0) += 1;
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.responses.release(&request_id);
            }
        }
    }
}
