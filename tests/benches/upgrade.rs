//! Upgrade bench (issue #15, "upgrade of 50 targets with readings flowing"): how long `agora
//! deploy upgrade` takes to move every provider of a devnet of real `agora` processes to a new
//! image, start-first in waves of K, while each target's sensor keeps sending, and whether any
//! reading was lost or counted twice across the switch.
//!
//! For each size N it brings up `agora devnet up --nodes N`, publishes two versions of a counter
//! guest on node0 (each reading adds one to its key-value `count`, logged as `count=N`; the
//! same guest as `fleet_upgrade.rs`) whose manifest names one sensor device per node, deploys
//! v1 with `deploy create --to "" --all` and waits until every target is healthy. Node `i`'s
//! device (`101 + i`) is sent to node `i`'s radio only, one unsigned frame every 200 ms (not
//! the test's 50 ms, so that N devices do not load the 2 cores by themselves). Once every
//! target counts, the sensor pauses and each v1 count is checked against what was sent (the
//! baseline: a reading lost before the upgrade is not the upgrade's), then resumes. Then
//! `deploy upgrade ID --image v2 --max-unavailable K` runs as a child process, timed, while
//! node0's `deploy status --json` is polled; once each target runs one image again, the sensor
//! pauses and its count (v2's, which carries v1's over with the key-value state; v1's after a
//! rollback) is read against every reading sent since the start: fewer is lost, more is
//! counted twice. A loss and a duplicate on the same target cancel out: the count cannot tell
//! them apart.
//!
//! Per-target switch time, from the polls of `deploy status --json` (its `upgrade.targets[]`
//! steps carry no times): from the first poll showing the target `starting` (or, when one poll
//! saw it `waiting` and the next `upgraded`, the last poll showing `waiting`) to the first poll
//! showing it `upgraded`, i.e. from the deployer asking for its new instance until that one was
//! healthy and the old one released. Resolution: one poll (250 ms plus a `deploy status` call).
//! "moved": the targets whose own timeline has the `state-moved` entry (the devices and the
//! key-value state moved to the new instance when the old contract ended), and the time from
//! `deploy upgrade` to the last of them (timeline times are the node's wall clock, the same
//! machine's).
//!
//! `cargo test -p agora-tests --bench upgrade` (the bench binary against the debug `agora`),
//! `cargo bench -p agora-tests --bench upgrade` (release). Knobs: `AGORA_UPGRADE_SIZES` (default
//! `20`; the issue asks for 50), `AGORA_UPGRADE_K` (`--max-unavailable`, default 5),
//! `AGORA_UPGRADE_TIMEOUT` (seconds each phase may take: v1 healthy everywhere, the upgrade,
//! v2 counting everywhere; default 600), `AGORA_UPGRADE_UP_TIMEOUT` (`devnet up --timeout`,
//! default 600), `AGORA_UPGRADE_SETTLE` (seconds after `up` before `deploy create`, so every
//! provider's offer has been heard, default 20).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agora_runtime::test_utils::{READINGS_COUNTER, last_count};
use agora_tests::bench::{UpgradeSteps, env_u64, load1, quantile};
use agora_tests::devices::DevicesProcess;
use agora_tests::fleet::{node_ids, publish_with_devices, running_of, status};
use agora_tests::sensor::Sensor;
use agora_tests::{TestDevnet, agora, agora_bin, try_agora_json};

/// How often node0's `deploy status` is read while the upgrade runs.
const POLL: Duration = Duration::from_millis(250);
/// How often each device sends a reading.
const SEND_EVERY: Duration = Duration::from_millis(200);
/// Node `i`'s device is `FIRST_DEVICE + i`.
const FIRST_DEVICE: u32 = 101;
/// How long, over all targets, a paused sensor's last readings may take to show in the counts.
const COUNT_SETTLE: Duration = Duration::from_secs(30);
/// The deployment's name (and the service's).
const NAME: &str = "upgrade-bench";

/// A counter guest whose health export returns `health` (0 = healthy); `tag` makes each
/// version's module different (`fleet_upgrade.rs`'s guest).
fn guest(tag: u32, health: i32) -> Vec<u8> {
    let body = READINGS_COUNTER.trim_end().strip_suffix(')').unwrap();
    let wat = format!(
        "{body}\n  (global $tag i32 (i32.const {tag}))\n  \
         (func (export \"agora_health\") (result i32) (i32.const {health})))"
    );
    wat::parse_str(wat).unwrap()
}

/// The count logged by node `i`'s active instance of `image`, if it runs and counted.
fn count_of(net: &TestDevnet, i: usize, image: &str) -> Option<u64> {
    let list = try_agora_json(&["service", "list", "--data-dir", &net.node(i)])?;
    let id = list
        .as_array()?
        .iter()
        .find(|s| s["image"] == image && s["state"] == "Active")?["id"]
        .as_str()?
        .to_string();
    let logs = try_agora_json(&["service", "logs", &id, "--data-dir", &net.node(i)])?;
    last_count(logs["logs"].as_str()?)
}

