//! Presence from direct connections: watched peers are redialled and get Up/Down events.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_devnet::Devnet;
use agora_market::NodeId;
use agora_network::{Inbox, Interest, NetworkEvent, NetworkHandle, PresenceEvent};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

async fn next_presence(rx: &mut Inbox, target: NodeId, want_up: bool) -> PresenceEvent {
    loop {
        if let NetworkEvent::Presence(ev) = rx.recv().await {
            match &ev {
                PresenceEvent::Up { node, .. } if want_up && *node == target => return ev,
                PresenceEvent::Down { node, .. } if !want_up && *node == target => return ev,
                _ => {}
            }
        }
    }
}

async fn connected(h: &NetworkHandle, peer_id: &str) -> bool {
    h.peers()
        .await
        .unwrap()
        .iter()
        .any(|p| p.peer_id == peer_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_peer_is_redialled_and_reported_down_and_up() {
    let mut net = Devnet::builder()
        .nodes(3)
        // Node 0 is the only arbitrator and each node stops dialing discovered peers once it has
        // one connection: nodes 1 and 2 have no traffic of their own that keeps them connected,
        // so only the watch can.
        .committee(1)
        .target_peers(1)
        .presence(Duration::from_millis(100), Duration::from_millis(600))
        .spawn()
        .await
        .unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let watcher = net.handle(1).unwrap();
    let target = net.node_id(2);
    let target_peer = net.handle(2).unwrap().peer_id().to_string();
    let mut events = watcher.inbox(Interest::new("test").presence());

    // Node 1 watches node 2 (address from Kademlia via node 0): reachable and watched.
    watcher.watch(target).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !watcher
        .presence()
        .await
        .unwrap()
        .iter()
        .any(|p| p.node == target && p.watched && p.reachable)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watched node2 never became reachable at node1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connected(&watcher, &target_peer).await);

    // Node 2 stops: the closed connection is redialled, refused, and reported down.
    net.stop(2).await;
    timeout(WAIT, next_presence(&mut events, target, false))
        .await
        .expect("node2's stop is reported down at node1");
    assert!(
        watcher
            .presence()
            .await
            .unwrap()
            .iter()
            .any(|p| p.node == target && p.watched && !p.reachable)
    );

    // Node 2 restarts without dialing anyone: the watcher's redial reconnects it.
    net.restart_from(2, &[]).await.unwrap();
    timeout(WAIT, next_presence(&mut events, target, true))
        .await
        .expect("the watcher redials the restarted node and reports it up");
    assert!(connected(&watcher, &target_peer).await);

    // Stopped again: down again, with the last proof of life before the verdict.
    net.stop(2).await;
    let down = timeout(WAIT, next_presence(&mut events, target, false))
        .await
        .expect("the watched node's second stop is reported down");
    let PresenceEvent::Down { last_seen, at, .. } = down else {
        unreachable!("next_presence returns a Down here");
    };
    assert!(last_seen <= at);

    watcher.unwatch(target).await.unwrap();
    assert!(
        watcher
            .presence()
            .await
            .unwrap()
            .iter()
            .any(|p| p.node == target && !p.watched)
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_itself_is_refused() {
    let net = Devnet::builder().nodes(1).spawn().await.unwrap();
    let h = net.handle(0).unwrap();
    assert!(
        h.watch(h.node_id()).await.is_err(),
        "a node cannot watch itself"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_watched_peers_get_fast_heartbeats() {
    let net = Devnet::builder()
        .nodes(3)
        .committee(1)
        .presence(Duration::from_millis(100), Duration::from_millis(600))
        .spawn()
        .await
        .unwrap();
    net.wait_connected(2, WAIT).await.unwrap();
    let watcher = net.handle(1).unwrap();
    let (watched, other) = (net.node_id(2), net.node_id(0));
    watcher.watch(watched).await.unwrap();
    let since = agora_wire::now_ms();
    // The network's own evidence that beats keep reaching the watched peer, waited for and not
    // timed (a loaded machine only makes it slower): it stays reachable (600 ms without an
    // answer declares it down) and its last proof of life takes 5 new values (beats every
    // 100 ms; the 15 s idle ping gives 2 at most in the 20 s wait), two of them at most 250 ms
    // apart (only a ping or a beat answered moves it: beats every 400 ms would need an answer
    // 150 ms late and the next one prompt; a slow sampler only misses values, so it waits
    // longer). The other peer is sampled for 2.5 s at least, long enough to see its last proof
    // of life age past 1 s (this can only fail by its being refreshed too often, never by a
    // slow machine).
    let mut beats = std::collections::BTreeSet::new();
    let closest = |beats: &std::collections::BTreeSet<u64>| {
        beats
            .iter()
            .zip(beats.iter().skip(1))
            .map(|(a, b)| b - a)
            .min()
            .unwrap_or(u64::MAX)
    };
    let mut oldest_other = 0u64;
    let started = tokio::time::Instant::now();
    while beats.len() < 5
        || closest(&beats) > 250
        || started.elapsed() < Duration::from_millis(2500)
    {
        assert!(
            started.elapsed() < WAIT,
            "the watched peer's last proof of life took {} new values in {WAIT:?}, the closest \
             {} ms apart",
            beats.len(),
            closest(&beats)
        );
        let table = watcher.presence().await.unwrap();
        let now = agora_wire::now_ms();
        let find = |node: NodeId| table.iter().find(|p| p.node == node).unwrap();
        let (w, o) = (find(watched), find(other));
        assert!(w.reachable && o.reachable, "both peers must stay reachable");
        if w.last_seen > since {
            beats.insert(w.last_seen);
        }
        oldest_other = oldest_other.max(now.saturating_sub(o.last_seen));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        oldest_other > 1000,
        "an unwatched peer should only get idle pings (oldest {oldest_other} ms)"
    );
    net.shutdown().await;
}

/// A watched peer behind a slow link (600 ms each way: heartbeats come back after 1.2 s, more
/// than the 1 s presence timeout) answers every beat and is never declared down: its timeout
/// follows its measured round trip (`agora_network::presence::watched_timeout`). With the fixed
/// timeout it flapped down and up at every beat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_peer_on_a_slow_link_is_not_declared_down_while_it_answers() {
    let net = Devnet::builder()
        .nodes(2)
        .committee(1)
        .presence(Duration::from_millis(250), Duration::from_millis(1000))
        .wan(Some(agora_network::wan::WanProfile {
            latency: Duration::from_millis(600),
            jitter: Duration::ZERO,
            loss_ppm: 0,
        }))
        .spawn()
        .await
        .unwrap();
    net.wait_connected(1, Duration::from_secs(60))
        .await
        .unwrap();
    let watcher = net.handle(1).unwrap();
    let target = net.node_id(0);
    let target_peer = net.handle(0).unwrap().peer_id().to_string();
    // The connection's ping has measured the round trip (as on any connection that carries
    // gossip before someone watches it).
    let rtt = timeout(Duration::from_secs(30), async {
        loop {
            let peers = watcher.peers().await.unwrap();
            if let Some(ms) = peers
                .iter()
                .find(|p| p.peer_id == target_peer)
                .and_then(|p| p.rtt_ms)
            {
                return ms;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the ping measured the round trip");
    assert!(rtt >= 1_150, "the link is slow: {rtt} ms");
    let mut events = watcher.inbox(Interest::new("test").presence());
    watcher.watch(target).await.unwrap();
    // Eight seconds of heartbeats: about six answered beats, none within the fixed timeout.
    let watched = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut downs = 0;
    while let Ok(ev) = tokio::time::timeout_at(watched, events.recv()).await {
        if matches!(ev, NetworkEvent::Presence(PresenceEvent::Down { node, .. }) if node == target)
        {
            downs += 1;
        }
    }
    let table = watcher.presence().await.unwrap();
    let p = table.iter().find(|p| p.node == target).unwrap();
    assert_eq!(downs, 0, "a slow but answering peer was declared down");
    assert!(p.reachable && p.watched, "{p:?}");
    assert!(
        agora_wire::now_ms().saturating_sub(p.last_seen) < 3_000,
        "its heartbeats are answered: {p:?}"
    );
    net.shutdown().await;
}
