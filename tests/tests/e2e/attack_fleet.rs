//! A hostile fleet peer on real processes (#13, THREATS row N8). On a 7-node contract devnet,
//! node0 deploys the lora gateway to node2 (`site=factory`, one replica) and it runs healthy.
//! A stranger joins and
//! - gossips garbage, an oversized message, a record impersonating node0's deployment with
//!   another image, an expired record and one valid for two days;
//! - sends node0 a report claiming node2's replica failed, a candidate offer with absurd facts
//!   and a burst of polls;
//! - floods the fleet topic with ~200 validly signed records a second from 64 throwaway
//!   deployers with nothing on the ledger, all selecting every provider and valid for 23 hours
//!   (an honest record lives 10 minutes, so it would be the first evicted from a full store);
//! - then buys 1,000 tokens for 40 of those keys (node6 transfers them) and floods from those.
//!
//! Every node refuses and counts the broken messages (node2 stays `healthy`). The unfunded
//! flood evicts nothing (stores full at 256, the rest refused), and a second deployment created
//! meanwhile becomes healthy on node2. The funded flood evicts the unfunded records and then
//! every record no contract backs, while node0 upgrades node2's replica (health-gated,
//! start-first): node2 keeps its records (pinned: live contracts back its replicas), reports
//! the new image healthy, and the upgrade succeeds. A third deployment created during the
//! funded flood also becomes healthy on node2: its record (valid 10 minutes, the soonest to
//! expire) is evicted from node2's store moments after it arrives, before any contract backs
//! it, and node0 sends it again to node2 until node2 reports acting on it; once its contract
//! is live node2 pins it on arrival. Mutation-checked: without the pin the
//! upgrade rolls back ("new image not healthy within 120000 ms"); without the balance gate
//! the unfunded flood evicts (the counter check fails; the second deployment still became
//! healthy, so that check alone does not prove the gate). No node runs the forged image; every
//! node still answers, and the early fetches stay within their bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use agora_devnet::files::DevnetManifest;
use agora_fleet_core::{
    DeploymentSpec, FLEET_TOPIC, FleetMessage, Replicas, Selector, Strategy, TargetPhase,
};
use agora_market::signed::Signed;
use agora_market::{KeySigner, NodeId, Resources, Signer};
use agora_network::keys::peer_id_of;
use agora_runtime::test_utils::lora_gateway_wasm;
use agora_tests::adversary::Adversary;
use agora_tests::fleet::{
    create_one, label, node_ids, phase_of, publish, reconfigure, runs, status, wait_for,
};
use agora_tests::{TestDevnet, agora, try_agora_json, wait_until};
use agora_wire::codec::Kind;
use agora_wire::now_ms;
use tokio_util::sync::CancellationToken;

const TARGET: usize = 2;
const NODES: usize = 7;
const WAIT: Duration = Duration::from_secs(300);
/// A CID no node holds: the flood's records name it.
const NOWHERE: &str = "bafkreieqbu7ngvfhj3nfpvcsy2hxgvkpmqv3vnetkqpyanb5o4gmbjqiwe";
/// Throwaway deployers of the flood.
const SYBILS: u64 = 64;
/// How many of them the adversary funds on the ledger for the flood's second part: enough to
/// hold more than a whole store (8 records each), so funded records evict more than the
/// unfunded ones.
const FUNDED: u64 = 40;

/// Throwaway deployer `n` of the flood.
fn sybil(n: u64) -> KeySigner {
    KeySigner::from_seed(7_000 + n)
}

/// The fleet stats of node `i` (`agora deploy list --json`), `Null` while it cannot be read.
fn stats(net: &TestDevnet, i: usize) -> serde_json::Value {
    try_agora_json(&["deploy", "list", "--data-dir", &net.node(i)])
        .map(|v| v["stats"].clone())
        .unwrap_or(serde_json::Value::Null)
}

fn count(v: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_default()
}

