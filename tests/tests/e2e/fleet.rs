//! Process test of fleet deployments (issue #15): on a 7-node contract devnet, label three
//! providers `site=factory` (one of them down), `agora deploy create IMAGE --to site=factory
//! --all` from node0: every running matching provider ends up running the image under its own
//! hosted contract and no other node runs it; the provider that was down converges after it
//! restarts; `agora deploy delete` ends the contracts and stops every replica. Then a pull
//! deployment of one replica: exactly one labelled provider runs it until it is deleted.
//! Every target reports its replica `healthy` (guest health export + node probes). Prints the
//! origin's bitswap upload against N × image size.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_runtime::test_utils::lora_gateway_wasm;
use agora_tests::fleet::{
    label, node_ids, phase_of, publish, reconfigure, runs, status, wait_contracts_ended,
};
use agora_tests::{TestDevnet, agora, agora_json, try_agora_json, wait_until};

const LABELLED: [usize; 3] = [2, 3, 4];
/// Labelled but down while the deployment rolls out.
const LATE: usize = 4;
const WAIT: Duration = Duration::from_secs(300);

/// The first `bytes_sent` counter in a storage stats document (bitswap's).
fn bytes_sent(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get("bytes_sent")
            .and_then(serde_json::Value::as_u64)
            .or_else(|| m.values().find_map(bytes_sent)),
        _ => None,
    }
}

