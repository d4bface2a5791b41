//! Issue #16's benchmark: the time to flash N devices across E edges with a 256 KiB image at
//! the devnet devices' stated link rate (31 250 B/s, 250 kbit/s) and 500 ms reboots, and how it
//! grows with N. Each edge runs the radio's own job driver over its share of the devices in
//! simulated time (`agora_radio::flash_sim`: no sockets, no network delay or loss); the table
//! shows the simulated flash time and the wall-clock time this machine took to drive it.
//!
//! `cargo bench -p agora-radio --features test-utils --bench flash`; `AGORA_BENCH_DEVICES`
//! (`50,100,250,500`), `AGORA_BENCH_EDGES` (20), `AGORA_BENCH_K` (max-unavailable per edge, 5),
//! `AGORA_BENCH_IMAGE_KIB` (256), `AGORA_BENCH_LINK_RATE` (31250).

use std::time::Instant;

use agora_devices::agent::AgentConfig;
use agora_radio::flash_sim::{FleetConfig, flash_fleet};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("AGORA_BENCH_DEVICES")
        .unwrap_or_else(|_| "50,100,250,500".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let edges: usize = env("AGORA_BENCH_EDGES", 20);
    let k: usize = env("AGORA_BENCH_K", 5);
    let kib: usize = env("AGORA_BENCH_IMAGE_KIB", 256);
    let rate: u64 = env("AGORA_BENCH_LINK_RATE", 31_250);
    let agent = AgentConfig {
        reboot_ms: 500,
        link_bytes_per_s: rate,
        reading_ms: 0,
    };
    println!(
        "flash {kib} KiB at {rate} B/s, {edges} edges, max-unavailable {k} per edge, reboot 500 ms \
         (simulated time; one device alone: {:.1} s of writes)",
        (kib * 1024) as f64 / rate as f64
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10}",
        "devices", "per edge", "flash s", "s/device", "updated", "requests", "wall ms"
    );
    for n in sizes {
        let cfg = FleetConfig {
            edges,
            devices: n,
            image_bytes: kib * 1024,
            agent: agent.clone(),
            max_unavailable: k,
            tick_ms: 200,
            limit_ms: 24 * 3600 * 1000,
        };
        let t = Instant::now();
        let run = flash_fleet(&cfg);
        let wall = t.elapsed().as_millis();
        println!(
            "{:>8} {:>10} {:>10.1} {:>10.2} {:>9} {:>10} {:>10}",
            n,
            n.div_ceil(edges),
            run.sim_ms as f64 / 1000.0,
            run.sim_ms as f64 / 1000.0 / n.max(1) as f64,
            run.updated,
            run.requests,
            wall
        );
        if run.updated != n {
            eprintln!("not every device was updated: {run:?}");
            std::process::exit(1);
        }
    }
}
