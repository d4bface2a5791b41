//! Process-level presence: a node killed with SIGKILL is reported down at its peers, and up
//! again once it restarts from its data dir.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use agora_market::NodeId;
use agora_tests::{TestDevnet, agora_bin, alive, try_agora_json, wait_until};

/// Whether `node` is listed as reachable (`Some(true)`), unreachable (`Some(false)`) or not
/// at all (`None`) in the presence table of the node in `dir`.
fn reachable(dir: &str, node: &NodeId) -> Option<bool> {
    let want = serde_json::to_value(node).ok()?;
    let table = try_agora_json(&["presence", "--data-dir", dir])?;
    table.as_array()?.iter().find_map(|p| {
        (p["node"] == want)
            .then(|| p["reachable"].as_bool())
            .flatten()
    })
}

#[test]
fn killed_node_is_down_at_its_peers_and_up_after_restart() {
    let net = TestDevnet::up(3, 60, &[]);
    let dir = &net.dir;
    let up = &net.up;
    let nodes = up["nodes"].as_array().unwrap().clone();
    let victim: NodeId = nodes[2]["node_id"].as_str().unwrap().parse().unwrap();
    let victim_pid = nodes[2]["pid"].as_u64().unwrap();
    let peers: Vec<String> = [0, 1]
        .iter()
        .map(|i| dir.join(format!("node{i}")).display().to_string())
        .collect();
    for p in &peers {
        wait_until(
            "node2 reachable at its peers",
            Duration::from_secs(30),
            || reachable(p, &victim) == Some(true),
        );
    }

    let killed = Command::new("kill")
        .args(["-9", &victim_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("node2 to exit", Duration::from_secs(10), || {
        !alive(victim_pid)
    });
    for p in &peers {
        wait_until("node2 down at its peers", Duration::from_secs(15), || {
            reachable(p, &victim) == Some(false)
        });
    }

    // Restart from its data dir (same ports, bootstraps from node0 as configured).
    let node2 = dir.join("node2");
    let mut child = Command::new(agora_bin())
        .args(["node", "run", "--data-dir"])
        .arg(&node2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for p in &peers {
        let ok = std::panic::catch_unwind(|| {
            wait_until(
                "node2 up again at its peers",
                Duration::from_secs(30),
                || reachable(p, &victim) == Some(true),
            )
        });
        if ok.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node2 did not come back up at {p}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
