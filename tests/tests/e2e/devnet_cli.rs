//! Process-level test: `agora devnet up/status/down` with three real node processes.
#![allow(clippy::unwrap_used)]

use agora_tests::{JoinedNode, TestDevnet, agora, agora_json, alive, try_agora_json, wait_until};

#[test]
fn devnet_up_status_peers_down() {
    let net = TestDevnet::up(3, 60, &[]);
    let dir = &net.dir;
    let dir_s = net.dir_s();
    let up = &net.up;
    let nodes = up["nodes"].as_array().unwrap().clone();
    assert_eq!(nodes.len(), 3);
    let pids: Vec<u64> = nodes.iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    assert!(pids.iter().all(|p| alive(*p)));
    assert!(nodes.iter().all(|n| n["running"] == true));

    // A second `up` on the same dir refuses instead of starting duplicates.
    let again = agora(&["devnet", "up", "--nodes", "3", "--dir", &dir_s]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    let node0 = dir.join("node0").display().to_string();
    let peers = agora_json(&["peers", "--data-dir", &node0]);
    assert_eq!(peers.as_array().unwrap().len(), 2);

    let status = agora_json(&["status", "--data-dir", &node0]);
    assert_eq!(status["node_id"], nodes[0]["node_id"]);

    // Genesis lists every node and a committee.
    let genesis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("genesis.json")).unwrap()).unwrap();
    assert_eq!(genesis["accounts"].as_array().unwrap().len(), 3);
    assert_eq!(genesis["committee"].as_array().unwrap().len(), 3);

    // A user joins the devnet from another terminal with a node of their own.
    let mine = JoinedNode::start(&net.tmp().join("mine"), dir);
    wait_until(
        "the joined node to reach every devnet node",
        std::time::Duration::from_secs(30),
        || {
            try_agora_json(&["peers", "--data-dir", &mine.data_dir])
                .and_then(|v| v.as_array().map(|a| a.len()))
                == Some(3)
        },
    );
    drop(mine);

    let down = agora_json(&["devnet", "down", "--dir", &dir_s]);
    assert_eq!(down["stopped"], 3);
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "every process started by up is gone"
    );
    let after = agora_json(&["devnet", "status", "--dir", &dir_s]);
    assert!(
        after["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["running"] == false)
    );
    // Data is kept for inspection.
    assert!(dir.join("node0").join("node.log").exists());

    // With no node running, the CLI says how to start one.
    let out = agora(&["peers", "--data-dir", &node0]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("agora node run"));

    agora_json(&["devnet", "down", "--dir", &dir_s, "--clean"]);
    assert!(!dir.exists());
}
