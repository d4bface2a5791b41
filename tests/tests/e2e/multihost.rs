//! The path across machines (docs/MULTIHOST.md), on one host: four "machines" — data dirs
//! that share nothing but a genesis file and one bootstrap address, each on its own port —
//! become a network with the documented commands: `agora init` on each, `agora genesis create`
//! naming their ids, `agora init --genesis … --bootstrap …`, `agora node run`. They connect,
//! replicate one chain and finalise a transfer. What one host cannot show (NAT, real links) is
//! the netlab's (`tests/tests/e2e/nat.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agora_tests::{JoinedNode, agora, agora_json, try_agora_json, wait_until};

const MACHINES: usize = 4;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn balance(dir: &str, account: &str) -> u64 {
    try_agora_json(&["balance", account, "--data-dir", dir])
        .and_then(|v| v["balance"].as_u64())
        .unwrap_or(0)
}

#[test]
fn four_machines_share_a_genesis_and_a_bootstrap_address_and_finalise_a_transfer() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<String> = (0..MACHINES)
        .map(|i| tmp.path().join(format!("machine{i}")).display().to_string())
        .collect();

    // On each machine: a key, a config listening on its own port.
    let mut ids = Vec::new();
    let mut peer_ids = Vec::new();
    for dir in &dirs {
        let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
        let init = agora_json(&[
            "init",
            "--data-dir",
            dir,
            "--listen",
            &listen,
            "--api-listen",
            "127.0.0.1:0",
        ]);
        ids.push(init["node_id"].as_str().unwrap().to_string());
        peer_ids.push(init["peer_id"].as_str().unwrap().to_string());
    }

    // One machine writes the genesis naming every arbitrator; it is copied to the others.
    let genesis = tmp.path().join("genesis.json").display().to_string();
    let mut args = vec!["genesis", "create", "--out", &genesis, "--faucet"];
    for id in &ids {
        args.extend(["--arbitrator", id.as_str()]);
    }
    let created = agora_json(&args);
    assert_eq!(created["arbitrators"], MACHINES, "{created}");
    // Writing it again is refused unless forced: every node must use the same file.
    let again = agora(&args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // The first machine starts; the others bootstrap from its address.
    agora_json(&["init", "--data-dir", &dirs[0], "--genesis", &genesis]);
    let mut nodes = vec![JoinedNode::run(&dirs[0], &[])];
    let addr_file = std::path::Path::new(&dirs[0]).join("p2p.addr");
    wait_until(
        "the first machine's node to write its address",
        Duration::from_secs(30),
        || addr_file.exists(),
    );
    let first = std::fs::read_to_string(&addr_file).unwrap();
    let bootstrap = first.lines().next().unwrap().trim().to_string();
    // The peer id `init --json` printed is the one the node runs with, so an operator can
    // write other machines' bootstrap lists before the first node starts.
    assert!(
        bootstrap.ends_with(&format!("/p2p/{}", peer_ids[0])),
        "{bootstrap} vs {}",
        peer_ids[0]
    );
    // A bootstrap address without the peer id is refused with what to add.
    let bad = agora(&[
        "init",
        "--data-dir",
        &dirs[1],
        "--bootstrap",
        bootstrap.split("/p2p/").next().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/p2p/PEER_ID"));
    for dir in &dirs[1..] {
        agora_json(&[
            "init",
            "--data-dir",
            dir,
            "--genesis",
            &genesis,
            "--bootstrap",
            &bootstrap,
        ]);
        nodes.push(JoinedNode::run(dir, &[]));
    }

    for dir in &dirs {
        wait_until(
            "every machine to connect to the three others and be ready",
            Duration::from_secs(60),
            || {
                try_agora_json(&["peers", "--data-dir", dir])
                    .and_then(|p| p.as_array().map(|a| a.len()))
                    .unwrap_or(0)
                    >= MACHINES - 1
            },
        );
    }
    let chains: Vec<String> = dirs
        .iter()
        .map(|d| {
            agora_json(&["ledger", "status", "--data-dir", d])["chain_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        chains.iter().all(|c| *c == chains[0]),
        "the machines replicate different chains: {chains:?}"
    );

    // A transfer from machine1 to machine2 is final on every machine's replica.
    let before: Vec<u64> = dirs.iter().map(|d| balance(d, &ids[2])).collect();
    assert!(
        before.iter().all(|b| *b > 0 && *b == before[0]),
        "the machines disagree on machine2's genesis balance: {before:?}"
    );
    agora_json(&["transfer", &ids[2], "250", "--data-dir", &dirs[1]]);
    for (dir, was) in dirs.iter().zip(before) {
        wait_until(
            "the transfer to be final on every machine",
            Duration::from_secs(60),
            || balance(dir, &ids[2]) >= was + 250,
        );
    }
    drop(nodes);
}

/// The systemd unit the docs install (`scripts/agora.service`) is one systemd accepts, pointing
/// at a real `agora` binary: `systemd-analyze verify` prints nothing and succeeds.
#[test]
fn the_systemd_unit_in_the_repo_verifies() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        agora_devnet::skipped("systemd_unit", "systemd-analyze is not installed here");
        return;
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(repo.join("scripts/agora.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/agora node run"),
        "{unit}"
    );
    assert!(unit.contains("Environment=AGORA_DATA_DIR="), "{unit}");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("agora.service");
    let bin = agora_tests::agora_bin().display().to_string();
    std::fs::write(&path, unit.replace("/usr/local/bin/agora", &bin)).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
