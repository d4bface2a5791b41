//! Host work is charged in fuel: a guest looping on host calls hits `CpuLimit` after a bounded
//! number of calls, a guest burning CPU with cheap-fuel instructions pays for its CPU time, and
//! `kv_scan` is bounded per call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use agora_runtime::host_fuel::{CALL, KV_READ, KV_WRITE};
use agora_runtime::test_utils::{
    HOST_CALLS_FOREVER, KV_DELETE_AND_SCAN, KV_PUT_FOREVER, RANDOM_FOREVER, decode_scan_page,
};
use agora_runtime::{KvStore, MemoryKv, StopReason};
use common::{harness_with, tight};

/// A store that counts calls and implements only get and put (delete and scan unsupported).
#[derive(Default)]
struct CountingKv {
    inner: MemoryKv,
    gets: AtomicU64,
    puts: AtomicU64,
}

impl KvStore for CountingKv {
    fn get(&self, namespace: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(namespace, key)
    }
    fn put(&self, namespace: &str, key: &[u8], value: &[u8]) -> bool {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.put(namespace, key, value)
    }
}

#[tokio::test]
async fn a_kv_put_loop_runs_out_of_fuel_after_a_bounded_number_of_writes() {
    let kv = Arc::new(CountingKv::default());
    let h = harness_with(|_| {}, kv.clone());
    let id = h.run("writer", KV_PUT_FOREVER, tight());
    assert_eq!(h.stopped(&id).await, StopReason::CpuLimit);
    let puts = kv.puts.load(Ordering::Relaxed);
    // Uncharged, the loop's few instructions per call would allow ~1.5 M writes per call.
    let bound = tight().fuel_per_second / (CALL + KV_WRITE) + 1;
    assert!(puts >= 1 && puts <= bound, "{puts} writes, bound {bound}");
    let m = h.manager.metering(&id).unwrap();
    assert!(m.fuel_used >= puts * KV_WRITE, "{m:?}");
    eprintln!("kv_put loop: {puts} writes before CpuLimit (bound {bound})");
}

#[tokio::test]
async fn a_host_call_loop_runs_out_of_fuel_after_a_bounded_number_of_reads() {
    let kv = Arc::new(CountingKv::default());
    let h = harness_with(|_| {}, kv.clone());
    let id = h.run("reader", HOST_CALLS_FOREVER, tight());
    assert_eq!(h.stopped(&id).await, StopReason::CpuLimit);
    let gets = kv.gets.load(Ordering::Relaxed);
    let bound = tight().fuel_per_second / (CALL + KV_READ) + 1;
    assert!(gets >= 1 && gets <= bound, "{gets} reads, bound {bound}");
}

#[tokio::test]
async fn a_wasi_random_get_loop_pays_for_its_cpu_time() {
    // A few fuel per iteration, each making the host generate 64 KiB of randomness: without
    // the CPU-time charge the 20 M fuel budget would last millions of calls (far longer than
    // the test waits); with it, 80 ms of CPU at 250 M fuel per CPU second.
    let h = harness_with(|_| {}, Arc::new(MemoryKv::default()));
    let id = h.run("random", RANDOM_FOREVER, tight());
    assert_eq!(h.stopped(&id).await, StopReason::CpuLimit);
    let m = h.manager.metering(&id).unwrap();
    assert!(m.fuel_used >= tight().fuel_per_second, "{m:?}");
}

#[tokio::test]
async fn kv_delete_and_a_bounded_scan() {
    let kv = Arc::new(MemoryKv::new(1000));
    for i in 0..200u32 {
        assert!(kv.put("scan", &i.to_be_bytes(), &[i as u8]));
    }
    let mut h = harness_with(|_| {}, kv.clone());
    let id = h.run("scan", KV_DELETE_AND_SCAN, tight());
    assert_eq!(h.stopped(&id).await, StopReason::Exited(1));
    let msg = h.next_published().await;
    let deleted = i32::from_le_bytes(msg.payload[0..4].try_into().unwrap());
    let count = i32::from_le_bytes(msg.payload[4..8].try_into().unwrap());
    assert_eq!(deleted, 1);
    assert_eq!(count, 64, "a scan returns at most 64 entries per call");
    let page = decode_scan_page(&msg.payload[8..], 64).unwrap();
    let keys: Vec<u32> = page
        .iter()
        .map(|(k, _)| u32::from_be_bytes(k.as_slice().try_into().unwrap()))
        .collect();
    let want: Vec<u32> = (0..=64).filter(|k| *k != 5).collect();
    assert_eq!(keys, want);
    assert!(page.iter().all(|(k, v)| v == &[k[3]]));
    assert_eq!(kv.get("scan", &5u32.to_be_bytes()), None);
}

#[tokio::test]
async fn a_store_without_delete_or_scan_says_so() {
    let mut h = harness_with(|_| {}, Arc::new(CountingKv::default()));
    let id = h.run("scan", KV_DELETE_AND_SCAN, tight());
    assert_eq!(h.stopped(&id).await, StopReason::Exited(1));
    let msg = h.next_published().await;
    assert_eq!(
        msg.payload[0..8],
        [(-3i32).to_le_bytes(), (-3i32).to_le_bytes()].concat()
    );
}
