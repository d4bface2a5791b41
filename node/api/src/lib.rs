//! The local control API: HTTP + JSON on a loopback port, protected by a bearer token stored
//! in the data directory (mode 0600). The CLI and the devnet tooling are its clients
//! ([`client::ApiClient`]).
//!
//! Owns: the routes, their request and reply types, the client, and the files through which a
//! client finds a running node (`api.addr`, `api.token`, `p2p.addr`, `radio.addr` in the data
//! directory). May depend on every driver crate (it serves their handles) and on
//! `agora-network`, `agora-wire` and the pure crates; only the daemon, the devnet and the binary
//! depend on it.
#![forbid(unsafe_code)]

pub mod client;
pub mod dashboard;
pub mod edge;
pub mod fleet;
pub mod ledger;
pub mod market;
pub mod metrics;
pub mod services;
pub mod storage;

/// File with the node's p2p multiaddrs (one per line, each ending in `/p2p/<peer id>`).
pub const P2P_ADDR_FILE: &str = "p2p.addr";
/// File with the control API's `host:port`.
pub const API_ADDR_FILE: &str = "api.addr";
/// File with the radio's UDP `host:port` (when the node has a radio).
pub const RADIO_ADDR_FILE: &str = "radio.addr";
/// File with the control API bearer token (mode 0600).
pub const API_TOKEN_FILE: &str = "api.token";
pub use metrics::METRICS_ADDR_FILE;

use std::path::PathBuf;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use agora_network::{NetworkHandle, NetworkStats, PeerInfo, PeerPresence};
use agora_wire::codec::Kind;

/// Shared state of the API handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The swarm handle.
    /// A network of one: no bootstrap peers and nobody else in the genesis, so the node is
    /// ready without a connected peer (`agora devnet up --nodes 1`).
    pub alone: bool,
    pub network: NetworkHandle,
    /// Bearer token every request must carry.
    pub token: String,
    /// When the node started.
    pub started: Instant,
    /// Cancelling it stops the node.
    pub cancel: CancellationToken,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The node's label.
    pub name: String,
    /// The market driver, when running.
    pub market: Option<agora_market_driver::MarketHandle>,
    /// The ledger replica, when the node has a genesis.
    pub ledger: Option<agora_ledger::LedgerHandle>,
    /// The node's storage and exchange, when running.
    pub storage: Option<agora_exchange::StorageHandle>,
    /// The sensor radio, when configured.
    pub radio: Option<agora_radio::RadioHandle>,
    /// The orchestrator, when the node has a ledger.
    pub orchestrator: Option<agora_orchestrator::OrchestratorHandle>,
    /// The service host, when running.
    pub services: Option<agora_hosting::ServiceHost>,
    /// The fleet task (deployments), when running.
    pub fleet: Option<agora_fleet::FleetHandle>,
    /// The node's metrics, when `[metrics] listen` is set.
    pub metrics: Option<metrics::Metrics>,
}

/// `GET /v1/status`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReply {
    /// Label.
    pub name: String,
    /// Full node id.
    pub node_id: String,
    /// Short node id.
    pub short_id: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// p2p addresses.
    pub p2p_addrs: Vec<String>,
    /// Connected peers.
    pub peers: usize,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Software version.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
    /// Network counters.
    pub stats: NetworkStats,
}

/// `POST /v1/gossip` body: publish a diagnostic message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GossipRequest {
    /// Topic.
    pub topic: String,
    /// Text to send.
    pub text: String,
}

/// `POST /v1/peers/connect` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// Multiaddr ending in `/p2p/<peer id>`.
    pub addr: String,
}

/// `POST /v1/peers/disconnect` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DisconnectRequest {
    /// libp2p peer id, or a multiaddr ending in `/p2p/<peer id>`.
    pub peer: String,
}

