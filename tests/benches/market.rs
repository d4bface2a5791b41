//! Market benchmark (prints a table; run with `cargo bench -p agora-tests --bench market`):
//! on an in-process 10-node devnet, the time from an auction's window close to both the customer
//! and the winning provider holding the award (p50/p99), with bids from the providers' decision
//! units. `AGORA_BENCH_AUCTIONS` sets the number of auctions (default 30); `AGORA_BENCH_LATENCY`
//! (e.g. `50ms` one way), `AGORA_BENCH_JITTER` and `AGORA_BENCH_LOSS` shape every link.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agora_devnet::Devnet;
use agora_market::{AuctionKind, AuctionSpec, Effect, Input, MarketMessage, Resources};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run(auctions: usize) -> (Vec<f64>, usize) {
    let net = Devnet::builder()
        .nodes(10)
        .wan(agora_tests::bench_wan().0)
        .spawn()
        .await
        .expect("devnet");
    net.wait_connected(3, Duration::from_secs(60))
        .await
        .expect("connected");
    // Providers take work once their running contracts' capacity is held (THREATS C35).
    net.wait_markets_ready(Duration::from_secs(60))
        .await
        .expect("markets ready");
    tokio::time::sleep(Duration::from_secs(2)).await; // let gossip meshes form
    let customer = net.node(0).unwrap().market.clone();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for _ in 0..auctions {
        let spec = AuctionSpec {
            region: "default".into(),
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: 16 << 20,
                ..Resources::default()
            },
            duration_ms: 60_000,
            max_price: 1_000,
            window_ms: 400,
            kind: AuctionKind::Hosted,
            near: None,
            award_grace_ms: 10_000,
            service: None,
            start_at: None,
        };
        let effects = customer.input(Input::CreateAuction(spec)).await.unwrap();
        let Some((auction, closes)) = effects.iter().find_map(|e| match e {
            Effect::Broadcast {
                msg: MarketMessage::Auction(a),
                ..
            } => Some((a.id().ok()?.to_string(), a.body.window_closes_at)),
            _ => None,
        }) else {
            failed += 1;
            continue;
        };
        // Wait for the award at the customer, then at the winner.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut done = None;
        while tokio::time::Instant::now() < deadline && done.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let c = customer.events_after(None);
            let Some(award) = c
                .iter()
                .find(|r| r.kind == "awarded" && r.data["auction"] == auction.as_str())
            else {
                continue;
            };
            let provider = award.data["provider"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let Some(w) = (0..net.len()).find(|i| net.node_id(*i).to_string() == provider) else {
                continue;
            };
            let p = net.node(w).unwrap().market.events_after(None);
            if let Some(pa) = p
                .iter()
                .find(|r| r.kind == "awarded" && r.data["auction"] == auction.as_str())
            {
                done = Some(award.at.max(pa.at).saturating_sub(closes) as f64);
            }
        }
        match done {
            Some(ms) => latencies.push(ms),
            None => {
                failed += 1;
                // Say why, from the customer's own log: bids that came in time, how the window
                // closed, bids refused because they came after it.
                let short = &auction[..auction.len().min(8)];
                let (mut late, mut said) = (0, Vec::new());
                for r in customer.events_after(None) {
                    let error = r.data["error"].as_str().unwrap_or_default();
                    if r.kind == "rejected" && error.contains(auction.as_str()) {
                        late += 1;
                    } else if r.data["auction"] == auction.as_str() {
                        said.push(format!("{} ({})", r.kind, r.detail));
                    }
                }
                eprintln!(
                    "not awarded {short}: {}; {late} bids refused by the customer (most often: \
                     they came after the window closed)",
                    if said.is_empty() {
                        "no event in time".to_string()
                    } else {
                        said.join(", ")
                    }
                );
            }
        }
    }
    // Providers that declined to bid, and holds that lapsed, per node.
    for i in 1..net.len() {
        if let Some(node) = net.node(i)
            && let Ok(stats) = node.market.query(|s| s.book_stats()).await
        {
            let c = stats.counters;
            if c.auto_bids_declined > 0 || c.holds_lapsed > 0 {
                eprintln!(
                    "node {i}: {} auto-bids declined, {} holds lapsed",
                    c.auto_bids_declined, c.holds_lapsed
                );
            }
        }
    }
    net.shutdown().await;
    (latencies, failed)
}

fn main() {
    let auctions: usize = std::env::var("AGORA_BENCH_AUCTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut lat, failed) = rt.block_on(run(auctions));
    lat.sort_by(|a, b| a.total_cmp(b));
    println!("window close -> award held by customer and winner, 10 in-process nodes, DMU bids");
    println!(
        "{:>9} {:>8} {:>8} {:>8}",
        "auctions", "p50 ms", "p99 ms", "failed"
    );
    println!(
        "{:>9} {:>8.1} {:>8.1} {:>8}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        failed
    );
}
