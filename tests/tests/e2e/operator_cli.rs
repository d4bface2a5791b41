//! Process test of the CLI surprises fixed for operators (#18): a second bid from a node whose
//! decision unit already bid says why and what to do; `agora peers connect|disconnect`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_tests::{TestDevnet, agora, agora_json, wait_until};

#[test]
fn second_bid_explains_itself_and_peers_connect_and_disconnect() {
    let net = TestDevnet::up(3, 90, &[]);
    let up = &net.up;
    let nodes = up["nodes"].as_array().unwrap().clone();
    let node = |i: usize| net.node(i);

    // node1's decision unit bids on node0's auction; a manual bid from node1 then explains.
    let created = agora_json(&[
        "auction",
        "create",
        "--data-dir",
        &node(0),
        "--cpu",
        "500m",
        "--memory",
        "256MiB",
        "--duration",
        "1h",
        "--max-price",
        "100",
        "--window",
        "30s",
    ]);
    let auction = created["id"].as_str().unwrap().to_string();
    let node1_id = nodes[1]["node_id"].as_str().unwrap().to_string();
    wait_until("node1's automatic bid", Duration::from_secs(20), || {
        agora_json(&["bids", &auction, "--data-dir", &node(0)])
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["provider"] == node1_id.as_str())
    });
    let again = agora(&[
        "bid",
        "submit",
        &auction,
        "--price",
        "80",
        "--data-dir",
        &node(1),
    ]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already bid"), "{err}");
    assert!(err.contains("auto_bid = false"), "{err}");
    assert!(err.contains("--manual"), "{err}");

    // Disconnect node0 from node2, then connect again by multiaddr.
    let status2 = agora_json(&["status", "--data-dir", &node(2)]);
    let peer2 = status2["peer_id"].as_str().unwrap().to_string();
    let addr2 = status2["p2p_addrs"][0].as_str().unwrap().to_string();
    let gone = agora_json(&["peers", "disconnect", &peer2, "--data-dir", &node(0)]);
    assert_eq!(gone["connected"], false);
    assert_eq!(gone["node_id"], nodes[2]["node_id"]);
    let back = agora_json(&["peers", "connect", &addr2, "--data-dir", &node(0)]);
    assert_eq!(back["connected"], true);
    assert_eq!(back["peer_id"], peer2.as_str());
    let peers = agora_json(&["peers", "--data-dir", &node(0)]);
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == peer2.as_str())
    );
    // Or by the peer id alone: node0 knows where node2 listens.
    agora_json(&["peers", "disconnect", &peer2, "--data-dir", &node(0)]);
    let back = agora_json(&["peers", "connect", &peer2, "--data-dir", &node(0)]);
    assert_eq!(back["connected"], true, "{back}");
    assert_eq!(back["peer_id"], peer2.as_str());

    // Bad input says what to pass.
    let bare = addr2.split("/p2p/").next().unwrap().to_string();
    let out = agora(&["peers", "connect", &bare, "--data-dir", &node(0)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/p2p/<peer id>"));
    let out = agora(&["peers", "disconnect", "nonsense", "--data-dir", &node(0)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("peer id"));
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef agora"),
        ("fish", "complete -c agora"),
    ] {
        let out = agora(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text:.200}");
        assert!(text.contains("disconnect"), "{shell} completes subcommands");
    }
    let out = agora(&["completions", "tcsh"]);
    assert!(!out.status.success());
}
