//! Routed inbound traffic (#14 §2): a task that stops reading its gossip topic loses only its
//! own gossip (counted per topic); another task on the same node still gets every request and
//! every presence change.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_devnet::Devnet;
use agora_market::{KeySigner, Signer};
use agora_network::{Inbox, Interest, NetworkEvent, NetworkHandle, PresenceEvent};
use agora_wire::codec::{Envelope, Kind};
use tokio::time::timeout;

const FLOOD: &str = "agora/test/flood";

/// Waits on `owner` for the first request `wanted` accepts, answers it on `node` with a Raw
/// envelope carrying `reply`, and returns the request.
async fn answer_one(
    owner: &mut Inbox,
    node: &NetworkHandle,
    wanted: impl Fn(&Envelope) -> bool,
    reply: &[u8],
) -> std::sync::Arc<Envelope> {
    loop {
        if let NetworkEvent::Request { id, envelope, .. } = owner.recv().await
            && wanted(&envelope)
        {
            let answer = Envelope::seal(
                &KeySigner::from_seed(0),
                Kind::Raw,
                agora_wire::now_ms(),
                1,
                reply.to_vec(),
            );
            node.respond(id, &answer).await.unwrap();
            return envelope;
        }
    }
}
const WAIT: Duration = Duration::from_secs(30);

/// Node `i`'s own signing key (requests speak for the peer that sends them).
fn signer(net: &Devnet, i: usize) -> KeySigner {
    agora_network::keys::NodeKey::load(&net.data_dir(i))
        .unwrap()
        .signer()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gossip_reader_costs_no_other_task_a_request_or_a_presence_down() {
    let mut net = Devnet::builder()
        .nodes(3)
        .committee(1)
        .presence(Duration::from_millis(100), Duration::from_millis(600))
        .spawn()
        .await
        .unwrap();
    net.wait_connected(2, WAIT).await.unwrap();
    let (a, b, c) = (
        net.handle(0).unwrap(),
        net.handle(1).unwrap(),
        net.handle(2).unwrap(),
    );
    // On node 0: a task that never reads its flood topic, and one that owns Raw requests and
    // presence.
    let _slow = a.inbox(Interest::new("slow reader").topic(FLOOD));
    let mut owner = a.inbox(Interest::new("owner").requests(Kind::Raw).presence());
    a.subscribe(FLOOD).await.unwrap();
    b.subscribe(FLOOD).await.unwrap();
    a.watch(net.node_id(2)).await.unwrap();

    // Node 1 floods the topic until node 0's slow route overflows.
    let mut n = 0u64;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for _ in 0..200 {
            n += 1;
            let _ = b
                .broadcast(FLOOD, Kind::Raw, n.to_le_bytes().to_vec())
                .await;
        }
        let s = a.stats().await.unwrap();
        if s.gossip_route_dropped_by_topic
            .get(FLOOD)
            .copied()
            .unwrap_or(0)
            > 0
        {
            assert_eq!(
                s.gossip_route_dropped,
                s.gossip_route_dropped_by_topic[FLOOD]
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 0's slow route never overflowed after {n} messages: {s:?}"
        );
        tokio::task::yield_now().await;
    }

    // A request from node 2 still reaches its owner, which answers it.
    let signer = signer(&net, 2);
    let ask = Envelope::seal(
        &signer,
        Kind::Raw,
        agora_wire::now_ms(),
        1,
        b"ping".to_vec(),
    );
    let a_peer = a.peer_id();
    let asking = tokio::spawn(async move { c.request(a_peer, &ask).await });
    let answered = timeout(
        WAIT,
        answer_one(&mut owner, &a, |e| e.payload == b"ping", b"pong"),
    )
    .await;
    assert!(answered.is_ok(), "the request never reached its owner");
    let reply = timeout(WAIT, asking).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.payload, b"pong");

    // Node 2 stops: the owner hears its Down.
    let target = net.node_id(2);
    net.stop(2).await;
    let down = timeout(WAIT, async {
        loop {
            if let NetworkEvent::Presence(PresenceEvent::Down { node, .. }) = owner.recv().await
                && node == target
            {
                return;
            }
        }
    })
    .await;
    assert!(down.is_ok(), "node 2's Down was lost");
    let s = a.stats().await.unwrap();
    assert_eq!(s.rpc_route_busy, 0, "{s:?}");
    assert_eq!(s.peer_events_dropped, 0, "{s:?}");
    net.shutdown().await;
}

