//! Helpers of the fleet process tests (`tests/tests/fleet.rs`, `fleet_upgrade.rs`): labels,
//! a node's running services, a deployment's status as the deployer reports it.
#![allow(clippy::unwrap_used)]

use crate::{TestDevnet, try_agora_json};

/// Gives node `i` the label `site=factory` in its config (the node must be stopped).
pub fn label(net: &TestDevnet, i: usize) {
    let path = net.dir.join(format!("node{i}")).join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = if text.contains("[provider.labels]") {
        text.replace("[provider.labels]", "[provider.labels]\nsite = \"factory\"")
    } else if text.contains("[provider]") {
        text.replace("[provider]", "[provider]\nlabels = { site = \"factory\" }")
    } else {
        format!("{text}\n[provider]\nlabels = {{ site = \"factory\" }}\n")
    };
    std::fs::write(&path, text).unwrap();
}

/// Whether node `i` runs a service of `image` (state Active).
pub fn runs(net: &TestDevnet, i: usize, image: &str) -> bool {
    try_agora_json(&["service", "list", "--data-dir", &net.node(i)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|s| s["image"] == image && s["state"] == "Active")
}

/// The deployment's status from node 0 (the deployer), `Null` while it cannot be read.
pub fn status(net: &TestDevnet, id: &str) -> serde_json::Value {
    try_agora_json(&["deploy", "status", id, "--data-dir", &net.node(0)])
        .unwrap_or(serde_json::Value::Null)
}

/// The phase the deployment's status gives the target `node_id`.
pub fn phase_of(st: &serde_json::Value, node_id: &str) -> Option<String> {
    st["targets"]
        .as_array()?
        .iter()
        .find(|t| t["node"] == node_id)
        .and_then(|t| t["phase"].as_str().map(str::to_string))
}

/// Takes BLE out of node `i`'s advertised interfaces (the node must be stopped), so a selector
/// `iface=ble` no longer admits it.
pub fn without_ble(net: &TestDevnet, i: usize) {
    let path = net.dir.join(format!("node{i}")).join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut section = String::new();
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            if line.starts_with('[') {
                section = line.trim().to_string();
            }
            !(section == "[market.engine.capacity.interfaces]" && line.trim().starts_with("Ble"))
        })
        .collect();
    assert_ne!(
        kept.len(),
        text.lines().count(),
        "node{i} advertised no BLE"
    );
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
}

/// The images among `images` node `i` runs (state Active).
pub fn running_of(net: &TestDevnet, i: usize, images: &[&str]) -> Vec<String> {
    let list = try_agora_json(&["service", "list", "--data-dir", &net.node(i)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    images
        .iter()
        .filter(|img| {
            list.iter()
                .any(|s| s["image"] == **img && s["state"] == "Active")
        })
        .map(|img| img.to_string())
        .collect()
}
