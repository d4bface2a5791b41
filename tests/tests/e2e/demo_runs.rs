//! Process-level test: `agora devnet demo --runs 2` (two failovers on one devnet, each with a
//! fresh standby contract) ends with every reading processed exactly once, as an *earlier*
//! provider accounts them. An edge that once provided for A's sensors must count the later
//! providers' checkpoints too (`agora_roles::followed`); before that fix it refused
//! them as "not a manager" and reported hundreds of readings missing.
//!
//! Who wins each standby auction is decided by the bids (ties by bid id), so both runs may pick
//! the same provider; the test then says so loudly (the earlier-provider case was not exercised
//! this time) and still checks the coverage.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use agora_tests::agora_bin;

#[test]
fn two_failovers_are_accounted_by_an_earlier_provider_with_nothing_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    // The demo's own waits all have timeouts; `timeout` bounds the whole run as well.
    let out = Command::new("timeout")
        .arg("600")
        .arg(agora_bin())
        .args([
            "devnet", "demo", "--runs", "2", "--outage", "1", "--json", "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{stdout}");
    assert_eq!(v["failovers"].as_array().map(Vec::len), Some(2), "{stdout}");
    assert_eq!(v["coverage"]["missing"], 0, "{stdout}");
    assert_eq!(v["coverage"]["duplicated"], 0, "{stdout}");
    if v["observer_was_provider"] == true {
        println!(
            "coverage accounted by {}, the first run's provider",
            v["observer"]
        );
    } else {
        println!(
            "NOTE two_failovers_are_accounted_by_an_earlier_provider_with_nothing_missing: both \
             runs picked the same provider, so the earlier-provider observer was NOT exercised \
             this time (coverage checked on {} instead)",
            v["observer"]
        );
    }
}