/// A large request is checked beside the swarm loop: a valid one still reaches its owner and is
/// answered, a forged one is rejected and counted, and both are counted as checked aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_are_checked_beside_the_loop() {
    let net = Devnet::builder()
        .nodes(2)
        .committee(1)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let (a, b) = (net.handle(0).unwrap(), net.handle(1).unwrap());
    let mut owner = a.inbox(Interest::new("owner").requests(Kind::Raw));
    let before = a.stats().await.unwrap();
    let big = vec![7u8; 200 * 1024];
    let ask = Envelope::seal(
        &signer(&net, 1),
        Kind::Raw,
        agora_wire::now_ms(),
        1,
        big.clone(),
    );
    let mut forged = ask.to_bytes();
    let mid = forged.len() / 2;
    forged[mid] ^= 1;

    let a_peer = a.peer_id();
    let b2 = b.clone();
    let asking = tokio::spawn(async move { b2.request(a_peer, &ask).await });
    let answered = timeout(WAIT, answer_one(&mut owner, &a, |_| true, b"ok")).await;
    let asked = answered.expect("the large request never reached its owner");
    assert_eq!(asked.payload.len(), big.len());
    let reply = timeout(WAIT, asking).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.payload, b"ok");

    let refused = timeout(WAIT, b.request_bytes(a_peer, forged))
        .await
        .unwrap();
    assert!(refused.is_err(), "a forged request was answered");
    let s = a.stats().await.unwrap();
    assert_eq!(s.rpc_verified_aside, before.rpc_verified_aside + 2, "{s:?}");
    assert_eq!(s.rpc_rejected, before.rpc_rejected + 1, "{s:?}");
    net.shutdown().await;
}

/// A request speaks for the peer that sent it (THREATS N11): one signed by another key —
/// a stranger's fresh identity over one connection, or a third party's envelope replayed —
/// is refused before it reaches its owner and counted; the same request signed by the
/// sending node's own key is answered. (The devnet's node `i` holds `KeySigner::from_seed(i)`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_signed_by_another_node_than_its_peer_is_refused() {
    let net = Devnet::builder()
        .nodes(2)
        .committee(1)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let (a, b) = (net.handle(0).unwrap(), net.handle(1).unwrap());
    let mut owner = a.inbox(Interest::new("owner").requests(Kind::Raw));
    let before = a.stats().await.unwrap();
    let seal = |key: &KeySigner, payload: &[u8]| {
        Envelope::seal(key, Kind::Raw, agora_wire::now_ms(), 1, payload.to_vec())
    };
    let a_peer = a.peer_id();
    // Node 0's own key (its envelope replayed back at it) and a fresh stranger's key.
    for other in [signer(&net, 0), KeySigner::from_seed(7)] {
        let refused = timeout(WAIT, b.request(a_peer, &seal(&other, b"not mine")))
            .await
            .unwrap();
        assert!(
            refused.is_err(),
            "a request signed by {} was answered",
            other.node_id().short()
        );
    }
    let s = a.stats().await.unwrap();
    assert_eq!(s.rpc_rejected, before.rpc_rejected + 2, "{s:?}");

    let b2 = b.clone();
    let mine = seal(&signer(&net, 1), b"mine");
    let asking = tokio::spawn(async move { b2.request(a_peer, &mine).await });
    let asked = timeout(WAIT, answer_one(&mut owner, &a, |_| true, b"ok"))
        .await
        .expect("the request never reached its owner");
    assert_eq!(
        asked.payload, b"mine",
        "only the sender's own request got through"
    );
    let reply = timeout(WAIT, asking).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.payload, b"ok");
    net.shutdown().await;
}

