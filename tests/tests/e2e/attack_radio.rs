//! Threat R1 (issue #13.4) on real processes: a hostile peer forges radio checkpoints for the
//! insured sensors of the demo-shaped devnet (7 nodes, edge A's LoRa gateway service, a
//! standby contract with provider B) — one claiming every reading up to `u32::MAX`, signed by
//! its own key, and a well-formed one (the next readings, and a release) from an edge that
//! manages nothing. Then A is killed and the handover happens: B processes every reading
//! (0 missing, 0 duplicated, as the demo measures) and the radio counters show the forged
//! checkpoints were refused.
//!
//! And spoofed frames (threat R1, frames): a hostile radio in range of A and B sends the
//! insured sensors' frames with forged MICs, far-ahead counters and no MIC at all, and replays
//! genuine frames it overheard, before and during the handover. A (the owner) and B (handed the
//! keys when the contract was staged) drop and count every one; no spoofed reading reaches a
//! service, and the accounting still shows 0 missing / 0 duplicated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agora_devnet::demo::Story;
use agora_devnet::demo::story::{DEVICES, wait_for};
use agora_devnet::files::{CONTRACT_NODES, DevnetNode};
use agora_radio::RadioStatus;
use agora_tests::adversary::radio::{HostileRadio, forged_frame, unsigned_frame};
use agora_tests::adversary::{Adversary, TestLauncher, radio};
use agora_tests::agora_bin;

/// The demo-shaped devnet both attacks run on, with A's standby contract armed on B.
struct Armed {
    tmp: tempfile::TempDir,
    s: Story,
    armed: agora_devnet::demo::story::Armed,
    a: usize,
    b: usize,
    an: DevnetNode,
    bn: DevnetNode,
    /// An observer: neither A nor B.
    on: DevnetNode,
}

/// The demo's devnet of [`CONTRACT_NODES`] real processes in a temp dir, A's service running;
/// `None` (after saying skipped) when the lora-gateway module cannot be built here.
async fn started_story(test: &str) -> Option<(tempfile::TempDir, Story)> {
    agora_tests::story(test, Arc::new(TestLauncher(agora_bin()))).await
}

/// Starts the story and arms the standby contract; `None` (after saying skipped) when the
/// lora-gateway module cannot be built here.
async fn armed_story(test: &str) -> Option<Armed> {
    let (tmp, s) = started_story(test).await?;
    // Two minutes: the contract outlives the handover and the accounting under this load.
    let armed = s.standby_lasting(120_000).await.unwrap();
    let (a, b) = (s.a, armed.b);
    let obs = (0..CONTRACT_NODES).find(|i| *i != a && *i != b).unwrap();
    let (an, bn, on) = (
        s.m.nodes[a].clone(),
        s.m.nodes[b].clone(),
        s.m.nodes[obs].clone(),
    );
    Some(Armed {
        tmp,
        s,
        armed,
        a,
        b,
        an,
        bn,
        on,
    })
}

async fn radio_of(n: &DevnetNode) -> Option<RadioStatus> {
    agora_tests::radio_status(n).await
}

/// The highest sequence number `n` heard from each insured sensor.
async fn heard(n: &DevnetNode) -> Vec<(u32, u32)> {
    heard_of(n, &DEVICES).await
}

/// The highest sequence number `n` heard from each of `devices`.
async fn heard_of(n: &DevnetNode, devices: &[u32]) -> Vec<(u32, u32)> {
    let st = radio_of(n).await.unwrap_or_default();
    st.devices
        .iter()
        .filter(|d| devices.contains(&d.device))
        .filter_map(|d| Some((d.device, d.heard?)))
        .collect()
}

