//! Variants bench (issue #16, "variants and diversity", at the scale on real `agora`
//! processes): a devnet of `1 + T + J` processes, node0 the deployer. The `T` first providers
//! are labelled `site=factory` and `B` of them (the last `B`) keep BLE in their advertised
//! interfaces, the others have it taken out; `J` more providers are labelled too (`JB` of them
//! with BLE) but kept down. node0 deploys two variants of one job, `a` anywhere and `b` only where
//! `iface=ble`, to every `site=factory` provider. Then the `J` providers join.
//!
//! Checked on every poll (a violation panics): no node runs two variants of the deployment, `b`
//! runs only on a BLE provider, nothing runs outside the targets. Measured: seconds from `deploy
//! create` until every target runs a variant with the counts as balanced as the constraints
//! allow (`b` = min(BLE targets, half the targets), ±1 where the targets are odd) and `deploy
//! status` shows each healthy with the variant it runs; then the same from the joiners' start,
//! and how many of the first targets changed variant (the planner moves the fewest).
//!
//! `cargo bench -p agora-tests --bench variants` (release `agora`); `cargo test -p agora-tests
//! --bench variants` runs it against the debug build. Knobs: `AGORA_VARIANTS_TARGETS` (default
//! 30), `AGORA_VARIANTS_BLE` (10), `AGORA_VARIANTS_JOIN` (6), `AGORA_VARIANTS_JOIN_BLE` (3),
//! `AGORA_VARIANTS_TIMEOUT` (seconds per phase, 600), `AGORA_VARIANTS_UP_TIMEOUT` (`devnet up
//! --timeout`, 600).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agora_runtime::test_utils::lora_gateway_wasm;
use agora_tests::bench::{env_u64, load1};
use agora_tests::fleet::{
    create_ble_variants, label, node_ids, publish, reconfigure, running_of, status, without_ble,
};
use agora_tests::{TestDevnet, agora};

/// How often the fleet is looked at.
const POLL: Duration = Duration::from_millis(500);

/// The range of `b` counts as balanced as the constraints allow: `b` needs BLE, `a` runs
/// anywhere, so `b` is half the targets (either side of it when they are odd) capped by the BLE
/// targets.
fn b_range(targets: usize, ble: usize) -> (usize, usize) {
    (ble.min(targets / 2), ble.min(targets.div_ceil(2)))
}

/// One phase's figures.
struct Phase {
    name: &'static str,
    targets: usize,
    ble: usize,
    a: usize,
    b: usize,
    /// Seconds until the counts were right with every target running.
    balanced: Option<f64>,
    /// Seconds until the deployer showed every target healthy with its variant.
    shown: Option<f64>,
    /// First targets that changed variant in this phase.
    moved: usize,
    load: f64,
}

/// What each node runs of the deployment's images: `Some(0)` a, `Some(1)` b, `None` nothing.
/// Panics when a rule is broken.
fn look(
    net: &TestDevnet,
    images: &[&str; 2],
    targets: &[usize],
    ble: &[usize],
) -> BTreeMap<usize, Option<usize>> {
    let mut out = BTreeMap::new();
    for i in 0..net.nodes().len() {
        let runs = running_of(net, i, images);
        assert!(runs.len() <= 1, "node{i} runs two variants: {runs:?}");
        let v = runs
            .first()
            .map(|img| usize::from(img.as_str() == images[1]));
        if v.is_some() {
            assert!(
                targets.contains(&i),
                "node{i} is not a target but runs {runs:?}"
            );
        }
        if v == Some(1) {
            assert!(ble.contains(&i), "node{i} runs b without BLE");
        }
        out.insert(i, v);
    }
    out
}

/// Polls until every target of `targets` runs a variant with `b` in range and the deployer
/// shows each healthy with it, or `timeout`.
#[allow(clippy::too_many_arguments)]
fn phase(
    net: &TestDevnet,
    name: &'static str,
    id: &str,
    images: &[&str; 2],
    ids: &[String],
    targets: &[usize],
    ble: &[usize],
    before: &BTreeMap<usize, Option<usize>>,
    timeout: Duration,
) -> (Phase, BTreeMap<usize, Option<usize>>) {
    let t0 = Instant::now();
    let ble_targets = targets.iter().filter(|i| ble.contains(i)).count();
    let (lo, hi) = b_range(targets.len(), ble_targets);
    let (mut balanced, mut shown) = (None, None);
    let mut runs;
    loop {
        runs = look(net, images, targets, ble);
        let at = t0.elapsed().as_secs_f64();
        let b = runs.values().filter(|v| **v == Some(1)).count();
        let all = targets.iter().all(|i| runs[i].is_some());
        if balanced.is_none() && all && (lo..=hi).contains(&b) {
            balanced = Some(at);
        }
        if balanced.is_some() && shown.is_none() {
            let st = status(net, id);
            let ok = targets.iter().all(|i| {
                st["targets"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|t| t["node"] == ids[*i].as_str()))
                    .is_some_and(|t| {
                        let want = if runs[i] == Some(1) { "b" } else { "a" };
                        t["phase"] == "healthy" && t["variant"] == want
                    })
            });
            if ok {
                shown = Some(at);
            }
        }
        if shown.is_some() || t0.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(POLL);
    }
    let moved = before
        .iter()
        .filter(|(i, v)| v.is_some() && runs.get(i).is_some_and(|now| now.is_some() && now != *v))
        .count();
    let p = Phase {
        name,
        targets: targets.len(),
        ble: ble_targets,
        a: runs.values().filter(|v| **v == Some(0)).count(),
        b: runs.values().filter(|v| **v == Some(1)).count(),
        balanced,
        shown,
        moved,
        load: load1(),
    };
    (p, runs)
}

