//! Service host benchmarks on in-process nodes (a bench binary that prints a table; run with
//! `cargo bench -p agora-tests --bench services`):
//! - stage the lora-gateway image on a node that has none of its blocks: bitswap fetch from
//!   another node, module hash check, compile, artifact cache (one fresh devnet per sample);
//! - stage again on the same node (blocks local, artifact cached: MAC check + deserialize);
//! - start → first signed published message of an echo service (instantiate, first poll,
//!   host signature, broadcast), with a reading queued right after `start`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agora_devnet::Devnet;
use agora_hosting::ServiceManifest;
use agora_runtime::test_utils::{ECHO, lora_gateway_wasm};

const COLD_RUNS: usize = 3;
const RUNS: usize = 50;

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn lora_manifest() -> ServiceManifest {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runtime/examples/lora-gateway/service.toml"
    );
    ServiceManifest::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn stage_cold_and_cached(wasm: &[u8]) -> (Vec<Duration>, Vec<Duration>) {
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for run in 0..COLD_RUNS {
        let net = Devnet::builder().nodes(2).spawn().await.expect("devnet");
        net.wait_connected(1, Duration::from_secs(30))
            .await
            .unwrap();
        let (n0, n1) = (net.node(0).unwrap(), net.node(1).unwrap());
        let info = n0
            .services
            .publish(wasm.to_vec(), lora_manifest())
            .await
            .unwrap();
        let image = info.image.parse().unwrap();
        let t = Instant::now();
        let staged = n1.services.stage("cold", image).await.unwrap();
        cold.push(t.elapsed());
        assert!(!staged.from_cache);
        if run == 0 {
            for i in 0..RUNS {
                let t = Instant::now();
                let s = n1.services.stage(&format!("warm{i}"), image).await.unwrap();
                cached.push(t.elapsed());
                assert!(s.from_cache);
            }
        }
        net.shutdown().await;
    }
    (cold, cached)
}

async fn start_to_first_message() -> Vec<Duration> {
    let net = Devnet::builder().nodes(1).spawn().await.expect("devnet");
    let host = &net.node(0).unwrap().services;
    let mut m = ServiceManifest::wasm("echo", "1");
    m.tick_ms = 1000;
    let info = host.publish(ECHO.as_bytes().to_vec(), m).await.unwrap();
    host.stage("echo", info.image.parse().unwrap())
        .await
        .unwrap();
    let mut rx = host.published();
    let mut samples = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        host.start("echo").await.unwrap();
        host.push_reading("echo", b"ping".to_vec()).unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a published message within 10 s")
            .unwrap();
        samples.push(t.elapsed());
        assert_eq!(msg.payload, b"ping");
        host.stop("echo").await.unwrap();
    }
    net.shutdown().await;
    samples
}

fn main() {
    let wasm = lora_gateway_wasm().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (cold, cached) = rt.block_on(stage_cold_and_cached(&wasm));
    let first = rt.block_on(start_to_first_message());
    println!("| measurement | p50 | p99 / max |");
    println!("|---|---|---|");
    println!(
        "| stage lora-gateway ({} KiB) over bitswap, uncompiled ({COLD_RUNS} fresh devnets) | {} | {} |",
        wasm.len() / 1024,
        ms(pct(cold.clone(), 0.5)),
        ms(pct(cold, 1.0))
    );
    println!(
        "| stage again, blocks local + artifact cached ({RUNS} runs) | {} | {} |",
        ms(pct(cached.clone(), 0.5)),
        ms(pct(cached, 0.99))
    );
    println!(
        "| start → first signed published message, echo ({RUNS} runs) | {} | {} |",
        ms(pct(first.clone(), 0.5)),
        ms(pct(first, 0.99))
    );
}
