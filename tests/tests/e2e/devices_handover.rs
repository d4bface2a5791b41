//! Issue #16 on real processes: a firmware job survives the edge running it being killed.
//!
//! The handover story (7 nodes, every one an arbitrator) with A's sensors 101-103 as devices
//! with endpoints (keyed, 103 locked by its owner). A buys standby insurance from B, then starts
//! a firmware job on its devices; A hands the job to B (its provider for them), B keeps it. A
//! is SIGKILLed while it flashes the second device (the first one updated): the arbitrators
//! attest, B takes the devices and resumes the job — the updated device is skipped as current,
//! the one A left in its bootloader is flashed again, the locked one is never touched — and no
//! reading is lost or counted twice — also when B is SIGKILLed in turn while it flashes 102 and
//! restarted: its job table brings the job back and it finishes it. Before the kill, a stranger sends B hand-offs it has no right
//! to make (threat R2): each is refused and counted, and A's job stays kept. B is also SIGKILLed
//! and restarted once before all this, while its contract is armed: it verifies and buffers
//! A's devices again, keeps A's hand-off and takes over at the handover all the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agora_api::client::ApiClient;
use agora_devices::agent::AgentConfig;
use agora_devices::handoff::{HandoffStats, JobHandoff};
use agora_devices::{Mode, Outcome, SkipReason, Step};
use agora_devnet::demo::Story;
use agora_devnet::demo::story::{DEVICES, DeviceOptions, wait_for};
use agora_devnet::files::{CONTRACT_NODES, DevnetNode};
use agora_network::keys::peer_id_of;
use agora_radio::DeviceList;
use agora_radio::firmware::{JobList, JobStarted, JobView};
use agora_tests::adversary::{Adversary, TestLauncher};
use agora_tests::{agora, agora_bin};
use agora_wire::codec::Kind;
use agora_wire::radio::RadioRpc;

const VERSION: &str = "2.0.0";

fn api(n: &DevnetNode) -> Option<ApiClient> {
    ApiClient::for_data_dir(&n.data_dir).ok()
}

