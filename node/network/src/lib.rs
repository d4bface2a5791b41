//! The node's networking, and the only crate that knows libp2p: one task owns the libp2p
//! `Swarm` (TCP + noise + yamux, gossipsub, request-response over the envelope codec, identify,
//! ping, Kademlia, optional mDNS, raw streams); everyone else talks to it through a cloneable
//! [`NetworkHandle`] (bounded command channel, every command carrying a oneshot reply) and
//! receives the [`NetworkEvent`]s it registered for on its own [`Inbox`] ([`routes`]: each
//! inbound message goes to the one task that owns it, with a bound and a stated policy). It also owns presence (who is reachable,
//! since when; heartbeats to watched peers) and the node's identity key ([`keys::NodeKey`]),
//! from which both the ledger `NodeId` and the libp2p `PeerId` derive.
//!
//! May depend on `agora-wire` (envelopes), `agora-market` (`NodeId`), `agora-storage` (the
//! varint framing of request-response) and libp2p; never on a
//! driver crate. The libp2p types other crates need (`PeerId`, `Multiaddr`, raw streams) are
//! re-exported from here, so no other crate lists libp2p.
#![forbid(unsafe_code)]

pub mod address_book;
mod behaviour;
mod event_loop;
pub mod heartbeat;
#[cfg(test)]
mod hostile_swarm_tests;
pub mod keys;
pub mod presence;
pub mod private_file;
pub mod quota;
mod relayed_inbound;
pub mod retry;
pub mod routes;
mod rpc_codec;
pub mod wan;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agora_market::NodeId;
use agora_storage::wire::FrameBudget;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use behaviour::MAX_GOSSIP_TRANSMIT;
pub use event_loop::{p2p_metrics, spawn, spawn_with_metrics};
pub use presence::{PeerPresence, PresenceEvent};
pub use quota::{StreamPermit, StreamQuota};
pub use routes::{Inbox, Interest, TopicRoutes};
pub use rpc_codec::RPC_PROTOCOL;

pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, multiaddr};

/// `addr` ending in `/p2p/<peer>`: appended unless it already ends in a peer id (a relay
/// reservation's listen address, `…/p2p-circuit/p2p/<us>`, does).
pub fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if matches!(addr.iter().last(), Some(multiaddr::Protocol::P2p(_))) {
        addr
    } else {
        addr.with(multiaddr::Protocol::P2p(peer))
    }
}

/// The peer of an address that is only `/p2p/<peer>` (dialled at the addresses this node
/// knows for it, [`NetworkHandle::dial`]).
pub fn peer_only(addr: &Multiaddr) -> Option<PeerId> {
    let mut parts = addr.iter();
    match (parts.next(), parts.next()) {
        (Some(multiaddr::Protocol::P2p(peer)), None) => Some(peer),
        _ => None,
    }
}

/// Whether `addr` starts with an unspecified IP (`0.0.0.0`, `::`): a listen address that
/// stands for every interface.
pub fn is_unspecified(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(multiaddr::Protocol::Ip4(ip)) => ip.is_unspecified(),
        Some(multiaddr::Protocol::Ip6(ip)) => ip.is_unspecified(),
        _ => false,
    }
}

/// Raw libp2p streams (`libp2p-stream`), for protocols that frame their own bytes (bitswap).
pub mod streams {
    pub use libp2p_stream::{AlreadyRegistered, Control, OpenStreamError};
}

use agora_wire::codec::{Envelope, Kind};

