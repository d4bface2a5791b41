//! Import throughput for a 256 MiB file (in-memory and sled stores) and data-proof creation vs
//! raw blake3. Run: `cargo bench -p agora-storage --bench throughput`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agora_storage::proof::DataProof;
use agora_storage::{ImportOptions, MemoryBlockStore, SledBlockStore, import_file};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;

const FILE: usize = 256 * 1024 * 1024;

fn file() -> Vec<u8> {
    // Cheap pseudo-random bytes (xorshift) so chunks differ.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..FILE / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

fn import(c: &mut Criterion) {
    let data = file();
    let mut g = c.benchmark_group("import_256MiB");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(FILE as u64));
    g.bench_function("memory", |b| {
        b.iter_batched(
            MemoryBlockStore::new,
            |s| import_file(&s, data.as_slice(), ImportOptions::default()).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("sled", |b| {
        b.iter_batched(
            || SledBlockStore::temporary().unwrap(),
            |s| import_file(&s, data.as_slice(), ImportOptions::default()).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn proof(c: &mut Criterion) {
    let readings: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| format!("{{\"t\":{i},\"temp\":21.{i}}}").into_bytes())
        .collect();
    let bytes: u64 = readings.iter().map(|r| r.len() as u64).sum();
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut g = c.benchmark_group("proof_10k_readings");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(bytes));
    g.bench_function("data_proof_create", |b| {
        b.iter(|| DataProof::create_with_key(&readings, &key, 1).unwrap())
    });
    g.bench_function("raw_blake3_concat", |b| {
        b.iter(|| {
            let mut h = blake3::Hasher::new();
            for r in &readings {
                h.update(r);
            }
            h.finalize()
        })
    });
    g.finish();
}

criterion_group!(benches, import, proof);
criterion_main!(benches);
