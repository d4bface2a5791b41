//! Process test (issue #15): a deployer that restarts keeps its deployments. On a 7-node
//! contract devnet, node0 deploys an image to the three providers labelled `site=factory`
//! (push, `--all`); once every target is healthy, node0 is killed (SIGKILL, a crash) and
//! started again from its data dir. Then `deploy list` shows the deployment and `deploy
//! status` every target running (from `<data-dir>/fleet-deployments.json` and the ledger's
//! open contracts), no target ever runs two replicas and node0's ledger never shows two live
//! contracts on one target (checked at every poll until the deployer has reconciled for a
//! while), and `deploy delete` still stops every replica.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use agora_runtime::test_utils::lora_gateway_wasm;
use agora_tests::fleet::{
    create, label, node_ids, phase_of, publish, reconfigure, status, wait_for,
};
use agora_tests::{TestDevnet, agora, agora_json, try_agora_json};

const LABELLED: [usize; 3] = [2, 3, 4];
const WAIT: Duration = Duration::from_secs(300);

/// How many services of `image` node `i` runs (state Active).
fn replicas(net: &TestDevnet, i: usize, image: &str) -> usize {
    try_agora_json(&["service", "list", "--data-dir", &net.node(i)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|s| s["image"] == image && s["state"] == "Active")
        .count()
}

/// Per provider, the contracts of `image` node0's ledger shows not ended (node0 the customer).
fn live_contracts(net: &TestDevnet, ids: &[String], image: &str) -> Vec<usize> {
    let contracts = try_agora_json(&["contract", "list", "--data-dir", &net.node(0)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    (0..ids.len())
        .map(|i| {
            contracts
                .iter()
                .filter(|c| {
                    c["customer"] == ids[0].as_str()
                        && c["provider"] == ids[i].as_str()
                        && c["image"] == image
                        && !matches!(
                            c["status"].as_str(),
                            Some(
                                "completed"
                                    | "breached"
                                    | "cancelled"
                                    | "settled"
                                    | "slashed"
                                    | "expired"
                            )
                        )
                })
                .count()
        })
        .collect()
}

fn running_or_healthy(st: &serde_json::Value, node: &str) -> bool {
    matches!(phase_of(st, node).as_deref(), Some("running" | "healthy"))
}

#[test]
fn a_restarted_deployer_keeps_its_deployment_and_places_no_second_replica() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let net = TestDevnet::up(7, 180, &[]);
    let dir = net.dir_s();
    let ids = node_ids(&net);
    for i in LABELLED {
        reconfigure(&net, i, true, label);
    }
    let image = publish(&net, "fleet-keep", "0.1.0", &wasm);
    let id = create(
        &net,
        &image,
        &["--to", "site=factory", "--all", "--strategy", "push"],
    );
    let everyone: Vec<usize> = (1..7).collect();
    wait_for(
        &net,
        &id,
        &everyone,
        "every labelled target healthy",
        WAIT,
        || {
            let st = status(&net, &id);
            LABELLED
                .iter()
                .all(|i| phase_of(&st, &ids[*i]).as_deref() == Some("healthy"))
        },
    );
    let version = status(&net, &id)["version"].clone();
    let file = net.dir.join("node0").join("fleet-deployments.json");
    let mode = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());

    // The deployer crashes and comes back.
    let out = agora(&["devnet", "kill", "node0", "--dir", &dir]);
    assert!(out.status.success(), "{out:?}");
    let out = agora(&["devnet", "start", "node0", "--dir", &dir]);
    assert!(out.status.success(), "{out:?}");
    let back = Instant::now();

    // It lists the deployment again, at the same version, with every target running.
    let list = agora_json(&["deploy", "list", "--data-dir", &net.node(0)]);
    let listed: Vec<&str> = list["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(
        listed,
        vec![id.as_str()],
        "deploy list after the restart: {list}"
    );
    let st = status(&net, &id);
    assert_eq!(st["version"], version, "{st}");
    assert_eq!(st["targets"].as_array().map(Vec::len), Some(3), "{st}");
    // While it reconciles (its tick runs every second; a target whose facts it saved is
    // planned at once, others within the 30 s grace), no target runs two replicas and no
    // target has two live contracts; every target stays (or becomes again) running. Checked
    // for 45 s and at least 11 times: a loaded machine polls less often, so it looks longer.
    let mut polls = 0;
    while back.elapsed() < Duration::from_secs(45) || polls <= 10 {
        for i in 1..7 {
            let n = replicas(&net, i, &image);
            assert!(n <= 1, "node{i} runs {n} replicas after the restart");
        }
        let live = live_contracts(&net, &ids, &image);
        assert!(
            live.iter().all(|n| *n <= 1),
            "two live contracts on one target after the restart: {live:?}"
        );
        polls += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for(
        &net,
        &id,
        &everyone,
        "every target running after the restart",
        WAIT,
        || {
            let st = status(&net, &id);
            LABELLED.iter().all(|i| running_or_healthy(&st, &ids[*i]))
                && st["targets"].as_array().map(Vec::len) == Some(3)
        },
    );
    for i in LABELLED {
        assert_eq!(replicas(&net, i, &image), 1, "node{i}");
    }
    for i in [1, 5, 6] {
        assert_eq!(replicas(&net, i, &image), 0, "node{i} is not labelled");
    }

    // Delete still reaches every replica.
    let deleted = agora_json(&["deploy", "delete", &id, "--data-dir", &net.node(0)]);
    assert_eq!(deleted["deleted"], true);
    wait_for(
        &net,
        &id,
        &everyone,
        "every replica to stop after the delete",
        WAIT,
        || (1..7).all(|i| replicas(&net, i, &image) == 0),
    );
}