/// Networking configuration (converted from the node's TOML config).
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (and re-dial while fewer than `target_peers` are connected).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// TCP dials from the listening port (libp2p's default; TCP hole punching needs it). Off:
    /// every TCP dial takes a fresh port — for hosts whose sockets cannot share a bound port
    /// (the Shadow simulator answers every such bind with "address in use").
    pub tcp_port_reuse: bool,
    /// Interval between heartbeats to each watched peer (see [`NetworkHandle::watch`]).
    pub presence_interval: Duration,
    /// Time without an answered heartbeat after which a watched peer is declared unreachable.
    pub presence_timeout: Duration,
    /// Interval between libp2p pings on every connection; a peer that is not watched is
    /// declared unreachable after four of these without an answer.
    pub idle_ping_interval: Duration,
    /// Gossipsub heartbeat interval (mesh maintenance).
    pub gossip_heartbeat: Duration,
    /// Peers found through Kademlia are dialled only while fewer than this many are connected,
    /// and spare connections above it (no gossipsub mesh, not watched, older than 30 s) are
    /// closed, so a node's connections (and its ping and gossip cost) stay bounded as the
    /// network grows.
    pub target_peers: usize,
    /// A connection younger than this is never trimmed (lets Kademlia lookups and gossipsub
    /// grafts settle first).
    pub trim_grace: Duration,
    /// Addresses at which others reach this node (a public node behind a port forward, or a
    /// relay: a relay server serves only once it has a confirmed external address; AutoNAT
    /// confirms one on its own after a few probes).
    pub external: Vec<Multiaddr>,
    /// Serve circuit relay v2 to others, with the limits of this profile (`None`: do not).
    pub relay_server: Option<RelayProfile>,
    /// AutoNAT refuses to dial back private and reserved addresses (turn off only in a lab
    /// whose "internet" uses reserved ranges, such as the netlab's 203.0.113.0/24).
    pub autonat_only_global_ips: bool,
    /// WAN emulation (devnets, tests and benchmarks only): every TCP connection's inbound bytes
    /// are delayed, jittered and "lost" as [`wan::Shaped`] describes. `None` in production.
    pub wan: Option<wan::WanProfile>,
    /// Peers the operator vouches for (THREATS N7): never strangers, whatever the ledger
    /// says — e.g. its own fleet's edges that hold no funded account. Their gossip and
    /// requests keep their own per-peer rates instead of sharing the strangers' one budget.
    /// At most `MAX_VOUCHED` are taken.
    pub trusted_peers: Vec<PeerId>,
    /// The genesis committee's peers (the arbitrators; empty without a genesis): never
    /// strangers, and not charged the light relay's shared circuit budget, so the members that
    /// redial a watched NATed peer while it is down do not drain it (THREATS N20). They still
    /// meet the relay's per-peer and per-IP limits. At most `MAX_VOUCHED` are taken.
    pub committee: Vec<PeerId>,
    /// Bytes that frames still being read from peers (requests, responses, bitswap messages)
    /// may hold together, beyond each frame's free first 4 KiB; a frame that cannot grow
    /// fails its stream (THREATS N16). At least [`MIN_INBOUND_FRAME_BYTES`].
    pub inbound_frame_bytes: usize,
}

/// Default of [`NetworkConfig::inbound_frame_bytes`]: sixteen of the largest frames at once,
/// far more than an honest node's requests, sync answers and bitswap messages in flight need,
/// and a small share of an arbitrator's memory however many streams strangers open.
pub const DEFAULT_INBOUND_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The least [`NetworkConfig::inbound_frame_bytes`] taken: one frame of the largest size (a
/// request, a response or a bitswap message, 4 MiB each), so a lower setting cannot refuse
/// every large frame on an idle node.
pub const MIN_INBOUND_FRAME_BYTES: usize = agora_wire::codec::MAX_RPC_BYTES;

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            presence_interval: Duration::from_millis(250),
            presence_timeout: Duration::from_millis(1000),
            idle_ping_interval: Duration::from_secs(15),
            gossip_heartbeat: Duration::from_millis(500),
            target_peers: 16,
            trim_grace: Duration::from_secs(30),
            external: Vec::new(),
            relay_server: None,
            autonat_only_global_ips: true,
            wan: None,
            tcp_port_reuse: true,
            trusted_peers: Vec::new(),
            committee: Vec::new(),
            inbound_frame_bytes: DEFAULT_INBOUND_FRAME_BYTES,
        }
    }
}

/// How much a relay server relays (THREATS N20). libp2p's relay limits circuits by count,
/// bytes and lifetime but not by bytes per second, so a profile bounds the bandwidth it gives
/// away by how many circuits may be opened and how many bytes each may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayProfile {
    /// Served without being asked for (an arbitrator's default): few circuits of few bytes,
    /// and one circuit budget shared by every peer but the trusted ones and the genesis
    /// committee, so relaying takes a small, stated share of a consensus node's link whoever
    /// holds accounts.
    Light,
    /// Asked for (`relay_server = true`, `--relay`): the operator gives the bandwidth, so
    /// circuits are many and long enough to carry an edge's traffic behind a symmetric NAT.
    Operator,
}

