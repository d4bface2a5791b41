//! The composed libp2p behaviour and swarm construction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade::Version;

use libp2p::gossipsub::{self, MessageAuthenticity, ValidationMode};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, autonat, connection_limits, dcutr, identify, kad, mdns, noise, ping,
    quic, relay, request_response, tcp, yamux,
};

use super::address_book::{AddressBook, without_p2p};
use super::relayed_inbound::RelayedInbound;
use super::rpc_codec::{RPC_PROTOCOL, RpcCodec};
use super::wan::{Shaped, WanProfile};
use super::{NetworkConfig, NetworkError, RelayProfile};
use agora_storage::wire::FrameBudget;
use agora_wire::codec::GOSSIP_MAX_SKEW_MS;

/// Gossipsub's transmit limit; deliberately above the application limit so that oversized
/// envelopes reach our validator and are rejected there (penalising the sender).
pub const MAX_GOSSIP_TRANSMIT: usize = 1024 * 1024;

/// Most connections one peer may hold to us at once (a simultaneous dial makes two).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Most incoming connections established at once (many throwaway identities cannot exhaust
/// file descriptors and per-connection state; spare connections are trimmed above
/// `target_peers` anyway).
pub const MAX_INCOMING_CONNECTIONS: u32 = 512;
/// Most incoming connections still handshaking at once.
pub const MAX_PENDING_INCOMING: u32 = 64;

/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/agora/id/1.0.0";

/// All protocols the node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct AgoraBehaviour {
    /// Connection limits (first: denies before the other behaviours set anything up).
    pub limits: connection_limits::Behaviour,
    /// Relayed inbound connections: none from strangers (second, so a refused one sets
    /// nothing up either; see `relayed_inbound`).
    pub relayed: RelayedInbound,
    /// Where peers listen (filtered identify addresses, dialled ones), offered to every dial;
    /// identify's own cache is off (see `address_book`).
    pub book: AddressBook,
    pub gossipsub: gossipsub::Behaviour,
    pub rpc: request_response::Behaviour<RpcCodec>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Circuit relay v2 server (`[network] relay_server`), with its profile's limits.
    pub relay_server: Toggle<relay::Behaviour>,
    /// Circuit relay v2 client: reserves slots on relays and dials through them.
    pub relay_client: relay::client::Behaviour,
    /// Hole punching: upgrades a relayed connection to a direct one.
    pub dcutr: dcutr::Behaviour,
    /// Whether this node is publicly reachable (and an AutoNAT server for others).
    pub autonat: autonat::Behaviour,
    /// Raw streams for bitswap: `libp2p-stream` gives the block exchange its own
    /// `Control` to open/accept streams outside the swarm loop, so block transfer never stalls
    /// gossip and the loop stays free of bitswap state (a custom behaviour would put the
    /// per-peer want queues inside the loop).
    pub stream: libp2p_stream::Behaviour,
}

/// Score parameters for every agora topic: invalid messages cost the forwarder heavily.
pub(crate) fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.5,
        ..Default::default()
    }
}

/// A transport that never dials one of its own listen addresses. A node listening on
/// `0.0.0.0:4001` also listens on `127.0.0.1:4001`; when a peer on another host announces
/// that address too (it listens on the same port), or a hostile peer announces one of ours as
/// its own, a dial there reaches this node itself: it is the first connection of the dial to
/// complete, fails with a wrong peer id and ends the whole dial, so the peer's real address is
/// never tried (issue #13 row N10). The listen addresses come from the inner transport's own
/// events, so they are exactly what this node listens on in its network namespace; a dial to
/// one of them is refused at once and the swarm goes on with the peer's other addresses.
///
/// With `fresh_ports` its dials also take a fresh local port (see
/// [`NetworkConfig::tcp_port_reuse`]); otherwise the behaviour's choice stands.
pub(crate) struct NotSelf<T> {
    inner: T,
    fresh_ports: bool,
    /// What the inner transport reported listening on, per listener (a few per interface).
    listening: Vec<(libp2p::core::transport::ListenerId, libp2p::Multiaddr)>,
}

