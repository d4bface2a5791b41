//! Provisioning bench (issue #15): how long a fleet deployment takes to get an image running on
//! every provider of a devnet of real `agora` processes, and how much of it the origin uploads.
//!
//! For each size N it brings up `agora devnet up --nodes N` once, then for each image and
//! strategy: publishes a fresh copy of the image on node0 (a per-run nonce in a custom section
//! at the front of the module, so no target holds any of its blocks from an earlier run),
//! `agora deploy create CID --to "" --all --strategy S` (the empty selector selects every
//! provider), polls node0's `deploy status --json` and records, per target, the time from
//! `create` to the first poll that shows it running (and healthy); then `deploy delete` and a
//! wait until no node runs it, before the next run on the same devnet. One row per run: targets
//! running of those the deployment placed, p50 / p99 / max per target, the time until all ran,
//! node0's bitswap upload over the run (`bytes_sent` of `agora storage stats`) against
//! targets × module size, and the 1-min load average at the end.
//!
//! Images: `gateway` (the demo's lora-gateway guest, ~89 KiB) and `8mib` (the same guest with
//! a custom section of pseudo-random bytes bringing the module to exactly 8 MiB; the image
//! record accepts modules up to `agora_image::MAX_MODULE_BYTES`, 64 MiB, and blocks are chunked,
//! so nothing refuses it).
//!
//! `cargo test -p agora-tests --bench provision` (the bench binary against the debug `agora`),
//! `cargo bench -p agora-tests --bench provision` (release). Knobs: `AGORA_PROVISION_SIZES`
//! (default `20,50`; the issue asks for `50,100,200`), `AGORA_PROVISION_IMAGES` (default
//! `gateway,8mib`), `AGORA_PROVISION_STRATEGIES` (default `push,pull`),
//! `AGORA_PROVISION_TIMEOUT` (seconds one run may take until every target runs, default 300),
//! `AGORA_PROVISION_UP_TIMEOUT` (`devnet up --timeout`, default 600), `AGORA_PROVISION_SETTLE`
//! (seconds after `up` before the first run, so every provider's offer has been heard, default
//! 20).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agora_runtime::test_utils::lora_gateway_wasm;
use agora_tests::bench::{env_u64, load1, quantile};
use agora_tests::fleet::{node_ids, publish, running_of, status};
use agora_tests::{TestDevnet, agora, try_agora_json};

/// The large image's module size.
const BIG: usize = 8 << 20;
/// How often node0's `deploy status` is read while a run is under way.
const POLL: Duration = Duration::from_millis(250);

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The first `key` counter in a storage stats document (bitswap's `bytes_sent` /
/// `bytes_received`).
fn counter(v: &serde_json::Value, key: &str) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .or_else(|| m.values().find_map(|v| counter(v, key))),
        _ => None,
    }
}

/// Node `i`'s bitswap counter `key`.
fn node_counter(net: &TestDevnet, i: usize, key: &str) -> Option<u64> {
    try_agora_json(&["storage", "stats", "--data-dir", &net.node(i)])
        .as_ref()
        .and_then(|v| counter(v, key))
}

/// The sum of every node's bitswap bytes received but node0's (`None` if any is unreadable).
fn received_by_others(net: &TestDevnet) -> Option<u64> {
    (1..net.nodes().len())
        .map(|i| node_counter(net, i, "bytes_received"))
        .sum()
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn leb128_len(n: usize) -> usize {
    let mut v = Vec::new();
    leb128(n, &mut v);
    v.len()
}

/// `module` with a custom section named `agora-bench` inserted right after the 8-byte header,
/// holding `nonce` and then pseudo-random bytes (seeded by `nonce`) so that the module is at
/// least `total` bytes (exactly, unless `module` is already larger). In front, so that every
/// fixed-size chunk of the module differs from any earlier run's; pseudo-random, so that no two
/// chunks of the padding are the same block.
fn with_custom_section(module: &[u8], nonce: u64, total: usize) -> Vec<u8> {
    const NAME: &[u8] = b"agora-bench";
    let head = &module[..8];
    let rest = &module[8..];
    // Section = id (1) + size (LEB128) + name length (1) + name + payload.
    let fixed = 8 + rest.len() + 1 + 1 + NAME.len() + 8;
    let mut payload_len = total.saturating_sub(fixed);
    // The size field's own length: shrink the payload until everything adds up.
    while payload_len > 0
        && fixed + payload_len + leb128_len(1 + NAME.len() + 8 + payload_len) > total
    {
        payload_len -= 1;
    }
    let mut payload = Vec::with_capacity(8 + payload_len);
    payload.extend_from_slice(&nonce.to_le_bytes());
    let mut x = nonce | 1;
    while payload.len() < 8 + payload_len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.extend_from_slice(&x.to_le_bytes());
    }
    payload.truncate(8 + payload_len);
    let mut body = Vec::with_capacity(1 + NAME.len() + payload.len());
    body.push(NAME.len() as u8);
    body.extend_from_slice(NAME);
    body.extend_from_slice(&payload);
    let mut out = Vec::with_capacity(total.max(module.len() + 64));
    out.extend_from_slice(head);
    out.push(0);
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out.extend_from_slice(rest);
    out
}

