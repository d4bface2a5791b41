//! The composed libp2p behaviour and swarm construction.

use std::time::Duration;

use libp2p::gossipsub::{self, MessageAuthenticity, ValidationMode};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, connection_limits, identify, kad, mdns, noise, ping, request_response,
    tcp, yamux,
};

use super::rpc_codec::{RPC_PROTOCOL, RpcCodec};
use super::{NetworkConfig, NetworkError};
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
    pub gossipsub: gossipsub::Behaviour,
    pub rpc: request_response::Behaviour<RpcCodec>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
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

pub(crate) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    cfg: &NetworkConfig,
) -> Result<Swarm<AgoraBehaviour>, NetworkError> {
    let setup = |e: String| NetworkError::Setup(e);
    let mdns_enabled = cfg.mdns;
    let gossip_heartbeat = cfg.gossip_heartbeat;
    let idle_ping = cfg.idle_ping_interval;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(e.to_string()))?
        .with_behaviour(|key| {
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
            let rpc = request_response::Behaviour::with_codec(
                RpcCodec,
                [(RPC_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            );
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("agora/{}", env!("CARGO_PKG_VERSION"))),
            );
            // Slow liveness and round-trip times of every direct peer; watched peers get fast
            // heartbeats on top (see `heartbeat`).
            let ping = ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(idle_ping)
                    .with_timeout(idle_ping * 2),
            );
            let peer_id = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad::Config::new(StreamProtocol::new("/ipfs/kad/1.0.0")),
            );
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
            Ok(AgoraBehaviour {
                limits,
                gossipsub,
                rpc,
                identify,
                ping,
                kad,
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| setup(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}
