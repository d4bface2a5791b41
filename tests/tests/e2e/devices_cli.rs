//! Issue #16 on real processes: `agora devnet devices` runs simulated devices with endpoints
//! against a devnet; every edge's discovery handler asks each device it hears for its metadata,
//! and `agora device list` shows them — kind, firmware type, version, lock flag, mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agora_tests::{TestDevnet, agora_bin, try_agora_json, wait_until};

/// Kills the devices process when dropped.
struct Devices(Child);

impl Drop for Devices {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn edges_discover_devices_with_their_metadata() {
    let net = TestDevnet::up(2, 120, &[]);
    let dir = net.dir_s();
    let devices = Devices(
        Command::new(agora_bin())
            .args([
                "devnet",
                "devices",
                "--count",
                "5",
                "--locked",
                "2",
                "--first-id",
                "700",
                "--interval-ms",
                "200",
                "--for",
                "300",
                "--dir",
                &dir,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agora devnet devices"),
    );
    for i in 0..2 {
        let node = net.node(i);
        let mut last = serde_json::Value::Null;
        wait_until(
            &format!("node{i} to discover 5 devices with metadata and hear their readings"),
            Duration::from_secs(90),
            || {
                let Some(list) = try_agora_json(&["device", "list", "--data-dir", &node]) else {
                    return false;
                };
                last = list.clone();
                list["devices"].as_array().is_some_and(|d| {
                    d.len() == 5
                        && d.iter().all(|e| {
                            !e["meta"].is_null() && e["uplinks"].as_u64().is_some_and(|u| u >= 1)
                        })
                })
            },
        );
        let devs = last["devices"].as_array().unwrap();
        let ids: Vec<u64> = devs.iter().map(|d| d["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, vec![700, 701, 702, 703, 704]);
        for d in devs {
            let m = &d["meta"];
            assert_eq!(m["kind"], "thermo");
            assert_eq!(m["firmware_type"], "agora-sensor");
            assert_eq!(m["version"], "1.0.0");
            assert_eq!(m["mode"], "running");
            let locked = d["id"].as_u64().unwrap() >= 703;
            assert_eq!(m["locked"], locked, "device {}", d["id"]);
        }
        assert!(last["stats"]["announcements"].as_u64().unwrap() >= 5);
    }
    drop(devices);
}
