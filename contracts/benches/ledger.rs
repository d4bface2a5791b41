//! Ledger throughput: signed transfers applied per second, contract registration, block
//! application, state hashing of a populated ledger, and mempool admission
//! (`Ledger::admissible`) against the full dry run (`Ledger::check`, which clones the ledger).
//!
//! Run: `cargo bench -p agora-contracts --features test-utils --bench ledger`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use agora_contracts::test_utils::{ContractBuilder, genesis_with, tx_with_nonce};
use agora_contracts::{AdmissionPolicy, Ledger, TxKind};
use agora_market::Signer;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn transfers(c: &mut Criterion) {
    let (genesis, accounts, _) = genesis_with(2, 4, 1_000_000);
    let ledger = Ledger::from_genesis(&genesis).unwrap();
    let to = accounts[1].node_id();
    let block: Vec<_> = (0..100)
        .map(|n| {
            tx_with_nonce(
                ledger.chain_id(),
                &accounts[0],
                n,
                TxKind::Transfer { to, amount: 1 },
            )
        })
        .collect();
    let mut g = c.benchmark_group("ledger");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(1));
    g.bench_function("apply_transfer", |b| {
        b.iter_batched(
            || ledger.clone(),
            |mut l| l.apply(0, black_box(&block[0])).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("apply_block_100_transfers", |b| {
        b.iter_batched(
            || ledger.clone(),
            |mut l| {
                let out = l.apply_block(1, 0, black_box(&block)).unwrap();
                assert!(out.rejected.is_empty());
            },
            BatchSize::SmallInput,
        )
    });
    let signed = ContractBuilder::new(1, 2).signed();
    let register = tx_with_nonce(
        ledger.chain_id(),
        &accounts[0],
        0,
        TxKind::RegisterContract(Box::new(signed)),
    );
    g.throughput(Throughput::Elements(1));
    g.bench_function("apply_register_contract", |b| {
        b.iter_batched(
            || ledger.clone(),
            |mut l| l.apply(0, black_box(&register)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn state_hash(c: &mut Criterion) {
    // 98 accounts (seeds 1..=98, clear of the committee's seeds), 49 registered contracts.
    let (genesis, accounts, _) = genesis_with(98, 4, 1_000_000);
    let mut ledger = Ledger::from_genesis(&genesis).unwrap();
    for i in 0..49u64 {
        let signed = ContractBuilder::new(2 * i + 1, 2 * i + 2).signed();
        let sender = &accounts[(2 * i) as usize];
        let t = ledger
            .sign_next(sender, TxKind::RegisterContract(Box::new(signed)))
            .unwrap();
        ledger.apply(0, &t).unwrap();
    }
    let mut g = c.benchmark_group("ledger");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    g.bench_function("state_hash_98_accounts_49_contracts", |b| {
        b.iter(|| black_box(ledger.state_hash().unwrap()))
    });
    // Admission of one transfer on the same populated ledger: the pure check vs the dry run.
    let t = ledger
        .sign_next(
            &accounts[0],
            TxKind::Transfer {
                to: accounts[1].node_id(),
                amount: 1,
            },
        )
        .unwrap();
    let policy = AdmissionPolicy::default();
    g.bench_function("admissible_transfer_98_accounts_49_contracts", |b| {
        b.iter(|| ledger.admissible(black_box(&t), &policy).unwrap())
    });
    g.bench_function("check_transfer_98_accounts_49_contracts", |b| {
        b.iter(|| ledger.check(0, black_box(&t)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, transfers, state_hash);
criterion_main!(benches);
