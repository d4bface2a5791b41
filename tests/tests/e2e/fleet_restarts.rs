//! `agora deploy status` shows restarts, and `--watch` follows a rollout (issue #15): on a
//! 7-node contract devnet one provider is labelled `site=factory`; node0 deploys to it
//! (`deploy create --replicas 1`) a guest that traps on its 30th poll (3 s at `tick_ms = 100`)
//! under `[restart] policy = "on-failure"`. `deploy status ID --watch` without a terminal prints
//! the lines that change and exits 0 once the target is healthy; then the target's runtime
//! restarts the crashing guest and `deploy status --json` shows `restarts` ≥ 1 and why
//! (`last_failure`, the trap) for it (from the
//! target's own report), and the table has the RESTARTS column.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agora_tests::fleet::{create, label, node_ids, reconfigure, status, wait_for};
use agora_tests::{TestDevnet, agora, agora_bin, agora_json, publish_service};

const TARGET: usize = 2;
const WAIT: Duration = Duration::from_secs(300);

/// Traps (`unreachable`) on its 30th poll; healthy (answers polls) until then.
const TRAPS_ON_POLL_30: &str = r#"(module
  (memory (export "memory") 1)
  (global $polls (mut i32) (i32.const 0))
  (func (export "agora_poll") (result i32)
    (global.set $polls (i32.add (global.get $polls) (i32.const 1)))
    (if (i32.ge_u (global.get $polls) (i32.const 30)) (then unreachable))
    (i32.const 0)))"#;

fn restarts_of(st: &serde_json::Value, node_id: &str) -> Option<u64> {
    st["targets"]
        .as_array()?
        .iter()
        .find(|t| t["node"] == node_id)
        .and_then(|t| t["restarts"].as_u64())
}

#[test]
fn deploy_status_shows_a_crashing_targets_restarts_and_watch_follows_the_rollout() {
    let net = TestDevnet::up(7, 180, &[]);
    let ids = node_ids(&net);
    reconfigure(&net, TARGET, true, label);

    let wasm = wat::parse_str(TRAPS_ON_POLL_30).unwrap();
    let image = publish_service(
        &net.node(0),
        &net.tmp().join("crashy-fleet.wasm"),
        &wasm,
        "name = \"crashy-fleet\"\nversion = \"1\"\nkind = \"wasm\"\ntick_ms = 100\n\
         activation = \"immediate\"\ndevices = []\n\n[resources]\ncpu_millis = 250\n\
         memory_mb = 64\nstorage_mb = 1\n\n[limits]\nmemory_bytes = 16777216\n\
         fuel_per_second = 200000000\ninstances = 1\nmax_output_bytes = 1048576\n\n\
         [restart]\npolicy = \"on-failure\"\nmax_restarts = 1000\nbackoff_ms = 500\n\
         max_backoff_ms = 1000\n",
    );
    let id = create(&net, &image, &["--to", "site=factory", "--replicas", "1"]);

    // `--watch` without a terminal: the changed lines, then exit 0 once the target is healthy.
    let started = Instant::now();
    let mut child = Command::new(agora_bin())
        .args([
            "deploy",
            "status",
            &id,
            "--watch",
            "--interval",
            "300ms",
            "--data-dir",
            &net.node(0),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break Some(code);
        }
        if started.elapsed() > WAIT {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("deploy status --watch ({:?}):\n{stdout}", started.elapsed());
    let code = exited.unwrap_or_else(|| {
        panic!(
            "--watch did not exit within {WAIT:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(code.success(), "{code:?}: {stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        !stdout.contains("\x1b["),
        "no terminal: no redraw codes: {stdout:?}"
    );
    assert!(
        lines.last().is_some_and(|l| l.contains("healthy")),
        "the last change printed is the target becoming healthy: {stdout}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.contains(&ids[TARGET][..8]))
            .count()
            >= 2,
        "the target's line is printed again when it changes (at least contracting or \
         fetching, then healthy): {stdout}"
    );
    let unique: std::collections::BTreeSet<&&str> = lines.iter().collect();
    assert!(
        lines.windows(2).all(|w| w[0] != w[1]) && unique.len() * 2 >= lines.len(),
        "only changes are printed: {stdout}"
    );

    // The guest traps every 3 s and the target's runtime restarts it: the deployer shows the
    // count the target reported.
    wait_for(
        &net,
        &id,
        &[TARGET],
        "the deployer to show restarts >= 1",
        // The guest traps every ~3.5 s (30 polls and a 500 ms backoff).
        Duration::from_secs(90),
        || restarts_of(&status(&net, &id), &ids[TARGET]).is_some_and(|n| n >= 1),
    );
    let shown = restarts_of(&status(&net, &id), &ids[TARGET]).unwrap();
    let on_target = agora_json(&["service", "list", "--data-dir", &net.node(TARGET)]);
    println!("deployer shows {shown} restarts; the target's services: {on_target}");
    // Why: the trap, as the target's runtime saw it, in the JSON and in the table.
    let st = status(&net, &id);
    let why = st["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["node"] == ids[TARGET].as_str()))
        .and_then(|t| t["last_failure"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(why.starts_with("trap"), "last_failure {why:?} in {st}");
    let table = agora(&["deploy", "status", &id, "--data-dir", &net.node(0)]);
    assert!(table.status.success(), "{table:?}");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("RESTARTS"), "{table}");
    assert!(table.contains("(trap"), "{table}");
    for i in [1, 3, 4, 5, 6] {
        assert_eq!(restarts_of(&status(&net, &id), &ids[i]), None, "node{i}");
    }
}