/// Errors from the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Could not listen.
    #[error(
        "cannot listen on {addr}: {reason}; pass another address with --listen (e.g. /ip4/127.0.0.1/tcp/0 for a free port)"
    )]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// Could not build the swarm.
    #[error("cannot start networking: {0}")]
    Setup(String),
    /// The network task is gone (node shutting down).
    #[error("network task stopped; is the node shutting down?")]
    Stopped,
    /// Publishing failed.
    #[error("publish to {topic} failed: {reason}")]
    Publish {
        /// Topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A request failed.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// Not a node id we can connect to.
    #[error("cannot watch {0}: not a valid remote node id (is it this node's own id?)")]
    BadNodeId(NodeId),
    /// Dial failed.
    #[error("cannot dial {addr}: {reason}")]
    Dial {
        /// Address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// A connected peer, as reported to the CLI.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    /// libp2p peer id.
    pub peer_id: String,
    /// Agora node id (if the peer uses an ed25519 identity).
    pub node_id: Option<String>,
    /// Remote address of the first connection.
    pub addr: String,
    /// Protocol/agent reported by identify, if known.
    pub agent: Option<String>,
    /// Last ping round-trip, ms.
    pub rtt_ms: Option<u64>,
    /// At least one connection to the peer is direct (not through a relay).
    #[serde(default)]
    pub direct: bool,
    /// At least one connection to the peer goes through a circuit relay.
    #[serde(default)]
    pub relayed: bool,
}

/// Counters the loop keeps. Every refusal of a per-peer limit (#13.9) has its own counter;
/// each is also logged with the peer (at `warn` for the 1st, 2nd, 4th, 8th… refusal).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct NetworkStats {
    /// Gossip messages accepted and delivered to the application.
    pub gossip_accepted: u64,
    /// Gossip messages rejected by validation (forged, oversized, malformed), by the network
    /// or by the application that judges the topic.
    pub gossip_rejected: u64,
    /// Gossip messages ignored because the peer that delivered them was over its byte rate
    /// (`GOSSIP_BYTES_PER_SECOND`); not verified, not delivered, not forwarded.
    pub gossip_rate_limited: u64,
    /// Gossip messages ignored because strangers (peers the application has not vouched for:
    /// no funded ledger account) together were over their one shared byte rate.
    pub gossip_strangers_limited: u64,
    /// Bytes of gossip from strangers that their shared budget let through.
    pub gossip_stranger_bytes: u64,
    /// Peers vouched for (their gossip and requests are not charged to the strangers' budget).
    pub vouched_peers: u64,
    /// Peers the operator vouches for in its config (`network.trusted_peers`): never
    /// strangers, whether or not the ledger vouches for them too.
    pub trusted_peers: u64,
    /// Inbound requests refused because strangers together were over their one shared request
    /// rate (one peer's).
    pub rpc_strangers_limited: u64,
    /// Inbound requests from strangers that their shared request rate let through.
    pub rpc_stranger_admitted: u64,
    /// Gossip messages of a judged topic the application ignored (nothing new in them): they
    /// are delivered to no one else and not forwarded, so a flood stops at its first hop.
    pub gossip_ignored: u64,
    /// Inbound requests rejected by validation: malformed, forged, or signed by another node
    /// than the peer that sent them.
    pub rpc_rejected: u64,
    /// Gossip messages published by this node.
    pub gossip_published: u64,
    /// Inbound requests refused because their peer exceeded its request rate.
    pub rpc_rate_limited: u64,
    /// Inbound requests refused because their peer (or everyone together) already had the
    /// most requests waiting for an answer.
    pub rpc_pending_refused: u64,
    /// Inbound requests that expired unanswered (the peer stopped waiting).
    pub rpc_expired: u64,
    /// Answers withheld (their requests failed at once): the bytes of answers handed to the
    /// swarm and not yet written already reached the per-peer or the total budget (a peer
    /// that asks for large answers and never reads them; THREATS N13).
    pub rpc_responses_withheld: u64,
    /// Frames (requests, responses, bitswap messages) whose stream failed because frames
    /// still being read already held the node's budget (`network.inbound_frame_bytes`): a
    /// peer announcing large frames and sending them slowly on many streams (THREATS N16).
    pub frames_over_budget: u64,
    /// Bytes frames still being read hold of that budget now (each frame's first 4 KiB are
    /// not charged).
    pub frame_bytes_held: u64,
    /// Inbound heartbeat streams refused (per-peer or total quota).
    pub heartbeat_streams_refused: u64,
    /// Inbound bitswap streams refused (per-peer or total quota).
    pub bitswap_streams_refused: u64,
    /// Incoming connections refused by the connection limits.
    pub connections_refused: u64,
    /// Relayed inbound connections refused: from a stranger (THREATS N20; each would count
    /// against this node's own circuits at the relay).
    pub relayed_inbound_refused: u64,
    /// Peers evicted from a full per-peer table (presence, addresses).
    pub peers_evicted: u64,
    /// Addresses dropped from the DHT's routing table because the address book no longer
    /// holds them (a peer's identify updates replaced them; before session 49 the table kept
    /// every address a peer ever announced).
    pub kad_addrs_pruned: u64,
    /// Provider records other peers asked this node to store that it refused: the provider's
    /// share (64 keys), the strangers' (2,048) or the table (8,192) was full (THREATS N19).
    pub kad_providers_refused: u64,
    /// DHT values (`PUT_VALUE`) refused: this node stores none.
    pub kad_records_refused: u64,
    /// Dials whose address reached another peer than the one dialled (a peer announcing
    /// `127.0.0.1` from another host, or someone else's address); each such address is struck
    /// out of the address book and the DHT's table (`address_book`).
    pub addresses_struck: u64,
    /// Kademlia walks (lookups of a random key) started to find peers beyond the bootstrap
    /// list: soon and often while below `target_peers`, rarely at it.
    pub discovery_walks: u64,
    /// Peers those walks found that this node then dialled.
    pub discovery_dials: u64,
    /// Gossip messages dropped because the task that reads their topic was behind (its route
    /// was full; see [`routes`]), in all.
    pub gossip_route_dropped: u64,
    /// The same, per topic.
    pub gossip_route_dropped_by_topic: std::collections::BTreeMap<String, u64>,
    /// Valid gossip messages of a topic no task reads (not delivered).
    pub gossip_unrouted: u64,
    /// Inbound requests refused because the task that answers their kind had the most
    /// requests waiting (the requester sees the refusal at once).
    pub rpc_route_busy: u64,
    /// Inbound requests refused because no task answers their kind.
    pub rpc_unrouted: u64,
    /// Presence or connection changes merged into a later change of the same peer before a
    /// task read them (never a lost `Down`: see [`routes`]).
    pub peer_events_coalesced: u64,
    /// Presence or connection changes dropped because too many peers had changes waiting.
    pub peer_events_dropped: u64,
    /// Inbound requests large enough that their envelope was decoded and its signature checked
    /// beside the swarm loop (on a blocking thread) rather than in it.
    pub rpc_verified_aside: u64,
    /// Gossip messages large enough (64 KiB or more) that their envelope was decoded and its
    /// signature checked beside the swarm loop; gossipsub forwards none of them before that.
    pub gossip_verified_aside: u64,
    /// Inbound requests that failed as libp2p reports them, per reason (`timeout`,
    /// `connection-closed`, `unsupported-protocols`, `response-omission` — which includes
    /// every refusal counted above —, `io`). libp2p reports nothing for inbound streams its
    /// request-response handler drops beyond its 100 concurrent streams per connection.
    pub rpc_inbound_failed: std::collections::BTreeMap<String, u64>,
    /// What AutoNAT concluded about this node: `unknown`, `public` or `private`.
    pub nat_status: String,
    /// Relay reservations this node holds on relays (accepted, still open).
    pub relay_reservations_held: u64,
    /// As a relay server: reservations accepted, refused (over a limit or rate), circuits
    /// accepted, refused, and open now.
    pub relay_reservations_accepted: u64,
    pub relay_reservations_denied: u64,
    pub relay_circuits_accepted: u64,
    pub relay_circuits_denied: u64,
    pub relay_circuits_open: u64,
    /// Hole punches (DCUtR) that made a relayed connection direct, and that failed.
    pub hole_punch_succeeded: u64,
    pub hole_punch_failed: u64,
}