impl<T> NotSelf<T> {
    pub(crate) fn new(inner: T) -> Self {
        NotSelf {
            inner,
            fresh_ports: false,
            listening: Vec::new(),
        }
    }

    /// Every dial takes a fresh local port when `fresh`.
    pub(crate) fn fresh_ports(mut self, fresh: bool) -> Self {
        self.fresh_ports = fresh;
        self
    }

    fn is_own(&self, addr: &libp2p::Multiaddr) -> bool {
        let bare = without_p2p(addr);
        let bare = bare.as_ref().unwrap_or(addr);
        self.listening.iter().any(|(_, a)| a == bare)
    }
}

impl<T: Transport + Unpin> Transport for NotSelf<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: libp2p::core::transport::ListenerId,
        addr: libp2p::Multiaddr,
    ) -> Result<(), libp2p::core::transport::TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: libp2p::core::transport::ListenerId) -> bool {
        self.listening.retain(|(l, _)| *l != id);
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: libp2p::Multiaddr,
        mut opts: libp2p::core::transport::DialOpts,
    ) -> Result<Self::Dial, libp2p::core::transport::TransportError<Self::Error>> {
        if self.fresh_ports {
            opts.port_use = libp2p::core::transport::PortUse::New;
        }
        if self.is_own(&addr) {
            tracing::debug!(%addr, "not dialling one of our own listen addresses");
            return Err(libp2p::core::transport::TransportError::MultiaddrNotSupported(addr));
        }
        self.inner.dial(addr, opts)
    }

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::core::transport::TransportEvent<Self::ListenerUpgrade, Self::Error>>
    {
        use libp2p::core::transport::TransportEvent;
        let ev = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll(cx));
        match &ev {
            // Bounded by the host's interfaces: one address per interface and listener.
            TransportEvent::NewAddress {
                listener_id,
                listen_addr,
            } if !self.listening.iter().any(|(_, a)| a == listen_addr) => {
                self.listening.push((*listener_id, listen_addr.clone()));
            }
            TransportEvent::AddressExpired {
                listener_id,
                listen_addr,
            } => self
                .listening
                .retain(|(l, a)| !(l == listener_id && a == listen_addr)),
            TransportEvent::ListenerClosed { listener_id, .. } => {
                self.listening.retain(|(l, _)| l != listener_id)
            }
            _ => {}
        }
        std::task::Poll::Ready(ev)
    }
}

/// TCP with noise and yamux, as `SwarmBuilder::with_tcp` builds it; each connection's bytes go
/// through [`Shaped`] first when a WAN profile is given.
fn tcp_transport(
    key: &libp2p::identity::Keypair,
    wan: Option<WanProfile>,
    port_reuse: bool,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = NotSelf::new(tcp::tokio::Transport::new(
        tcp::Config::default().nodelay(true),
    ))
    .fresh_ports(!port_reuse);
    let noise = noise::Config::new(key)?;
    Ok(match wan {
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .map(|(p, c), _| (p, StreamMuxerBox::new(c)))
            .boxed(),
        Some(profile) => {
            let seeds = Arc::new(AtomicU64::new(0));
            tcp.map(move |stream, _| {
                Shaped::new(stream, profile, seeds.fetch_add(1, Ordering::Relaxed))
            })
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .map(|(p, c), _| (p, StreamMuxerBox::new(c)))
            .boxed()
        }
    })
}

