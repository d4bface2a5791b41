//! Process-level test of dependency order (`depends_on` in `svc.toml`) on one real node (of two):
//! `agora service start web` starts db, then cache, then web (the node's own record: the start
//! reply and `service list --json` start times); `agora service stop db` stops web, cache, db in
//! that order; a missing dependency and a cycle are refused naming the services.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use agora_tests::{TestDevnet, agora, agora_json, publish_service};

/// A guest that is sick at its first health read and healthy from the next (a second later),
/// so a dependent that started early would show in the start times. `name` varies the bytes.
fn guest(name: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (global $polls (mut i32) (i32.const 0))
  (data (i32.const 0) "{name}")
  (func (export "agora_poll") (result i32)
    (global.set $polls (i32.add (global.get $polls) (i32.const 1)))
    (i32.const 0))
  (func (export "agora_health") (result i32)
    (i32.lt_u (global.get $polls) (i32.const 3))))"#
    )
}

/// Writes `NAME.wat` and `NAME.toml` (depending on `depends_on`) and publishes them on `node`;
/// returns the image CID, or the failed command's output.
fn publish(tmp: &Path, node: &str, name: &str, depends_on: &str) -> String {
    publish_service(
        node,
        &tmp.join(format!("{name}.wat")),
        guest(name).as_bytes(),
        &format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\ntick_ms = 10\ndepends_on = [{depends_on}]\n\
             [limits]\nmemory_bytes = 1048576\n"
        ),
    )
}

fn stage(node: &str, image: &str, id: &str) -> std::process::Output {
    agora(&["service", "stage", image, "--id", id, "--data-dir", node])
}

fn field(list: &serde_json::Value, id: &str, key: &str) -> serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .map(|s| s[key].clone())
        .unwrap_or_default()
}

#[test]
fn start_follows_depends_on_and_stop_goes_in_reverse() {
    // Two nodes: a devnet is ready once its nodes see each other; everything runs on node0.
    let net = TestDevnet::up(2, 60, &[]);
    let node = net.node(0);
    let tmp = net.tmp();

    for (name, deps) in [
        ("db", ""),
        ("cache", "\"db\""),
        ("web", "\"cache\", \"db\""),
    ] {
        let image = publish(tmp, &node, name, deps);
        let out = stage(&node, &image, &format!("{name}1"));
        assert!(out.status.success(), "{out:?}");
    }

    // One command starts all three, dependencies first; the reply says which it started.
    let started = agora_json(&["service", "start", "web1", "--data-dir", &node]);
    assert_eq!(
        started["started"],
        serde_json::json!(["db1", "cache1", "web1"])
    );
    assert_eq!(started["service"]["state"], "Active");
    let list = agora_json(&["service", "list", "--data-dir", &node]);
    let at = |id: &str| field(&list, id, "started_at_ms").as_u64().unwrap();
    // Each dependency answered healthy (a second after its start) before the next started.
    assert!(at("cache1") >= at("db1") + 900, "{list}");
    assert!(at("web1") >= at("cache1") + 900, "{list}");
    assert_eq!(
        field(&list, "web1", "depends_on"),
        serde_json::json!(["cache", "db"])
    );

    // Stopping db stops what depends on it first: web, then cache, then db.
    let stopped = agora_json(&["service", "stop", "db1", "--data-dir", &node]);
    let order: Vec<&str> = stopped["stopped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["web1", "cache1", "db1"], "{stopped}");
    let list = agora_json(&["service", "list", "--data-dir", &node]);
    let end = |id: &str| field(&list, id, "stopped_at_ms").as_u64().unwrap();
    assert!(
        end("web1") <= end("cache1") && end("cache1") <= end("db1"),
        "{list}"
    );
    for id in ["db1", "cache1", "web1"] {
        assert_eq!(
            field(&list, id, "state"),
            serde_json::json!({"Stopped": "Requested"})
        );
    }

    // Human output says what else it started and stopped.
    let out = agora(&["service", "start", "cache1", "--data-dir", &node]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("started db1 (a dependency of cache1)"),
        "{text}"
    );
    let out = agora(&["service", "stop", "db1", "--data-dir", &node]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stopped cache1: Requested (it depends on db1)"),
        "{text}"
    );

    // A dependency nothing staged has: start fails at once, naming both.
    let image = publish(tmp, &node, "app", "\"absent\"");
    assert!(stage(&node, &image, "app1").status.success());
    let out = agora(&["service", "start", "app1", "--data-dir", &node]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("`app` depends on `absent`"), "{err}");

    // A cycle: publishing each half is fine (a manifest alone has none); staging the second
    // half is refused with the cycle's names, and it is not staged.
    let a = publish(tmp, &node, "a", "\"b\"");
    let b = publish(tmp, &node, "b", "\"a\"");
    assert!(stage(&node, &a, "a1").status.success());
    let out = stage(&node, &b, "b1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cycle: a -> b -> a"), "{err}");
    let list = agora_json(&["service", "list", "--data-dir", &node]);
    assert_eq!(field(&list, "b1", "id"), serde_json::Value::Null);

    // A manifest that depends on itself is refused at publish, naming the field.
    let module = tmp.join("self.wat");
    std::fs::write(&module, guest("self")).unwrap();
    let manifest = tmp.join("self.toml");
    std::fs::write(
        &manifest,
        "name = \"me\"\nversion = \"1\"\ndepends_on = [\"me\"]\n",
    )
    .unwrap();
    let out = agora(&[
        "service",
        "publish",
        &module.display().to_string(),
        "--manifest",
        &manifest.display().to_string(),
        "--data-dir",
        &node,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`depends_on`") && err.contains("itself"),
        "{err}"
    );
}