/// Counters shared with tasks outside the swarm loop (stream accept loops, frame readers).
#[derive(Debug)]
pub(crate) struct SharedCounters {
    pub(crate) heartbeat_refused: Arc<AtomicU64>,
    pub(crate) bitswap_refused: Arc<AtomicU64>,
    /// The one budget of frames being read (it counts its own refusals).
    pub(crate) frames: Arc<FrameBudget>,
}

impl SharedCounters {
    pub(crate) fn new(frames: Arc<FrameBudget>) -> SharedCounters {
        SharedCounters {
            heartbeat_refused: Arc::default(),
            bitswap_refused: Arc::default(),
            frames,
        }
    }

    pub(crate) fn fill(&self, stats: &mut NetworkStats) {
        stats.heartbeat_streams_refused = self.heartbeat_refused.load(Ordering::Relaxed);
        stats.bitswap_streams_refused = self.bitswap_refused.load(Ordering::Relaxed);
        stats.frames_over_budget = self.frames.refused();
        stats.frame_bytes_held = self.frames.held() as u64;
    }
}

/// Things the network reports to the application.
#[derive(Clone, Debug)]
pub enum NetworkEvent {
    /// A validated gossip message.
    Gossip {
        /// Topic it arrived on.
        topic: String,
        /// The validated envelope.
        envelope: Arc<Envelope>,
        /// The peer that forwarded it to us.
        via: PeerId,
    },
    /// A gossip message of a topic subscribed with [`NetworkHandle::subscribe_judged`]: its
    /// envelope is valid, but it is forwarded to other peers only once the application says
    /// so with [`NetworkHandle::judge`] (until then, and if it never does, it goes no further).
    GossipToJudge {
        /// Topic it arrived on.
        topic: String,
        /// The validated envelope.
        envelope: Arc<Envelope>,
        /// The peer that forwarded it to us.
        via: PeerId,
        /// What to pass back to [`NetworkHandle::judge`].
        ticket: GossipTicket,
    },
    /// A validated inbound request; answer with [`NetworkHandle::respond`].
    Request {
        /// Id to respond to.
        id: u64,
        /// The requesting peer.
        peer: PeerId,
        /// The validated envelope.
        envelope: Arc<Envelope>,
    },
    /// A reachability change.
    Presence(PresenceEvent),
    /// A connection to a peer was established.
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
}

