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
    let cfg = NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetworkConfig::default()
    };
    let node_key = NodeKey::generate();
    let (node, _task) = crate::spawn(&node_key, cfg.clone(), cancel.clone())
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