/// THREATS N13: a peer that asks for large answers and never reads them pinned each answer
/// in the swarm until its request timed out (30 s). Answers handed to the swarm and not yet
/// written are bounded per peer (two of the largest) and for all: beyond, an answer is
/// withheld, its request fails at once, and it is counted; once the peer's streams go, the
/// budget is free again and its next request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_peer_never_reads_are_bounded() {
    const STREAMS: usize = 6;
    const ANSWER: usize = 3 * 1024 * 1024;
    let net = Devnet::builder()
        .nodes(2)
        .committee(1)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let (a, b) = (net.handle(0).unwrap(), net.handle(1).unwrap());
    let mut owner = a.inbox(Interest::new("owner").requests(Kind::Raw));
    let before = a.stats().await.unwrap();
    let key = signer(&net, 1);
    let ask = |n: u64| Envelope::seal(&key, Kind::Raw, agora_wire::now_ms(), n, b"big".to_vec());
    // Node 1 sends its requests on raw streams and never reads them.
    let mut control = b.stream_control();
    let mut streams = Vec::new();
    for n in 0..STREAMS {
        let mut s = control
            .open_stream(a.peer_id(), agora_network::RPC_PROTOCOL)
            .await
            .unwrap();
        agora_storage::wire::write_frame_async(
            &mut s,
            &ask(n as u64 + 1).to_bytes(),
            agora_wire::codec::MAX_RPC_BYTES,
        )
        .await
        .unwrap();
        streams.push(s);
    }
    // Node 0 answers each with 3 MiB.
    let mut outcomes = Vec::new();
    while outcomes.len() < STREAMS {
        let ev = timeout(WAIT, owner.recv())
            .await
            .expect("every request arrives");
        if let NetworkEvent::Request { id, .. } = ev {
            let big = Envelope::seal(&signer(&net, 0), Kind::Raw, 1, 1, vec![7u8; ANSWER]);
            outcomes.push(a.respond(id, &big).await.is_ok());
        }
    }
    let handed = outcomes.iter().filter(|ok| **ok).count();
    assert_eq!(
        handed, 2,
        "two 3 MiB answers fit the peer's 8 MiB: {outcomes:?}"
    );
    let s = a.stats().await.unwrap();
    assert_eq!(
        s.rpc_responses_withheld,
        before.rpc_responses_withheld + (STREAMS - 2) as u64,
        "{s:?}"
    );
    // The streams go: their answers fail, the budget is free, a read request is answered.
    drop(streams);
    let b2 = b.clone();
    let a_peer = a.peer_id();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let env = ask(100);
        let asking = tokio::spawn({
            let b2 = b2.clone();
            async move { b2.request(a_peer, &env).await }
        });
        let ev = timeout(WAIT, owner.recv())
            .await
            .expect("the request arrives");
        let NetworkEvent::Request { id, .. } = ev else {
            continue;
        };
        let big = Envelope::seal(&signer(&net, 0), Kind::Raw, 1, 1, vec![7u8; ANSWER]);
        let handed = a.respond(id, &big).await.is_ok();
        let answer = timeout(WAIT, asking).await.unwrap().unwrap();
        if handed {
            assert_eq!(answer.unwrap().payload.len(), ANSWER);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the budget never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    net.shutdown().await;
}

