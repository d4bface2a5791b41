//! Process test of `agora deploy upgrade` (issue #15): on a 7-node contract devnet, two
//! providers labelled `site=factory` run a deployment of image v1 from node0. A healthy upgrade
//! to v2 (`--max-unavailable 1`, start-first: a second contract per target for the new image,
//! the old one released once the new one is healthy) exits 0 and leaves every target running
//! v2 and not v1. An upgrade to a sick image (its `agora_health` export returns 1) exits non-zero
//! with the reason, and every target ends on v2, running, with no sick replica left. Nodes
//! that are not labelled never run any of them.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use agora_tests::fleet::{label, phase_of, runs, status};
use agora_tests::{TestDevnet, agora, agora_json, try_agora_json};

const LABELLED: [usize; 2] = [2, 3];
const WAIT: Duration = Duration::from_secs(300);

/// A guest that answers every poll and whose health export returns `health` (0 = healthy);
/// `tag` makes each version's module different.
fn guest(tag: u32, health: i32) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (global $tag i32 (i32.const {tag}))
  (func (export "agora_poll") (result i32) (i32.const 0))
  (func (export "agora_health") (result i32) (i32.const {health})))"#
    )
}

/// Publishes `wat` on node0 as service `fleet-up` version `version`; returns the image CID.
fn publish(net: &TestDevnet, version: &str, wat: &str) -> String {
    let tmp: &Path = net.tmp();
    let wasm = wat::parse_str(wat).unwrap();
    let module = tmp.join(format!("fleet-up-{version}.wasm"));
    let manifest = tmp.join(format!("fleet-up-{version}.toml"));
    std::fs::write(&module, wasm).unwrap();
    std::fs::write(
        &manifest,
        format!(
            "name = \"fleet-up\"\nversion = \"{version}\"\nkind = \"wasm\"\ntick_ms = 100\n\
             activation = \"immediate\"\ndevices = []\n\n[resources]\ncpu_millis = 250\n\
             memory_mb = 64\nstorage_mb = 1\n\n[limits]\nmemory_bytes = 16777216\n\
             fuel_per_second = 200000000\ninstances = 1\nmax_output_bytes = 1048576\n"
        ),
    )
    .unwrap();
    let published = agora_json(&[
        "service",
        "publish",
        &module.display().to_string(),
        "--manifest",
        &manifest.display().to_string(),
        "--data-dir",
        &net.node(0),
    ]);
    published["image"].as_str().unwrap().to_string()
}