fn secs(v: Option<f64>) -> String {
    v.map_or("—".into(), |s| format!("{s:.1}"))
}

fn main() {
    let n_targets = env_u64("AGORA_VARIANTS_TARGETS", 30) as usize;
    let n_ble = (env_u64("AGORA_VARIANTS_BLE", 10) as usize).min(n_targets);
    let n_join = env_u64("AGORA_VARIANTS_JOIN", 6) as usize;
    let n_join_ble = (env_u64("AGORA_VARIANTS_JOIN_BLE", 3) as usize).min(n_join);
    let timeout = Duration::from_secs(env_u64("AGORA_VARIANTS_TIMEOUT", 600));
    let up_timeout = env_u64("AGORA_VARIANTS_UP_TIMEOUT", 600);
    let wasm = match lora_gateway_wasm() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("variants bench SKIPPED: no lora-gateway module ({e})");
            return;
        }
    };
    let nodes = 1 + n_targets + n_join;
    println!(
        "variants a (anywhere) and b (iface=ble) deployed to {n_targets} providers ({n_ble} with \
         BLE), then {n_join} join ({n_join_ble} with BLE); {nodes} processes ({})",
        agora_tests::agora_bin().display()
    );
    let t_up = Instant::now();
    let net = TestDevnet::up(nodes, up_timeout, &[]);
    let first: Vec<usize> = (1..=n_targets).collect();
    let joiners: Vec<usize> = (n_targets + 1..nodes).collect();
    let ble: Vec<usize> = first[n_targets - n_ble..]
        .iter()
        .chain(&joiners[n_join - n_join_ble..])
        .copied()
        .collect();
    // One node at a time, so the committee (nodes 0-6) keeps its quorum; the joiners stay down.
    for i in first.iter().chain(&joiners) {
        reconfigure(&net, *i, !joiners.contains(i), |net, i| {
            label(net, i);
            if !ble.contains(&i) {
                without_ble(net, i);
            }
        });
    }
    let up_secs = t_up.elapsed().as_secs_f64();
    let ids = node_ids(&net);
    let a = publish(&net, "variant-a", "0.1.0", &wasm);
    let b = publish(&net, "variant-b", "0.1.0", &wasm);
    let images = [a.as_str(), b.as_str()];
    let created = create_ble_variants(&net, &a, &b, "diverse");
    let id = created["id"].as_str().unwrap().to_string();

    let none = BTreeMap::new();
    let (p1, runs) = phase(
        &net, "deploy", &id, &images, &ids, &first, &ble, &none, timeout,
    );
    let mut rows = vec![p1];
    if rows[0].shown.is_some() {
        let dir = net.dir_s();
        let t_join = Instant::now();
        for i in &joiners {
            let out = agora(&["devnet", "start", &format!("node{i}"), "--dir", &dir]);
            assert!(out.status.success(), "{out:?}");
        }
        let all: Vec<usize> = first.iter().chain(&joiners).copied().collect();
        // Starting the joiners takes a while: their times count from the first start.
        let starting = t_join.elapsed();
        let (mut p2, _) = phase(
            &net,
            "join",
            &id,
            &images,
            &ids,
            &all,
            &ble,
            &runs,
            timeout.saturating_sub(starting),
        );
        p2.balanced = p2.balanced.map(|s| s + starting.as_secs_f64());
        p2.shown = p2.shown.map(|s| s + starting.as_secs_f64());
        rows.push(p2);
    }

    println!("devnet up and {n_targets} + {n_join} providers labelled in {up_secs:.0} s");
    println!(
        "{:>7} | {:>7} {:>4} | {:>4} {:>4} {:>9} | {:>5} | {:>8} {:>8} | {:>5}",
        "phase", "targets", "BLE", "a", "b", "b wanted", "moved", "balanced", "shown", "load"
    );
    for r in &rows {
        let (lo, hi) = b_range(r.targets, r.ble);
        let want = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        };
        println!(
            "{:>7} | {:>7} {:>4} | {:>4} {:>4} {:>9} | {:>5} | {:>8} {:>8} | {:>5.1}",
            r.name,
            r.targets,
            r.ble,
            r.a,
            r.b,
            want,
            r.moved,
            secs(r.balanced),
            secs(r.shown),
            r.load
        );
    }
    println!(
        "balanced: every target runs a variant, b within the range; shown: the deployer shows \
         every target healthy with it (s from `deploy create`, or from the joiners' start)"
    );
    // A panic brings the nodes down and keeps the devnet directory with their logs.
    assert!(
        rows.len() == 2 && rows.iter().all(|r| r.shown.is_some()),
        "variants bench: a phase did not complete within its timeout"
    );
}
