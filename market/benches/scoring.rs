//! Bids scored per second: winner selection over 1k and 10k bids, plus bid validation.
//!
//! Run: `cargo bench -p agora-market --bench scoring`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use agora_market::validate::{Limits, check_bid};
use agora_market::{
    AuctionId, AuctionKind, AuctionRequest, AuctionSpec, Bid, BidId, BidSpec, Interface, KeySigner,
    Location, Near, Resources, ScoreWeights, select_winner,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn setup(n: usize) -> (AuctionRequest, AuctionId, Vec<(BidId, Bid)>) {
    let customer = KeySigner::from_seed(1);
    let center = Location {
        lat: 48.85,
        lon: 2.35,
    };
    let spec = AuctionSpec {
        region: "eu-west".into(),
        resources: Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            ..Resources::default()
        }
        .with_interface(Interface::LoRa, 1),
        duration_ms: 3_600_000,
        max_price: 10_000,
        window_ms: 10_000,
        kind: AuctionKind::Hosted,
        near: Some(Near {
            center,
            max_km: 100.0,
        }),
        award_grace_ms: 60_000,
        service: None,
        start_at: None,
    };
    let auction = spec.create(&customer, 0, 1).unwrap();
    let aid = auction.id().unwrap();
    let bids = (0..n)
        .map(|i| {
            let provider = KeySigner::from_seed(1_000 + i as u64);
            let spec = BidSpec {
                price: 1 + (i as u64 * 7919) % 10_000,
                capacity: Resources {
                    cpu_millis: 1000 + (i as u64 % 4) * 1000,
                    memory_bytes: 1 << 30,
                    ..Resources::default()
                }
                .with_interface(Interface::LoRa, 1),
                location: Some(Location {
                    lat: center.lat + (i % 100) as f64 * 0.01,
                    lon: center.lon,
                }),
                reputation_permille: (i % 1001) as u16,
            };
            let bid = spec.create(&auction, &provider, 1).unwrap();
            (bid.id().unwrap(), bid)
        })
        .collect();
    (auction, aid, bids)
}

fn scoring(c: &mut Criterion) {
    let mut group = c.benchmark_group("select_winner");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for n in [1_000usize, 10_000] {
        let (auction, aid, bids) = setup(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &bids, |b, bids| {
            b.iter(|| {
                select_winner(
                    &auction,
                    aid,
                    bids.iter().map(|(i, b)| (i, b)),
                    &ScoreWeights::default(),
                )
                .map(|w| black_box(w.bid))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("check_bid");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let (auction, aid, bids) = setup(1_000);
    let limits = Limits::default();
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("1000", |b| {
        b.iter(|| {
            for (_, bid) in &bids {
                black_box(check_bid(bid, &auction, aid, 1, &limits).is_ok());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);
