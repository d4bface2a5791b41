//! `agora doctor` on real processes: a healthy 2-node devnet passes, a token readable by others
//! and a stopped node fail with their fixes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_tests::{TestDevnet, agora, wait_until};

fn doctor(data_dir: &str) -> (bool, serde_json::Value) {
    let out = agora(&["doctor", "--json", "--data-dir", data_dir]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {out:?}"));
    assert_eq!(v["ok"], out.status.success(), "{v}");
    (out.status.success(), v)
}

fn outcome<'a>(v: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no {check} check in {v}"))
}

#[cfg(unix)]
#[test]
fn doctor_passes_a_healthy_node_and_names_the_fix_for_each_failure() {
    use std::os::unix::fs::PermissionsExt;
    let net = TestDevnet::up(2, 90, &["--metrics"]);
    let dir = &net.dir;
    let node0 = dir.join("node0").display().to_string();
    wait_until("node0 to be healthy", Duration::from_secs(90), || {
        doctor(&node0).0
    });
    let (_, v) = doctor(&node0);
    for c in [
        "key file",
        "token file",
        "control API",
        "metrics",
        "peers",
        "readiness",
    ] {
        assert_eq!(outcome(&v, c)["outcome"], "ok", "{c}: {v}");
    }

    let token = dir.join("node0/api.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, v) = doctor(&node0);
    assert!(!ok);
    let t = outcome(&v, "token file");
    assert_eq!(t["outcome"], "fail", "{v}");
    assert_eq!(t["fix"], format!("chmod 600 {}", token.display()));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    let stop = agora(&["node", "stop", "--data-dir", &node0]);
    assert!(stop.status.success(), "{stop:?}");
    wait_until(
        "node0's API to stop answering",
        Duration::from_secs(30),
        || outcome(&doctor(&node0).1, "control API")["outcome"] == "fail",
    );
    let (ok, v) = doctor(&node0);
    assert!(!ok);
    let api = outcome(&v, "control API");
    assert!(
        api["fix"].as_str().unwrap().contains("agora node run"),
        "{v}"
    );
    assert_eq!(outcome(&v, "peers")["outcome"], "skip", "{v}");
}

/// A network of one (`agora devnet up --nodes 1`: no bootstrap peers, nobody else in the
/// genesis) becomes ready without a peer, and `agora doctor` passes it, saying why no peer is
/// needed; before, `/ready` waited for a peer that could never come and `devnet up` timed out.
#[test]
fn a_one_node_devnet_is_ready_and_the_doctor_passes_it() {
    let net = TestDevnet::up(1, 60, &[]);
    let node0 = net.dir.join("node0").display().to_string();
    let nodes = net.up["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{}", net.up);
    wait_until(
        "the lone node to be healthy",
        Duration::from_secs(60),
        || doctor(&node0).0,
    );
    let (_, v) = doctor(&node0);
    let peers = outcome(&v, "peers");
    assert_eq!(peers["outcome"], "ok", "{v}");
    assert!(
        peers["detail"]
            .as_str()
            .is_some_and(|d| d.contains("network of one")),
        "{v}"
    );
    assert_eq!(outcome(&v, "readiness")["outcome"], "ok", "{v}");
}
