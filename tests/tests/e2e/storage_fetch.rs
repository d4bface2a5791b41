//! In-process devnet tests of content fetching over bitswap on our swarm.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use agora_devnet::Devnet;
use agora_exchange::{ExchangeError, FetchConfig, FetchError, FetchProgress};
use agora_network::StreamProtocol;
use agora_storage::wire::encode_varint;
use agora_storage::{Cid, CidVersion};
use futures::AsyncWriteExt;
use tokio::sync::watch;

fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

async fn devnet(n: usize) -> Devnet {
    let net = Devnet::builder().nodes(n).spawn().await.unwrap();
    net.wait_connected(n - 1, Duration::from_secs(20))
        .await
        .unwrap();
    net
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fetches_file_added_on_another_node() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(3).await;
    let (path, data) = random_file(tmp.path(), "in.bin", 3 * 1024 * 1024 + 17, 1);
    let a = &net.node(0).unwrap().storage;
    let added = a.add_file(path, CidVersion::V1).await.unwrap();
    assert_eq!(added.bytes, data.len() as u64);

    let b = &net.node(2).unwrap().storage;
    let cid: Cid = added.cid.parse().unwrap();
    let out = tmp.path().join("out.bin");
    let (tx, rx) = watch::channel(FetchProgress::default());
    let stats = b
        .get_file(cid, out.clone(), &tx, FetchConfig::default())
        .await
        .unwrap();
    assert_eq!(stats.bytes, data.len() as u64);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let p = *rx.borrow();
    assert!(p.done);
    assert_eq!(p.total_bytes, Some(data.len() as u64));
    assert!(p.fetched_blocks >= 13, "{p:?}");
    assert!(
        net.node(0)
            .unwrap()
            .storage
            .bitswap()
            .unwrap()
            .stats()
            .blocks_sent
            > 0
    );
    // Every byte of the file crossed bitswap once at least (blocks carry a little DAG on top).
    let sent = net.node(0).unwrap().storage.bitswap().unwrap().stats();
    let received = b.bitswap().unwrap().stats();
    assert!(sent.bytes_sent >= data.len() as u64, "{sent:?}");
    assert!(received.bytes_received >= data.len() as u64, "{received:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_completes_from_the_other_provider_when_one_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let mut net = devnet(3).await;
    let (path, data) = random_file(tmp.path(), "big.bin", 48 * 1024 * 1024, 2);
    let a = net.node(0).unwrap().storage.clone();
    let b = net.node(1).unwrap().storage.clone();
    let cid: Cid = a
        .add_file(path.clone(), CidVersion::V0)
        .await
        .unwrap()
        .cid
        .parse()
        .unwrap();
    assert_eq!(
        b.add_file(path, CidVersion::V0).await.unwrap().cid,
        cid.to_string()
    );

    let fetcher = net.node(2).unwrap().storage.clone();
    let out = tmp.path().join("out.bin");
    let (tx, mut rx) = watch::channel(FetchProgress::default());
    let cfg = FetchConfig {
        parallelism: 1,
        block_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(20),
        max_bytes: None,
    };
    let task = {
        let out = out.clone();
        tokio::spawn(async move { fetcher.get_file(cid, out, &tx, cfg).await })
    };
    // Stop the provider that serves as soon as it has delivered blocks, well before the 193
    // blocks are in. Either may be the one: the fetcher keeps asking the first peer that
    // delivered (THREATS N23) until it stops.
    let sent = |s: &agora_exchange::StorageHandle| s.bitswap().unwrap().stats().blocks_sent;
    let (at_stop, serving) = loop {
        rx.changed().await.unwrap();
        let p = *rx.borrow();
        if p.fetched_blocks >= 4 && sent(&a) + sent(&b) > 0 {
            break (p, usize::from(sent(&a) == 0));
        }
    };
    let (gone, rest) = if serving == 0 { (a, b) } else { (b, a) };
    let rest_at_stop = sent(&rest);
    drop(gone);
    net.stop(serving).await;
    let stats = task.await.unwrap().unwrap();
    assert!(
        !at_stop.done,
        "node{serving} stopped mid-fetch: {at_stop:?}"
    );
    assert_eq!(stats.bytes, data.len() as u64);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(
        sent(&rest) > rest_at_stop,
        "node{} served the rest after node{serving} stopped",
        1 - serving
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_stops_when_the_dag_outgrows_its_byte_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(2).await;
    let (path, _) = random_file(tmp.path(), "big.bin", 2 * 1024 * 1024, 3);
    let added = net
        .node(0)
        .unwrap()
        .storage
        .add_file(path, CidVersion::V0)
        .await
        .unwrap();
    let cid: Cid = added.cid.parse().unwrap();
    let b = &net.node(1).unwrap().storage;
    let err = b.hold(cid, "test", Some(1024 * 1024)).await.unwrap_err();
    assert!(
        matches!(&err, ExchangeError::Fetch(e) if matches!(**e, FetchError::TooLarge { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger than"), "{err}");
    let ls = b.ls().await.unwrap();
    assert!(
        !ls.pins.contains(&added.cid) && ls.held.is_empty(),
        "nothing pinned or held after a refused fetch: {ls:?}"
    );
    // Within the limit it is pinned.
    b.hold(cid, "test", Some(3 * 1024 * 1024)).await.unwrap();
    assert!(b.ls().await.unwrap().pins.contains(&added.cid));
    net.shutdown().await;
}

/// THREATS C4: a root fetched for holders (a contract's service, the probe cache, custody) is
/// unpinned when the last one lets go, never while one still holds it, and never when this
/// node had it pinned before (its own publish) or its operator pinned it.
/// The number of blocks in `storage`'s store.
async fn block_count(storage: &agora_exchange::StorageHandle) -> usize {
    storage.ls().await.unwrap().blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_a_holder_let_go_of_are_collected_without_the_operator() {
    use agora_exchange::holds::Released;
    let tmp = tempfile::tempdir().unwrap();
    let net = Devnet::builder()
        .nodes(2)
        .gc_interval(Duration::from_millis(200))
        .spawn()
        .await
        .unwrap();
    net.wait_connected(1, Duration::from_secs(20))
        .await
        .unwrap();
    let (path, _) = random_file(tmp.path(), "image.bin", 600 * 1024, 6);
    let a = &net.node(0).unwrap().storage;
    let b = &net.node(1).unwrap().storage;
    let added = a.add_file(path, CidVersion::V0).await.unwrap();
    let cid: Cid = added.cid.parse().unwrap();
    let (a_blocks, before) = (block_count(a).await, block_count(b).await);

    b.hold(cid, "service:x", None).await.unwrap();
    let held = block_count(b).await;
    assert!(
        held >= before + 3,
        "{before} blocks before the hold, {held} after"
    );
    assert_eq!(b.release(cid, "service:x").await.unwrap(), Released::Unpin);
    // Nobody runs `gc`: the node collects by itself after the unpin.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while block_count(b).await > before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the let-go blocks are still there: {} blocks, {before} before the hold; gc: {}",
            block_count(b).await,
            b.stats().await.unwrap()["gc"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gc = b.stats().await.unwrap()["gc"].clone();
    assert!(gc["runs"].as_u64().unwrap() >= 1, "{gc}");
    assert!(
        gc["removed_blocks"].as_u64().unwrap() >= (held - before) as u64,
        "{gc}"
    );
    // The publisher's own file is kept (and A unpinned nothing: no collection there).
    assert_eq!(block_count(a).await, a_blocks);
    assert_eq!(a.stats().await.unwrap()["gc"]["runs"], 0);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_never_deletes_the_blocks_a_fetch_is_about_to_pin() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(2).await;
    let (path, data) = random_file(tmp.path(), "big.bin", 4 * 1024 * 1024 + 5, 7);
    let a = &net.node(0).unwrap().storage;
    let b = net.node(1).unwrap().storage.clone();
    let added = a.add_file(path, CidVersion::V1).await.unwrap();
    let cid: Cid = added.cid.parse().unwrap();

    // Collections asked for all the time while B fetches, pins and lets go of the file.
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (b, stop) = (b.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                b.gc().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for round in 0..3 {
        let held = tokio::time::timeout(Duration::from_secs(60), b.hold(cid, "service:x", None))
            .await
            .unwrap();
        assert!(held.is_ok(), "round {round}: {held:?}");
        let out = tmp.path().join(format!("out{round}.bin"));
        let (tx, _rx) = watch::channel(FetchProgress::default());
        b.get_file(cid, out.clone(), &tx, FetchConfig::default())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data, "round {round}");
        b.release(cid, "service:x").await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    collector.await.unwrap();
    let gc = b.stats().await.unwrap()["gc"].clone();
    assert!(gc["runs"].as_u64().unwrap() >= 3, "{gc}");
    assert_eq!(gc["writers"], 0, "{gc}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_root_is_unpinned_when_its_last_holder_lets_go_unless_it_is_kept() {
    use agora_exchange::holds::Released;
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(2).await;
    let (path, _) = random_file(tmp.path(), "image.bin", 300 * 1024, 5);
    let a = &net.node(0).unwrap().storage;
    let b = &net.node(1).unwrap().storage;
    let added = a.add_file(path, CidVersion::V0).await.unwrap();
    let cid: Cid = added.cid.parse().unwrap();
    let pinned = |ls: &agora_exchange::LsReply| ls.pins.contains(&added.cid);

    // B fetches it for two holders.
    b.hold(cid, "service:x", None).await.unwrap();
    b.hold(cid, "probe", None).await.unwrap();
    let ls = b.ls().await.unwrap();
    assert!(pinned(&ls), "{ls:?}");
    assert_eq!(ls.held[&added.cid], vec!["probe", "service:x"]);
    // The operator cannot unpin what a holder needs.
    let err = b.unpin(cid).await.unwrap_err().to_string();
    assert!(err.contains("held by probe, service:x"), "{err}");
    assert!(pinned(&b.ls().await.unwrap()));
    assert_eq!(
        b.release(cid, "service:x").await.unwrap(),
        Released::StillHeld(vec!["probe".into()])
    );
    assert!(pinned(&b.ls().await.unwrap()), "one holder is left");
    assert_eq!(b.release(cid, "probe").await.unwrap(), Released::Unpin);
    let ls = b.ls().await.unwrap();
    assert!(!pinned(&ls) && ls.held.is_empty(), "{ls:?}");
    // Its blocks go at the next gc.
    assert!(b.gc().await.unwrap().removed_blocks >= 2);

    // Held, then pinned by the operator: kept when the holder lets go.
    b.hold(cid, "service:y", None).await.unwrap();
    b.pin(cid).await.unwrap();
    assert_eq!(b.release(cid, "service:y").await.unwrap(), Released::Kept);
    assert!(pinned(&b.ls().await.unwrap()));

    // A's own file (pinned by its add): held and let go of, it stays.
    a.hold(cid, "service:z", None).await.unwrap();
    assert_eq!(a.release(cid, "service:z").await.unwrap(), Released::Kept);
    assert!(pinned(&a.ls().await.unwrap()));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_cid_times_out_with_a_clear_error() {
    let net = devnet(2).await;
    let s = &net.node(1).unwrap().storage;
    let cid = agora_storage::hash::cid_v1_blake3(agora_storage::hash::RAW, b"nobody has this");
    let (tx, _rx) = watch::channel(FetchProgress::default());
    let cfg = FetchConfig {
        idle_timeout: Duration::from_millis(1500),
        ..FetchConfig::default()
    };
    let err = s
        .embedded()
        .unwrap()
        .fetch(cid, cfg, &tx)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ExchangeError::Fetch(e) if matches!(**e, FetchError::Timeout { cid: c, .. } if c == cid)
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&cid.to_string()) && text.contains("connect to a node"),
        "{text}"
    );
    net.shutdown().await;
}

/// A peer that opens a bitswap stream to a node gets the node's stream back at once, before
/// it asked for anything: the negotiation of the stream back overlaps the peer's first wants
/// (issue #17: a round trip saved on the first block over a long link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_opens_a_stream_gets_the_stream_back_before_any_answer() {
    let net = devnet(2).await;
    let a = &net.node(0).unwrap().storage;
    assert_eq!(a.bitswap().unwrap().stats().writers, 0);
    let target = net.handle(0).unwrap().peer_id();
    let mut control = net.handle(1).unwrap().stream_control();
    let mut s = control
        .open_stream(target, StreamProtocol::new("/ipfs/bitswap/1.2.0"))
        .await
        .unwrap();
    // An empty message: nothing to answer.
    s.write_all(&encode_varint(0)).await.unwrap();
    s.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.bitswap().unwrap().stats().writers < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no writer back to the peer: {:?}",
            a.bitswap().unwrap().stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.bitswap().unwrap().stats().blocks_sent, 0);
    net.shutdown().await;
}

/// THREATS N14: a peer's inbound bitswap streams free their slots as soon as the node closes
/// the peer's connection (a trim past `target_peers`, the operator's `disconnect`). yamux
/// 0.14's clean close does not wake the connection's streams, so before, each stream's task
/// (and its slot of the per-peer share) stayed until the 60 s idle timeout, and the peer,
/// back on a new connection, was refused every stream meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_s_streams_free_their_slots_when_the_node_closes_its_connection() {
    use agora_exchange::bitswap::MAX_INBOUND_STREAMS_PER_PEER as SHARE;
    let net = devnet(2).await;
    let a = &net.node(0).unwrap().storage;
    let inbound = || a.bitswap().unwrap().stats().inbound_streams as usize;
    let target = net.handle(0).unwrap().peer_id();
    let peer = net.handle(1).unwrap().peer_id();
    let mut control = net.handle(1).unwrap().stream_control();
    let proto = StreamProtocol::new("/ipfs/bitswap/1.2.0");
    // Node1 fills its per-peer share at node0 (the test's streams and node1's own bitswap
    // writer back to node0, which opens with node0's first stream back). One stream at a
    // time, each kept once node0 serves it: libp2p-stream drops an inbound stream that
    // arrives while its accept loop is busy, so a dropped one is opened again.
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while held.len() < SHARE {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node0 serves {} of the {SHARE} streams",
            inbound()
        );
        let Ok(mut s) = control.open_stream(target, proto.clone()).await else {
            continue;
        };
        // A stream dropped on arrival is closed: writing to it fails.
        if s.write_all(&encode_varint(0)).await.is_err() || s.flush().await.is_err() {
            continue;
        }
        let want = held.len() + 1;
        let served = tokio::time::timeout(Duration::from_secs(2), async {
            while inbound() < want {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if served.is_ok() {
            held.push(s);
        }
    }
    assert_eq!(inbound(), SHARE);
    // Node0 closes the connection, cleanly; node1 keeps its ends open.
    assert!(net.handle(0).unwrap().disconnect(peer).await.unwrap());
    let freed = tokio::time::timeout(Duration::from_secs(5), async {
        while inbound() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "5 s after node0 closed the connection it still serves {} of node1's streams \
         (their slots would wait for the 60 s idle timeout)",
        inbound()
    );
    drop(held);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_oversized_messages_are_rejected_without_harm() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(2).await;
    let target = net.handle(0).unwrap().peer_id();
    let mut control = net.handle(1).unwrap().stream_control();
    let proto = StreamProtocol::new("/ipfs/bitswap/1.2.0");

    // A frame announcing 100 MiB: refused before allocating.
    let mut s = control.open_stream(target, proto.clone()).await.unwrap();
    s.write_all(&encode_varint(100 * 1024 * 1024))
        .await
        .unwrap();
    s.flush().await.unwrap();
    let a = &net.node(0).unwrap().storage;
    let rejected = async |n: u64| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while a.bitswap().unwrap().stats().rejected < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                a.bitswap().unwrap().stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // One bad stream after the other: libp2p-stream hands inbound streams over through a
    // one-slot channel and drops a second one that arrives before the first was taken, so two
    // streams opened back to back can lose the second before it is read (our own bitswap keeps
    // one stream per peer and never does that).
    rejected(1).await;
    // A well-sized frame of protobuf garbage.
    let mut s2 = control.open_stream(target, proto.clone()).await.unwrap();
    let mut frame = encode_varint(6);
    frame.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    s2.write_all(&frame).await.unwrap();
    s2.flush().await.unwrap();
    // A block whose bytes do not match... cannot be forged: CIDs are rebuilt by hashing, so
    // a "block" for a CID nobody wants is simply dropped as unwanted.
    rejected(2).await;

    // The node still serves content to the same peer afterwards.
    let (path, data) = random_file(tmp.path(), "f.bin", 700_000, 3);
    let cid: Cid = a
        .add_file(path, CidVersion::V0)
        .await
        .unwrap()
        .cid
        .parse()
        .unwrap();
    let out = tmp.path().join("o.bin");
    let (tx, _rx) = watch::channel(FetchProgress::default());
    net.node(1)
        .unwrap()
        .storage
        .get_file(cid, out.clone(), &tx, FetchConfig::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(out).unwrap(), data);
    net.shutdown().await;
}

/// THREATS N23: a connected peer that takes every bitswap want and answers none is asked only
/// when no peer that delivered can be, and once its wants time out in a row it is benched —
/// still asked when nobody else can be. Before, wants were spread round-robin over every
/// connected peer, and each one sent to the silent peer waited out the 5 s block timeout.
/// Mutants caught: plain round-robin (the silent peer is asked for 32 blocks or more, not 8 at
/// most), no bench (`peers_benched` stays 0), benched peers never asked (`BENCH_AFTER` asks
/// at most for the missing block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_asked_after_the_peers_that_deliver_and_benched_when_it_stays_silent() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use agora_exchange::scores::BENCH_AFTER;
    use agora_network::keys::NodeKey;
    use agora_tests::adversary::Adversary;
    use futures::StreamExt;

    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(2).await;
    let (a, b) = (&net.node(0).unwrap().storage, &net.node(1).unwrap().storage);
    // The silent peer, connected to both nodes, reads every bitswap message sent to it, counts
    // the wants and never sends anything back.
    let addrs: Vec<_> = (0..2)
        .flat_map(|i| net.node(i).unwrap().p2p_addrs.clone())
        .collect();
    let silent = Adversary::start(NodeKey::generate(), addrs).await.unwrap();
    let asked = Arc::new(AtomicU64::new(0));
    let mut control = silent.network().stream_control();
    for proto in agora_exchange::bitswap::PROTOCOLS {
        let mut incoming = control.accept(StreamProtocol::new(proto)).unwrap();
        let asked = asked.clone();
        tokio::spawn(async move {
            while let Some((_, mut s)) = incoming.next().await {
                let asked = asked.clone();
                tokio::spawn(async move {
                    let frames = agora_storage::wire::FrameBudget::unbounded();
                    while let Ok(Some(m)) =
                        agora_exchange::framing::read_message(&mut s, &frames).await
                    {
                        let wants = m.wantlist.iter().flat_map(|w| &w.entries);
                        let n = wants.filter(|e| !e.cancel).count();
                        asked.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
    }
    let silent_id = silent.peer_id().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let peers = net.handle(1).unwrap().peers().await.unwrap();
        if peers.iter().any(|p| p.peer_id == silent_id) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node1 never connected to the silent peer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Node1 fetches four of node0's files, 17 blocks each: round-robin asked the silent peer
    // for half of them.
    let mut blocks = 0;
    for seed in 0..4 {
        let name = format!("f{seed}.bin");
        let (path, data) = random_file(tmp.path(), &name, 4 * 1024 * 1024, 10 + seed);
        let added = a.add_file(path, CidVersion::V1).await.unwrap();
        let cid: Cid = added.cid.parse().unwrap();
        let out = tmp.path().join(format!("out{seed}.bin"));
        let (tx, rx) = watch::channel(FetchProgress::default());
        b.get_file(cid, out.clone(), &tx, FetchConfig::default())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        blocks += rx.borrow().fetched_blocks;
    }
    let asked_in_fetches = asked.load(Ordering::SeqCst);
    eprintln!(
        "the silent peer was asked for {asked_in_fetches} of {blocks} blocks; node1 bitswap: {:?}",
        b.bitswap().unwrap().stats()
    );
    // The first want may go to it, before node0 delivered anything; after that only the
    // wants node0 let time out (none on a quiet machine).
    assert!(
        asked_in_fetches <= 8,
        "the silent peer was asked for {asked_in_fetches} of {blocks} blocks"
    );

    // A block nobody has: node0 says DONT_HAVE at once, so the silent peer is asked again and
    // again. Its wants time out in a row, it is benched, and it is still asked as the last
    // peer left.
    let missing = agora_storage::hash::cid_v1_blake3(agora_storage::hash::RAW, b"nobody");
    let cfg = FetchConfig {
        block_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(6),
        ..FetchConfig::default()
    };
    let (tx, _rx) = watch::channel(FetchProgress::default());
    let err = b
        .embedded()
        .unwrap()
        .fetch(missing, cfg, &tx)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ExchangeError::Fetch(e) if matches!(**e, FetchError::Timeout { .. })),
        "{err:?}"
    );
    let st = b.bitswap().unwrap().stats();
    let asked_for_missing = asked.load(Ordering::SeqCst) - asked_in_fetches;
    eprintln!("the silent peer was asked {asked_for_missing} times for the missing block; {st:?}");
    assert!(st.peers_benched >= 1, "{st:?}");
    assert!(st.wants_timed_out >= u64::from(BENCH_AFTER), "{st:?}");
    // Its BENCH_AFTER-th timeout in a row benched it at the latest: any later want was asked
    // of a benched peer.
    assert!(
        asked_for_missing > u64::from(BENCH_AFTER),
        "benched, the silent peer must still be asked when nobody else can be: asked \
         {asked_for_missing} times"
    );
    drop(silent);
    net.shutdown().await;
}
