//! WAN emulation on a devnet (issue #17): `agora devnet up --latency` shapes every node's TCP
//! links in user space (`agora_network::wan`), so the round trip the nodes measure between
//! them carries the delay in both directions.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_tests::{TestDevnet, agora, try_agora_json, wait_until};

fn rtt_ms(data_dir: &str) -> Option<u64> {
    let peers = try_agora_json(&["peers", "--data-dir", data_dir])?;
    peers.as_array()?.first()?["rtt_ms"].as_u64()
}

#[test]
fn devnet_links_carry_the_configured_latency_both_ways() {
    let net = TestDevnet::up(2, 120, &["--latency", "100ms", "--jitter", "5ms"]);
    let config = std::fs::read_to_string(net.dir.join("node0/config.toml")).unwrap();
    assert!(config.contains("[network.wan]"), "{config}");
    assert!(config.contains("latency_ms = 100"), "{config}");
    let log = std::fs::read_to_string(net.dir.join("node0/node.log")).unwrap_or_default();
    assert!(
        log.contains("WAN emulation is on"),
        "no warning in node0's log"
    );

    let node0 = net.node(0);
    let mut rtt = None;
    wait_until(
        "node0 to measure its peer's round trip",
        Duration::from_secs(60),
        || {
            rtt = rtt_ms(&node0);
            rtt.is_some()
        },
    );
    // Each direction is delayed by at least 100 - 5 ms.
    let rtt = rtt.unwrap();
    assert!(
        rtt >= 190,
        "round trip {rtt} ms over links shaped to 100 ms each way"
    );
}

#[test]
fn a_latency_that_is_not_a_duration_says_how_to_write_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net").display().to_string();
    let out = agora(&[
        "devnet",
        "up",
        "--nodes",
        "2",
        "--dir",
        &dir,
        "--latency",
        "fast",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("50ms"), "{err}");
    let out = agora(&[
        "devnet", "up", "--nodes", "2", "--dir", &dir, "--loss", "1%",
    ]);
    assert!(
        !out.status.success(),
        "--loss without --latency was accepted"
    );
}
