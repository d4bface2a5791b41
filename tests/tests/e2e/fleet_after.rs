//! Process test (issue #15, dependency order across nodes): on a 7-node contract devnet,
//! node0 deploys `web --after db` before `db` exists. `web` places nothing — its status says
//! what it waits for — until both of `db`'s replicas report healthy, wherever they run; then
//! its replica is placed and turns healthy. A cycle (`db --after web`) is refused. `db`
//! cannot be deleted while `web` is live (the command fails naming it, and db's replicas keep
//! running); deleting `web` and then `db` ends every contract. The selector is empty: every
//! provider but the deployer qualifies, so the replicas land where rendezvous hashing puts
//! them (printed). `web` has five replicas on the six providers, so at least one provider
//! hosts both (`web`'s module is tagged: one customer's two services of one module share its
//! manifest's `max_instances`, THREATS C5).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_runtime::test_utils::lora_gateway_wasm;
use agora_tests::fleet::{create, node_ids, publish, status, tagged, wait_contracts_ended};
use agora_tests::{TestDevnet, agora, agora_json, wait_until};

const WAIT: Duration = Duration::from_secs(300);

/// The targets of a status document and their phases.
fn targets(st: &serde_json::Value) -> Vec<(String, String)> {
    st["targets"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    (
                        t["node"].as_str().unwrap_or("?").to_string(),
                        t["phase"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn healthy(st: &serde_json::Value) -> usize {
    targets(st).iter().filter(|(_, p)| p == "healthy").count()
}

fn waiting_for(st: &serde_json::Value) -> Vec<String> {
    st["waiting_for"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_deployment_after_another_is_placed_once_it_is_healthy_and_outlives_it() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let net = TestDevnet::up(7, 180, &[]);
    let ids = node_ids(&net);
    let who = |node: &str| ids.iter().position(|n| n == node).map_or(-1, |i| i as i64);
    let node0 = net.node(0);
    let db_image = publish(&net, "after-db", "0.1.0", &wasm);
    let web_image = publish(&net, "after-web", "0.1.0", &tagged(&wasm, 1));

    // The dependent first: nothing to wait for yet, so it waits.
    let web = create(
        &net,
        &web_image,
        &[
            "--to",
            "",
            "--replicas",
            "5",
            "--name",
            "web",
            "--after",
            "db",
        ],
    );
    let st = status(&net, &web);
    assert_eq!(st["after"], serde_json::json!(["db"]));
    assert_eq!(waiting_for(&st), vec!["db: not deployed by this node"]);
    let table = agora(&["deploy", "status", &web, "--data-dir", &node0]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("waiting for db: not deployed by this node"),
        "{text}"
    );

    let db = create(
        &net,
        &db_image,
        &["--to", "", "--replicas", "2", "--name", "db"],
    );
    // A cycle is refused, naming it.
    let cycle = agora(&[
        "deploy",
        "create",
        &db_image,
        "--to",
        "",
        "--replicas",
        "2",
        "--name",
        "db",
        "--after",
        "web",
        "--data-dir",
        &node0,
    ]);
    assert!(!cycle.status.success(), "{cycle:?}");
    assert!(
        String::from_utf8_lossy(&cycle.stderr).contains("db -> web -> db"),
        "{cycle:?}"
    );

    // Until db's two replicas are healthy, web has no target (read first, so a target seen
    // here was placed before db was seen healthy below).
    let mut polls = 0;
    wait_until("db's two replicas to be healthy", WAIT, || {
        let web_st = status(&net, &web);
        let db_st = status(&net, &db);
        polls += 1;
        assert!(
            targets(&web_st).is_empty(),
            "web was placed while db had {} of 2 replicas healthy: {:?}",
            healthy(&db_st),
            targets(&web_st)
        );
        let ready = healthy(&db_st) == 2;
        if !ready {
            assert!(
                !waiting_for(&web_st).is_empty(),
                "web says it waits for nothing while db is not healthy: {web_st}"
            );
        }
        ready
    });
    eprintln!("fleet_after: web placed nothing over {polls} polls while db came up");
    wait_until("web's five replicas to be healthy", WAIT, || {
        healthy(&status(&net, &web)) == 5
    });
    let where_ =
        |st: &serde_json::Value| -> Vec<i64> { targets(st).iter().map(|(n, _)| who(n)).collect() };
    eprintln!(
        "fleet_after: db runs on nodes {:?}, web on {:?}",
        where_(&status(&net, &db)),
        where_(&status(&net, &web))
    );
    assert!(waiting_for(&status(&net, &web)).is_empty());
    let db_nodes = where_(&status(&net, &db));
    let shared: Vec<i64> = where_(&status(&net, &web))
        .into_iter()
        .filter(|n| db_nodes.contains(n))
        .collect();
    assert!(
        !shared.is_empty(),
        "five web and two db replicas on six providers share none"
    );
    eprintln!("fleet_after: nodes {shared:?} run both deployments");

    // Stop in reverse: db is needed while web is live.
    let refused = agora(&["deploy", "delete", &db, "--data-dir", &node0]);
    assert!(!refused.status.success(), "{refused:?}");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("needed by web"), "{why}");
    let st = status(&net, &db);
    assert_eq!(st["deleted"], false);
    assert_eq!(healthy(&st), 2, "db keeps running: {st}");

    let deleted = agora_json(&["deploy", "delete", &web, "--data-dir", &node0]);
    assert_eq!(deleted["deleted"], true);
    let deleted = agora_json(&["deploy", "delete", &db, "--data-dir", &node0]);
    assert_eq!(deleted["deleted"], true);
    for image in [&web_image, &db_image] {
        let ended = wait_contracts_ended(&net, image);
        assert!(
            ended
                .iter()
                .all(|(_, _, s)| s == "settled" || s == "cancelled"),
            "an honest provider was slashed or its contract expired after the delete: {ended:?}"
        );
    }
}
