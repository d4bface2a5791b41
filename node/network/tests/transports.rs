//! Transports and NAT traversal between in-process swarms on loopback: two nodes that speak
//! only QUIC exchange a request; two nodes that cannot reach each other directly (they listen
//! on nothing but a relay circuit) find out from AutoNAT that they are private, reserve a slot on
//! a relay, and exchange requests through it.

use std::time::{Duration, Instant};

use agora_network::keys::NodeKey;
use agora_network::multiaddr::Protocol;
use agora_network::{
    Interest, Multiaddr, NetworkConfig, NetworkEvent, NetworkHandle, NetworkStats, PeerId,
    RelayProfile,
};
use agora_wire::codec::{Envelope, Kind};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

async fn start(cfg: NetworkConfig, cancel: &CancellationToken) -> NetworkHandle {
    start_as(&NodeKey::generate(), cfg, cancel).await
}

/// [`start`] with the node's key (its requests must be signed by it).
async fn start_as(key: &NodeKey, cfg: NetworkConfig, cancel: &CancellationToken) -> NetworkHandle {
    let (net, _task) = agora_network::spawn(key, cfg, cancel.clone())
        .await
        .expect("network starts");
    net
}

/// Evaluates `$check` (an `Option`, may `.await`) every 50 ms until it is `Some`, or panics
/// after [`WAIT`] naming `$what`.
macro_rules! wait_for {
    ($what:expr, $check:expr) => {{
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = $check {
                break v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {}", $what);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

async fn listen_addr(net: &NetworkHandle, want: &str) -> Multiaddr {
    wait_for!(
        "a listen address",
        net.listen_addrs()
            .await
            .ok()
            .and_then(|l| l.into_iter().find(|a| a.to_string().contains(want)))
    )
}

/// `peer` as `net` reports it, if connected.
async fn connected(net: &NetworkHandle, peer: PeerId) -> Option<agora_network::PeerInfo> {
    net.peers()
        .await
        .ok()?
        .into_iter()
        .find(|p| p.peer_id == peer.to_string())
}

async fn stats(net: &NetworkHandle) -> NetworkStats {
    net.stats().await.expect("stats")
}

/// Answers every probe request `net` receives with its payload reversed.
fn serve_probes(net: &NetworkHandle, cancel: &CancellationToken) {
    let mut inbox = net.inbox(Interest::new("probe").requests(Kind::Probe));
    let net = net.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = inbox.recv() => ev,
            };
            if let NetworkEvent::Request { id, envelope, .. } = ev {
                let mut answer = envelope.payload.clone();
                answer.reverse();
                let key = NodeKey::generate();
                let env =
                    Envelope::seal(key.signer(), Kind::Probe, agora_wire::now_ms(), 1, answer);
                let _ = net.respond(id, &env).await;
            }
        }
    });
}

/// Asks `to` from `from`, whose key is `key`.
async fn probe(from: &NetworkHandle, key: &NodeKey, to: PeerId) -> Result<Vec<u8>, String> {
    let env = Envelope::seal(
        key.signer(),
        Kind::Probe,
        agora_wire::now_ms(),
        1,
        b"ping".to_vec(),
    );
    from.request(to, &env)
        .await
        .map(|e| e.payload)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn two_nodes_connect_and_exchange_requests_over_quic_only() {
    let cancel = CancellationToken::new();
    let quic_only = || NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")],
        ..NetworkConfig::default()
    };
    let a = start(quic_only(), &cancel).await;
    let b_key = NodeKey::generate();
    let b = start_as(&b_key, quic_only(), &cancel).await;
    serve_probes(&a, &cancel);
    let addr = listen_addr(&a, "quic-v1").await;
    assert!(
        a.listen_addrs()
            .await
            .expect("addrs")
            .iter()
            .all(|x| !x.to_string().contains("/tcp/")),
        "a listens on QUIC only"
    );
    b.dial(addr.with(Protocol::P2p(a.peer_id())))
        .await
        .expect("dial");
    let peer = wait_for!("b connected to a", connected(&b, a.peer_id()).await);
    assert!(
        peer.addr.contains("/quic-v1"),
        "connected over {}",
        peer.addr
    );
    assert!(peer.direct && !peer.relayed);
    assert_eq!(probe(&b, &b_key, a.peer_id()).await, Ok(b"gnip".to_vec()));
    cancel.cancel();
}