/// The count of the one image of `images` node `i` runs (`None` while it runs none or several
/// of them, or has not counted yet): after an upgrade, v2 once v1 stopped, or v1 after a
/// rollback.
fn sole_count(net: &TestDevnet, i: usize, images: &[&str]) -> Option<u64> {
    match running_of(net, i, images).as_slice() {
        [image] => count_of(net, i, image),
        _ => None,
    }
}

/// Polls `f` every [`POLL`] until it holds (true) or `timeout` passes (false).
fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Readings a target lost and counted twice: `(lost, duplicated)`, or `None` when its count
/// could not be read. Waits (until `deadline`) for the paused sensor's last readings to be
/// counted.
fn tally(
    net: &TestDevnet,
    i: usize,
    images: &[&str],
    sent: u32,
    deadline: Instant,
) -> Option<(u64, u64)> {
    let sent = u64::from(sent);
    let mut count = None;
    poll_until(deadline.saturating_duration_since(Instant::now()), || {
        count = sole_count(net, i, images);
        count.is_some_and(|c| c >= sent)
    });
    count.map(|c| (sent.saturating_sub(c), c.saturating_sub(sent)))
}

/// Lost, duplicated and unreadable over `targets`, allowing [`COUNT_SETTLE`] in all for the
/// last readings to be counted.
fn tally_all(net: &TestDevnet, targets: &[usize], images: &[&str], sent: u32) -> (u64, u64, usize) {
    let deadline = Instant::now() + COUNT_SETTLE;
    targets
        .iter()
        .map(|i| tally(net, *i, images, sent, deadline))
        .fold((0, 0, 0), |(l, d, u), t| match t {
            Some((lost, dup)) => (l + lost, d + dup, u),
            None => (l, d, u + 1),
        })
}

/// One run's figures.
#[derive(Default)]
struct Run {
    /// Targets that ran v1 healthy, each with its own device.
    targets: usize,
    /// Seconds `deploy upgrade` ran until it exited 0 (`None`: it failed or timed out).
    upgrade_s: Option<f64>,
    /// The upgrade's state in node0's status at the end (`succeeded`, `rolled-back`, …).
    state: String,
    /// Per target, seconds from `starting` to `upgraded` (see the module doc).
    switch: Vec<f64>,
    /// Per target whose timeline shows `state-moved`, seconds from `deploy upgrade` to it.
    moved: Vec<f64>,
    /// Targets whose timeline shows `state-not-moved`.
    not_moved: usize,
    /// Readings sent per device over the whole run.
    sent: u32,
    lost: u64,
    dup: u64,
    /// Targets whose final count could not be read.
    unread: usize,
    load: f64,
    notes: Vec<String>,
}

