//! Process test of `agora deploy upgrade` (issue #15): on a 7-node contract devnet, two
//! providers labelled `site=factory` run a deployment of image v1 from node0: a counter guest
//! (one per reading in its key `count`) on sensor devices 101 and 102, heard by one target each.
//! A healthy upgrade to v2 (`--max-unavailable 1`, start-first: a second contract per target for
//! the new image, the old one released once the new one is healthy) exits 0 and leaves every
//! target running v2 and not v1; on each target the new instance ran without devices until the
//! switch, then took over v1's key-value state and device (timeline `state-moved`), and its
//! count equals the readings sent over the whole run: none lost, none counted twice. An upgrade
//! to a sick image (its `agora_health` export returns 1) with `--max-failed 0` exits non-zero
//! with the reason, and every target ends on v2, running, with no sick replica left; v2's count
//! still equals every reading sent (the sick instance never held the device). The same upgrade
//! with the default failure budget (1) holds the first sick target and names it, and the second
//! rolls both back. Nodes that are not labelled never run any of them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_runtime::test_utils::{READINGS_COUNTER, last_count};
use agora_tests::fleet::{
    create, label, node_ids, phase_of, publish_with_devices, reconfigure, runs, status, wait_for,
};
use agora_tests::sensor::Sensor;
use agora_tests::{TestDevnet, agora, agora_json, try_agora_json};

const LABELLED: [usize; 2] = [2, 3];
const WAIT: Duration = Duration::from_secs(300);

/// The sensor devices the images take over: each target hears one of them only (two edges
/// processing the same device at once would each skip what the other's checkpoints cover).
const DEVICES: [u32; 2] = [101, 102];

/// A counter guest (each reading adds one to its key `count`, logged as `count=N`) whose health
/// export returns `health` (0 = healthy); `tag` makes each version's module different.
fn guest(tag: u32, health: i32) -> String {
    let body = READINGS_COUNTER.trim_end().strip_suffix(')').unwrap();
    format!(
        "{body}\n  (global $tag i32 (i32.const {tag}))\n  \
         (func (export \"agora_health\") (result i32) (i32.const {health})))"
    )
}

/// Publishes `wat` on node0 as service `fleet-up` version `version` on [`DEVICES`]; returns the
/// image CID.
fn publish_wat(net: &TestDevnet, version: &str, wat: &str) -> String {
    publish_with_devices(
        net,
        "fleet-up",
        version,
        &wat::parse_str(wat).unwrap(),
        &DEVICES,
    )
}

/// The count logged by node `i`'s instance of `image`, if it runs and counted.
fn count_of(net: &TestDevnet, i: usize, image: &str) -> Option<u64> {
    let list = try_agora_json(&["service", "list", "--data-dir", &net.node(i)])?;
    let id = list
        .as_array()?
        .iter()
        .find(|s| s["image"] == image && s["state"] == "Active")?["id"]
        .as_str()?
        .to_string();
    let logs = try_agora_json(&["service", "logs", &id, "--data-dir", &net.node(i)])?;
    last_count(logs["logs"].as_str()?)
}

