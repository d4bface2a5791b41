//! Process-level test of `agora service …`: publish the lora-gateway image on node0, stage it
//! on node1 (fetched over bitswap between processes), start it, read its logs, stop it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_runtime::test_utils::{lora_frame, lora_gateway_wasm};
use agora_tests::{TestDevnet, agora, agora_json, wait_until};

#[test]
fn publish_list_stage_start_logs_stop_across_nodes() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let net = TestDevnet::up(2, 60, &[]);
    let node = |i: usize| net.node(i);

    let module = net.tmp().join("lora_gateway.wasm");
    std::fs::write(&module, &wasm).unwrap();
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runtime/examples/lora-gateway/service.toml"
    );
    let module_s = module.display().to_string();
    let published = agora_json(&[
        "service",
        "publish",
        &module_s,
        "--manifest",
        manifest,
        "--data-dir",
        &node(0),
    ]);
    let image = published["image"].as_str().unwrap().to_string();
    assert_eq!(published["name"], "lora-gateway");
    assert_eq!(published["module_bytes"], wasm.len() as u64);

    // Human output names the image CID.
    let again = agora(&[
        "service",
        "publish",
        &module_s,
        "--manifest",
        manifest,
        "--data-dir",
        &node(0),
    ]);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(&image),
        "same bytes, same CID"
    );

    // A bad manifest is refused with the field named.
    let bad = net.tmp().join("bad.toml");
    std::fs::write(&bad, "name = \"Bad Name\"\nversion = \"1\"\n").unwrap();
    let refused = agora(&[
        "service",
        "publish",
        &module_s,
        "--manifest",
        &bad.display().to_string(),
        "--data-dir",
        &node(0),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("field `name`"));

    // Without --manifest: defaults derived from the module, and the manifest used is shown to
    // copy; a module without the guest ABI's exports is refused naming the export.
    let derived = agora(&["service", "publish", &module_s, "--data-dir", &node(0)]);
    assert!(derived.status.success(), "{derived:?}");
    let text = String::from_utf8_lossy(&derived.stdout);
    assert!(text.contains("lora_gateway 0.1.0"), "{text}");
    assert!(text.contains("no --manifest"), "{text}");
    assert!(text.contains("name = \"lora_gateway\""), "{text}");
    let empty = net.tmp().join("empty.wat");
    std::fs::write(&empty, "(module)").unwrap();
    let refused = agora(&[
        "service",
        "publish",
        &empty.display().to_string(),
        "--data-dir",
        &node(0),
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not export"),
        "{refused:?}"
    );

    let listed = agora_json(&["service", "list", "--data-dir", &node(1)]);
    assert_eq!(listed.as_array().unwrap().len(), 0);
    let staged = agora_json(&[
        "service",
        "stage",
        &image,
        "--id",
        "gw1",
        "--data-dir",
        &node(1),
    ]);
    assert_eq!(staged["id"], "gw1");
    assert_eq!(staged["from_cache"], false);
    let listed = agora_json(&["service", "list", "--data-dir", &node(1)]);
    assert_eq!(listed[0]["id"], "gw1");
    assert_eq!(listed[0]["state"], "Staged");
    assert_eq!(listed[0]["image"], image.as_str());

    let started = agora_json(&["service", "start", "gw1", "--data-dir", &node(1)]);
    assert_eq!(started["service"]["state"], "Active");
    wait_until(
        "the gateway's start line in its logs",
        Duration::from_secs(20),
        || {
            let logs = agora_json(&["service", "logs", "gw1", "--data-dir", &node(1)]);
            logs["logs"]
                .as_str()
                .unwrap()
                .contains("lora-gateway started")
        },
    );
    let shown = agora(&["service", "show", "gw1", "--data-dir", &node(1)]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("state:     active"));

    // Eight frames make one published batch.
    let frames: Vec<String> = (0..8u32)
        .map(|seq| {
            lora_frame(1 + seq % 2, seq, 2150, 4800)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    let mut push = vec!["service", "push", "gw1", "--data-dir"];
    let n1 = node(1);
    push.push(&n1);
    push.extend(frames.iter().map(String::as_str));
    assert_eq!(agora_json(&push)["queued"], 8);
    wait_until("one published batch", Duration::from_secs(20), || {
        let shown = agora_json(&["service", "show", "gw1", "--data-dir", &node(1)]);
        shown["service"]["metering"]["published"] == 1
    });
    let not_hex = agora(&["service", "push", "gw1", "zz", "--data-dir", &node(1)]);
    assert!(String::from_utf8_lossy(&not_hex.stderr).contains("is not hex"));

    let stopped = agora_json(&["service", "stop", "gw1", "--data-dir", &node(1)]);
    assert_eq!(stopped["reason"], "Requested");
    let shown = agora_json(&["service", "show", "gw1", "--data-dir", &node(1)]);
    assert_eq!(shown["service"]["state"]["Stopped"], "Requested");
    assert!(shown["service"]["metering"]["uptime_ms"].as_u64().unwrap() > 0);

    // Unknown ids fail with a hint.
    let unknown = agora(&["service", "start", "nope", "--data-dir", &node(1)]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("agora service list"));
}