/// THREATS N16: a peer that announces large requests and sends them slowly made this node hold
/// all it uploaded until the streams timed out (30 s), on up to 100 streams per connection.
/// Frames still being read share one budget (16 MiB here): forty streams each announce 4 MiB
/// and send 1 MiB; at most sixteen of them can grow that far, the others fail and are counted,
/// and the budget is never exceeded. A small request is answered meanwhile (its first 4 KiB
/// are free); once the streams go the budget is whole again and a 2 MiB request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_sent_requests_beyond_the_budget_are_refused() {
    use futures::AsyncWriteExt;
    const STREAMS: usize = 40;
    const SENT: usize = 1024 * 1024;
    const BUDGET: usize = 16 * 1024 * 1024;
    let net = Devnet::builder()
        .nodes(2)
        .committee(1)
        .inbound_frame_bytes(BUDGET)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let (a, b) = (net.handle(0).unwrap(), net.handle(1).unwrap());
    let mut owner = a.inbox(Interest::new("owner").requests(Kind::Raw));
    let before = a.stats().await.unwrap();
    // Node 1 opens raw request streams, announces a whole request on each, sends 1 MiB of it
    // and stops; each writer keeps its stream (a refused one is reset: the write fails).
    let mut control = b.stream_control();
    let mut writers = Vec::new();
    for _ in 0..STREAMS {
        let mut s = control
            .open_stream(a.peer_id(), agora_network::RPC_PROTOCOL)
            .await
            .unwrap();
        let mut head = agora_storage::wire::encode_varint(agora_wire::codec::MAX_RPC_BYTES as u64);
        head.resize(head.len() + SENT, 7);
        writers.push(tokio::spawn(async move {
            let _ = s.write_all(&head).await;
            let _ = s.flush().await;
            s
        }));
    }
    let refused_at_least = (STREAMS - BUDGET / SENT) as u64;
    let s = timeout(WAIT, async {
        loop {
            let s = a.stats().await.unwrap();
            let refused = s.frames_over_budget - before.frames_over_budget;
            if refused >= refused_at_least && s.frame_bytes_held >= (BUDGET / 2) as u64 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the partly sent requests were never refused");
    assert!(s.frame_bytes_held <= BUDGET as u64, "{s:?}");
    // A small request still passes: the first 4 KiB of a frame take nothing of the budget.
    let a_peer = a.peer_id();
    let key = signer(&net, 1);
    let ask = |seq: u64, payload: Vec<u8>| {
        Envelope::seal(&key, Kind::Raw, agora_wire::now_ms(), seq, payload)
    };
    let small = ask(1, b"small".to_vec());
    let b2 = b.clone();
    let asking = tokio::spawn(async move { b2.request(a_peer, &small).await });
    timeout(
        WAIT,
        answer_one(&mut owner, &a, |e| e.payload == b"small", b"ok"),
    )
    .await
    .expect("a small request was not read beside the held budget");
    let reply = timeout(WAIT, asking).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.payload, b"ok");
    // The streams go: every frame's share comes back, and a large request passes.
    drop(writers);
    timeout(WAIT, async {
        while a.stats().await.unwrap().frame_bytes_held > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the budget never came back");
    let large = ask(2, vec![9u8; 2 * 1024 * 1024]);
    let b2 = b.clone();
    let asking = tokio::spawn(async move { b2.request(a_peer, &large).await });
    let asked = timeout(
        WAIT,
        answer_one(&mut owner, &a, |e| e.payload.len() > 1024, b"ok"),
    )
    .await
    .expect("the large request never reached its owner");
    assert_eq!(asked.payload.len(), 2 * 1024 * 1024);
    let reply = timeout(WAIT, asking).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.payload, b"ok");
    net.shutdown().await;
}

/// Publishes `bytes` on `topic` from `node`, retrying while no peer's subscription is known yet.
async fn publish_when_subscribed(node: &NetworkHandle, topic: &str, bytes: Vec<u8>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match node.publish_bytes(topic, bytes.clone()).await {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "not published on {topic}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A large gossip message (#14: "gossip envelopes of up to 256 KiB are still checked inside the
/// loop") is checked beside the swarm loop as large requests are: a valid one still reaches the
/// task that reads its topic, a forged one is rejected and counted, and both are counted as
/// checked aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_gossip_is_checked_beside_the_loop() {
    const BIG: &str = "agora/test/big";
    let net = Devnet::builder()
        .nodes(2)
        .committee(1)
        .spawn()
        .await
        .unwrap();
    net.wait_connected(1, WAIT).await.unwrap();
    let (a, b) = (net.handle(0).unwrap(), net.handle(1).unwrap());
    let mut reader = a.inbox(Interest::new("reader").topic(BIG));
    a.subscribe(BIG).await.unwrap();
    b.subscribe(BIG).await.unwrap();
    let before = a.stats().await.unwrap();
    let seal = |seq: u64| {
        Envelope::seal(
            &KeySigner::from_seed(1),
            Kind::Raw,
            agora_wire::now_ms(),
            seq,
            vec![7u8; 200 * 1024],
        )
    };
    publish_when_subscribed(&b, BIG, seal(1).to_bytes()).await;
    let got = timeout(WAIT, async {
        loop {
            if let NetworkEvent::Gossip { envelope, .. } = reader.recv().await {
                return envelope;
            }
        }
    })
    .await
    .expect("the large gossip message never reached its reader");
    assert_eq!(got.payload.len(), 200 * 1024);

    let mut forged = seal(2).to_bytes();
    let mid = forged.len() / 2;
    forged[mid] ^= 1;
    publish_when_subscribed(&b, BIG, forged).await;
    let s = timeout(WAIT, async {
        loop {
            let s = a.stats().await.unwrap();
            if s.gossip_rejected > before.gossip_rejected {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the forged large gossip message was never rejected");
    assert_eq!(s.gossip_rejected, before.gossip_rejected + 1, "{s:?}");
    assert_eq!(
        s.gossip_verified_aside,
        before.gossip_verified_aside + 2,
        "{s:?}"
    );
    assert!(
        reader.try_recv().is_none(),
        "the forged message was delivered"
    );
    net.shutdown().await;
}
