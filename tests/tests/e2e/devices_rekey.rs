//! Key rotation on real processes (threats R1/R2): a provider whose contract for a device ended
//! keeps the device's working key; the owner rotates it, so that key commands nothing and
//! forges nothing any more, while the providers that remain move to the new key without losing
//! a frame.
//!
//! The handover story's devnet (7 nodes) with A's sensors 101-103 as keyed devices with
//! endpoints. A insures its service with a standby contract on B (B holds the keys of
//! 101-103), then hosts a second image naming 101 and 102 on another provider P for 30 s (P is
//! handed their keys at epoch 0). When P's contract ends, A's ledger drops P: A hands the
//! epoch-1 keys of 101 and 102 to B, then rekeys both devices under their root keys. Then:
//! the devices are at epoch 1 (103 untouched); B verifies under the new keys with no frame
//! refused; P, honest, forgot the keys when its contract ended; a reboot sealed under P's old
//! key (a P that kept a copy) is refused by the device; frames forged under it are refused by
//! A and B.
//! Last, the operator rotates 103 by hand (`agora device rotate 103`): B moves with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use agora_api::client::ApiClient;
use agora_contracts::ContractStatus;
use agora_devices::Mode;
use agora_devices::agent::{AgentConfig, Request};
use agora_devnet::demo::Story;
use agora_devnet::demo::story::{DeviceOptions, wait_for};
use agora_devnet::files::{CONTRACT_NODES, DevnetNode};
use agora_radio::{DeviceKey, DeviceList, RadioStatus};
use agora_tests::adversary::TestLauncher;
use agora_tests::agora_bin;
use agora_wire::radio::endpoint::seal_request;

async fn radio_of(n: &DevnetNode) -> Option<RadioStatus> {
    agora_tests::radio_status(n).await
}

/// `(key_epoch, heard)` of `device` at `n`.
async fn epoch_at(n: &DevnetNode, device: u32) -> Option<(Option<u32>, Option<u32>)> {
    let st = radio_of(n).await?;
    let d = st.devices.iter().find(|d| d.device == device)?;
    Some((d.key_epoch, d.heard))
}