/// Publishes both forgeries, fresh (gossipsub drops repeats of the same bytes).
async fn forge(adv: &Adversary, at: &DevnetNode) {
    adv.publish_checkpoint(&radio::silencing(&DEVICES))
        .await
        .unwrap();
    // The next readings past what the sensors sent so far: the ones an honest manager's next
    // checkpoint would cover.
    let next: Vec<(u32, u32)> = heard(at)
        .await
        .into_iter()
        .map(|(d, h)| (d, h + 1))
        .collect();
    assert_eq!(next.len(), DEVICES.len(), "{} hears the sensors", at.name);
    adv.publish_checkpoint(&radio::plausible(&next, 20))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_checkpoints_do_not_silence_the_insured_sensors() {
    let Some(Armed {
        tmp: _tmp,
        mut s,
        armed,
        a,
        b,
        an,
        bn,
        on,
    }) = armed_story("attack_radio::forged_checkpoints_do_not_silence_the_insured_sensors").await
    else {
        return;
    };
    let adv = Adversary::join_manifest(&s.m).await.unwrap();
    let hostile = adv.node_id().to_string();

    // Before the handover: A (the owner) and B (the armed standby) know who manages the
    // sensors, and refuse both forgeries for their signer; the observer, which manages
    // nothing, refuses the silencing one for its bound. Honest edges no longer forward the
    // forgeries (threat N7), so a node whose subscription the fresh adversary had not heard of
    // yet when it published gets none: the forgeries are published again (fresh) every 5 s
    // until every node has judged them.
    forge(&adv, &bn).await;
    let mut forged_at = std::time::Instant::now();
    let mut seen = None;
    let refused = wait_for(
        "A, B and the observer to refuse the forgeries",
        60,
        async || {
            if forged_at.elapsed() > std::time::Duration::from_secs(5) {
                forge(&adv, &bn).await;
                forged_at = std::time::Instant::now();
            }
            let (ra, rb, ro) = (
                radio_of(&an).await?,
                radio_of(&bn).await?,
                radio_of(&on).await?,
            );
            let ok = ra.stats.ranges_refused_not_manager >= 2 * DEVICES.len() as u64
                && rb.stats.ranges_refused_not_manager >= 2 * DEVICES.len() as u64
                && rb.stats.releases_refused >= DEVICES.len() as u64
                && ro.stats.ranges_refused_beyond_heard >= DEVICES.len() as u64;
            seen = Some([ra.stats, rb.stats, ro.stats]);
            ok.then_some(())
        },
    )
    .await;
    if let Err(e) = refused {
        panic!("{e:#}; A, B, observer: {seen:#?}");
    }

    // Threat N7: the radio topic is judged before gossipsub forwards it. The forgeries above
    // were refused by the rules, so A and B (which know the sensors' managers) did not forward
    // them (ignored, counted); a malformed checkpoint is rejected by every edge (the sender is
    // penalised, nothing applied). Checked per node (rejected and counted); the adversary is
    // connected to every node, so a third hop is not observed here.
    adv.publish_checkpoint(&radio::malformed(&DEVICES))
        .await
        .unwrap();
    let mut seen = None;
    let judged = wait_for(
        "A, B and the observer to judge the forgeries (not forwarded)",
        30,
        async || {
            let (ra, rb, ro) = (
                radio_of(&an).await?,
                radio_of(&bn).await?,
                radio_of(&on).await?,
            );
            let ok = ra.stats.checkpoints_ignored >= 2
                && rb.stats.checkpoints_ignored >= 2
                && ro.stats.checkpoints_ignored >= 1
                && ra.stats.checkpoints_rejected >= 1
                && rb.stats.checkpoints_rejected >= 1
                && ro.stats.checkpoints_rejected >= 1;
            seen = Some([ra.stats, rb.stats, ro.stats]);
            ok.then_some(())
        },
    )
    .await;
    if let Err(e) = judged {
        panic!("{e:#}; A, B, observer: {seen:#?}");
    }

    // The customer dies; the forgeries come again while the handover happens.
    let killed = s.kill(a).unwrap();
    forge(&adv, &bn).await;
    let split = s.failover(&armed, killed).await.unwrap();
    assert!(split.end_to_end_ms > 0);
    forge(&adv, &bn).await;
    // B serves on past the forged ranges.
    let past: Vec<(u32, u32)> = heard(&bn).await;
    wait_for("B to process past the forged ranges", 30, async || {
        let rb = radio_of(&bn).await?;
        past.iter()
            .all(|(dev, h)| {
                rb.devices.iter().any(|d| {
                    d.device == *dev
                        && d.service.is_some()
                        && d.last_processed.is_some_and(|l| l > h + 20)
                })
            })
            .then_some(())
    })
    .await
    .unwrap();

    // The three rounds of forgeries all reached B and were refused there.
    wait_for("B to refuse every forgery", 30, async || {
        let rb = radio_of(&bn).await?;
        (rb.stats.ranges_refused_not_manager >= 6 * DEVICES.len() as u64).then_some(())
    })
    .await
    .unwrap();
    let rb = radio_of(&bn).await.unwrap();
    for d in rb.devices.iter().filter(|d| DEVICES.contains(&d.device)) {
        assert!(
            d.peer_covered.is_none_or(|c| c < u32::MAX),
            "B believed a forged checkpoint: {d:?}"
        );
    }
    assert!(
        rb.checkpoints.iter().all(|c| c.edge != hostile),
        "B kept a forged checkpoint: {:?}",
        rb.stats
    );
    let ro = radio_of(&on).await.unwrap();
    assert!(
        ro.checkpoints
            .iter()
            .filter(|c| c.edge == hostile)
            .all(|c| !c.verified && c.checkpoint.ranges.iter().all(|r| r.last < u32::MAX)),
        "the observer kept the hostile peer's word only as unverified hearsay within the bound"
    );

    // Every reading processed once, as the demo measures it from the checkpoints an observer
    // heard (A's and B's; the hostile peer's are not readings anyone processed).
    let honest = [an.node_id.clone(), bn.node_id.clone()];
    let cov = s.coverage_of(b, |c| honest.contains(&c.edge)).await;
    eprintln!("coverage under forged checkpoints: {cov:?}; split {split:?}");
    assert!(cov.sent > 0, "{cov:?}");
    assert_eq!(cov.missing, 0, "{cov:?}");
    assert_eq!(cov.duplicated, 0, "{cov:?}");
    drop(adv);
    s.down(true).await.unwrap();
}

fn radio_addr(n: &DevnetNode) -> std::net::SocketAddr {
    std::fs::read_to_string(n.data_dir.join(agora_api::RADIO_ADDR_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// One round of spoofing for every insured sensor, just past what `at` heard: forged MICs at
/// counters inside the window (far past anything the sensors send during the test, so a leak
/// would show), a counter far beyond the window, an unsigned v1 frame, and genuine frames the
/// hostile radio overheard (rebuilt here with the real key at counters already sent: byte for
/// byte what the sensor put on the air, which the hostile radio could have recorded).
async fn spoof(
    radio: &mut HostileRadio,
    at: &DevnetNode,
    to: &[std::net::SocketAddr],
    keys: &std::collections::BTreeMap<u32, agora_radio::DeviceKey>,
    round: u64,
) {
    spoof_devices(radio, at, to, keys, round, &DEVICES).await;
}

/// [`spoof`] for `devices`, sent by one `Sensors` in this order.
async fn spoof_devices(
    radio: &mut HostileRadio,
    at: &DevnetNode,
    to: &[std::net::SocketAddr],
    keys: &std::collections::BTreeMap<u32, agora_radio::DeviceKey>,
    round: u64,
    devices: &[u32],
) {
    for (dev, h) in heard_of(at, devices).await {
        for i in 0..4u32 {
            let f = forged_frame(dev, h + 5_000 + i, round * 16 + u64::from(i));
            radio.send("bad_mic", &f, to).await.unwrap();
        }
        let far = forged_frame(dev, h + 1_000_000, round);
        radio.send("beyond_window", &far, to).await.unwrap();
        radio
            .send("unsigned", &unsigned_frame(dev, h + 5_100), to)
            .await
            .unwrap();
        let key = keys
            .get(&dev)
            .expect("the devnet keyed the insured sensors");
        let i = devices.iter().position(|d| *d == dev).unwrap_or(0) as u16;
        for seq in [1, h.saturating_sub(5).max(1)] {
            // What the sensor sent at `seq` (devnet/src/demo/sensors.rs), byte for byte.
            let temp = 2000 + (seq % 50) as i16 * 10;
            let working = key.for_epoch(0);
            let genuine =
                agora_devnet::demo::uplink(Some(&working), dev, seq, temp, 5000 + i * 100);
            radio.send("replayed", &genuine, to).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_frames_never_reach_the_service() {
    let Some(Armed {
        tmp: _tmp,
        mut s,
        armed,
        a,
        b,
        an,
        bn,
        on,
    }) = armed_story("attack_radio::spoofed_frames_never_reach_the_service").await
    else {
        return;
    };
    let keys = agora_devnet::sensor_keys::load(&s.m.dir);
    let to = [radio_addr(&an), radio_addr(&bn)];
    let mut hostile = HostileRadio::bind().await.unwrap();

    // The owner verifies its sensors; B got their keys from A when it staged the contract;
    // the observer has none and hears them as hearsay.
    wait_for("B to hold the insured sensors' keys", 60, async || {
        let rb = radio_of(&bn).await?;
        let keyed = rb
            .devices
            .iter()
            .filter(|d| DEVICES.contains(&d.device) && d.authenticated)
            .count();
        (keyed == DEVICES.len() && rb.stats.frames_verified > 0).then_some(())
    })
    .await
    .unwrap();
    let ra = radio_of(&an).await.unwrap();
    assert!(
        ra.devices
            .iter()
            .filter(|d| DEVICES.contains(&d.device))
            .all(|d| d.authenticated),
        "A verifies its own sensors: {:?}",
        ra.devices
    );
    let ro = radio_of(&on).await.unwrap();
    assert!(
        ro.devices.iter().all(|d| !d.authenticated) && ro.stats.frames_unverified > 0,
        "the observer holds no key: {:?}",
        ro.stats
    );
    let start: u32 = heard(&bn).await.iter().map(|(_, h)| *h).max().unwrap();

    // Before the handover.
    spoof(&mut hostile, &bn, &to, &keys, 0).await;
    let n = DEVICES.len() as u64;
    wait_for("A and B to refuse every spoofed frame", 30, async || {
        let (ra, rb) = (radio_of(&an).await?, radio_of(&bn).await?);
        [ra, rb]
            .iter()
            .all(|r| {
                r.stats.frames_refused_bad_mic >= 4 * n
                    && r.stats.frames_refused_beyond_window >= n
                    && r.stats.frames_refused_unsigned >= n
                    && r.stats.frames_refused_replayed >= 2 * n
            })
            .then_some(())
    })
    .await
    .unwrap();

    // The customer dies; the spoofing goes on while B takes over.
    let killed = s.kill(a).unwrap();
    spoof(&mut hostile, &bn, &to, &keys, 1).await;
    let split = s.failover(&armed, killed).await.unwrap();
    assert!(split.end_to_end_ms > 0);
    spoof(&mut hostile, &bn, &to, &keys, 2).await;
    wait_for("B to refuse the later rounds", 30, async || {
        let rb = radio_of(&bn).await?;
        (rb.stats.frames_refused_bad_mic >= 12 * n
            && rb.stats.frames_refused_beyond_window >= 3 * n
            && rb.stats.frames_refused_unsigned >= 3 * n
            && rb.stats.frames_refused_replayed >= 6 * n)
            .then_some(())
    })
    .await
    .unwrap();

    // No spoofed counter was heard, processed or checkpointed: every spoofed frame sat at
    // least 5,000 past the sensors, which send one frame per 100 ms.
    let rb = radio_of(&bn).await.unwrap();
    let bound = start + 4_000;
    for d in rb.devices.iter().filter(|d| DEVICES.contains(&d.device)) {
        assert!(d.service.is_some(), "B serves {d:?}");
        assert!(
            d.heard.is_some_and(|h| h < bound) && d.last_processed.is_some_and(|l| l < bound),
            "a spoofed counter reached B: {d:?}"
        );
    }
    assert!(
        rb.checkpoints
            .iter()
            .flat_map(|c| &c.checkpoint.ranges)
            .all(|r| r.last < bound),
        "a spoofed reading was checkpointed"
    );
    eprintln!(
        "hostile radio sent {:?}; B refused {:?}",
        hostile.sent, rb.stats
    );

    let cov = s.coverage(b).await;
    eprintln!("coverage under spoofed frames: {cov:?}; split {split:?}");
    assert!(cov.sent > 0, "{cov:?}");
    assert_eq!(cov.missing, 0, "{cov:?}");
    assert_eq!(cov.duplicated, 0, "{cov:?}");
    s.down(true).await.unwrap();
}

/// The drone's case (R1): a hosted contract of A's for a device its own service does not name.
/// The provider asks A for the device's key when it stages the contract, and A hands it over
/// because its ledger says the asker provides for that device; so the provider verifies the
/// device's frames while it feeds them to the contract's service, and a hostile radio's forged,
/// far-ahead, unsigned and replayed frames are refused and counted there, never processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_contracts_provider_refuses_spoofed_frames() {
    const DRONE: u32 = agora_devnet::sensor_keys::KEYED_SENSORS[3];
    let Some((_tmp, s)) =
        started_story("attack_radio::a_hosted_contracts_provider_refuses_spoofed_frames").await
    else {
        return;
    };
    assert!(!DEVICES.contains(&DRONE), "not a device of A's own service");
    let keys = agora_devnet::sensor_keys::load(&s.m.dir);
    assert!(keys.contains_key(&DRONE), "the devnet keys the drone");
    let hosted = s.hosted(&[DRONE], 120_000).await.unwrap();
    let pn = s.m.nodes[hosted.b].clone();
    assert_ne!(hosted.b, s.a);
    let region = agora_devnet::demo::Region::default();
    region.set(vec![radio_addr(&pn)]);
    let drone = agora_devnet::demo::Sensors::start(
        vec![DRONE],
        std::time::Duration::from_millis(100),
        region,
        keys.clone(),
    )
    .await
    .unwrap();

    // The provider holds the drone's key (from A) and feeds its verified frames.
    wait_for(
        "the provider to verify and process the drone",
        60,
        async || {
            let rp = radio_of(&pn).await?;
            let d = rp.devices.iter().find(|d| d.device == DRONE)?;
            (d.authenticated
                && d.service.is_some()
                && d.processed > 0
                && rp.stats.keys_received > 0)
                .then_some(())
        },
    )
    .await
    .unwrap();
    let start = heard_of(&pn, &[DRONE]).await[0].1;

    let mut hostile = HostileRadio::bind().await.unwrap();
    let to = [radio_addr(&pn)];
    for round in 0..2 {
        spoof_devices(&mut hostile, &pn, &to, &keys, round, &[DRONE]).await;
    }
    wait_for(
        "the provider to refuse every spoofed frame",
        30,
        async || {
            let r = radio_of(&pn).await?.stats;
            (r.frames_refused_bad_mic >= 8
                && r.frames_refused_beyond_window >= 2
                && r.frames_refused_unsigned >= 2
                && r.frames_refused_replayed >= 4)
                .then_some(())
        },
    )
    .await
    .unwrap();
    let sent = drone.stop().await;
    let rp = radio_of(&pn).await.unwrap();
    let bound = start + 4_000;
    let d = rp.devices.iter().find(|d| d.device == DRONE).unwrap();
    assert!(
        d.heard.is_some_and(|h| h < bound) && d.last_processed.is_some_and(|l| l < bound),
        "a spoofed counter reached the provider: {d:?}"
    );
    assert!(
        rp.checkpoints
            .iter()
            .flat_map(|c| &c.checkpoint.ranges)
            .filter(|r| r.device == DRONE)
            .all(|r| r.last < bound),
        "a spoofed reading was checkpointed"
    );
    eprintln!(
        "drone sent {sent:?}; hostile radio sent {:?}; the provider refused {:?}",
        hostile.sent, rp.stats
    );
    s.down(true).await.unwrap();
}