/// Names one gossip message awaiting the application's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipTicket {
    pub(crate) id: libp2p::gossipsub::MessageId,
    pub(crate) source: PeerId,
}

/// The application's verdict on a gossip message of a judged topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GossipVerdict {
    /// Something new and valid: forward it to the mesh.
    Accept,
    /// Valid but nothing new (duplicates, or refused by policy such as an unfunded sender):
    /// not forwarded, and its sender is not penalised (an honest peer may be behind).
    Ignore,
    /// Invalid: not forwarded, and the sender's gossip score is penalised.
    Reject,
}

pub(crate) type Reply<T> = oneshot::Sender<T>;

/// Commands the handle sends to the swarm task.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe(String, Reply<Result<(), NetworkError>>),
    SubscribeJudged(String, Reply<Result<(), NetworkError>>),
    Judge(GossipTicket, GossipVerdict),
    Vouch(Vec<PeerId>),
    Publish(String, Vec<u8>, Reply<Result<(), NetworkError>>),
    Broadcast(String, Kind, Vec<u8>, Reply<Result<(), NetworkError>>),
    Request(PeerId, Vec<u8>, Reply<Result<Envelope, NetworkError>>),
    Respond(u64, Vec<u8>, Reply<Result<(), NetworkError>>),
    Dial(Multiaddr, Reply<Result<(), NetworkError>>),
    AddExternal(Multiaddr, Reply<()>),
    Disconnect(PeerId, Reply<bool>),
    Peers(Reply<Vec<PeerInfo>>),
    ListenAddrs(Reply<Vec<Multiaddr>>),
    Presence(Reply<Vec<PeerPresence>>),
    Watch(NodeId, Reply<Result<(), NetworkError>>),
    Unwatch(NodeId, Reply<()>),
    Stats(Reply<NetworkStats>),
    PeerScore(PeerId, Reply<Option<f64>>),
    StartProviding(Vec<u8>, Reply<Result<(), NetworkError>>),
    StopProviding(Vec<u8>, Reply<()>),
    GetProviders(Vec<u8>, Reply<Result<Vec<PeerId>, NetworkError>>),
}

