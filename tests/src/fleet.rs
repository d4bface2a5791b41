//! Helpers of the fleet process tests (`tests/tests/e2e/fleet.rs`, `fleet_upgrade.rs`,
//! `fleet_variants.rs`) and benches (`tests/benches/fleet_converge.rs`, `provision.rs`,
//! `upgrade.rs`): node ids, reconfiguring a node, publishing a service, labels, a node's
//! running services, a deployment's status as the deployer reports it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use crate::{TestDevnet, agora, publish_service, try_agora_json, wait_until};

mod labels;
mod logs;

pub use labels::{label, unlabel};
pub use logs::release_reasons;

/// The devnet's node ids, in node order.
pub fn node_ids(net: &TestDevnet) -> Vec<String> {
    net.nodes()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .collect()
}

/// Stops node `i`, lets `edit` change its config (e.g. [`label`]), and starts it again unless
/// `start` is false (a node that joins later).
pub fn reconfigure(net: &TestDevnet, i: usize, start: bool, edit: impl FnOnce(&TestDevnet, usize)) {
    let (name, dir) = (format!("node{i}"), net.dir_s());
    let out = agora(&["devnet", "kill", &name, "--dir", &dir]);
    assert!(out.status.success(), "{out:?}");
    edit(net, i);
    if start {
        let out = agora(&["devnet", "start", &name, "--dir", &dir]);
        assert!(out.status.success(), "{out:?}");
    }
}

/// Publishes `wasm` on node 0 (the deployer) as service `name` version `version`, under the
/// fleet tests' manifest (immediate, no devices, 250 millicores, 64 MiB); returns the image CID.
pub fn publish(net: &TestDevnet, name: &str, version: &str, wasm: &[u8]) -> String {
    publish_with_devices(net, name, version, wasm, &[])
}

/// [`publish`] with a manifest that takes over the sensor `devices` where it runs.
pub fn publish_with_devices(
    net: &TestDevnet,
    name: &str,
    version: &str,
    wasm: &[u8],
    devices: &[u32],
) -> String {
    publish_service(
        &net.node(0),
        &net.tmp().join(format!("{name}-{version}.wasm")),
        wasm,
        &manifest(name, version, devices),
    )
}

/// The fleet tests' manifest of service `name` version `version` (immediate, 250 millicores,
/// 64 MiB), taking over the sensor `devices` where it runs: a guest that runs, for any process
/// test that needs one.
pub fn manifest(name: &str, version: &str, devices: &[u32]) -> String {
    format!(
        "name = \"{name}\"\nversion = \"{version}\"\nkind = \"wasm\"\ntick_ms = 100\n\
         activation = \"immediate\"\ndevices = {devices:?}\n\n[resources]\ncpu_millis = 250\n\
         memory_mb = 64\nstorage_mb = 1\n\n[limits]\nmemory_bytes = 16777216\n\
         fuel_per_second = 200000000\ninstances = 1\nmax_output_bytes = 1048576\n"
    )
}

