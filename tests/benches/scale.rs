//! Scale bench (issue #15): what an idle `agora node run` costs as the devnet grows, on real
//! processes. For each size it runs `agora devnet up --nodes N`, times it (every node connected
//! to its dial target and ready), waits past the 30 s grace after which spare connections are
//! trimmed, then reads every node's CPU time from `/proc/PID/stat` at the start and end of an
//! idle window and its RSS from `/proc/PID/status`, and prints one row per size.
//!
//! Per-process CPU seconds and RSS are fair on a shared machine; wall-clock times are not, so
//! each row carries the load average (1 min) when `up` returned and at the end of the window.
//!
//! `cargo bench -p agora-tests --bench scale` (release binary), or against the debug binary:
//! `cargo test -p agora-tests --bench scale`. Knobs: `AGORA_SCALE_SIZES` (default
//! `20,50,100,200`), `AGORA_SCALE_ARBITRATORS` (`--arbitrators K` for every size; `legacy` =
//! the committee `devnet up` chose before #15, the largest 3f+1 prefix of the nodes; default:
//! `devnet up`'s own), `AGORA_SCALE_SETTLE_SECS` (wait after `up`, default 40),
//! `AGORA_SCALE_IDLE_SECS` (the measured window, default 30), `AGORA_SCALE_TIMEOUT` (`up`'s
//! `--timeout`, default 600).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agora_tests::bench::{env_u64, load1, quantile};
use agora_tests::{DevnetGuard, agora_bin};

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK` on Linux).
const TICKS: f64 = 100.0;

/// User + system ticks of process `pid`.
fn cpu_ticks(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based), i.e. 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn rss_mib(pid: u64) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// One size's figures.
struct Row {
    nodes: usize,
    arbitrators: usize,
    up_secs: f64,
    load_up: f64,
    /// Median peers per node (`devnet status`).
    peers: f64,
    /// Millicores of each arbitrator / of each other node over the window.
    arb_mc: Vec<f64>,
    other_mc: Vec<f64>,
    rss: Vec<f64>,
    load_end: f64,
}

fn committee_arg(n: usize) -> Option<String> {
    match std::env::var("AGORA_SCALE_ARBITRATORS").ok()?.as_str() {
        "legacy" => Some(if n < 4 { n } else { 3 * ((n - 1) / 3) + 1 }.to_string()),
        k => Some(k.to_string()),
    }
}

fn measure(n: usize, base: &Path) -> Result<Row, String> {
    let dir = base.join(format!("net{n}"));
    let dir_s = dir.display().to_string();
    let _guard = DevnetGuard(dir.clone());
    let nodes = n.to_string();
    let timeout = env_u64("AGORA_SCALE_TIMEOUT", 600).to_string();
    let mut args = vec![
        "devnet",
        "up",
        "--nodes",
        &nodes,
        "--dir",
        &dir_s,
        "--timeout",
        &timeout,
        "--json",
    ];
    let k = committee_arg(n);
    if let Some(k) = &k {
        args.extend(["--arbitrators", k.as_str()]);
    }
    let started = Instant::now();
    let out = Command::new(agora_bin())
        .args(&args)
        .output()
        .map_err(|e| e.to_string())?;
    let up_secs = started.elapsed().as_secs_f64();
    let load_up = load1();
    if !out.status.success() {
        return Err(format!(
            "devnet up --nodes {n} failed after {up_secs:.1} s: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let up: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let pids: Vec<u64> = up["nodes"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["pid"].as_u64()).collect())
        .unwrap_or_default();
    if pids.len() != n {
        return Err(format!(
            "devnet up reported {} pids for {n} nodes",
            pids.len()
        ));
    }
    let genesis: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("genesis.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let committee: Vec<String> = genesis["committee"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let is_arbitrator: Vec<bool> = up["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| {
                    committee
                        .iter()
                        .any(|c| Some(c.as_str()) == v["node_id"].as_str())
                })
                .collect()
        })
        .unwrap_or_default();

    std::thread::sleep(Duration::from_secs(env_u64("AGORA_SCALE_SETTLE_SECS", 40)));
    let window = Duration::from_secs(env_u64("AGORA_SCALE_IDLE_SECS", 30));
    let before: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let after: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let secs = t0.elapsed().as_secs_f64();
    let load_end = load1();
    let rss: Vec<f64> = pids.iter().filter_map(|p| rss_mib(*p)).collect();
    let (mut arb_mc, mut other_mc) = (Vec::new(), Vec::new());
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let (Some(b), Some(a)) = (b, a) else {
            return Err(format!("node{i} exited during the idle window"));
        };
        let mc = (a - b) as f64 / TICKS / secs * 1000.0;
        if is_arbitrator.get(i).copied().unwrap_or(false) {
            arb_mc.push(mc);
        } else {
            other_mc.push(mc);
        }
    }
    let status = Command::new(agora_bin())
        .args(["devnet", "status", "--dir", &dir_s, "--json"])
        .output()
        .map_err(|e| e.to_string())?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    let peers: Vec<f64> = status["nodes"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v["peers"].as_f64()).collect())
        .unwrap_or_default();
    let _ = Command::new(agora_bin())
        .args(["devnet", "down", "--clean", "--dir", &dir_s])
        .output();
    Ok(Row {
        nodes: n,
        arbitrators: committee.len(),
        up_secs,
        load_up,
        peers: quantile(&peers, 0.5),
        arb_mc,
        other_mc,
        rss,
        load_end,
    })
}

fn main() {
    let sizes: Vec<usize> = std::env::var("AGORA_SCALE_SIZES")
        .unwrap_or_else(|_| "20,50,100,200".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let base = tempfile::Builder::new()
        .prefix("agora-scale-")
        .tempdir()
        .expect("temp dir");
    println!(
        "idle cost per `agora node run` process ({}; millicores over the idle window, RSS at its end)",
        agora_bin().display()
    );
    println!(
        "{:>5} {:>4} {:>7} {:>5} {:>5} | {:>8} {:>8} {:>8} {:>8} | {:>7} {:>7} | {:>7} {:>6}",
        "nodes",
        "arb",
        "up s",
        "load",
        "peers",
        "mc p50",
        "mc p90",
        "mc max",
        "arb p50",
        "RSS p50",
        "RSS max",
        "cores",
        "load"
    );
    for n in sizes {
        match measure(n, base.path()) {
            Ok(r) => {
                let all: Vec<f64> = r.arb_mc.iter().chain(&r.other_mc).copied().collect();
                println!(
                    "{:>5} {:>4} {:>7.1} {:>5.1} {:>5.0} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>7.1} {:>7.1} | {:>7.2} {:>6.1}",
                    r.nodes,
                    r.arbitrators,
                    r.up_secs,
                    r.load_up,
                    r.peers,
                    quantile(&all, 0.5),
                    quantile(&all, 0.9),
                    quantile(&all, 1.0),
                    quantile(&r.arb_mc, 0.5),
                    quantile(&r.rss, 0.5),
                    quantile(&r.rss, 1.0),
                    all.iter().sum::<f64>() / 1000.0,
                    r.load_end
                );
            }
            Err(e) => println!("{n:>5} failed: {e}"),
        }
    }
    println!(
        "up s: `devnet up` until every node is connected and ready (wall clock; load = 1-min load \
         average then); mc: millicores per process (all / arbitrators); cores: the devnet's sum; \
         last load: at the window's end"
    );
}