/// Publishes `msg` on the fleet topic, sealed by the adversary; retried while no peer is known
/// on the topic yet.
async fn gossip(adv: &Adversary, payload: Vec<u8>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match adv
            .network()
            .broadcast(FLEET_TOPIC, Kind::Fleet, payload.clone())
            .await
        {
            Ok(_) => return,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("fleet gossip not published yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the adversary cannot publish on the fleet topic: {e}"),
        }
    }
}

fn announce(record: Signed<agora_fleet_core::DeploymentBody>) -> Vec<u8> {
    FleetMessage::Announce(Box::new(record)).encode().unwrap()
}

/// Publishes a variant `n` of the gateway image (a custom section `agora-N` makes its CID
/// new), deploys it to node2 as `gw-N` and waits until node2 reports it healthy; its id.
fn deploy_healthy(net: &TestDevnet, wasm: &[u8], n: u8, when: &str) -> String {
    let mut image = wasm.to_vec();
    image.extend_from_slice(&[0, 8, 7]);
    image.extend_from_slice(format!("agora-{n}").as_bytes());
    let cid = publish(net, &format!("fleet-gw-{n}"), "0.1.0", &image);
    let id = create_one(net, &cid, &format!("gw-{n}"));
    let node2 = node_ids(net)[TARGET].clone();
    wait_for(
        net,
        &id,
        &[TARGET],
        &format!("node2 to run gw-{n} healthy {when}"),
        Duration::from_secs(180),
        || {
            phase_of(&status(net, &id), &node2).as_deref() == Some("healthy")
                && runs(net, TARGET, &cid)
        },
    );
    id
}

/// A spec that selects every provider, for `image`.
fn any_provider(name: &str, image: &str, valid_for_ms: u64) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        image: image.into(),
        selector: Selector::default(),
        variants: Vec::new(),
        needs: Resources {
            cpu_millis: 1,
            ..Resources::default()
        },
        replicas: Replicas::Count(1),
        strategy: Strategy::Push,
        max_price_per_replica: 1,
        duration_ms: 60_000,
        valid_for_ms,
        after: Vec::new(),
    }
}

/// The broken and forged messages, fresh each time (gossipsub drops repeated bytes).
async fn broken(adv: &Adversary, victim: NodeId, name: &str, round: u64) {
    // Garbage, and a message over the fleet's size bound (within the envelope's).
    gossip(adv, format!("not cbor {round}").into_bytes()).await;
    let mut big = vec![0xA1u8; agora_fleet_core::message::MAX_MESSAGE_BYTES + 64];
    big[..8].copy_from_slice(&round.to_le_bytes());
    gossip(adv, big).await;
    // node0's deployment, another image, a version far ahead: signed by the adversary, then
    // made to name node0 as its deployer.
    let mut forged = any_provider(name, NOWHERE, 600_000)
        .sign(adv.signer(), now_ms(), u64::MAX / 4 + round, round)
        .unwrap();
    forged.body.deployer = victim;
    gossip(adv, announce(forged)).await;
    // Expired an hour ago; and valid for two days.
    let hour_ago = now_ms() - 3_600_000;
    let mut expired = any_provider(&format!("old-{round}"), NOWHERE, 60_000)
        .sign(adv.signer(), now_ms(), 1, round)
        .unwrap();
    expired.body.created_at = hour_ago;
    expired.body.expires_at = hour_ago + 60_000;
    let expired = Signed::sign(expired.body, adv.signer()).unwrap();
    gossip(adv, announce(expired)).await;
    let mut long = any_provider(&format!("long-{round}"), NOWHERE, 60_000)
        .sign(adv.signer(), now_ms(), 1, round)
        .unwrap();
    long.body.expires_at = now_ms() + 2 * 24 * 3_600_000;
    let long = Signed::sign(long.body, adv.signer()).unwrap();
    gossip(adv, announce(long)).await;
}

