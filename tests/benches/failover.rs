//! Failover bench: `agora devnet demo --runs N` on real processes, then p50/p99 of each phase
//! from the moment A's process is killed to B's copy of the service processing A's first
//! reading. N defaults to 20 (`AGORA_FAILOVER_RUNS` overrides).
//!
//! `cargo bench -p agora-tests --bench failover`; `AGORA_BENCH_LATENCY` (e.g. `50ms` one way),
//! `AGORA_BENCH_JITTER` and `AGORA_BENCH_LOSS` pass `--latency/--jitter/--loss` to the demo.

use std::process::Command;

use agora_devnet::demo::{FailoverSplit, percentile};
use agora_tests::agora_bin;

fn main() {
    let runs: usize = std::env::var("AGORA_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("agora-failover-{}", std::process::id()));
    let out = Command::new(agora_bin())
        .args(["devnet", "demo", "--json", "--outage", "1", "--runs"])
        .arg(runs.to_string())
        .args(agora_tests::bench_wan().1)
        .arg("--dir")
        .arg(&dir)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match out {
        Ok(o) => o,
        Err(e) => return eprintln!("cannot run agora: {e}"),
    };
    if !out.status.success() {
        eprintln!(
            "the demo failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => return eprintln!("demo output is not JSON: {e}"),
    };
    let splits: Vec<FailoverSplit> =
        serde_json::from_value(v["failovers"].clone()).unwrap_or_default();
    let col = |f: fn(&FailoverSplit) -> u64| -> Vec<u64> { splits.iter().map(f).collect() };
    println!(
        "failover on real processes, {} runs (ms from SIGKILL of A)",
        splits.len()
    );
    println!("{:<14} {:>8} {:>8} {:>8}", "phase", "p50", "p99", "max");
    for (name, v) in [
        ("detection", col(|x| x.detection_ms)),
        ("attestation", col(|x| x.attestation_ms)),
        ("commit", col(|x| x.commit_ms)),
        ("activation", col(|x| x.activation_ms)),
        ("end to end", col(|x| x.end_to_end_ms)),
    ] {
        println!(
            "{name:<14} {:>8} {:>8} {:>8}",
            percentile(&v, 50),
            percentile(&v, 99),
            v.iter().max().copied().unwrap_or(0)
        );
    }
    println!("readings: {}", v["coverage"]);
}