/// Answer of `connect` / `disconnect`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerChangeReply {
    /// libp2p peer id.
    pub peer_id: String,
    /// Agora node id (base58), when the peer id carries an ed25519 key.
    pub node_id: Option<String>,
    /// Whether the peer is connected after the call.
    pub connected: bool,
}

/// How long `connect` waits for the connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Error body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ApiErrorBody { error: self.1 })).into_response()
    }
}

impl<E: std::error::Error> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

pub(crate) fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            format!(
                "missing or wrong API token; the CLI reads it from {}/api.token",
                state.data_dir.display()
            ),
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<StatusReply>, ApiError> {
    authorize(&s, &headers)?;
    let id = s.network.node_id();
    let peer = s.network.peer_id();
    // What it listens on now: an unspecified listen address (`0.0.0.0`) is reported per
    // interface as the interfaces come and go, a relay reservation as `…/p2p-circuit/p2p/<us>`.
    let p2p_addrs = s
        .network
        .listen_addrs()
        .await?
        .into_iter()
        .map(|a| agora_network::with_peer(a, peer).to_string())
        .collect();
    Ok(Json(StatusReply {
        name: s.name.clone(),
        node_id: id.to_string(),
        short_id: id.short(),
        peer_id: peer.to_string(),
        p2p_addrs,
        peers: s.network.peers().await?.len(),
        uptime_s: s.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: s.data_dir.display().to_string(),
        stats: s.network.stats().await?,
    }))
}

async fn peers(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<PeerInfo>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(s.network.peers().await?))
}

async fn presence(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<PeerPresence>>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(s.network.presence().await?))
}

/// The peer an address leads to: its last `/p2p/` (in a relayed address
/// `<relay>/p2p/RELAY/p2p-circuit/p2p/TARGET` the first one names the relay).
fn peer_of(addr: &agora_network::Multiaddr) -> Option<agora_network::PeerId> {
    addr.iter()
        .filter_map(|p| match p {
            agora_network::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .last()
}

fn change_reply(peer: agora_network::PeerId, connected: bool) -> PeerChangeReply {
    PeerChangeReply {
        peer_id: peer.to_string(),
        node_id: agora_network::keys::node_id_of(&peer).map(|n| n.to_string()),
        connected,
    }
}

async fn connect(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<ConnectRequest>,
) -> Result<Json<PeerChangeReply>, ApiError> {
    authorize(&s, &headers)?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let text = req.addr.trim();
    // A peer id alone is `/p2p/<id>`: dialled at the addresses this node knows for it.
    let addr: agora_network::Multiaddr = text
        .parse()
        .or_else(|_| {
            text.parse::<agora_network::PeerId>().map(|p| {
                agora_network::Multiaddr::empty().with(agora_network::multiaddr::Protocol::P2p(p))
            })
        })
        .map_err(|_| {
            bad(format!(
                "'{}' is neither a multiaddr nor a peer id; pass one like \
                 /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... (the P2P column of `agora devnet \
                 status`, or `agora status` on that node), or the peer id alone for a peer \
                 this node already knows addresses of",
                req.addr
            ))
        })?;
    let peer = peer_of(&addr).ok_or_else(|| {
        bad(format!(
            "{addr} names no peer; append /p2p/<peer id> (the peer id is in `agora status` on \
             that node) so the connection can be authenticated"
        ))
    })?;
    if peer == s.network.peer_id() {
        return Err(bad(format!("{addr} is this node itself")));
    }
    let connected = |peers: &[PeerInfo]| peers.iter().any(|p| p.peer_id == peer.to_string());
    if connected(&s.network.peers().await?) {
        return Ok(Json(change_reply(peer, true)));
    }
    // Its own connection changes (never lost), until this request ends.
    let mut events = s
        .network
        .inbox(agora_network::Interest::new("api connect").connections());
    let bare = agora_network::peer_only(&addr).is_some();
    s.network.dial(addr.clone()).await.map_err(|e| {
        if bare {
            bad(format!(
                "{e}: this node knows no address of {peer}; pass its multiaddr \
                 (/ip4/.../tcp/.../p2p/{peer})"
            ))
        } else {
            bad(e.to_string())
        }
    })?;
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(agora_network::NetworkEvent::Connected(p)) if p == peer => break,
            Ok(_) => {
                if connected(&s.network.peers().await?) {
                    break;
                }
            }
            Err(_) => {
                if connected(&s.network.peers().await?) {
                    break;
                }
                return Err(ApiError(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "could not connect to {addr} within {} s; check that the node runs \
                         (`agora status` there), that the address and peer id are current \
                         (ports change when a node restarts without a fixed network.listen), \
                         and that no firewall is in the way",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
    }
    Ok(Json(change_reply(peer, true)))
}

async fn disconnect(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<DisconnectRequest>,
) -> Result<Json<PeerChangeReply>, ApiError> {
    authorize(&s, &headers)?;
    let text = req.peer.trim();
    let peer = text
        .parse::<agora_network::PeerId>()
        .ok()
        .or_else(|| text.parse().ok().as_ref().and_then(peer_of))
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "'{text}' is neither a peer id (12D3KooW...) nor a multiaddr ending in \
                     /p2p/<peer id>; `agora peers --json` lists the connected ones"
                ),
            )
        })?;
    if !s.network.disconnect(peer).await? {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{peer} is not connected; `agora peers --json` lists the connected peers"),
        ));
    }
    Ok(Json(change_reply(peer, false)))
}