/// Cloneable handle to the swarm task.
#[derive(Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    routes: Arc<routes::RouteTable>,
    local: NodeId,
    peer_id: PeerId,
    streams: libp2p_stream::Control,
    counters: Arc<SharedCounters>,
    /// Who is a stranger (the stream quotas give strangers together a share).
    strangers: quota::Strangers,
    /// The node's stream quotas (the swarm's loop tells them when a peer leaves).
    quotas: quota::Quotas,
}

impl std::fmt::Debug for NetworkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkHandle")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl NetworkHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.local
    }

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Registers a task's inbound traffic: gossip of the interest's topics, requests of its
    /// kinds, presence and connection changes go to the returned inbox and to no other (a
    /// topic or kind registered twice goes to both inboxes, requests to the first with room).
    /// See [`routes`] for what happens when an inbox is full. Register before subscribing to
    /// a topic or answering requests, so nothing arrives before there is a route for it.
    pub fn inbox(&self, interest: Interest) -> Inbox {
        self.routes.register(interest)
    }

    /// Subscribes to a gossip topic.
    pub async fn subscribe(&self, topic: &str) -> Result<(), NetworkError> {
        self.call(|r| Command::Subscribe(topic.to_string(), r))
            .await?
    }

    /// Subscribes to a gossip topic whose messages the application judges before they travel
    /// on: each arrives as [`NetworkEvent::GossipToJudge`] and is forwarded only after
    /// [`Self::judge`] accepts it. A subscriber that floods the topic then reaches only its
    /// direct peers, and an honest node's outbound queues never fill with what it refused.
    pub async fn subscribe_judged(&self, topic: &str) -> Result<(), NetworkError> {
        self.call(|r| Command::SubscribeJudged(topic.to_string(), r))
            .await?
    }

    /// Passes the application's verdict on a judged gossip message to the network.
    pub async fn judge(&self, ticket: GossipTicket, verdict: GossipVerdict) {
        // No reply: the verdict is advice to gossipsub, and a stopped network has no use for it.
        let _ = self.commands.send(Command::Judge(ticket, verdict)).await;
    }

    /// Vouches for `peers` (replacing whoever was vouched for before): their gossip and
    /// requests are charged to their own rates only, while everyone else's — strangers' — also
    /// share one budget of one peer's rates (THREATS N7, N4). Until the first call nobody is a stranger. The ledger
    /// task vouches for every identity whose account holds the ledger's minimum balance.
    pub async fn vouch(&self, peers: Vec<PeerId>) {
        let _ = self.commands.send(Command::Vouch(peers)).await;
    }

    /// Publishes a sealed envelope on a topic.
    pub async fn publish(&self, topic: &str, envelope: &Envelope) -> Result<(), NetworkError> {
        self.publish_bytes(topic, envelope.to_bytes()).await
    }

    /// Seals `payload` as a `kind` message signed by this node and publishes it on `topic`.
    pub async fn broadcast(
        &self,
        topic: &str,
        kind: Kind,
        payload: Vec<u8>,
    ) -> Result<(), NetworkError> {
        self.call(|r| Command::Broadcast(topic.to_string(), kind, payload, r))
            .await?
    }

    /// Publishes raw bytes (for tests of validation; normal code uses [`Self::publish`]).
    pub async fn publish_bytes(&self, topic: &str, bytes: Vec<u8>) -> Result<(), NetworkError> {
        self.call(|r| Command::Publish(topic.to_string(), bytes, r))
            .await?
    }

    /// Sends a request envelope to a peer and waits for the validated response.
    pub async fn request(
        &self,
        peer: PeerId,
        envelope: &Envelope,
    ) -> Result<Envelope, NetworkError> {
        self.call(|r| Command::Request(peer, envelope.to_bytes(), r))
            .await?
    }

    /// Sends raw request bytes to a peer (for tests of validation; normal code uses
    /// [`Self::request`]) and waits for the validated response.
    pub async fn request_bytes(
        &self,
        peer: PeerId,
        bytes: Vec<u8>,
    ) -> Result<Envelope, NetworkError> {
        self.call(|r| Command::Request(peer, bytes, r)).await?
    }

    /// Answers an inbound request.
    pub async fn respond(&self, id: u64, envelope: &Envelope) -> Result<(), NetworkError> {
        self.call(|r| Command::Respond(id, envelope.to_bytes(), r))
            .await?
    }

    /// Dials an address. An address that is only `/p2p/<peer id>` dials that peer at the
    /// addresses this node knows for it (its address book and the DHT's routing table); none
    /// known is an error.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        self.call(|r| Command::Dial(addr, r)).await?
    }

    /// Declares an address at which others reach this node (like `NetworkConfig::external`,
    /// for an address known only after start, such as a port chosen by the OS).
    pub async fn add_external_address(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        self.call(|r| Command::AddExternal(addr, r)).await
    }

    /// Closes every connection to `peer`; `false` if it was not connected. A watched peer or
    /// a bootstrap peer may be dialled again by the node later.
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool, NetworkError> {
        self.call(|r| Command::Disconnect(peer, r)).await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetworkError> {
        self.call(Command::Peers).await
    }

    /// Addresses we listen on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        self.call(Command::ListenAddrs).await
    }

    /// Presence of every peer we were connected to or watch.
    pub async fn presence(&self) -> Result<Vec<PeerPresence>, NetworkError> {
        self.call(Command::Presence).await
    }

    /// Keeps a connection to `node` (redialled with backoff) and sends it a heartbeat every
    /// presence interval, so it is declared down within the presence timeout; `Up`/`Down`
    /// events follow. Counted: each `watch` is undone by one `unwatch`.
    pub async fn watch(&self, node: NodeId) -> Result<(), NetworkError> {
        self.call(|r| Command::Watch(node, r)).await?
    }

    /// Undoes one `watch`; after the last, `node` is an ordinary peer again (its presence is
    /// still tracked, with idle pings, while connected).
    pub async fn unwatch(&self, node: NodeId) -> Result<(), NetworkError> {
        self.call(|r| Command::Unwatch(node, r)).await
    }

    /// Loop counters.
    pub async fn stats(&self) -> Result<NetworkStats, NetworkError> {
        self.call(Command::Stats).await
    }

    /// A control to open and accept raw protocol streams (bitswap) outside the swarm loop.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// The node's one budget for frames being read from peers, shared with request-response:
    /// a protocol that reads frames on raw streams (bitswap) reads them within it, and its
    /// refusals are counted in [`NetworkStats::frames_over_budget`] (THREATS N16).
    pub fn frame_budget(&self) -> Arc<FrameBudget> {
        self.counters.frames.clone()
    }

    /// Announces in Kademlia that this node provides `key` (a CID's multihash bytes).
    pub async fn start_providing(&self, key: Vec<u8>) -> Result<(), NetworkError> {
        self.call(|r| Command::StartProviding(key, r)).await?
    }

    /// Stops announcing `key`.
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NetworkError> {
        self.call(|r| Command::StopProviding(key, r)).await
    }

    /// Looks up providers of `key` in Kademlia (ends when the query finishes or times out).
    pub async fn get_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetworkError> {
        self.call(|r| Command::GetProviders(key, r)).await?
    }

    /// Gossipsub score of a peer as seen by this node.
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NetworkError> {
        self.call(|r| Command::PeerScore(peer, r)).await
    }

    /// The quota for inbound bitswap streams (at most `per_peer` per remote, `total` in all,
    /// half of it for all strangers together); its refusals are counted in
    /// [`NetworkStats::bitswap_streams_refused`]. Share one quota among the accept loops of
    /// every bitswap protocol version.
    pub fn bitswap_quota(&self, per_peer: usize, total: usize) -> StreamQuota {
        let quota = StreamQuota::new(
            "bitswap",
            per_peer,
            total,
            self.counters.bitswap_refused.clone(),
        )
        .with_strangers(self.strangers.clone(), total / 2);
        self.quotas.register(quota)
    }
}
