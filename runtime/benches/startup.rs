//! Activation benchmarks: cached artifact → first call, staged module → first call, compile →
//! first call, instances per second, and the cost of fuel metering on a busy loop.
//!
//! Run: `cargo bench -p agora-runtime --bench startup`
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use agora_runtime::ModuleId;
use agora_runtime::test_utils::{self, ECHO, activate_once};
use criterion::{Criterion, criterion_group, criterion_main};

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

const BUSY: &str = r#"(module (memory (export "memory") 1)
  (func (export "agora_poll") (result i32) (local $i i32)
    (local.set $i (i32.const 10000000))
    (loop $l (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))
    (i32.const 0)))"#;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let host = test_utils::host(dir.path());
    let staged = test_utils::compile(&host, ECHO);
    let id = ModuleId::for_bytes(ECHO.as_bytes());

    // Percentiles over plain loops (criterion reports means).
    let mut cached = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let m = host.load_cached(&id).unwrap().unwrap();
        activate_once(&host, &m).unwrap();
        cached.push(t.elapsed());
        let t = Instant::now();
        activate_once(&host, &staged).unwrap();
        warm.push(t.elapsed());
    }
    percentiles("cold start from cached artifact to first call", cached);
    percentiles("start of a staged (compiled) module to first call", warm);
    let mut compiled = Vec::new();
    for i in 0..30 {
        let wat = format!("{ECHO}\n;; variant {i}");
        let t = Instant::now();
        let m = host
            .load(&ModuleId::for_bytes(wat.as_bytes()), wat.as_bytes())
            .unwrap();
        activate_once(&host, &m).unwrap();
        compiled.push(t.elapsed());
    }
    percentiles(
        "start from uncompiled module (verify+compile+cache+first call)",
        compiled,
    );
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed() < Duration::from_secs(1) {
        activate_once(&host, &staged).unwrap();
        n += 1;
    }
    println!("instances per second (instantiate + first call + drop, 1 thread): {n}");

    // This host's fuel rate, the value for `HostConfig::fuel_per_cpu_ms`: BUSY is 10 M loop
    // iterations of 6 fuel each, and `activate_once` runs it on this thread.
    let busy = test_utils::compile(&host, BUSY);
    let cpu = test_utils::thread_cpu_time();
    for _ in 0..5 {
        activate_once(&host, &busy).unwrap();
    }
    let ms = (test_utils::thread_cpu_time() - cpu).as_secs_f64() * 1000.0;
    println!(
        "fuel per CPU millisecond (HostConfig::fuel_per_cpu_ms): {:.0}",
        5.0 * 60_000_000.0 / ms
    );

    // Fuel overhead: the same busy loop with and without fuel metering.
    let plain = wasmtime::Engine::default();
    let plain_module = wasmtime::Module::new(&plain, BUSY).unwrap();
    let mut g = c.benchmark_group("runtime");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function("cold_start_cached_artifact", |b| {
        b.iter(|| {
            let m = host.load_cached(&id).unwrap().unwrap();
            activate_once(&host, &m).unwrap()
        })
    });
    g.bench_function("start_staged_module", |b| {
        b.iter(|| activate_once(&host, &staged).unwrap())
    });
    g.bench_function("busy_loop_10M_with_fuel", |b| {
        b.iter(|| activate_once(&host, &busy).unwrap())
    });
    g.bench_function("busy_loop_10M_without_fuel", |b| {
        b.iter(|| {
            let mut store = wasmtime::Store::new(&plain, ());
            let inst = wasmtime::Instance::new(&mut store, &plain_module, &[]).unwrap();
            let f = inst
                .get_typed_func::<(), i32>(&mut store, "agora_poll")
                .unwrap();
            f.call(&mut store, ()).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
