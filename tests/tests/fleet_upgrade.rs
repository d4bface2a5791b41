//! Process test of `agora deploy upgrade` (issue #15): on a 7-node contract devnet, two
//! providers labelled `site=factory` run a deployment of image v1 from node0. A healthy upgrade
//! to v2 (`--max-unavailable 1`, start-first: a second contract per target for the new image,
//! the old one released once the new one is healthy) exits 0 and leaves every target running
//! v2 and not v1. An upgrade to a sick image (its `agora_health` export returns 1) exits non-zero
//! with the reason, and every target ends on v2, running, with no sick replica left. Nodes
//! that are not labelled never run any of them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_tests::fleet::{label, node_ids, phase_of, publish, reconfigure, runs, status, wait_for};
use agora_tests::{TestDevnet, agora, agora_json};

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
fn publish_wat(net: &TestDevnet, version: &str, wat: &str) -> String {
    publish(net, "fleet-up", version, &wat::parse_str(wat).unwrap())
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
    let ids = node_ids(&net);
    // Label the providers one at a time (the committee keeps its quorum).
    for i in LABELLED {
        reconfigure(&net, i, true, label);
    }

    let v1 = publish_wat(&net, "1.0.0", &guest(1, 0));
    let v2 = publish_wat(&net, "2.0.0", &guest(2, 0));
    let sick = publish_wat(&net, "3.0.0", &guest(3, 1));
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
    wait_for(
        &net,
        &id,
        &LABELLED,
        "every labelled target to run v1 healthy",
        WAIT,
        || {
            let st = status(&net, &id);
            LABELLED
                .iter()
                .all(|i| phase_of(&st, &ids[*i]).as_deref() == Some("healthy"))
                && LABELLED.iter().all(|i| runs(&net, *i, &v1))
        },
    );
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
    wait_for(
        &net,
        &id,
        &LABELLED,
        "v1 to stop on every target",
        WAIT,
        || {
            LABELLED
                .iter()
                .all(|i| runs(&net, *i, &v2) && !runs(&net, *i, &v1))
        },
    );
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
        &LABELLED,
        "every target back on v2 only, running, no sick replica",
        WAIT,
        || {
            LABELLED
                .iter()
                .all(|i| runs(&net, *i, &v2) && !runs(&net, *i, &sick))
        },
    );
    wait_for(
        &net,
        &id,
        &LABELLED,
        "the deployer to show every target healthy on v2",
        WAIT,
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
