//! Hostile guests on a real `agora` process (issue #13.6, threat G1): a node hosts a tight
//! loop, a host-call loop, a WASI sleep that never returns, a memory bomb, a kv flood and an
//! output flood next to an honest echo service. Each is stopped by its limit or by
//! `agora service stop`; meanwhile the node keeps answering its API and gossiping, the honest
//! service keeps publishing what it is given, and no node process dies. The guests are built
//! from WAT at test time; the measured stop latencies are printed (`--nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use agora_runtime::test_utils::{
    BUSY_FOREVER, ECHO, HOST_CALLS_FOREVER, MEMORY_BOMB, SLEEP_FOREVER, STDOUT_FLOOD,
};
use agora_tests::{TestDevnet, agora, agora_json, alive, publish_service, wait_until};
use serde_json::Value;

/// Logs `ready`, then `kv_put`s a new 4-byte key on every iteration forever; logs `kv full`
/// once when the node's store first refuses a put (its per-service bound).
const KV_FLOOD: &str = r#"(module
  (import "agora" "kv_put" (func $put (param i32 i32 i32 i32) (result i32)))
  (import "agora" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "ready")
  (data (i32.const 16) "kv full")
  (func (export "agora_poll") (result i32) (local $i i32) (local $logged i32)
    (call $log (i32.const 0) (i32.const 5))
    (loop $l
      (i32.store (i32.const 64) (local.get $i))
      (if (i32.lt_s (call $put (i32.const 64) (i32.const 4) (i32.const 64) (i32.const 4))
                    (i32.const 0))
        (then (if (i32.eqz (local.get $logged))
          (then (call $log (i32.const 16) (i32.const 7))
                (local.set $logged (i32.const 1))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))
    (i32.const 0)))"#;

/// How a hostile guest is expected to end. (Guests sharing a module say `instances = 2`: the
/// runtime bounds active instances per module.)
#[derive(Clone, Copy, Debug)]
enum Ends {
    /// By its own limit, with this stop reason.
    ByLimit(&'static str),
    /// By `agora service stop`, once its log shows this line.
    ByStopAfterLog(&'static str),
}

struct Guest {
    id: &'static str,
    wat: &'static str,
    /// The manifest's `[limits]` lines.
    limits: &'static str,
    ends: Ends,
}

fn guests() -> Vec<Guest> {
    vec![
        Guest {
            id: "tight-loop",
            wat: BUSY_FOREVER,
            limits: "fuel_per_second = 20000000\ninstances = 2",
            ends: Ends::ByLimit("CpuLimit"),
        },
        Guest {
            id: "tight-loop-unmetered",
            wat: BUSY_FOREVER,
            limits: "fuel_per_second = 100000000000\ninstances = 2",
            ends: Ends::ByStopAfterLog("ready"),
        },
        Guest {
            id: "host-call-loop",
            wat: HOST_CALLS_FOREVER,
            limits: "fuel_per_second = 100000000000",
            ends: Ends::ByStopAfterLog("ready"),
        },
        Guest {
            id: "sleep-forever",
            wat: SLEEP_FOREVER,
            limits: "fuel_per_second = 200000000\ninstances = 2",
            ends: Ends::ByStopAfterLog("ready"),
        },
        Guest {
            id: "sleep-past-lifetime",
            wat: SLEEP_FOREVER,
            limits: "max_lifetime_ms = 1500\ninstances = 2",
            ends: Ends::ByLimit("Lifetime"),
        },
        Guest {
            id: "memory-bomb",
            wat: MEMORY_BOMB,
            limits: "memory_bytes = 4194304",
            ends: Ends::ByLimit("MemoryLimit"),
        },
        Guest {
            id: "kv-flood",
            wat: KV_FLOOD,
            limits: "fuel_per_second = 100000000000",
            ends: Ends::ByStopAfterLog("kv full"),
        },
        Guest {
            id: "output-flood",
            wat: STDOUT_FLOOD,
            limits: "max_output_bytes = 4096",
            ends: Ends::ByLimit("OutputLimit"),
        },
    ]
}

/// Writes `wat` as a module and a manifest with `limits`, publishes them on `node`; returns
/// the image CID.
fn publish(tmp: &Path, node: &str, name: &str, wat: &str, limits: &str) -> String {
    let wasm = wat::parse_str(wat).unwrap_or_else(|e| panic!("{name}: {e}"));
    publish_service(
        node,
        &tmp.join(format!("{name}.wasm")),
        &wasm,
        &format!("name = \"{name}\"\nversion = \"1\"\ntick_ms = 50\n[limits]\n{limits}\n"),
    )
}

fn show(node: &str, id: &str) -> Value {
    agora_json(&["service", "show", id, "--data-dir", node])["service"].clone()
}

fn logs(node: &str, id: &str) -> String {
    agora_json(&["service", "logs", id, "--data-dir", node])["logs"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The stop reason of a stopped service, as `StopReason`'s variant name.
fn stop_reason(service: &Value) -> Option<String> {
    let stopped = service["state"].get("Stopped")?;
    Some(match stopped {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
        other => other.to_string(),
    })
}

fn gossip_accepted(node: &str) -> u64 {
    agora_json(&["status", "--data-dir", node])["stats"]["gossip_accepted"]
        .as_u64()
        .unwrap()
}

fn published(node: &str, id: &str) -> u64 {
    show(node, id)["metering"]["published"].as_u64().unwrap()
}

/// Pushes `n` readings to the echo service and waits until it has published them all.
fn echo_processes(node: &str, n: u64, what: &str) {
    let before = published(node, "honest");
    let readings: Vec<String> = (0..n).map(|i| format!("{:02x}{i:02x}", 0xee)).collect();
    let mut push = vec!["service", "push", "honest", "--data-dir", node];
    push.extend(readings.iter().map(String::as_str));
    assert_eq!(agora_json(&push)["queued"], n);
    wait_until(what, Duration::from_secs(60), || {
        published(node, "honest") >= before + n
    });
}

/// Wall time of one `agora ARGS` run (asserting it succeeded).
fn timed(args: &[&str]) -> (Duration, Value) {
    let t = Instant::now();
    let v = agora_json(args);
    (t.elapsed(), v)
}

#[test]
fn hostile_guests_are_stopped_and_the_node_and_its_honest_service_carry_on() {
    let net = TestDevnet::up(2, 60, &[]);
    let dir = &net.dir;
    let dir_s = net.dir_s();
    let up = &net.up;
    let pids: Vec<u64> = up["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["pid"].as_u64().unwrap())
        .collect();
    let host = dir.join("node1").display().to_string();
    let other = dir.join("node0").display().to_string();

    // The honest neighbour: an echo service that publishes every reading it is given.
    let echo = publish(
        net.tmp(),
        &host,
        "honest",
        ECHO,
        "fuel_per_second = 200000000",
    );
    agora_json(&[
        "service",
        "stage",
        &echo,
        "--id",
        "honest",
        "--data-dir",
        &host,
    ]);
    agora_json(&["service", "start", "honest", "--data-dir", &host]);
    echo_processes(&host, 4, "the honest service echoing before the attack");

    // Every hostile guest at once, each under its own manifest's limits.
    let guests = guests();
    for g in &guests {
        let image = publish(net.tmp(), &host, g.id, g.wat, g.limits);
        agora_json(&[
            "service",
            "stage",
            &image,
            "--id",
            g.id,
            "--data-dir",
            &host,
        ]);
        agora_json(&["service", "start", g.id, "--data-dir", &host]);
    }

    // While they run: the API answers, gossip flows both ways, the honest service echoes.
    let (status_during, _) = timed(&["status", "--data-dir", &host]);
    let gossip_host = gossip_accepted(&host);
    let gossip_other = gossip_accepted(&other);
    echo_processes(&host, 8, "the honest service echoing during the attack");
    wait_until(
        "the hosting node accepting gossip during the attack",
        Duration::from_secs(60),
        || gossip_accepted(&host) > gossip_host,
    );
    wait_until(
        "the other node accepting gossip during the attack",
        Duration::from_secs(60),
        || gossip_accepted(&other) > gossip_other,
    );

    // Each hostile guest ends: by its limit, or by `agora service stop`.
    let (show_baseline, _) = timed(&["service", "show", "honest", "--data-dir", &host]);
    let mut report = Vec::new();
    for g in &guests {
        match g.ends {
            Ends::ByLimit(reason) => {
                wait_until(
                    &format!("{} stopped by its limit", g.id),
                    Duration::from_secs(60),
                    || stop_reason(&show(&host, g.id)).is_some(),
                );
                let s = show(&host, g.id);
                assert_eq!(stop_reason(&s).as_deref(), Some(reason), "{}: {s}", g.id);
                let ran = s["metering"]["uptime_ms"].as_u64().unwrap();
                report.push(format!(
                    "{:<22} {reason:<12} ran {ran} ms before its limit stopped it",
                    g.id
                ));
            }
            Ends::ByStopAfterLog(line) => {
                wait_until(
                    &format!("{} logging `{line}`", g.id),
                    Duration::from_secs(60),
                    || logs(&host, g.id).contains(line),
                );
                assert_eq!(
                    show(&host, g.id)["state"],
                    "Active",
                    "{} must still be running before it is stopped",
                    g.id
                );
                let (took, stopped) = timed(&["service", "stop", g.id, "--data-dir", &host]);
                assert_eq!(stopped["reason"], "Requested", "{}: {stopped}", g.id);
                assert_eq!(
                    stop_reason(&show(&host, g.id)).as_deref(),
                    Some("Requested")
                );
                report.push(format!(
                    "{:<22} Requested    `agora service stop` took {} ms (an `agora service show` takes {} ms)",
                    g.id,
                    took.as_millis(),
                    show_baseline.as_millis()
                ));
            }
        }
    }
    // The output flood's log is bounded, the memory bomb never got past its memory.
    assert!(logs(&host, "output-flood").len() <= 4096 + 1024);
    let bomb = show(&host, "memory-bomb");
    assert!(
        bomb["metering"]["peak_memory_bytes"].as_u64().unwrap() <= 4 << 20,
        "{bomb}"
    );

    // Afterwards: the honest service still echoes, the API still answers, both nodes live.
    echo_processes(&host, 4, "the honest service echoing after the attack");
    assert_eq!(show(&host, "honest")["state"], "Active");
    let (status_after, status) = timed(&["status", "--data-dir", &host]);
    assert!(status["peers"].as_u64().unwrap() >= 1, "{status}");
    assert!(pids.iter().all(|p| alive(*p)), "a node process died");
    let down = agora(&["devnet", "status", "--dir", &dir_s]);
    assert!(down.status.success());

    eprintln!("hostile guests on a real node (stop latencies):");
    for line in &report {
        eprintln!("  {line}");
    }
    eprintln!(
        "  `agora status` answered in {} ms during the attack, {} ms after",
        status_during.as_millis(),
        status_after.as_millis()
    );
}
