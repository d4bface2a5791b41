//! A bare hostile swarm against a node's DHT: identify pushes of fresh addresses against its
//! routing table (THREATS N17) and provider records for made-up keys against its provider
//! store (N19).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::Multiaddr;
use libp2p::swarm::SwarmEvent;
use tokio_util::sync::CancellationToken;

use crate::behaviour::AgoraBehaviour;
use crate::keys::NodeKey;
use crate::{NetworkConfig, NetworkHandle, behaviour};
use libp2p::{PeerId, Swarm};

const WAIT: Duration = Duration::from_secs(30);

/// A node listening on loopback, and the address a stranger dials.
async fn node(cancel: &CancellationToken) -> (NetworkHandle, PeerId, Multiaddr, NetworkConfig) {
    node_metered(cancel, None).await
}

/// [`node`], recording libp2p's metrics into `metrics`.
async fn node_metered(
    cancel: &CancellationToken,
    metrics: Option<libp2p::metrics::Metrics>,
) -> (NetworkHandle, PeerId, Multiaddr, NetworkConfig) {
    let cfg = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetworkConfig::default()
    };
    let node_key = NodeKey::generate();
    let (node, _task) = crate::spawn_with_metrics(&node_key, cfg.clone(), cancel.clone(), metrics)
        .await
        .unwrap();
    let node_peer = node_key.libp2p_keypair().public().to_peer_id();
    let deadline = Instant::now() + WAIT;
    let addr = loop {
        if let Some(a) = node.listen_addrs().await.unwrap().into_iter().next() {
            break a;
        }
        assert!(Instant::now() < deadline, "the node listens");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (node, node_peer, addr, cfg)
}

/// A bare swarm of the same behaviour, driven by hand, connected to `peer` at `addr`.
async fn stranger(peer: PeerId, addr: Multiaddr, cfg: NetworkConfig) -> Swarm<AgoraBehaviour> {
    let cfg = NetworkConfig {
        listen: Vec::new(),
        ..cfg
    };
    let mut s = behaviour::build_swarm(
        NodeKey::generate().libp2p_keypair(),
        &cfg,
        crate::quota::Strangers::default(),
        std::sync::Arc::new(agora_storage::wire::FrameBudget::unbounded()),
    )
    .unwrap();
    s.behaviour_mut().kad.add_address(&peer, addr.clone());
    s.dial(addr).unwrap();
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } = s.select_next_some().await
                && peer_id == peer
            {
                break;
            }
        }
    })
    .await;
    assert!(connected.is_ok(), "the stranger connects");
    s
}

/// Drives `s` for `d`.
async fn drive(s: &mut Swarm<AgoraBehaviour>, d: Duration) {
    let _ = tokio::time::timeout(d, async {
        loop {
            s.select_next_some().await;
        }
    })
    .await;
}
/// Identify pushes the stranger sends.
const PUSHES: u8 = 40;
/// Fresh addresses in each.
const PER_PUSH: u8 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_identify_pushes_do_not_grow_the_routing_table() {
    let cancel = CancellationToken::new();
    let (node, node_peer, addr, cfg) = node(&cancel).await;
    let mut stranger = stranger(node_peer, addr, cfg).await;
    let mut announced: Vec<Multiaddr> = Vec::new();
    for push in 0..PUSHES {
        for a in announced.drain(..) {
            stranger.remove_external_address(&a);
        }
        for i in 0..PER_PUSH {
            let a: Multiaddr = format!("/ip4/11.{push}.{i}.1/tcp/4001").parse().unwrap();
            stranger.add_external_address(a.clone());
            announced.push(a);
        }
        stranger.behaviour_mut().identify.push([node_peer]);
        // Drive the stranger until the push is out.
        drive(&mut stranger, Duration::from_millis(100)).await;
    }
    // Every push after the first replaced the previous eight: all but the newest few went.
    let want = u64::from(PUSHES - 2) * u64::from(PER_PUSH);
    let deadline = Instant::now() + WAIT;
    let pruned = loop {
        let _ = tokio::time::timeout(Duration::from_millis(50), stranger.select_next_some()).await;
        let pruned = node.stats().await.unwrap().kad_addrs_pruned;
        if pruned >= want || Instant::now() > deadline {
            break pruned;
        }
    };
    assert!(
        pruned >= want,
        "{pruned} of the stranger's {} stale addresses dropped from the routing table",
        u64::from(PUSHES) * u64::from(PER_PUSH)
    );
    cancel.cancel();
}

