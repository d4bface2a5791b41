use std::sync::Arc;
use std::time::Duration;

use agora_market::NodeId;
use agora_wire::codec::{Envelope, Kind};
use libp2p::PeerId;

use super::*;

fn env(kind: Kind) -> Arc<Envelope> {
    let signer = agora_market::KeySigner::from_seed(7);
    Arc::new(Envelope::seal(&signer, kind, 1, 1, Vec::new()))
}

fn gossip(topic: &str) -> NetworkEvent {
    NetworkEvent::Gossip {
        topic: topic.to_string(),
        envelope: env(Kind::Raw),
        via: PeerId::random(),
    }
}

fn request(id: u64, kind: Kind) -> NetworkEvent {
    NetworkEvent::Request {
        id,
        peer: PeerId::random(),
        envelope: env(kind),
    }
}

fn up(n: u8, at: u64) -> NetworkEvent {
    NetworkEvent::Presence(PresenceEvent::Up {
        node: NodeId([n; 32]),
        at,
    })
}

fn down(n: u8, at: u64) -> NetworkEvent {
    NetworkEvent::Presence(PresenceEvent::Down {
        node: NodeId([n; 32]),
        last_seen: at,
        at,
    })
}

fn stats(t: &RouteTable) -> NetworkStats {
    let mut s = NetworkStats::default();
    t.fill(&mut s);
    s
}

/// The next event, or `None` if nothing arrives soon.
async fn next(inbox: &mut Inbox) -> Option<NetworkEvent> {
    tokio::time::timeout(Duration::from_millis(50), inbox.recv())
        .await
        .ok()
}

fn is_down(ev: &NetworkEvent) -> bool {
    matches!(ev, NetworkEvent::Presence(PresenceEvent::Down { .. }))
}

#[tokio::test]
async fn each_message_goes_only_to_the_inbox_that_registered_it() {
    let t = Arc::new(RouteTable::default());
    let mut a = t.register(Interest::new("a").topic("t/a").requests(Kind::Deal));
    let mut b = t.register(Interest::new("b").topic("t/b").presence());
    assert!(t.gossip("t/a", gossip("t/a")));
    assert!(t.request(Kind::Deal, request(1, Kind::Deal)).is_ok());
    t.peer_change(up(1, 5));
    assert!(matches!(
        next(&mut a).await,
        Some(NetworkEvent::Request { id: 1, .. })
    ));
    assert!(
        matches!(next(&mut a).await, Some(NetworkEvent::Gossip { topic, .. }) if topic == "t/a")
    );
    assert!(next(&mut a).await.is_none(), "a asked for no presence");
    assert!(matches!(
        next(&mut b).await,
        Some(NetworkEvent::Presence(_))
    ));
    assert!(next(&mut b).await.is_none());
}

#[tokio::test]
async fn unrouted_traffic_is_refused_and_counted() {
    let t = Arc::new(RouteTable::default());
    let _a = t.register(Interest::new("a").topic("t/a"));
    assert!(!t.gossip("t/none", gossip("t/none")));
    assert_eq!(
        t.request(Kind::Probe, request(1, Kind::Probe)),
        Err(RequestRefused::Unrouted)
    );
    let s = stats(&t);
    assert_eq!((s.gossip_unrouted, s.rpc_unrouted), (1, 1));
}

#[tokio::test]
async fn a_full_request_route_refuses_and_counts_instead_of_dropping_silently() {
    let t = Arc::new(RouteTable::default());
    let mut a = t.register(Interest::new("deals").requests(Kind::Deal));
    for i in 0..REQUEST_ROUTE_CAPACITY as u64 {
        assert!(t.request(Kind::Deal, request(i, Kind::Deal)).is_ok());
    }
    assert_eq!(
        t.request(Kind::Deal, request(9999, Kind::Deal)),
        Err(RequestRefused::Busy("deals"))
    );
    assert_eq!(stats(&t).rpc_route_busy, 1);
    // Everything accepted is delivered, in order.
    for i in 0..REQUEST_ROUTE_CAPACITY as u64 {
        assert!(matches!(next(&mut a).await, Some(NetworkEvent::Request { id, .. }) if id == i));
    }
    // Room again once the task caught up.
    assert!(t.request(Kind::Deal, request(1, Kind::Deal)).is_ok());
}