#[test]
fn deploy_all_to_a_label_runs_on_every_match_only_converges_late_and_delete_stops() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let net = TestDevnet::up(7, 180, &[]);
    let dir = net.dir_s();
    let ids = node_ids(&net);

    // Label the providers one at a time (the committee keeps its quorum); the late one stays
    // down.
    for i in LABELLED {
        reconfigure(&net, i, i != LATE, label);
    }

    // The image, published on node0 (the deployer).
    let image = publish(&net, "fleet-gw", "0.1.0", &wasm);
    let sent_before = try_agora_json(&["storage", "stats", "--data-dir", &net.node(0)])
        .as_ref()
        .and_then(bytes_sent);

    // Clear errors first: a bad selector, an image this node does not hold.
    let bad = agora(&[
        "deploy",
        "create",
        &image,
        "--to",
        "Site=Fac tory",
        "--all",
        "--data-dir",
        &net.node(0),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("selector"),
        "{bad:?}"
    );
    let unknown = agora(&[
        "deploy",
        "create",
        "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
        "--to",
        "site=factory",
        "--all",
        "--data-dir",
        &net.node(0),
    ]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("agora service publish"),
        "{unknown:?}"
    );

    let created = agora_json(&[
        "deploy",
        "create",
        &image,
        "--to",
        "site=factory",
        "--all",
        "--strategy",
        "push",
        "--cpu",
        "250m",
        "--memory",
        "64MiB",
        "--data-dir",
        &net.node(0),
    ]);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["replicas"], serde_json::Value::Null, "--all");

    // Every running labelled provider runs it, reported as running to the deployer.
    let up: Vec<usize> = LABELLED.iter().copied().filter(|i| *i != LATE).collect();
    wait_until(
        "the running labelled providers to run the image",
        WAIT,
        || up.iter().all(|i| runs(&net, *i, &image)),
    );
    // Each target reports its replica healthy (the guest's health export and the node's
    // probes: started, answering), and the deployer shows it.
    wait_until("the deployer to see them healthy", WAIT, || {
        let st = status(&net, &id);
        up.iter()
            .all(|i| phase_of(&st, &ids[*i]).as_deref() == Some("healthy"))
    });
    let table = agora(&["deploy", "status", &id, "--data-dir", &net.node(0)]);
    assert!(table.status.success(), "{table:?}");
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("healthy"),
        "{table:?}"
    );
    for i in [1, 5, 6] {
        assert!(!runs(&net, i, &image), "node{i} is not labelled");
        assert_eq!(phase_of(&status(&net, &id), &ids[i]), None);
    }
    // A contract per target, node0 the customer, active on node0's own ledger replica (a
    // target reports running from its replica, which may apply the activation block first).
    let active_at_node0 = || {
        let contracts = agora_json(&["contract", "list", "--data-dir", &net.node(0)]);
        contracts
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["customer"] == ids[0].as_str() && c["status"] == "active")
            .count()
    };
    wait_until(
        "node0's ledger to show an active contract per running target",
        Duration::from_secs(60),
        || active_at_node0() >= up.len(),
    );
    let list = agora_json(&["deploy", "list", "--data-dir", &net.node(0)]);
    assert_eq!(list["deployments"][0]["id"], id.as_str());

    // The provider that was down converges once it is back.
    let late = format!("node{LATE}");
    let out = agora(&["devnet", "start", &late, "--dir", &dir]);
    assert!(out.status.success(), "{out:?}");
    wait_until("the restarted provider to run the image", WAIT, || {
        runs(&net, LATE, &image)
    });
    wait_until(
        "the deployer to see every labelled target healthy",
        WAIT,
        || {
            let st = status(&net, &id);
            LABELLED
                .iter()
                .all(|i| phase_of(&st, &ids[*i]).as_deref() == Some("healthy"))
        },
    );
    for i in [1, 5, 6] {
        assert!(!runs(&net, i, &image), "node{i} is not labelled");
    }

    // Origin upload against N × image size (bitswap from peers that already hold blocks).
    let sent_after = try_agora_json(&["storage", "stats", "--data-dir", &net.node(0)])
        .as_ref()
        .and_then(bytes_sent);
    match (sent_before, sent_after) {
        (Some(b), Some(a)) => eprintln!(
            "fleet: origin uploaded {} bytes over bitswap for {} targets of a {}-byte module \
             (N × size = {})",
            a.saturating_sub(b),
            LABELLED.len(),
            wasm.len(),
            LABELLED.len() * wasm.len()
        ),
        _ => eprintln!("fleet: origin bitswap bytes not in `storage stats`; upload not measured"),
    }

    // Delete: the contracts end and every replica stops.
    let deleted = agora_json(&["deploy", "delete", &id, "--data-dir", &net.node(0)]);
    assert_eq!(deleted["deleted"], true);
    wait_until("every replica to stop after the delete", WAIT, || {
        (1..7).all(|i| !runs(&net, i, &image))
    });
    // Each contract ends paid pro rata (or cancelled before it activated): the providers ran
    // the replica as agreed, so none is slashed for the customer's early end.
    let ended = wait_contracts_ended(&net, &image);
    eprintln!("fleet: contracts after the delete: {ended:?}");
    assert!(
        ended
            .iter()
            .all(|(_, _, s)| s == "settled" || s == "cancelled"),
        "an honest provider was slashed or its contract expired after the delete: {ended:?}"
    );

    // Pull, one replica: the labelled providers poll node0 for the record, offering
    // themselves; exactly one is chosen and runs it, and a delete stops it again.
    let pulled = agora_json(&[
        "deploy",
        "create",
        &image,
        "--to",
        "site=factory",
        "--replicas",
        "1",
        "--strategy",
        "pull",
        "--name",
        "pull-one",
        "--cpu",
        "250m",
        "--memory",
        "64MiB",
        "--data-dir",
        &net.node(0),
    ]);
    let pull_id = pulled["id"].as_str().unwrap().to_string();
    assert_eq!(pulled["strategy"], "pull");
    let running = |net: &TestDevnet| (1..7).filter(|i| runs(net, *i, &image)).collect::<Vec<_>>();
    wait_until(
        "one labelled provider to run the pulled image",
        WAIT,
        || running(&net).len() == 1,
    );
    let chosen = running(&net)[0];
    assert!(LABELLED.contains(&chosen), "node{chosen} is not labelled");
    wait_until("the deployer to see its one target healthy", WAIT, || {
        phase_of(&status(&net, &pull_id), &ids[chosen]).as_deref() == Some("healthy")
    });
    assert_eq!(running(&net), vec![chosen], "one replica only");
    agora_json(&["deploy", "delete", &pull_id, "--data-dir", &net.node(0)]);
    wait_until("the pulled replica to stop after the delete", WAIT, || {
        running(&net).is_empty()
    });

    let gone = agora(&["deploy", "status", "0000", "--data-dir", &net.node(0)]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("deploy list"),
        "{gone:?}"
    );
}