/// `wait_until`, printing the deployment's status and the targets' services if it times out.
fn wait_for(net: &TestDevnet, id: &str, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !f() {
        if std::time::Instant::now() >= deadline {
            eprintln!("status: {}", status(net, id));
            for i in LABELLED {
                eprintln!(
                    "node{i} services: {:?}",
                    try_agora_json(&["service", "list", "--data-dir", &net.node(i)])
                );
            }
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn deploy_upgrade_moves_every_target_to_a_healthy_image_and_rolls_a_sick_one_back() {
    let net = TestDevnet::up(7, 180, &[]);
    let dir = net.dir_s();
    let ids: Vec<String> = net
        .nodes()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .collect();
    // Label the providers one at a time (the committee keeps its quorum).
    for i in LABELLED {
        let name = format!("node{i}");
        let out = agora(&["devnet", "kill", &name, "--dir", &dir]);
        assert!(out.status.success(), "{out:?}");
        label(&net, i);
        let out = agora(&["devnet", "start", &name, "--dir", &dir]);
        assert!(out.status.success(), "{out:?}");
    }

    let v1 = publish(&net, "1.0.0", &guest(1, 0));
    let v2 = publish(&net, "2.0.0", &guest(2, 0));
    let sick = publish(&net, "3.0.0", &guest(3, 1));
    assert!(v1 != v2 && v2 != sick);

    let created = agora_json(&[
        "deploy",
        "create",
        &v1,
        "--to",
        "site=factory",
        "--all",
        "--name",
        "fleet-up",
        "--cpu",
        "250m",
        "--memory",
        "64MiB",
        "--data-dir",
        &net.node(0),
    ]);
    let id = created["id"].as_str().unwrap().to_string();
    wait_for(&net, &id, "every labelled target to run v1 healthy", || {
        let st = status(&net, &id);
        LABELLED
            .iter()
            .all(|i| phase_of(&st, &ids[*i]).as_deref() == Some("healthy"))
            && LABELLED.iter().all(|i| runs(&net, *i, &v1))
    });
    // Before the upgrade: v1 only, and `create` with another image says to upgrade instead.
    assert!(LABELLED.iter().all(|i| !runs(&net, *i, &v2)));
    let again = agora(&[
        "deploy",
        "create",
        &v2,
        "--to",
        "site=factory",
        "--all",
        "--name",
        "fleet-up",
        "--data-dir",
        &net.node(0),
    ]);
    assert!(!again.status.success());
    assert!(text(&again).contains("agora deploy upgrade"), "{again:?}");

    // Healthy upgrade, one target at a time: exits 0 once every target runs v2 healthy.
    let up = agora(&[
        "deploy",
        "upgrade",
        &id,
        "--image",
        &v2,
        "--max-unavailable",
        "1",
        "--health-timeout",
        "4m",
        "--data-dir",
        &net.node(0),
    ]);
    eprintln!("deploy upgrade to v2:\n{}", text(&up));
    assert!(up.status.success(), "{}", text(&up));
    assert!(
        String::from_utf8_lossy(&up.stdout).contains("every target runs"),
        "{up:?}"
    );
    let st = status(&net, &id);
    assert_eq!(st["image"], v2.as_str());
    assert_eq!(st["previous_image"], v1.as_str());
    assert_eq!(st["upgrade"]["state"], "succeeded");
    assert!(
        st["upgrade"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["step"] == "upgraded"),
        "{st}"
    );
    // Every target runs v2; the old contracts end and v1 stops everywhere.
    wait_for(&net, &id, "v1 to stop on every target", || {
        LABELLED
            .iter()
            .all(|i| runs(&net, *i, &v2) && !runs(&net, *i, &v1))
    });
    let table = agora(&["deploy", "status", &id, "--data-dir", &net.node(0)]);
    assert!(table.status.success(), "{table:?}");
    assert!(text(&table).contains("succeeded"), "{table:?}");

    // A sick image: its first new instance reports unhealthy, the upgrade rolls back and the
    // command fails with the reason.
    let bad = agora(&[
        "deploy",
        "upgrade",
        &id,
        "--image",
        &sick,
        "--max-unavailable",
        "1",
        "--health-timeout",
        "4m",
        "--data-dir",
        &net.node(0),
    ]);
    eprintln!("deploy upgrade to the sick image:\n{}", text(&bad));
    assert!(!bad.status.success(), "{}", text(&bad));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("rolled back"), "{err}");
    assert!(err.contains("health export returned 1"), "{err}");
    let st = status(&net, &id);
    assert_eq!(st["upgrade"]["state"], "rolled-back", "{st}");
    assert_eq!(st["image"], v2.as_str(), "the record names v2 again");
    wait_for(
        &net,
        &id,
        "every target back on v2 only, running, no sick replica",
        || {
            LABELLED
                .iter()
                .all(|i| runs(&net, *i, &v2) && !runs(&net, *i, &sick))
        },
    );
    wait_for(
        &net,
        &id,
        "the deployer to show every target healthy on v2",
        || {
            let st = status(&net, &id);
            LABELLED
                .iter()
                .all(|i| phase_of(&st, &ids[*i]).as_deref() == Some("healthy"))
        },
    );
    for i in [1, 4, 5, 6] {
        for image in [&v1, &v2, &sick] {
            assert!(!runs(&net, i, image), "node{i} is not labelled");
        }
    }
}
