//! The `agora` binary on its own: init, config, and helpful errors without a running node.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn agora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn init_creates_private_key_token_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("edge");
    let d = dir.display().to_string();
    let out = agora(&["init", "--data-dir", &d, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["created"], true);
    for f in ["node.key", "api.token"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("[network]") && config.contains("[api]"));

    // A second init keeps the identity.
    let again = agora(&["init", "--data-dir", &d, "--json"]);
    let w: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(w["created"], false);
    assert_eq!(w["node_id"], v["node_id"]);
}

#[test]
fn commands_without_a_node_say_how_to_start_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().display().to_string();
    for cmd in [&["status"][..], &["peers"], &["auctions"]] {
        let mut args = cmd.to_vec();
        args.extend(["--data-dir", &d]);
        let out = agora(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("agora node run --data-dir"), "{cmd:?}: {err}");
    }
}

#[test]
fn run_without_init_and_busy_port_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("none").display().to_string();
    let out = agora(&["node", "run", "--data-dir", &d]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("agora init"));

    // Occupy a port, then ask the node to listen on it.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tmp.path().join("edge");
    let d = dir.display().to_string();
    assert!(agora(&["init", "--data-dir", &d]).status.success());
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let out = agora(&[
        "node",
        "run",
        "--data-dir",
        &d,
        "--listen",
        &listen,
        "--api-listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}
