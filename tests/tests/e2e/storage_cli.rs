//! Process-level test: `agora storage add` on node0, `agora storage get` on node2, data
//! proofs created on one node and verified on another, and a storage contract auctioned from
//! the CLI and audited by the arbitrators, on seven real node processes (the smallest devnet
//! where two of them can make a contract).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_tests::{TestDevnet, agora, agora_json, try_agora_json, wait_until};

#[test]
fn add_on_node0_get_on_node2_and_proofs_across_nodes() {
    let net = TestDevnet::up(7, 60, &[]);
    let dir_s = net.dir_s();
    let node = |i: usize| net.node(i);

    // 1 MiB + 1 byte: five leaves under one root.
    let data: Vec<u8> = (0..1_048_577u32).map(|i| (i * 7 % 251) as u8).collect();
    let input = net.tmp().join("in.bin");
    std::fs::write(&input, &data).unwrap();
    let input_s = input.display().to_string();
    let added = agora_json(&["storage", "add", &input_s, "--data-dir", &node(0)]);
    let cid = added["cid"].as_str().unwrap().to_string();
    assert!(cid.starts_with("Qm"), "CIDv0 by default: {cid}");
    let v1 = agora_json(&[
        "storage",
        "add",
        &input_s,
        "--cid-version",
        "1",
        "--data-dir",
        &node(0),
    ]);
    assert!(v1["cid"].as_str().unwrap().starts_with("bafy"));

    let out = net.tmp().join("out.bin");
    let out_s = out.display().to_string();
    let got = agora_json(&["storage", "get", &cid, "-o", &out_s, "--data-dir", &node(2)]);
    assert_eq!(got["written"], data.len() as u64);
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // Human mode prints a summary on stdout; piped, it draws no progress bar (#18: progress
    // only on a terminal).
    let out2 = net.tmp().join("out2.bin");
    let o = agora(&[
        "storage",
        "get",
        v1["cid"].as_str().unwrap(),
        "-o",
        &out2.display().to_string(),
        "--data-dir",
        &node(1),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("saved "));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains('\r') && !err.contains('\x1b') && !err.contains("blocks"),
        "no progress bar on a pipe: {err:?}"
    );
    assert_eq!(std::fs::read(&out2).unwrap(), data);

    // node2 pinned nothing; node0 lists both roots.
    let ls = agora_json(&["storage", "ls", "--data-dir", &node(0)]);
    assert_eq!(ls["pins"].as_array().unwrap().len(), 2);
    let gc = agora_json(&["storage", "gc", "--data-dir", &node(2)]);
    assert!(
        gc["blocks"].as_u64().unwrap() >= 5,
        "fetched but unpinned: {gc}"
    );

    // pin fetches a remote DAG first; CAR export/import round-trips it to another node.
    let pinned = agora_json(&["storage", "pin", &cid, "--data-dir", &node(1)]);
    assert_eq!(pinned["cids"][0], cid.as_str());
    let ls1 = agora_json(&["storage", "ls", "--data-dir", &node(1)]);
    assert!(
        ls1["pins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == cid.as_str())
    );
    let car = net.tmp().join("f.car");
    let car_s = car.display().to_string();
    agora_json(&[
        "storage",
        "car",
        "export",
        &cid,
        "-o",
        &car_s,
        "--data-dir",
        &node(1),
    ]);
    let imported = agora_json(&["storage", "car", "import", &car_s, "--data-dir", &node(2)]);
    assert_eq!(imported["cids"][0], cid.as_str());
    assert_eq!(imported["blocks"], 6);

    // An unknown CID fails with a message saying what to do.
    let unknown =
        agora_storage::hash::cid_v1_blake3(agora_storage::hash::RAW, b"nobody").to_string();
    let missing = agora(&[
        "storage",
        "get",
        &unknown,
        "-o",
        &out_s,
        "--timeout",
        "2",
        "--data-dir",
        &node(2),
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no provider delivered"));

    // Data proofs: created and signed on node0, verified publicly on node2.
    let readings = net.tmp().join("readings.txt");
    std::fs::write(&readings, "t=1 21.5C\nt=2 21.7C\nt=3 22.0C\n").unwrap();
    let readings_s = readings.display().to_string();
    let proof = agora_json(&[
        "proof",
        "create",
        "--data",
        &readings_s,
        "--data-dir",
        &node(0),
    ]);
    let proof_cid = proof["cid"].as_str().unwrap().to_string();
    let ok = agora_json(&[
        "proof",
        "verify",
        "--data",
        &readings_s,
        "--proof",
        &proof_cid,
        "--data-dir",
        &node(2),
    ]);
    assert_eq!(ok["valid"], true);
    assert_eq!(ok["count"], 3);
    let one = agora_json(&[
        "proof",
        "verify",
        "--data",
        &readings_s,
        "--proof",
        &proof_cid,
        "--reading",
        "1",
        "--data-dir",
        &node(1),
    ]);
    assert_eq!(one["reading"], 1);
    std::fs::write(&readings, "t=1 21.5C\nt=2 99.9C\nt=3 22.0C\n").unwrap();
    let bad = agora(&[
        "proof",
        "verify",
        "--data",
        &readings_s,
        "--proof",
        &proof_cid,
        "--data-dir",
        &node(2),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("altered"));

    // A storage contract from the CLI: a storage auction must name a file this node holds; the
    // winner keeps node0's file and the other five nodes, as arbitrators, challenge it.
    let node0 = node(0);
    let storage_auction = |extra: &[&str]| {
        let mut args = vec![
            "auction",
            "create",
            "--kind",
            "storage",
            "--storage",
            "2MiB",
            "--duration",
            "5m",
            "--max-price",
            "100",
            "--window",
            "1s",
        ];
        args.extend_from_slice(extra);
        args.extend(["--data-dir", node0.as_str()]);
        agora(&args)
    };
    let no_file = storage_auction(&[]);
    assert!(!no_file.status.success());
    assert!(String::from_utf8_lossy(&no_file.stderr).contains("names the file to keep"));
    let not_held = storage_auction(&["--service", &unknown]);
    assert!(!not_held.status.success());
    assert!(String::from_utf8_lossy(&not_held.stderr).contains("not pinned on this node"));
    let created = storage_auction(&["--service", &cid, "--json"]);
    assert!(created.status.success(), "{created:?}");
    let me = agora_json(&["status", "--data-dir", &node0])["node_id"].clone();
    wait_until(
        "a storage contract with a passed challenge",
        Duration::from_secs(60),
        || {
            let Some(list) = try_agora_json(&["contract", "list", "--data-dir", &node0]) else {
                return false;
            };
            let Some(c) = list
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["kind"] == "storage" && c["customer"] == me)
            else {
                return false;
            };
            let id = c["id"].as_str().unwrap();
            try_agora_json(&["contract", "show", id, "--data-dir", &node0]).is_some_and(|r| {
                r["status"] == "Active"
                    && r["storage_passed"].as_u64().unwrap_or(0) >= 1
                    && r["storage_failed"] == 0
            })
        },
    );

    agora_json(&["devnet", "down", "--dir", &dir_s]);
}
