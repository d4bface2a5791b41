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
