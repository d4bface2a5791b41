//! Attack (issue #13.2) on real processes: a customer proposes a contract whose terms the
//! provider never agreed to — it demands 100 % uptime and activation within 0 ms, through its
//! own `[deals.customer]` config — and the providers refuse to countersign with the typed
//! reason; no contract reaches the ledger, and every node keeps running.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_tests::{TestDevnet, agora, agora_json, alive, try_agora_json, wait_until};

fn log_of(dir: &std::path::Path, node: &str) -> String {
    std::fs::read_to_string(dir.join(node).join("node.log")).unwrap_or_default()
}

#[test]
fn a_customer_demanding_terms_no_provider_agreed_to_gets_no_contract() {
    let net = TestDevnet::up(7, 60, &[]);
    let dir = &net.dir;
    let dir_s = net.dir_s();
    let node = |i: usize| net.node(i);

    // node6 turns hostile: its deals demand perfect uptime and instant activation.
    let kill = agora(&["devnet", "kill", "node6", "--dir", &dir_s]);
    assert!(kill.status.success(), "{kill:?}");
    let config_path = dir.join("node6").join("config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let hostile = config
        .replace("min_uptime_permille = 900", "min_uptime_permille = 1000")
        .replace(
            "max_activation_delay_ms = 5000",
            "max_activation_delay_ms = 0",
        );
    assert_ne!(
        hostile, config,
        "the config names the customer's QoS: {config}"
    );
    std::fs::write(&config_path, hostile).unwrap();
    let start = agora(&["devnet", "start", "node6", "--dir", &dir_s]);
    assert!(start.status.success(), "{start:?}");
    wait_until(
        "node6 to be back with peers",
        Duration::from_secs(30),
        || {
            try_agora_json(&["peers", "--data-dir", &node(6)])
                .and_then(|p| p.as_array().map(Vec::len))
                .is_some_and(|n| n >= 3)
        },
    );

    agora_json(&[
        "auction",
        "create",
        "--data-dir",
        &node(6),
        "--cpu",
        "100m",
        "--memory",
        "32MiB",
        "--duration",
        "10m",
        "--max-price",
        "100",
        "--window",
        "2s",
    ]);
    // The winner refuses with the typed reason, and the customer learns it.
    let refusal = "minimum uptime 1000‰ is stricter than this provider's limit of 950‰";
    wait_until(
        "the typed refusal at the customer",
        Duration::from_secs(60),
        || log_of(dir, "node6").contains(refusal),
    );
    let provider = (0..6)
        .find(|i| log_of(dir, &format!("node{i}")).contains("refused to countersign"))
        .expect("a provider logged its refusal");
    assert!(log_of(dir, &format!("node{provider}")).contains(refusal));

    // Let the chain move on past the refusal: still no contract anywhere.
    let height = |i: usize| {
        try_agora_json(&["ledger", "status", "--data-dir", &node(i)])
            .and_then(|s| s["height"].as_u64())
            .unwrap_or(0)
    };
    let h = height(0);
    wait_until("three more blocks", Duration::from_secs(60), || {
        height(0) >= h + 3
    });
    for i in 0..7 {
        let list = agora_json(&["contract", "list", "--data-dir", &node(i)]);
        assert_eq!(list.as_array().map(Vec::len), Some(0), "node{i}: {list}");
    }
    // Every node process is still running.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("devnet.json")).unwrap()).unwrap();
    for n in manifest["nodes"].as_array().unwrap() {
        let pid = n["pid"].as_u64().unwrap();
        assert!(alive(pid), "{} died", n["name"]);
    }
}