/// The working key `n` keeps in its received-keys file for `device`.
fn received_key(dir: &Path, device: u32) -> Option<DeviceKey> {
    let body = std::fs::read(dir.join(agora_radio::RECEIVED_KEYS_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v.as_array()?
        .iter()
        .find(|e| e["device"] == device)
        .and_then(|e| DeviceKey::from_hex(e["key"].as_str()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_key_is_rotated_away_when_its_contract_ends() {
    let test = "a_providers_key_is_rotated_away_when_its_contract_ends";
    let Some(module) = agora_tests::lora_module(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let devices = DeviceOptions {
        agent: AgentConfig {
            reboot_ms: 300,
            link_bytes_per_s: 8_000,
            reading_ms: 100,
        },
        locked: 0,
    };
    let s = Story::start_devices(
        &tmp.path().join("net"),
        CONTRACT_NODES,
        &module,
        Arc::new(TestLauncher(agora_bin())),
        true,
        devices,
    )
    .await
    .expect("story starts");
    let roots = agora_devnet::sensor_keys::load(&s.m.dir);
    let armed = s.standby_lasting(300_000).await.unwrap();
    let (a, b) = (s.a, armed.b);
    let p = (0..s.m.nodes.len())
        .find(|i| *i != a && *i != b)
        .expect("a third node");
    // 45 s: long enough for another customer's contract naming 101 to reach P meanwhile.
    let hosted = s.hosted_near(&[101, 102], 45_000, Some(p)).await.unwrap();
    assert_eq!(hosted.b, p, "the auction admitted only the node near P");
    let (an, bn, pn) = (
        s.m.nodes[a].clone(),
        s.m.nodes[b].clone(),
        s.m.nodes[p].clone(),
    );

    // P and B hold the working keys of epoch 0 (never the roots).
    let old = roots[&101].for_epoch(0);
    wait_for(
        "P and B to hold the keys of 101 and 102 at epoch 0",
        60,
        async || {
            for n in [&pn, &bn] {
                for d in [101, 102] {
                    (epoch_at(n, d).await?.0 == Some(0)).then_some(())?;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(received_key(&pn.data_dir, 101), Some(old.clone()));
    assert_ne!(received_key(&pn.data_dir, 101), Some(roots[&101].clone()));

    // THREATS R8 on processes: another customer X names A's device 101 in a contract with the
    // same provider P while A's runs there. P does not serve it (the first live claim holds:
    // X would be 101's owner there, could hand P firmware jobs and keys for it, and P would
    // drop A's key), and A's contract and P's key of 101 stay.
    let x = (0..s.m.nodes.len())
        .find(|i| ![a, b, p].contains(i))
        .expect("a fourth node");
    let p_dir = pn.data_dir.display().to_string();
    let squat = s
        .hosted_tagged(x, 2, &[101], 20_000, Some(p), |st| {
            st.is_final() || st == ContractStatus::Active
        })
        .await
        .unwrap();
    assert_eq!(squat.b, p);
    assert_ne!(
        squat.rec.status,
        ContractStatus::Active,
        "P served X's contract naming A's device: {:?}",
        squat.rec
    );
    let why = wait_for(
        "P's timeline to say why X's contract is not served",
        30,
        async || {
            let timeline = agora_tests::try_agora_json(&["timeline", "--data-dir", &p_dir])?;
            timeline.as_array()?.iter().find_map(|e| {
                (e["contract"] == squat.id.as_str() && e["phase"] == "stage-failed")
                    .then(|| e["detail"].as_str().unwrap_or_default().to_string())
            })
        },
    )
    .await
    .unwrap();
    assert!(why.contains("device 101 is another party's here"), "{why}");
    let p_stats = radio_of(&pn).await.unwrap().stats;
    assert_eq!(p_stats.claims_refused_taken, 1, "{p_stats:?}");
    assert_eq!(
        s.contract(a, &hosted.id).await.map(|r| r.status),
        Some(ContractStatus::Active)
    );
    assert_eq!(
        received_key(&pn.data_dir, 101),
        Some(old.clone()),
        "X's refused claim dropped none of A's keys on P"
    );
    let verified_before = radio_of(&an).await.unwrap().stats.frames_verified;

    // P's contract ends; A rotates the keys P held (101, 102), not 103 (P never held it).
    wait_for("P's hosted contract to end", 120, async || {
        s.contract(a, &hosted.id)
            .await
            .filter(|r| r.status.is_final())
    })
    .await
    .unwrap();
    let st = wait_for("A to rotate the keys of 101 and 102", 60, async || {
        let st = radio_of(&an).await?;
        (st.stats.keys_rotated >= 2).then_some(st)
    })
    .await
    .unwrap();
    assert_eq!(st.stats.keys_rotated, 2, "{:?}", st.stats);
    let epochs = s.device_epochs();
    assert_eq!(epochs.get(&101), Some(&1), "{epochs:?}");
    assert_eq!(epochs.get(&102), Some(&1), "{epochs:?}");
    assert_eq!(epochs.get(&103), None, "103 was never handed to P");

    // B, which still provides for the devices, took the next keys before the devices moved
    // and verifies under them: not one frame of theirs refused.
    wait_for(
        "B to verify 101 and 102 under their epoch-1 keys",
        60,
        async || {
            for d in [101, 102] {
                (epoch_at(&bn, d).await?.0 == Some(1)).then_some(())?;
            }
            Some(())
        },
    )
    .await
    .unwrap();
    let b_stats = radio_of(&bn).await.unwrap().stats;
    assert!(b_stats.key_updates_taken >= 2, "{b_stats:?}");
    assert_eq!(b_stats.frames_refused_bad_mic, 0, "{b_stats:?}");
    let a_stats = radio_of(&an).await.unwrap().stats;
    assert_eq!(a_stats.frames_refused_bad_mic, 0, "{a_stats:?}");
    assert_eq!(epoch_at(&an, 101).await.unwrap().0, Some(1));
    wait_for("A to keep verifying its devices' frames", 30, async || {
        let st = radio_of(&an).await?;
        (st.stats.frames_verified > verified_before + 20).then_some(())
    })
    .await
    .unwrap();

    // P, honest, dropped the keys of 101 and 102 when its contract ended (since session 50: a
    // later customer naming the devices must not find them); the rotation is what stops a P
    // that kept a copy: the old key is tried below.
    wait_for("P to forget the keys of 101 and 102", 90, async || {
        for d in [101, 102] {
            if let Some((Some(_), _)) = epoch_at(&pn, d).await {
                return None;
            }
        }
        Some(())
    })
    .await
    .unwrap();

    // A reboot sealed under P's old key: the device refuses it.
    let list: DeviceList = ApiClient::for_data_dir(&an.data_dir)
        .unwrap()
        .get("/v1/devices")
        .await
        .unwrap();
    let addr: std::net::SocketAddr = list
        .devices
        .iter()
        .find(|d| d.id == 101)
        .expect("A knows device 101")
        .addr
        .parse()
        .unwrap();
    let refused_before = s.device_refused();
    let counter = agora_wire::now_ms() + 60_000;
    let reboot = seal_request(&old, 101, counter, &Request::RebootToBootloader).unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&reboot, addr).await.unwrap();
    wait_for("device 101 to refuse P's reboot", 20, async || {
        (s.device_refused() > refused_before).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(s.device_metas()[&101].mode, Mode::Running, "not rebooted");

    // Frames forged under P's old key are refused by A and B.
    let (a_mic, b_mic) = (
        radio_of(&an).await.unwrap().stats.frames_refused_bad_mic,
        radio_of(&bn).await.unwrap().stats.frames_refused_bad_mic,
    );
    let heard = epoch_at(&an, 101).await.unwrap().1.unwrap_or(0);
    let forged = agora_devnet::demo::uplink(Some(&old), 101, heard + 200, 9_999, 9_999);
    for n in [&an, &bn] {
        let to: std::net::SocketAddr =
            std::fs::read_to_string(n.data_dir.join(agora_api::RADIO_ADDR_FILE))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
        sock.send_to(&forged, to).await.unwrap();
    }
    wait_for("A and B to refuse the forged frame", 20, async || {
        let a = radio_of(&an).await?.stats.frames_refused_bad_mic;
        let b = radio_of(&bn).await?.stats.frames_refused_bad_mic;
        (a > a_mic && b > b_mic).then_some(())
    })
    .await
    .unwrap();

    // The operator rotates 103 by hand (a key thought leaked): `agora device rotate`, exactly
    // as the README shows it, on the owner. B, the provider the ledger names, takes the next
    // key; the device moves; B verifies its frames without refusing one. On B, which does not
    // own 103, the same command is refused.
    let run = |dir: &Path| {
        let dir = dir.display().to_string();
        tokio::task::spawn_blocking(move || {
            agora_tests::agora(&["device", "rotate", "103", "--data-dir", &dir])
        })
    };
    let b_refused = radio_of(&bn).await.unwrap().stats.frames_refused_bad_mic;
    let out = run(&an.data_dir).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("rotating to key epoch 1"), "{text}");
    assert!(text.contains("at key epoch 1"), "{text}");
    assert_eq!(s.device_epochs().get(&103), Some(&1));
    wait_for("B to verify 103 under its epoch-1 key", 60, async || {
        (epoch_at(&bn, 103).await?.0 == Some(1)).then_some(())
    })
    .await
    .unwrap();
    let heard = epoch_at(&bn, 103).await.unwrap().1.unwrap_or(0);
    wait_for("B to hear 103 under its new key", 30, async || {
        (epoch_at(&bn, 103).await?.1.unwrap_or(0) > heard + 5).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        radio_of(&bn).await.unwrap().stats.frames_refused_bad_mic,
        b_refused,
        "B refused frames of 103 across the rotation"
    );
    let out = run(&bn.data_dir).await.unwrap();
    assert!(!out.status.success(), "B rotated a device it does not own");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not this node's"), "{err}");
    s.down(true).await.unwrap();
}