/// `agora ARGS --json`, off the runtime's threads (the simulated devices run on them).
async fn cli_json(args: Vec<String>) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.push("--json");
        let out = agora(&all);
        assert!(out.status.success(), "agora {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// A hostile peer sends B hand-offs it has no right to make (see the call site); B refuses and
/// counts each, keeps no job of the stranger and still keeps A's job `job`, not resumed.
async fn hostile_handoffs(s: &Story, bn: &DevnetNode, a_id: &str, job: u64) {
    let genuine: JobList = api(bn).unwrap().get("/v1/devices/jobs").await.unwrap();
    let genuine = genuine
        .handoffs
        .iter()
        .find(|k| k.owner.to_string() == a_id && k.handoff.job == job)
        .expect("A's hand-off kept on B")
        .handoff
        .clone();
    let before = genuine_stats(bn).await;
    let adv = Adversary::join_manifest(&s.m)
        .await
        .expect("adversary joins");
    let b_peer = peer_id_of(&bn.node_id.parse().unwrap()).unwrap();
    let send = async |h: JobHandoff| -> Option<bool> {
        let body = serde_cbor::to_vec(&RadioRpc::JobHandoff { handoff: h }).unwrap();
        let env = adv.seal(Kind::Radio, body);
        let answer = adv.request_raw(b_peer, env.to_bytes()).await.ok()?;
        match serde_cbor::from_slice(&answer.payload).ok()? {
            RadioRpc::HandoffAck { kept } => Some(kept),
            _ => None,
        }
    };
    let own_job = JobHandoff {
        job: 4242,
        ..genuine.clone()
    };
    assert_eq!(
        send(own_job).await,
        Some(false),
        "a stranger's job on A's devices"
    );
    let retire = JobHandoff {
        finished: true,
        ..genuine.clone()
    };
    assert_eq!(
        send(retire).await,
        Some(false),
        "a stranger retiring A's job"
    );
    let empty = JobHandoff {
        job: 4243,
        devices: Vec::new(),
        done: Vec::new(),
        ..genuine.clone()
    };
    assert_eq!(
        send(empty).await,
        Some(false),
        "a hand-off naming no device"
    );
    // A's id on the stranger's signature: the envelope does not verify, nothing is answered.
    let retire = serde_cbor::to_vec(&RadioRpc::JobHandoff {
        handoff: JobHandoff {
            finished: true,
            ..genuine.clone()
        },
    })
    .unwrap();
    let mut forged = adv.seal(Kind::Radio, retire);
    forged.sender = a_id.parse().unwrap();
    assert!(
        adv.request_raw(b_peer, forged.to_bytes()).await.is_err(),
        "a hand-off claiming to be A's is not answered"
    );

    let after = genuine_stats(bn).await;
    assert!(
        after.refused_not_owner >= before.refused_not_owner + 2,
        "B counts the stranger's job and retirement: {before:?} -> {after:?}"
    );
    assert!(
        after.refused_malformed > before.refused_malformed,
        "B counts the malformed hand-off: {before:?} -> {after:?}"
    );
    assert_eq!(after.retired, before.retired, "nothing was retired");
    let l: JobList = api(bn).unwrap().get("/v1/devices/jobs").await.unwrap();
    assert!(
        l.handoffs
            .iter()
            .any(|k| k.owner.to_string() == a_id && k.handoff.job == job && !k.resumed),
        "B still keeps A's job: {:?}",
        l.handoffs
    );
    assert!(
        !l.handoffs.iter().any(|k| k.owner == adv.node_id()),
        "B keeps no job of the stranger: {:?}",
        l.handoffs
    );
}

/// B's hand-off counters.
async fn genuine_stats(bn: &DevnetNode) -> HandoffStats {
    let l: JobList = api(bn).unwrap().get("/v1/devices/jobs").await.unwrap();
    l.handoff_stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firmware_job_survives_its_edge_being_killed_and_the_standby_finishes_it() {
    let test = "a_firmware_job_survives_its_edge_being_killed_and_the_standby_finishes_it";
    let Some(module) = agora_tests::lora_module(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // 24 KiB at 8 KB/s: three seconds of flashing per device, long enough to kill A mid-way.
    let devices = DeviceOptions {
        agent: AgentConfig {
            reboot_ms: 300,
            link_bytes_per_s: 8_000,
            reading_ms: 100,
        },
        locked: 1,
    };
    let mut s = Story::start_devices(
        &tmp.path().join("net"),
        CONTRACT_NODES,
        &module,
        Arc::new(TestLauncher(agora_bin())),
        true,
        devices,
    )
    .await
    .expect("story starts");
    // Long enough that the contract is still in effect when B has finished the job.
    let armed = s.standby_lasting(180_000).await.unwrap();
    let (an, bn) = (s.m.nodes[s.a].clone(), s.m.nodes[armed.b].clone());

    // Issue #16: the provider is SIGKILLed and restarted *before* the handover, while its
    // contract is armed. From its data dir and the ledger it rebuilds what the handover needs:
    // the devices' keys (`radio-keys.json`: it verifies their frames at epoch 0 again), its
    // buffering of them, and who owns them (from its contract: it keeps A's hand-off below).
    s.kill(armed.b).unwrap();
    s.restart(armed.b).await.unwrap();
    wait_for(
        "B to verify and buffer A's devices again after its restart",
        60,
        async || {
            let st: agora_radio::RadioStatus = api(&bn)?.get("/v1/radio").await.ok()?;
            DEVICES
                .iter()
                .all(|d| {
                    st.devices.iter().any(|x| {
                        x.device == *d && x.key_epoch == Some(0) && x.authenticated && x.buffering
                    })
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    wait_for(
        "A to discover its devices with their metadata",
        60,
        async || {
            let l: DeviceList = api(&an)?.get("/v1/devices").await.ok()?;
            let known = l
                .devices
                .iter()
                .filter(|d| DEVICES.contains(&d.id) && d.meta.is_some())
                .count();
            (known == DEVICES.len()).then_some(())
        },
    )
    .await
    .unwrap();

    let firmware = tmp.path().join("fw-2.0.0.bin");
    let bytes: Vec<u8> = (0..24_576u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&firmware, &bytes).unwrap();
    let started = cli_json(
        [
            "device",
            "flash",
            "--devices",
            "id=101-103",
            "--firmware",
            &firmware.display().to_string(),
            "--version",
            VERSION,
            "--detach",
            "--data-dir",
            &an.data_dir.display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let started: JobStarted = serde_json::from_value(started).unwrap();
    assert_eq!(started.devices, 3);

    // B, A's provider for these devices, keeps A's hand-off.
    let a_id = an.node_id.clone();
    wait_for("B to keep A's firmware job", 30, async || {
        let l: JobList = api(&bn)?.get("/v1/devices/jobs").await.ok()?;
        l.handoffs
            .iter()
            .any(|k| k.owner.to_string() == a_id && k.handoff.job == started.id && !k.resumed)
            .then_some(())
    })
    .await
    .unwrap();

    // Threat R2 on real processes: a stranger's hand-offs to B are refused and counted, and A's
    // stays kept — one naming A's devices as its own job, one retiring A's job ("finished"),
    // one malformed (no device), and one claiming to be A (A's id on the stranger's signature,
    // dropped before it is read).
    hostile_handoffs(&s, &bn, &a_id, started.id).await;

    // Kill A once the first device is updated and the second is being flashed.
    let path = format!("/v1/devices/jobs/{}", started.id);
    let progress = wait_for("A to update 101 and flash 102", 90, async || {
        let v: JobView = api(&an)?.get(&path).await.ok()?;
        let d = |id: u32| v.status.devices.iter().find(|d| d.device == id).cloned();
        let (d101, d102) = (d(101)?, d(102)?);
        (matches!(d101.outcome, Some(Outcome::Updated { .. }))
            && d102.step == Step::Flashing
            && d102.chunks_done >= 2)
            .then_some(v)
    })
    .await
    .unwrap();
    assert_eq!(
        progress.handed_to,
        vec![bn.node_id.clone()],
        "A knows B kept it"
    );
    // B holds the job's image pinned for the hand-off (a collection cannot take it before
    // A dies), under a holder naming A and the job.
    let holder = format!("handoff:{}:{}", an.node_id, started.id);
    wait_for("B to hold the hand-off's image", 30, async || {
        let ls: agora_exchange::LsReply = api(&bn)?.get("/v1/storage/ls").await.ok()?;
        ls.held
            .values()
            .any(|holders| holders.contains(&holder))
            .then_some(())
    })
    .await
    .unwrap();
    let killed = s.kill(s.a).unwrap();
    let caught = s.device_metas()[&102].clone();
    assert_eq!(
        (caught.mode, caught.version.as_str()),
        (Mode::Bootloader, "1.0.0"),
        "A died with 102 in its bootloader"
    );
    s.failover(&armed, killed).await.unwrap();

    // B is SIGKILLed in turn while it flashes 102 for A's job, and restarted (issue #16: a
    // provider restarted while it runs a taken-over job). Its job table brings the job back
    // (`radio-jobs.json`), 102 starts over from its bootloader, and the kept hand-off stays
    // resumed: no second job is started from it.
    let resumed_job = |l: &JobList| {
        l.jobs
            .iter()
            .filter(|j| {
                j.resumed_from
                    .as_ref()
                    .is_some_and(|r| r.owner == a_id && r.job == started.id)
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    wait_for("B to resume A's job and flash 102", 90, async || {
        let l: JobList = api(&bn)?.get("/v1/devices/jobs").await.ok()?;
        let j = resumed_job(&l).pop()?;
        let d102 = j.status.devices.iter().find(|d| d.device == 102)?;
        (d102.step == Step::Flashing && d102.chunks_done >= 2).then_some(())
    })
    .await
    .unwrap();
    s.kill(armed.b).unwrap();
    let cut = s.device_metas()[&102].clone();
    assert_eq!(
        (cut.mode, cut.version.as_str()),
        (Mode::Bootloader, "1.0.0"),
        "B died with 102 in its bootloader"
    );
    s.restart(armed.b).await.unwrap();

    // B resumes A's job and finishes it.
    let resumed = wait_for("B to finish A's job", 120, async || {
        let l: JobList = api(&bn)?.get("/v1/devices/jobs").await.ok()?;
        l.jobs.into_iter().find(|j| {
            j.finished
                && j.resumed_from
                    .as_ref()
                    .is_some_and(|r| r.owner == a_id && r.job == started.id)
        })
    })
    .await
    .unwrap();
    assert!(
        resumed.restored_at.is_some(),
        "B reloaded the job it was running when it was killed: {resumed:#?}"
    );
    let after: JobList = api(&bn).unwrap().get("/v1/devices/jobs").await.unwrap();
    assert_eq!(
        resumed_job(&after).len(),
        1,
        "one job on B for A's hand-off, restored, not started again: {:#?}",
        after.jobs
    );
    assert!(after.stats.restored >= 1, "{:?}", after.stats);
    assert_eq!(
        after.stats.resume_failed, 0,
        "the reloaded hand-off is not resumed a second time: {:?}",
        after.stats
    );
    assert!(
        after
            .handoffs
            .iter()
            .any(|k| k.owner.to_string() == a_id && k.handoff.job == started.id && k.resumed),
        "B's kept hand-off reloaded as resumed: {:?}",
        after.handoffs
    );
    let outcome = |id: u32| {
        resumed
            .status
            .devices
            .iter()
            .find(|d| d.device == id)
            .and_then(|d| d.outcome.clone())
    };
    // A updated 101 before it was killed: its outcome travelled with the hand-off (B leaves
    // the device out), or, when A died before that refresh reached B, B finds it current.
    let owner_done = resumed
        .resumed_from
        .as_ref()
        .and_then(|r| r.done.iter().find(|(d, _)| *d == 101).map(|(_, o)| *o));
    assert!(
        owner_done == Some(agora_devices::handoff::OwnerDone::Updated)
            || outcome(101) == Some(Outcome::Skipped(SkipReason::AlreadyCurrent)),
        "{resumed:#?}"
    );
    assert!(
        matches!(outcome(102), Some(Outcome::Updated { .. })),
        "{resumed:#?}"
    );
    assert_eq!(
        outcome(103),
        Some(Outcome::Skipped(SkipReason::Locked)),
        "{resumed:#?}"
    );

    // What B's `agora device list` says, and what the devices say.
    let b_dir = bn.data_dir.display().to_string();
    let mut list = serde_json::Value::Null;
    for _ in 0..100 {
        list = cli_json(
            ["device", "list", "--data-dir", &b_dir]
                .map(String::from)
                .to_vec(),
        )
        .await;
        let version = |id: u32| {
            list["devices"]
                .as_array()
                .and_then(|a| a.iter().find(|d| d["id"] == id))
                .map(|d| d["meta"]["version"].clone())
        };
        if version(101) == Some(VERSION.into())
            && version(102) == Some(VERSION.into())
            && version(103) == Some("1.0.0".into())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for d in list["devices"].as_array().unwrap() {
        let id = d["id"].as_u64().unwrap() as u32;
        if !DEVICES.contains(&id) {
            continue;
        }
        let want = if id == 103 { "1.0.0" } else { VERSION };
        assert_eq!(d["meta"]["version"], want, "B's device list: {d}");
        assert_eq!(d["meta"]["mode"], "running", "{d}");
        assert_eq!(d["manager"].as_str(), Some(bn.node_id.as_str()), "{d}");
    }
    let metas = s.device_metas();
    assert_eq!(metas[&103].boots, 1, "the locked device never rebooted");
    assert_eq!(metas[&102].version, VERSION);

    let cov = s.coverage(armed.b).await;
    assert_eq!(cov.missing, 0, "{cov:?}");
    assert_eq!(cov.duplicated, 0, "{cov:?}");
    assert!(
        cov.by_edge.len() >= 2,
        "A and B both processed readings: {cov:?}"
    );
    s.down(true).await.unwrap();
}