pub(crate) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    cfg: &NetworkConfig,
    strangers: crate::quota::Strangers,
    frames: Arc<FrameBudget>,
) -> Result<Swarm<AgoraBehaviour>, NetworkError> {
    let setup = |e: String| NetworkError::Setup(e);
    let mdns_enabled = cfg.mdns;
    let gossip_heartbeat = cfg.gossip_heartbeat;
    let idle_ping = cfg.idle_ping_interval;
    let relay_server = cfg.relay_server;
    let autonat_only_global = cfg.autonat_only_global_ips;
    let wan = cfg.wan.filter(WanProfile::is_active);
    let port_reuse = cfg.tcp_port_reuse;
    if let Some(w) = wan {
        tracing::warn!(
            latency_ms = w.latency.as_millis() as u64,
            jitter_ms = w.jitter.as_millis() as u64,
            loss_ppm = w.loss_ppm,
            "WAN emulation is on: every inbound TCP byte is delayed (a devnet and test setting, \
             never for production; remove [network.wan] from config.toml to turn it off)"
        );
    }
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        // QUIC beside TCP: one UDP socket for listening and dialing, so a cone NAT maps it to
        // one public port and hole punching works; peers without UDP still use TCP. As
        // `with_quic` builds it, but never dialling our own listen addresses (`NotSelf`).
        .with_other_transport(|key| {
            NotSelf::new(quic::tokio::Transport::new(quic::Config::new(key)))
                .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
        })
        .map_err(|e| setup(e.to_string()))?
        // TCP as libp2p's `with_tcp` builds it (noise, yamux), or WAN-shaped when configured.
        .with_other_transport(|key| tcp_transport(key, wan, port_reuse))
        .map_err(|e| setup(e.to_string()))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(e.to_string()))?
        .with_behaviour(|key, relay_client| {
            // Gossip is unsigned at the libp2p layer, like Ethereum's consensus gossip
            // (`StrictNoSign`): every payload is an envelope signed by its author (domain
            // separated, checked once per message in `on_gossip`), so gossipsub's own signature
            // only repeated that check, and repeated it for every *copy*: the codec verifies
            // before the duplicate filter, and each node receives about one copy per mesh peer.
            // Ids are content hashes, so a relay that re-injects an envelope inside the
            // freshness window (`GOSSIP_MAX_SKEW_MS`) is a duplicate, and outside it the
            // envelope is stale; the duplicate cache outlives that window on both sides.
            // Nodes from before this change sign their gossip, which this mode rejects: a
            // devnet runs one version.
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(gossip_heartbeat)
                .validation_mode(ValidationMode::Anonymous)
                .duplicate_cache_time(Duration::from_millis(3 * GOSSIP_MAX_SKEW_MS))
                .validate_messages()
                .max_transmit_size(MAX_GOSSIP_TRANSMIT)
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
                })
                .build()
                .map_err(|e| e.to_string())?;
            let mut gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_cfg)?;
            // No IP-colocation penalty: edges behind one NAT (and every devnet node on loopback)
            // share an address, and with more than 10 such peers the default penalty pushed them
            // all below the publish threshold, so nothing was delivered. Sybil resistance comes
            // from staked identities and invalid-message penalties instead.
            let score_params = gossipsub::PeerScoreParams {
                ip_colocation_factor_weight: 0.0,
                ..Default::default()
            };
            gossipsub.with_peer_score(score_params, gossipsub::PeerScoreThresholds::default())?;
            // Up to 100 streams per connection (libp2p's default) may each be reading a
            // request for 30 s; what their frames hold is bounded by the node's one budget
            // (`network.inbound_frame_bytes`, THREATS N16), not per stream.
            let rpc = request_response::Behaviour::with_codec(
                RpcCodec::new(frames.clone()),
                [(RPC_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            );
            // Listen-address changes are pushed, so peers (and through Kademlia everyone) learn
            // a relayed `/p2p-circuit` address as soon as the reservation is accepted.
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("agora/{}", env!("CARGO_PKG_VERSION")))
                    .with_push_listen_addr_updates(true)
                    .with_cache_size(0),
            );
            // Slow liveness and round-trip times of every direct peer; watched peers get fast
            // heartbeats on top (see `heartbeat`).
            let ping = ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(idle_ping)
                    .with_timeout(idle_ping * 2),
            );
            let peer_id = key.public().to_peer_id();
            // Kademlia bootstraps itself: when the routing table gains a peer while it holds
            // fewer than 20 (a node joining) and every 5 minutes. We add no bootstrap of our own:
            // each one connects to most of a few-hundred-node network (the trimmer's storm
            // ceiling closes those connections within seconds, `discovery::STORM_GRACE`).
            // Records others ask us to store are judged by the event loop first
            // (`event_loop::providers`, THREATS N19); the store has room for this node's own
            // keys beyond what others may fill.
            let mut kad_cfg = kad::Config::new(StreamProtocol::new("/ipfs/kad/1.0.0"));
            kad_cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
            let store = kad::store::MemoryStore::with_config(
                peer_id,
                kad::store::MemoryStoreConfig {
                    max_provided_keys: crate::event_loop::PROVIDER_STORE_KEYS,
                    ..Default::default()
                },
            );
            let mut kad = kad::Behaviour::with_config(peer_id, store, kad_cfg);
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if mdns_enabled {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                    .with_max_established_incoming(Some(MAX_INCOMING_CONNECTIONS))
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING)),
            );
            let relay_server = relay_server
                .map(|profile| relay::Behaviour::new(peer_id, relay_config(profile, &strangers)));
            let relayed = RelayedInbound::new(strangers);
            let autonat = autonat::Behaviour::new(peer_id, autonat_config(autonat_only_global));
            Ok(AgoraBehaviour {
                limits,
                relayed,
                book: AddressBook::default(),
                gossipsub,
                rpc,
                identify,
                ping,
                kad,
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
                relay_server: Toggle::from(relay_server),
                relay_client,
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat,
            })
        })
        .map_err(|e| setup(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

/// Most relay reservations a relay server holds, in all and per peer (both profiles: a
/// reservation carries no relayed bytes, only the right to be dialled through us).
pub const RELAY_MAX_RESERVATIONS: usize = 128;
pub const RELAY_MAX_RESERVATIONS_PER_PEER: usize = 2;
/// Most relayed circuits the operator's relay carries, in all and per peer. libp2p counts a
/// peer's circuits at either end and checks only the requester's count, so whoever opens
/// circuits *to* an edge uses up the edge's own (review 9 H1). An edge accepts relayed
/// connections from non-strangers only (`relayed_inbound`), up to 4 per peer under the
/// connection limits, so at 4 the committee watching it and its counterparty already left it
/// no circuit of its own on that relay; at 16 that takes 17 circuits from peers it accepts (5
/// funded keys), while one funded key still holds at most a quarter of the relay (17 of 64).
pub const RELAY_MAX_CIRCUITS: usize = 64;
pub const RELAY_MAX_CIRCUITS_PER_PEER: usize = 16;
/// How long one circuit of the operator's relay may live and how many bytes it may carry (both
/// directions together, as libp2p counts them). libp2p's defaults (2 min, 128 KiB) are meant
/// for the hole-punch handshake only; agora edges behind a symmetric NAT have no direct path,
/// so gossip, requests, presence and small bitswap transfers must fit. A circuit that reaches a
/// limit is closed and redialled (presence notices within its timeout); bulk content should not
/// travel through someone else's relay.
pub const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(30 * 60);
pub const RELAY_CIRCUIT_BYTES: u64 = 64 * 1024 * 1024;

/// The light relay (an arbitrator's default, `RelayProfile::Light`): a quarter of the operator's
/// circuits, an eighth of its bytes, a third of its lifetime. Enough for two edges to meet and
/// hole-punch, and for a pair behind symmetric NATs to keep gossip and presence for a while;
/// an operator who wants to carry more says `relay_server = true`.
pub const RELAY_LIGHT_MAX_CIRCUITS: usize = 16;
/// The whole relay: libp2p counts circuits *to* a peer against that peer's own limit, so a low
/// count let free identities open 3 circuits to a chosen edge and leave it none of its own
/// (review 9 H1). Here the count never refuses a peer before the relay is full; what one peer
/// may open is bounded by the per-peer limiter and the shared budget below.
pub const RELAY_LIGHT_MAX_CIRCUITS_PER_PEER: usize = RELAY_LIGHT_MAX_CIRCUITS;
pub const RELAY_LIGHT_CIRCUIT_DURATION: Duration = Duration::from_secs(10 * 60);
pub const RELAY_LIGHT_CIRCUIT_BYTES: u64 = 8 * 1024 * 1024;
/// Circuits every peer but the trusted ones and the genesis committee may open together per
/// light circuit lifetime (and at once): the light relay's whole capacity once per lifetime.
/// This is its bandwidth bound, since libp2p has no bytes-per-second limit: at most
/// `(32 + 1.6 × minutes)` circuits of 8 MiB each can carry bytes in any span, about 1 GiB an
/// hour (~1.8 Mbit/s, received and sent again) after a first burst of 256 MiB at line rate;
/// funded keys share it as strangers do. The committee's members (fixed at genesis) are held
/// to their per-peer and per-IP limiters only.
pub const RELAY_LIGHT_SHARED_CIRCUITS: u32 = 16;
/// Circuits all strangers together may open per light circuit lifetime (and at once).
pub const RELAY_LIGHT_STRANGER_CIRCUITS: u32 = 8;
/// Circuits one peer may open at once on the light relay, then one per interval: one funded
/// key (or one peer redialling a dead one) cannot take the shared budget alone.
pub const RELAY_LIGHT_PEER_CIRCUIT_BURST: u32 = 4;
pub const RELAY_LIGHT_PEER_CIRCUIT_REFILL: Duration = Duration::from_secs(150);
/// The same per source IP address (a few peers behind one NAT share it).
pub const RELAY_LIGHT_IP_CIRCUIT_BURST: u32 = 8;
pub const RELAY_LIGHT_IP_CIRCUIT_REFILL: Duration = Duration::from_secs(60);

/// The relay server's limits for `profile`: a relay is a resource strangers can make us hold, so
/// everything is bounded (libp2p's per-peer and per-IP rate limiters on reservations and
/// circuits stay on in both profiles; libp2p asks a circuit's limiters in order and stops at
/// the first refusal, so the shared budgets come last and a peer over its own limit spends
/// none of them).
fn relay_config(profile: RelayProfile, strangers: &crate::quota::Strangers) -> relay::Config {
    let light = profile == RelayProfile::Light;
    let (circuits, per_peer, duration, bytes) = if light {
        (
            RELAY_LIGHT_MAX_CIRCUITS,
            RELAY_LIGHT_MAX_CIRCUITS_PER_PEER,
            RELAY_LIGHT_CIRCUIT_DURATION,
            RELAY_LIGHT_CIRCUIT_BYTES,
        )
    } else {
        (
            RELAY_MAX_CIRCUITS,
            RELAY_MAX_CIRCUITS_PER_PEER,
            RELAY_CIRCUIT_DURATION,
            RELAY_CIRCUIT_BYTES,
        )
    };
    let mut c = relay::Config {
        max_reservations: RELAY_MAX_RESERVATIONS,
        max_reservations_per_peer: RELAY_MAX_RESERVATIONS_PER_PEER,
        max_circuits: circuits,
        max_circuits_per_peer: per_peer,
        max_circuit_duration: duration,
        max_circuit_bytes: bytes,
        ..relay::Config::default()
    };
    if light {
        c = c
            .circuit_src_per_peer(
                at_least_one(RELAY_LIGHT_PEER_CIRCUIT_BURST),
                RELAY_LIGHT_PEER_CIRCUIT_REFILL,
            )
            .circuit_src_per_ip(
                at_least_one(RELAY_LIGHT_IP_CIRCUIT_BURST),
                RELAY_LIGHT_IP_CIRCUIT_REFILL,
            );
    }
    // Strangers (THREATS N20) share one budget of reservations (a renewal is a reservation
    // request too) and one of circuits: at most about twice the budget held at once, so funded
    // and trusted peers keep the rest.
    c.reservation_rate_limiters.push(Box::new(stranger_limiter(
        strangers.clone(),
        RELAY_STRANGER_RESERVATIONS,
        Duration::from_secs(3600),
    )));
    let stranger_circuits = if light {
        RELAY_LIGHT_STRANGER_CIRCUITS
    } else {
        RELAY_STRANGER_CIRCUITS
    };
    c.circuit_src_rate_limiters.push(Box::new(stranger_limiter(
        strangers.clone(),
        stranger_circuits,
        duration,
    )));
    // Funded accounts are cheap next to a consensus node's link (THREATS N20): on the light
    // relay they share one budget too; only the operator's trusted peers are not charged.
    if light {
        c.circuit_src_rate_limiters.push(Box::new(shared_limiter(
            strangers.clone(),
            RELAY_LIGHT_SHARED_CIRCUITS,
            duration,
        )));
    }
    c
}

/// `n` as libp2p's limiters take it (1 for 0).
fn at_least_one(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

/// Reservation requests all strangers together may make per hour (and at once).
pub const RELAY_STRANGER_RESERVATIONS: u32 = 32;
/// Circuits all strangers together may open per circuit lifetime (and at once) on the
/// operator's relay.
pub const RELAY_STRANGER_CIRCUITS: u32 = 16;

/// A relay rate limiter that lets vouched, trusted and committee peers through and charges
/// every stranger one shared bucket of `burst`, refilled over `interval`.
pub(crate) fn stranger_limiter(
    strangers: crate::quota::Strangers,
    burst: u32,
    interval: Duration,
) -> impl FnMut(PeerId, &libp2p::Multiaddr, std::time::Instant) -> bool + Send {
    let mut shared = crate::quota::Bucket::over(burst, interval);
    move |peer, _addr, now| !strangers.is_stranger(&peer) || shared.take(1, now)
}

/// A relay rate limiter that lets the operator's trusted peers and the genesis committee
/// through and charges every other peer, funded or not, one shared bucket of `burst`, refilled
/// over `interval`. The committee's members each watch a contract's parties and redial one
/// that is down every few seconds; each such CONNECT is charged before libp2p finds the
/// destination holds no reservation, so four of them from four addresses kept the bucket empty
/// for as long as a NATed party was down (review 9 M1). They still meet the per-peer and
/// per-IP limiters.
pub(crate) fn shared_limiter(
    strangers: crate::quota::Strangers,
    burst: u32,
    interval: Duration,
) -> impl FnMut(PeerId, &libp2p::Multiaddr, std::time::Instant) -> bool + Send {
    let mut shared = crate::quota::Bucket::over(burst, interval);
    move |peer, _addr, now| strangers.is_exempt(&peer) || shared.take(1, now)
}

/// AutoNAT v1: first probe soon after start (a node behind NAT should get its relay slot within
/// seconds), retried every 30 s until confident. `only_global` refuses to dial back private
/// addresses (off only in test labs whose "internet" uses reserved ranges).
fn autonat_config(only_global: bool) -> autonat::Config {
    autonat::Config {
        boot_delay: Duration::from_secs(2),
        retry_interval: Duration::from_secs(30),
        throttle_server_period: Duration::from_secs(5),
        only_global_ips: only_global,
        ..autonat::Config::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use libp2p::core::Endpoint;
    use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
    use libp2p::multiaddr::Protocol;

    fn dial_opts() -> DialOpts {
        DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::New,
        }
    }

    /// An address of its own for each `n` (libp2p's per-IP limiters key on it).
    fn ip(n: u32) -> libp2p::Multiaddr {
        format!("/ip4/11.0.{}.{}/tcp/4001", n / 250, n % 250)
            .parse()
            .unwrap()
    }

    /// Whether every one of `limiters` lets `peer` from address `n` through, as libp2p asks
    /// them (in order, stopping at the first refusal).
    fn admits(
        limiters: &mut [Box<dyn relay::RateLimiter>],
        peer: PeerId,
        n: u32,
        now: std::time::Instant,
    ) -> bool {
        limiters.iter_mut().all(|l| l.try_next(peer, &ip(n), now))
    }

    /// THREATS N20: the relay server's reservation limiters, as libp2p runs them (every one must
    /// agree), let strangers from many addresses through only up to their shared budget, while a
    /// vouched peer still gets its reservation; the same in both profiles.
    #[test]
    fn strangers_share_the_relay_s_reservations_and_vouched_peers_do_not() {
        let vouched = PeerId::random();
        let mut budget = crate::quota::StrangerBudget::new(1, 1, 1, 1);
        budget.vouch([vouched]);
        let now = std::time::Instant::now();
        for profile in [RelayProfile::Operator, RelayProfile::Light] {
            let mut c = relay_config(profile, &budget.classes());
            let limiters = &mut c.reservation_rate_limiters;
            let taken = (0..100)
                .filter(|n| admits(limiters, PeerId::random(), *n, now))
                .count();
            assert_eq!(
                taken, RELAY_STRANGER_RESERVATIONS as usize,
                "strangers' share ({profile:?})"
            );
            assert!(
                admits(limiters, vouched, 1_000, now),
                "a vouched peer is not charged ({profile:?})"
            );
        }
    }

    /// Review 6 M4: the relay an arbitrator serves without being asked for is smaller than the
    /// one an operator asks for: fewer circuits, fewer bytes and a shorter life for each, and
    /// three more circuit limiters (per peer, per IP, shared).
    #[test]
    fn the_default_relay_profile_is_smaller_than_the_operators() {
        let budget = crate::quota::StrangerBudget::new(1, 1, 1, 1);
        let light = relay_config(RelayProfile::Light, &budget.classes());
        let operator = relay_config(RelayProfile::Operator, &budget.classes());
        assert_eq!(light.max_circuits, 16);
        assert_eq!(light.max_circuit_bytes, 8 * 1024 * 1024);
        assert_eq!(light.max_circuit_duration, Duration::from_secs(600));
        assert!(light.max_circuits < operator.max_circuits);
        assert!(light.max_circuit_bytes < operator.max_circuit_bytes);
        assert!(light.max_circuit_duration < operator.max_circuit_duration);
        // The operator's profile is what `relay_server = true` always served.
        assert_eq!(operator.max_circuits, 64);
        assert_eq!(operator.max_circuit_bytes, 64 * 1024 * 1024);
        assert_eq!(operator.max_circuit_duration, Duration::from_secs(1800));
        assert_eq!(
            light.circuit_src_rate_limiters.len(),
            operator.circuit_src_rate_limiters.len() + 3
        );
        // Reservations carry no relayed bytes: the same in both.
        assert_eq!(light.max_reservations, operator.max_reservations);
        assert_eq!(
            light.reservation_rate_limiters.len(),
            operator.reservation_rate_limiters.len()
        );
    }

    /// Review 9 H1: libp2p refuses a peer's circuit request when the circuits it is part of,
    /// at either end, exceed `max_circuits_per_peer`, so circuits others open *to* an edge
    /// count against the edge. On the light relay that count never refuses anyone before the
    /// relay is full; on the operator's it takes 17 circuits involving one peer (more than the
    /// committee that watches an edge and its counterparties), and one peer still holds at
    /// most about a quarter of the relay.
    #[test]
    fn circuits_to_a_peer_leave_it_its_own_until_the_relay_is_full() {
        let budget = crate::quota::StrangerBudget::new(1, 1, 1, 1);
        let light = relay_config(RelayProfile::Light, &budget.classes());
        assert!(
            light.max_circuits_per_peer + 1 >= light.max_circuits,
            "a peer's count below the relay's size must never refuse it: {} of {}",
            light.max_circuits_per_peer,
            light.max_circuits
        );
        let operator = relay_config(RelayProfile::Operator, &budget.classes());
        assert!(operator.max_circuits_per_peer >= 16);
        assert!((operator.max_circuits_per_peer + 1) * 3 < operator.max_circuits);
    }

    /// Review 9 M1: the genesis committee is not charged the light relay's shared budget (nor
    /// the strangers'), only its per-peer and per-IP limiters: four members from four addresses
    /// asking twenty times each (redialling a NATed party that is down) get four circuits each
    /// and leave the shared budget whole, so a funded peer still gets a circuit.
    #[test]
    fn the_committee_redialling_a_party_that_is_down_leaves_the_light_relay_s_budget() {
        let committee: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let funded = PeerId::random();
        let mut budget =
            crate::quota::StrangerBudget::new(1, 1, 1, 1).committee(committee.iter().copied());
        // The committee holds no funded account here: without the exemption its members would
        // be strangers too.
        budget.vouch([funded]);
        let mut c = relay_config(RelayProfile::Light, &budget.classes());
        let limiters = &mut c.circuit_src_rate_limiters;
        let now = std::time::Instant::now();
        for (n, member) in (0u32..).zip(&committee) {
            let taken = (0..20)
                .filter(|_| admits(limiters, *member, n, now))
                .count();
            assert_eq!(
                taken, RELAY_LIGHT_PEER_CIRCUIT_BURST as usize,
                "a member still meets its per-peer limiter"
            );
        }
        assert!(
            admits(limiters, funded, 99, now),
            "the committee's redials left the shared budget to everyone else"
        );
    }

    /// Review 6 M4: on the light relay funded peers from as many addresses share one circuit
    /// budget (its bandwidth bound), and one peer or one address gets only its own few; the
    /// operator's trusted peers are not charged; the operator's profile charges funded peers
    /// per peer and per IP only, with libp2p's larger limits, as before.
    #[test]
    fn every_peer_but_the_trusted_shares_the_light_relay_s_circuits() {
        let trusted = PeerId::random();
        let funded: Vec<PeerId> = (0..100).map(|_| PeerId::random()).collect();
        let mut budget = crate::quota::StrangerBudget::new(1, 1, 1, 1).trust([trusted]);
        budget.vouch(funded.iter().copied());
        let now = std::time::Instant::now();
        let opened = |profile: RelayProfile| {
            let mut c = relay_config(profile, &budget.classes());
            let limiters = &mut c.circuit_src_rate_limiters;
            let taken = (0u32..)
                .zip(&funded)
                .filter(|(n, p)| admits(limiters, **p, *n, now))
                .count();
            (taken, admits(limiters, trusted, 1_000, now))
        };
        assert_eq!(
            opened(RelayProfile::Light),
            (RELAY_LIGHT_SHARED_CIRCUITS as usize, true),
            "funded peers share the light relay's circuits; a trusted peer is not charged"
        );
        assert_eq!(opened(RelayProfile::Operator), (funded.len(), true));
        // One funded peer from one address asking again and again.
        let again = |profile: RelayProfile| {
            let mut c = relay_config(profile, &budget.classes());
            (0..10)
                .filter(|_| admits(&mut c.circuit_src_rate_limiters, funded[0], 7, now))
                .count()
        };
        assert_eq!(
            again(RelayProfile::Light),
            RELAY_LIGHT_PEER_CIRCUIT_BURST as usize
        );
        assert_eq!(
            again(RelayProfile::Operator),
            10,
            "libp2p's own burst is 30"
        );
        // Twelve funded peers behind one address.
        let one_ip = |profile: RelayProfile| {
            let mut c = relay_config(profile, &budget.classes());
            funded
                .iter()
                .take(12)
                .filter(|p| admits(&mut c.circuit_src_rate_limiters, **p, 7, now))
                .count()
        };
        assert_eq!(
            one_ip(RelayProfile::Light),
            RELAY_LIGHT_IP_CIRCUIT_BURST as usize
        );
        assert_eq!(one_ip(RelayProfile::Operator), 12, "libp2p's own is 60");
    }

    #[tokio::test]
    async fn a_transport_never_dials_its_own_listen_addresses() {
        let mut t = NotSelf::new(tcp::tokio::Transport::new(tcp::Config::default()));
        let id = ListenerId::next();
        t.listen_on(id, "/ip4/0.0.0.0/tcp/0".parse().unwrap())
            .unwrap();
        // The unspecified address is reported per interface; loopback is one of them.
        let own = loop {
            let ev = futures::future::poll_fn(|cx| std::pin::Pin::new(&mut t).poll(cx)).await;
            if let TransportEvent::NewAddress { listen_addr, .. } = ev
                && listen_addr
                    .iter()
                    .next()
                    .is_some_and(|p| p == Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
            {
                break listen_addr;
            }
        };
        let peer = PeerId::random();
        for addr in [own.clone(), own.clone().with(Protocol::P2p(peer))] {
            assert!(
                matches!(
                    t.dial(addr.clone(), dial_opts()),
                    Err(TransportError::MultiaddrNotSupported(_))
                ),
                "{addr} is ours"
            );
        }
        // Another port on the same host is someone else's.
        let Some(Protocol::Tcp(port)) = own.iter().nth(1) else {
            panic!("{own}")
        };
        let other: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", port.wrapping_add(1))
            .parse()
            .unwrap();
        assert!(t.dial(other, dial_opts()).is_ok());
        // Once the listener is gone the address is no longer ours.
        assert!(t.remove_listener(id));
        assert!(t.dial(own, dial_opts()).is_ok());
    }
}