async fn gossip(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(req): Json<GossipRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    s.network
        .broadcast(&req.topic, Kind::Raw, req.text.into_bytes())
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(serde_json::json!({ "published": true })))
}

async fn shutdown(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    s.cancel.cancel();
    Ok(Json(serde_json::json!({ "stopping": true })))
}

/// Serves the API until `cancel` fires.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState, cancel: CancellationToken) {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/peers/connect", post(connect))
        .route("/v1/peers/disconnect", post(disconnect))
        .route("/v1/presence", get(presence))
        .route("/v1/gossip", post(gossip))
        .route("/v1/shutdown", post(shutdown))
        .merge(market::routes())
        .merge(ledger::routes())
        .merge(storage::routes())
        .merge(edge::routes())
        .merge(services::routes())
        .merge(fleet::routes())
        .with_state(state.clone())
        .merge(metrics::probe_routes(state.clone(), state.metrics.clone()))
        .merge(dashboard::routes(state.clone(), cancel.clone()));
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(e) = res {
        tracing::warn!(error = %e, "control API stopped with an error");
    }
}

#[cfg(test)]
mod peer_of_tests {
    use super::peer_of;

    #[test]
    fn a_relayed_address_leads_to_its_target_not_to_the_relay() {
        let relay = "12D3KooWMsLdbMA9kXyiund3DBbczNZD6UBomkiSNqUfpoAVjrU9";
        let target = "12D3KooWK8aqFyR2kkgxctmbEKKefLfC36jipZUWNSv8diizSaiR";
        let circuit: agora_network::Multiaddr =
            format!("/ip4/203.0.113.2/udp/4001/quic-v1/p2p/{relay}/p2p-circuit/p2p/{target}")
                .parse()
                .expect("multiaddr");
        assert_eq!(
            peer_of(&circuit).map(|p| p.to_string()).as_deref(),
            Some(target)
        );
        let direct: agora_network::Multiaddr = format!("/ip4/203.0.113.2/tcp/4001/p2p/{relay}")
            .parse()
            .expect("multiaddr");
        assert_eq!(
            peer_of(&direct).map(|p| p.to_string()).as_deref(),
            Some(relay)
        );
        let none: agora_network::Multiaddr =
            "/ip4/203.0.113.2/tcp/4001".parse().expect("multiaddr");
        assert_eq!(peer_of(&none), None);
    }
}