/// Node `i`'s timeline entries of `phase`.
fn timeline(net: &TestDevnet, i: usize, phase: &str) -> Vec<serde_json::Value> {
    try_agora_json(&["timeline", "--data-dir", &net.node(i)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["phase"] == phase)
        .collect()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until node `i`'s instance of `image` has counted exactly `sent` readings (the sensor
/// is paused; the last poll may still be on its way to the log), and fails if it counts past.
fn exact_count(net: &TestDevnet, i: usize, id: &str, image: &str, sent: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = count_of(net, i, image);
        eprintln!("node{i} counted {c:?} of {sent} readings sent");
        assert!(
            c.is_none_or(|c| c <= u64::from(sent)),
            "counted twice: {c:?} > {sent}"
        );
        if c == Some(u64::from(sent)) {
            return;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!("status: {}", status(net, id));
            eprintln!(
                "radio: {:?}",
                try_agora_json(&["radio", "--data-dir", &net.node(i)])
            );
            panic!("node{i}'s count {c:?} != {sent} readings sent");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn deploy_upgrade_moves_every_target_and_its_state_to_a_healthy_image_and_rolls_a_sick_one_back() {
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

    let id = create(
        &net,
        &v1,
        &["--to", "site=factory", "--all", "--name", "fleet-up"],
    );
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
    // Device 101's readings reach node2, 102's node3; v1 counts them on each.
    let edges = LABELLED
        .iter()
        .zip(DEVICES)
        .map(|(i, device)| {
            let radio = agora_json(&["radio", "--data-dir", &net.node(*i)]);
            (device, radio["addr"].as_str().unwrap().to_string())
        })
        .collect();
    // Every 50 ms: two devices are light work.
    let sensor = Sensor::start(edges, Duration::from_millis(50));
    wait_for(&net, &id, &LABELLED, "v1 counting readings", WAIT, || {
        LABELLED
            .iter()
            .all(|i| count_of(&net, *i, &v1).is_some_and(|c| c >= 5))
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
    // Every target runs v2; the old contracts end and v1 stops everywhere. The new instance
    // logs its count only when a reading reaches it, so wait for one after the switch too (the
    // old instance may have processed every reading sent until the sensor pauses).
    wait_for(
        &net,
        &id,
        &LABELLED,
        "v1 to stop and v2 to count on every target",
        WAIT,
        || {
            LABELLED.iter().all(|i| {
                runs(&net, *i, &v2) && !runs(&net, *i, &v1) && count_of(&net, *i, &v2).is_some()
            })
        },
    );
    // On each target the new instance stood by without the device, then took v1's state and
    // device over: with the sensor paused, its count comes to every reading sent since the
    // start.
    let sent = sensor.set(false);
    for i in LABELLED {
        let moved = timeline(&net, i, "state-moved");
        eprintln!(
            "node{i} standby: {:?}\nnode{i} switch: {moved:?}",
            timeline(&net, i, "standby-started")
        );
        exact_count(&net, i, &id, &v2, sent);
        assert_eq!(moved.len(), 1, "one switch on node{i}: {moved:?}");
        assert!(!timeline(&net, i, "standby-started").is_empty());
        assert!(timeline(&net, i, "state-not-moved").is_empty());
    }
    sensor.set(true);
    let table = agora(&["deploy", "status", &id, "--data-dir", &net.node(0)]);
    assert!(table.status.success(), "{table:?}");
    assert!(text(&table).contains("succeeded"), "{table:?}");

    // A sick image with no failure budget: its first new instance reports unhealthy, the
    // upgrade rolls back and the command fails with the reason.
    let bad = agora(&[
        "deploy",
        "upgrade",
        &id,
        "--image",
        &sick,
        "--max-unavailable",
        "1",
        "--max-failed",
        "0",
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
    assert!(
        !text(&bad).contains("failed within --max-failed"),
        "no target held with --max-failed 0: {}",
        text(&bad)
    );
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
    // The sick instance never held the device (and released none when it stopped): v2
    // counted every reading of the whole run.
    let sent = sensor.set(false);
    for i in LABELLED {
        exact_count(&net, i, &id, &v2, sent);
        assert_eq!(
            timeline(&net, i, "state-moved").len(),
            1,
            "no switch to the sick"
        );
    }
    drop(sensor);

    // The default failure budget, 1 (THREATS D1): the first sick target is held on v2 and
    // named, the rollout goes on, and the second one, past the budget, rolls every target back.
    let budget = agora(&[
        "deploy",
        "upgrade",
        &id,
        "--image",
        &sick,
        "--health-timeout",
        "4m",
        "--data-dir",
        &net.node(0),
    ]);
    eprintln!(
        "deploy upgrade to the sick image, the default --max-failed:\n{}",
        text(&budget)
    );
    assert!(!budget.status.success(), "{}", text(&budget));
    assert!(text(&budget).contains("rolled back"), "{}", text(&budget));
    assert!(
        text(&budget).contains("failed within --max-failed"),
        "the held target is named as it happens: {}",
        text(&budget)
    );
    let st = status(&net, &id);
    assert_eq!(st["upgrade"]["max_failed"], 1, "{st}");
    let failed: Vec<_> = st["upgrade"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["failed"].is_string())
        .collect();
    assert_eq!(failed.len(), 1, "one failure within the budget: {st}");
    assert!(
        failed[0]["failed"]
            .as_str()
            .unwrap()
            .contains("health export returned 1"),
        "{st}"
    );
    wait_for(
        &net,
        &id,
        &LABELLED,
        "every target back on v2 only after the budgeted upgrade",
        WAIT,
        || {
            LABELLED
                .iter()
                .all(|i| runs(&net, *i, &v2) && !runs(&net, *i, &sick))
        },
    );
    for i in [1, 4, 5, 6] {
        for image in [&v1, &v2, &sick] {
            assert!(!runs(&net, i, image), "node{i} is not labelled");
        }
    }
}
