//! Arbitrator consensus benchmark (prints a table; run with
//! `cargo bench -p agora-tests --bench ledger`): on in-process devnets of 4 and 7 arbitrators
//! over loopback TCP, every node in the committee,
//! - finality latency: a transaction submitted on one node until every replica applied it;
//! - throughput: bursts of faucet transactions from every node until all replicas applied them.
//!
//! `AGORA_BENCH_SIZES` (default `4,7`; any size, e.g. `4,7,10`: the committee is always every
//! node), `AGORA_BENCH_TXS` (latency samples, default 50), `AGORA_BENCH_BURST` (transactions per
//! node per burst, default 500), `AGORA_BENCH_GAP_MS` (pause before each latency sample, default
//! 0: samples back to back, each submitted just after the last one's block; `500` models a lone
//! transaction on a quiet chain, past the proposer's minimum block interval);
//! `AGORA_BENCH_LATENCY` (e.g. `50ms` one way), `AGORA_BENCH_JITTER`, `AGORA_BENCH_LOSS` run it
//! over emulated WAN links (`agora_network::wan`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agora_contracts::TxKind;
use agora_devnet::Devnet;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn nonce_everywhere(net: &Devnet, of: usize) -> u64 {
    let who = net.node_id(of);
    let mut min = u64::MAX;
    for i in 0..net.len() {
        let l = net.node(i).unwrap().ledger.clone().unwrap();
        let n = l.query(move |v| v.ledger.next_nonce(&who)).await.unwrap();
        min = min.min(n);
    }
    min
}

async fn run(n: usize, samples: usize, burst: u64, gap: Duration) -> (Vec<f64>, f64) {
    // The builder's default committee stops at `agora_devnet::files::DEFAULT_ARBITRATORS` (7):
    // without this, a size of 10 would measure 7 arbitrators and 3 plain replicas.
    let net = Devnet::builder()
        .nodes(n)
        .committee(n)
        .wan(agora_tests::bench_wan().0)
        .spawn()
        .await
        .expect("devnet");
    net.wait_connected(n - 1, Duration::from_secs(60))
        .await
        .expect("connected");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut latencies = Vec::new();
    for s in 0..samples {
        let i = s % n;
        let l = net.node(i).unwrap().ledger.clone().unwrap();
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let start = Instant::now();
        let tx = l.submit(TxKind::Faucet { amount: 1 }).await.unwrap();
        let deadline = start + Duration::from_secs(10);
        while nonce_everywhere(&net, i).await <= tx.tx.nonce && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }

    // Throughput: every node submits `burst` transactions at once. A node holds at most
    // `AdmissionPolicy::max_pending_per_sender` (64) of its own pending, so each submits as
    // fast as its earlier ones are included (a refused submission is retried).
    let minted = || {
        let l = net.node(0).unwrap().ledger.clone().unwrap();
        async move { l.query(|v| v.ledger.supply().minted).await.unwrap() }
    };
    let minted_before = minted().await;
    let mut targets = Vec::new();
    let start = Instant::now();
    let mut submitters = Vec::new();
    for i in 0..n {
        let l = net.node(i).unwrap().ledger.clone().unwrap();
        submitters.push(tokio::spawn(async move {
            let mut last = 0;
            let mut sent = 0;
            while sent < burst {
                match l.submit(TxKind::Faucet { amount: 1 }).await {
                    Ok(tx) => {
                        last = tx.tx.nonce;
                        sent += 1;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            last
        }));
    }
    for s in submitters {
        targets.push(s.await.unwrap());
    }
    let submitted = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, last) in targets.iter().enumerate() {
        while nonce_everywhere(&net, i).await <= *last && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let tps = (burst * n as u64) as f64 / start.elapsed().as_secs_f64();
    // Each faucet transaction mints 1: what was minted is what was really applied.
    let applied = minted().await - minted_before;
    eprintln!(
        "  ({n} nodes: submitting {} txs took {:.2} s of the {:.2} s; {applied} applied)",
        burst * n as u64,
        submitted.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        applied,
        burst * n as u64,
        "every submitted transaction applies"
    );
    net.shutdown().await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    (latencies, tps)
}

fn main() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let sizes: Vec<usize> = env("AGORA_BENCH_SIZES", "4,7")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let samples: usize = env("AGORA_BENCH_TXS", "50").parse().unwrap_or(50);
    let burst: u64 = env("AGORA_BENCH_BURST", "500").parse().unwrap_or(500);
    // Refused rather than read as 0: `500ms`, written like `AGORA_BENCH_LATENCY`, would
    // otherwise measure back-to-back samples under a header that names no gap.
    let gap_ms: u64 = env("AGORA_BENCH_GAP_MS", "0")
        .parse()
        .expect("AGORA_BENCH_GAP_MS is a whole number of milliseconds, e.g. 500");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let links = match agora_tests::bench_wan().1 {
        flags if flags.is_empty() => "loopback TCP".to_string(),
        flags => format!("loopback TCP shaped {}", flags.join(" ")),
    };
    println!(
        "finality (submit -> applied on every replica) and throughput, {links}, gap_ms {gap_ms}"
    );
    println!(
        "{:>12} {:>10} {:>10} {:>10}",
        "arbitrators", "p50 ms", "p99 ms", "tx/s"
    );
    for n in sizes {
        let (lat, tps) = rt.block_on(run(n, samples, burst, Duration::from_millis(gap_ms)));
        println!(
            "{n:>12} {:>10.1} {:>10.1} {tps:>10.0}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
}