/// `deploy create V1 --to "" --all` on node0; returns the deployment id.
fn create_all(net: &TestDevnet, image: &str) -> Result<String, String> {
    let out = agora(&[
        "deploy",
        "create",
        image,
        "--to",
        "",
        "--all",
        "--name",
        NAME,
        "--cpu",
        "250m",
        "--memory",
        "64MiB",
        "--data-dir",
        &net.node(0),
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
    created["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "deploy create printed no id".into())
}

/// Waits until at least `expect` targets are placed and every one is healthy; returns their
/// node indexes. After `timeout`, fewer will do if every one placed is healthy (a note says
/// so: on a loaded machine the deployer may not hear every provider); a target in any other
/// phase would fail the upgrade's health check, so then the run stops.
fn wait_healthy(
    net: &TestDevnet,
    id: &str,
    expect: usize,
    timeout: Duration,
    notes: &mut Vec<String>,
) -> Result<Vec<usize>, String> {
    let ids = node_ids(net);
    let mut targets = Vec::new();
    let all_healthy = |t: &[serde_json::Value]| t.iter().all(|t| t["phase"] == "healthy");
    let mut summary = serde_json::Value::Null;
    let ok = poll_until(timeout, || {
        let st = status(net, id);
        targets = st["targets"].as_array().cloned().unwrap_or_default();
        summary = st["summary"].clone();
        targets.len() >= expect && all_healthy(&targets)
    });
    if !ok && (targets.is_empty() || !all_healthy(&targets)) {
        return Err(format!(
            "v1 not healthy on {expect} targets within {} s: phases {summary}",
            timeout.as_secs()
        ));
    }
    if !ok {
        notes.push(format!(
            "only {} of {expect} targets placed in {} s",
            targets.len(),
            timeout.as_secs()
        ));
    }
    Ok(targets
        .iter()
        .filter_map(|t| ids.iter().position(|n| t["node"] == n.as_str()))
        .collect())
}

/// Each target's device and its radio's address.
fn edges(net: &TestDevnet, targets: &[usize]) -> Result<Vec<(u32, String)>, String> {
    targets
        .iter()
        .map(|&i| {
            let radio = try_agora_json(&["radio", "--data-dir", &net.node(i)]);
            let addr = radio.as_ref().and_then(|r| r["addr"].as_str());
            match addr {
                Some(a) => Ok((FIRST_DEVICE + i as u32, a.to_string())),
                None => Err(format!("node{i} shows no radio address: {radio:?}")),
            }
        })
        .collect()
}

/// Runs `deploy upgrade ID --image V2 --max-unavailable K` (its output in the devnet's temp
/// directory) and polls node0's status until it exits or `timeout` passes (then it is killed).
/// Returns the seconds it took when it exited 0, and what the polls saw.
fn upgrade(
    net: &TestDevnet,
    id: &str,
    v2: &str,
    k: u64,
    timeout: Duration,
    notes: &mut Vec<String>,
) -> (Option<f64>, UpgradeSteps) {
    let out_path = net.tmp().join("upgrade.out");
    let (stdout, stderr) = match std::fs::File::create(&out_path).and_then(|f| {
        let g = f.try_clone()?;
        Ok((f, g))
    }) {
        Ok(files) => files,
        Err(e) => {
            notes.push(format!("cannot create {}: {e}", out_path.display()));
            return (None, UpgradeSteps::default());
        }
    };
    let (k, wait, n0) = (
        k.to_string(),
        format!("{}s", timeout.as_secs()),
        net.node(0),
    );
    let t0 = Instant::now();
    let spawned = Command::new(agora_bin())
        .args(["deploy", "upgrade", id, "--image", v2])
        .args(["--max-unavailable", k.as_str(), "--health-timeout", "5m"])
        .args(["--wait", wait.as_str(), "--data-dir", n0.as_str()])
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn();
    let mut child = match spawned {
        Ok(c) => DevicesProcess(c),
        Err(e) => {
            notes.push(format!("cannot run deploy upgrade: {e}"));
            return (None, UpgradeSteps::default());
        }
    };
    let mut steps = UpgradeSteps::default();
    let deadline = t0 + timeout + Duration::from_secs(10);
    let exit = loop {
        steps.observe(&status(net, id), t0.elapsed().as_secs_f64());
        match child.0.try_wait() {
            Ok(Some(s)) => break Some((s, t0.elapsed().as_secs_f64())),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => break None,
        }
    };
    // The steps the command saw last, read once more.
    steps.observe(&status(net, id), t0.elapsed().as_secs_f64());
    drop(child);
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    match exit {
        Some((s, secs)) if s.success() => (Some(secs), steps),
        Some((s, _)) => {
            let last = out.lines().last().unwrap_or("").to_string();
            notes.push(format!("deploy upgrade exited {s}: {last}"));
            (None, steps)
        }
        None => {
            notes.push(format!(
                "deploy upgrade still running after {} s: killed",
                timeout.as_secs()
            ));
            (None, steps)
        }
    }
}

/// Node `i`'s timeline entries of `phase`, their times (ms).
fn timeline_at(net: &TestDevnet, i: usize, phase: &str) -> Vec<u64> {
    try_agora_json(&["timeline", "--data-dir", &net.node(i)])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|e| e["phase"] == phase)
        .filter_map(|e| e["at"].as_u64())
        .collect()
}

/// The whole run on one devnet: deploy v1, start the sensors, check the baseline, upgrade to
/// v2, check every count.
fn run(net: &TestDevnet, k: u64, timeout: Duration) -> Result<Run, String> {
    let n = net.nodes().len();
    let devices: Vec<u32> = (0..n).map(|i| FIRST_DEVICE + i as u32).collect();
    let v1 = publish_with_devices(net, NAME, "1.0.0", &guest(1, 0), &devices);
    let v2 = publish_with_devices(net, NAME, "2.0.0", &guest(2, 0), &devices);
    let id = create_all(net, &v1)?;
    let mut r = Run::default();
    // Every node but the deployer is a provider it can place on.
    let targets = wait_healthy(net, &id, n - 1, timeout, &mut r.notes)?;
    r.targets = targets.len();
    let sensor = Sensor::start(edges(net, &targets)?, SEND_EVERY);
    if !poll_until(timeout, || {
        targets.iter().all(|i| count_of(net, *i, &v1).is_some())
    }) {
        r.notes
            .push("not every v1 counted before the upgrade".into());
    }
    // The baseline: what v1 lost or doubled before the upgrade is not the upgrade's.
    let before = sensor.set(false);
    let (lost, dup, unread) = tally_all(net, &targets, &[v1.as_str()], before);
    if lost + dup > 0 || unread > 0 {
        r.notes.push(format!(
            "before the upgrade: {lost} lost, {dup} twice, {unread} unread of {before} each"
        ));
    }
    sensor.set(true);

    let started_ms = unix_ms();
    let (upgrade_s, steps) = upgrade(net, &id, &v2, k, timeout, &mut r.notes);
    r.upgrade_s = upgrade_s;
    r.switch = steps.switch_times();
    r.state = status(net, &id)["upgrade"]["state"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    // Each target ends on one image: v2 once v1's contract ended (or v1 after a rollback).
    // The new instance logs its count only when a reading reaches it.
    let images = [v1.as_str(), v2.as_str()];
    if !poll_until(timeout, || {
        targets
            .iter()
            .all(|&i| sole_count(net, i, &images).is_some())
    }) {
        r.notes.push("not every target counts on one image".into());
    }
    r.sent = sensor.set(false);
    (r.lost, r.dup, r.unread) = tally_all(net, &targets, &images, r.sent);
    r.load = load1();
    drop(sensor);
    for &i in &targets {
        let moved = timeline_at(net, i, "state-moved");
        if let Some(at) = moved.iter().max() {
            r.moved.push(at.saturating_sub(started_ms) as f64 / 1000.0);
        }
        if !timeline_at(net, i, "state-not-moved").is_empty() {
            r.not_moved += 1;
        }
    }
    Ok(r)
}

fn print_row(n: usize, k: u64, r: &Run) {
    let opt = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |s| format!("{s:.1}"));
    let mut notes = r.notes.clone();
    if r.not_moved > 0 {
        notes.push(format!("{} targets state-not-moved", r.not_moved));
    }
    if r.unread > 0 {
        notes.push(format!("{} counts unread at the end", r.unread));
    }
    let note = notes.join("; ");
    println!(
        "{:>4} {:>3} {:>7} | {:>9} {:>12} | {:>6.1} {:>6.1} | {:>3}/{:<3} {:>8} | {:>8} {:>5} {:>5} | {:>5.1} {}",
        n,
        k,
        r.targets,
        opt(r.upgrade_s),
        r.state,
        quantile(&r.switch, 0.5),
        quantile(&r.switch, 0.99),
        r.moved.len(),
        r.targets,
        opt(r.moved.iter().copied().reduce(f64::max)),
        u64::from(r.sent) * r.targets as u64,
        r.lost,
        r.dup,
        r.load,
        note
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::var("AGORA_UPGRADE_SIZES")
        .unwrap_or_else(|_| "20".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let k = env_u64("AGORA_UPGRADE_K", 5).max(1);
    let timeout = Duration::from_secs(env_u64("AGORA_UPGRADE_TIMEOUT", 600));
    let up_timeout = env_u64("AGORA_UPGRADE_UP_TIMEOUT", 600);
    let settle = Duration::from_secs(env_u64("AGORA_UPGRADE_SETTLE", 20));
    println!(
        "start-first upgrade of every provider of an N-process devnet with readings flowing \
         ({}); one device per target, a reading every {} ms",
        agora_bin().display(),
        SEND_EVERY.as_millis()
    );
    println!(
        "{:>4} {:>3} {:>7} | {:>9} {:>12} | {:>6} {:>6} | {:>7} {:>8} | {:>8} {:>5} {:>5} | {:>5} note",
        "N",
        "K",
        "targets",
        "upgrade s",
        "state",
        "sw p50",
        "sw p99",
        "moved",
        "last s",
        "sent",
        "lost",
        "twice",
        "load"
    );
    for n in sizes {
        if n < 7 {
            // A contract needs arbitrators besides its two parties.
            println!("{n:>4} skipped: a devnet of fewer than 7 nodes cannot sign contracts");
            continue;
        }
        let net = TestDevnet::up(n, up_timeout, &[]);
        std::thread::sleep(settle);
        match run(&net, k, timeout) {
            Ok(r) => print_row(n, k, &r),
            Err(e) => println!("{n:>4} {k:>3} | failed: {e}"),
        }
        drop(net);
    }
    println!(
        "targets: providers that ran v1 healthy, one device each; upgrade s: `deploy upgrade` \
         until it exited 0 (it polls every 1 s); state: the upgrade's state at the end; sw \
         p50/p99: per target, seconds from the first status poll (every {} ms) showing it \
         `starting` (else its last `waiting`) to the first showing it `upgraded`; moved: targets \
         whose timeline shows `state-moved` (devices and key-value state moved to v2); last s: \
         seconds from `deploy upgrade` to the last of those; sent: readings sent to all targets; \
         lost / twice: over all targets, readings missing from / counted past each final count \
         (v2's carries v1's over); load: 1-min load average at the end",
        POLL.as_millis()
    );
}
