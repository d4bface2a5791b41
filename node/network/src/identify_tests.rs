//! A stranger's identify pushes against the node's routing table (THREATS N10): each push
//! announces eight fresh public addresses; the node's Kademlia entry for the stranger follows
//! its address book (the newest few) instead of keeping every address ever announced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::Multiaddr;
use libp2p::swarm::SwarmEvent;
use tokio_util::sync::CancellationToken;

use crate::keys::NodeKey;
use crate::{NetworkConfig, behaviour};

const WAIT: Duration = Duration::from_secs(30);
/// Identify pushes the stranger sends.
const PUSHES: u8 = 40;
/// Fresh addresses in each.
const PER_PUSH: u8 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_identify_pushes_do_not_grow_the_routing_table() {
    let cancel = CancellationToken::new();
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
    // The stranger: a bare swarm of the same behaviour, driven by hand.
    let stranger_cfg = NetworkConfig {
        listen: Vec::new(),
        ..cfg
    };
    let mut stranger =
        behaviour::build_swarm(NodeKey::generate().libp2p_keypair(), &stranger_cfg).unwrap();
    stranger.dial(addr).unwrap();
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                stranger.select_next_some().await
                && peer_id == node_peer
            {
                break;
            }
        }
    })
    .await;
    assert!(connected.is_ok(), "the stranger connects");
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
        let _ = tokio::time::timeout(Duration::from_millis(100), async {
            loop {
                stranger.select_next_some().await;
            }
        })
        .await;
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