#[tokio::test]
async fn a_second_inbox_of_a_kind_takes_requests_the_first_has_no_room_for() {
    let t = Arc::new(RouteTable::default());
    let _a = t.register(Interest::new("a").requests(Kind::Deal));
    let mut b = t.register(Interest::new("b").requests(Kind::Deal));
    for i in 0..REQUEST_ROUTE_CAPACITY as u64 {
        t.request(Kind::Deal, request(i, Kind::Deal)).unwrap();
    }
    t.request(Kind::Deal, request(7777, Kind::Deal)).unwrap();
    assert!(matches!(
        next(&mut b).await,
        Some(NetworkEvent::Request { id: 7777, .. })
    ));
}

#[tokio::test]
async fn a_slow_gossip_reader_loses_only_its_own_topic_counted_per_topic() {
    let t = Arc::new(RouteTable::default());
    let _slow = t.register(Interest::new("slow").topic("t/slow"));
    let mut other = t.register(
        Interest::new("other")
            .topic("t/other")
            .requests(Kind::Deal)
            .presence(),
    );
    for _ in 0..GOSSIP_ROUTE_CAPACITY + 10 {
        t.gossip("t/slow", gossip("t/slow"));
    }
    t.peer_change(down(3, 9));
    t.request(Kind::Deal, request(1, Kind::Deal)).unwrap();
    assert!(t.gossip("t/other", gossip("t/other")));
    let s = stats(&t);
    assert_eq!(s.gossip_route_dropped, 10);
    assert_eq!(s.gossip_route_dropped_by_topic.get("t/slow"), Some(&10));
    assert_eq!(s.gossip_route_dropped_by_topic.get("t/other"), None);
    assert!(next(&mut other).await.is_some_and(|e| is_down(&e)));
    assert!(matches!(
        next(&mut other).await,
        Some(NetworkEvent::Request { .. })
    ));
    assert!(matches!(
        next(&mut other).await,
        Some(NetworkEvent::Gossip { .. })
    ));
}

#[tokio::test]
async fn presence_is_coalesced_per_peer_but_a_down_is_never_lost() {
    let t = Arc::new(RouteTable::default());
    let mut a = t.register(Interest::new("orchestrator").presence());
    // Thousands of flaps of one peer while the reader sleeps: at most two changes wait.
    for i in 0..5000 {
        t.peer_change(down(1, 2 * i));
        t.peer_change(up(1, 2 * i + 1));
    }
    // Another peer goes down once.
    t.peer_change(down(2, 1));
    let first = next(&mut a).await.unwrap();
    let second = next(&mut a).await.unwrap();
    let third = next(&mut a).await.unwrap();
    assert!(next(&mut a).await.is_none());
    assert!(is_down(&first), "{first:?}");
    assert!(
        matches!(
            second,
            NetworkEvent::Presence(PresenceEvent::Up { at: 9999, .. })
        ),
        "the latest state comes last: {second:?}"
    );
    assert!(is_down(&third));
    assert_eq!(stats(&t).peer_events_coalesced, 10_000 - 2);
}

#[tokio::test]
async fn connection_changes_keep_their_order_per_peer() {
    let t = Arc::new(RouteTable::default());
    let mut a = t.register(Interest::new("fetch").connections().presence());
    let p = PeerId::random();
    t.peer_change(NetworkEvent::Connected(p));
    t.peer_change(NetworkEvent::Disconnected(p));
    t.peer_change(up(1, 1));
    assert!(matches!(next(&mut a).await, Some(NetworkEvent::Connected(x)) if x == p));
    assert!(matches!(next(&mut a).await, Some(NetworkEvent::Disconnected(x)) if x == p));
    assert!(matches!(
        next(&mut a).await,
        Some(NetworkEvent::Presence(_))
    ));
}

