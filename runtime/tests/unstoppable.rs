//! Guests that try not to be stopped: a tight loop, a loop of host calls, WASI sleeps
//! "forever", a loop of WASI `random_get`, filling a large memory over and over, endless table
//! growth. Their fuel would let
//! one call run for minutes, so only epoch interruption and call cancellation can end them
//! within the tests' waits. Stop latencies are printed (`--nocapture`), not asserted; see
//! `benches/stop.rs` for the measurement.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use agora_runtime::test_utils::{
    self, BUSY_FOREVER, ECHO, HOST_CALLS_FOREVER, MEMORY_GROW_HUGE, RANDOM_FOREVER, SLEEP_FOREVER,
    TABLE_GROW_FOREVER, memory_fill_forever,
};
use agora_runtime::{MemoryKv, ModuleId, ServiceId, ServiceState, StopReason};
use common::{harness, harness_with, roomy, tight};

/// The hostile guests, by name (32 MiB of memory for the fill loop).
fn hostile() -> Vec<(&'static str, String)> {
    vec![
        ("tight-loop", BUSY_FOREVER.to_string()),
        ("host-call-loop", HOST_CALLS_FOREVER.to_string()),
        ("wasi-sleep", SLEEP_FOREVER.to_string()),
        ("wasi-random-loop", RANDOM_FOREVER.to_string()),
        ("memory-fill-32mib", memory_fill_forever(511)),
        ("table-grow-loop", TABLE_GROW_FOREVER.to_string()),
    ]
}

#[tokio::test]
async fn stop_ends_every_hostile_guest_and_a_neighbour_keeps_running() {
    let mut h = harness();
    let good = h.run("good", ECHO, tight());
    for (name, wat) in hostile() {
        let id = h.run(name, &wat, roomy());
        h.logged(&id, "ready").await;
        let (reason, took) = h.stop_timed(&id).await;
        assert_eq!(reason, StopReason::Requested, "{name}");
        eprintln!("stop latency, {name}: {took:?}");
        h.assert_echo_alive(&good).await;
    }
}

#[tokio::test]
async fn lifetime_ends_every_hostile_guest() {
    let h = harness();
    let mut limits = roomy();
    limits.wall_clock_ms = Some(300);
    let ids: Vec<ServiceId> = hostile()
        .iter()
        .map(|(name, wat)| h.run(name, wat, limits.clone()))
        .collect();
    for id in &ids {
        assert_eq!(h.stopped(id).await, StopReason::Lifetime, "{id}");
    }
}

#[tokio::test]
async fn a_stopped_guest_frees_its_pool_slot_and_memory_at_once() {
    // One pool slot: the next instance can only start if the stopped one was dropped.
    let mut h = harness_with(|c| c.max_instances = 1, Arc::new(MemoryKv::default()));
    let filler = h.run("filler", &memory_fill_forever(511), roomy());
    h.logged(&filler, "ready").await;
    let (reason, _) = h.stop_timed(&filler).await;
    assert_eq!(reason, StopReason::Requested);
    assert!(h.manager.metering(&filler).unwrap().peak_memory_bytes >= 32 << 20);
    let good = h.run("good", ECHO, tight());
    h.assert_echo_alive(&good).await;
}

#[tokio::test]
async fn eight_sleeping_guests_hold_no_thread_and_stop_at_once() {
    // A single guest thread: if a sleeping guest held it, nothing else could run.
    let mut h = harness_with(
        |c| {
            c.guest_threads = 1;
            c.max_instances = 10;
        },
        Arc::new(MemoryKv::default()),
    );
    let sleepers: Vec<ServiceId> = (0..8)
        .map(|i| h.run(&format!("sleeper-{i}"), SLEEP_FOREVER, roomy()))
        .collect();
    for id in &sleepers {
        h.logged(id, "ready").await;
    }
    // The ninth guest runs, and the host still compiles modules.
    let good = h.run("ninth", ECHO, tight());
    h.assert_echo_alive(&good).await;
    let wat = format!("{ECHO}\n;; another module");
    h.host
        .load(&ModuleId::for_bytes(wat.as_bytes()), wat.as_bytes())
        .unwrap();
    for id in &sleepers {
        assert_eq!(h.manager.state(id).unwrap(), ServiceState::Active);
    }
    for id in &sleepers {
        let (reason, took) = h.stop_timed(id).await;
        assert_eq!(reason, StopReason::Requested);
        eprintln!("stop latency, sleeping guest {id}: {took:?}");
    }
    h.assert_echo_alive(&good).await;
}

#[tokio::test]
async fn busy_guests_share_one_guest_thread_with_others() {
    let mut h = harness_with(|c| c.guest_threads = 1, Arc::new(MemoryKv::default()));
    let busy: Vec<ServiceId> = (0..2)
        .map(|i| h.run(&format!("busy-{i}"), BUSY_FOREVER, roomy()))
        .collect();
    for id in &busy {
        h.logged(id, "ready").await;
    }
    let good = h.run("good", ECHO, tight());
    h.assert_echo_alive(&good).await;
    h.assert_echo_alive(&good).await;
    for id in &busy {
        assert_eq!(h.stop_timed(id).await.0, StopReason::Requested);
    }
}

#[tokio::test]
async fn a_huge_memory_grow_is_refused_at_once() {
    let h = harness();
    let id = h.run("grow", MEMORY_GROW_HUGE, roomy());
    assert_eq!(h.stopped(&id).await, StopReason::MemoryLimit);
    assert!(h.manager.metering(&id).unwrap().peak_memory_bytes <= roomy().memory_bytes);
}

#[test]
fn activation_outside_the_manager_is_guarded_too() {
    // The bench path (`activate_once`) runs the same guarded call: a trap is classified.
    let dir = tempfile::tempdir().unwrap();
    let host = test_utils::host(dir.path());
    let m = test_utils::compile(&host, test_utils::TRAP);
    assert!(matches!(
        test_utils::activate_once(&host, &m),
        Err(StopReason::Trap(_))
    ));
}
