//! In-process protocol tests on five real swarms over loopback TCP.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use agora_devnet::Devnet;
use agora_market::KeySigner;
use agora_network::{Inbox, Interest, NetworkEvent, NetworkHandle};
use agora_wire::codec::{Envelope, Kind, MAX_GOSSIP_BYTES};
use tokio::time::timeout;

const TOPIC: &str = "agora/test/1";
const WAIT: Duration = Duration::from_secs(20);

/// Publishes until gossipsub has peers for the topic (subscriptions take a moment to spread).
async fn publish_when_ready(h: &NetworkHandle, payload: &[u8]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match h.broadcast(TOPIC, Kind::Raw, payload.to_vec()).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("publish never succeeded: {e}"),
        }
    }
}

async fn next_gossip(rx: &mut Inbox) -> Envelope {
    loop {
        if let NetworkEvent::Gossip { envelope, .. } = rx.recv().await {
            return (*envelope).clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_connect_gossip_and_reject_bad_messages() {
    let net = Devnet::builder().nodes(5).spawn().await.unwrap();
    // Every node finds every other one (bootstrap via node0, then Kademlia).
    net.wait_connected(4, WAIT).await.unwrap();

    let handles: Vec<_> = (0..5).map(|i| net.handle(i).unwrap()).collect();
    let mut rxs = Vec::new();
    for h in &handles {
        rxs.push(h.inbox(Interest::new("test").topic(TOPIC).presence()));
        h.subscribe(TOPIC).await.unwrap();
    }

    // A valid message from node 2 reaches all four others, with its author intact. Gossipsub
    // is best-effort while the mesh forms: a node whose subscription had reached no one when a
    // message was published misses it for good (lazy gossip repeats a message for three
    // heartbeats only, 600 ms here), which a loaded machine can outlast. So node 2 publishes
    // numbered greetings until every other node has delivered one.
    let mut hello: Vec<Option<Envelope>> = vec![None; handles.len()];
    let mut greeted: Vec<HashSet<Vec<u8>>> = vec![HashSet::new(); handles.len()];
    let deadline = tokio::time::Instant::now() + WAIT;
    for n in 0u32.. {
        let payload = format!("hello agora {n}");
        publish_when_ready(&handles[2], payload.as_bytes()).await;
        let round = tokio::time::Instant::now() + Duration::from_secs(1);
        for (i, rx) in rxs.iter_mut().enumerate() {
            while i != 2 && hello[i].is_none() {
                let Ok(env) = tokio::time::timeout_at(round, next_gossip(rx)).await else {
                    break;
                };
                assert!(env.payload.starts_with(b"hello agora "), "node{i}: {env:?}");
                assert_eq!(env.sender, handles[2].node_id());
                greeted[i].insert(env.payload.clone());
                hello[i] = Some(env);
            }
        }
        let missing: Vec<usize> = (0..handles.len())
            .filter(|&i| i != 2 && hello[i].is_none())
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no greeting reached nodes {missing:?}"
        );
    }
    // Re-injected by node 1 it is the same message (ids are content hashes): refused as a
    // duplicate, delivered nowhere a second time (checked while waiting for the marker below).
    let again = hello[1].take().unwrap().to_bytes();
    assert!(handles[1].publish_bytes(TOPIC, again).await.is_err());

    // Forged: node 1 publishes an envelope whose payload was changed after signing.
    let signer1 = KeySigner::from_secret([0u8; 32]);
    let mut forged = Envelope::seal(&signer1, Kind::Raw, 1, 1, b"pay me".to_vec());
    forged.sender = handles[1].node_id();
    handles[1]
        .publish_bytes(TOPIC, forged.to_bytes())
        .await
        .unwrap();
    // Replay: a correctly signed envelope by someone else, from long ago, re-injected by node 1
    // (outside the freshness window, so no longer covered by the duplicate filter).
    let other = KeySigner::from_seed(99);
    let old = Envelope::seal(&other, Kind::Raw, 1, 1, b"not mine".to_vec());
    handles[1]
        .publish_bytes(TOPIC, old.to_bytes())
        .await
        .unwrap();
    // Dated in the future, beyond any clock skew.
    let ahead = agora_wire::now_ms() + 10 * agora_wire::codec::GOSSIP_MAX_SKEW_MS;
    let future = Envelope::seal(&other, Kind::Raw, ahead, 2, b"from the future".to_vec());
    handles[1]
        .publish_bytes(TOPIC, future.to_bytes())
        .await
        .unwrap();
    // Oversized: validly signed, but above the gossip limit.
    let signer_big = KeySigner::from_seed(5);
    let big = Envelope::seal(
        &signer_big,
        Kind::Raw,
        1,
        1,
        vec![7u8; MAX_GOSSIP_BYTES + 10],
    );
    handles[1]
        .publish_bytes(TOPIC, big.to_bytes())
        .await
        .unwrap();
    // Every node that received them rejected them: wait until the rejections are counted and
    // node 1's gossip score went negative at some peer (the invalid messages cost it enough to
    // be graylisted, so from now on its peers ignore it).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut rejected = 0;
        let mut penalised = false;
        for (i, h) in handles.iter().enumerate() {
            if i == 1 {
                continue;
            }
            rejected += h.stats().await.unwrap().gossip_rejected;
            if h.peer_score(handles[1].peer_id())
                .await
                .unwrap()
                .is_some_and(|s| s < 0.0)
            {
                penalised = true;
            }
        }
        if rejected >= 3 && penalised {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad messages were not all rejected (rejected {rejected}, penalised {penalised})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A valid message from an honest node still reaches everyone, and none of the bad ones was
    // ever delivered to the application (only later greetings may come first, each once).
    publish_when_ready(&handles[3], b"marker").await;
    for (i, rx) in rxs.iter_mut().enumerate() {
        if i == 3 {
            continue;
        }
        let env = timeout(WAIT, async {
            loop {
                let env = next_gossip(rx).await;
                if !env.payload.starts_with(b"hello agora ") {
                    return env;
                }
                assert!(
                    greeted[i].insert(env.payload.clone()),
                    "node{i} delivered a greeting twice"
                );
            }
        })
        .await
        .expect("marker arrives");
        assert_eq!(env.payload, b"marker", "node{i} delivered a bad message");
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reports_up_and_down_and_restart_rejoins() {
    let mut net = Devnet::builder()
        .nodes(3)
        .presence(Duration::from_millis(100), Duration::from_millis(600))
        .spawn()
        .await
        .unwrap();
    net.wait_connected(2, WAIT).await.unwrap();
    let watcher = net.handle(0).unwrap();
    let target = net.node_id(2);
    let mut events = watcher.inbox(Interest::new("test").presence());

    // Node 2 becomes reachable (its first heartbeat may have been seen before we subscribed).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let table = watcher.presence().await.unwrap();
        if table.iter().any(|p| p.node == target && p.reachable) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node2 never became reachable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    net.stop(2).await;
    let down = timeout(WAIT, async {
        loop {
            if let NetworkEvent::Presence(agora_network::PresenceEvent::Down { node, .. }) =
                events.recv().await
                && node == target
            {
                return;
            }
        }
    })
    .await;
    assert!(down.is_ok(), "node2's absence was reported");

    net.restart(2).await.unwrap();
    let up = timeout(WAIT, async {
        loop {
            if let NetworkEvent::Presence(agora_network::PresenceEvent::Up { node, .. }) =
                events.recv().await
                && node == target
            {
                return;
            }
        }
    })
    .await;
    assert!(up.is_ok(), "node2 came back after restart");
    net.shutdown().await;
}

/// Connections above `target_peers` that carry no gossipsub mesh and no watch are closed: the
/// bootstrap node does not stay connected to everyone, the trimmed peers are not reported down,
/// and gossip still reaches every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_connections_are_trimmed_and_gossip_still_reaches_all() {
    let n = 32;
    let net = Devnet::builder()
        .nodes(n)
        .committee(1)
        .target_peers(3)
        .trim_grace(Duration::from_millis(500))
        .spawn()
        .await
        .unwrap();
    net.wait_connected(2, WAIT).await.unwrap();
    let handles: Vec<_> = (0..n).map(|i| net.handle(i).unwrap()).collect();
    let mut rxs = Vec::new();
    for h in &handles {
        rxs.push(h.inbox(Interest::new("test").topic(TOPIC).presence()));
        h.subscribe(TOPIC).await.unwrap();
    }
    // Node 0 is every node's bootstrap peer; trimming takes it well below everyone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let peers = handles[0].peers().await.unwrap().len();
        if peers < (n - 1) * 3 / 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node0 kept {peers} of {} connections",
            n - 1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    publish_when_ready(&handles[5], b"after trimming").await;
    for (i, rx) in rxs.iter_mut().enumerate() {
        if i == 5 {
            continue;
        }
        let got = timeout(WAIT, async {
            loop {
                match rx.recv().await {
                    NetworkEvent::Gossip { envelope, .. }
                        if envelope.payload == b"after trimming" =>
                    {
                        return true;
                    }
                    NetworkEvent::Presence(agora_network::PresenceEvent::Down { node, .. }) => {
                        panic!("node{i}: live peer {node} reported down after trimming")
                    }
                    _ => {}
                }
            }
        })
        .await;
        assert!(got.is_ok(), "node{i} missed the message after trimming");
    }
    net.shutdown().await;
}