#[test]
fn the_peer_queue_is_bounded_by_the_number_of_peers() {
    let mut q = PeerQueue::default();
    for i in 0..MAX_PEER_KEYS {
        let p = PeerId::random();
        assert_eq!(q.push(NetworkEvent::Connected(p)), Pushed::Queued, "{i}");
    }
    assert_eq!(
        q.push(NetworkEvent::Connected(PeerId::random())),
        Pushed::Dropped
    );
    assert!(q.pop().is_some());
    assert_eq!(
        q.push(NetworkEvent::Connected(PeerId::random())),
        Pushed::Queued
    );
}

#[tokio::test]
async fn dropping_an_inbox_removes_its_routes_and_a_late_topic_can_be_added() {
    let t = Arc::new(RouteTable::default());
    let a = t.register(Interest::new("a").topic("t/a").requests(Kind::Deal));
    drop(a);
    assert!(!t.gossip("t/a", gossip("t/a")));
    assert_eq!(
        t.request(Kind::Deal, request(1, Kind::Deal)),
        Err(RequestRefused::Unrouted)
    );
    let mut b = t.register(Interest::new("market"));
    b.add_topic("region/x");
    assert!(t.gossip("region/x", gossip("region/x")));
    assert!(next(&mut b).await.is_some());
}

#[tokio::test]
async fn recv_is_woken_by_a_change_that_arrives_while_it_waits() {
    let t = Arc::new(RouteTable::default());
    let mut a = t.register(Interest::new("a").presence());
    let t2 = t.clone();
    let waker = tokio::spawn(async move {
        tokio::task::yield_now().await;
        t2.peer_change(down(4, 4));
    });
    let ev = tokio::time::timeout(Duration::from_secs(5), a.recv())
        .await
        .expect("woken");
    assert!(is_down(&ev));
    waker.await.unwrap();
}

proptest::proptest! {
    /// Whatever changes two peers go through while the reader sleeps: at most two wait per
    /// peer, each peer's last change read is its latest state, a peer that went down at least
    /// once is read down at least once, and one peer's changes never reorder.
    #[test]
    fn coalescing_keeps_the_latest_state_and_every_down(
        changes in proptest::collection::vec((0u8..2, proptest::bool::ANY), 0..200)
    ) {
        let mut q = PeerQueue::default();
        for (i, (peer, up_now)) in changes.iter().enumerate() {
            let at = i as u64;
            q.push(if *up_now { up(*peer, at) } else { down(*peer, at) });
        }
        let mut read: Vec<NetworkEvent> = Vec::new();
        while let Some(ev) = q.pop() {
            read.push(ev);
        }
        for peer in 0u8..2 {
            let pushed: Vec<(usize, bool)> = changes
                .iter()
                .enumerate()
                .filter(|(_, (p, _))| *p == peer)
                .map(|(i, (_, u))| (i, *u))
                .collect();
            let got: Vec<(u64, bool)> = read
                .iter()
                .filter_map(|ev| match ev {
                    NetworkEvent::Presence(PresenceEvent::Up { node, at })
                        if *node == NodeId([peer; 32]) => Some((*at, true)),
                    NetworkEvent::Presence(PresenceEvent::Down { node, at, .. })
                        if *node == NodeId([peer; 32]) => Some((*at, false)),
                    _ => None,
                })
                .collect();
            proptest::prop_assert!(got.len() <= 2);
            proptest::prop_assert_eq!(got.is_empty(), pushed.is_empty());
            if let Some((i, u)) = pushed.last() {
                proptest::prop_assert_eq!(got.last().copied(), Some((*i as u64, *u)));
            }
            if pushed.iter().any(|(_, u)| !u) {
                proptest::prop_assert!(got.iter().any(|(_, u)| !u), "a Down was lost: {:?}", got);
            }
            proptest::prop_assert!(got.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 != w[1].1));
        }
    }
}