#[tokio::test]
async fn private_nodes_reserve_a_relay_slot_and_exchange_requests_through_it() {
    let cancel = CancellationToken::new();
    let relay = start(
        NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
            // The light relay an arbitrator serves by default (the operator's differs only in
            // its limits).
            relay_server: Some(RelayProfile::Light),
            // Loopback is not a global address: let AutoNAT probe it anyway.
            autonat_only_global_ips: false,
            ..NetworkConfig::default()
        },
        &cancel,
    )
    .await;
    // A relay serves only once it has an external address (configured, or confirmed by AutoNAT).
    let relay_addr = listen_addr(&relay, "/tcp/").await;
    relay
        .add_external_address(relay_addr.clone())
        .await
        .expect("external");
    let bootstrap = relay_addr.with(Protocol::P2p(relay.peer_id()));
    // The edges listen on nothing: they can only be reached through the relay, and AutoNAT's
    // dial-back to the address the relay observed (an ephemeral TCP port) fails: private.
    let edge = || NetworkConfig {
        bootstrap: vec![bootstrap.clone()],
        autonat_only_global_ips: false,
        ..NetworkConfig::default()
    };
    let a = start(edge(), &cancel).await;
    let b_key = NodeKey::generate();
    let b = start_as(&b_key, edge(), &cancel).await;
    serve_probes(&a, &cancel);
    let circuit = wait_for!(
        "a relayed listen address",
        a.listen_addrs().await.ok().and_then(|l| l
            .into_iter()
            .find(|x| x.iter().any(|p| p == Protocol::P2pCircuit)))
    );
    let sa = stats(&a).await;
    assert_eq!(sa.nat_status, "private", "{sa:?}");
    assert_eq!(sa.relay_reservations_held, 1, "{sa:?}");
    // `<relay>/p2p/R/p2p-circuit/p2p/A`: the relay client names the destination itself.
    assert_eq!(circuit.iter().last(), Some(Protocol::P2p(a.peer_id())));
    b.dial(circuit).await.expect("dial through the relay");
    let peer = wait_for!(
        "b connected to a through the relay",
        connected(&b, a.peer_id()).await
    );
    assert!(peer.relayed, "{peer:?}");
    // The accepting side knows too, although libp2p gives an inbound circuit only
    // `/p2p/<peer>` as its remote address (it used to show such a connection as direct).
    let seen = wait_for!(
        "a connected to b through the relay",
        connected(&a, b.peer_id()).await
    );
    assert!(seen.relayed, "{seen:?}");
    assert!(seen.addr.contains("/p2p-circuit"), "{seen:?}");
    for _ in 0..3 {
        assert_eq!(probe(&b, &b_key, a.peer_id()).await, Ok(b"gnip".to_vec()));
    }
    let sr = stats(&relay).await;
    assert!(sr.relay_reservations_accepted >= 2, "{sr:?}");
    assert!(sr.relay_circuits_accepted >= 1, "{sr:?}");
    cancel.cancel();
}

/// The TCP port `net` sees `peer` connected from.
async fn remote_tcp_port(net: &NetworkHandle, peer: PeerId) -> Option<u16> {
    let info = connected(net, peer).await?;
    let addr: Multiaddr = info.addr.parse().ok()?;
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

/// With port reuse (the default) a TCP dial leaves from the dialer's listening port; with
/// `tcp_port_reuse: false` from a fresh one (what the Shadow simulator needs: it refuses a
/// second socket bound to the listening port, and every dial after the first failed).
#[tokio::test]
async fn tcp_dials_leave_from_the_listening_port_unless_port_reuse_is_off() {
    let cancel = CancellationToken::new();
    let tcp_only = |reuse: bool| NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        tcp_port_reuse: reuse,
        ..NetworkConfig::default()
    };
    let a = start(tcp_only(true), &cancel).await;
    let a_addr = listen_addr(&a, "/tcp/").await;
    for reuse in [true, false] {
        let b = start(tcp_only(reuse), &cancel).await;
        let b_port = listen_addr(&b, "/tcp/")
            .await
            .iter()
            .find_map(|p| match p {
                Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .expect("a tcp port");
        b.dial(a_addr.clone().with(Protocol::P2p(a.peer_id())))
            .await
            .expect("dial");
        let seen = wait_for!("a connected to b", remote_tcp_port(&a, b.peer_id()).await);
        if reuse {
            assert_eq!(
                seen, b_port,
                "with port reuse b dials from its listening port"
            );
        } else {
            assert_ne!(seen, b_port, "without port reuse b dials from a fresh port");
        }
    }
    cancel.cancel();
}