/// Polls `f` every 200 ms until it holds; once `timeout` has passed, prints the deployment's
/// status and the services of `nodes`, then panics naming `what` (what `crate::wait_until`
/// does, with what a fleet test needs to diagnose a timeout).
pub fn wait_for(
    net: &TestDevnet,
    id: &str,
    nodes: &[usize],
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> bool,
) {
    let started = std::time::Instant::now();
    let deadline = started + timeout;
    while !f() {
        if std::time::Instant::now() >= deadline {
            dump(net, id, nodes);
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!("waited {:.1} s for {what}", started.elapsed().as_secs_f64());
}

/// What a failed wait prints, so that the failure explains itself: the deployer's status and
/// counters, its contracts as its ledger sees them, and per node its ledger height, the
/// contracts it provides as its own ledger sees them, and its services (state, image, uptime).
/// The devnet directory with every node's log is kept too (`TestDevnet`'s drop on a panic).
pub fn dump(net: &TestDevnet, id: &str, nodes: &[usize]) {
    let ids = node_ids(net);
    let short =
        |v: &serde_json::Value| -> String { v.as_str().unwrap_or("?").chars().take(8).collect() };
    let who = |v: &serde_json::Value| -> String {
        ids.iter()
            .position(|n| Some(n.as_str()) == v.as_str())
            .map_or_else(|| short(v), |i| format!("node{i}"))
    };
    let img = |v: &serde_json::Value| -> String {
        let s = v.as_str().unwrap_or("?");
        s.get(s.len().saturating_sub(6)..).unwrap_or(s).to_string()
    };
    let contracts = |i: usize| -> Vec<String> {
        try_agora_json(&["contract", "list", "--data-dir", &net.node(i)])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|c| {
                c["customer"] == ids[0].as_str() && (i == 0 || c["provider"] == ids[i].as_str())
            })
            .map(|c| {
                format!(
                    "{} {}->{} image ..{} {}",
                    short(&c["id"]),
                    who(&c["customer"]),
                    who(&c["provider"]),
                    img(&c["image"]),
                    c["status"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    let height = |i: usize| {
        try_agora_json(&["ledger", "status", "--data-dir", &net.node(i)])
            .map(|s| s["height"].clone())
            .unwrap_or(serde_json::Value::Null)
    };
    eprintln!("deployer status: {}", status(net, id));
    eprintln!(
        "deployer fleet stats: {}",
        try_agora_json(&["deploy", "list", "--data-dir", &net.node(0)])
            .map(|v| v["stats"].clone())
            .unwrap_or(serde_json::Value::Null)
    );
    eprintln!(
        "node0 (deployer) height {}, its contracts: {:#?}",
        height(0),
        contracts(0)
    );
    for &i in nodes {
        let services: Vec<String> =
            try_agora_json(&["service", "list", "--data-dir", &net.node(i)])
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    format!(
                        "{} {} ..{} {} up {} ms",
                        short(&s["id"]),
                        s["name"].as_str().unwrap_or("?"),
                        img(&s["image"]),
                        s["state"],
                        s["metering"]["uptime_ms"]
                    )
                })
                .collect();
        eprintln!(
            "node{i} ({}): height {}, contracts it provides {:?}, services {:?}",
            short(&serde_json::Value::String(ids[i].clone())),
            height(i),
            contracts(i),
            services
        );
    }
}

/// Whether node `i` runs a service of `image` (state Active).
pub fn runs(net: &TestDevnet, i: usize, image: &str) -> bool {
    !running_of(net, i, &[image]).is_empty()
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

/// Node 0's (the deployer's) contracts carrying `image`: `(id, provider, status)` each, as
/// `agora contract list` on node 0 shows them (empty while it cannot be read).
pub fn deployer_contracts(net: &TestDevnet, image: &str) -> Vec<(String, String, String)> {
    let ids = node_ids(net);
    try_agora_json(&["contract", "list", "--data-dir", &net.node(0)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|c| c["customer"] == ids[0].as_str() && c["image"] == image)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("?").to_string();
            (s("id"), s("provider"), s("status"))
        })
        .collect()
}

/// Contract statuses after which a contract holds nothing more (`completed` and `breached` only
/// wait for their settlement); every other one is live.
pub const CONTRACT_OVER: [&str; 6] = [
    "completed",
    "breached",
    "cancelled",
    "settled",
    "slashed",
    "expired",
];

/// Per provider (node id), how many of node 0's contracts carrying `image` are live, as node 0's
/// ledger shows them: more than one on a provider is one replica placed twice.
pub fn live_contracts(net: &TestDevnet, image: &str) -> BTreeMap<String, usize> {
    let mut live = BTreeMap::new();
    for (_, provider, state) in deployer_contracts(net, image) {
        if !CONTRACT_OVER.contains(&state.as_str()) {
            *live.entry(provider).or_default() += 1;
        }
    }
    live
}

/// Waits until every contract node 0 holds for `image` ended, and returns how each ended.
/// Honest providers whose deployment was deleted are paid pro rata, never slashed: the caller
/// asserts on the statuses.
pub fn wait_contracts_ended(net: &TestDevnet, image: &str) -> Vec<(String, String, String)> {
    let ended = |s: &str| matches!(s, "settled" | "slashed" | "cancelled" | "expired");
    wait_until(
        "every contract of the deleted deployment to end on the ledger",
        WAIT_ENDED,
        || {
            let c = deployer_contracts(net, image);
            !c.is_empty() && c.iter().all(|(_, _, s)| ended(s))
        },
    );
    deployer_contracts(net, image)
}

/// How long the contracts of a deleted deployment may take to end: the settlement waits for
/// the committee's probe reports of its last interval (a few blocks).
const WAIT_ENDED: std::time::Duration = std::time::Duration::from_secs(120);

/// `agora deploy create IMAGE ARGS… --cpu 250m --memory 64MiB` on node 0 (the deployer), the
/// fleet tests' replica size; returns the deployment id.
pub fn create(net: &TestDevnet, image: &str, args: &[&str]) -> String {
    let node0 = net.node(0);
    let mut all = vec!["deploy", "create", image];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--cpu", "250m", "--memory", "64MiB", "--data-dir", &node0]);
    let created = crate::agora_json(&all);
    created["id"].as_str().unwrap().to_string()
}

/// `agora deploy create --variant a=A --variant b=B:iface=ble --to site=factory --all --name
/// NAME` on node 0 with the fleet tests' replica size: variant `a` anywhere, `b` only where BLE
/// is; returns the JSON answer.
pub fn create_ble_variants(net: &TestDevnet, a: &str, b: &str, name: &str) -> serde_json::Value {
    crate::agora_json(&[
        "deploy",
        "create",
        "--variant",
        &format!("a={a}"),
        "--variant",
        &format!("b={b}:iface=ble"),
        "--to",
        "site=factory",
        "--all",
        "--name",
        name,
        "--cpu",
        "250m",
        "--memory",
        "64MiB",
        "--data-dir",
        &net.node(0),
    ])
}

/// [`create`] with `--to site=factory --replicas 1 --name NAME`.
pub fn create_one(net: &TestDevnet, image: &str, name: &str) -> String {
    create(
        net,
        image,
        &["--to", "site=factory", "--replicas", "1", "--name", name],
    )
}

pub use agora_devnet::files::tagged;