/// THREATS N19: a stranger announcing itself as the provider of 100 more made-up keys than its
/// share gets its share stored; the rest are refused and counted, and the node still announces
/// its own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_provider_records_are_bounded_and_the_node_still_provides() {
    const KEYS: u32 = crate::event_loop::MAX_KEYS_PER_PROVIDER as u32 + 100;
    let cancel = CancellationToken::new();
    let (node, node_peer, addr, cfg) = node(&cancel).await;
    let mut stranger = stranger(node_peer, addr, cfg).await;
    for n in 0..KEYS {
        let key = libp2p::kad::RecordKey::new(&format!("made-up-{n}"));
        stranger.behaviour_mut().kad.start_providing(key).unwrap();
    }
    let want = u64::from(KEYS) - crate::event_loop::MAX_KEYS_PER_PROVIDER as u64;
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        drive(&mut stranger, Duration::from_millis(100)).await;
        let refused = node.stats().await.unwrap().kad_providers_refused;
        if refused >= want || Instant::now() > deadline {
            break refused;
        }
    };
    assert_eq!(refused, want, "all but the stranger's share refused");
    node.start_providing(b"the node's own file".to_vec())
        .await
        .expect("the node still announces its own keys");
    cancel.cancel();
}

/// An agent string cut inside a multi-byte character does not panic (it killed the swarm's task).
#[test]
fn an_agent_string_is_cut_at_a_character_boundary() {
    let agent = format!("{}é", "a".repeat(127));
    let kept = crate::event_loop::agent_of(&agent);
    assert!(
        kept.starts_with(&"a".repeat(127)) && !kept.contains('é'),
        "{kept}"
    );
    assert_eq!(crate::event_loop::agent_of("agora/0.1"), "agora/0.1");
}

/// A stranger announcing 60 listen addresses of 60 different protocol stacks adds at most as
/// many `libp2p_identify_remote_listen_addresses` series as the node keeps addresses of a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_made_up_address_stacks_add_few_metric_series() {
    let cancel = CancellationToken::new();
    let mut registry = libp2p::metrics::Registry::default();
    let metrics = crate::p2p_metrics(&mut registry);
    let (_node, node_peer, addr, cfg) = node_metered(&cancel, Some(metrics)).await;
    let mut stranger = stranger(node_peer, addr, cfg).await;
    let mut stacks = 0;
    for base in [
        "/ip4/11.0.0.1",
        "/ip6/2001:db8::1",
        "/dns4/a.example",
        "/dns6/b.example",
        "/dns/c.example",
    ] {
        for transport in ["/tcp/4001", "/udp/4001/quic-v1"] {
            for suffix in ["", "/ws", "/wss", "/tls/ws", "/p2p-circuit", "/http"] {
                let a: Multiaddr = format!("{base}{transport}{suffix}").parse().unwrap();
                stranger.add_external_address(a);
                stacks += 1;
            }
        }
    }
    stranger.behaviour_mut().identify.push([node_peer]);
    let series = |registry: &libp2p::metrics::Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with("libp2p_identify_remote_listen_addresses{"))
            .count()
    };
    // Wait for the push to be recorded (its first series), then a little more.
    let deadline = Instant::now() + WAIT;
    while series(&registry) == 0 && Instant::now() < deadline {
        drive(&mut stranger, Duration::from_millis(100)).await;
    }
    drive(&mut stranger, Duration::from_millis(500)).await;
    let n = series(&registry);
    assert!(n > 0, "the stranger's addresses were recorded");
    assert!(
        n <= crate::event_loop::MAX_METERED_ADDRS,
        "{n} series for {stacks} announced stacks"
    );
    cancel.cancel();
}