/// One run's figures.
struct Run {
    /// Targets the deployment placed (as node0 lists them) when the run ended.
    placed: usize,
    /// Seconds from `create` to running, per target that ran.
    running: Vec<f64>,
    /// Seconds from `create` to healthy, per target that became healthy.
    healthy: Vec<f64>,
    /// Seconds from `create` until every expected target ran (`None`: it did not).
    all_running: Option<f64>,
    /// node0's bitswap upload over the run.
    sent: Option<u64>,
    /// What the other nodes received over bitswap in all (read after `sent`, so it may include
    /// a little more).
    received: Option<u64>,
    load: f64,
    /// Phases at the end, when the run did not complete.
    phases: BTreeMap<String, usize>,
    /// Whether the deployment was deleted and every replica stopped afterwards.
    cleaned: bool,
    /// node0's contracts of this image by status after the delete (`settled`, `cancelled`,
    /// `slashed`, … — how the deployment's contracts ended).
    ended: BTreeMap<String, usize>,
}

/// node0's contracts (as customer) of `image`, counted by status.
fn contract_outcomes(net: &TestDevnet, image: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let list = try_agora_json(&["contract", "list", "--data-dir", &net.node(0)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    for c in list.iter().filter(|c| c["image"] == image) {
        let status = c["status"].as_str().unwrap_or("?").to_string();
        *out.entry(status).or_insert(0) += 1;
    }
    out
}

fn phase_runs(phase: &str) -> bool {
    matches!(phase, "running" | "healthy" | "unhealthy")
}

/// Deploys `image` to every provider with `strategy`, waits until `expect` targets run (or
/// `timeout`), then deletes the deployment and waits until no node runs it.
fn run(
    net: &TestDevnet,
    image: &str,
    strategy: &str,
    name: &str,
    expect: usize,
    timeout: Duration,
) -> Result<Run, String> {
    let n0 = net.node(0);
    let received_before = received_by_others(net);
    let sent_before = node_counter(net, 0, "bytes_sent");
    let t0 = Instant::now();
    let out = agora(&[
        "deploy",
        "create",
        image,
        "--to",
        "",
        "--all",
        "--strategy",
        strategy,
        "--name",
        name,
        "--cpu",
        "250m",
        "--memory",
        "64MiB",
        "--data-dir",
        &n0,
        "--json",
    ]);
    if !out.status.success() {
        return Err(format!(
            "deploy create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let created: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("deploy create: {e}"))?;
    let id = created["id"]
        .as_str()
        .ok_or("deploy create printed no id")?
        .to_string();

    let mut running: BTreeMap<String, f64> = BTreeMap::new();
    let mut healthy: BTreeMap<String, f64> = BTreeMap::new();
    let mut all_running = None;
    let mut last = serde_json::Value::Null;
    let deadline = t0 + timeout;
    loop {
        let st = status(net, &id);
        let at = t0.elapsed().as_secs_f64();
        if let Some(targets) = st["targets"].as_array() {
            for t in targets {
                let (Some(node), Some(phase)) = (t["node"].as_str(), t["phase"].as_str()) else {
                    continue;
                };
                if phase_runs(phase) {
                    running.entry(node.to_string()).or_insert(at);
                }
                if phase == "healthy" {
                    healthy.entry(node.to_string()).or_insert(at);
                }
            }
            last = st;
        }
        if all_running.is_none() && running.len() >= expect {
            all_running = running.values().copied().reduce(f64::max);
        }
        // Healthy is cheap to wait for once all run: give it a few more polls.
        if all_running.is_some_and(|a| healthy.len() >= expect || at > a + 30.0)
            || Instant::now() >= deadline
        {
            break;
        }
        std::thread::sleep(POLL);
    }
    let sent_after = node_counter(net, 0, "bytes_sent");
    let load = load1();
    let received_after = received_by_others(net);
    let placed = last["targets"].as_array().map_or(0, Vec::len);
    let phases = last["summary"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) as usize))
                .collect()
        })
        .unwrap_or_default();

    // Delete, and wait until no node runs the image (bounded; reported, not fatal).
    let _ = agora(&["deploy", "delete", &id, "--data-dir", &n0, "--json"]);
    let stop_by = Instant::now() + Duration::from_secs(180);
    let nodes = net.nodes().len();
    let mut cleaned = false;
    while Instant::now() < stop_by {
        let st = status(net, &id);
        let left = st["targets"].as_array().map_or(0, Vec::len);
        if left == 0 && (0..nodes).all(|i| running_of(net, i, &[image]).is_empty()) {
            cleaned = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(Run {
        ended: contract_outcomes(net, image),
        placed,
        running: running.into_values().collect(),
        healthy: healthy.into_values().collect(),
        all_running,
        sent: sent_before
            .zip(sent_after)
            .map(|(b, a)| a.saturating_sub(b)),
        received: received_before
            .zip(received_after)
            .map(|(b, a)| a.saturating_sub(b)),
        load,
        phases,
        cleaned,
    })
}

fn main() {
    let sizes: Vec<usize> = env_list("AGORA_PROVISION_SIZES", "20,50")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let images = env_list("AGORA_PROVISION_IMAGES", "gateway,8mib");
    let strategies = env_list("AGORA_PROVISION_STRATEGIES", "push,pull");
    let timeout = Duration::from_secs(env_u64("AGORA_PROVISION_TIMEOUT", 300));
    let up_timeout = env_u64("AGORA_PROVISION_UP_TIMEOUT", 600);
    let settle = Duration::from_secs(env_u64("AGORA_PROVISION_SETTLE", 20));
    let gateway = match lora_gateway_wasm() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("provision bench skipped: no lora-gateway module ({e})");
            return;
        }
    };
    println!(
        "provisioning to every provider of an N-process devnet ({}); seconds from `deploy \
         create` to each target running",
        agora_tests::agora_bin().display()
    );
    println!(
        "{:>4} {:>7} {:>5} | {:>9} | {:>7} {:>7} {:>7} {:>9} | {:>8} | {:>11} {:>6} {:>6} | {:>5} note",
        "N",
        "image",
        "strat",
        "running",
        "p50 s",
        "p99 s",
        "max s",
        "healthy50",
        "all s",
        "origin B",
        "% N×sz",
        "recv %",
        "load"
    );
    let mut nonce = std::process::id() as u64 * 1_000_003 + 1;
    for n in sizes {
        if n < 7 {
            // A contract needs arbitrators besides its two parties (`cannot build contract:
            // only K arbitrators besides the two parties` at 5 nodes).
            println!("{n:>4} skipped: a devnet of fewer than 7 nodes cannot sign contracts");
            continue;
        }
        let net = TestDevnet::up(n, up_timeout, &[]);
        let providers = node_ids(&net).len();
        std::thread::sleep(settle);
        for image_kind in &images {
            for strategy in &strategies {
                nonce += 1;
                let (module, label) = match image_kind.as_str() {
                    "gateway" => (with_custom_section(&gateway, nonce, 0), "gateway"),
                    "8mib" => (with_custom_section(&gateway, nonce, BIG), "8mib"),
                    other => {
                        println!("unknown image {other:?} (gateway, 8mib)");
                        continue;
                    }
                };
                let name = format!("prov-{label}-{strategy}-{nonce}");
                let cid = publish(&net, &name, "0.1.0", &module);
                // Every node but the deployer is a provider it can place on; the deployer
                // itself is counted in if it places there (see `placed`).
                let expect = providers - 1;
                match run(&net, &cid, strategy, &name, expect, timeout) {
                    Ok(r) => {
                        let targets = r.placed.max(r.running.len());
                        let copies = targets.max(1) as f64 * module.len() as f64;
                        let pct = r.sent.map(|s| 100.0 * s as f64 / copies);
                        let recv = r.received.map(|s| 100.0 * s as f64 / copies);
                        let mut note = String::new();
                        if r.all_running.is_none() {
                            note.push_str(&format!(
                                "TIMED OUT after {} s: {} of {} running, phases {:?}; ",
                                timeout.as_secs(),
                                r.running.len(),
                                expect,
                                r.phases
                            ));
                        }
                        if !r.cleaned {
                            note.push_str("delete did not stop every replica within 180 s; ");
                        }
                        note.push_str(&format!("contracts after delete {:?}", r.ended));
                        println!(
                            "{:>4} {:>7} {:>5} | {:>4}/{:<4} | {:>7.1} {:>7.1} {:>7.1} {:>9.1} | {:>8} | {:>11} {:>6} {:>6} | {:>5.1} {}",
                            n,
                            label,
                            strategy,
                            r.running.len(),
                            targets,
                            quantile(&r.running, 0.5),
                            quantile(&r.running, 0.99),
                            quantile(&r.running, 1.0),
                            quantile(&r.healthy, 0.5),
                            r.all_running
                                .map_or_else(|| "—".to_string(), |a| format!("{a:.1}")),
                            r.sent.map_or_else(|| "?".to_string(), |s| s.to_string()),
                            pct.map_or_else(|| "?".to_string(), |p| format!("{p:.0}%")),
                            recv.map_or_else(|| "?".to_string(), |p| format!("{p:.0}%")),
                            r.load,
                            note
                        );
                    }
                    Err(e) => println!("{n:>4} {label:>7} {strategy:>5} | failed: {e}"),
                }
            }
        }
        drop(net);
    }
    println!(
        "running: targets that ran / targets placed; p50/p99/max: seconds from `deploy create` \
         to a target's first poll (every {} ms) showing it running; healthy50: to healthy; \
         all: until every provider ran it; origin B: node0's bitswap upload over the run; \
         % N×sz: of targets × module size; recv %: every other node's bitswap download over \
         the run, of targets × module size (≈ 100 %: each target fetched one copy over bitswap); \
         load: 1-min load average at the run's end",
        POLL.as_millis()
    );
}