#[test]
fn a_hostile_fleet_peer_neither_hijacks_nor_blinds_a_deployment() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let net = TestDevnet::up(NODES, 180, &[]);
    let ids = node_ids(&net);
    reconfigure(&net, TARGET, true, label);
    let v1 = publish(&net, "fleet-gw", "0.1.0", &wasm);
    // v2: the same guest with a custom section, so another module (one instance each).
    let mut wasm2 = wasm.clone();
    wasm2.extend_from_slice(&[0, 8, 7]);
    wasm2.extend_from_slice(b"agora-2");
    let v2 = publish(&net, "fleet-gw", "0.2.0", &wasm2);
    assert_ne!(v1, v2);
    let id = create_one(&net, &v1, "gw");
    wait_for(
        &net,
        &id,
        &[TARGET],
        "node2 to run v1 healthy",
        WAIT,
        || {
            phase_of(&status(&net, &id), &ids[TARGET]).as_deref() == Some("healthy")
                && runs(&net, TARGET, &v1)
        },
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let manifest = DevnetManifest::load(Path::new(&net.dir)).unwrap();
    let adv = Arc::new(rt.block_on(Adversary::join_manifest(&manifest)).unwrap());
    let node0: NodeId = ids[0].parse().unwrap();
    let node0_peer = peer_id_of(&node0).unwrap();
    let deployment = agora_fleet_core::deployment_id(&node0, "gw");
    assert_eq!(
        deployment.to_string(),
        id,
        "the deployment id is node0's `gw`"
    );

    // Broken and forged gossip, again every 2 s until the nodes that hear it from the
    // adversary have refused it (an honest node does not forward what it refused).
    let mut round = 0;
    wait_for(
        &net,
        &id,
        &[TARGET],
        "6 of 7 nodes to refuse the broken and forged fleet gossip",
        Duration::from_secs(90),
        || {
            round += 1;
            rt.block_on(broken(&adv, node0, "gw", round));
            std::thread::sleep(Duration::from_secs(2));
            let seen: Vec<(u64, u64)> = (0..NODES)
                .map(|i| {
                    let s = stats(&net, i);
                    (
                        count(&s, &["machine", "bad_records"]),
                        count(&s, &["undecodable"]),
                    )
                })
                .collect();
            eprintln!("round {round}: (bad records, undecodable) per node: {seen:?}");
            let refused = seen.iter().filter(|(b, u)| *b >= 3 && *u >= 2).count();
            // The adversary is no member of the topic's mesh: gossipsub fans its messages out
            // to 6 of the 7 subscribed nodes (D = 6), and honest nodes forward none of them.
            refused >= NODES - 1
        },
    );

    // Requests to the deployer: a report that node2's replica failed, from a peer that is not
    // its target; a candidate offer with absurd facts; a burst of polls.
    rt.block_on(async {
        let send = |msg: Vec<u8>| {
            let env = adv.seal(Kind::Fleet, msg);
            let net = adv.network().clone();
            async move { net.request(node0_peer, &env).await }
        };
        let stray = FleetMessage::Report {
            deployment,
            version: 1,
            phase: TargetPhase::Failed,
            reason: Some("forged: node2 crashed".into()),
            image: Some(v1.clone()),
            restarts: Some(99),
            last_failure: None,
        };
        send(stray.encode().unwrap()).await.unwrap();
        let mut absurd = agora_fleet_core::CandidateFacts::default();
        for n in 0..100 {
            absurd.labels.insert(format!("k{n}"), "v".repeat(200));
        }
        let offer = FleetMessage::Candidate {
            deployment,
            facts: absurd,
        };
        send(offer.encode().unwrap()).await.unwrap();
        // At once (the quota allows a burst of 32, then 16 a second): sent one after another,
        // a loaded machine's round trips let the quota refill between them.
        let poll = FleetMessage::Poll {
            deployment,
            have_version: 0,
            facts: Default::default(),
        }
        .encode()
        .unwrap();
        // A loaded node0 may refuse part of a burst before its fleet task sees it (its request
        // route full, or the stream limit per peer), and the rest may then arrive slowly
        // enough to stay within quota: a few bursts, until the fleet quota refuses one.
        for burst in 1..=5 {
            let answers = futures::future::join_all((0..100).map(|_| send(poll.clone()))).await;
            let failed = answers.iter().filter(|a| a.is_err()).count();
            let s = stats(&net, 0);
            eprintln!(
                "poll burst {burst}: 100 sent, {failed} refused by node0's network, fleet quota \
                 refused {} in all, answered {}",
                count(&s, &["quota_refused"]),
                count(&s, &["machine", "polls_answered"]),
            );
            if count(&s, &["quota_refused"]) >= 1 {
                break;
            }
        }
    });
    wait_for(
        &net,
        &id,
        &[TARGET],
        "node0 to count the stray report, the bad offer and the polls over quota",
        Duration::from_secs(30),
        || {
            let s = stats(&net, 0);
            count(&s, &["machine", "stray_reports"]) >= 1
                && count(&s, &["undecodable"]) >= 1
                && count(&s, &["quota_refused"]) >= 1
        },
    );
    assert_eq!(
        phase_of(&status(&net, &id), &ids[TARGET]).as_deref(),
        Some("healthy"),
        "a stranger's report changed node2's phase"
    );

    // The flood: validly signed records from throwaway deployers, selecting every provider,
    // ~200 a second, until the test ends. First from 64 keys with nothing on the ledger.
    let stop = CancellationToken::new();
    let published = Arc::new(AtomicU64::new(0));
    let funded_only = Arc::new(AtomicBool::new(false));
    let flood = {
        let (adv, stop, published, funded_only) = (
            adv.clone(),
            stop.clone(),
            published.clone(),
            funded_only.clone(),
        );
        rt.spawn(async move {
            let sybils: Vec<KeySigner> = (0..SYBILS).map(sybil).collect();
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let keys = if funded_only.load(Ordering::Relaxed) {
                    FUNDED
                } else {
                    SYBILS
                };
                let signer = &sybils[(n % keys) as usize];
                let record = any_provider(&format!("flood-{n}"), NOWHERE, 23 * 3_600_000)
                    .sign(signer as &dyn Signer, now_ms(), 1, n)
                    .unwrap();
                if adv
                    .network()
                    .broadcast(FLEET_TOPIC, Kind::Fleet, announce(record))
                    .await
                    .is_ok()
                {
                    published.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let _stop_guard = stop.clone().drop_guard();
    wait_for(
        &net,
        &id,
        &[TARGET],
        "node2's store to be full and turning the unfunded flood away",
        Duration::from_secs(120),
        || {
            let s = stats(&net, TARGET);
            count(&s, &["stored"]) == 256
                && count(&s, &["store", "refused"]) + count(&s, &["store", "evicted"]) >= 200
        },
    );
    let s2 = stats(&net, TARGET);
    assert!(count(&s2, &["pinned"]) >= 1, "node2 pinned nothing: {s2}");
    assert_eq!(
        count(&s2, &["store", "evicted"]),
        0,
        "an unfunded record evicted: {s2}"
    );

    // A new deployment during the unfunded flood: its record (funded: node0's balance) gets
    // into node2's full store, and node2 reports its replica healthy.
    let id_b = deploy_healthy(&net, &wasm, 3, "during the unfunded flood");

    // The adversary buys tokens for 40 of its keys (node6 sends them 1,000 each) and floods
    // from those only: funded records evict the unfunded ones, then every record no contract
    // backs.
    for n in 0..FUNDED {
        let to = sybil(n).node_id().to_string();
        let out = agora(&["transfer", &to, "1000", "--data-dir", &net.node(6)]);
        assert!(out.status.success(), "{out:?}");
    }
    wait_until(
        "node2's ledger to show the funded keys",
        Duration::from_secs(120),
        || {
            (0..FUNDED).all(|n| {
                try_agora_json(&[
                    "balance",
                    &sybil(n).node_id().to_string(),
                    "--data-dir",
                    &net.node(TARGET),
                ])
                .is_some_and(|b| b["balance"].as_u64() >= Some(1000))
            })
        },
    );
    funded_only.store(true, Ordering::Relaxed);
    wait_for(
        &net,
        &id,
        &[TARGET],
        "node2's store to evict for the funded flood",
        Duration::from_secs(120),
        // More than the ~250 unfunded records held: funded ones are evicted too.
        || count(&stats(&net, TARGET), &["store", "evicted"]) >= 350,
    );
    let s2 = stats(&net, TARGET);
    assert!(
        count(&s2, &["pinned"]) >= 2,
        "node2 does not pin both replicas: {s2}"
    );

    // The upgrade, during the funded flood: node2 must see the new version and report it
    // healthy.
    let up = agora(&[
        "deploy",
        "upgrade",
        &id,
        "--image",
        &v2,
        "--max-unavailable",
        "1",
        "--health-timeout",
        "2m",
        "--data-dir",
        &net.node(0),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    eprintln!("deploy upgrade during the flood:\n{text}");
    let st = status(&net, &id);
    if !up.status.success() {
        agora_tests::fleet::dump(&net, &id, &[TARGET]);
    }
    assert!(
        up.status.success(),
        "the upgrade failed during the flood: {text}\n{st}"
    );
    assert_eq!(st["upgrade"]["state"], "succeeded", "{st}");
    wait_for(
        &net,
        &id,
        &[TARGET],
        "node2 to run v2 healthy",
        WAIT,
        || {
            phase_of(&status(&net, &id), &ids[TARGET]).as_deref() == Some("healthy")
                && runs(&net, TARGET, &v2)
        },
    );
    assert_eq!(
        phase_of(&status(&net, &id_b), &ids[TARGET]).as_deref(),
        Some("healthy"),
        "the second deployment's replica on node2"
    );

    // A new deployment during the funded flood: node2 evicts its record moments after it
    // arrives (no contract backs it yet), so node2 learns it again from node0, which sends it
    // to a target that has not reported acting on it; node2 pins it once its contract is live.
    let evicted_before = count(&stats(&net, TARGET), &["store", "evicted"]);
    deploy_healthy(&net, &wasm, 4, "during the funded flood");
    let s2 = stats(&net, TARGET);
    assert!(
        count(&s2, &["store", "evicted"]) > evicted_before + 100,
        "the funded flood stopped evicting meanwhile: {s2}"
    );
    assert!(
        count(&s2, &["pinned"]) >= 3,
        "node2 does not pin the third replica: {s2}"
    );

    stop.cancel();
    rt.block_on(flood).unwrap();
    let sent = published.load(Ordering::Relaxed);
    let all: Vec<serde_json::Value> = (0..NODES).map(|i| stats(&net, i)).collect();
    for (i, s) in all.iter().enumerate() {
        eprintln!(
            "node{i}: stored {} pinned {} evicted {} refused {} bad_records {} undecodable {} \
             prefetched {} prefetch_skipped {} prefetch_unpinned {} sends_dropped {} \
             gossip accepted/ignored {}/{}",
            count(s, &["stored"]),
            count(s, &["pinned"]),
            count(s, &["store", "evicted"]),
            count(s, &["store", "refused"]),
            count(s, &["machine", "bad_records"]),
            count(s, &["undecodable"]),
            count(s, &["prefetched"]),
            count(s, &["prefetch_skipped"]),
            count(s, &["prefetch_unpinned"]),
            count(s, &["sends_dropped"]),
            count(s, &["gossip_accepted"]),
            count(s, &["gossip_ignored"]),
        );
    }
    eprintln!("the adversary published {sent} flood records from {SYBILS} keys");
    assert!(sent > 0);
    for (i, s) in all.iter().enumerate() {
        assert!(!s.is_null(), "node{i} stopped answering");
        assert!(count(s, &["stored"]) <= 256, "node{i}'s store grew: {s}");
        assert!(
            count(s, &["prefetched"]) <= 8,
            "node{i} holds more early fetches than its bound: {s}"
        );
        assert!(
            !runs(&net, i, NOWHERE),
            "node{i} runs the forged deployment's image"
        );
    }
    assert!(
        all.iter().any(
            |s| count(s, &["prefetch_skipped"]) + count(s, &["sends_dropped"]) > 0
                || count(s, &["store", "evicted"]) > 0
        ),
        "the flood reached no node"
    );
}
