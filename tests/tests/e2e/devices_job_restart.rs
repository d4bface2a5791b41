//! Issue #16 on real processes: an owner restarted mid-job resumes its own firmware job. A
//! two-node devnet; node0 runs its own service on devices 900..=905 (it manages them), `agora
//! devnet devices --count 6 --locked 1` simulates them over UDP with a slow flash link (a
//! device takes seconds to flash). `agora device flash --detach` on node0 starts the job; once
//! at least one device is updated and the next one is being flashed, node0 is SIGKILLed (`agora
//! devnet kill`) and started again (`agora devnet start`). Then `agora device job status ID`
//! shows the same job, restored, with the devices done before the kill kept, and the job
//! finishes: every unlocked device on the new version, the locked one untouched, and no device
//! done before the kill flashed again (its boot counter moved by exactly one flash: reboot into
//! the bootloader, boot the image).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use agora_tests::devices::{DevicesProcess, gateway_manifest};
use agora_tests::{
    TestDevnet, agora, agora_bin, agora_json, publish_service, try_agora_json, wait_until,
};

const FIRST: u32 = 900;
const COUNT: u32 = 6;
const LOCKED: u32 = 1;

/// Device id → (boot counter, version, mode) as node0's `agora device list` shows them, once
/// every device answered and `ok` holds for all.
fn listed(
    node: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> BTreeMap<u32, (u64, String, String)> {
    let mut last = Vec::new();
    wait_until(what, Duration::from_secs(180), || {
        let Some(list) = try_agora_json(&["device", "list", "--data-dir", node]) else {
            return false;
        };
        last = list["devices"].as_array().cloned().unwrap_or_default();
        last.len() == COUNT as usize && last.iter().all(|d| !d["meta"].is_null() && ok(d))
    });
    last.iter()
        .map(|d| {
            let m = &d["meta"];
            (
                d["id"].as_u64().unwrap() as u32,
                (
                    m["boots"].as_u64().unwrap(),
                    m["version"].as_str().unwrap().to_string(),
                    m["mode"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// `agora device job status ID --json` on `node` (`None` while the node does not answer or
/// does not know the job; it exits non-zero when a device failed, the JSON is read anyway).
fn job_status(node: &str, id: u64) -> Option<serde_json::Value> {
    let out = agora(&[
        "device",
        "job",
        "status",
        &id.to_string(),
        "--json",
        "--data-dir",
        node,
    ]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .filter(|v| v["status"].is_object())
}

#[test]
fn a_restarted_owner_resumes_its_own_firmware_job() {
    let test = "a_restarted_owner_resumes_its_own_firmware_job";
    let Some(module) = agora_tests::lora_module(test) else {
        return;
    };
    let net = TestDevnet::up(2, 120, &[]);
    let (n0, dir) = (net.node(0), net.dir_s());
    let node0_id = net.nodes()[0]["node_id"].as_str().unwrap().to_string();
    let ids: Vec<u32> = (FIRST..FIRST + COUNT).collect();
    let svc = net.tmp().join("svc0");
    std::fs::create_dir_all(&svc).unwrap();
    let image = publish_service(&n0, &svc.join("gw.wasm"), &module, &gateway_manifest(&ids));
    agora_json(&["own", &image, "--data-dir", &n0]);
    let (first, count, locked) = (FIRST.to_string(), COUNT.to_string(), LOCKED.to_string());
    let _devices = DevicesProcess(
        Command::new(agora_bin())
            .args([
                "devnet",
                "devices",
                "--count",
                &count,
                "--first-id",
                &first,
                "--locked",
                &locked,
                "--interval-ms",
                "200",
                "--reboot-ms",
                "200",
                // 30 KB at 10 KB/s: about 3 s a device, time to kill the owner mid-flash.
                "--link-rate",
                "10000",
                "--for",
                "900",
                "--dir",
                &dir,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agora devnet devices"),
    );
    let before = listed(&n0, "node0 to discover the devices as their manager", |d| {
        d["manager"].as_str() == Some(node0_id.as_str())
    });

    let firmware = net.tmp().join("fw-3.0.0.bin");
    let bytes: Vec<u8> = (0..30_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&firmware, &bytes).unwrap();
    let started = agora_json(&[
        "device",
        "flash",
        "--devices",
        &format!("id={FIRST}-{}", FIRST + COUNT - 1),
        "--firmware",
        &firmware.display().to_string(),
        "--version",
        "3.0.0",
        "--max-unavailable",
        "1",
        "--detach",
        "--data-dir",
        &n0,
    ]);
    let id = started["id"].as_u64().expect("job id");

    // Kill the owner once a device is updated and the next one is being flashed.
    let mut at_kill = serde_json::Value::Null;
    wait_until(
        "one device updated and another being flashed",
        Duration::from_secs(120),
        || {
            let Some(v) = job_status(&n0, id) else {
                return false;
            };
            let devs = v["status"]["devices"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let updated = devs.iter().any(|d| d["outcome"]["updated"].is_object());
            let flashing = devs
                .iter()
                .any(|d| d["step"] == "flashing" && d["chunks_done"].as_u64() >= Some(1));
            at_kill = v;
            updated && flashing
        },
    );
    let out = agora(&["devnet", "kill", "node0", "--dir", &dir]);
    assert!(out.status.success(), "{out:?}");
    let done_before: BTreeMap<u32, serde_json::Value> = at_kill["status"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| !d["outcome"].is_null())
        .map(|d| (d["device"].as_u64().unwrap() as u32, d["outcome"].clone()))
        .collect();
    let cut: Vec<u32> = at_kill["status"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["step"] == "flashing")
        .map(|d| d["device"].as_u64().unwrap() as u32)
        .collect();
    eprintln!("killed node0 with done {done_before:?}, cut mid-flash {cut:?}");
    let file = net.dir.join("node0").join("radio-jobs.json");
    let mode = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());

    let out = agora(&["devnet", "start", "node0", "--dir", &dir]);
    assert!(out.status.success(), "{out:?}");

    // The job is there again, with its history, and goes on to the end.
    let mut last = serde_json::Value::Null;
    wait_until(
        "the restored job to finish after the restart",
        Duration::from_secs(240),
        || {
            let Some(v) = job_status(&n0, id) else {
                return false;
            };
            assert!(
                v["restored_at"].as_u64().is_some(),
                "job status says it was restored: {v:#}"
            );
            for (d, outcome) in &done_before {
                let now = v["status"]["devices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["device"] == *d)
                    .map(|x| x["outcome"].clone());
                assert_eq!(now.as_ref(), Some(outcome), "device {d} kept its outcome");
            }
            last = v;
            last["finished"] == true
        },
    );
    eprintln!("after the restart: {last:#}");
    let s = &last["status"]["summary"];
    let counts =
        ["updated", "skipped", "rolled_back", "lost", "pending"].map(|k| s[k].as_u64().unwrap());
    assert_eq!(
        counts,
        [u64::from(COUNT - LOCKED), u64::from(LOCKED), 0, 0, 0],
        "{last:#}"
    );

    // What the devices report: every unlocked one on 3.0.0, the locked one untouched; one done
    // before the kill was flashed once (two boots: into the bootloader, into the image).
    let after = listed(
        &n0,
        "the devices to report their versions after the job",
        |d| {
            let locked = d["id"].as_u64().unwrap() >= u64::from(FIRST + COUNT - LOCKED);
            let want = if locked { "1.0.0" } else { "3.0.0" };
            d["meta"]["version"] == want && d["meta"]["mode"] == "running"
        },
    );
    for (d, (boots, _, _)) in &after {
        let was = before[d].0;
        if *d >= FIRST + COUNT - LOCKED {
            assert_eq!(*boots, was, "locked device {d} never rebooted");
        } else if done_before.contains_key(d) {
            assert_eq!(
                *boots,
                was + 2,
                "device {d}, done before the kill, flashed once"
            );
        } else if !cut.contains(d) {
            assert_eq!(
                *boots,
                was + 2,
                "device {d}, not reached before the kill, flashed once"
            );
        }
    }
    let jobs = agora_json(&["device", "job", "list", "--data-dir", &n0]);
    assert_eq!(jobs["stats"]["restored"], 1, "{jobs:#}");
    assert_eq!(jobs["stats"]["dropped_on_load"], 0, "{jobs:#}");
}
