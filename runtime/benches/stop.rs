//! Stop latency: time from `ServiceManager::stop` to the service reporting `Stopped` (its
//! instance already dropped) for guests that do not cooperate — a tight loop, a loop of host
//! calls, a WASI sleep "forever", a loop filling 32 MiB of memory — and the time for a lifetime
//! of 100 ms to end a tight loop. Fuel would let each call run for minutes.
//!
//! Run: `cargo bench -p agora-runtime --bench stop` (set `STOP_BENCH_RUNS`, default 30).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_runtime::test_utils::{
    self, BUSY_FOREVER, HOST_CALLS_FOREVER, SLEEP_FOREVER, memory_fill_forever,
};
use agora_runtime::{MemoryKv, ServiceId, ServiceLimits, ServiceManager, ServiceSpec};

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{name}: n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        p(0.50),
        p(0.99),
        p(1.0)
    );
}

fn roomy() -> ServiceLimits {
    ServiceLimits {
        memory_bytes: 40 << 20,
        fuel_per_second: 50_000_000_000,
        wall_clock_ms: None,
        max_instances: 64,
        max_output_bytes: 1 << 20,
    }
}

async fn wait_ready(manager: &ServiceManager, id: &ServiceId) {
    while !manager.logs(id).unwrap().contains("ready") {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn main() {
    let runs: usize = std::env::var("STOP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let host = test_utils::host(dir.path());
    let (manager, _outbox) = ServiceManager::new(host.clone(), Arc::new(MemoryKv::default()), 64);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let fill = memory_fill_forever(511);
    let guests = [
        ("tight loop", BUSY_FOREVER),
        ("host-call loop", HOST_CALLS_FOREVER),
        ("WASI sleep", SLEEP_FOREVER),
        ("32 MiB memory.fill loop", fill.as_str()),
    ];
    rt.block_on(async {
        for (name, wat) in guests {
            let module = test_utils::compile(&host, wat);
            let mut samples = Vec::with_capacity(runs);
            for run in 0..runs {
                // A fresh service each run: its log holds only this instance's `ready`.
                let id = ServiceId(format!("{}-{run}", name.replace(' ', "-")));
                manager
                    .stage(ServiceSpec::new(id.clone(), module.clone(), roomy()))
                    .unwrap();
                manager.start(&id).unwrap();
                wait_ready(&manager, &id).await;
                // Let it get well into its loop or sleep, then stop at a point spread over the
                // epoch tick (a fixed delay would keep hitting the same phase of the ticker).
                let jitter = Duration::from_micros((run as u64 * 7_919) % 10_000);
                tokio::time::sleep(Duration::from_millis(20) + jitter).await;
                let t = Instant::now();
                manager.stop(&id).unwrap();
                manager.wait_stopped(&id).await.unwrap();
                samples.push(t.elapsed());
                manager.remove(&id).unwrap();
            }
            percentiles(&format!("stop → stopped, {name}"), samples);
        }
        let module = test_utils::compile(&host, BUSY_FOREVER);
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs {
            let id = ServiceId(format!("lifetime-{i}"));
            let mut limits = roomy();
            limits.wall_clock_ms = Some(100);
            let mut spec = ServiceSpec::new(id.clone(), module.clone(), limits);
            // Polled at once, so the guest is deep in its loop when the lifetime ends.
            spec.tick_ms = 1;
            manager.stage(spec).unwrap();
            let t = Instant::now();
            manager.start(&id).unwrap();
            manager.wait_stopped(&id).await.unwrap();
            samples.push(t.elapsed().saturating_sub(Duration::from_millis(100)));
        }
        percentiles(
            "lifetime end → stopped (beyond the 100 ms), tight loop",
            samples,
        );
    });
}
